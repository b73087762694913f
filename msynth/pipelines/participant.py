"""Participant level: one sub-workflow per session, each starting from its T1w reference."""

from __future__ import annotations

import logging
from pathlib import Path

from nipype.pipeline import engine as pe

from msynth.pipelines.anat import init_anat_reference_wf
from msynth.pipelines.coregistration import SUFFIX, init_coregistration_wf
from msynth.pipelines.dwi import init_dwi_wf
from msynth.pipelines.pet import init_pet_wf
from msynth.pipelines.template import init_template_registration_wf
from msynth.utils.bids import SessionData

LOGGER = logging.getLogger("msynth.workflow")

#: MR modalities aligned to the T1w reference, in the order their workflows are built.
COREGISTERED_KEYS = tuple(SUFFIX)


def init_participant_wf(
    *,
    sessions: list[SessionData],
    bids_dir: Path,
    output_dir: Path,
    omp_nthreads: int,
    device: str,
    name: str,
) -> pe.Workflow:
    """Build the workflow of one participant: independent session workflows run in parallel.

    Parameters
    ----------
    sessions
        The sessions to process, each with its T1w (the runner drops sessions without one).
    bids_dir
        Input dataset root.
    output_dir
        Derivatives root the data sinks write to (the runner's staging folder).
    omp_nthreads
        Threads per multithreaded node.
    device
        ``auto``, ``cpu`` or ``cuda`` for network nodes.
    """
    workflow = pe.Workflow(name=name)
    for data in sessions:
        workflow.add_nodes([
            init_session_wf(
                data=data, bids_dir=bids_dir, output_dir=output_dir, omp_nthreads=omp_nthreads, device=device,
                name=f"ses_{data.session}_wf" if data.session else "single_session_wf",
            )
        ])  # fmt: skip
    return workflow


def init_session_wf(
    *, data: SessionData, bids_dir: Path, output_dir: Path, omp_nthreads: int, device: str, name: str
) -> pe.Workflow:
    """Build the workflow of one session, logging each stage that cannot run and why."""
    workflow = pe.Workflow(name=name)
    anat_reference_wf = init_anat_reference_wf(
        t1w=data.files["T1w"],
        bids_dir=bids_dir,
        output_dir=output_dir,
        skull_stripped=_skull_stripped_hint(data.metadata.get("T1w", {})),
        omp_nthreads=omp_nthreads,
        device=device,
    )
    workflow.add_nodes([anat_reference_wf])
    for key in COREGISTERED_KEYS:
        if key not in data.files:
            continue
        coregistration_wf = init_coregistration_wf(
            key=key, image=data.files[key], t1w=data.files["T1w"], bids_dir=bids_dir, output_dir=output_dir,
            omp_nthreads=omp_nthreads, name=f"coregister_{key}_wf",
        )
        _connect_reference(workflow, anat_reference_wf, coregistration_wf)
    if "DWI" in data.files:
        bval, bvec = data.gradients
        dwi_wf = init_dwi_wf(
            dwi=data.files["DWI"], bval=bval, bvec=bvec, t1w=data.files["T1w"], bids_dir=bids_dir,
            output_dir=output_dir, omp_nthreads=omp_nthreads, label=data.label,
        )
        _connect_reference(workflow, anat_reference_wf, dwi_wf)
    if "PET" in data.files:
        template_wf = init_template_registration_wf(
            t1w=data.files["T1w"], output_dir=output_dir, omp_nthreads=omp_nthreads
        )
        pet_wf = init_pet_wf(
            pet=data.files["PET"], metadata=data.metadata["PET"], t1w=data.files["T1w"], bids_dir=bids_dir,
            output_dir=output_dir, omp_nthreads=omp_nthreads, label=data.label,
        )
        _connect_reference(workflow, anat_reference_wf, template_wf)
        _connect_reference(workflow, anat_reference_wf, pet_wf)
        workflow.connect([
            (template_wf, pet_wf, [
                ("outputnode.xfm", "inputnode.template_xfm"),
                ("outputnode.cerebellar_gm", "inputnode.cerebellar_gm"),
            ]),
        ])  # fmt: skip
    if data.missing:
        LOGGER.info("%s: no %s image; the stages that need them are skipped", data.label, ", ".join(data.missing))
    return workflow


def _connect_reference(workflow: pe.Workflow, anat_reference_wf: pe.Workflow, consumer_wf: pe.Workflow) -> None:
    """Feed the T1w reference and brain mask to a workflow that registers to them."""
    workflow.connect([
        (anat_reference_wf, consumer_wf, [
            ("outputnode.t1w_preproc", "inputnode.t1w_preproc"),
            ("outputnode.brain_mask", "inputnode.brain_mask"),
        ]),
    ])  # fmt: skip


def _skull_stripped_hint(metadata: dict[str, object]) -> bool | None:
    """``SkullStripped`` from a sidecar when it is a boolean; None lets the image decide."""
    value = metadata.get("SkullStripped")
    return value if isinstance(value, bool) else None
