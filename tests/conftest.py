"""Shared fixtures: a tiny real-anatomy BIDS dataset built from the MNI152 template at 4 mm."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

os.environ.setdefault("NO_ET", "1")
os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"  # as msynth runs ITK (msynth.utils.itk), before any ITK work

#: Real MS data (Lesjak et al., CC-BY) beside the project; tests that need it skip when it is absent.
OPEN_MS_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "open_ms_data"


def _mni_head(voxel_size: int) -> nb.Nifti1Image:
    """The MNI152 2009 T1 template (shipped with nilearn) resampled to ``voxel_size`` mm."""
    from nilearn.datasets import load_mni152_template

    return load_mni152_template(resolution=voxel_size)


def write_tiny_bids(root: Path, subjects: dict[str, list[str]], voxel_size: int = 4) -> Path:
    """Write a minimal valid BIDS dataset: one T1w per session, from the MNI template.

    ``subjects`` maps a label to its session labels (an empty list: no session level).
    """
    template = _mni_head(voxel_size)
    data = 1000 * np.asarray(template.dataobj, dtype=np.float32)
    data[data < 1] = 0  # the template's sub-normal values outside the brain
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "tiny", "BIDSVersion": "1.10.0", "DatasetType": "raw", "Authors": ["msynth tests", "B"]})
    )
    (root / "README").write_text("A tiny test dataset built from the MNI152 2009 template shipped with nilearn.\n")
    rows = ["participant_id\tage\tsex\tgroup"]
    rng = np.random.default_rng(0)
    for subject, sessions in subjects.items():
        rows.append(f"sub-{subject}\t40\tF\tMS")
        for session in sessions or [None]:
            folder = root / f"sub-{subject}" / (f"ses-{session}" if session else "") / "anat"
            folder.mkdir(parents=True, exist_ok=True)
            stem = f"sub-{subject}" + (f"_ses-{session}" if session else "") + "_T1w"
            noisy = np.clip(data + rng.normal(0, 10, data.shape).astype(np.float32) * (data > 0), 0, None)
            image = nb.Nifti1Image(noisy, template.affine)
            image.header.set_xyzt_units("mm", "sec")
            nb.save(image, folder / f"{stem}.nii.gz")
            (folder / f"{stem}.json").write_text(
                json.dumps({"RepetitionTime": 2.3, "EchoTime": 0.003, "FlipAngle": 9, "SkullStripped": True})
            )
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def tiny_bids(tmp_path: Path) -> Path:
    """Two participants with two sessions each, 4 mm."""
    return write_tiny_bids(tmp_path / "bids", {"01": ["1", "2"], "02": ["1", "2"]})


@pytest.fixture(scope="session")
def phantom_participants(tmp_path_factory):
    """Two 4 mm phantom patients (seed 3) and their participant-level outputs for session 01.

    Returns ``(cohort, output_dir, work_dir)``; shared by the pipeline, masks and training tests (about 4 minutes on
    2 cores). A later run with other options and the same work folder recomputes only what those options change.
    """
    from msynth.cli import run as cli
    from msynth.phantom.cohort import generate_cohort

    root = tmp_path_factory.mktemp("phantom")
    cohort = generate_cohort(root / "bids", n_controls=0, n_patients=2, voxel_size=4.0, seed=3)
    out, work = root / "out", root / "work"
    argv = [str(cohort.bids_dir), str(out), "participant", "-w", str(work), "--session-label", "01", "--nprocs", "2"]
    assert cli.main(argv) == 0, f"the participant level failed on the 4 mm phantom; see {out}/sub-*/log"
    return cohort, out, work


@pytest.fixture(scope="session")
def tiny_flair_model(phantom_participants, tmp_path_factory):
    """A tiny 5-input FLAIR FCN trained by ``msynth-train`` on the phantom derivatives (2 folds, 4 epochs, Adam)."""
    from msynth.cli import train as train_cli

    model_dir = tmp_path_factory.mktemp("model") / "tiny-flair"
    argv = ["flair", "--derivatives", str(phantom_participants[1]), "--out", str(model_dir), "--folds", "2",
            "--epochs", "4", "--patch-size", "16", "--features", "8", "--depth", "2", "--lr", "5e-3", "--device", "cpu",
            "--optimizer", "adam", "--nprocs", "2", "--data-source", "msynth phantom, seed 3", "--data-license", "CC0",
            "--subject-salt", "s3cret"]
    assert train_cli.main(argv) == 0
    return model_dir
