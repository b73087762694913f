"""Group level: control reference, demyelinated masks, myelin-change indices, agreement and EDSS regression."""

from __future__ import annotations

import re
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from msynth.analysis.myelin import (
    ACQUIRED,
    ACQUIRED_PVC,
    ACQUIRED_SOURCES,
    MAX_DISTANCE_MM,
    RING_WIDTH_MM,
    WM_PROBABILITY,
)
from msynth.interfaces.bids import DerivativesDataSink
from msynth.interfaces.group import (
    ControlReference,
    DemyelinatedMask,
    GroupDataSink,
    GroupReport,
    GroupTables,
    PatientMeasures,
)
from msynth.interfaces.registration import RegisterToReference
from msynth.utils.derivatives import derivative_path
from msynth.utils.group_inputs import GroupInputs, ParticipantMaps, SessionMaps

GROUP_DESC = (
    "Demyelinated lesion voxels were identified as in Bodini et al. (2016) and thesis 003 (§4.2.5): the DVR of every "
    "white-matter voxel (probability ≥ {wm:g}) of every healthy control was pooled by its distance to CSF in "
    "{ring:g} mm rings (voxels beyond {cap:g} mm sharing the last ring), and a lesion voxel was classified as "
    "demyelinated when its DVR fell below the mean minus one standard deviation of its ring, separately for each DVR "
    "source. Each patient's follow-up T1w was registered rigidly to the baseline T1w (ANTs, mutual information) and "
    "its DVR resampled (windowed sinc) onto the baseline grid; the percentage of demyelinated voxels over the "
    "baseline lesion load at each time point, the global index of myelin-content change and the indices of dynamic "
    "demyelination and remyelination followed from the voxels' trajectories. Synthetic and acquired PET were compared "
    "by the Dice coefficient of these masks and by Bland-Altman analysis with paired t and Wilcoxon tests; baseline "
    "EDSS was regressed on each index with age, sex and T2 lesion load as covariates (ordinary least squares, "
    "statsmodels), standardized coefficients from z-scored variables."
)
#: Added when the participant level corrected the acquired PET for partial volume (``--pet-psf-fwhm``).
PVC_DESC = (
    " The acquired PET's DVR corrected for partial volume at the participant level (fractional geometric transfer "
    "matrix, Rousset et al. 1998, with Van Cittert deconvolution of the residual, Tohka and Reilhac 2008) was "
    "analysed as a source of its own ('acquired-pvc'), with its own control reference; synthetic PET was compared "
    "with the uncorrected DVR, as in the thesis."
)


def _node_name(*parts: str) -> str:
    """A work-directory-safe node name (letters, digits, underscores)."""
    return re.sub(r"\W", "_", "_".join(p for p in parts if p))


def _session_maps(session: SessionMaps) -> dict[str, str]:
    """The maps of one session as the string dictionary PatientMeasures takes."""
    maps = {"session": session.session or "", "t1w": str(session.t1w), "csf_distance": str(session.csf_distance),
            "lesion": str(session.lesion or ""), "nawm": str(session.nawm or "")}
    maps.update({f"dvr:{source}": str(path) for source, path in session.dvr.items()})
    return maps


