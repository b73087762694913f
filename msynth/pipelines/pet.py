"""Dynamic [11C]PIB PET: Logan reference DVR on the PET grid, then in space-T1w."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from msynth.interfaces.bids import DerivativesDataSink
from msynth.interfaces.pet import LoganDVR, PartialVolumeCorrection, PETMean, ReferenceRegion
from msynth.interfaces.registration import ApplyTransform, ComposeTransforms, RegisterToReference
from msynth.preprocessing.pet import K2_REF_PER_MIN, T_STAR_MIN, Estimator
from msynth.preprocessing.pvc import PVC_ITERATIONS
from msynth.pipelines.coregistration import init_flirt_xfm_wf
from msynth.utils.derivatives import bids_uri

#: How each estimator is named in the methods text.
_ESTIMATOR_TEXT = {
    "multilinear": "fitted in its multilinear form, Ichise et al. 2003, which avoids the noise bias of the plot",
    "graphical": "graphical fit, Logan et al. 1996",
}


def init_pet_wf(
    *,
    pet: Path,
    metadata: dict,
    t1w: Path,
    bids_dir: Path,
    output_dir: Path,
    label: str,
    t_star_min: float = T_STAR_MIN,
    k2_ref_per_min: float | None = K2_REF_PER_MIN,
    estimator: Estimator = "multilinear",
    continue_on_qc_failure: bool = False,
    name: str = "pet_wf",
) -> pe.Workflow:
    """Compute the voxel-wise Logan DVR of a dynamic PIB series and bring it into space-T1w.

    The frame-weighted mean image is registered to the T1w reference; the cerebellar grey matter of
    the template reaches the PET grid through the template → T1w and T1w → PET transforms and,
    thresholded and eroded, is the reference region. DVR is fitted on the native PET grid (no
    resampling of the dynamic data) inside the brain mask, then resampled onto the T1w grid.

    Parameters
    ----------
    pet, metadata
        The 4-D series and its BIDS-PET metadata (frame timing).
    t1w
        The session's raw T1w (space-T1w grid).
    bids_dir, output_dir
        Input dataset root and derivatives (staging) root.
    label
        ``sub-<L> ses-<S>`` prefix for error messages.
    t_star_min, k2_ref_per_min, estimator
        Logan parameters (see :mod:`msynth.preprocessing.pet`).
    continue_on_qc_failure
        On a registration that fails its QC, flag it (sidecar, log) instead of failing the session.

    Inputs
    ------
    t1w_preproc, brain_mask
        The T1w reference and its brain mask.
    template_xfm, cerebellar_gm
        Template → T1w transform and the template's cerebellar grey matter.

    Outputs
    -------
    dvr
        Logan DVR in space-T1w.
    xfm
        ``from-PET_to-T1w_mode-image_xfm.mat``.
    """
    workflow = pe.Workflow(name=name)
    workflow.__desc__ = (
        f"Voxel-wise [11C]PIB distribution volume ratios were computed with the Logan reference-tissue model "
        f"(t* = {t_star_min:g} min, k2' = {k2_ref_per_min} 1/min; {_ESTIMATOR_TEXT[estimator]}) with a cerebellar "
        "grey-matter reference region, "
        "on the native PET grid, and resampled onto the T1w grid through the registration of the frame-weighted "
        "mean PET image to the T1w (ANTs, rigid, mutual information)."
    )
    fields = ["t1w_preproc", "brain_mask", "template_xfm", "cerebellar_gm"]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["dvr", "xfm"]), name="outputnode")

    pet_mean = pe.Node(PETMean(pet=str(pet), metadata=metadata, label=f"{label}: PET"), name="pet_mean", mem_gb=3)
    register_pet = pe.Node(RegisterToReference(key="PET", affine=False, initialization="centre-of-mass",
                                               continue_on_qc_failure=continue_on_qc_failure),
                           name="register_pet", mem_gb=2)
    pet_to_template = pe.Node(ComposeTransforms(invert=[True, False]), name="pet_to_template")
    merge_xfms = pe.Node(niu.Merge(2), name="merge_xfms", run_without_submitting=True)
    cerebellar_gm_in_pet = pe.Node(ApplyTransform(), name="cerebellar_gm_in_pet", mem_gb=1)
    reference_region = pe.Node(ReferenceRegion(), name="reference_region")
    brain_mask_in_pet = pe.Node(ApplyTransform(interpolation="nearestNeighbor", invert_xfm=True),
                                name="brain_mask_in_pet")
    logan = pe.Node(
        LoganDVR(pet=str(pet), metadata=metadata, t_star_min=t_star_min, k2_ref_per_min=k2_ref_per_min,
                 estimator=estimator, label=f"{label}: PET"),
        name="logan", mem_gb=4,
    )
    dvr_to_t1w = pe.Node(ApplyTransform(reference=str(t1w)), name="dvr_to_t1w", mem_gb=1)

    sink = {"base_directory": str(output_dir), "source_file": str(pet), "datatype": "pet"}
    flirt_xfm_wf = init_flirt_xfm_wf(key="PET", source=pet, t1w=t1w, bids_dir=bids_dir, output_dir=output_dir,
                                     datatype="pet")
    ds_xfm = pe.Node(
        DerivativesDataSink(**sink, suffix="xfm",
                            entities={"from": "PET", "to": "T1w", "mode": "image"}),
        name="ds_xfm", run_without_submitting=True,
    )
    ds_dvr = pe.Node(
        DerivativesDataSink(
            **sink, suffix="mimap", entities={"trc": "PIB", "space": "T1w", "model": "Logan", "meas": "DVR"},
            metadata={"Sources": [bids_uri(bids_dir, pet), bids_uri(bids_dir, t1w)],
                      "SpatialReference": bids_uri(bids_dir, t1w), "Units": "arbitrary",
                      "Description": "[11C]PIB distribution volume ratio (Logan reference) on the T1w grid."},
        ),
        name="ds_dvr", run_without_submitting=True,
    )

    merge_metadata = pe.Node(niu.Merge(2), name="merge_metadata", run_without_submitting=True)

    workflow.connect([
        (inputnode, register_pet, [("t1w_preproc", "fixed"), ("brain_mask", "fixed_mask")]),
        (pet_mean, register_pet, [("out_file", "moving")]),
        (register_pet, merge_xfms, [("out_xfm", "in1")]),
        (inputnode, merge_xfms, [("template_xfm", "in2")]),
        (merge_xfms, pet_to_template, [("out", "xfms")]),
        (inputnode, cerebellar_gm_in_pet, [("cerebellar_gm", "moving")]),
        (pet_mean, cerebellar_gm_in_pet, [("out_file", "reference")]),
        (pet_to_template, cerebellar_gm_in_pet, [("out_xfm", "xfm")]),
        (cerebellar_gm_in_pet, reference_region, [("out_file", "probability")]),
        (inputnode, brain_mask_in_pet, [("brain_mask", "moving")]),
        (pet_mean, brain_mask_in_pet, [("out_file", "reference")]),
        (register_pet, brain_mask_in_pet, [("out_xfm", "xfm")]),
        (reference_region, logan, [("out_mask", "reference_mask")]),
        (brain_mask_in_pet, logan, [("out_file", "brain_mask")]),
        (logan, dvr_to_t1w, [("out_file", "moving")]),
        (register_pet, dvr_to_t1w, [("out_xfm", "xfm")]),
        (register_pet, ds_xfm, [("out_xfm", "in_file")]),
        (register_pet, flirt_xfm_wf, [("out_xfm", "inputnode.xfm")]),
        (dvr_to_t1w, ds_dvr, [("out_file", "in_file")]),
        (logan, merge_metadata, [("metadata", "in1")]),
        (register_pet, merge_metadata, [("metadata", "in2")]),
        (merge_metadata, ds_dvr, [("out", "run_metadata")]),
        (dvr_to_t1w, outputnode, [("out_file", "dvr")]),
        (register_pet, outputnode, [("out_xfm", "xfm")]),
    ])  # fmt: skip
    return workflow



def init_pet_pvc_wf(
    *,
    pet: Path,
    t1w: Path,
    bids_dir: Path,
    output_dir: Path,
    psf_fwhm_mm: float,
    iterations: int = PVC_ITERATIONS,
    lesions: bool,
    name: str = "pet_pvc_wf",
) -> pe.Workflow:
    """Partial-volume-correct the space-T1w Logan DVR with the session's tissue (and lesion) masks.

    Parameters
    ----------
    pet, t1w
        The 4-D PET series (names the output; its voxel size enters the kernel) and the session's raw T1w.
    bids_dir, output_dir
        Input dataset root and derivatives (staging) root.
    psf_fwhm_mm, iterations
        The scanner's resolution and the Van Cittert iterations (:mod:`msynth.preprocessing.pvc`).
    lesions
        Whether the session has a lesion mask (then lesions are a region of their own).

    Inputs
    ------
    dvr, gm, wm, csf, brain_mask, lesion_mask
        Logan DVR, tissue probabilities, brain and lesion masks, all in space-T1w.

    Outputs
    -------
    dvr
        ``…_trc-PIB_space-T1w_desc-pvc_model-Logan_meas-DVR_mimap``.
    """
    workflow = pe.Workflow(name=name)
    regions = "lesions, grey matter, normal-appearing white matter and CSF" if lesions else \
        "grey matter, white matter and CSF"
    workflow.__desc__ = (
        f"The DVR map was corrected for partial volume on the T1w grid: region values of {regions} (tissue "
        "probabilities) from a fractional geometric transfer matrix (Rousset et al. 1998), plus the residual "
        f"deconvolved by {iterations} Van Cittert iterations (Van Cittert 1931; Tohka and Reilhac 2008), with a "
        f"Gaussian kernel combining the scanner's resolution ({psf_fwhm_mm:g} mm FWHM), the PET voxel and the "
        "resampling onto the T1w grid."
    )
    fields = ["dvr", "gm", "wm", "csf", "brain_mask", "lesion_mask"]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["dvr"]), name="outputnode")
    pvc = pe.Node(PartialVolumeCorrection(pet=str(pet), psf_fwhm_mm=psf_fwhm_mm, iterations=iterations),
                  name="pvc", mem_gb=2)
    ds_dvr = pe.Node(
        DerivativesDataSink(
            base_directory=str(output_dir), source_file=str(pet), datatype="pet", suffix="mimap",
            entities={"trc": "PIB", "space": "T1w", "desc": "pvc", "model": "Logan", "meas": "DVR"},
            metadata={"Sources": [bids_uri(bids_dir, pet), bids_uri(bids_dir, t1w)],
                      "SpatialReference": bids_uri(bids_dir, t1w), "Units": "arbitrary",
                      "Description": "[11C]PIB distribution volume ratio (Logan reference) on the T1w grid, "
                                     "corrected for partial volume."},
        ),
        name="ds_dvr", run_without_submitting=True,
    )
    workflow.connect([
        (inputnode, pvc, [(field, field) for field in fields if lesions or field != "lesion_mask"]),
        (pvc, ds_dvr, [("out_file", "in_file"), ("metadata", "run_metadata")]),
        (pvc, outputnode, [("out_file", "dvr")]),
    ])  # fmt: skip
    return workflow
