"""Real anatomy for the phantom: the MNI152 2009a tissue maps, a real whole head, and per-subject deformations.

Everything here is built from images that ship inside installed wheels; nothing is downloaded:

* nilearn's ICBM152 2009a (nonlinear symmetric) T1 template and its grey- and white-matter probability maps
  (Fonov et al., NeuroImage 2011;54:313-327).  CSF is the brain minus both, split from left-over tissue (the
  brainstem is in neither map) by the template intensity;
* pydeface's mean head (``pydeface/data/mean_reg2mean.nii.gz``) for skin, fat, muscle and skull, brought into
  MNI space once by :data:`MNI_TO_HEAD` (computed by ``benchmarks/phantom_head_registration.py``).

A subject's *native* anatomy is the atlas pulled through a random smooth diffeomorphism (scaling and squaring of a
stationary velocity field) that also scales the head and enlarges the ventricles with age and disease.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydeface
from nilearn import datasets as nilearn_datasets
from scipy import ndimage

from msynth.templates import cerebellum_mask

from .geometry import Grid, box_grid, resample

LOGGER = logging.getLogger("msynth.phantom")

#: Tissue classes of the phantom, in the order used for every per-class array.
CLASSES = ("GM", "WM", "CSF", "XCSF", "BONE", "MUSCLE", "FAT")

#: Atlas box (MNI RAS mm): the head from the vertex to the foramen magnum, nose included.
ATLAS_LOWER_MM = np.array([-96.0, -132.0, -84.0])
ATLAS_UPPER_MM = np.array([96.0, 112.0, 108.0])

#: MNI RAS mm -> pydeface mean-head RAS mm: a 7-parameter similarity fitted once by
#: ``benchmarks/phantom_head_registration.py`` (ANTs, Mattes mutual information between the template and the
#: mean head's intracranial cavity; Dice 0.95 with the template brain above z = -20 mm).
MNI_TO_HEAD = np.array(
    [
        [0.8710, 0.0599, 0.0094, -4.3251],
        [-0.0582, 0.8639, -0.1122, 14.8611],
        [-0.0169, 0.1113, 0.8659, -2.5225],
        [0.0, 0.0, 0.0, 1.0],
    ]
)

#: The mean head's cavity is trusted up to this distance from the template brain (its skull base is generous).
_CAVITY_MARGIN_MM = 8.0

#: Intensity landmarks of the mean head (its arbitrary units): background, bone, muscle/skin, scalp fat.
_HEAD_AIR, _HEAD_BONE, _HEAD_MUSCLE, _HEAD_FAT = 20.0, 70.0, 230.0, 450.0


@dataclass(frozen=True)
class Atlas:
    """Template anatomy on an isotropic box grid in MNI space.

    Attributes
    ----------
    grid
        The box grid (RAS mm, spacing = the phantom's anatomical resolution).
    fractions
        Volume fraction of each class of :data:`CLASSES` (float32, sum <= 1; the rest is air).
    ventricles, cerebellum
        Fuzzy masks of the lateral/third ventricles and of the cerebellum (below the tentorium).
    orientation
        Fibre orientation tensor ``P`` of white matter (trace 1; ``xx, yy, zz, xy, xz, yz``), from the structure
        tensor of the white-matter map: ``P = k v v^T + (1 - k) I / 3`` with ``v`` the axis along which the map
        changes least and ``k`` its coherence.
    """

    grid: Grid
    fractions: dict[str, np.ndarray]
    ventricles: np.ndarray
    cerebellum: np.ndarray
    orientation: np.ndarray


@dataclass(frozen=True)
class Anatomy:
    """One subject's native anatomy on its own grid (the atlas box, anatomical frame)."""

    grid: Grid
    fractions: dict[str, np.ndarray]
    ventricles: np.ndarray
    cerebellum: np.ndarray
    orientation: np.ndarray
    min_jacobian: float

    @property
    def brain(self) -> np.ndarray:
        """Brain fraction (GM + WM + CSF inside the brain envelope)."""
        return self.fractions["GM"] + self.fractions["WM"] + self.fractions["CSF"]


def _load(img: nib.Nifti1Image) -> tuple[np.ndarray, Grid]:
    """Data (float32) and grid of a 3-D image."""
    return np.asarray(img.get_fdata(), dtype=np.float32), Grid(img.shape[:3], img.affine)


def intracranial_mask(head: np.ndarray) -> np.ndarray:
    """Intracranial cavity of pydeface's mean T1-weighted head (upper part reliable, skull base generous).

    Bright voxels (brain, scalp) are eroded until the thin bridges through the skull break, the largest core (the
    brain) is kept and dilated back inside the bright voxels, and its folds are closed and filled.
    """
    cross = ndimage.generate_binary_structure(3, 1)
    bright = head > 170.0
    core = ndimage.binary_erosion(bright, cross, iterations=7)
    labels, count = ndimage.label(core)
    sizes = ndimage.sum_labels(core, labels, index=np.arange(1, count + 1))
    brain = ndimage.binary_dilation(labels == (1 + int(np.argmax(sizes))), cross, iterations=7) & bright
    return ndimage.binary_fill_holes(ndimage.binary_closing(brain, cross, iterations=3))


def _split_csf(t1: np.ndarray, gm: np.ndarray, wm: np.ndarray, brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split the brain left over by the GM and WM maps into CSF and white-matter-like tissue (brainstem).

    Linear unmixing of the template intensity: ``t1 = gm*I_gm + wm*I_wm + csf*I_csf + rest*I_wm`` with the pure
    intensities read where each map is above 0.9.
    """
    rest = np.clip(brain - gm - wm, 0.0, None)
    i_gm, i_wm = np.median(t1[gm > 0.9]), np.median(t1[wm > 0.9])
    i_csf = np.median(t1[rest > 0.9])
    csf = np.clip((gm * i_gm + (wm + rest) * i_wm - t1) / (i_wm - i_csf), 0.0, rest)
    return csf.astype(np.float32), (wm + rest - csf).astype(np.float32)


def ventricle_mask(csf: np.ndarray, brain: np.ndarray, grid: Grid) -> np.ndarray:
    """Lateral and third ventricles: central CSF more than 12 mm inside the brain, in large components."""
    x, y, z = grid.world_coordinates()
    depth = ndimage.distance_transform_edt(brain > 0.5, sampling=grid.zooms)
    central = (csf > 0.5) & (depth > 12.0) & (np.abs(x) < 35) & (y > -50) & (y < 35) & (z > -10) & (z < 35)
    labels, count = ndimage.label(central)
    sizes = ndimage.sum_labels(central, labels, index=np.arange(1, count + 1)) * np.prod(grid.zooms)
    return np.isin(labels, 1 + np.flatnonzero(sizes > 200.0)).astype(np.float32)


def orientation_tensor(wm: np.ndarray, grid: Grid) -> np.ndarray:
    """White-matter fibre orientation tensor from the structure tensor of the WM map (see :class:`Atlas`)."""
    sigma = 1.0 / grid.zooms
    grads = [ndimage.gaussian_filter(wm, sigma, order=tuple(int(i == a) for i in range(3))) for a in range(3)]
    pairs = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))
    st = np.stack([ndimage.gaussian_filter(grads[a] * grads[b], 3.0 / grid.zooms) for a, b in pairs])
    inside = wm > 0.2
    j = np.zeros((int(inside.sum()), 3, 3))
    for k, (a, b) in enumerate(pairs):
        j[:, a, b] = j[:, b, a] = st[k][inside]
    mu, vec = np.linalg.eigh(j)
    eps = 0.05 * np.percentile(mu[:, 2], 90)
    coherence = np.clip((mu[:, 2] - mu[:, 0]) / (mu[:, 2] + mu[:, 0] + eps), 0.0, 1.0)
    v = vec[:, :, 0]
    orient = np.zeros((6, *wm.shape), dtype=np.float32)
    for k, (a, b) in enumerate(pairs):
        iso = (1.0 - coherence) / 3.0 if a == b else 0.0
        orient[k][inside] = coherence * v[:, a] * v[:, b] + iso
        if a == b:
            orient[k][~inside] = 1.0 / 3.0
    return orient


def _head_classes(head: np.ndarray, intracranial: np.ndarray) -> dict[str, np.ndarray]:
    """Bone, muscle/skin and fat fractions outside the intracranial cavity from the mean-head intensity."""
    tissue = np.clip((head - _HEAD_AIR) / (_HEAD_BONE - _HEAD_AIR), 0.0, 1.0) * (1.0 - intracranial)
    fat = np.clip((head - _HEAD_MUSCLE) / (_HEAD_FAT - _HEAD_MUSCLE), 0.0, 1.0)
    bone = np.clip((_HEAD_MUSCLE - head) / (_HEAD_MUSCLE - _HEAD_BONE), 0.0, 1.0)
    return {"BONE": bone * tissue, "MUSCLE": (1.0 - fat - bone) * tissue, "FAT": fat * tissue}


@functools.lru_cache(maxsize=2)
def load_atlas(spacing_mm: float) -> Atlas:
    """Build the template anatomy on the atlas box at ``spacing_mm`` (cached: it is the same for every subject).

    Parameters
    ----------
    spacing_mm
        Isotropic voxel size of the phantom's anatomical grid.

    Returns
    -------
    Atlas
    """
    t1, mni = _load(nilearn_datasets.load_mni152_template(resolution=1))
    gm, _ = _load(nilearn_datasets.load_mni152_gm_template(resolution=1))
    wm, _ = _load(nilearn_datasets.load_mni152_wm_template(resolution=1))
    brain = ndimage.gaussian_filter(ndimage.binary_fill_holes(t1 > 0.2).astype(np.float32), 0.6)
    brain = np.maximum(brain, gm + wm)
    csf, wm = _split_csf(t1, gm, wm, brain)
    cerebellum = cerebellum_mask(t1, brain, mni.affine)
    ventricles = ventricle_mask(csf, brain, mni)

    mni2 = box_grid(mni.affine[:3, 3], mni.affine[:3, 3] + np.array(mni.shape) - 1, 2.0)
    orient2 = orientation_tensor(resample(wm, mni, mni2, np.eye(4)), mni2)

    grid = box_grid(ATLAS_LOWER_MM, ATLAS_UPPER_MM, spacing_mm)
    fractions = {name: resample(vol, mni, grid, np.eye(4)) for name, vol in (("GM", gm), ("WM", wm), ("CSF", csf))}
    head_img = nib.load(Path(pydeface.__file__).parent / "data" / "mean_reg2mean.nii.gz")
    head, head_grid = _load(head_img)
    cavity = resample(intracranial_mask(head).astype(np.float32), head_grid, grid, MNI_TO_HEAD)
    head = resample(head, head_grid, grid, MNI_TO_HEAD)
    brain_atlas = fractions["GM"] + fractions["WM"] + fractions["CSF"]
    near_brain = ndimage.distance_transform_edt(brain_atlas < 0.5, sampling=grid.zooms) <= _CAVITY_MARGIN_MM
    cavity = np.maximum(cavity * near_brain, brain_atlas)
    fractions["XCSF"] = cavity - brain_atlas
    fractions.update(_head_classes(head, cavity))
    orientation = np.stack([resample(o, mni2, grid, np.eye(4)) for o in orient2])
    LOGGER.info("atlas built on a %s grid at %.2f mm", grid.shape, spacing_mm)
    return Atlas(
        grid=grid,
        fractions={k: fractions[k].astype(np.float32) for k in CLASSES},
        ventricles=resample(ventricles, mni, grid, np.eye(4)),
        cerebellum=resample(cerebellum, mni, grid, np.eye(4)),
        orientation=orientation,
    )


#: Deformation model: control-grid spacing, smoothness and RMS amplitude of the random velocity field (mm).
_VELOCITY_SPACING_MM = 6.0
_VELOCITY_SMOOTHNESS_MM = 20.0
_SQUARINGS = 6
#: Centre of the ventricular system and width of the region its enlargement pulls on (MNI mm).
_VENTRICLE_CENTRE_MM = np.array([0.0, -10.0, 15.0])
_VENTRICLE_REACH_MM = 22.0
_BRAIN_CENTRE_MM = np.array([0.0, -18.0, 10.0])


def _pull(volume: np.ndarray, vox: np.ndarray) -> np.ndarray:
    """Trilinear samples of ``volume`` at voxel coordinates ``vox`` (3, ...); edges extend."""
    return ndimage.map_coordinates(volume, vox, order=1, mode="nearest").astype(np.float32)


def _world_to_voxel(grid: Grid, points_mm: np.ndarray) -> np.ndarray:
    """Voxel coordinates on an axis-aligned ``grid`` of world points ``(3, ...)``."""
    shape = (3,) + (1,) * (points_mm.ndim - 1)
    return (points_mm - grid.affine[:3, 3].reshape(shape)) / grid.zooms.reshape(shape)


def _scatter(values: np.ndarray, where: np.ndarray, shape: tuple[int, int, int], fill: float = 0.0) -> np.ndarray:
    """Volume of ``shape`` holding ``values`` at flat indices ``where`` and ``fill`` elsewhere."""
    out = np.full(shape, fill, dtype=np.float32)
    out.reshape(-1)[where] = values
    return out


def velocity_field(
    grid: Grid, rng: np.random.Generator, *, amplitude_mm: float, log_scales: np.ndarray, ventricle_growth: float
) -> np.ndarray:
    """Stationary velocity field (mm) on ``grid``: smooth noise + head scaling + ventricular enlargement.

    The field is used in the pull-back convention: native point ``x`` takes its tissue from atlas point
    ``x + u(x)``, so a field pointing towards the ventricles (``ventricle_growth > 0``) enlarges them.
    """
    x = grid.world_coordinates()
    noise = ndimage.gaussian_filter(rng.standard_normal((3, *grid.shape)), (0, *(_VELOCITY_SMOOTHNESS_MM / grid.zooms)))
    noise *= amplitude_mm / np.sqrt(np.mean(noise**2))
    shape = (3,) + (1,) * 3
    linear = np.asarray(log_scales).reshape(shape) * (x - _BRAIN_CENTRE_MM.reshape(shape))
    rel = x - _VENTRICLE_CENTRE_MM.reshape(shape)
    bump = np.exp(-np.sum(rel**2, axis=0) / (2 * _VENTRICLE_REACH_MM**2))
    return noise + linear - ventricle_growth * rel * bump


def exponentiate(velocity: np.ndarray, grid: Grid, squarings: int = _SQUARINGS) -> np.ndarray:
    """Displacement of the diffeomorphism ``exp(v)`` by scaling and squaring (Arsigny et al., MICCAI 2006)."""
    x = grid.world_coordinates()
    disp = velocity / 2.0**squarings
    for _ in range(squarings):
        vox = _world_to_voxel(grid, x + disp)
        disp = disp + np.stack([_pull(d, vox) for d in disp])
    return disp


def min_jacobian(disp: np.ndarray, grid: Grid) -> float:
    """Smallest Jacobian determinant of ``x -> x + disp(x)`` (positive for a fold-free map)."""
    jac = np.empty((*grid.shape, 3, 3))
    for a in range(3):
        grads = np.gradient(disp[a], *grid.zooms)
        for b in range(3):
            jac[..., a, b] = grads[b] + (a == b)
    return float(np.linalg.det(jac).min())


def subject_anatomy(atlas: Atlas, rng: np.random.Generator, *, ventricle_growth: float) -> Anatomy:
    """Native anatomy of one subject: the atlas pulled through a random smooth diffeomorphism.

    Parameters
    ----------
    atlas
        Template anatomy (:func:`load_atlas`).
    rng
        The subject's anatomy random stream.
    ventricle_growth
        Strength of ventricular enlargement (about 0 at 30 years; larger with age and MS atrophy).

    Returns
    -------
    Anatomy
    """
    coarse = box_grid(ATLAS_LOWER_MM, ATLAS_UPPER_MM, _VELOCITY_SPACING_MM)
    velocity = velocity_field(
        coarse,
        rng,
        amplitude_mm=float(rng.uniform(2.0, 4.0)),
        log_scales=rng.normal(0.0, 0.04, size=3),
        ventricle_growth=ventricle_growth,
    )
    disp = exponentiate(velocity, coarse)
    jac = min_jacobian(disp, coarse)
    LOGGER.debug("deformation: smallest Jacobian determinant %.2f", jac)
    x = atlas.grid.world_coordinates()
    on_coarse = _world_to_voxel(coarse, x)
    source = x + np.stack([_pull(d, on_coarse) for d in disp])
    vox = _world_to_voxel(atlas.grid, source).reshape(3, -1)
    # the box is mostly air: sample where the pulled-back point lands in the head (fibre tensors: in white matter)
    head = np.flatnonzero(_pull(sum(atlas.fractions.values()), vox) > 0)
    fractions = {name: _scatter(_pull(vol, vox[:, head]), head, atlas.grid.shape)
                 for name, vol in atlas.fractions.items()}
    white = head[fractions["WM"].reshape(-1)[head] > 0]
    return Anatomy(
        grid=atlas.grid,
        fractions=fractions,
        ventricles=_scatter(_pull(atlas.ventricles, vox[:, head]), head, atlas.grid.shape),
        cerebellum=_scatter(_pull(atlas.cerebellum, vox[:, head]), head, atlas.grid.shape),
        orientation=np.stack([_scatter(_pull(o, vox[:, white]), white, atlas.grid.shape, fill=iso)
                              for o, iso in zip(atlas.orientation, (1 / 3, 1 / 3, 1 / 3, 0.0, 0.0, 0.0))]),
        min_jacobian=jac,
    )
