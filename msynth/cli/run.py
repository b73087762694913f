"""``msynth``: the BIDS-App entry point (participant and group levels)."""

from __future__ import annotations

import logging
import os
import sys
from collections import Counter

os.environ.setdefault("NO_ET", "1")  # Nipype must not phone home: clusters and this project run offline

from msynth.cli.parser import build_parser  # noqa: E402
from msynth.config import RunConfig, resolve_config  # noqa: E402
from msynth.utils.bids import open_layout  # noqa: E402
from msynth.utils.errors import UsageError  # noqa: E402
from msynth.utils.validation import errors_of, validate_participants  # noqa: E402

LOGGER = logging.getLogger("msynth")
_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"


class _StderrHandler(logging.StreamHandler):
    """A stream handler on whatever ``sys.stderr`` is at each message (it may be replaced, as pytest does)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(verbose: int) -> None:
    """Console logging: msynth at INFO (DEBUG with -v); Nipype's node log shown from -v, its debugging at -vv."""
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(_FORMAT, "%H:%M:%S"))
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(logging.DEBUG if verbose else logging.INFO)
    LOGGER.propagate = False
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").handlers[:] = [handler]
    from nipype import config as nipype_config
    from nipype import logging as nipype_logging

    nipype_level = ("WARNING", "INFO", "DEBUG")[min(verbose, 2)]
    for key in ("workflow_level", "interface_level", "utils_level"):
        nipype_config.set("logging", key, nipype_level)
    nipype_logging.update_logging(nipype_config)


def log_to_file(config: RunConfig) -> None:
    """Keep a copy of the log in ``OUTPUT_DIR/logs/msynth-<run id>.log``."""
    path = config.output_dir / "logs" / f"msynth-{config.run_id}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.setLevel(logging.DEBUG)
    LOGGER.addHandler(handler)
    logging.getLogger("py.warnings").addHandler(handler)


def validate_input(config: RunConfig) -> None:
    """Run the BIDS validator on the requested participants; errors stop the run, warnings are logged."""
    if config.skip_bids_validation:
        LOGGER.info("BIDS validation skipped (--skip-bids-validation)")
        return
    try:
        issues = validate_participants(config.bids_dir, config.participants)
    except (FileNotFoundError, RuntimeError) as err:
        raise UsageError(str(err)) from None
    warnings = [issue for issue in issues if issue.severity != "error"]
    if warnings:
        counts = Counter(issue.code for issue in warnings)
        LOGGER.warning(
            "BIDS validator: %d warning(s): %s (-v lists each one)",
            len(warnings), ", ".join(f"{code} ×{n}" for code, n in counts.most_common()),
        )
        for issue in warnings:
            LOGGER.debug("BIDS validator: %s", issue)
    errors = errors_of(issues)
    if errors:
        listing = "\n".join(f"  {issue}" for issue in errors)
        raise UsageError(
            f"the BIDS validator found {len(errors)} error(s) in {config.bids_dir} — fix them, "
            f"or pass --skip-bids-validation to run anyway:\n{listing}"
        )
    LOGGER.info("BIDS validation of %d participant(s): 0 errors", len(config.participants))


def main(argv: list[str] | None = None) -> int:
    """Run msynth; returns the process exit code (0 success, 1 bad input or a failed participant)."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        config = resolve_config(args)
        validate_input(config)
        if config.analysis_level == "group":
            return _run_group(config)
        layout = open_layout(config.bids_dir)
    except UsageError as err:
        print(f"msynth: error: {err}", file=sys.stderr)
        return 1
    _start_log(config)
    from msynth.runner import run_participant_level  # heavy imports only when there is work

    return run_participant_level(config, layout)


def _start_log(config: RunConfig) -> None:
    log_to_file(config)
    LOGGER.info("msynth %s, run %s: configuration in %s", config.version, config.run_id, config.write())


def _run_group(config: RunConfig) -> int:
    """The group level; its input check raises UsageError before anything is written."""
    from msynth.group_runner import run_group_level  # heavy imports only when there is work

    return run_group_level(config, on_start=lambda: _start_log(config))


if __name__ == "__main__":
    sys.exit(main())
