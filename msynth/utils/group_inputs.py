"""What the group level reads: the raw dataset's clinical tables and the participant-level outputs.

The group level never reruns the participant level. Before any work, :func:`collect_group_inputs` finds every map it
needs by its DESIGN.md name and lists what is missing in :attr:`GroupInputs.problems` (one line each); the caller
stops with them. Gaps that leave part of the analysis computable (a patient with one session, a session without
PET) are not problems: they become ``n/a`` with their reason.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from msynth.analysis.myelin import ACQUIRED, ACQUIRED_PVC, source_rank
from msynth.utils.tabular_checks import (
    EDSS_STEP,
    TableError,
    age_problem,
    check_clinical_tables,
    edss_problem,
    read_tsv,
)

LOGGER = logging.getLogger("msynth.group")

#: Participant-level outputs of a session the group level reads, as (datatype, name after ``sub-<L>[_ses-<S>]_``).
SESSION_FILES = {
    "t1w": ("anat", "space-T1w_desc-preproc_T1w.nii.gz"),
    "brain_mask": ("anat", "space-T1w_desc-brain_mask.nii.gz"),
    "wm": ("anat", "space-T1w_label-WM_probseg.nii.gz"),
    "csf_distance": ("anat", "space-T1w_desc-CSFdistance_map.nii.gz"),
    "lesion": ("anat", "space-T1w_label-lesion_mask.nii.gz"),
    "nawm": ("anat", "space-T1w_label-NAWM_mask.nii.gz"),
}
ACQUIRED_DVR = ("pet", "trc-PIB_space-T1w_model-Logan_meas-DVR_mimap.nii.gz")
ACQUIRED_PVC_DVR = ("pet", "trc-PIB_space-T1w_desc-pvc_model-Logan_meas-DVR_mimap.nii.gz")
SYNTHETIC_DVR = ("pet", "trc-PIB_space-T1w_desc-synth_meas-DVR_mimap.nii.gz")
#: Maps without which a session is of no use to the group level.
REQUIRED = ("t1w", "brain_mask", "wm", "csf_distance")


@dataclass(frozen=True)
class SessionMaps:
    """The participant-level maps of one session (``None`` where the participant level wrote none)."""

    session: str | None
    prefix: str
    t1w: Path
    brain_mask: Path
    wm: Path
    csf_distance: Path
    lesion: Path | None
    nawm: Path | None
    dvr: dict[str, Path] = field(default_factory=dict)


@dataclass
class ParticipantMaps:
    """One participant: clinical variables from the raw dataset and the maps of each session, baseline first."""

    label: str
    group: str
    age: float
    sex: str
    edss: float | None
    sessions: list[SessionMaps]

    @property
    def participant_id(self) -> str:
        return f"sub-{self.label}"


@dataclass
class GroupInputs:
    """Every participant the group level uses, the DVR sources present, and the problems found."""

    participants: list[ParticipantMaps]
    sources: list[str]
    problems: list[str]
    #: What is left out but does not stop the group level (a DVR source no control has), one line each.
    notes: list[str] = field(default_factory=list)

    def group(self, name: str) -> list[ParticipantMaps]:
        """The participants of one group (``HC`` or ``MS``)."""
        return [p for p in self.participants if p.group == name]


def synthetic_source_name(dvr: Path) -> str:
    """A synthetic DVR's source name: the model named in its sidecar (``Model.Name``), else ``synthetic``."""
    sidecar = Path(str(dvr).removesuffix(".nii.gz") + ".json")
    try:
        model = json.loads(sidecar.read_text()).get("Model", {})
    except (OSError, ValueError):
        return "synthetic"
    name = model.get("Name") if isinstance(model, dict) else model
    return str(name) if name else "synthetic"


def _session_maps(output_dir: Path, label: str, session: str | None) -> tuple[SessionMaps | None, list[str]]:
    """A session's maps, or None and the names of the required ones that are missing."""
    folder = output_dir / f"sub-{label}" / (f"ses-{session}" if session else "")
    prefix = f"sub-{label}" + (f"_ses-{session}" if session else "")
    found = {key: folder / datatype / f"{prefix}_{name}" for key, (datatype, name) in SESSION_FILES.items()}
    missing = [found[key].name for key in REQUIRED if not found[key].is_file()]
    if missing:
        return None, missing
    dvr = {}
    for source, (datatype, name) in ((ACQUIRED, ACQUIRED_DVR), (ACQUIRED_PVC, ACQUIRED_PVC_DVR)):
        if (path := folder / datatype / f"{prefix}_{name}").is_file():
            dvr[source] = path
    synthetic = folder / SYNTHETIC_DVR[0] / f"{prefix}_{SYNTHETIC_DVR[1]}"
    if synthetic.is_file():
        dvr[synthetic_source_name(synthetic)] = synthetic
    optional = {key: found[key] if found[key].is_file() else None for key in ("lesion", "nawm")}
    return SessionMaps(session=session, prefix=prefix, dvr=dvr, **{k: found[k] for k in REQUIRED}, **optional), []


