"""Diffusion-weighted imaging: gradient scheme, tissue tensors, signal and the noise-free tensor fit.

Each white-matter compartment has a cylindrically symmetric tensor along the atlas fibre orientation tensor ``P``
(trace 1): ``D = d_perp I + (d_par - d_perp) P``.  Radial diffusivity rises with demyelination and axial
diffusivity falls with axonal loss (Song SK et al., NeuroImage 2002;17:1429-1436; 2005;26:132-140); edema adds an
isotropic free-water pool (3.0e-3 mm^2/s at 37 C; Pasternak O et al., MRM 2009;62:717-730).  Grey matter is
isotropic at 0.8e-3 mm^2/s, CSF free water.  Typical adult white matter values at b = 1000 s/mm^2: axial 1.2-1.7,
radial 0.3-0.6 (x 1e-3 mm^2/s), FA 0.4-0.8.
"""

from __future__ import annotations

import numpy as np

from .geometry import Grid
from .mri import spin_echo
from .tissue import NOMINAL, Compartment, TissueState

B_VALUE = 1000.0
N_DIRECTIONS = 30
TR_MS, TE_MS = 8800.0, 86.0
#: SNR of grey matter at b = 0 and standard deviation of the log bias field.
SNR, BIAS = 25.0, 0.08
FREE_WATER = 3.0e-3
#: Isotropic diffusivities (mm^2/s) of compartments without a tensor; fat is suppressed (5 % residual).
ISOTROPIC = {"GM": 0.80e-3, "CSF": FREE_WATER, "XCSF": FREE_WATER, "MUSCLE": 1.5e-3, "FAT": 0.02e-3, "BONE": 1.0e-3}
_FAT_RESIDUAL = 0.05
_PAIRS = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))


def gradient_directions(n: int = N_DIRECTIONS) -> np.ndarray:
    """``n`` near-uniform unit vectors on the half sphere (spherical Fibonacci lattice), shape ``(n, 3)``."""
    k = np.arange(n) + 0.5
    z = 1.0 - k / n
    phi = np.pi * (1.0 + np.sqrt(5.0)) * k
    r = np.sqrt(1.0 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def scheme() -> tuple[np.ndarray, np.ndarray]:
    """b-values (s/mm^2) and unit gradient directions in scanner RAS: one b = 0 then the directions at b = 1000."""
    dirs = np.vstack([np.zeros((1, 3)), gradient_directions()])
    bvals = np.r_[0.0, np.full(N_DIRECTIONS, B_VALUE)]
    return bvals, dirs


def bvecs_for_grid(directions_world: np.ndarray, grid: Grid) -> np.ndarray:
    """Gradient directions in the image's voxel axes with the FSL/BIDS convention (x flipped if det(affine) > 0).

    Returns
    -------
    numpy.ndarray
        Shape ``(3, n)``, as written to ``.bvec``.
    """
    vox = np.linalg.solve(grid.rotation, directions_world.T)
    if np.linalg.det(grid.affine[:3, :3]) > 0:
        vox[0] *= -1.0
    return vox


def reference_signal() -> float:
    """b = 0 signal of nominal grey matter, the SNR's reference."""
    gm = NOMINAL["GM"]
    return float(spin_echo(np.float64(gm.pd), np.float64(gm.t1_ms), np.float64(gm.t2_ms), tr=TR_MS, te=TE_MS))


def white_matter_diffusivities(c: Compartment) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Axial and radial diffusivity of the tissue part and the free-water share of a white-matter compartment."""
    d_par = 1.75e-3 * (1.0 - 0.45 * np.asarray(c.axonal_loss))
    d_perp = 0.30e-3 + 0.55e-3 * (1.0 - np.asarray(c.myelin))
    free = 0.4 * np.asarray(c.edema)
    return d_par, d_perp, free


class NativeDWI:
    """Noise-free diffusion-weighted signal of every native voxel of a :class:`TissueState` (flat arrays).

    Isotropic compartments attenuate the same way in every direction, so their sum is computed (and can be
    resampled) once per b-value; only the white-matter compartments, on the voxels that hold them, are evaluated
    per direction.
    """

    def __init__(self, state: TissueState) -> None:
        """Precompute b = 0 signals, isotropic diffusivities and the white-matter voxels."""
        self.n = state.index.size
        self.isotropic: dict[float, np.ndarray] = {}
        self.white: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        iso = []
        for c in state.compartments:
            s0 = c.fraction * spin_echo(np.asarray(c.pd), np.asarray(c.t1_ms), np.asarray(c.t2_ms), tr=TR_MS, te=TE_MS)
            if c.name in ("NAWM", "LES"):
                where = np.flatnonzero(c.fraction > 0)
                d_par, d_perp, free = (np.broadcast_to(v, c.fraction.shape)[where]
                                       for v in white_matter_diffusivities(c))
                self.white.append((where, np.asarray(s0)[where], d_par, d_perp, free, state.orientation[:, where]))
            else:
                iso.append((s0 * (_FAT_RESIDUAL if c.name == "FAT" else 1.0), ISOTROPIC[c.name]))
        self.iso = iso

    def parts(self, bval: float, direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Isotropic and white-matter parts of the signal for b-value ``bval`` (s/mm^2) along unit ``direction``.

        The isotropic part depends on ``bval`` only (cached); ``direction`` is in the anatomical frame.
        """
        if bval not in self.isotropic:
            iso = np.zeros(self.n, dtype=np.float32)
            for s0, d in self.iso:
                iso += s0 * np.exp(-bval * d)
            self.isotropic[bval] = iso
        white = np.zeros(self.n, dtype=np.float32)
        for where, s0, d_par, d_perp, free, orient in self.white:
            proj = sum(orient[k] * direction[a] * direction[b] * (1 + (a != b)) for k, (a, b) in enumerate(_PAIRS))
            adc = d_perp + (d_par - d_perp) * proj
            white[where] += s0 * ((1.0 - free) * np.exp(-bval * adc) + free * np.exp(-bval * FREE_WATER))
        return self.isotropic[bval], white

    def __call__(self, bval: float, direction: np.ndarray) -> np.ndarray:
        """Total signal for b-value ``bval`` along unit ``direction`` (anatomical frame)."""
        iso, white = self.parts(bval, direction)
        return iso + white


def design_matrix(bvals: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Log-linear tensor model rows ``[1, -b gx^2, -b gy^2, -b gz^2, -2b gxgy, -2b gxgz, -2b gygz]``."""
    g = directions
    cols = [np.ones_like(bvals)] + [-bvals * g[:, a] * g[:, b] * (1 + (a != b)) for a, b in _PAIRS]
    return np.stack(cols, axis=1)


def tensor_metrics(coefficients: np.ndarray) -> dict[str, np.ndarray]:
    """FA, MD, AD, RD (mm^2/s) from fitted log-linear coefficients ``(7, n)``."""
    tensor = np.empty((coefficients.shape[1], 3, 3))
    for k, (a, b) in enumerate(_PAIRS):
        tensor[:, a, b] = tensor[:, b, a] = coefficients[k + 1]
    lam = np.clip(np.linalg.eigvalsh(tensor), 0.0, None)[:, ::-1]
    md = lam.mean(axis=1)
    norm = np.sqrt((lam**2).sum(axis=1))
    fa = np.sqrt(1.5 * ((lam - md[:, None]) ** 2).sum(axis=1)) / np.maximum(norm, 1e-12)
    return {"FA": fa, "MD": md, "AD": lam[:, 0], "RD": 0.5 * (lam[:, 1] + lam[:, 2])}
