"""The group level's tables (DESIGN.md ``OUTPUT_DIR/group/``), pivoted from the long per-subject measures.

:func:`group_tables` turns the measures of :mod:`msynth.analysis.myelin_maps` and the cohort table into
``myelin_indices``, ``agreement``, ``bland_altman`` (+ its points) and ``edss_regression``;
:func:`write_group_tables` writes each as a BIDS TSV with its JSON data dictionary, the reasons for every ``n/a`` in
the sidecar.
"""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from msynth.analysis import myelin, statistics

#: Indices related to EDSS (thesis 003 Table 4.3 uses the two dynamic ones; the others are reported alongside).
REGRESSION_INDICES = ("pct_demyelinated_t0", "pct_demyelinated_t1", "global_index", "dynamic_demyelination",
                      "dynamic_remyelination")
DICE_COLUMNS = ("dice_t0", "dice_t1", "dice_dynamic_demyelination", "dice_dynamic_remyelination")
_PERCENT = "percent of the baseline lesion voxels"
#: Tables whose n/a values are explained in their sidecar's ``NotAvailable``.
_EXPLAINED = ("myelin_indices", "agreement")
DICTIONARIES: dict[str, dict[str, dict[str, str]]] = {
    "cohort": {
        "participant_id": {"Description": "Participant"},
        "group": {"Description": "HC (healthy control) or MS (patient), from participants.tsv"},
        "age": {"Description": "Age from participants.tsv", "Units": "years"},
        "sex": {"Description": "Sex from participants.tsv"},
        "edss_t0": {"Description": "EDSS of the baseline session (sessions.tsv)"},
        "t2_lesion_load_mm3": {"Description": "Baseline lesion mask volume", "Units": "mm^3"},
        "n_sessions": {"Description": "Sessions with participant-level outputs"},
    },
    "control_reference": {
        "source": {"Description": "DVR source"},
        "ring": {"Description": "Distance-to-CSF ring"},
        "distance_from_mm": {"Description": "Ring's lower bound", "Units": "mm"},
        "distance_to_mm": {"Description": "Ring's upper bound (inf for the last ring)", "Units": "mm"},
        "n_voxels": {"Description": "Control white-matter voxels pooled in the ring"},
        "mean": {"Description": "Mean DVR of those voxels"},
        "sd": {"Description": "Population SD of those voxels"},
        "threshold": {"Description": "mean - sd: a lesion voxel below it is demyelinated"},
        "interpolated": {"Description": "True where the ring had fewer than 2 voxels and took its neighbours' value"},
    },
    "myelin_indices": {
        "participant_id": {"Description": "Patient"},
        "source": {"Description": "DVR source: 'acquired' (Logan DVR of the acquired PET), 'acquired-pvc' (the same, "
                                      "corrected for partial volume) or a synthesis model"},
        "lesion_voxels_t0": {"Description": "Lesion voxels at baseline (T1w grid)"},
        "pct_demyelinated_t0": {"Description": "Demyelinated lesion voxels at baseline", "Units": _PERCENT},
        "pct_demyelinated_t1": {"Description": "Demyelinated baseline-lesion voxels at follow-up", "Units": _PERCENT},
        "global_index": {"Description": "pct_demyelinated_t1 - pct_demyelinated_t0 (thesis 003 4.2.5)",
                         "Units": "percentage points"},
        "dynamic_demyelination": {"Description": "Voxels normal at t0 and demyelinated at t1, over the voxels "
                                                 "normal at t0", "Units": "percent"},
        "dynamic_remyelination": {"Description": "Voxels demyelinated at t0 and normal at t1, over the voxels "
                                                 "demyelinated at t0", "Units": "percent"},
    },
    "agreement": {
        "participant_id": {"Description": "Patient"},
        "source": {"Description": "Synthesis model compared with the acquired PET"},
        **{column: {"Description": f"Dice of the {column[5:].replace('_', ' ')} mask from the synthetic and from "
                                   "the acquired DVR, inside the baseline lesions (1 when both are empty)"}
           for column in DICE_COLUMNS},
    },
    "bland_altman": {
        "source": {"Description": "Synthesis model compared with the acquired PET"},
        "quantity": {"Description": "dvr_control_wm: mean DVR in a control's white matter (baseline); "
                                    "dvr_<lesion|nawm>_<t0|t1>: mean DVR in a patient's region at baseline or "
                                    "follow-up; or an index of myelin_indices.tsv per patient"},
        "n": {"Description": "Pairs"},
        "bias": {"Description": "Mean of synthetic - acquired"},
        "sd": {"Description": "Sample SD of synthetic - acquired"},
        "lower": {"Description": "bias - 1.96 sd (95 % limit of agreement)"},
        "upper": {"Description": "bias + 1.96 sd (95 % limit of agreement)"},
        "t": {"Description": "Paired t statistic (scipy ttest_rel)"},
        "p_ttest": {"Description": "Two-sided p of the paired t-test"},
        "p_wilcoxon": {"Description": "Two-sided p of the Wilcoxon signed-rank test"},
    },
    "bland_altman_points": {
        "participant_id": {"Description": "Participant"},
        "session_id": {"Description": "Session (ses-<label>; n/a for a per-patient index)"},
        "source": {"Description": "Synthesis model"},
        "quantity": {"Description": "As in bland_altman.tsv"},
        "acquired": {"Description": "Value from the acquired PET"},
        "synthetic": {"Description": "Value from the synthetic DVR"},
    },
    "edss_regression": {
        "source": {"Description": "DVR source of the index"},
        "index": {"Description": "Column of myelin_indices.tsv"},
        "n": {"Description": "Patients in the fit"},
        "coef": {"Description": "OLS coefficient of the index in EDSS ~ index + age + sex_female + "
                                "t2_lesion_load_mm3 (statsmodels)", "Units": "EDSS points per unit of the index"},
        "se": {"Description": "Standard error of coef"},
        "t": {"Description": "t statistic of coef"},
        "p": {"Description": "Two-sided p of coef"},
        "beta_std": {"Description": "Standardized coefficient: the same fit with EDSS and every regressor z-scored; "
                                    "sex coded sex_female = 1 for women, 0 for men"},
    },
}


