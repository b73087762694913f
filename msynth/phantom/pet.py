"""Dynamic [11C]PIB PET: metabolite-corrected plasma input, one-tissue kinetics, frames, resolution and noise.

* Input: a Feng-type function (Feng D et al., Int J Biomed Comput 1993;32:95-110),
  ``Cp(t) = (A1 t - A2 - A3) exp(l1 t) + A2 exp(l2 t) + A3 exp(l3 t)`` after the bolus arrival, with rates chosen
  for the fast clearance of parent [11C]PIB (Price JC et al., JCBFM 2005;25:1528-1547) and scaled by the injected
  activity (358 +- 34 MBq in the thesis cohort).
* Tissue: one-tissue compartment per tissue class, ``dC/dt = K1 Cp - k2 C``, ``VT = K1/k2``.  The distribution
  volume follows myelin, ``VT = V0 (0.75 + m)`` (non-displaceable part plus a part proportional to myelin ``m``), so
  that with the cerebellar cortex (``m = 0.25``) as reference, white matter has DVR about 1.75, neocortex about 1.05
  and a fully demyelinated lesion 0.75 (thesis: WM 1.5-2, GM 1.0-1.2).  Inflammation raises K1 in lesions, which
  changes the early frames but not VT.  The vascular fraction is neglected, as reference-tissue models assume.
* Frames: 6 x 30 s, 2 x 60 s, 17 x 300 s = 25 frames over 90 min, decay corrected to injection.
* Partial volume enters by mixing compartment curves in each native voxel; the scanner blurs with a Gaussian PSF of
  2.5-4 mm FWHM (HRRT: 2.5 mm) on its 1.22 mm grid; noise is Poisson-like (variance proportional to the decay-
  corrected activity over the frame duration), spatially correlated by the reconstruction, and non-negative
  (OSEM).

Voxel curves are linear in a handful of temporal components: the frame-averaged unit responses ``T(k2)`` for a
fine grid of ``k2`` are compressed by an SVD, so a voxel's curve is ``sum_r c_r(x) U_r(t)`` with
``c_r = sum_c f_c K1_c alpha_r(k2_c)``; the coefficient maps are what gets blurred and resampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, signal

from .tissue import TissueState

HALF_LIFE_MIN = 20.38
FRAME_DURATIONS_S = (30,) * 6 + (60,) * 2 + (300,) * 17
FRAME_STARTS_S = tuple(int(s) for s in np.cumsum((0,) + FRAME_DURATIONS_S[:-1]))
MEAN_INJECTED_MBQ = 358.0
#: Relative distribution volume (x V0) and K1 (mL/cm^3/min) of compartments whose VT does not follow myelin.
OTHER_VT = {"CSF": 0.10, "XCSF": 0.10, "BONE": 0.30, "MUSCLE": 0.60, "FAT": 0.40}
K1 = {"GM": 0.30, "NAWM": 0.14, "LES": 0.14, "CSF": 0.01, "XCSF": 0.01, "BONE": 0.03, "MUSCLE": 0.08, "FAT": 0.03}
NON_DISPLACEABLE = 0.75
REFERENCE_MYELIN = 0.25
_DT_MIN = 1.0 / 120.0
#: k2 (1/min) of the temporal basis; every tissue of the phantom lies well inside (about 0.02-0.3).
_K2_GRID = np.geomspace(0.01, 1.0, 256)


@dataclass(frozen=True)
class PlasmaInput:
    """Metabolite-corrected arterial plasma input (kBq/mL, minutes after injection)."""

    a: tuple[float, float, float]
    rates: tuple[float, float, float]
    delay_min: float

    def __call__(self, t_min: np.ndarray) -> np.ndarray:
        """Plasma activity at times ``t_min``."""
        t = np.clip(np.asarray(t_min, dtype=float) - self.delay_min, 0.0, None)
        (a1, a2, a3), (l1, l2, l3) = self.a, self.rates
        return (a1 * t - a2 - a3) * np.exp(l1 * t) + a2 * np.exp(l2 * t) + a3 * np.exp(l3 * t)


def sample_plasma_input(rng: np.random.Generator, injected_mbq: float) -> PlasmaInput:
    """A subject's input: nominal [11C]PIB-like shape with 10-15 % variation, scaled by the injected activity."""
    scale = injected_mbq / MEAN_INJECTED_MBQ
    a = np.array([600.0, 12.0, 4.0]) * scale * np.exp(rng.normal(0.0, 0.15, 3))
    rates = np.array([-4.0, -0.4, -0.03]) * np.exp(rng.normal(0.0, 0.10, 3))
    return PlasmaInput(tuple(a), tuple(rates), float(rng.uniform(0.15, 0.35)))


def unit_responses(plasma: PlasmaInput, k2: np.ndarray) -> np.ndarray:
    """Frame-averaged one-tissue responses (K1 = 1) for each ``k2`` (1/min), shape ``(len(k2), n_frames)``.

    The input is held constant over each 0.5 s step and the compartment equation integrated exactly over it, so
    each curve is an exact one-tissue solution and ``integral(C) = VT integral(Cp) - C / k2`` holds.
    """
    t = np.arange(0.0, FRAME_STARTS_S[-1] / 60.0 + FRAME_DURATIONS_S[-1] / 60.0, _DT_MIN) + _DT_MIN
    cp = plasma(t - _DT_MIN / 2)
    decay = np.exp(-k2 * _DT_MIN)
    curves = np.stack([signal.lfilter([(1 - d) / k], [1.0, -d], cp) for k, d in zip(k2, decay)])
    edges = np.searchsorted(t, np.r_[np.array(FRAME_STARTS_S), FRAME_STARTS_S[-1] + FRAME_DURATIONS_S[-1]] / 60.0,
                            side="right")
    return np.stack([curves[:, lo:hi].mean(axis=1) for lo, hi in zip(edges[:-1], edges[1:])], axis=1)


