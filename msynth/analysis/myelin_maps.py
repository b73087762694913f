"""The group level's image work, on files: control reference, demyelinated masks, per-patient measures.

Each function reads participant-level maps (DESIGN.md names), applies :mod:`msynth.analysis.myelin` and writes its
result into ``newpath``; the Nipype interfaces in :mod:`msynth.interfaces.group` only call them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from msynth.analysis import myelin
from msynth.preprocessing._io import write_like
from msynth.preprocessing.registration import apply_transform

PathLikeStr = str | PathLike[str]
#: Columns of the long per-patient (and per-control) measures table that the group tables are pivoted from.
MEASURE_COLUMNS = ("participant_id", "session", "source", "quantity", "value", "note")


def _load(path: PathLikeStr) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj).astype(np.float64)


def _rings(csf_distance: PathLikeStr, reference: pd.DataFrame) -> np.ndarray:
    """Distance-to-CSF rings with the width and cap the reference was built with."""
    width = float(reference["distance_to_mm"].iloc[0] - reference["distance_from_mm"].iloc[0])
    return myelin.distance_rings(_load(csf_distance), ring_width_mm=width,
                                 max_distance_mm=float(reference["distance_from_mm"].iloc[-1]))


def read_reference(path: PathLikeStr) -> pd.DataFrame:
    """A control-reference table written by :func:`write_control_reference`."""
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)


def write_control_reference(controls: Sequence[Mapping[str, str]], *, source: str, newpath: PathLikeStr,
                            ring_width_mm: float = myelin.RING_WIDTH_MM,
                            max_distance_mm: float = myelin.MAX_DISTANCE_MM,
                            wm_probability: float = myelin.WM_PROBABILITY) -> tuple[Path, Path]:
    """The control reference of one DVR source, and each control's mean white-matter DVR.

    Parameters
    ----------
    controls
        Per control session: ``participant_id``, ``session``, ``dvr``, ``wm`` (probseg), ``csf_distance`` (mm).
    source
        ``acquired``, ``acquired-pvc`` or a model name (names the outputs).

    Returns
    -------
    tuple of pathlib.Path
        ``control_reference_<source>.tsv`` (:func:`msynth.analysis.myelin.control_reference`) and
        ``control_measures_<source>.tsv`` (long measures: ``dvr_control_wm`` per control session).
    """
    if not controls:
        raise ValueError(f"control reference ({source}): no control session has this DVR")
    samples, rows = [], []
    for control in controls:
        dvr, wm = _load(control["dvr"]), _load(control["wm"]) >= wm_probability
        distance = _load(control["csf_distance"])
        if not dvr.shape == wm.shape == distance.shape:
            raise ValueError(f"{control['participant_id']}: DVR {dvr.shape}, WM {wm.shape} and distance map "
                             f"{distance.shape} are not on one grid; rerun its participant level")
        rings = myelin.distance_rings(distance, ring_width_mm=ring_width_mm, max_distance_mm=max_distance_mm)
        samples.append(myelin.white_matter_samples(dvr, wm, rings))
        rows.append({"participant_id": control["participant_id"], "session": control["session"], "source": source,
                     "quantity": "dvr_control_wm", "value": myelin.roi_means(dvr, {"control_wm": wm})[
                         "dvr_control_wm"], "note": ""})
    reference = myelin.control_reference(samples, ring_width_mm=ring_width_mm, max_distance_mm=max_distance_mm)
    newpath = Path(newpath)
    newpath.mkdir(parents=True, exist_ok=True)
    reference_tsv = newpath / f"control_reference_{source}.tsv"
    reference.insert(0, "source", source)
    reference.to_csv(reference_tsv, sep="\t", index=False, na_rep="n/a")
    measures_tsv = newpath / f"control_measures_{source}.tsv"
    pd.DataFrame(rows, columns=list(MEASURE_COLUMNS)).to_csv(measures_tsv, sep="\t", index=False, na_rep="n/a")
    return reference_tsv, measures_tsv


def write_demyelinated_mask(dvr: PathLikeStr, lesion: PathLikeStr, csf_distance: PathLikeStr,
                            reference_tsv: PathLikeStr, *, newpath: PathLikeStr) -> Path:
    """A session's demyelinated lesion voxels on its own grid (uint8 mask), from one DVR source."""
    reference = read_reference(reference_tsv)
    mask = myelin.demyelinated_voxels(_load(dvr), _load(lesion) > 0.5, _rings(csf_distance, reference), reference)
    newpath = Path(newpath)
    newpath.mkdir(parents=True, exist_ok=True)
    return write_like(mask.astype(np.uint8), nib.load(str(lesion)), newpath / "demyelinated_mask.nii.gz")


#: Interpolation of the follow-up DVR onto the baseline grid. Linear interpolation averages a lesion voxel with its
#: normal-appearing neighbours, so fewer voxels fall below the threshold at follow-up and remyelination is
#: overestimated. On the 2 mm phantom cohort's noise-free maps (18 patients, benchmarks/group_phantom.py) the median
#: |error| of dynamic remyelination against the truth was 7.2 points linear, 5.6 nearest neighbour, 4.6 B-spline
#: and 3.1 windowed sinc (mean error +10.1, +7.1, +8.8, +5.7); pct_demyelinated_t1 5.7, 4.5, 4.9, 4.1.
FOLLOW_UP_INTERPOLATION = "lanczosWindowedSinc"


def _on_baseline(image: PathLikeStr, baseline_t1w: PathLikeStr, xfm: PathLikeStr, newpath: Path) -> np.ndarray:
    """A follow-up map resampled onto the baseline grid; ``xfm`` maps baseline points to follow-up points."""
    return _load(apply_transform(image, baseline_t1w, xfm, newpath=newpath, suffix="on_baseline",
                                 interpolation=FOLLOW_UP_INTERPOLATION))


