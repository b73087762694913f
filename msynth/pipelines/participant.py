"""Participant level: one sub-workflow per session, each starting from its T1w reference."""

from __future__ import annotations

import logging
from pathlib import Path

from nipype.pipeline import engine as pe

from msynth.models.card import read_card
from msynth.models.selection import choose_model, shipped_models
from msynth.pipelines.anat import init_anat_reference_wf
from msynth.pipelines.coregistration import SUFFIX, init_coregistration_wf
from msynth.pipelines.dwi import init_dwi_wf
from msynth.pipelines.masks import init_masks_wf
from msynth.pipelines.pet import init_pet_wf
from msynth.pipelines.evaluation import MASK_FIELDS, init_flair_evaluation_wf
from msynth.pipelines.synthesis import init_synthesis_wf
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
    models: list[Path],
    saliency: bool,
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
    models
        Synthesis model folders to choose from (``--model``, else the shipped ones).
    saliency
        Write the P3S maps of the synthesis model's inputs.
    """
    workflow = pe.Workflow(name=name)
    for data in sessions:
        workflow.add_nodes([
            init_session_wf(
                data=data, bids_dir=bids_dir, output_dir=output_dir, omp_nthreads=omp_nthreads, device=device,
                models=models, saliency=saliency,
                name=f"ses_{data.session}_wf" if data.session else "single_session_wf",
            )
        ])  # fmt: skip
    return workflow


def init_session_wf(
    *,
    data: SessionData,
    bids_dir: Path,
    output_dir: Path,
    omp_nthreads: int,
    device: str,
    models: list[Path],
    saliency: bool,
    name: str,
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
    template_wf = init_template_registration_wf(
        t1w=data.files["T1w"], output_dir=output_dir, omp_nthreads=omp_nthreads
    )
    _connect_reference(workflow, anat_reference_wf, template_wf)
    coregistration_wfs = {}
    for key in COREGISTERED_KEYS:
        if key not in data.files:
            continue
        coregistration_wfs[key] = init_coregistration_wf(
            key=key, image=data.files[key], t1w=data.files["T1w"], bids_dir=bids_dir, output_dir=output_dir,
            omp_nthreads=omp_nthreads, name=f"coregister_{key}_wf",
        )
        _connect_reference(workflow, anat_reference_wf, coregistration_wfs[key])
    # Every space-T1w image a synthesis model may take, as (workflow, output field).
    preprocessed = {"T1w": (anat_reference_wf, "outputnode.t1w_preproc")}
    preprocessed.update({key: (wf, "outputnode.preproc") for key, wf in coregistration_wfs.items()})
    synthesis_wf = _add_flair_synthesis_wf(workflow, data=data, preprocessed=preprocessed, models=models,
                                           anat_reference_wf=anat_reference_wf, bids_dir=bids_dir,
                                           output_dir=output_dir, omp_nthreads=omp_nthreads, device=device,
                                           saliency=saliency)
    flair = preprocessed.get("FLAIR")
    if flair is None and synthesis_wf is not None:
        flair = (synthesis_wf, "outputnode.synthetic")
    masks_wf = _add_masks_wf(workflow, data=data, bids_dir=bids_dir, output_dir=output_dir,
                             omp_nthreads=omp_nthreads, anat_reference_wf=anat_reference_wf, template_wf=template_wf,
                             coregistration_wfs=coregistration_wfs, flair=flair)
    if synthesis_wf is not None and "FLAIR" in preprocessed:  # evaluate the synthetic FLAIR against the acquired one
        evaluation_wf = init_flair_evaluation_wf(t1w=data.files["T1w"], bids_dir=bids_dir, output_dir=output_dir)
        workflow.connect([
            (coregistration_wfs["FLAIR"], synthesis_wf, [("outputnode.preproc", "inputnode.acquired")]),
            (synthesis_wf, evaluation_wf, [("outputnode.synthetic", "inputnode.synthetic")]),
            (coregistration_wfs["FLAIR"], evaluation_wf, [("outputnode.preproc", "inputnode.acquired")]),
            (anat_reference_wf, evaluation_wf, [("outputnode.brain_mask", "inputnode.brain_mask")]),
            (masks_wf, evaluation_wf, [(f"outputnode.{field}", f"inputnode.{field}") for field in MASK_FIELDS]),
        ])  # fmt: skip
    if "DWI" in data.files:
        bval, bvec = data.gradients
        dwi_wf = init_dwi_wf(
            dwi=data.files["DWI"], bval=bval, bvec=bvec, t1w=data.files["T1w"], bids_dir=bids_dir,
            output_dir=output_dir, omp_nthreads=omp_nthreads, label=data.label,
        )
        _connect_reference(workflow, anat_reference_wf, dwi_wf)
    if "PET" in data.files:
        pet_wf = init_pet_wf(
            pet=data.files["PET"], metadata=data.metadata["PET"], t1w=data.files["T1w"], bids_dir=bids_dir,
            output_dir=output_dir, omp_nthreads=omp_nthreads, label=data.label,
        )
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


def _add_flair_synthesis_wf(
    workflow: pe.Workflow,
    *,
    data: SessionData,
    preprocessed: dict[str, tuple[pe.Workflow, str]],
    models: list[Path],
    anat_reference_wf: pe.Workflow,
    bids_dir: Path,
    output_dir: Path,
    omp_nthreads: int,
    device: str,
    saliency: bool,
) -> pe.Workflow | None:
    """Add FLAIR synthesis with the model chosen for this session, fed its space-T1w inputs; None (the reason
    logged) when no model can run."""
    candidates = [model for model in models or shipped_models() if read_card(model).target == "FLAIR"]
    if not candidates:
        LOGGER.info("%s: FLAIR synthesis skipped: no FLAIR model %s", data.label,
                    "among --model" if models else "is shipped; train one with msynth-train flair")
        return None
    model_dir = choose_model(candidates, preprocessed)
    if model_dir is None:
        needs = "; ".join(f"{path.name}: {'+'.join(read_card(path).inputs)}" for path in candidates)
        LOGGER.info("%s: FLAIR synthesis skipped: no model's inputs are all present (session has %s; models need %s)",
                    data.label, ", ".join(sorted(preprocessed)), needs)
        return None
    card = read_card(model_dir)
    LOGGER.info("%s: FLAIR synthesis with %s (inputs %s)", data.label, card.name, "+".join(card.inputs))
    synthesis_wf = init_synthesis_wf(model_dir=model_dir, card=card, t1w=data.files["T1w"], bids_dir=bids_dir,
                                     output_dir=output_dir, device=device, omp_nthreads=omp_nthreads,
                                     saliency=saliency, target_acquired="FLAIR" in data.files,
                                     name="flair_synthesis_wf")
    workflow.connect([
        (anat_reference_wf, synthesis_wf, [("outputnode.brain_mask", "inputnode.brain_mask")]),
        *[(preprocessed[key][0], synthesis_wf, [(preprocessed[key][1], f"inputnode.{key}")]) for key in card.inputs],
    ])  # fmt: skip
    return synthesis_wf


def _add_masks_wf(
    workflow: pe.Workflow,
    *,
    data: SessionData,
    bids_dir: Path,
    output_dir: Path,
    omp_nthreads: int,
    anat_reference_wf: pe.Workflow,
    template_wf: pe.Workflow,
    coregistration_wfs: dict[str, pe.Workflow],
    flair: tuple[pe.Workflow, str] | None,
) -> pe.Workflow:
    """Add the tissue/lesion masks workflow, its lesion mask given, detected on a FLAIR (acquired or synthetic),
    or absent."""
    given = data.lesion_mask
    if given is not None:
        lesion_source = "given"
    elif flair is not None:
        lesion_source = "automatic"
        LOGGER.info("%s: no lesion mask given; lesions are detected automatically on the %s FLAIR", data.label,
                    "acquired" if "FLAIR" in coregistration_wfs else "synthetic")
    else:
        lesion_source = "none"
        LOGGER.info("%s: no lesion mask given and no FLAIR (acquired or synthetic): lesion mask, NAWM and distance "
                    "to CSF are skipped (tissue probabilities are computed without lesion filling)", data.label)
    masks_wf = init_masks_wf(t1w=data.files["T1w"], bids_dir=bids_dir, output_dir=output_dir,
                             omp_nthreads=omp_nthreads, lesion_source=lesion_source, given=given)
    _connect_reference(workflow, anat_reference_wf, masks_wf, mask="brain_mask")
    workflow.connect([(template_wf, masks_wf, [("outputnode.xfm", "inputnode.template_xfm")])])
    if lesion_source == "automatic":
        flair_wf, field = flair
        workflow.connect([(flair_wf, masks_wf, [(field, "inputnode.flair")])])
    elif lesion_source == "given" and given.drawn_on != "T1w":
        workflow.connect([
            (coregistration_wfs[given.drawn_on], masks_wf, [("outputnode.xfm", "inputnode.lesion_xfm")]),
        ])  # fmt: skip
    return masks_wf


def _connect_reference(workflow: pe.Workflow, anat_reference_wf: pe.Workflow, consumer_wf: pe.Workflow, *,
                       mask: str = "registration_mask") -> None:
    """Feed the T1w reference and a mask to a workflow that registers to them or segments them.

    Registrations get deepbet's mask (``registration_mask``: the brain with its rim of CSF, whose edge drives the
    mutual information); the tissue segmentation gets the refined ``brain_mask``.
    """
    workflow.connect([
        (anat_reference_wf, consumer_wf, [
            ("outputnode.t1w_preproc", "inputnode.t1w_preproc"),
            (f"outputnode.{mask}", "inputnode.brain_mask"),
        ]),
    ])  # fmt: skip


def _skull_stripped_hint(metadata: dict[str, object]) -> bool | None:
    """``SkullStripped`` from a sidecar when it is a boolean; None lets the image decide."""
    value = metadata.get("SkullStripped")
    return value if isinstance(value, bool) else None
