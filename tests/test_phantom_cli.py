"""``msynth-phantom`` command line: bad arguments get one clear line and exit code 1; same seed, same bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from msynth.cli.phantom import main
from msynth.phantom import generate_cohort


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--n-controls", "-1"], "--n-controls must be >= 0, got -1"),
        (["--n-patients", "-3"], "--n-patients must be >= 0, got -3"),
        (["--voxel-size", "0"], "--voxel-size must be > 0 mm, got 0"),
        (["--voxel-size", "-1.5"], "--voxel-size must be > 0 mm, got -1.5"),
        (["--n-controls", "0", "--n-patients", "0"], "--n-controls and --n-patients are both 0: nothing to generate"),
    ],
)
def test_bad_values(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str) -> None:
    assert main([str(tmp_path / "ds"), *extra]) == 1
    assert capsys.readouterr().err == f"msynth-phantom: error: {message}\n"
    assert not (tmp_path / "ds").exists()


def test_existing_output_needs_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    assert main([str(out)]) == 1
    assert capsys.readouterr().err == (
        f"msynth-phantom: error: OUTPUT_DIR {out.resolve()} exists and is not empty; pass --overwrite to replace it\n"
    )
    assert main([str(out), "--overwrite"]) == 1
    assert capsys.readouterr().err == (
        f"msynth-phantom: error: OUTPUT_DIR {out.resolve()} is not an msynth-phantom folder; refusing to overwrite it\n"
    )
    assert (out / "notes.txt").read_text() == "mine\n"


def test_truth_must_sit_beside_the_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = (tmp_path / "ds").resolve()
    assert main([str(out), "--truth-dir", str(out / "truth")]) == 1
    assert capsys.readouterr().err == (
        f"msynth-phantom: error: --truth-dir {out / 'truth'} is inside OUTPUT_DIR {out}; "
        "the truth must sit beside the dataset\n"
    )


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    """The command line and the Python API, run with one seed, write byte-identical datasets and truth."""
    args = ["--n-controls", "1", "--n-patients", "1", "--voxel-size", "4", "--seed", "3"]
    assert main([str(tmp_path / "a" / "ds"), *args]) == 0
    generate_cohort(tmp_path / "b" / "ds", n_controls=1, n_patients=1, voxel_size=4, seed=3)
    for folder in ("ds", "ds-truth"):
        first, second = _tree(tmp_path / "a" / folder), _tree(tmp_path / "b" / folder)
        assert first.keys() == second.keys()
        assert [k for k in first if first[k] != second[k]] == []
    description = json.loads((tmp_path / "a" / "ds" / "dataset_description.json").read_text())
    assert description["GeneratedBy"][0]["Name"] == "msynth-phantom"
    assert main([str(tmp_path / "a" / "ds"), *args, "--overwrite", "--seed", "4"]) == 0
    changed = _tree(tmp_path / "a" / "ds")
    assert changed["sub-MS01/ses-01/anat/sub-MS01_ses-01_FLAIR.nii.gz"] != \
        _tree(tmp_path / "b" / "ds")["sub-MS01/ses-01/anat/sub-MS01_ses-01_FLAIR.nii.gz"]