def init_group_wf(
    *,
    inputs: GroupInputs,
    output_dir: Path,
    ring_width_mm: float = RING_WIDTH_MM,
    max_distance_mm: float = MAX_DISTANCE_MM,
    wm_probability: float = WM_PROBABILITY,
    name: str = "group_wf",
) -> pe.Workflow:
    """Build the group-level workflow from the participant-level outputs that :func:`collect_group_inputs` found.

    Parameters
    ----------
    inputs
        Participants, their maps and the DVR sources (no problem left: the caller stops on problems).
    output_dir
        Derivatives root the sinks write to (the runner's staging folder).
    ring_width_mm, max_distance_mm, wm_probability
        Control-reference parameters (:mod:`msynth.analysis.myelin`).

    Outputs
    -------
    out_files
        The group TSVs and their JSON dictionaries, filed under ``output_dir/group/``.
    """
    workflow = pe.Workflow(name=name)
    workflow.__desc__ = GROUP_DESC.format(wm=wm_probability, ring=ring_width_mm, cap=max_distance_mm)
    if ACQUIRED_PVC in inputs.sources:
        workflow.__desc__ += PVC_DESC
    parameters = {"RingWidthMM": ring_width_mm, "MaxDistanceMM": max_distance_mm, "WMProbability": wm_probability,
                  "Threshold": "control mean - 1 SD per ring (population SD of the pooled voxels)",
                  "Reference": "Bodini et al., Ann Neurol 2016;79:726-738; thesis 003 §4.2.5"}
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_files"]), name="outputnode")

    references = {}
    for source in inputs.sources:
        controls = [{"participant_id": p.participant_id, "session": s.session or "", "dvr": str(s.dvr[source]),
                     "wm": str(s.wm), "csf_distance": str(s.csf_distance)}
                    for p in inputs.group("HC") for s in p.sessions[:1] if source in s.dvr]
        if not controls:
            continue
        references[source] = pe.Node(
            ControlReference(controls=controls, source=source, ring_width_mm=ring_width_mm,
                             map_files=[c[key] for c in controls for key in ("dvr", "wm", "csf_distance")],
                             max_distance_mm=max_distance_mm, wm_probability=wm_probability),
            name=_node_name("control_reference", source), mem_gb=1,
        )
    merge_references = pe.Node(niu.Merge(len(references)), name="merge_references", run_without_submitting=True)
    patients = inputs.group("MS")
    merge_measures = pe.Node(niu.Merge(len(references) + len(patients)), name="merge_measures",
                             run_without_submitting=True)
    group_tables = pe.Node(
        GroupTables(cohort=_cohort_rows(inputs), parameters=parameters), name="group_tables",
    )
    group_report = pe.Node(GroupReport(methods=workflow.__desc__, overlays=_overlays(patients, output_dir),
                                       messages=[*inputs.notes, *_messages(patients)]),
                           name="group_report", mem_gb=1)
    merge_outputs = pe.Node(niu.Merge(2), name="merge_outputs", run_without_submitting=True)
    ds_group = pe.Node(GroupDataSink(base_directory=str(output_dir)), name="ds_group", run_without_submitting=True)
    for i, (source, node) in enumerate(references.items(), start=1):
        workflow.connect([
            (node, merge_references, [("reference", f"in{i}")]),
            (node, merge_measures, [("measures", f"in{i}")]),
        ])  # fmt: skip
    mask_sinks = []
    for i, patient in enumerate(patients, start=len(references) + 1):
        measures, sinks = _add_patient(workflow, patient, references=references, merge_references=merge_references,
                                       output_dir=output_dir)
        workflow.connect([(measures, merge_measures, [("measures", f"in{i}")])])
        mask_sinks += sinks
    merge_masks = pe.Node(niu.Merge(len(mask_sinks)), name="merge_masks", run_without_submitting=True)
    workflow.connect([
        *[(sink, merge_masks, [("out_file", f"in{i}")]) for i, sink in enumerate(mask_sinks, start=1)],
        (merge_masks, group_report, [("out", "masks")]),
        (merge_measures, group_tables, [("out", "measures")]),
        (merge_references, group_tables, [("out", "references")]),
        (group_tables, group_report, [("out_dir", "group_dir")]),
        (group_tables, merge_outputs, [("out_files", "in1")]),
        (group_report, merge_outputs, [("out_file", "in2")]),
        (merge_outputs, ds_group, [("out", "in_files")]),
        (ds_group, outputnode, [("out_files", "out_files")]),
    ])  # fmt: skip
    return workflow


def _add_patient(workflow: pe.Workflow, patient: ParticipantMaps, *, references: dict[str, pe.Node],
                 merge_references: pe.Node, output_dir: Path) -> tuple[pe.Node, list[pe.Node]]:
    """Add one patient's demyelinated masks (one per session and source), longitudinal registration and measures;
    return the measures node and the masks' sinks."""
    baseline, *later = patient.sessions
    follow_up = later[0] if later else None
    maps = [_session_maps(session) for session in (baseline, follow_up) if session is not None]
    measures = pe.Node(PatientMeasures(participant_id=patient.participant_id, baseline=maps[0],
                                       map_files=sorted({v for m in maps for k, v in m.items() if "/" in v})),
                       name=_node_name("measures", patient.label), mem_gb=1)
    workflow.connect([(merge_references, measures, [("out", "references")])])
    if follow_up is not None:
        measures.inputs.follow_up = maps[1]
        register = pe.Node(
            RegisterToReference(moving=str(follow_up.t1w), fixed=str(baseline.t1w),
                                fixed_mask=str(baseline.brain_mask), key="T1w", initialization="centre-of-mass",
                                affine=False),
            name=_node_name("register_follow_up", patient.label), mem_gb=1,
        )
        workflow.connect([(register, measures, [("out_xfm", "follow_up_xfm")])])
    sinks = [
        _add_demyelinated_mask(workflow, session, source=source, dvr=path, reference=references[source],
                               output_dir=output_dir)
        for session in patient.sessions if session.lesion is not None
        for source, path in session.dvr.items() if source in references
    ]
    return measures, sinks