def _pivot(measures: pd.DataFrame, quantities: tuple[str, ...]) -> pd.DataFrame:
    """Per-patient measures as one row per (participant, source) that has them, one column per quantity."""
    rows = measures[measures["quantity"].isin(quantities) & (measures["session"] == "")]
    table = rows.groupby(["participant_id", "source", "quantity"], sort=False)["value"].first().unstack("quantity")
    return table.reindex(columns=list(quantities)).reset_index()


def _paired_points(measures: pd.DataFrame, quantities: list[str]) -> pd.DataFrame:
    """acquired vs each synthetic source, per participant (``session_id``: per session) and quantity."""
    rows = measures[measures["quantity"].isin(quantities)]
    acquired = rows[rows["source"] == myelin.ACQUIRED]
    synthetic = rows[~rows["source"].isin([*myelin.ACQUIRED_SOURCES, ""])]
    keys = ["participant_id", "session", "quantity"]
    points = synthetic.merge(acquired[[*keys, "value"]], on=keys, suffixes=("", "_acquired"))
    points = points.rename(columns={"value": "synthetic", "value_acquired": "acquired"})
    points["session_id"] = ("ses-" + points["session"]).where(points["session"] != "")
    return points[list(DICTIONARIES["bland_altman_points"])].reset_index(drop=True)


def _not_available(measures: pd.DataFrame, quantities: tuple[str, ...]) -> dict[str, str]:
    """``participant [session] source quantity`` → the reason its value is n/a, for the given quantities."""
    missing = measures[measures["value"].isna() & measures["note"].ne("") & measures["quantity"].isin(quantities)]
    return {" ".join(filter(None, (r.participant_id, r.session, r.source, r.quantity))): r.note
            for r in missing.itertuples()}


