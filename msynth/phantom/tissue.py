"""Tissue compartments and their physical properties at 3 T.

Every voxel of the native anatomy is a mixture of compartments (grey matter, normal-appearing white matter, lesional
white matter, CSF, extra-cerebral CSF, bone, muscle/skin, fat).  Signals of a voxel are the fraction-weighted sum
of the compartments' signals (slow exchange), which is how partial volume enters every modality.

Nominal relaxation times and proton densities at 3 T (the sources):

* grey and white matter T1 and T2: Wansapura JP et al., "NMR relaxation times in the human brain at 3.0 tesla",
  JMRI 1999;9:531-538 (WM T1 832 ms, T2 79.6 ms; GM T1 1331 ms, T2 110 ms).  Stanisz GJ et al., MRM
  2005;54:507-512 report longer T1 (WM 1084 ms, GM 1820 ms) and shorter T2 (WM 69 ms, GM 99 ms); the spread between
  the two sets bounds the per-subject variation drawn in :func:`subject_scales`;
* CSF: T1 about 4.3 s (Rooney WD et al., MRM 2007;57:308-318; Lu H et al., JMRI 2005;22:13-22), T2 about 2 s
  (Spijkerman JM et al., MAGMA 2018;31:415-424);
* proton density (water content relative to CSF): WM 0.69, GM 0.80 (Neeb H, Zilles K, Shah NJ, NeuroImage
  2006;31:1156-1168; Whittall KP et al., MRM 1997;37:34-43);
* subcutaneous fat T1 371 ms, T2 133 ms and skeletal muscle T1 1420 ms, T2 32 ms (Gold GE et al., AJR
  2004;183:343-351); cortical bone has a T2 well under 1 ms and is dark in every sequence here.

Magnetisation transfer ratios (percent, MT-prepared spoiled gradient echo): WM about 45, GM about 36, CSF 0
(e.g. the ranges collected by Horsfield MA, J Neuroimaging 2005;15:58S-67S).  In lesions, relaxation lengthens and
MTR falls with demyelination, edema (free water) and axonal loss, with coefficients chosen so that lesional T1 is
about 1.2-1.8 times NAWM and T2 1.3-2.5 times NAWM, as typically reported (e.g. Vrenken H et al., Radiology
2006;240:811-820 for T1).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .anatomy import Anatomy
from .lesions import LesionState, smooth_noise


@dataclass(frozen=True)
class Properties:
    """Nominal properties of a pure tissue at 3 T: T1, T2 (ms), proton density (0-1), MTR (percent)."""

    t1_ms: float
    t2_ms: float
    pd: float
    mtr_pct: float


NOMINAL: dict[str, Properties] = {
    "GM": Properties(t1_ms=1331.0, t2_ms=110.0, pd=0.80, mtr_pct=36.0),
    "WM": Properties(t1_ms=832.0, t2_ms=79.6, pd=0.69, mtr_pct=45.0),
    "CSF": Properties(t1_ms=4300.0, t2_ms=2000.0, pd=1.00, mtr_pct=0.0),
    "XCSF": Properties(t1_ms=4300.0, t2_ms=2000.0, pd=1.00, mtr_pct=0.0),
    "BONE": Properties(t1_ms=250.0, t2_ms=0.5, pd=0.15, mtr_pct=0.0),
    "MUSCLE": Properties(t1_ms=1420.0, t2_ms=32.0, pd=0.75, mtr_pct=50.0),
    "FAT": Properties(t1_ms=371.0, t2_ms=133.0, pd=0.90, mtr_pct=8.0),
}

#: Myelin content (white matter = 1) of cortical and cerebellar grey matter.  Cerebellar cortex is the PET reference
#: region, slightly less myelinated than neocortex so that cortical DVR is about 1.05.
GM_MYELIN_CORTEX = 0.30
GM_MYELIN_CEREBELLUM = 0.25

#: Relative lengthening of WM T1 / T2 and rise of PD per unit of (1 - myelin), gliosis, edema and axonal loss.
_T1_EFFECT = {"demyelination": 0.45, "gliosis": 0.35, "edema": 0.35, "axonal_loss": 0.15}
_T2_EFFECT = {"demyelination": 0.35, "gliosis": 0.45, "edema": 1.20, "axonal_loss": 0.10}
_PD_EFFECT = {"demyelination": 0.05, "gliosis": 0.05, "edema": 0.20, "axonal_loss": 0.0}


@dataclass(frozen=True)
class Compartment:
    """One tissue compartment over the voxels of a :class:`TissueState` (flat arrays or scalars).

    ``myelin``, ``edema`` and ``axonal_loss`` are 0-1 (myelin 1 = healthy white matter); they drive MTR, the
    diffusion tensor (:mod:`msynth.phantom.dwi`) and the [11C]PIB distribution volume (:mod:`msynth.phantom.pet`).
    """

    name: str
    fraction: np.ndarray
    t1_ms: np.ndarray | float
    t2_ms: np.ndarray | float
    pd: np.ndarray | float
    mtr_pct: np.ndarray | float
    myelin: np.ndarray | float = 0.0
    edema: np.ndarray | float = 0.0
    axonal_loss: np.ndarray | float = 0.0


@dataclass(frozen=True)
class TissueState:
    """All compartments of one subject at one session, on the voxels ``index`` of the native ``anatomy`` grid."""

    anatomy: Anatomy
    index: np.ndarray
    compartments: tuple[Compartment, ...]
    orientation: np.ndarray

    def volume(self, values: np.ndarray | float) -> np.ndarray:
        """Scatter flat per-voxel ``values`` back to a native volume (zero elsewhere)."""
        out = np.zeros(self.anatomy.grid.shape, dtype=np.float32)
        out.reshape(-1)[self.index] = values
        return out

    def by_name(self, name: str) -> Compartment:
        """The compartment called ``name``."""
        return next(c for c in self.compartments if c.name == name)


def subject_scales(rng: np.random.Generator) -> dict[str, float]:
    """Per-subject multiplicative variation of T1, T2 and PD (a few percent, inside the literature spread)."""
    return {"t1": float(np.exp(rng.normal(0.0, 0.03))), "t2": float(np.exp(rng.normal(0.0, 0.03))),
            "pd": float(np.exp(rng.normal(0.0, 0.02)))}


def healthy_fields(anatomy: Anatomy, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Smooth myelin of normal-appearing white matter (about 1, +-4 %) and grey-matter texture (+-3 %).

    The subject's overall white-matter myelin varies by about 2 %; both fields are the same at every session.
    """
    myelin = float(np.exp(rng.normal(0.0, 0.02))) * (1.0 + 0.04 * smooth_noise(rng, anatomy.grid.shape,
                                                                                8.0 / anatomy.grid.zooms))
    texture = 0.03 * smooth_noise(rng, anatomy.grid.shape, 10.0 / anatomy.grid.zooms)
    return myelin.astype(np.float32), texture.astype(np.float32)


