"""Participant level: one sub-workflow per session, each starting from its T1w reference."""

from __future__ import annotations

import logging
from pathlib import Path

from nipype.pipeline import engine as pe

from msynth.models.card import CHANNELS, MODALITY_KEYS, TARGETS, channels_of, read_card
from msynth.models.selection import choose_model, target_models
from msynth.pipelines.anat import init_anat_reference_wf
from msynth.pipelines.coregistration import SUFFIX, init_coregistration_wf
from msynth.pipelines.dwi import init_dwi_wf
from msynth.pipelines.masks import init_masks_wf
from msynth.pipelines.pet import init_pet_pvc_wf, init_pet_wf
from msynth.pipelines.evaluation import MASK_FIELDS, init_dvr_evaluation_wf, init_flair_evaluation_wf
from msynth.pipelines.synthesis import init_synthesis_wf
from msynth.pipelines.template import init_template_registration_wf
from msynth.preprocessing.pvc import PVC_ITERATIONS
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
    continue_on_qc_failure: bool = False,
    pet_psf_fwhm_mm: float | None = None,
    pet_pvc_iterations: int = PVC_ITERATIONS,
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
        torch threads of the network nodes (ITK runs on one thread: :mod:`msynth.utils.itk`).
    device
        ``auto``, ``cpu`` or ``cuda`` for network nodes.
    models
        Synthesis model folders to choose from (``--model``, else the shipped ones).
    saliency
        Write the P3S maps of each synthesis model's inputs.
    continue_on_qc_failure
        A registration that fails its QC (:mod:`msynth.preprocessing.registration_qc`) is flagged in its sidecar
        and the log instead of failing the session.
    pet_psf_fwhm_mm, pet_pvc_iterations
        The PET scanner's resolution (FWHM, mm) and the Van Cittert iterations of the DVR's partial-volume
        correction (:mod:`msynth.preprocessing.pvc`); no correction when the resolution is None.
    """
    workflow = pe.Workflow(name=name)
    for data in sessions:
        workflow.add_nodes([
            init_session_wf(
                data=data, bids_dir=bids_dir, output_dir=output_dir, omp_nthreads=omp_nthreads, device=device,
                models=models, saliency=saliency, continue_on_qc_failure=continue_on_qc_failure,
                pet_psf_fwhm_mm=pet_psf_fwhm_mm, pet_pvc_iterations=pet_pvc_iterations,
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
    continue_on_qc_failure: bool = False,
    pet_psf_fwhm_mm: float | None = None,
    pet_pvc_iterations: int = PVC_ITERATIONS,
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
        t1w=data.files["T1w"], output_dir=output_dir, continue_on_qc_failure=continue_on_qc_failure
    )
    _connect_reference(workflow, anat_reference_wf, template_wf)
    coregistration_wfs = {}
    for key in COREGISTERED_KEYS:
        if key not in data.files:
            continue
        coregistration_wfs[key] = init_coregistration_wf(
            key=key, image=data.files[key], t1w=data.files["T1w"], bids_dir=bids_dir, output_dir=output_dir,
            continue_on_qc_failure=continue_on_qc_failure, name=f"coregister_{key}_wf",
        )
        _connect_reference(workflow, anat_reference_wf, coregistration_wfs[key])
    dwi_wf, pet_wf = _add_dwi_and_pet_wfs(workflow, data=data, bids_dir=bids_dir, output_dir=output_dir,
                                          anat_reference_wf=anat_reference_wf, template_wf=template_wf,
                                          continue_on_qc_failure=continue_on_qc_failure)
    # Every space-T1w image a synthesis model may take, by channel (CHANNELS), as (workflow, output field); and the
    # acquired image each target stands for.
    preprocessed = {"T1w": (anat_reference_wf, "outputnode.t1w_preproc")}
    preprocessed.update({key: (wf, "outputnode.preproc") for key, wf in coregistration_wfs.items()})
    if dwi_wf is not None:
        preprocessed.update({channel: (dwi_wf, f"outputnode.{channel}") for channel in CHANNELS["DWI"]})
    acquired = {"FLAIR": preprocessed.get("FLAIR"), "DVR": None if pet_wf is None else (pet_wf, "outputnode.dvr")}
    synthesis = {
        target: _add_synthesis_wf(workflow, target=target, data=data, preprocessed=preprocessed,
                                  acquired=acquired[target], models=models, anat_reference_wf=anat_reference_wf,
                                  bids_dir=bids_dir, output_dir=output_dir, omp_nthreads=omp_nthreads, device=device,
                                  saliency=saliency)
        for target in TARGETS
    }
    flair = preprocessed.get("FLAIR")
    if flair is None and synthesis["FLAIR"] is not None:
        flair = (synthesis["FLAIR"], "outputnode.synthetic")
    masks_wf, lesion_source = _add_masks_wf(workflow, data=data, bids_dir=bids_dir, output_dir=output_dir,
                                            anat_reference_wf=anat_reference_wf,
                                            template_wf=template_wf, coregistration_wfs=coregistration_wfs,
                                            flair=flair)
    if pet_wf is not None:
        _add_pet_pvc_wf(workflow, data=data, bids_dir=bids_dir, output_dir=output_dir, pet_wf=pet_wf,
                        masks_wf=masks_wf, anat_reference_wf=anat_reference_wf, lesions=lesion_source != "none",
                        psf_fwhm_mm=pet_psf_fwhm_mm, iterations=pet_pvc_iterations)
    for target, synthesis_wf in synthesis.items():  # each synthetic image against the acquired one
        if synthesis_wf is None or acquired[target] is None:
            continue
        evaluation_wf, mask_fields = _init_evaluation_wf(target, t1w=data.files["T1w"], bids_dir=bids_dir,
                                                         output_dir=output_dir, lesions=lesion_source != "none")
        workflow.connect([
            (synthesis_wf, evaluation_wf, [("outputnode.synthetic", "inputnode.synthetic")]),
            (acquired[target][0], evaluation_wf, [(acquired[target][1], "inputnode.acquired")]),
            (anat_reference_wf, evaluation_wf, [("outputnode.brain_mask", "inputnode.brain_mask")]),
            (masks_wf, evaluation_wf, [(f"outputnode.{field}", f"inputnode.{field}") for field in mask_fields]),
        ])  # fmt: skip
    if data.missing:
        LOGGER.info("%s: no %s image; the stages that need them are skipped", data.label, ", ".join(data.missing))
    return workflow


def _add_pet_pvc_wf(workflow: pe.Workflow, *, data: SessionData, bids_dir: Path, output_dir: Path,
                    pet_wf: pe.Workflow, masks_wf: pe.Workflow, anat_reference_wf: pe.Workflow, lesions: bool,
                    psf_fwhm_mm: float | None, iterations: int) -> None:
    """Add the partial-volume correction of the Logan DVR, or log why not (the scanner's resolution not given)."""
    if psf_fwhm_mm is None:
        LOGGER.info("%s: no --pet-psf-fwhm given, so the DVR is not corrected for partial volume (the correction "
                    "needs the scanner's resolution)", data.label)
        return
    pvc_wf = init_pet_pvc_wf(pet=data.files["PET"], t1w=data.files["T1w"], bids_dir=bids_dir, output_dir=output_dir,
                             psf_fwhm_mm=psf_fwhm_mm, iterations=iterations, lesions=lesions)
    masks = ["gm", "wm", "csf"] + (["lesion_mask"] if lesions else [])
    workflow.connect([
        (pet_wf, pvc_wf, [("outputnode.dvr", "inputnode.dvr")]),
        (anat_reference_wf, pvc_wf, [("outputnode.brain_mask", "inputnode.brain_mask")]),
        (masks_wf, pvc_wf, [(f"outputnode.{field}", f"inputnode.{field}") for field in masks]),
    ])  # fmt: skip


def _add_dwi_and_pet_wfs(
    workflow: pe.Workflow,
    *,
    data: SessionData,
    bids_dir: Path,
    output_dir: Path,
    anat_reference_wf: pe.Workflow,
    template_wf: pe.Workflow,
    continue_on_qc_failure: bool,
) -> tuple[pe.Workflow | None, pe.Workflow | None]:
    """Add the DWI (tensor maps) and PET (Logan DVR) workflows of the session; None for a modality it lacks."""
    dwi_wf = pet_wf = None
    if "DWI" in data.files:
        bval, bvec = data.gradients
        dwi_wf = init_dwi_wf(
            dwi=data.files["DWI"], bval=bval, bvec=bvec, t1w=data.files["T1w"], bids_dir=bids_dir,
            output_dir=output_dir, label=data.label, continue_on_qc_failure=continue_on_qc_failure,
        )
        _connect_reference(workflow, anat_reference_wf, dwi_wf)
    if "PET" in data.files:
        pet_wf = init_pet_wf(
            pet=data.files["PET"], metadata=data.metadata["PET"], t1w=data.files["T1w"], bids_dir=bids_dir,
            output_dir=output_dir, label=data.label, continue_on_qc_failure=continue_on_qc_failure,
        )
        _connect_reference(workflow, anat_reference_wf, pet_wf)
        workflow.connect([
            (template_wf, pet_wf, [
                ("outputnode.xfm", "inputnode.template_xfm"),
                ("outputnode.cerebellar_gm", "inputnode.cerebellar_gm"),
            ]),
        ])  # fmt: skip
    return dwi_wf, pet_wf


def _add_synthesis_wf(
    workflow: pe.Workflow,
    *,
    target: str,
    data: SessionData,
    preprocessed: dict[str, tuple[pe.Workflow, str]],
    acquired: tuple[pe.Workflow, str] | None,
    models: list[Path],
    anat_reference_wf: pe.Workflow,
    bids_dir: Path,
    output_dir: Path,
    omp_nthreads: int,
    device: str,
    saliency: bool,
) -> pe.Workflow | None:
    """Add the synthesis of ``target`` (a key of :data:`~msynth.models.card.TARGETS`) with the model chosen for
    this session, fed its space-T1w inputs (``preprocessed``, by channel) and, for the saliency maps, the acquired
    target when the session has one; None (the reason logged) when no model can run."""
    candidates = target_models(target, models)
    if not candidates:
        LOGGER.info("%s: %s synthesis skipped: no %s model %s", data.label, target, target,
                    "among --model" if models else f"is shipped; train one with msynth-train {target.lower()}")
        return None
    present = [key for key in MODALITY_KEYS if all(channel in preprocessed for channel in CHANNELS[key])]
    model_dir = choose_model(candidates, present)
    if model_dir is None:
        needs = "; ".join(f"{path.name}: {'+'.join(read_card(path).inputs)}" for path in candidates)
        LOGGER.info("%s: %s synthesis skipped: no model's inputs are all present (session has %s; models need %s)",
                    data.label, target, ", ".join(present), needs)
        return None
    card = read_card(model_dir)
    LOGGER.info("%s: %s synthesis with %s (inputs %s): of the %d %s %s model(s), the one with the most inputs all "
                "present (at a tie: trained on real scans first, then by name)", data.label, target, card.name,
                "+".join(card.inputs), len(candidates), "--model" if models else "shipped", target)
    synthesis_wf = init_synthesis_wf(model_dir=model_dir, card=card, t1w=data.files["T1w"],
                                     sources=[data.files[key] for key in card.inputs], bids_dir=bids_dir,
                                     output_dir=output_dir, device=device, omp_nthreads=omp_nthreads,
                                     saliency=saliency, target_acquired=acquired is not None,
                                     name=f"{target.lower()}_synthesis_wf")
    workflow.connect([
        (anat_reference_wf, synthesis_wf, [("outputnode.brain_mask", "inputnode.brain_mask")]),
        *[(preprocessed[channel][0], synthesis_wf, [(preprocessed[channel][1], f"inputnode.{channel}")])
          for channel in channels_of(card.inputs)],
    ])  # fmt: skip
    if acquired is not None:
        workflow.connect([(acquired[0], synthesis_wf, [(acquired[1], "inputnode.acquired")])])
    return synthesis_wf


def _init_evaluation_wf(target: str, *, t1w: Path, bids_dir: Path, output_dir: Path,
                        lesions: bool) -> tuple[pe.Workflow, tuple[str, ...]]:
    """The evaluation workflow of a target's synthetic image, and the masks workflow's outputs it reads (the
    lesion and NAWM masks only when the session has them: ``lesions``)."""
    if target == "FLAIR":
        return init_flair_evaluation_wf(t1w=t1w, bids_dir=bids_dir, output_dir=output_dir), MASK_FIELDS
    evaluation_wf = init_dvr_evaluation_wf(t1w=t1w, bids_dir=bids_dir, output_dir=output_dir, lesions=lesions)
    return evaluation_wf, ("wm", "lesion_mask", "nawm") if lesions else ("wm",)


def _add_masks_wf(
    workflow: pe.Workflow,
    *,
    data: SessionData,
    bids_dir: Path,
    output_dir: Path,
    anat_reference_wf: pe.Workflow,
    template_wf: pe.Workflow,
    coregistration_wfs: dict[str, pe.Workflow],
    flair: tuple[pe.Workflow, str] | None,
) -> tuple[pe.Workflow, str]:
    """Add the tissue/lesion masks workflow, its lesion mask given, detected on a FLAIR (acquired or synthetic),
    or absent; returns it and where its lesion mask comes from (``'given'``, ``'automatic'`` or ``'none'``)."""
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
                             lesion_source=lesion_source, given=given)
    _connect_reference(workflow, anat_reference_wf, masks_wf, mask="brain_mask")
    workflow.connect([(template_wf, masks_wf, [("outputnode.xfm", "inputnode.template_xfm")])])
    if lesion_source == "automatic":
        flair_wf, field = flair
        workflow.connect([(flair_wf, masks_wf, [(field, "inputnode.flair")])])
    elif lesion_source == "given" and given.drawn_on != "T1w":
        workflow.connect([
            (coregistration_wfs[given.drawn_on], masks_wf, [("outputnode.xfm", "inputnode.lesion_xfm")]),
        ])  # fmt: skip
    return masks_wf, lesion_source


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
