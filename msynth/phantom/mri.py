"""MR acquisitions: signal equations, protocols, bias field, Rician noise and scanner gain.

Signal equations (magnitude, per compartment, summed with the compartment fractions):

* spoiled gradient echo (FLASH/SPGR), steady state:
  ``S = PD sin(a) (1 - E1) / (1 - cos(a) E1) exp(-TE/T2)`` with ``E1 = exp(-TR/T1)`` (T2* approximated by T2 at
  the short echo times used);
* spin echo: ``S = PD (1 - exp(-TR/T1)) exp(-TE/T2)``;
* inversion recovery with one (FLAIR) or two (DIR) inversions: the longitudinal magnetisation, saturated by the
  previous readout, recovers, is inverted at each inversion time before excitation, and is read as
  ``S = PD |Mz(TE=0)| exp(-TE/T2)``.  FLAIR's inversion time nulls the nominal CSF; DIR's two inversion times null
  the nominal CSF and white matter (Redpath TW, Smith FW, Br J Radiol 1994;67:1258-1263).

Protocols follow the papers' acquisitions (paper 001: T1w 1x1x1.1 mm, T2w/PDw 0.9x0.9x3 mm, T1 spin echo 1x1x3 mm,
DIR 1 mm; thesis: MTR 1x1x1.1 mm, DTI 2 mm, all at 3 T), except the FLAIR: paper 001's was 2-D (0.9x0.9x3 mm), but
the 2021 MAGNIMS-CMSC-NAIMS consensus on MRI in MS (Wattjes MP et al., Lancet Neurol 2021;20:653-670) makes a 3-D
FLAIR of about 1 mm isotropic the core sequence, so the phantom acquires it that way (TR 5000 ms, the inversion time
that nulls CSF, an equivalent TE of 100 ms as variable-flip-angle 3-D turbo spin echo is designed to give).  A 2-D
FLAIR would also set an unknowable target for synthesis: where its thick slices start is told by no other image
(``benchmarks/results/flair_ceiling.md``).  ``--voxel-size`` multiplies every voxel size.
Noise is Rician with a per-sequence SNR of the nominal brightest brain tissue; the bias field is a smooth random
field fixed to the scanner (not the head); the gain is a global log-normal scale, as scanners do not calibrate
intensities.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import optimize

from .geometry import Grid
from .tissue import NOMINAL, TissueState

Signal = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def spgr(pd: np.ndarray, t1: np.ndarray, t2: np.ndarray, *, tr: float, te: float, flip_deg: float) -> np.ndarray:
    """Spoiled gradient-echo steady-state signal (times in ms)."""
    e1 = np.exp(-tr / t1)
    a = np.deg2rad(flip_deg)
    return pd * np.sin(a) * (1 - e1) / (1 - np.cos(a) * e1) * np.exp(-te / t2)


def spin_echo(pd: np.ndarray, t1: np.ndarray, t2: np.ndarray, *, tr: float, te: float) -> np.ndarray:
    """Spin-echo signal (times in ms)."""
    return pd * (1 - np.exp(-tr / t1)) * np.exp(-te / t2)


def longitudinal_after_inversions(t1: np.ndarray, *, tr: float, inversion_times: tuple[float, ...]) -> np.ndarray:
    """Mz at excitation for inversions ``inversion_times`` (ms before excitation, decreasing), Mz = 0 after readout."""
    mz = 1 - np.exp(-(tr - inversion_times[0]) / t1)
    for k, ti in enumerate(inversion_times):
        nxt = inversion_times[k + 1] if k + 1 < len(inversion_times) else 0.0
        mz = 1 - (1 + mz) * np.exp(-(ti - nxt) / t1)
    return mz


def inversion_recovery(
    pd: np.ndarray, t1: np.ndarray, t2: np.ndarray, *, tr: float, te: float, inversion_times: tuple[float, ...]
) -> np.ndarray:
    """Magnitude inversion-recovery spin-echo signal (times in ms)."""
    return pd * np.abs(longitudinal_after_inversions(t1, tr=tr, inversion_times=inversion_times)) * np.exp(-te / t2)


def flair_inversion_time(tr: float, t1_null: float) -> float:
    """Inversion time (ms) that nulls a tissue of longitudinal relaxation ``t1_null``."""
    return float(t1_null * np.log(2.0 / (1.0 + np.exp(-tr / t1_null))))


def dir_inversion_times(tr: float, t1_a: float, t1_b: float) -> tuple[float, float]:
    """The two inversion times (ms before excitation) that null tissues ``t1_a`` (longer) and ``t1_b`` together."""

    def residual(times: np.ndarray) -> np.ndarray:
        """Mz at excitation of both tissues for inversion times ``times``."""
        inv = (float(times[0]), float(times[1]))
        return np.array([longitudinal_after_inversions(np.float64(t), tr=tr, inversion_times=inv)
                         for t in (t1_a, t1_b)])

    ti1, ti2 = optimize.fsolve(residual, x0=np.array([0.4 * tr, 0.06 * tr]))
    return float(ti1), float(ti2)


@dataclass(frozen=True)
class MRProtocol:
    """One MR sequence of the phantom's protocol.

    Attributes
    ----------
    key
        Modality key (DESIGN.md): ``T1w T2w PDw FLAIR T1SE DIR MTR``.
    name
        BIDS name after ``sub-<L>_ses-<S>_`` (for example ``acq-SE_T1w``).
    voxel_mm, fov_mm
        Voxel size at ``--voxel-size 1`` and field of view (array axes: left-right, posterior-anterior, slices).
    snr
        Signal-to-noise ratio of the nominal brightest of GM and WM.
    bias
        Standard deviation of the log bias field.
    signal
        Signal equation of (PD, T1, T2) with the sequence's timing bound.
    sidecar
        Static BIDS sidecar fields (seconds and degrees, as BIDS asks).
    """

    key: str
    name: str
    voxel_mm: tuple[float, float, float]
    fov_mm: tuple[float, float, float]
    snr: float
    bias: float
    signal: Signal
    sidecar: dict = field(default_factory=dict)

    def reference_signal(self) -> float:
        """Signal of the brightest nominal brain tissue (GM or WM), the SNR's reference."""
        return float(max(self.signal(np.float64(p.pd), np.float64(p.t1_ms), np.float64(p.t2_ms))
                         for p in (NOMINAL["GM"], NOMINAL["WM"])))


