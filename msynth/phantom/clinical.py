"""Clinical side of the phantom: demographics, demyelinated voxels, myelin-change indices and the EDSS model.

Demyelinated voxels follow Bodini B et al. (Ann Neurol 2016;79:726-738) as used in the thesis (paper 003, 4.2.5):
a lesion voxel is demyelinated when its DVR is below the healthy-control mean minus one standard deviation of the
white-matter voxels at the same distance from CSF.  The indices, in percent:

* demyelinated share at each session, over the baseline lesion load;
* global change: share at follow-up minus share at baseline;
* dynamic demyelination: share of normally myelinated baseline lesion voxels demyelinated at follow-up;
* dynamic remyelination: share of demyelinated baseline lesion voxels normally myelinated at follow-up.

EDSS is planted by a linear model on standardized variables in which dynamic remyelination has the coefficient
-0.70 (thesis Table 4.3: -0.703) and age, sex and T2 lesion load are covariates.  The noise is drawn, then made
orthogonal to the regressors, so that ordinary least squares on the cohort's truth table gives back the planted
standardized coefficients up to the rounding of EDSS to half points.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import ndimage

#: Cohort demographics of the thesis (paper 003, 3.3.1): age mean and SD, share of women.
DEMOGRAPHICS = {"MS": (31.4, 5.6, 12 / 18), "HC": (29.4, 6.3, 8 / 10)}
#: Planted standardized coefficients of the EDSS model.
EDSS_BETAS = {"dynamic_remyelination": -0.70, "age": 0.15, "sex_female": -0.05, "t2_lesion_load": 0.20}
EDSS_MEAN, EDSS_SD = 3.5, 1.3
#: Distance-to-CSF rings (mm) of the healthy-control reference; farther voxels share the last ring.
REFERENCE_RING_MM = 1.0
REFERENCE_MAX_MM = 12.0


def demographics(rng: np.random.Generator, group: str, count: int) -> list[tuple[int, str]]:
    """Age (years, 18-65) and sex (``"F"``/``"M"``) of ``count`` participants of ``group`` (``"HC"``/``"MS"``).

    Ages are drawn from the thesis cohort's mean and SD; the number of women is the thesis share, rounded (so the
    default cohort has 12 women of 18 patients and 8 of 10 controls), in random order.
    """
    mean, sd, women = DEMOGRAPHICS[group]
    ages = np.clip(np.rint(rng.normal(mean, sd, count)), 18, 65).astype(int)
    n_women = int(round(women * count))
    sexes = rng.permutation(np.array(["F"] * n_women + ["M"] * (count - n_women)))
    return [(int(a), str(x)) for a, x in zip(ages, sexes)]


def csf_rings(csf_fraction: np.ndarray, zooms: np.ndarray) -> np.ndarray:
    """Ring index (distance to the nearest CSF voxel, in :data:`REFERENCE_RING_MM` steps, capped)."""
    dist = ndimage.distance_transform_edt(csf_fraction < 0.5, sampling=zooms)
    return np.minimum(np.floor(dist / REFERENCE_RING_MM), REFERENCE_MAX_MM / REFERENCE_RING_MM).astype(np.int16)


@dataclass
class ControlReference:
    """Healthy-control white-matter DVR by distance to CSF, accumulated one control at a time."""

    sums: np.ndarray = field(default_factory=lambda: np.zeros(int(REFERENCE_MAX_MM / REFERENCE_RING_MM) + 1))
    squares: np.ndarray = field(default_factory=lambda: np.zeros(int(REFERENCE_MAX_MM / REFERENCE_RING_MM) + 1))
    counts: np.ndarray = field(default_factory=lambda: np.zeros(int(REFERENCE_MAX_MM / REFERENCE_RING_MM) + 1))

    def add(self, dvr: np.ndarray, white_matter: np.ndarray, rings: np.ndarray) -> None:
        """Accumulate the DVR of one control's white-matter voxels."""
        r, v = rings[white_matter], dvr[white_matter].astype(np.float64)
        n = self.counts.size
        self.sums += np.bincount(r, v, n)
        self.squares += np.bincount(r, v * v, n)
        self.counts += np.bincount(r, None, n)

    def merge(self, other: "ControlReference") -> None:
        """Add the voxels accumulated by another reference (a worker's share of the controls)."""
        self.sums += other.sums
        self.squares += other.squares
        self.counts += other.counts

    def threshold(self) -> np.ndarray:
        """Mean minus one SD per ring (empty rings take the nearest filled one)."""
        filled = self.counts > 1
        mean = self.sums[filled] / self.counts[filled]
        sd = np.sqrt(np.maximum(self.squares[filled] / self.counts[filled] - mean**2, 0.0))
        rings = np.arange(self.counts.size)
        return np.interp(rings, rings[filled], mean - sd)