def _natural(label: str) -> list[object]:
    """Sort key that puts ``2`` before ``10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", label)]


def _sessions_of(bids_dir: Path, label: str) -> list[str | None]:
    """A participant's sessions, baseline first; ``[None]`` for a dataset without sessions.

    The order is that of ``sub-<L>_sessions.tsv`` (by ``acq_time`` when it has one), then any other session folder
    in natural order (``2`` before ``10``).
    """
    on_disk = {p.name[4:] for p in (bids_dir / f"sub-{label}").glob("ses-*") if p.is_dir()}
    if not on_disk:
        return [None]
    listed: list[str] = []
    path = bids_dir / f"sub-{label}" / f"sub-{label}_sessions.tsv"
    if path.is_file():
        table = read_tsv(path)
        if "session_id" in table.columns:
            if "acq_time" in table.columns:
                table = table.assign(order=pd.to_datetime(table["acq_time"], errors="coerce")).sort_values(
                    "order", kind="stable")
            listed = [s.removeprefix("ses-") for s in table["session_id"] if s.removeprefix("ses-") in on_disk]
    return listed + sorted(on_disk - set(listed), key=_natural)


def _baseline_edss(bids_dir: Path, label: str, session: str | None) -> tuple[float | None, str | None]:
    """EDSS of the baseline session from ``sub-<L>_sessions.tsv``, or None and why."""
    path = bids_dir / f"sub-{label}" / f"sub-{label}_sessions.tsv"
    if not path.is_file():
        return None, f"sub-{label}: no EDSS ({path.name} is missing)"
    table = read_tsv(path)
    for column in ("session_id", "edss"):
        if column not in table.columns:
            return None, f"sub-{label}: no EDSS ({path.name} has no '{column}' column)"
    rows = table[table["session_id"] == f"ses-{session}"] if session else table
    if rows.empty:
        return None, f"sub-{label}: no EDSS for ses-{session} in {path.name}"
    value, line = rows["edss"].iloc[0], rows.index[0]
    where = f"sub-{label}: EDSS of ses-{session} in {path.name}"
    if pd.isna(value):
        return None, f"{where} is n/a (line {line}); the EDSS regression needs the baseline EDSS of every patient"
    cause = edss_problem(value)
    if cause:
        return None, f"{where} is {value!r}, {cause} (line {line}; EDSS is 0–10 in steps of {EDSS_STEP:g})"
    return float(value), None


def collect_group_inputs(bids_dir: Path, output_dir: Path, labels: list[str] | None = None) -> GroupInputs:
    """Find the participant-level outputs and clinical variables of the group level; list what is missing.

    Parameters
    ----------
    bids_dir
        The raw dataset (``participants.tsv`` with ``group`` HC/MS, ``age``, ``sex``; EDSS per session).
    output_dir
        The participant level's derivatives.
    labels
        Participants to use (default: every participant of ``participants.tsv``).

    A malformed ``participants.tsv`` or ``sessions.tsv`` is a problem; a bad sex, group, age or EDSS value is a note
    (:func:`msynth.utils.tabular_checks.check_clinical_tables`) and reads as n/a, except a patient's baseline EDSS,
    which the EDSS regression needs: its absence is a problem.
    """
    problems: list[str] = []
    path = bids_dir / "participants.tsv"
    try:
        notes = check_clinical_tables(bids_dir, labels or None)  # bad values: notes; a malformed table: stop
        table = read_tsv(path)
    except TableError as err:
        return GroupInputs([], [], [str(err)])
    absent = [c for c in ("participant_id", "group", "age", "sex") if c not in table.columns]
    if absent:
        return GroupInputs([], [], [f"{path} has no column {', '.join(absent)}"])
    table["label"] = table["participant_id"].str.removeprefix("sub-")
    if labels:
        table = table[table["label"].isin(labels)]
    participants, sources = [], []
    for row in table.itertuples():
        maps, missing = [], []
        for session in _sessions_of(bids_dir, row.label):
            found, lacking = _session_maps(output_dir, row.label, session)
            if found is None:
                missing.append(f"{'ses-' + session if session else 'the session'} lacks {', '.join(lacking)}")
            else:
                maps.append(found)
        if missing or not maps:
            problems.append(f"sub-{row.label}: no participant-level output in {output_dir} "
                            f"({'; '.join(missing)}) — run the participant level for it first, or leave it out "
                            "with --participant-label")
            continue
        edss = None
        if row.group == "MS":
            edss, why = _baseline_edss(bids_dir, row.label, maps[0].session)
            if why:
                problems.append(why)
        age = math.nan if pd.isna(row.age) or age_problem(row.age) else float(row.age)
        participants.append(ParticipantMaps(label=row.label, group=row.group, age=age, sex=row.sex,
                                            edss=edss, sessions=maps))
        sources += [s for m in maps for s in m.dvr if s not in sources]
    if not participants and not table.empty:
        return GroupInputs([], [], [f"{output_dir} holds no participant-level output of the {len(table)} "
                                    "participant(s) — run the participant level first"])
    for group, what in (("HC", "no healthy control (group HC in participants.tsv)"),
                        ("MS", "no patient (group MS in participants.tsv)")):
        if not any(p.group == group for p in participants):
            problems.append(f"{what} with participant-level outputs: the group level compares patients with controls")
    controls = [p for p in participants if p.group == "HC"]
    if controls and not any(p.sessions[0].dvr for p in controls):
        problems.append("no healthy control has a DVR map (acquired PET or synthetic) at its first session: the "
                        "control reference needs them")
    for source in list(sources):
        if controls and not any(source in p.sessions[0].dvr for p in controls):
            sources.remove(source)
            notes.append(f"DVR source {source!r} is left out: no healthy control has it at its first session, so "
                         "there is no control reference for it")
    return GroupInputs(participants=participants, sources=sorted(sources, key=source_rank),
                       problems=problems, notes=notes)
