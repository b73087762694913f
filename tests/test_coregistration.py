"""Co-registration workflow: a FLAIR misplaced by a known transform on its own oblique grid is put back."""

from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pytest
from nilearn.datasets import load_mni152_brain_mask
from scipy.spatial.transform import Rotation

from msynth.cli import run as cli
from msynth.preprocessing.registration import apply_transform, mean_displacement_mm, read_affine, write_affine
from msynth.utils.validation import errors_of, run_validator

from conftest import write_tiny_bids

#: T1w → FLAIR point map planted in the test (LPS mm): 6° and 4° rotations and a 5 mm shift.
ROTATION_DEG = (6.0, -4.0, 3.0)
SHIFT_MM = (5.0, -3.0, 4.0)


def _planted_matrix() -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_euler("xyz", ROTATION_DEG, degrees=True).as_matrix()
    matrix[:3, 3] = SHIFT_MM
    return matrix


@pytest.fixture(scope="module")
def coregistered(tmp_path_factory):
    root = tmp_path_factory.mktemp("coreg")
    bids = write_tiny_bids(root / "bids", {"01": ["1"]})
    anat = bids / "sub-01" / "ses-1" / "anat"
    t1w_path = anat / "sub-01_ses-1_T1w.nii.gz"
    t1w = nb.load(t1w_path)

    # FLAIR-like contrast (dark WM, bright GM) on an anisotropic, oblique 4 × 4 × 5 mm grid.
    data = t1w.get_fdata()
    flair_like = np.where(data > 0, 1100 - data, 0).astype(np.float32)
    contrast = root / "flair_on_t1w_grid.nii.gz"
    nb.save(nb.Nifti1Image(flair_like, t1w.affine), contrast)
    grid_affine = np.diag([4.0, 4.0, 5.0, 1.0])
    grid_affine[:3, :3] = Rotation.from_euler("z", 10, degrees=True).as_matrix() @ np.diag([4.0, 4.0, 5.0])
    grid_affine[:3, 3] = [-98, -120, -70]
    grid = root / "flair_grid.nii.gz"
    nb.save(nb.Nifti1Image(np.zeros((52, 60, 38), np.float32), grid_affine), grid)
    to_t1w = write_affine(np.linalg.inv(_planted_matrix()), root / "flair_to_t1w_points.mat")
    moved = apply_transform(contrast, grid, to_t1w, newpath=root)
    flair = anat / "sub-01_ses-1_FLAIR.nii.gz"
    nb.save(nb.load(moved), flair)
    (anat / "sub-01_ses-1_FLAIR.json").write_text(json.dumps({"RepetitionTime": 9.0, "EchoTime": 0.09}))

    # what resampling through the planted transform gives: the pipeline's output should match it
    planted = write_affine(_planted_matrix(), root / "planted.mat")
    expected = nb.load(apply_transform(flair, t1w_path, planted, newpath=root, suffix="expected")).get_fdata()

    out = root / "out"
    assert cli.main([str(bids), str(out), "participant", "-w", str(root / "work"), "--nprocs", "2"]) == 0
    return out, expected


def test_transform_recovered_within_half_a_voxel(coregistered):
    anat = coregistered[0] / "sub-01" / "ses-1" / "anat"
    xfm = anat / "sub-01_ses-1_from-FLAIR_to-T1w_mode-image_xfm.mat"
    error = mean_displacement_mm(read_affine(xfm), _planted_matrix(), load_mni152_brain_mask(resolution=4))
    assert error <= 1.0  # the issue asks for half a voxel (2 mm) at 4 mm; 0.5 mm was measured


def test_flair_resampled_onto_the_t1w_grid(coregistered):
    out, expected = coregistered
    anat = out / "sub-01" / "ses-1" / "anat"
    flair = nb.load(anat / "sub-01_ses-1_space-T1w_desc-preproc_FLAIR.nii.gz")
    t1w = nb.load(anat / "sub-01_ses-1_space-T1w_desc-preproc_T1w.nii.gz")
    assert flair.shape == t1w.shape and np.allclose(flair.affine, t1w.affine)
    brain = load_mni152_brain_mask(resolution=4).get_fdata() > 0
    # Compare with resampling the raw FLAIR through the planted transform. N4 alters the intensities (0.93 for the
    # N4 image through the planted transform); the unregistered image reaches only 0.28.
    assert np.corrcoef(flair.get_fdata()[brain], expected[brain])[0, 1] > 0.85
    sidecar = json.loads((anat / "sub-01_ses-1_space-T1w_desc-preproc_FLAIR.json").read_text())
    assert sidecar["Sources"][0] == "bids:raw:sub-01/ses-1/anat/sub-01_ses-1_FLAIR.nii.gz"
    assert sidecar["Registration"]["Metric"] == "Mattes mutual information"


def test_coregistered_derivatives_validate(coregistered):
    assert errors_of(run_validator(coregistered[0])) == []
