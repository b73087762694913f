"""Voxel grids, rigid poses and resampling for the phantom.

Coordinates are RAS millimetres (the NIfTI convention) everywhere in the phantom; the conversion to ITK's LPS
happens once, in :func:`write_itk_affine`, when a true transform is written for ANTs.

Three frames take part in every acquisition:

* the *atlas* frame: MNI152 millimetres, where the template anatomy lives;
* the *anatomical* frame of one subject: the native anatomy (a smooth deformation of the atlas) on a box grid;
* the *scanner* frame: world coordinates of the written images.  The head sits in the scanner with a pose
  ``P`` (anatomical -> scanner) and moves a little between sequences (``M_k``, scanner -> scanner), so sequence
  ``k`` sees the anatomy through ``H_k = M_k @ P``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import ants
import numpy as np
from scipy import ndimage

#: RAS <-> LPS sign flip (its own inverse).
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Grid:
    """A 3-D voxel grid: array shape and voxel -> world (RAS mm) affine."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def zooms(self) -> np.ndarray:
        """Voxel size along each array axis (mm)."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def rotation(self) -> np.ndarray:
        """Direction cosines of the array axes (columns), a 3x3 orthonormal matrix up to axis flips."""
        return self.affine[:3, :3] / self.zooms

    def world_coordinates(self) -> np.ndarray:
        """World (RAS mm) coordinates of every voxel centre, shape ``(3, *shape)``."""
        ijk = np.indices(self.shape, dtype=np.float64).reshape(3, -1)
        xyz = self.affine[:3, :3] @ ijk + self.affine[:3, 3:]
        return xyz.reshape((3, *self.shape))


def rotation_matrix(angles_rad: np.ndarray) -> np.ndarray:
    """Rotation about x, then y, then z (right-handed, radians) as a 3x3 matrix."""
    ax, ay, az = angles_rad
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def rigid(angles_rad: np.ndarray, translation_mm: np.ndarray, centre_mm: np.ndarray | None = None) -> np.ndarray:
    """4x4 rigid transform rotating about ``centre_mm`` (default origin) then translating."""
    centre = np.zeros(3) if centre_mm is None else np.asarray(centre_mm, dtype=float)
    rot = rotation_matrix(np.asarray(angles_rad, dtype=float))
    out = np.eye(4)
    out[:3, :3] = rot
    out[:3, 3] = centre - rot @ centre + np.asarray(translation_mm, dtype=float)
    return out


def box_grid(lower_mm: np.ndarray, upper_mm: np.ndarray, spacing_mm: float) -> Grid:
    """Axis-aligned RAS grid covering the box ``[lower, upper]`` with isotropic spacing."""
    lower = np.asarray(lower_mm, dtype=float)
    shape = tuple(int(n) for n in np.floor((np.asarray(upper_mm) - lower) / spacing_mm).astype(int) + 1)
    affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    affine[:3, 3] = lower
    return Grid(shape, affine)  # type: ignore[arg-type]


def centred_grid(centre_mm: np.ndarray, directions: np.ndarray, spacing_mm: np.ndarray, fov_mm: np.ndarray) -> Grid:
    """Grid of field of view ``fov_mm`` centred on ``centre_mm`` with array axes along ``directions`` (columns).

    This is how a scanner places a slab: the operator centres the field of view on the head and tilts it.
    """
    spacing = np.asarray(spacing_mm, dtype=float)
    shape = tuple(int(n) for n in np.maximum(np.round(np.asarray(fov_mm) / spacing), 1).astype(int))
    lin = np.asarray(directions, dtype=float) * spacing
    half = (np.array(shape) - 1) / 2.0
    affine = np.eye(4)
    affine[:3, :3] = lin
    affine[:3, 3] = np.asarray(centre_mm, dtype=float) - lin @ half
    return Grid(shape, affine)  # type: ignore[arg-type]


def footprint_sigma(target: Grid, source: Grid, target_to_source: np.ndarray, extra_fwhm_mm: float = 0.0) -> np.ndarray:
    """Gaussian sigma (in source voxels, per source axis) that turns source samples into target voxel averages.

    A target voxel of width ``w`` integrates a box whose variance is ``w**2 / 12``; the source voxels already carry
    ``s**2 / 12``, so the blur adds the difference.  An optional isotropic point-spread function (FWHM, mm) is added
    in quadrature.  The target covariance is rotated into source axes and its diagonal kept (exact for axis-aligned
    grids, a close approximation for the few-degree tilts used here).
    """
    rot = target_to_source[:3, :3] @ target.rotation
    cov = rot @ np.diag(target.zooms**2 / 12.0) @ rot.T
    var_psf = (extra_fwhm_mm / 2.3548) ** 2
    var = np.diag(cov) + var_psf - source.zooms**2 / 12.0
    return np.sqrt(np.maximum(var, 0.0)) / source.zooms


def _support(data: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Index bounds ``[lo, hi)`` of the non-zero part of ``data`` (None when all zero)."""
    bounds = []
    for axis in range(3):
        hit = np.flatnonzero(np.any(data != 0, axis=tuple(a for a in range(3) if a != axis)))
        if hit.size == 0:
            return None
        bounds.append((hit[0], hit[-1] + 1))
    lo, hi = np.array(bounds).T
    return lo, hi


