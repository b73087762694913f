"""N4 bias correction: removes a known smooth field inside the brain; zero and negative intensities are handled."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

from msynth.preprocessing._io import load_3d, squeeze_to
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


def test_n4_reads_a_singleton_4d_volume_as_3d(biased):
    """A T1w stored as (x, y, z, 1) gives exactly the 3-D file's correction, on the 3-D grid."""
    root = biased["path"]
    img = nib.load(root / "T1w.nii.gz")
    nib.Nifti1Image(img.get_fdata(dtype=np.float32)[..., None], img.affine, img.header).to_filename(
        root / "T1w4d.nii.gz")
    options = {"mask": root / "mask.nii.gz", "shrink_factor": 2, "iterations": (20, 20)}
    flat = n4_correct(root / "T1w.nii.gz", newpath=root / "3d", **options)
    singleton = n4_correct(root / "T1w4d.nii.gz", newpath=root / "4d", **options)
    for got, expected in ((singleton.corrected, flat.corrected), (singleton.bias_field, flat.bias_field)):
        got, expected = nib.load(got), nib.load(expected)
        assert got.shape == expected.shape == img.shape
        np.testing.assert_array_equal(got.get_fdata(), expected.get_fdata())
        np.testing.assert_array_equal(got.affine, expected.affine)


def test_load_3d_squeezes_only_trailing_singletons(tmp_path):
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    nib.Nifti1Image(data[..., None], np.diag([2.0, 2.0, 2.0, 1.0])).to_filename(tmp_path / "one.nii.gz")
    nib.Nifti1Image(np.stack([data, data], axis=-1), np.eye(4)).to_filename(tmp_path / "two.nii.gz")
    squeezed = load_3d(tmp_path / "one.nii.gz")
    assert squeezed.shape == (2, 3, 4)
    np.testing.assert_array_equal(np.asanyarray(squeezed.dataobj), data)
    np.testing.assert_array_equal(squeezed.affine, np.diag([2.0, 2.0, 2.0, 1.0]))
    assert load_3d(tmp_path / "two.nii.gz").shape == (2, 3, 4, 2)
    assert squeeze_to(squeezed) is squeezed
