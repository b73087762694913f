"""Run the official schema-based BIDS validator (PyPI ``bids-validator-deno``) on a dataset."""

from __future__ import annotations

import csv
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

LOGGER = logging.getLogger("msynth.validation")

#: Top-level files that travel with a participant subset (everything else at the top is data).
_PARTICIPANTS_TABLE = "participants.tsv"


@dataclass(frozen=True)
class ValidatorIssue:
    """One finding of the validator, at one location."""

    severity: str  # "error" or "warning"
    code: str
    location: str
    message: str

    def __str__(self) -> str:
        where = f" ({self.location})" if self.location else ""
        text = f" {self.message}" if self.message else ""
        return f"[{self.severity.upper()}] {self.code}{where}{text}"


def validator_executable() -> str | None:
    """Path of the ``bids-validator-deno`` command, looked up beside this interpreter first."""
    beside = Path(sys.executable).parent / "bids-validator-deno"
    return str(beside) if beside.exists() else shutil.which("bids-validator-deno")


def run_validator(dataset: Path, *, recursive: bool = False) -> list[ValidatorIssue]:
    """Validate ``dataset`` and return every error and warning.

    Raises
    ------
    FileNotFoundError
        The validator is not installed.
    RuntimeError
        The validator did not produce a readable report.
    """
    executable = validator_executable()
    if executable is None:
        raise FileNotFoundError(
            "bids-validator-deno is not installed — reinstall msynth (`pip install msynth`) "
            "or pass --skip-bids-validation"
        )
    command = [executable, "--format", "json", str(dataset)] + (["--recursive"] if recursive else [])
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    try:
        report = json.loads(result.stdout)
        raw_issues, code_messages = report["issues"]["issues"], report["issues"].get("codeMessages", {})
    except (json.JSONDecodeError, KeyError, TypeError):
        raise RuntimeError(
            f"bids-validator-deno gave no report for {dataset} (exit code {result.returncode}): "
            f"{result.stderr.strip()[-500:]}"
        ) from None
    return [_issue(raw, code_messages) for raw in raw_issues]


def _issue(raw: dict, code_messages: dict[str, str]) -> ValidatorIssue:
    message = raw.get("issueMessage") or code_messages.get(raw["code"], "")
    return ValidatorIssue(
        severity=raw.get("severity", "error"),
        code=raw["code"],
        location=raw.get("location", ""),
        message=" ".join(message.split())[:300],
    )


def validate_participants(bids_dir: Path, participants: list[str]) -> list[ValidatorIssue]:
    """Validate the raw dataset restricted to ``participants`` (labels without ``sub-``).

    The validator sees a temporary view of the dataset: links to the top-level files and to the
    selected ``sub-`` folders, and a ``participants.tsv`` holding only their rows, so a problem in
    another participant does not stop this one. The input dataset is never written to.
    """
    with tempfile.TemporaryDirectory(prefix="msynth-validate-") as tmp:
        view = Path(tmp) / bids_dir.name
        view.mkdir()
        for entry in bids_dir.iterdir():
            if entry.name.startswith("sub-") or entry.name == "derivatives":
                continue
            if entry.name == _PARTICIPANTS_TABLE and entry.is_file():
                _write_participant_rows(entry, view / entry.name, participants)
            else:
                (view / entry.name).symlink_to(entry.resolve())
        for label in participants:
            (view / f"sub-{label}").symlink_to((bids_dir / f"sub-{label}").resolve())
        return run_validator(view)


def _write_participant_rows(source: Path, target: Path, participants: list[str]) -> None:
    keep = {f"sub-{label}" for label in participants}
    with source.open(newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    kept = [rows[0]] + [row for row in rows[1:] if row and row[0] in keep] if rows else []
    with target.open("w", newline="") as handle:
        csv.writer(handle, delimiter="\t", lineterminator="\n").writerows(kept)


def errors_of(issues: list[ValidatorIssue]) -> list[ValidatorIssue]:
    """The issues with severity ``error``."""
    return [issue for issue in issues if issue.severity == "error"]
