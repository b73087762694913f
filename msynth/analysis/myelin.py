"""Demyelinated voxels and the indices of myelin-content change, from [11C]PIB DVR maps.

The procedure is Bodini et al. (Ann Neurol 2016;79:726-738) as thesis 003 uses it (§3.3.5, §4.2.5):

1. **Control reference.** The DVR of every white-matter voxel of every healthy control is pooled by its distance to
   CSF in rings of ``ring_width_mm`` (1 mm); per ring, the threshold is the mean minus one standard deviation
   (:func:`control_reference`).
2. **Demyelinated voxels.** In a patient, a lesion voxel is demyelinated when its DVR is below the threshold of its
   own ring (:func:`demyelinated_voxels`).
3. **Indices** (percent, over the baseline lesion voxels; :func:`myelin_indices`):
   ``pct_demyelinated_t0/t1`` = demyelinated lesion voxels at each time point over the lesion load at t0;
   ``global_index`` = ``pct_demyelinated_t1 − pct_demyelinated_t0``;
   ``dynamic_demyelination`` = voxels normal at t0 and demyelinated at t1, over the voxels normal at t0;
   ``dynamic_remyelination`` = voxels demyelinated at t0 and normal at t1, over the voxels demyelinated at t0.

The thesis registers every subject nonlinearly to MNI space before step 1, so its rings are millimetres of the
template. msynth measures each voxel's distance to CSF in millimetres of the subject's own T1w grid instead (no
template warp, whose local scaling would stretch or shrink a subject's distances to CSF): a deliberate difference.
``benchmarks/group_phantom.py`` measures what classifying on each subject's T1w grid does to the indices.
A lesion voxel without a finite DVR is never demyelinated (it counts as normal).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from msynth.analysis.metrics import dice

#: Source name of the DVR computed from the acquired PET (the synthetic sources are named by their model).
ACQUIRED = "acquired"
#: Source name of the acquired PET's DVR corrected for partial volume (participant level with --pet-psf-fwhm).
ACQUIRED_PVC = "acquired-pvc"
#: The sources measured on the acquired PET; every other source is a synthesis model, compared with ``acquired``.
ACQUIRED_SOURCES = (ACQUIRED, ACQUIRED_PVC)
#: Width of a distance-to-CSF ring of the control reference (Bodini 2016: 1 mm).
RING_WIDTH_MM = 1.0
#: Voxels farther than this from CSF share the last ring (deep white matter: the DVR no longer depends on the
#: distance; the phantom's truth uses the same cap).
MAX_DISTANCE_MM = 12.0
#: A voxel counts as white matter of a control when its WM probability is at least this (majority class).
WM_PROBABILITY = 0.5

INDEX_COLUMNS = (
    "lesion_voxels_t0", "pct_demyelinated_t0", "pct_demyelinated_t1", "global_index", "dynamic_demyelination",
    "dynamic_remyelination",
)


def distance_rings(csf_distance_mm: np.ndarray, *, ring_width_mm: float = RING_WIDTH_MM,
                   max_distance_mm: float = MAX_DISTANCE_MM) -> np.ndarray:
    """Ring index of each voxel: ``floor(distance / ring_width)``, capped at ``max_distance / ring_width``.

    >>> distance_rings(np.array([0.0, 0.99, 1.0, 2.5, 40.0])).tolist()
    [0, 0, 1, 2, 12]
    """
    if ring_width_mm <= 0 or max_distance_mm < ring_width_mm:
        raise ValueError(f"ring_width_mm must be > 0 and <= max_distance_mm, got {ring_width_mm}, {max_distance_mm}")
    distance = np.asarray(csf_distance_mm, dtype=np.float64)
    if np.any(distance < 0):
        raise ValueError("csf_distance_mm holds negative distances")
    rings = np.floor(distance / ring_width_mm)
    return np.minimum(rings, np.floor(max_distance_mm / ring_width_mm)).astype(np.int16)


def white_matter_samples(dvr: np.ndarray, white_matter: np.ndarray, rings: np.ndarray) -> pd.DataFrame:
    """The ``ring`` and ``dvr`` of one control's white-matter voxels (non-finite DVR left out)."""
    dvr = np.asarray(dvr, dtype=np.float64)
    inside = np.asarray(white_matter, bool) & np.isfinite(dvr)
    if dvr.shape != inside.shape or rings.shape != inside.shape:
        raise ValueError(f"grids differ: dvr {dvr.shape}, white matter {inside.shape}, rings {rings.shape}")
    return pd.DataFrame({"ring": rings[inside].astype(int), "dvr": dvr[inside]})


