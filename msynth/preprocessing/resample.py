"""Resampling of images already in register onto a named target grid.

The synthesis models work on a target grid: the grid of an acquired image (FLAIR space, PET space), or the T1w grid
at the model's voxel size when the target was not acquired. Images handed to this module are already aligned (e.g.
in space-T1w), so resampling is a change of grid through the two affines, with no transform. Interpolation is done
with :func:`scipy.ndimage.map_coordinates` directly on the nibabel affines, in slabs to bound memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from msynth.preprocessing._io import output_path

LOGGER = logging.getLogger("msynth.preprocessing")

GridInterpolation = Literal["linear", "nearest", "mask"]

_SLAB_VOXELS = 2_000_000


@dataclass(frozen=True)
class Grid:
    """A voxel grid: shape and voxel-to-world (RAS mm) affine."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @classmethod
    def of(cls, img: str | PathLike[str] | nib.Nifti1Image) -> Grid:
        """The grid of an image (file or nibabel image)."""
        img = nib.load(img) if isinstance(img, (str, PathLike)) else img
        return cls(tuple(int(n) for n in img.shape[:3]), img.affine.copy())


def target_grid(
    reference: str | PathLike[str] | nib.Nifti1Image,
    voxel_size: float | tuple[float, float, float] | None = None,
) -> Grid:
    """The grid of a reference image, or the same field of view and orientation at another voxel size.

    With ``voxel_size``, the axes keep the reference's directions (obliquity included), the number of voxels along
    each axis is the reference's extent divided by the new size (rounded, at least 1), and the new grid is centred on
    the reference's field of view, so both cover the same box up to less than one new voxel.

    Parameters
    ----------
    reference
        Image defining the field of view and orientation (e.g. the raw T1w: space-T1w).
    voxel_size
        New voxel size in mm (one value for isotropic), or ``None`` for the reference's own grid.

    Returns
    -------
    Grid
    """
    grid = Grid.of(reference)
    if voxel_size is None:
        return grid
    new_size = np.broadcast_to(np.asarray(voxel_size, dtype=float), (3,))
    if np.any(new_size <= 0):
        raise ValueError(f"voxel_size must be positive, got {voxel_size}")
    linear = grid.affine[:3, :3]
    old_size = np.linalg.norm(linear, axis=0)
    shape = np.maximum(1, np.round(np.asarray(grid.shape) * old_size / new_size)).astype(int)
    new_linear = linear / old_size * new_size
    centre = grid.affine @ np.append((np.asarray(grid.shape) - 1) / 2, 1)
    affine = np.eye(4)
    affine[:3, :3] = new_linear
    affine[:3, 3] = centre[:3] - new_linear @ ((shape - 1) / 2)
    return Grid(tuple(int(n) for n in shape), affine)