def _add_demyelinated_mask(workflow: pe.Workflow, session: SessionMaps, *, source: str, dvr: Path,
                           reference: pe.Node, output_dir: Path) -> pe.Node:
    """The session's demyelinated mask from one DVR source, filed as DESIGN.md names it; returns its sink."""
    desc = _mask_desc(source)
    mask = pe.Node(DemyelinatedMask(dvr=str(dvr), lesion=str(session.lesion), csf_distance=str(session.csf_distance)),
                   name=_node_name("demyelinated", session.prefix, source), mem_gb=1)
    sink = pe.Node(
        DerivativesDataSink(
            base_directory=str(output_dir), source_file=str(session.t1w), datatype="pet", suffix="mask",
            entities={"trc": "PIB", "space": "T1w", "desc": desc},
            metadata={"Sources": [_relative(dvr), _relative(session.lesion), _relative(session.csf_distance)],
                      "SpatialReference": _relative(session.t1w), "DVRSource": source, "Type": "ROI",
                      "Description": "Lesion voxels whose DVR is below the healthy-control mean - 1 SD at the same "
                                     "distance to CSF (Bodini et al. 2016; thesis 003 §4.2.5)"},
        ),
        name=_node_name("ds", desc, session.prefix, source), run_without_submitting=True,
    )
    workflow.connect([
        (reference, mask, [("reference", "reference")]),
        (mask, sink, [("out_file", "in_file")]),
    ])  # fmt: skip
    return sink


def _mask_desc(source: str) -> str:
    """``desc`` of a demyelinated mask: ``demyelinated`` from the acquired PET's DVR, ``pvcdemyelinated`` from its
    partial-volume-corrected DVR, ``synthdemyelinated`` from a synthetic DVR."""
    return {ACQUIRED: "demyelinated", ACQUIRED_PVC: "pvcdemyelinated"}.get(source, "synthdemyelinated")


def _mask_path(output_dir: Path, label: str, session: SessionMaps, source: str) -> Path:
    """Where the sink files a session's demyelinated mask."""
    entities = {"sub": label, "ses": session.session or "", "trc": "PIB", "space": "T1w", "desc": _mask_desc(source)}
    return output_dir / derivative_path(entities, "pet", "mask", ".nii.gz")


def _overlays(patients: list[ParticipantMaps], output_dir: Path) -> list[dict[str, str]]:
    """The report's overlay of each patient's baseline (acquired vs the first synthetic source), where it exists."""
    overlays = []
    for patient in patients:
        baseline = patient.sessions[0]
        if baseline.lesion is None or ACQUIRED not in baseline.dvr:
            continue
        synthetic = next((source for source in baseline.dvr if source not in ACQUIRED_SOURCES), None)
        overlays.append({
            "participant_id": patient.participant_id, "session": baseline.session or "", "t1w": str(baseline.t1w),
            "lesion_mask": str(baseline.lesion),
            "acquired_mask": str(_mask_path(output_dir, patient.label, baseline, ACQUIRED)),
            "synthetic_mask": str(_mask_path(output_dir, patient.label, baseline, synthetic)) if synthetic else "",
            "synthetic_source": synthetic or "",
        })
    return overlays


def _messages(patients: list[ParticipantMaps]) -> list[str]:
    """What the workflow's construction already knows cannot be computed."""
    messages = [f"{p.participant_id}: one session, so its follow-up and dynamic indices are n/a"
                for p in patients if len(p.sessions) < 2]
    messages += [f"{p.participant_id}: no lesion mask at baseline, so no demyelinated voxels"
                 for p in patients if p.sessions[0].lesion is None]
    return messages


def _relative(path: Path) -> str:
    """A BIDS URI of a participant-level output (``bids::sub-…/ses-…/pet/…``), for sidecars."""
    folder = Path(path).parent
    while folder.name and not folder.name.startswith("sub-"):
        folder = folder.parent
    return "bids::" + Path(path).relative_to(folder.parent).as_posix()


def _cohort_rows(inputs: GroupInputs) -> list[dict]:
    """The cohort table (without lesion load, which the measures give)."""
    return [{"participant_id": p.participant_id, "group": p.group, "age": p.age, "sex": p.sex,
             "edss_t0": p.edss if p.edss is not None else float("nan"), "n_sessions": len(p.sessions)}
            for p in inputs.participants]

