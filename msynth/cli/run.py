"""``msynth``: the BIDS-App entry point (participant and group levels)."""

from __future__ import annotations

import logging
import os
import sys
from collections import Counter

os.environ.setdefault("NO_ET", "1")  # Nipype must not phone home: clusters and this project run offline

from msynth.cli.parser import build_parser  # noqa: E402
from msynth.config import RunConfig, resolve_config  # noqa: E402
from msynth.utils.bids import check_symlink_loops, open_layout  # noqa: E402
from msynth.utils.errors import UsageError  # noqa: E402
from msynth.utils import logs  # noqa: E402
from msynth.utils.itk import single_threaded_itk  # noqa: E402
from msynth.utils.layout_index import open_indexed_layout  # noqa: E402
from msynth.utils.tabular_checks import check_clinical_tables  # noqa: E402
from msynth.utils.validation import errors_of, validate_participants  # noqa: E402

LOGGER = logging.getLogger("msynth")


def setup_logging(verbose: int) -> None:
    """Console logging (:mod:`msynth.utils.logs`): msynth's own lines, warnings, each workflow's progress and the
    summary; Nipype's log and msynth's node messages from -v, debugging detail from -vv."""
    logs.configure(logs.LogSetup(verbose=verbose))


def log_to_file(config: RunConfig) -> None:
    """Keep the whole log, Nipype's and every node's messages included, in ``OUTPUT_DIR/logs/msynth-<run id>.log``."""
    path = config.output_dir / "logs" / f"msynth-{config.run_id}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    logs.configure(logs.LogSetup(verbose=config.verbose, log_file=path))


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
    single_threaded_itk()  # before any ITK work, so that the Nipype workers inherit it
    setup_logging(args.verbose)
    try:
        config = resolve_config(args)
        check_symlink_loops(config.bids_dir)  # before the validator, which reports a loop as dozens of errors
        validate_input(config)
        if config.analysis_level == "group":
            return _run_group(config)
        clinical_problems = check_clinical_tables(config.bids_dir, config.participants)
        layout = (open_layout(config.bids_dir) if config.bids_database_dir is None else
                  open_indexed_layout(config.bids_dir, config.bids_database_dir, config.participants))
        _start_log(config)
    except UsageError as err:
        print(f"msynth: error: {err}", file=sys.stderr)
        return 1
    for problem in clinical_problems:  # the group level needs these values; the participant level does not
        LOGGER.warning("%s (the group level will report it as n/a)", problem)
    from msynth.runner import rebuild_reports, run_participant_level  # heavy imports only when there is work

    return rebuild_reports(config, layout) if config.reports_only else run_participant_level(config, layout)


def _start_log(config: RunConfig) -> None:
    """Start the run's log file and record its configuration; a full or failing disk is a UsageError."""
    try:
        log_to_file(config)
        LOGGER.info("msynth %s, run %s: configuration in %s", config.version, config.run_id, config.write())
    except OSError as err:
        raise UsageError(f"cannot write the run's log in {config.output_dir / 'logs'}: {err.strerror or err} — free "
                         "space there or choose another OUTPUT_DIR") from None


def _run_group(config: RunConfig) -> int:
    """The group level; its input check raises UsageError before anything is written."""
    from msynth.group_runner import run_group_level  # heavy imports only when there is work

    return run_group_level(config, on_start=lambda: _start_log(config))


if __name__ == "__main__":
    sys.exit(main())