def resample_to_grid(
    img: nib.Nifti1Image,
    grid: Grid,
    *,
    interpolation: GridInterpolation = "linear",
    threshold: float = 0.5,
) -> nib.Nifti1Image:
    """Resample a 3-D image onto a grid.

    The image's field of view is the extent of its voxels (half a voxel beyond the outer voxel centres, where the
    outer values are extended); grid points outside it get 0.

    Parameters
    ----------
    img
        3-D image in the same world space as the grid.
    grid
        Target grid (:func:`target_grid`).
    interpolation
        ``'linear'`` (trilinear, float32 output: intensities, probabilities), ``'nearest'`` (keeps the input dtype:
        label maps), or ``'mask'`` (trilinear interpolation of the binary mask ``img > 0``, then ``>= threshold``;
        uint8 output: smoother than nearest and keeps the volume when the voxel size changes).
    threshold
        Cut-off for ``'mask'``.

    Returns
    -------
    nibabel.Nifti1Image
        On ``grid`` with the input's header (units, codes), dtype as above.
    """
    if len(img.shape) != 3:
        raise ValueError(f"resample_to_grid expects a 3-D image, got shape {img.shape}")
    data = np.asanyarray(img.dataobj)
    if interpolation == "mask":
        source, order, dtype = (data > 0).astype(np.float32), 1, np.uint8
    elif interpolation == "linear":
        source, order, dtype = data.astype(np.float32), 1, np.float32
    elif interpolation == "nearest":
        source, order, dtype = data, 0, data.dtype
    else:
        raise ValueError(f"interpolation must be 'linear', 'nearest' or 'mask', got {interpolation!r}")

    grid_to_source = np.linalg.inv(img.affine) @ grid.affine
    out = np.zeros(grid.shape, dtype=np.float32 if interpolation == "mask" else dtype)
    nx, ny, nz = grid.shape
    slab = max(1, _SLAB_VOXELS // (nx * ny))
    i, j = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    for k0 in range(0, nz, slab):
        k = np.arange(k0, min(nz, k0 + slab))
        ijk = np.stack([np.broadcast_to(i[..., None], (nx, ny, k.size)),
                        np.broadcast_to(j[..., None], (nx, ny, k.size)),
                        np.broadcast_to(k, (nx, ny, k.size))]).reshape(3, -1)
        coords = grid_to_source[:3, :3] @ ijk + grid_to_source[:3, 3:]
        values = ndi.map_coordinates(source, coords, order=order, mode="nearest", prefilter=False)
        outside = np.any((coords < -0.5) | (coords > np.asarray(source.shape)[:, None] - 0.5), axis=0)
        values[outside] = 0
        out[..., k0:k0 + k.size] = values.reshape(nx, ny, k.size)
    if interpolation == "mask":
        out = (out >= threshold).astype(dtype)
    header = img.header.copy()
    header.set_data_dtype(out.dtype)
    result = nib.Nifti1Image(out, grid.affine, header)
    result.header.set_slope_inter(1, 0)
    return result


def resample_to_target(
    in_file: str | PathLike[str],
    target: str | PathLike[str],
    *,
    newpath: str | PathLike[str],
    voxel_size: float | tuple[float, float, float] | None = None,
    interpolation: GridInterpolation = "linear",
    suffix: str = "target",
) -> Path:
    """Resample an aligned image onto a target image's grid, optionally at another voxel size.

    Parameters
    ----------
    in_file
        3-D image already in the target's world space (e.g. a space-T1w output).
    target
        Image naming the grid (e.g. the FLAIR in space-T1w for FLAIR models, the T1w for the model's voxel size).
    newpath
        Output directory.
    voxel_size, interpolation
        See :func:`target_grid` and :func:`resample_to_grid`.
    suffix
        Output name ``<in_file stem>_<suffix>.nii.gz``.

    Returns
    -------
    pathlib.Path
    """
    out_file = output_path(in_file, newpath, suffix)
    resample_to_grid(nib.load(in_file), target_grid(target, voxel_size),
                     interpolation=interpolation).to_filename(out_file)
    return out_file


def to_target_space(
    in_file: str | PathLike[str],
    target: str | PathLike[str],
    *,
    newpath: str | PathLike[str],
    target_xfm: str | PathLike[str] | None = None,
    voxel_size: float | tuple[float, float, float] | None = None,
    interpolation: Literal["linear", "nearest"] = "linear",
    suffix: str = "target",
) -> Path:
    """Bring a space-T1w image onto a model's target grid.

    Two targets, as in the papers: the grid of an acquired image in its own space (FLAIR space for FLAIR models, PET
    space for myelin models), reached through the inverse of that image's ``from-<key>_to-T1w`` transform
    (``target_xfm``); or, without ``target_xfm``, the grid of an image already in T1w space (the T1w itself), at the
    model's ``voxel_size`` when given.

    Parameters
    ----------
    in_file
        3-D image in space-T1w.
    target
        Image whose grid (and field of view) the output takes.
    newpath
        Output directory.
    target_xfm
        ``from-<key>_to-T1w_mode-image_xfm.mat`` of ``target`` (maps T1w points to target points).
    voxel_size
        New voxel size on the target's field of view (see :func:`target_grid`).
    interpolation
        ``'linear'`` for intensities, ``'nearest'`` for labels.

    Returns
    -------
    pathlib.Path
        ``<in_file stem>_<suffix>.nii.gz``.
    """
    if target_xfm is None:
        return resample_to_target(in_file, target, newpath=newpath, voxel_size=voxel_size,
                                  interpolation=interpolation, suffix=suffix)
    from msynth.preprocessing.registration import apply_transform, invert

    grid = target_grid(target, voxel_size)
    reference = output_path(in_file, newpath, f"{suffix}grid")
    nib.Nifti1Image(np.zeros(grid.shape, np.uint8), grid.affine).to_filename(reference)
    target_to_t1w = invert(target_xfm, out_xfm=output_path(target_xfm, newpath, "inverse", ".mat"))
    return apply_transform(in_file, reference, target_to_t1w, newpath=newpath, suffix=suffix,
                           interpolation="linear" if interpolation == "linear" else "nearestNeighbor")