def white_matter(
    myelin: np.ndarray,
    edema: np.ndarray | float,
    axonal_loss: np.ndarray | float,
    gliosis: np.ndarray | float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """T1, T2, PD and MTR of white matter with the given myelin, edema, axonal loss and gliosis (all 0-1).

    Demyelination lengthens T1 and T2 and lowers MTR; edema (free water) lengthens T2 most, raises PD and lowers
    MTR; gliosis keeps a remyelinated lesion visible on T2 and FLAIR ("shadow plaque"); axonal loss acts weakly.
    """
    causes = {"demyelination": 1.0 - myelin, "gliosis": gliosis, "edema": edema, "axonal_loss": axonal_loss}
    wm = NOMINAL["WM"]
    t1 = wm.t1_ms * (1.0 + sum(_T1_EFFECT[k] * v for k, v in causes.items()))
    t2 = wm.t2_ms * (1.0 + sum(_T2_EFFECT[k] * v for k, v in causes.items()))
    pd = np.minimum(wm.pd * (1.0 + sum(_PD_EFFECT[k] * v for k, v in causes.items())), 0.97)
    mtr = (wm.mtr_pct * (0.55 + 0.45 * myelin) * (1.0 - 0.35 * np.asarray(edema))
           * (1.0 - 0.10 * np.asarray(axonal_loss)))
    return t1, t2, pd, mtr


def tissue_state(
    anatomy: Anatomy,
    lesions: LesionState,
    nawm_myelin: np.ndarray,
    gm_texture: np.ndarray,
    scales: dict[str, float],
) -> TissueState:
    """Assemble the compartments of one subject at one session.

    Parameters
    ----------
    anatomy
        Native anatomy (fractions on the native grid).
    lesions
        Lesion fraction of the white matter and the lesion fields at this session (all zero for a control).
    nawm_myelin
        Myelin of normal-appearing white matter (about 1, smooth spatial variation), native volume.
    gm_texture
        Smooth relative variation of grey-matter T1/T2 (a few percent), native volume.
    scales
        Per-subject multipliers from :func:`subject_scales`.

    Returns
    -------
    TissueState
    """
    fr = anatomy.fractions
    index = np.flatnonzero(sum(fr.values()).reshape(-1) > 1e-3)

    def flat(vol: np.ndarray) -> np.ndarray:
        """Values of a native volume on the state's voxels."""
        return vol.reshape(-1)[index].astype(np.float32)

    wm, lesion = flat(fr["WM"]), flat(lesions.fraction)
    mu = flat(nawm_myelin)
    demyel, edema, axon, glio = (flat(v) for v in (lesions.demyelination, lesions.edema, lesions.axonal_loss,
                                                    lesions.gliosis))
    comps = []
    t1, t2, pd, mtr = white_matter(mu, 0.0, 0.0, 0.0)
    comps.append(Compartment("NAWM", wm * (1 - lesion), t1, t2, pd, mtr, myelin=mu))
    m_les = mu * (1.0 - demyel)
    t1, t2, pd, mtr = white_matter(m_les, edema, axon, glio)
    comps.append(Compartment("LES", wm * lesion, t1, t2, pd, mtr, myelin=m_les, edema=edema, axonal_loss=axon))
    gm = NOMINAL["GM"]
    tex = flat(gm_texture)
    gm_myelin = np.where(flat(anatomy.cerebellum) > 0.5, GM_MYELIN_CEREBELLUM, GM_MYELIN_CORTEX).astype(np.float32)
    comps.append(Compartment("GM", flat(fr["GM"]), gm.t1_ms * (1 + tex), gm.t2_ms * (1 + 0.5 * tex), gm.pd,
                             gm.mtr_pct * (1 - 0.5 * tex), myelin=gm_myelin))
    for name in ("CSF", "XCSF", "BONE", "MUSCLE", "FAT"):
        p = NOMINAL[name]
        comps.append(Compartment(name, flat(fr[name]), p.t1_ms, p.t2_ms, p.pd, p.mtr_pct))
    scaled = tuple(replace(c, t1_ms=c.t1_ms * scales["t1"], t2_ms=c.t2_ms * scales["t2"],
                           pd=np.minimum(c.pd * scales["pd"], 1.0)) for c in comps)
    orientation = np.stack([flat(o) for o in anatomy.orientation])
    return TissueState(anatomy=anatomy, index=index, compartments=scaled, orientation=orientation)