def _bind(fn: Callable[..., np.ndarray], **timing: float) -> Signal:
    """Signal equation of (PD, T1, T2) with the sequence timing fixed."""
    return lambda pd, t1, t2: fn(pd, t1, t2, **timing)


_FLAIR_TR = 5000.0
_FLAIR_TI = flair_inversion_time(_FLAIR_TR, NOMINAL["CSF"].t1_ms)
_DIR_TR = 7500.0
_DIR_TI = dir_inversion_times(_DIR_TR, NOMINAL["CSF"].t1_ms, NOMINAL["WM"].t1_ms)
#: Scanner fields shared by every MR sidecar.
SCANNER = {"MagneticFieldStrength": 3, "Manufacturer": "msynth-phantom", "ManufacturersModelName": "simulated 3 T"}


def _sidecar(tr_ms: float, te_ms: float, **extra: object) -> dict:
    """BIDS sidecar fields (times converted to seconds)."""
    return {**SCANNER, "RepetitionTime": tr_ms / 1000.0, "EchoTime": te_ms / 1000.0, **extra}


PROTOCOLS: dict[str, MRProtocol] = {
    p.key: p
    for p in (
        MRProtocol("T1w", "T1w", (1.0, 1.0, 1.1), (192.0, 240.0, 220.0), 35.0, 0.10,
                   _bind(spgr, tr=20.0, te=4.0, flip_deg=25.0),
                   _sidecar(20.0, 4.0, FlipAngle=25.0, MRAcquisitionType="3D", ScanningSequence="GR",
                            SequenceVariant="SP", PulseSequenceType="Spoiled gradient echo")),
        MRProtocol("T2w", "T2w", (0.9, 0.9, 3.0), (207.0, 230.4, 150.0), 25.0, 0.10,
                   _bind(spin_echo, tr=4000.0, te=100.0),
                   _sidecar(4000.0, 100.0, FlipAngle=90.0, MRAcquisitionType="2D", ScanningSequence="SE",
                            SequenceVariant="NONE", PulseSequenceType="Turbo spin echo, dual echo (second echo)")),
        MRProtocol("PDw", "PDw", (0.9, 0.9, 3.0), (207.0, 230.4, 150.0), 35.0, 0.10,
                   _bind(spin_echo, tr=4000.0, te=12.0),
                   _sidecar(4000.0, 12.0, FlipAngle=90.0, MRAcquisitionType="2D", ScanningSequence="SE",
                            SequenceVariant="NONE", PulseSequenceType="Turbo spin echo, dual echo (first echo)")),
        MRProtocol("FLAIR", "FLAIR", (1.0, 1.0, 1.0), (192.0, 240.0, 176.0), 20.0, 0.10,
                   _bind(inversion_recovery, tr=_FLAIR_TR, te=100.0, inversion_times=(_FLAIR_TI,)),
                   _sidecar(_FLAIR_TR, 100.0, InversionTime=round(_FLAIR_TI) / 1000.0, FlipAngle=90.0,
                            MRAcquisitionType="3D", ScanningSequence=["SE", "IR"], SequenceVariant="NONE",
                            PulseSequenceType="3-D fluid-attenuated inversion recovery turbo spin echo "
                            "(variable refocusing flip angles)")),
        MRProtocol("T1SE", "acq-SE_T1w", (1.0, 1.0, 3.0), (192.0, 256.0, 150.0), 25.0, 0.10,
                   _bind(spin_echo, tr=600.0, te=11.0),
                   _sidecar(600.0, 11.0, FlipAngle=90.0, MRAcquisitionType="2D", ScanningSequence="SE",
                            SequenceVariant="NONE", PulseSequenceType="T1-weighted spin echo")),
        MRProtocol("DIR", "acq-DIR_T2w", (1.0, 1.0, 1.0), (192.0, 240.0, 176.0), 12.0, 0.12,
                   _bind(inversion_recovery, tr=_DIR_TR, te=25.0, inversion_times=_DIR_TI),
                   _sidecar(_DIR_TR, 25.0, InversionTime=round(_DIR_TI[0]) / 1000.0, FlipAngle=90.0,
                            MRAcquisitionType="3D", ScanningSequence=["SE", "IR"], SequenceVariant="NONE",
                            PulseSequenceType="Double inversion recovery turbo spin echo",
                            PulseSequenceDetails=f"inversions {_DIR_TI[0]:.0f} ms and {_DIR_TI[1]:.0f} ms before "
                            "excitation, nulling CSF and white matter")),
    )
}