def resample(
    volume: np.ndarray,
    source: Grid,
    target: Grid,
    target_to_source: np.ndarray,
    *,
    extra_fwhm_mm: float = 0.0,
    order: int = 1,
) -> np.ndarray:
    """Sample ``volume`` (on ``source``) at the voxel centres of ``target`` as a voxel-average measurement.

    Only the part of both grids where ``volume`` is non-zero is computed (the head fills a fraction of a box).

    Parameters
    ----------
    volume
        Array on the ``source`` grid.
    source, target
        Grids; ``target_to_source`` maps target world coordinates to source world coordinates (4x4, RAS).
    extra_fwhm_mm
        Additional isotropic point-spread function of the measurement (PET resolution), FWHM in mm.
    order
        Spline order of the interpolation (1: trilinear).

    Returns
    -------
    numpy.ndarray
        float32 array of ``target.shape``; zero outside the source field of view.
    """
    out = np.zeros(target.shape, dtype=np.float32)
    support = _support(volume)
    if support is None:
        return out
    sigma = footprint_sigma(target, source, target_to_source, extra_fwhm_mm)
    sigma = np.where(sigma > 0.25, sigma, 0.0)
    margin = np.ceil(3.0 * sigma).astype(int) + 1
    lo = np.maximum(support[0] - margin, 0)
    hi = np.minimum(support[1] + margin, source.shape)
    data = np.asarray(volume[tuple(slice(a, b) for a, b in zip(lo, hi))], dtype=np.float32)
    if np.any(sigma > 0):
        data = ndimage.gaussian_filter(data, sigma, truncate=3.0, mode="constant")
    vox = np.linalg.inv(source.affine) @ target_to_source @ target.affine
    vox[:3, 3] -= lo
    corners = np.array(np.meshgrid(*[(-1.0, n) for n in data.shape], indexing="ij")).reshape(3, -1)
    inv = np.linalg.inv(vox)
    reach = inv[:3, :3] @ corners + inv[:3, 3:]
    o_lo = np.clip(np.floor(reach.min(axis=1)).astype(int), 0, target.shape)
    o_hi = np.clip(np.ceil(reach.max(axis=1)).astype(int) + 1, 0, target.shape)
    if np.any(o_hi <= o_lo):
        return out
    block = tuple(slice(a, b) for a, b in zip(o_lo, o_hi))
    out[block] = ndimage.affine_transform(
        data, vox[:3, :3], vox[:3, :3] @ o_lo + vox[:3, 3], output_shape=tuple(o_hi - o_lo), order=order,
        mode="constant", cval=0.0,
    )
    return out


def ras_to_itk(matrix_ras: np.ndarray) -> ants.ANTsTransform:
    """ANTs/ITK ``AffineTransform`` for a 4x4 RAS point mapping (ITK works in LPS)."""
    lps = RAS_TO_LPS @ matrix_ras @ RAS_TO_LPS
    return ants.create_ants_transform(
        transform_type="AffineTransform", dimension=3, matrix=lps[:3, :3], offset=lps[:3, 3]
    )


def write_itk_affine(path: Path, matrix_ras: np.ndarray) -> Path:
    """Write a RAS point mapping as an ITK ``.mat`` affine readable by ``ants.read_transform``.

    For a true transform ``matrix_ras`` maps T1w physical points to the other image's physical points, so
    ``ants.apply_transforms(fixed=T1w, moving=image, transformlist=[path])`` resamples the image onto the T1w.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    ants.write_transform(ras_to_itk(matrix_ras), str(path))
    return path
