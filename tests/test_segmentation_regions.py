"""Segmentation science on synthetic volumes: given-mask checks, lesion statistics, NAWM and distance to CSF."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from msynth.preprocessing.checks import InputImageError
from msynth.segmentation.lesions import (
    binarize_resampled,
    check_lesion_mask,
    grow_lesions,
    lesion_statistics,
    lesion_summary,
    load_parameters,
    remove_small,
)
from msynth.segmentation.regions import region_masks, surrounding_nawm_mask

AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])
MASK_NAME = "sub-07_ses-02_space-FLAIR_label-lesion_mask.nii.gz"


def _save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.Nifti1Image(data, affine).to_filename(path)
    return path


def _mask(shape=(10, 12, 8), dtype=np.uint8) -> np.ndarray:
    data = np.zeros(shape, dtype)
    data[3:5, 4:6, 2:4] = 1
    return data


# --- given lesion masks ---------------------------------------------------------------------------------------------

def _shifted(path: Path) -> Path:
    affine = AFFINE.copy()
    affine[0, 3] += 1.5
    return _save(path, _mask(), affine)


def _labels(path: Path) -> Path:
    data = _mask()
    data[7, 7, 5] = 2
    return _save(path, data)


def _probability(path: Path) -> Path:
    data = _mask(dtype=np.float32) * 0.8
    return _save(path, data)


BAD_MASKS = [
    (lambda p: _save(p, _mask((10, 12, 9))),
     "sub-07 ses-02: lesion mask has shape (10, 12, 9) but ref_FLAIR.nii.gz, the image it was drawn on, has shape "
     "(10, 12, 8) — give the mask on the grid of the image it was drawn on (same shape and header)"),
    (_shifted,
     "sub-07 ses-02: lesion mask is placed 1.50 mm away from ref_FLAIR.nii.gz, the image it was drawn on (their "
     "affines differ) — save the mask with the header (qform/sform) of the image it was drawn on"),
    (_labels,
     "sub-07 ses-02: lesion mask is not binary: it holds 3 distinct values (0, 1, 2); msynth expects 0 (background) "
     "and 1 (lesion) — threshold a probability map, or merge the labels of a label map, and save 0/1"),
    (_probability,
     "sub-07 ses-02: lesion mask is not binary: it holds 2 distinct values (0, 0.8); msynth expects 0 (background) "
     "and 1 (lesion) — threshold a probability map, or merge the labels of a label map, and save 0/1"),
    (lambda p: p.write_bytes(b"") and p,
     "sub-07 ses-02: lesion mask file is empty (0 bytes) — re-export or re-copy the image"),
]


@pytest.mark.parametrize(("make", "message"), BAD_MASKS)
def test_bad_lesion_mask_message(tmp_path: Path, make, message: str) -> None:
    reference = _save(tmp_path / "ref_FLAIR.nii.gz", np.ones((10, 12, 8), np.float32))
    mask = tmp_path / MASK_NAME
    make(mask)
    with pytest.raises(InputImageError, match=re.escape(f"{message} (file: {mask})")):
        check_lesion_mask(mask, reference)


def test_empty_lesion_mask_is_a_warning(tmp_path: Path, caplog) -> None:
    """A healthy control's mask is empty: accepted, with a warning naming the file in case it is the wrong one."""
    reference = _save(tmp_path / "ref_FLAIR.nii.gz", np.ones((10, 12, 8), np.float32))
    mask = _save(tmp_path / MASK_NAME, np.zeros((10, 12, 8), np.uint8))
    with caplog.at_level("WARNING", logger="msynth.segmentation"):
        check_lesion_mask(mask, reference)
    assert "sub-07 ses-02: lesion mask" in caplog.text and "is empty (no lesion voxel)" in caplog.text


def test_good_lesion_mask_passes(tmp_path: Path) -> None:
    reference = _save(tmp_path / "ref_FLAIR.nii.gz", np.ones((10, 12, 8), np.float32))
    check_lesion_mask(_save(tmp_path / MASK_NAME, _mask(dtype=np.float32)), reference)