@dataclass(frozen=True)
class TemporalBasis:
    """SVD compression of :func:`unit_responses`: ``T(k2) ~= alpha(k2) @ components``."""

    k2: np.ndarray
    alpha: np.ndarray
    components: np.ndarray

    def coefficients(self, k2: np.ndarray) -> np.ndarray:
        """``alpha_r(k2)`` by linear interpolation in log k2, shape ``(rank, n)``."""
        x = np.log(np.clip(np.asarray(k2, dtype=np.float64).reshape(-1), self.k2[0], self.k2[-1]))
        grid = np.log(self.k2)
        i = np.clip(np.searchsorted(grid, x) - 1, 0, grid.size - 2)
        w = ((x - grid[i]) / (grid[i + 1] - grid[i]))[:, None]
        return ((1.0 - w) * self.alpha[i] + w * self.alpha[i + 1]).T.astype(np.float32)

    def curves(self, k2: np.ndarray) -> np.ndarray:
        """Frame-averaged unit responses for arbitrary ``k2`` (noise-free), shape ``(n, n_frames)``."""
        return self.coefficients(k2).T @ self.components


def temporal_basis(plasma: PlasmaInput, rel_tol: float = 1e-4) -> TemporalBasis:
    """Smallest SVD basis reproducing every unit response to ``rel_tol`` of its peak."""
    table = unit_responses(plasma, _K2_GRID)
    u, s, vt = np.linalg.svd(table, full_matrices=False)
    peak = table.max(axis=1, keepdims=True)
    for rank in range(1, s.size + 1):
        approx = (u[:, :rank] * s[:rank]) @ vt[:rank]
        if np.max(np.abs(approx - table) / peak) < rel_tol:
            break
    return TemporalBasis(_K2_GRID, u[:, :rank] * s[:rank], vt[:rank])


def kinetics(state: TissueState, v0: float, k1_scale: float) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per compartment: (fraction, K1, VT) flat arrays; VT in mL/cm^3 (``v0`` times the relative value)."""
    out = []
    for c in state.compartments:
        if c.name in ("GM", "NAWM", "LES"):
            vt_rel = NON_DISPLACEABLE + np.asarray(c.myelin, np.float32)
        else:
            vt_rel = np.float32(OTHER_VT[c.name])
        k1 = K1[c.name] * k1_scale * (1.0 + 0.6 * np.asarray(c.edema, np.float32))
        out.append((c.fraction, np.broadcast_to(k1, c.fraction.shape), np.broadcast_to(v0 * vt_rel, c.fraction.shape)))
    return out


def reference_vt(v0: float) -> float:
    """VT of the reference tissue, cerebellar grey matter."""
    return v0 * (NON_DISPLACEABLE + REFERENCE_MYELIN)


def true_dvr(state: TissueState, v0: float) -> np.ndarray:
    """Noise-free DVR of every native voxel (a volume): volume-weighted VT over the reference VT."""
    vt = sum(f * v for f, _, v in kinetics(state, v0, 1.0))
    return state.volume(vt / reference_vt(v0))


def coefficients(state: TissueState, basis: TemporalBasis, v0: float, k1_scale: float) -> np.ndarray:
    """Temporal-component coefficients of every native voxel (``(rank, len(state.index))``, noise-free curves)."""
    coef = np.zeros((basis.components.shape[0], state.index.size), dtype=np.float32)
    for frac, k1, vt in kinetics(state, v0, k1_scale):
        where = np.flatnonzero(frac > 0)
        k2 = (k1 / vt)[where]
        if k2.size == 0:
            continue
        if k2.min() == k2.max():  # one value: interpolate once
            coef[:, where] += np.outer(basis.coefficients(k2[:1])[:, 0], frac[where] * k1[where])
        else:
            coef[:, where] += basis.coefficients(k2) * (frac[where] * k1[where])
    return coef


def decay_factors() -> np.ndarray:
    """Decay-correction factor of each frame (to injection), from its mid time."""
    mid_min = (np.array(FRAME_STARTS_S) + np.array(FRAME_DURATIONS_S) / 2.0) / 60.0
    return 2.0 ** (mid_min / HALF_LIFE_MIN)


def add_noise(
    frames: np.ndarray, rng: np.random.Generator, voxel_volume_ml: float, corr_sigma_vox: float = 0.8
) -> np.ndarray:
    """Poisson-like reconstruction noise: variance proportional to decay-corrected activity over frame duration.

    Scaled so that a 1.22 mm voxel in a 5-minute frame at 60 min with 5 kBq/mL has a 20 % coefficient of variation;
    larger voxels are proportionally less noisy.  The noise is smoothed (reconstruction correlation) and rescaled
    to keep its variance; the image is clipped at zero (OSEM).  ``frames`` is modified in place and returned.
    """
    ref_sigma = 0.20 * 5.0 / np.sqrt(5.0 * 2.0 ** (60.0 / HALF_LIFE_MIN) / 300.0)
    k = ref_sigma * np.sqrt(1.22**3 / 1000.0 / voxel_volume_ml)
    gain = (2.0 * np.sqrt(np.pi) * corr_sigma_vox) ** 1.5
    for f, (dcf, dur) in enumerate(zip(decay_factors(), FRAME_DURATIONS_S)):
        white = rng.standard_normal(frames.shape[:3], dtype=np.float32)
        corr = ndimage.gaussian_filter(white, corr_sigma_vox) * gain
        sigma = k * np.sqrt(np.clip(frames[..., f], 0.0, None) * dcf / dur)
        frames[..., f] = np.clip(frames[..., f] + sigma * corr, 0.0, None)
    return frames
