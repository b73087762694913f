"""N4 bias correction: removes a known smooth field inside the brain; zero and negative intensities are handled."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

from msynth.preprocessing.bias import n4_correct


@pytest.fixture
def biased(tmp_path):
    """MNI152 template at 4 mm times a smooth multiplicative field (±35 %), with negative background values."""
    template = load_mni152_template(resolution=4)
    truth = template.get_fdata(dtype=np.float32) * 1000
    brain = load_mni152_brain_mask(resolution=4).get_fdata() > 0
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in truth.shape], indexing="ij")
    field = np.exp(0.3 * x - 0.2 * y + 0.05 * z * x)
    observed = truth * field
    background = ~brain & (truth == 0)
    observed[background] = np.random.default_rng(0).normal(0, 5, background.sum())  # negative and positive noise
    nib.Nifti1Image(observed.astype(np.float32), template.affine).to_filename(tmp_path / "T1w.nii.gz")
    nib.Nifti1Image(brain.astype(np.uint8), template.affine).to_filename(tmp_path / "mask.nii.gz")
    return {"truth": truth, "field": field, "brain": brain, "path": tmp_path}


def test_n4_removes_field_inside_mask(biased):
    """The estimated field follows the imposed one; what remains is N4's floor on the template itself (std 0.04)."""
    root = biased["path"]
    result = n4_correct(root / "T1w.nii.gz", newpath=root / "out", mask=root / "mask.nii.gz", shrink_factor=2,
                        iterations=(50, 50, 50))
    corrected = nib.load(result.corrected).get_fdata()
    estimated = nib.load(result.bias_field).get_fdata()
    inside = biased["brain"] & (biased["truth"] > 100)
    imposed = np.log(biased["field"][inside])
    residual = np.log(corrected[inside] / biased["truth"][inside])
    assert np.corrcoef(np.log(estimated[inside]), imposed)[0, 1] > 0.9
    assert residual.std() < 0.5 * imposed.std(), (residual.std(), imposed.std())
    # the intensity scale is kept (the field has mean 1 in the mask)
    assert np.mean(corrected[inside]) == pytest.approx(np.mean(biased["truth"][inside] * biased["field"][inside]),
                                                       rel=0.05)


def test_n4_handles_zero_and_negative(biased):
    root = biased["path"]
    result = n4_correct(root / "T1w.nii.gz", newpath=root / "out", shrink_factor=2, iterations=(50, 50, 50))  # no mask
    corrected = nib.load(result.corrected)
    data = corrected.get_fdata()
    observed = nib.load(root / "T1w.nii.gz").get_fdata()
    assert corrected.get_data_dtype() == np.float32 and np.isfinite(data).all()
    assert (data >= 0).all() and (data[observed <= 0] == 0).all()
    assert np.allclose(corrected.affine, nib.load(root / "T1w.nii.gz").affine)
    field = nib.load(result.bias_field).get_fdata()
    assert np.isfinite(field).all() and field.min() > 0
