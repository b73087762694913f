"""DTI fit: FA, RD, AD, MD of a simulated tensor field are recovered."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from dipy.core.gradients import gradient_table
from dipy.data import get_sphere
from dipy.sims.voxel import single_tensor

from msynth.preprocessing.checks import InputImageError
from msynth.preprocessing.dti import fit_dti, tensor_metrics

SHAPE = (12, 12, 8)


def _scheme() -> tuple[np.ndarray, np.ndarray]:
    """3 b=0 and 64 directions at b=1000 s/mm² (half of dipy's electrostatic 'repulsion' sphere, both signs)."""
    directions = get_sphere(name="repulsion100").vertices[:64]
    bvals = np.concatenate([np.zeros(3), np.full(64, 1000.0)])
    bvecs = np.vstack([np.zeros((3, 3)), directions])
    return bvals, bvecs


def _field(snr: float | None, seed: int = 0):
    """A ball of tensors (random orientations; FA 0.2–0.9, MD 0.6–1.0e-3 mm²/s) in an empty background."""
    rng = np.random.default_rng(seed)
    bvals, bvecs = _scheme()
    gtab = gradient_table(bvals, bvecs=bvecs)
    ijk = np.indices(SHAPE).reshape(3, -1).T
    inside = np.linalg.norm((ijk - (np.array(SHAPE) - 1) / 2) / (np.array(SHAPE) / 2), axis=1) < 0.9
    data = np.zeros((*SHAPE, bvals.size), np.float32)
    truth = {key: np.zeros(SHAPE, np.float32) for key in ("FA", "MD", "RD", "AD")}
    for index in map(tuple, ijk[inside]):
        ad = rng.uniform(1.2e-3, 2.0e-3)
        rd = ad * rng.uniform(0.1, 0.7)
        evals = np.array([ad, rd, rd])
        evecs, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        data[index] = single_tensor(gtab, S0=1000, evals=evals, evecs=evecs, snr=snr, rng=rng)
        md = evals.mean()
        truth["FA"][index] = np.sqrt(1.5 * np.sum((evals - md) ** 2) / np.sum(evals**2))
        truth["MD"][index], truth["RD"][index], truth["AD"][index] = md, rd, ad
    return data, bvals, bvecs, inside.reshape(SHAPE), truth


def test_noise_free_field_is_recovered():
    data, bvals, bvecs, inside, truth = _field(snr=None)
    maps = tensor_metrics(data, bvals, bvecs, inside)
    for key in ("FA", "RD", "AD", "MD"):
        error = np.abs(maps[key][inside] / truth[key][inside] - 1)
        assert error.max() < 0.02, (key, error.max())
        assert (maps[key][~inside] == 0).all()


def test_noisy_field_is_recovered_on_average():
    """Rician noise at SNR 50 on b=0: per-voxel scatter, but the mean FA and RD stay within 2 %."""
    data, bvals, bvecs, inside, truth = _field(snr=50)
    maps = tensor_metrics(data, bvals, bvecs, inside)
    for key in ("FA", "RD"):
        assert maps[key][inside].mean() == pytest.approx(truth[key][inside].mean(), rel=0.02)


def test_fit_dti_files(tmp_path):
    """End to end from BIDS files, with the mask computed from the b=0 image."""
    data, bvals, bvecs, inside, truth = _field(snr=None)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.Nifti1Image(data, affine).to_filename(tmp_path / "sub-01_dwi.nii.gz")
    np.savetxt(tmp_path / "sub-01_dwi.bval", bvals[None], fmt="%g")
    np.savetxt(tmp_path / "sub-01_dwi.bvec", bvecs.T, fmt="%.8f")

    maps = fit_dti(tmp_path / "sub-01_dwi.nii.gz", tmp_path / "sub-01_dwi.bval", tmp_path / "sub-01_dwi.bvec",
                   newpath=tmp_path / "out")

    mask = nib.load(maps.mask).get_fdata() > 0
    assert 2 * (mask & inside).sum() / (mask.sum() + inside.sum()) > 0.9
    both = mask & inside
    fa = nib.load(maps.fa)
    assert fa.shape == SHAPE and np.allclose(fa.affine, affine) and fa.get_data_dtype() == np.float32
    assert np.allclose(fa.get_fdata()[both], truth["FA"][both], rtol=0.02)
    assert np.allclose(nib.load(maps.rd).get_fdata()[both], truth["RD"][both], rtol=0.02)
    assert np.allclose(nib.load(maps.b0).get_fdata()[inside], 1000, rtol=1e-4)


def test_fit_dti_rejects_mismatched_gradients(tmp_path):
    data, bvals, bvecs, _, _ = _field(snr=None)
    nib.Nifti1Image(data, np.eye(4)).to_filename(tmp_path / "dwi.nii.gz")
    np.savetxt(tmp_path / "dwi.bval", bvals[None, :-1], fmt="%g")
    np.savetxt(tmp_path / "dwi.bvec", bvecs.T, fmt="%.8f")
    with pytest.raises(InputImageError, match="sub-01: DWI .bval has 66 b-values but the DWI has 67 volumes"):
        fit_dti(tmp_path / "dwi.nii.gz", tmp_path / "dwi.bval", tmp_path / "dwi.bvec", newpath=tmp_path,
                label="sub-01: DWI")
