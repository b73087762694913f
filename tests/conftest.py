"""Shared fixtures: a tiny real-anatomy BIDS dataset built from the MNI152 template at 4 mm."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

os.environ.setdefault("NO_ET", "1")

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
