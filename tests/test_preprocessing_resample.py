"""Resampling onto target grids: geometry of the grid, exactness of linear interpolation, dtypes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from msynth.preprocessing.resample import Grid, resample_to_grid, resample_to_target, target_grid


def _oblique(zooms=(1.0, 1.0, 3.0), degrees=15.0) -> np.ndarray:
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    affine = np.eye(4)
    affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag(zooms)
    affine[:3, 3] = [-30, -40, -20]
    return affine


def _world(grid: Grid) -> np.ndarray:
    ijk = np.indices(grid.shape).reshape(3, -1)
    return (grid.affine[:3, :3] @ ijk + grid.affine[:3, 3:]).reshape(3, *grid.shape)


def _centre(grid: Grid) -> np.ndarray:
    return grid.affine @ np.append((np.asarray(grid.shape) - 1) / 2, 1)


def test_target_grid_keeps_field_of_view_and_orientation():
    reference = nib.Nifti1Image(np.zeros((60, 64, 20), np.float32), _oblique())
    grid = target_grid(reference, 2.0)
    assert grid.shape == (30, 32, 30)
    assert np.allclose(np.linalg.norm(grid.affine[:3, :3], axis=0), 2.0)
    directions = reference.affine[:3, :3] / np.linalg.norm(reference.affine[:3, :3], axis=0)
    assert np.allclose(grid.affine[:3, :3] / 2.0, directions)
    assert np.allclose(_centre(grid), _centre(Grid.of(reference)))
    same = target_grid(reference)
    assert same.shape == reference.shape and np.allclose(same.affine, reference.affine)


def test_linear_is_exact_for_a_linear_field():
    """A linear function of world position is reproduced exactly by trilinear interpolation inside the source."""
    source_grid = Grid((40, 40, 16), _oblique())
    x, y, z = _world(source_grid)
    source = nib.Nifti1Image((2 * x - y + 3 * z + 100).astype(np.float32), source_grid.affine)
    grid = target_grid(source, (1.7, 2.3, 2.0))
    out = resample_to_grid(source, grid)
    assert out.get_data_dtype() == np.float32 and np.allclose(out.affine, grid.affine)
    # inside the source's field of view (outside is 0)
    gx, gy, gz = world = _world(grid).reshape(3, -1)
    ijk = (np.linalg.inv(source_grid.affine) @ np.vstack([world, np.ones(world.shape[1])]))[:3]
    inside = np.all((ijk >= 0) & (ijk <= np.array(source_grid.shape)[:, None] - 1), axis=0)
    expected = 2 * gx - gy + 3 * gz + 100
    assert inside.mean() > 0.5
    assert np.allclose(out.get_fdata().ravel()[inside], expected[inside], atol=1e-3)


@pytest.mark.parametrize("interpolation", ["nearest", "mask"])
def test_labels_and_masks(interpolation):
    labels = np.zeros((40, 40, 40), np.int16)
    labels[10:30, 10:30, 10:30] = 3
    labels[15:25, 15:25, 15:25] = 7
    img = nib.Nifti1Image(labels, np.diag([1.0, 1.0, 1.0, 1.0]))
    out = resample_to_grid(img, target_grid(img, 2.5), interpolation=interpolation)
    data = np.asanyarray(out.dataobj)
    if interpolation == "nearest":
        assert data.dtype == np.int16 and set(np.unique(data)) == {0, 3, 7}
    else:
        assert data.dtype == np.uint8 and set(np.unique(data)) == {0, 1}
        assert data.sum() * 2.5**3 == pytest.approx(20**3, rel=0.1)  # the volume is kept


def test_resample_to_target_file(tmp_path):
    image = nib.Nifti1Image(np.random.default_rng(0).uniform(size=(20, 20, 10)).astype(np.float64), _oblique())
    image.to_filename(tmp_path / "in.nii.gz")
    image.to_filename(tmp_path / "target.nii.gz")
    out = resample_to_target(tmp_path / "in.nii.gz", tmp_path / "target.nii.gz", newpath=tmp_path / "out")
    result = nib.load(out)
    assert out.name == "in_target.nii.gz" and result.get_data_dtype() == np.float32
    assert np.allclose(result.get_fdata(), image.get_fdata(), atol=1e-6)  # same grid: unchanged