def control_reference(samples: Iterable[pd.DataFrame], *, ring_width_mm: float = RING_WIDTH_MM,
                      max_distance_mm: float = MAX_DISTANCE_MM) -> pd.DataFrame:
    """Healthy-control DVR threshold per distance-to-CSF ring: mean − 1 SD of all pooled voxels (§4.2.5).

    Parameters
    ----------
    samples
        One :func:`white_matter_samples` table per control.
    ring_width_mm, max_distance_mm
        The rings' width and cap (as :func:`distance_rings` used them).

    Returns
    -------
    pandas.DataFrame
        One row per ring: ``ring``, ``distance_from_mm``, ``distance_to_mm`` (``inf`` for the last), ``n_voxels``,
        ``mean``, ``sd`` (population SD of the pooled voxels), ``threshold`` (``mean − sd``) and ``interpolated``
        (a ring with fewer than 2 voxels takes the threshold interpolated linearly from its filled neighbours, or the
        nearest filled ring's beyond the ends).
    """
    pooled = pd.concat(list(samples), ignore_index=True)
    if pooled.empty:
        raise ValueError("control reference: no control white-matter voxel with a DVR")
    n_rings = int(np.floor(max_distance_mm / ring_width_mm)) + 1
    stats = pooled.groupby("ring")["dvr"].agg(n_voxels="size", mean="mean", sd=lambda v: v.std(ddof=0))
    table = stats.reindex(range(n_rings)).rename_axis("ring").reset_index()
    table["n_voxels"] = table["n_voxels"].fillna(0).astype(int)
    filled = table["n_voxels"] > 1
    threshold = table["mean"] - table["sd"]
    table["threshold"] = np.interp(table["ring"], table.loc[filled, "ring"], threshold[filled])
    table["interpolated"] = ~filled
    table.insert(1, "distance_from_mm", table["ring"] * ring_width_mm)
    table.insert(2, "distance_to_mm", np.where(table["ring"] < n_rings - 1, (table["ring"] + 1) * ring_width_mm,
                                               np.inf))
    return table


def demyelinated_voxels(dvr: np.ndarray, lesion: np.ndarray, rings: np.ndarray, reference: pd.DataFrame) -> np.ndarray:
    """Lesion voxels whose DVR is below the control threshold of their distance-to-CSF ring (a boolean mask)."""
    thresholds = reference.set_index("ring")["threshold"].to_numpy()
    if rings.max(initial=0) >= thresholds.size:
        raise ValueError(f"rings go to {rings.max()} but the reference has {thresholds.size}; use the same cap")
    return np.asarray(lesion, bool) & (np.asarray(dvr) < thresholds[rings])


def _percent(count: int, total: int) -> float:
    """``100 count / total``; NaN (n/a) for an empty denominator."""
    return 100.0 * count / total if total else float("nan")