def test_binarize_resampled_keeps_volume(tmp_path: Path) -> None:
    """A 0/1 ball resampled linearly and thresholded at 0.5 keeps its volume within 5 %."""
    grid = np.indices((40, 40, 40)) - 19.5
    ball = (np.sqrt((grid ** 2).sum(axis=0)) <= 12).astype(np.float32)
    fine = nib.Nifti1Image(ball, np.eye(4))
    coarse_affine = np.diag([1.5, 1.5, 1.5, 1.0])
    coarse_affine[:3, 3] = 0.25
    from nilearn.image import resample_img

    with warnings.catch_warnings():  # nilearn warns about linear resampling of a binary image: that is the point
        warnings.simplefilter("ignore", UserWarning)
        linear = resample_img(fine, target_affine=coarse_affine, target_shape=(27, 27, 27), interpolation="linear",
                              force_resample=True, copy_header=True)
    linear.to_filename(tmp_path / "ball_linear.nii.gz")
    out = binarize_resampled(tmp_path / "ball_linear.nii.gz", newpath=tmp_path / "out")
    img = nib.load(out)
    assert img.get_data_dtype() == np.uint8
    volume = np.count_nonzero(np.asanyarray(img.dataobj)) * 1.5 ** 3
    assert volume == pytest.approx(ball.sum(), rel=0.05)
    assert set(np.unique(np.asanyarray(img.dataobj))) == {0, 1}


# --- lesion statistics ------------------------------------------------------------------------------------------------

def _three_lesions() -> np.ndarray:
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[2:5, 2:5, 2:5] = 1          # 27 voxels
    mask[10:12, 10:12, 10] = 1        # 4 voxels
    mask[12, 12, 11] = 1              # touches the 4-voxel lesion by a corner only
    mask[17, 2, 17] = 1               # 1 voxel
    return mask