#: Sex as participants.tsv may write it (BIDS allows these spellings) → 1 for a woman, 0 for a man.
_FEMALE = {"f": 1.0, "female": 1.0, "w": 1.0, "woman": 1.0, "m": 0.0, "male": 0.0, "man": 0.0}


def sex_female(sex: pd.Series) -> pd.Series:
    """1 for a woman, 0 for a man, NaN (left out of the regression) for anything else.

    >>> sex_female(pd.Series(["F", "male", "n/a"])).tolist()
    [1.0, 0.0, nan]
    """
    return sex.astype(str).str.strip().str.lower().map(_FEMALE).astype(float)


def group_tables(measures: pd.DataFrame, cohort: pd.DataFrame,
                 reference: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """Every group table from the long measures of all subjects and the cohort table.

    Parameters
    ----------
    measures
        Concatenated :data:`msynth.analysis.myelin_maps.MEASURE_COLUMNS` tables (controls and patients).
    cohort
        ``participant_id group age sex edss_t0 n_sessions`` (``t2_lesion_load_mm3`` is added from the measures).
    reference
        The control references of every source (:func:`msynth.analysis.myelin.control_reference` with ``source``),
        written as ``control_reference``.
    """
    load = measures[measures["quantity"] == "t2_lesion_load_mm3"].drop_duplicates("participant_id")
    cohort = cohort.merge(load[["participant_id", "value"]].rename(columns={"value": "t2_lesion_load_mm3"}),
                          on="participant_id", how="left")
    cohort = cohort[list(DICTIONARIES["cohort"])]
    indices = myelin.index_table(_pivot(measures, myelin.INDEX_COLUMNS).to_dict("records"))
    agreement = _pivot(measures, DICE_COLUMNS)
    agreement = agreement[~agreement["source"].isin(myelin.ACQUIRED_SOURCES)].reset_index(drop=True)
    roi = sorted(q for q in measures["quantity"].unique() if q.startswith("dvr_"))
    points = _paired_points(measures, roi + list(myelin.INDEX_COLUMNS[1:]))
    clinical = cohort.assign(edss=cohort["edss_t0"], sex_female=sex_female(cohort["sex"]))
    regression = statistics.regression_table(indices, clinical, REGRESSION_INDICES)
    tables = {} if reference is None else {"control_reference": reference[list(DICTIONARIES["control_reference"])]}
    return {**tables, "cohort": cohort, "myelin_indices": indices, "agreement": agreement,
            "bland_altman": statistics.bland_altman_table(points), "bland_altman_points": points,
            "edss_regression": regression}


def write_group_tables(tables: dict[str, pd.DataFrame], measures: pd.DataFrame, *,
                       newpath: str | PathLike[str], parameters: dict[str, object]) -> list[Path]:
    """Write each table as ``<name>.tsv`` (``n/a`` for missing values) with ``<name>.json``.

    The sidecar holds the column dictionary, the analysis ``parameters`` and, under ``NotAvailable``, the reason
    of every ``n/a`` (``"sub-MS03 acquired dynamic_remyelination": "single session: no follow-up"``).
    """
    newpath = Path(newpath)
    newpath.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in tables.items():
        tsv = newpath / f"{name}.tsv"
        table.replace([np.inf, -np.inf], np.nan).to_csv(tsv, sep="\t", index=False, na_rep="n/a")
        sidecar = {**DICTIONARIES[name], "Parameters": parameters}
        reasons = _not_available(measures, tuple(table.columns)) if name in _EXPLAINED else {}
        if reasons:
            sidecar["NotAvailable"] = reasons
        (newpath / f"{name}.json").write_text(json.dumps(sidecar, indent=2, default=str) + "\n")
        written += [tsv, newpath / f"{name}.json"]
    return written