def patient_measures(*, participant_id: str, baseline: Mapping[str, str], follow_up: Mapping[str, str] | None,
                     follow_up_xfm: PathLikeStr | None, references: Mapping[str, str],
                     newpath: PathLikeStr) -> pd.DataFrame:
    """Indices, acquired-vs-synthetic agreement and ROI mean DVR of one patient, as long measures.

    Parameters
    ----------
    participant_id
        ``sub-<L>``.
    baseline, follow_up
        Maps of the first and second session: ``session``, ``t1w``, ``lesion``, ``nawm``, ``csf_distance``
        and ``dvr:<source>`` per DVR source present. ``follow_up`` is None for a single-session patient.
    follow_up_xfm
        Rigid transform mapping baseline T1w points to follow-up T1w points (resamples the follow-up onto the
        baseline grid); None without a follow-up.
    references
        Control-reference TSV per source.

    Returns
    -------
    pandas.DataFrame
        :data:`MEASURE_COLUMNS`: per source the indices of :func:`msynth.analysis.myelin.myelin_indices`
        (``session`` empty), the baseline lesion load ``t2_lesion_load_mm3`` (``source`` empty), per synthetic
        source the Dice of each mask against the acquired one, and per session and source
        ``dvr_lesion_<t0|t1>``/``dvr_nawm_<t0|t1>``. A value is NaN with its reason in ``note`` where it cannot be
        computed.
    """
    newpath = Path(newpath)
    rows: list[dict[str, object]] = []

    def add(session: str, source: str, quantity: str, value: float, note: str = "") -> None:
        if not np.isfinite(value) and not note:
            note = _why_nan(quantity)
        rows.append({"participant_id": participant_id, "session": session, "source": source, "quantity": quantity,
                     "value": value, "note": note})

    sources = [key.split(":", 1)[1] for key in baseline if key.startswith("dvr:") and key[4:] in references]
    if not baseline.get("lesion"):
        for source in sources:
            for name in myelin.INDEX_COLUMNS:
                add("", source, name, np.nan, "no lesion mask at baseline")
        return pd.DataFrame(rows, columns=list(MEASURE_COLUMNS))
    lesion_image = nib.load(str(baseline["lesion"]))
    lesion = np.asanyarray(lesion_image.dataobj) > 0.5
    voxel_mm3 = float(np.prod(lesion_image.header.get_zooms()[:3]))
    add(baseline["session"], "", "t2_lesion_load_mm3", float(lesion.sum()) * voxel_mm3)
    baseline_dvr = {source: _load(baseline[f"dvr:{source}"]) for source in sources}
    masks: dict[str, dict[str, np.ndarray]] = {}
    for source in sources:
        reference = read_reference(references[source])
        rings = _rings(baseline["csf_distance"], reference)
        d0 = myelin.demyelinated_voxels(baseline_dvr[source], lesion, rings, reference)
        d1, missing = None, "single session: no follow-up"
        if follow_up is not None and f"dvr:{source}" in follow_up:
            dvr1 = _on_baseline(follow_up[f"dvr:{source}"], baseline["t1w"], follow_up_xfm, newpath / source)
            d1, missing = myelin.demyelinated_voxels(dvr1, lesion, rings, reference), ""
        elif follow_up is not None:
            missing = f"no {source} DVR at the follow-up"
        for name, value in myelin.myelin_indices(lesion, d0, d1).items():
            add("", source, name, value, "" if name in _BASELINE_INDICES else missing)
        masks[source] = {"t0": d0, **({"t1": d1, **myelin.dynamic_masks(lesion, d0, d1)} if d1 is not None else {})}
    for source in sources:
        if source in myelin.ACQUIRED_SOURCES or myelin.ACQUIRED not in masks:
            continue
        agreement = myelin.mask_agreement(masks[myelin.ACQUIRED], masks[source])
        for name in ("t0", "t1", "dynamic_demyelination", "dynamic_remyelination"):
            add("", source, f"dice_{name}", agreement.get(f"dice_{name}", np.nan),
                "" if f"dice_{name}" in agreement else "no follow-up with both DVR sources")
    for time_point, session in (("t0", baseline), ("t1", follow_up)):
        if session is None or not session.get("lesion"):
            continue
        regions = {f"lesion_{time_point}": lesion if session is baseline else _load(session["lesion"]) > 0.5}
        if session.get("nawm"):
            regions[f"nawm_{time_point}"] = _load(session["nawm"]) > 0.5
        for source in [s for s in sources if f"dvr:{s}" in session]:
            dvr = baseline_dvr[source] if session is baseline else _load(session[f"dvr:{source}"])
            for quantity, value in myelin.roi_means(dvr, regions).items():
                add(session["session"], source, quantity, value)
    return pd.DataFrame(rows, columns=list(MEASURE_COLUMNS))


#: Indices that need only the baseline (the others are n/a without a follow-up).
_BASELINE_INDICES = frozenset({"lesion_voxels_t0", "pct_demyelinated_t0"})


def _why_nan(quantity: str) -> str:
    """The reason an index or mean is n/a (an empty denominator or region)."""
    return {
        "dynamic_demyelination": "no normally myelinated lesion voxel at baseline",
        "dynamic_remyelination": "no demyelinated lesion voxel at baseline",
        "pct_demyelinated_t0": "empty baseline lesion mask",
        "pct_demyelinated_t1": "empty baseline lesion mask",
        "global_index": "empty baseline lesion mask",
    }.get(quantity, "empty region")