#: Magnetisation-transfer pair (MT off / MT on): spoiled gradient echo; MTR = 100 (M0 - Msat) / M0.
MT_PROTOCOL = MRProtocol("MTR", "MTRmap", (1.0, 1.0, 1.1), (192.0, 240.0, 176.0), 40.0, 0.10,
                         _bind(spgr, tr=30.0, te=4.0, flip_deg=10.0),
                         {**SCANNER, "Units": "percent", "MTState": True, "RepetitionTimeExcitation": 0.030,
                          "EchoTime": 0.004, "FlipAngle": 10.0, "MRAcquisitionType": "3D",
                          "PulseSequenceType": "Spoiled gradient echo without and with MT saturation pulse"})


def native_signal(state: TissueState, signal: Signal, *, mt_weighted: bool = False) -> np.ndarray:
    """Noise-free signal of every native voxel (a volume): fraction-weighted sum over compartments.

    With ``mt_weighted`` each compartment's signal is reduced by its MTR (the MT-on image).
    """
    total = np.zeros(state.index.size, dtype=np.float32)
    for c in state.compartments:
        s = signal(np.asarray(c.pd, np.float32), np.asarray(c.t1_ms, np.float32), np.asarray(c.t2_ms, np.float32))
        if mt_weighted:
            s = s * (1.0 - np.asarray(c.mtr_pct, np.float32) / 100.0)
        total += c.fraction * s
    return state.volume(total)


def bias_field(grid: Grid, rng: np.random.Generator, strength: float, n_waves: int = 6) -> np.ndarray:
    """Smooth multiplicative bias ``exp(sum of random plane waves)`` in scanner coordinates (wavelengths 150-400 mm).

    Each wave's phase is linear in the voxel indices, so the field is built from broadcast 1-D arrays.
    """
    log_bias = np.zeros(grid.shape, dtype=np.float32)
    ijk = [np.arange(n, dtype=np.float64) for n in grid.shape]
    for _ in range(n_waves):
        direction = rng.standard_normal(3)
        freq = direction / np.linalg.norm(direction) / rng.uniform(150.0, 400.0)
        alpha = 2 * np.pi * (freq @ grid.affine[:3, :3])
        phase = 2 * np.pi * (freq @ grid.affine[:3, 3]) + rng.uniform(0, 2 * np.pi)
        arg = ((alpha[0] * ijk[0])[:, None, None] + (alpha[1] * ijk[1])[None, :, None]
               + (alpha[2] * ijk[2])[None, None, :])
        log_bias += (strength * np.sqrt(2.0 / n_waves) * rng.standard_normal()) * np.cos(arg + phase).astype(np.float32)
    return np.exp(log_bias)


def rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise of standard deviation ``sigma`` per channel."""
    real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag)


def to_int16(image: np.ndarray) -> np.ndarray:
    """Round to the scanner's 16-bit integers."""
    return np.clip(np.rint(image), 0, 32767).astype(np.int16)
