"""White-matter lesions: placement, irregular shapes, and the fields that evolve inside them.

A patient has 5-30 lesions of 2-15 mm, mostly periventricular and elongated perpendicular to the ventricular wall
(Dawson's fingers).  Each lesion is an ellipsoid whose surface is perturbed by smooth noise, rendered with partial
volume on the native grid.  Inside a lesion four fields vary independently:

* demyelination ``d`` (0-1): myelin is ``(1 - d)`` times the normal-appearing value; spatially coherent, higher in
  the core, and near zero in one lesion in three (Bodini B et al., Ann Neurol 2016;79:726-738);
* edema ``e`` (0-1): free water, higher at the rim of active lesions; lengthens T2, lowers MTR, raises diffusivity;
* axonal loss ``a`` (0-1): lowers axial diffusivity and, weakly, MTR;
* gliosis ``g`` (0-1, one value per lesion): keeps a remyelinated lesion bright on T2/FLAIR.

At follow-up (:func:`follow_up`) each lesion voxel stays, demyelinates or remyelinates, with per-patient rates, in
spatially coherent patches; edema resolves partly and returns where demyelination is new.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from .anatomy import Anatomy

#: Demyelination above which a voxel counts as demyelinated when follow-up trajectories are drawn.
DEMYELINATED_D = 0.2
#: Share of lesions whose myelin is preserved at baseline (inflammation and gliosis without demyelination).
PRESERVED_SHARE = 1.0 / 3.0
_NOISE_MM = 2.5


@dataclass(frozen=True)
class LesionState:
    """Lesion fields on the native grid (float32 volumes; zero outside lesions).

    ``fraction`` is the lesional fraction of the voxel's white matter; ``labels`` the lesion id (0: none).
    """

    fraction: np.ndarray
    demyelination: np.ndarray
    edema: np.ndarray
    axonal_loss: np.ndarray
    gliosis: np.ndarray
    labels: np.ndarray

    @classmethod
    def empty(cls, shape: tuple[int, int, int]) -> "LesionState":
        """No lesions (a healthy control)."""
        zero = np.zeros(shape, dtype=np.float32)
        return cls(zero, zero, zero, zero, zero, np.zeros(shape, dtype=np.int16))


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: float | np.ndarray) -> np.ndarray:
    """Gaussian random field with unit standard deviation (float32)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox)
    return field / max(float(field.std()), 1e-6)


def _lesion_axes(rng: np.random.Generator, direction: np.ndarray) -> np.ndarray:
    """Orthonormal frame whose first axis is ``direction`` (random roll about it)."""
    first = direction / max(np.linalg.norm(direction), 1e-6)
    helper = rng.standard_normal(3)
    second = helper - first * (helper @ first)
    second /= np.linalg.norm(second)
    return np.stack([first, second, np.cross(first, second)], axis=1)


