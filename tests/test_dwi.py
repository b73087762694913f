"""DWI workflow: tensor maps of a simulated two-compartment brain come back in space-T1w."""

from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pytest
from dipy.core.gradients import gradient_table
from dipy.sims.voxel import single_tensor
from scipy import ndimage as ndi

from msynth.cli import run as cli
from msynth.utils.validation import errors_of, run_validator

from conftest import write_tiny_bids

WM_EVALS = np.array([1.7e-3, 0.3e-3, 0.3e-3])  # mm²/s: FA 0.80, RD 0.3e-3
GM_EVALS = np.array([0.9e-3, 0.8e-3, 0.7e-3])


def _fa(evals: np.ndarray) -> float:
    return float(np.sqrt(1.5 * ((evals - evals.mean()) ** 2).sum() / (evals**2).sum()))


@pytest.fixture(scope="module")
def dwi_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dwi")
    bids = write_tiny_bids(root / "bids", {"01": ["1"]})
    t1w = nb.load(bids / "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz")
    anatomy = t1w.get_fdata()
    white = anatomy > np.percentile(anatomy[anatomy > 0], 60)

    rng = np.random.default_rng(0)
    directions = rng.normal(size=(30, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    bvals, bvecs = np.r_[0, np.full(30, 1000.0)], np.r_[[[0, 0, 0]], directions]
    gradients = gradient_table(bvals, bvecs=bvecs)
    series = np.zeros(anatomy.shape + (31,), np.float32)
    series[white] = single_tensor(gradients, S0=1000, evals=WM_EVALS)
    series[(anatomy > 0) & ~white] = single_tensor(gradients, S0=800, evals=GM_EVALS)

    folder = bids / "sub-01/ses-1/dwi"
    folder.mkdir(parents=True)
    nb.save(nb.Nifti1Image(series, t1w.affine), folder / "sub-01_ses-1_dwi.nii.gz")
    np.savetxt(folder / "sub-01_ses-1_dwi.bval", bvals[None], fmt="%g")
    np.savetxt(folder / "sub-01_ses-1_dwi.bvec", bvecs.T, fmt="%.6f")
    (folder / "sub-01_ses-1_dwi.json").write_text(
        json.dumps({"RepetitionTime": 8.0, "EchoTime": 0.08, "PhaseEncodingDirection": "j", "TotalReadoutTime": 0.05})
    )
    out = root / "out"
    assert cli.main([str(bids), str(out), "participant", "-w", str(root / "work"), "--nprocs", "2"]) == 0
    return out, ndi.binary_erosion(white)


def _map(out, param: str) -> np.ndarray:
    name = f"sub-01_ses-1_space-T1w_model-DTI_param-{param}_dwimap.nii.gz"
    return nb.load(out / "sub-01/ses-1/dwi" / name).get_fdata()


@pytest.mark.parametrize(
    ("param", "truth"),
    [("FA", _fa(WM_EVALS)), ("RD", WM_EVALS[1:].mean()), ("AD", WM_EVALS[0]), ("MD", WM_EVALS.mean())],
)
def test_white_matter_tensor_maps_within_10_percent(dwi_run, param, truth):
    out, white = dwi_run
    assert np.median(_map(out, param)[white]) == pytest.approx(truth, rel=0.10)


def test_dwi_derivatives_validate(dwi_run):
    assert errors_of(run_validator(dwi_run[0])) == []


def test_dwi_without_bvec_fails_its_participant(tmp_path, capsys):
    bids = write_tiny_bids(tmp_path / "bids", {"01": ["1"]})
    folder = bids / "sub-01/ses-1/dwi"
    folder.mkdir(parents=True)
    image = nb.load(bids / "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz")
    series = np.random.default_rng(0).uniform(1, 2, image.shape + (7,)).astype(np.float32)
    nb.save(nb.Nifti1Image(series, image.affine), folder / "sub-01_ses-1_dwi.nii.gz")
    np.savetxt(folder / "sub-01_ses-1_dwi.bval", np.r_[0, np.full(6, 1000.0)][None], fmt="%g")
    argv = [str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"), "--skip-bids-validation"]
    assert cli.main(argv) == 1
    assert "sub-01 FAILED: sub-01 ses-1: DWI has no .bvec file" in capsys.readouterr().err
