"""synthesis_metrics: the row of the participant's synthesis metrics TSV, on constructed images."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pytest

from msynth.analysis.evaluation import synthesis_metrics
from msynth.analysis.metrics import ssim


@pytest.fixture
def images(tmp_path):
    """A FLAIR-like image: NAWM 100, lesion 150, surrounding NAWM 120; brain = all but a border."""
    shape = (16, 16, 16)
    brain = np.zeros(shape, bool)
    brain[2:-2, 2:-2, 2:-2] = True
    lesion = np.zeros(shape, bool)
    lesion[7:9, 7:9, 7:9] = True
    near = np.zeros(shape, bool)
    near[6:10, 6:10, 6:10] = True
    near &= ~lesion
    acquired = np.where(brain, 100.0, 0.0) + 50.0 * lesion + 20.0 * near
    acquired += np.random.default_rng(0).normal(0, 1, shape) * brain
    files = {}
    for name, data in {"acquired": acquired, "brain_mask": brain, "lesion_mask": lesion,
                       "nawm": brain & ~lesion & ~near, "surrounding_nawm": near}.items():
        files[name] = tmp_path / f"{name}.nii.gz"
        nb.Nifti1Image(data.astype(np.float32), np.eye(4)).to_filename(files[name])
    return files, acquired


def test_identical_images_score_perfectly(images, tmp_path):
    files, acquired = images
    row = synthesis_metrics(synthetic=files["acquired"], **files).iloc[0]
    assert row["mse"] == pytest.approx(0.0) and row["ssim"] == pytest.approx(1.0) and np.isinf(row["psnr"])
    assert row["ratio1_synthetic"] == row["ratio1_acquired"]
    assert row["ratio1_acquired"] == pytest.approx(150 / 100, rel=0.01)
    assert row["ratio2_acquired"] == pytest.approx(150 / 120, rel=0.01)
    assert np.isnan(row["lesion_dice"])  # no lesion masks given


def test_scale_does_not_matter_but_lost_contrast_does(images, tmp_path):
    """Metrics compare z-scored images: a rescaled copy is perfect; a copy without the lesion loses Ratio 1."""
    files, acquired = images
    rescaled, flat = tmp_path / "rescaled.nii.gz", tmp_path / "flat.nii.gz"
    nb.Nifti1Image((3 * acquired).astype(np.float32), np.eye(4)).to_filename(rescaled)
    lesion = nb.load(files["lesion_mask"]).get_fdata() > 0
    nb.Nifti1Image(np.where(lesion, 100.0, acquired).astype(np.float32), np.eye(4)).to_filename(flat)
    assert synthesis_metrics(synthetic=rescaled, **files).iloc[0]["mse"] == pytest.approx(0.0, abs=1e-9)
    row = synthesis_metrics(synthetic=flat, **files).iloc[0]
    assert row["mse"] > 0.01 and row["ratio1_synthetic"] == pytest.approx(1.0, abs=0.01)


def test_ssim_is_scored_inside_the_brain_on_the_acquired_scale(images, tmp_path):
    """SSIM ignores what surrounds the brain (an acquired FLAIR keeps its skull) and equals the cross-validation's
    score: the synthetic image matched to the acquired one's brain mean and SD, both 0 outside the brain.

    On z-scores (the former computation) the skull changed SSIM, and the shipped model's synthetic FLAIR of a fresh
    2 mm phantom session scored 0.756 where it now scores 0.878.
    """
    files, acquired = images
    brain = nb.load(files["brain_mask"]).get_fdata() > 0
    rng = np.random.default_rng(1)
    synthetic = np.where(brain, 0.5 * acquired + rng.normal(0, 4, acquired.shape), 0.0)
    with_skull = acquired + np.where(brain, 0.0, rng.uniform(50, 300, acquired.shape))
    paths = {}
    for name, data in {"synthetic": synthetic, "skull": with_skull}.items():
        paths[name] = tmp_path / f"{name}.nii.gz"
        nb.Nifti1Image(data.astype(np.float32), np.eye(4)).to_filename(paths[name])
    without = synthesis_metrics(synthetic=paths["synthetic"], **files).iloc[0]["ssim"]
    skull_files = {**files, "acquired": paths["skull"]}
    with_ = synthesis_metrics(synthetic=paths["synthetic"], **skull_files).iloc[0]["ssim"]
    assert with_ == pytest.approx(without, abs=1e-6)
    s, a = synthetic[brain], acquired[brain]
    matched = ((synthetic - s.mean()) / s.std() * a.std() + a.mean()) * brain
    assert without == pytest.approx(ssim(matched, acquired * brain, brain), abs=1e-6)
    assert 0.3 < without < 0.99  # the noise costs structure; a rescaled copy alone would score 1


def test_lesion_dice_of_the_automatic_masks(images, tmp_path):
    files, _ = images
    one, other, empty = (tmp_path / f"{name}.nii.gz" for name in ("one", "other", "empty"))
    mask = np.zeros((16, 16, 16), np.uint8)
    mask[7:9, 7:9, 7:9] = 1
    nb.Nifti1Image(mask, np.eye(4)).to_filename(one)
    mask[7:9, 7:9, 7] = 0  # half of it
    nb.Nifti1Image(mask, np.eye(4)).to_filename(other)
    nb.Nifti1Image(np.zeros_like(mask), np.eye(4)).to_filename(empty)
    dice = synthesis_metrics(synthetic=files["acquired"], synthetic_lesions=one, acquired_lesions=other, **files)
    assert dice.iloc[0]["lesion_dice"] == pytest.approx(2 * 4 / (8 + 4))
    none = synthesis_metrics(synthetic=files["acquired"], synthetic_lesions=empty, acquired_lesions=empty, **files)
    assert np.isnan(none.iloc[0]["lesion_dice"])
