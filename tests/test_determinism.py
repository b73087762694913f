"""Same input, same output: a second clean run of a 4 mm phantom patient, with another process count, writes the same
bytes (issue 17: two runs once differed in 34 of 55 files through a template registration that fell into another
basin with 2 ITK threads)."""

from __future__ import annotations

import gzip
from pathlib import Path

from msynth.cli import run as cli


def _content(path: Path) -> bytes:
    """A file's bytes; for gzip files the uncompressed bytes (the gzip header holds a timestamp)."""
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def _outputs(root: Path) -> dict[str, Path]:
    """A participant's derivatives by relative path, crash reports and logs left out."""
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file() and "log" not in p.parts}


def test_a_second_clean_run_writes_the_same_bytes(phantom_participants, tmp_path):
    cohort, first_out, _ = phantom_participants  # run with --nprocs 2: nodes side by side, in forked workers
    second_out = tmp_path / "out"
    argv = [str(cohort.bids_dir), str(second_out), "participant", "-w", str(tmp_path / "work"),
            "--participant-label", "MS01", "--session-label", "01", "--nprocs", "1", "--skip-bids-validation"]
    assert cli.main(argv) == 0

    first, second = _outputs(first_out / "sub-MS01"), _outputs(second_out / "sub-MS01")
    assert sorted(first) == sorted(second)
    assert len(first) > 40  # every modality's outputs, not a stage that silently did nothing
    differing = [name for name in first if _content(first[name]) != _content(second[name])]
    assert differing == [], f"{len(differing)} of {len(first)} files differ between two clean runs: {differing}"