def myelin_indices(lesion_t0: np.ndarray, demyelinated_t0: np.ndarray,
                   demyelinated_t1: np.ndarray | None) -> dict[str, float]:
    """The myelin-change indices of one patient (thesis 003 §4.2.5), in percent.

    All three masks are on the baseline grid; only baseline lesion voxels count. ``demyelinated_t1`` is None for a
    patient without a follow-up: the t1 indices are then NaN. An index whose denominator is empty (no normally
    myelinated or no demyelinated lesion voxel at t0) is NaN, not 0.

    >>> lesion = np.array([1, 1, 1, 1, 0], bool)
    >>> t0, t1 = np.array([1, 1, 0, 0, 0], bool), np.array([1, 0, 1, 0, 0], bool)
    >>> myelin_indices(lesion, t0, t1)["dynamic_remyelination"], myelin_indices(lesion, t0, t1)["global_index"]
    (50.0, 0.0)
    """
    lesion = np.asarray(lesion_t0, bool)
    d0 = np.asarray(demyelinated_t0, bool) & lesion
    n_lesion, n_d0 = int(lesion.sum()), int(d0.sum())
    pct0 = _percent(n_d0, n_lesion)
    indices = {"lesion_voxels_t0": float(n_lesion), "pct_demyelinated_t0": pct0}
    if demyelinated_t1 is None:
        return {**indices, "pct_demyelinated_t1": np.nan, "global_index": np.nan, "dynamic_demyelination": np.nan,
                "dynamic_remyelination": np.nan}
    d1 = np.asarray(demyelinated_t1, bool) & lesion
    pct1 = _percent(int(d1.sum()), n_lesion)
    normal0 = lesion & ~d0
    return {
        **indices,
        "pct_demyelinated_t1": pct1,
        "global_index": pct1 - pct0,
        "dynamic_demyelination": _percent(int((normal0 & d1).sum()), int(normal0.sum())),
        "dynamic_remyelination": _percent(int((d0 & ~d1).sum()), n_d0),
    }


def dynamic_masks(lesion_t0: np.ndarray, demyelinated_t0: np.ndarray,
                  demyelinated_t1: np.ndarray) -> dict[str, np.ndarray]:
    """Voxel maps of dynamic demyelination (normal → demyelinated) and remyelination (demyelinated → normal)."""
    lesion = np.asarray(lesion_t0, bool)
    d0, d1 = np.asarray(demyelinated_t0, bool) & lesion, np.asarray(demyelinated_t1, bool) & lesion
    return {"dynamic_demyelination": lesion & ~d0 & d1, "dynamic_remyelination": d0 & ~d1}


def mask_agreement(acquired: dict[str, np.ndarray], synthetic: dict[str, np.ndarray]) -> dict[str, float]:
    """Dice between the acquired- and synthetic-PET masks of each name both have (``dice_<name>``; thesis 4.3.4-5).

    Both empty counts as agreement (Dice 1, see :func:`msynth.analysis.metrics.dice`).
    """
    return {f"dice_{name}": dice(acquired[name], synthetic[name]) for name in acquired if name in synthetic}


def roi_means(dvr: np.ndarray, regions: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean DVR in each region (``dvr_<region>``); NaN for an empty region."""
    dvr = np.asarray(dvr, dtype=np.float64)
    means = {}
    for name, region in regions.items():
        values = dvr[np.asarray(region, bool) & np.isfinite(dvr)]
        means[f"dvr_{name}"] = float(values.mean()) if values.size else float("nan")
    return means


def index_table(rows: Sequence[dict[str, object]]) -> pd.DataFrame:
    """``myelin_indices.tsv``: one row per patient and source, the columns of DESIGN.md in their order."""
    table = pd.DataFrame(list(rows), columns=["participant_id", "source", *INDEX_COLUMNS])
    table["lesion_voxels_t0"] = table["lesion_voxels_t0"].astype("Int64")
    return table.sort_values(["source", "participant_id"], key=_acquired_first).reset_index(drop=True)


def source_rank(source: str) -> str:
    """Sort key of DVR sources: ``acquired``, ``acquired-pvc``, then the models by name.

    >>> sorted(["unet", "acquired-pvc", "acquired", "cfsagan"], key=source_rank)
    ['acquired', 'acquired-pvc', 'cfsagan', 'unet']
    """
    rank = ACQUIRED_SOURCES.index(source) if source in ACQUIRED_SOURCES else len(ACQUIRED_SOURCES)
    return f"{rank}{source}"


def _acquired_first(column: pd.Series) -> pd.Series:
    """Sort key of a table's columns that orders the ``source`` column by :func:`source_rank`."""
    return column.map(lambda v: source_rank(str(v))) if column.name == "source" else column