@pytest.mark.parametrize(("connectivity", "volumes"), [(26, [27, 5, 1]), (6, [27, 4, 1, 1])])
def test_lesion_statistics_components(connectivity: int, volumes: list[int]) -> None:
    affine = np.diag([1.0, 2.0, 1.5, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 2.0]
    stats = lesion_statistics(nib.Nifti1Image(_three_lesions(), affine), connectivity=connectivity)
    assert stats["lesion"].tolist() == list(range(1, len(volumes) + 1))
    assert stats["n_voxels"].tolist() == volumes
    np.testing.assert_allclose(stats["volume_mm3"], np.array(volumes) * 3.0)
    # the largest lesion is the cube 2..4: centroid voxel (3, 3, 3)
    np.testing.assert_allclose(stats.loc[0, ["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]].astype(float),
                               [-10.0 + 3.0, 5.0 + 6.0, 2.0 + 4.5])
    summary = lesion_summary(stats)
    assert summary == {"n_lesions": len(volumes), "total_volume_mm3": pytest.approx(33 * 3.0),
                       "total_volume_ml": pytest.approx(0.099)}


def test_lesion_statistics_empty() -> None:
    stats = lesion_statistics(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), np.eye(4)))
    assert len(stats) == 0 and "volume_mm3" in stats.columns
    assert lesion_summary(stats) == {"n_lesions": 0, "total_volume_mm3": 0.0, "total_volume_ml": 0.0}
    stats.to_csv("/dev/null", sep="\t", index=False, na_rep="n/a")


# --- lesion growth helpers ------------------------------------------------------------------------------------------

def test_grow_lesions_is_hysteresis() -> None:
    belief = np.zeros((12, 5, 5), np.float32)
    belief[1:5, 2, 2] = [2.5, 4.0, 2.5, 2.2]   # seed at 4.0 grows over the 2+ run
    belief[8:11, 2, 2] = [2.5, 2.9, 2.5]        # bright run without a seed: dropped
    out = grow_lesions(belief, np.ones_like(belief, bool), seeds=belief >= 3.0, growth_threshold=2.0)
    assert np.flatnonzero(out[:, 2, 2]).tolist() == [1, 2, 3, 4]
    limited = np.ones_like(belief, bool)
    limited[3, 2, 2] = False                   # growth only through candidates
    out = grow_lesions(belief, limited, seeds=belief >= 3.0, growth_threshold=2.0)
    assert np.flatnonzero(out[:, 2, 2]).tolist() == [1, 2]


def test_remove_small_by_volume() -> None:
    mask = _three_lesions().astype(bool)
    kept = remove_small(mask, voxel_volume_mm3=3.0, min_volume_mm3=10.0)
    assert np.count_nonzero(kept) == 27 + 5


def test_parameters_file_and_overrides(tmp_path: Path) -> None:
    shipped = load_parameters()
    assert shipped["Reference"].startswith("Schmidt P")
    assert load_parameters({"SeedThreshold": 9.0})["SeedThreshold"] == 9.0
    (tmp_path / "p.json").write_text(json.dumps({"MinLesionVolumeMM3": 1.0}))
    assert load_parameters(tmp_path / "p.json")["MinLesionVolumeMM3"] == 1.0
    with pytest.raises(ValueError, match="unknown lesion-detection parameters \\['Kappa'\\]"):
        load_parameters({"Kappa": 0.3})


# --- NAWM, surrounding NAWM, distance to CSF --------------------------------------------------------------------------

def test_distance_to_csf_sphere(tmp_path: Path) -> None:
    """A CSF ball of radius 10 mm in a brain ball of radius 40 mm, on an anisotropic grid: distance = r - 10."""
    zooms = np.array([1.0, 1.5, 2.0])
    shape = (90, 60, 46)
    affine = np.diag([*zooms, 1.0])
    centre = (np.array(shape) - 1) / 2
    coords = (np.indices(shape).T - centre).T * zooms[:, None, None, None]
    radius = np.sqrt((coords ** 2).sum(axis=0))
    brain = radius <= 40.0
    csf = np.where(radius <= 10.0, 0.9, 0.05).astype(np.float32)
    wm = np.where(brain & (radius > 10.0), 0.95, 0.0).astype(np.float32)
    lesion = np.zeros(shape, np.uint8)
    lesion[60:63, 30:32, 23:25] = 1
    paths = {name: _save(tmp_path / f"{name}.nii.gz", data, affine)
             for name, data in (("wm", wm), ("csf", csf), ("lesion", lesion), ("brain", brain.astype(np.uint8)))}
    result = region_masks(paths["wm"], paths["csf"], paths["lesion"], paths["brain"], newpath=tmp_path / "out")
    distance = np.asarray(nib.load(result.distance_to_csf).dataobj)
    assert distance.dtype == np.float32
    assert np.all(distance[radius <= 10.0] == 0) and np.all(distance[~brain] == 0)
    shell = brain & (radius > 12.0)
    # nearest CSF voxel centre is within one voxel diagonal of the analytic sphere surface
    error = distance[shell] - (radius[shell] - 10.0)
    assert np.abs(error).max() < np.linalg.norm(zooms)
    assert np.abs(error).mean() < 0.6

    nawm = np.asarray(nib.load(result.nawm).dataobj) > 0
    ring = np.asarray(nib.load(result.surrounding_nawm).dataobj) > 0
    assert not np.any(nawm & (lesion > 0))
    assert not np.any(ring & (lesion > 0)) and np.all(nawm[ring])
    assert np.count_nonzero(nawm) == np.count_nonzero(brain & (radius > 10.0)) - lesion.sum()
    # a 3x2x2 block dilated 5 times with the 6-connected cross: the city-block ball of radius 5 around it
    expected = ndimage.distance_transform_cdt(lesion == 0, metric="taxicab") <= 5
    assert np.array_equal(ring, expected & nawm)


def test_surrounding_nawm_without_lesion_is_empty() -> None:
    nawm = np.ones((5, 5, 5), bool)
    assert not surrounding_nawm_mask(nawm, np.zeros_like(nawm)).any()


def test_distance_to_csf_needs_csf(tmp_path: Path) -> None:
    data = np.ones((6, 6, 6), np.float32)
    paths = [_save(tmp_path / f"{n}.nii.gz", d) for n, d in
             (("wm", data), ("csf", 0 * data), ("lesion", np.zeros((6, 6, 6), np.uint8)), ("brain", data))]
    with pytest.raises(ValueError, match="no brain voxel has a CSF probability ≥ 0.5"):
        region_masks(*paths, newpath=tmp_path / "out")