def demyelinated(dvr: np.ndarray, lesion: np.ndarray, rings: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Lesion voxels whose DVR is below the control threshold of their ring."""
    return lesion & (dvr < threshold[rings])


def myelin_indices(lesion: np.ndarray, baseline: np.ndarray, follow_up: np.ndarray) -> dict[str, float]:
    """The four indices (percent) from baseline lesion voxels and the demyelinated masks at both sessions."""
    n_lesion = max(int(lesion.sum()), 1)
    normal0 = lesion & ~baseline
    pct0 = 100.0 * baseline.sum() / n_lesion
    pct1 = 100.0 * (follow_up & lesion).sum() / n_lesion
    return {
        "pct_demyelinated_ses01": float(pct0),
        "pct_demyelinated_ses02": float(pct1),
        "global_change": float(pct1 - pct0),
        "dynamic_demyelination": float(100.0 * (normal0 & follow_up).sum() / max(int(normal0.sum()), 1)),
        "dynamic_remyelination": float(100.0 * (baseline & ~follow_up).sum() / max(int(baseline.sum()), 1)),
    }


def _zscore(x: pd.Series) -> np.ndarray:
    """Standardized values (sample SD, ddof=1)."""
    v = x.to_numpy(dtype=float)
    return (v - v.mean()) / v.std(ddof=1)


def plant_edss(patients: pd.DataFrame, rng: np.random.Generator) -> tuple[pd.Series, dict]:
    """Baseline EDSS of each patient from the planted model, and the model as a JSON-ready dict.

    Parameters
    ----------
    patients
        One row per patient with ``dynamic_remyelination``, ``age``, ``sex`` and ``t2_lesion_load`` columns.
    rng
        The cohort's clinical random stream.

    Returns
    -------
    tuple
        EDSS (0-9.5 in half points) indexed like ``patients``, and the model description.
    """
    x = pd.DataFrame({"dynamic_remyelination": patients["dynamic_remyelination"], "age": patients["age"],
                      "sex_female": (patients["sex"] == "F").astype(float),
                      "t2_lesion_load": patients["t2_lesion_load"]})
    n = len(x)
    usable = [c for c in x.columns if n > 1 and x[c].std(ddof=1) > 0]
    z = np.column_stack([_zscore(x[c]) for c in usable]) if usable else np.zeros((n, 0))
    explained = z @ np.array([EDSS_BETAS[c] for c in usable])
    noise = rng.standard_normal(n)
    residual_var = 1.0
    if n > len(usable) + 2:
        design = np.column_stack([np.ones(n), z])
        noise -= design @ np.linalg.lstsq(design, noise, rcond=None)[0]
        residual_var = max(1.0 - float(np.var(explained, ddof=1)), 0.05)
        noise *= np.sqrt(residual_var) / float(np.std(noise, ddof=1))
    edss = np.clip(np.round(2.0 * (EDSS_MEAN + EDSS_SD * (explained + noise))) / 2.0, 0.0, 9.5)
    model = {
        "Description": "EDSS at ses-01 = mean + SD * (sum of standardized betas * z-scored regressors + noise), "
                       "rounded to half points and clipped to 0-9.5; z-scores over the cohort's patients (ddof=1); "
                       "noise orthogonal to the regressors.",
        "Reference": "Bodini et al., Ann Neurol 2016; thesis (paper 003) Table 4.3, beta = -0.703",
        "DependentVariable": "edss (sessions.tsv, ses-01)",
        "EDSSMean": EDSS_MEAN,
        "EDSSSD": EDSS_SD,
        "ResidualSDStandardized": float(np.sqrt(residual_var)),
        "NumberOfPatients": int(len(x)),
        "StandardizedBeta": {c: EDSS_BETAS[c] for c in usable},
        "Coefficient": {c: EDSS_BETAS[c] * EDSS_SD / float(x[c].std(ddof=1)) for c in usable},
        "RegressorMean": {c: float(x[c].mean()) for c in usable},
        "RegressorSD": {c: float(x[c].std(ddof=1)) for c in usable},
        "Units": {"dynamic_remyelination": "percent", "age": "years", "sex_female": "1 = female, 0 = male",
                  "t2_lesion_load": "mm^3"},
    }
    return pd.Series(edss, index=patients.index, name="edss"), model


def follow_up_edss(baseline: pd.Series, rng: np.random.Generator) -> pd.Series:
    """EDSS at ses-02: mostly unchanged over 1-4 months, sometimes half a point up or down (thesis 4.3.6)."""
    step = rng.choice([-0.5, 0.0, 0.0, 0.0, 0.0, 0.5], size=len(baseline))
    return (baseline + step).clip(0.0, 9.5)