def _render(
    rng: np.random.Generator, anatomy: Anatomy, centre_vox: np.ndarray, semi_axes_mm: np.ndarray, axes: np.ndarray
) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray]:
    """Partial-volume occupancy and normalised radius of one irregular lesion inside its bounding box."""
    zooms = anatomy.grid.zooms
    reach = np.ceil(1.4 * semi_axes_mm.max() / zooms).astype(int) + 2
    lo = np.maximum(centre_vox - reach, 0)
    hi = np.minimum(centre_vox + reach + 1, anatomy.grid.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    offs = (np.indices(tuple(hi - lo)).reshape(3, -1).T + lo - centre_vox) * zooms
    local = offs @ axes / semi_axes_mm
    radius = np.linalg.norm(local, axis=1).reshape(tuple(hi - lo))
    bumps = 0.25 * smooth_noise(rng, radius.shape, 0.35 * semi_axes_mm.mean() / zooms)
    signed_mm = (radius + bumps - 1.0) * semi_axes_mm.mean()
    occupancy = np.clip(0.5 - signed_mm / zooms.mean(), 0.0, 1.0)
    return box, occupancy.astype(np.float32), np.clip(radius, 0.0, 1.0).astype(np.float32)


def place_lesions(anatomy: Anatomy, rng: np.random.Generator) -> tuple[LesionState, int]:
    """Baseline lesions of one patient.

    Centres are drawn in supratentorial white matter, three in four from a kernel decaying over 6 mm from the
    ventricular wall and the rest uniformly; diameters are log-uniform in 2-15 mm and periventricular lesions
    point away from the ventricles.

    Returns
    -------
    tuple
        The :class:`LesionState` and the number of lesions.
    """
    shape = anatomy.grid.shape
    zooms = anatomy.grid.zooms
    wm = anatomy.fractions["WM"]
    dist = ndimage.distance_transform_edt(anatomy.ventricles < 0.5, sampling=zooms)
    toward = np.stack(np.gradient(dist, *zooms))
    candidates = np.flatnonzero(((wm > 0.8) & (anatomy.cerebellum < 0.5)).reshape(-1))
    near = np.exp(-dist.reshape(-1)[candidates] / 6.0)
    weight = 0.75 * near / near.sum() + 0.25 / candidates.size
    n_lesions = int(rng.integers(5, 31))
    centres = rng.choice(candidates, size=n_lesions, replace=False, p=weight / weight.sum())

    fraction = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.int16)
    radial = np.ones(shape, np.float32)
    per_lesion = np.zeros((n_lesions + 1, 4), np.float32)
    for k, flat in enumerate(centres, start=1):
        centre = np.array(np.unravel_index(flat, shape))
        diameter = float(np.exp(rng.uniform(np.log(2.0), np.log(15.0))))
        semi = 0.5 * diameter * np.array([1.0, *rng.uniform(0.5, 1.0, size=2)])
        periventricular = dist[tuple(centre)] < 10.0
        direction = toward[(slice(None), *centre)] if periventricular else rng.standard_normal(3)
        box, occ, rad = _render(rng, anatomy, centre, semi, _lesion_axes(rng, direction))
        wins = occ > fraction[box]
        fraction[box] = np.where(wins, occ, fraction[box])
        labels[box] = np.where(wins, k, labels[box])
        radial[box] = np.where(wins, rad, radial[box])
        # demyelination (one lesion in three keeps its myelin), edema, axonal loss, gliosis of the whole lesion
        preserved = rng.random() < PRESERVED_SHARE
        per_lesion[k] = (rng.uniform(0.0, 0.05) if preserved else rng.beta(2.0, 2.0), rng.beta(1.2, 3.0),
                         rng.beta(1.5, 4.0), rng.uniform(0.4, 1.0))

    inside = fraction > 0
    sigma = _NOISE_MM / zooms
    n1, n2, n3 = (smooth_noise(rng, shape, sigma) for _ in range(3))
    lesion = per_lesion[labels]
    demyel = np.clip(lesion[..., 0] * (1.3 - 0.6 * radial + 0.3 * n1), 0.0, 1.0)
    edema = np.clip(lesion[..., 1] * (0.6 + 0.6 * radial) + 0.12 * n2, 0.0, 1.0)
    axon = np.clip(lesion[..., 2] * (1.2 - 0.4 * radial) + 0.10 * n3, 0.0, 1.0)
    state = LesionState(
        fraction=fraction,
        demyelination=np.where(inside, demyel, 0.0).astype(np.float32),
        edema=np.where(inside, edema, 0.0).astype(np.float32),
        axonal_loss=np.where(inside, axon, 0.0).astype(np.float32),
        gliosis=np.where(inside, lesion[..., 3], 0.0).astype(np.float32),
        labels=labels,
    )
    return state, n_lesions


def _coherent_pick(score: np.ndarray, pool: np.ndarray, rate: float) -> np.ndarray:
    """Boolean mask of the ``rate`` share of ``pool`` with the lowest ``score`` (patches of a smooth field)."""
    chosen = np.zeros_like(pool)
    if pool.any() and rate > 0:
        cut = np.quantile(score[pool], rate)
        chosen = pool & (score <= cut)
    return chosen


def follow_up(
    baseline: LesionState, rng: np.random.Generator, *, remyelination_rate: float, demyelination_rate: float
) -> LesionState:
    """Lesion fields at the second session.

    Parameters
    ----------
    baseline
        The patient's baseline :class:`LesionState`.
    rng
        The patient's follow-up random stream.
    remyelination_rate
        Share of demyelinated voxels (``d > DEMYELINATED_D``) that remyelinate (keep 0-10 % of their loss).
    demyelination_rate
        Share of the other lesion voxels that demyelinate (lose 40-80 % of their remaining myelin).

    Returns
    -------
    LesionState
        Same lesions (no new lesion appears over the short interval), new fields.
    """
    shape = baseline.fraction.shape
    inside = baseline.fraction > 0
    n_labels = int(baseline.labels.max()) + 1
    lesion_shift = rng.normal(0.0, 0.7, size=n_labels).astype(np.float32)
    score = smooth_noise(rng, shape, _NOISE_MM / 2.0) + lesion_shift[baseline.labels]
    d0 = baseline.demyelination
    remyel = _coherent_pick(score, inside & (d0 > DEMYELINATED_D), remyelination_rate)
    demyel = _coherent_pick(-score, inside & (d0 <= DEMYELINATED_D), demyelination_rate)
    keep = rng.uniform(0.0, 0.1, size=n_labels).astype(np.float32)[baseline.labels]
    loss = rng.uniform(0.4, 0.8, size=n_labels).astype(np.float32)[baseline.labels]
    drift = 0.03 * smooth_noise(rng, shape, _NOISE_MM)
    d1 = np.where(remyel, d0 * keep, np.where(demyel, d0 + (1.0 - d0) * loss, np.clip(d0 + drift, 0.0, 1.0)))
    resolve = rng.uniform(0.3, 0.9, size=n_labels).astype(np.float32)[baseline.labels]
    new_loss = np.maximum(d1 - d0, 0.0)
    e1 = np.maximum(baseline.edema * resolve, 0.5 * new_loss)
    a1 = np.minimum(baseline.axonal_loss + 0.15 * new_loss, 1.0)
    return replace(
        baseline,
        demyelination=np.where(inside, d1, 0.0).astype(np.float32),
        edema=np.where(inside, e1, 0.0).astype(np.float32),
        axonal_loss=np.where(inside, a1, 0.0).astype(np.float32),
    )
