"""Co-registration of one MR modality (T2w, PDw, FLAIR, T1SE, DIR, MTR) to the T1w reference."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from msynth.interfaces.anat import N4BiasCorrection
from msynth.interfaces.bids import CONTRACT_ENTITIES, DerivativesDataSink
from msynth.interfaces.registration import ApplyTransform, FlirtCopy, RegisterToReference
from msynth.utils.derivatives import bids_uri, derivative_path, source_entities

#: BIDS suffix of each co-registered modality's preprocessed image (T1SE and DIR keep their ``acq-``).
SUFFIX = {"T2w": "T2w", "PDw": "PDw", "FLAIR": "FLAIR", "T1SE": "T1w", "DIR": "T2w", "MTR": "MTRmap"}
#: The ``acq-`` that DESIGN.md's names give T1SE and DIR (BIDS has no suffix of their own).
ACQUISITION = {"T1SE": "SE", "DIR": "DIR"}
#: Quantitative maps: a ratio of two acquisitions cancels the receive bias, and N4 would distort their units.
NO_BIAS_CORRECTION = frozenset({"MTR"})


def init_coregistration_wf(
    *,
    key: str,
    image: Path,
    t1w: Path,
    bids_dir: Path,
    output_dir: Path,
    name: str,
    continue_on_qc_failure: bool = False,
) -> pe.Workflow:
    """Bias-correct an MR image, register it rigidly to the T1w, resample it into space-T1w.

    Rigid (6 parameters), not affine: images of one session show one head, so scaling and shear can only fit noise
    and slice-thickness blur. On the 2 mm phantom cohort the affine's 6 extra parameters raised the median error
    against the true motion 1.3- to 3-fold (docs/preprocessing.md).

    Parameters
    ----------
    key
        Modality key (``T2w PDw FLAIR T1SE DIR MTR``).
    image
        The raw image of that modality.
    t1w
        The session's raw T1w, whose grid is space-T1w.
    bids_dir, output_dir
        Input dataset root (for BIDS URIs) and derivatives (staging) root.
    continue_on_qc_failure
        On a registration that fails its QC, flag it (sidecar, log) instead of failing the session.

    Inputs
    ------
    t1w_preproc, brain_mask
        The T1w reference and its brain mask (space-T1w).

    Outputs
    -------
    preproc
        The image in space-T1w.
    xfm
        ``from-<key>_to-T1w_mode-image_xfm.mat``: maps T1w points to points of the raw image (filed with its FLIRT
        copy, :func:`init_flirt_xfm_wf`).
    """
    if key not in SUFFIX:
        raise ValueError(f"key must be one of {sorted(SUFFIX)}, got {key!r}")
    workflow = pe.Workflow(name=name)
    workflow.__desc__ = (
        f"The {key} image was {'' if key in NO_BIAS_CORRECTION else 'corrected for bias with N4, then '}"
        "registered rigidly to the T1w reference (ANTs, Mattes mutual information inside the brain "
        "mask) and resampled onto the T1w grid with linear interpolation."
    )
    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w_preproc", "brain_mask"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["preproc", "xfm"]), name="outputnode")

    flirt_xfm_wf = init_flirt_xfm_wf(key=key, source=image, t1w=t1w, bids_dir=bids_dir, output_dir=output_dir,
                                     datatype="anat")
    register = pe.Node(RegisterToReference(key=key, affine=False, continue_on_qc_failure=continue_on_qc_failure),
                       name="register", mem_gb=2)
    resample = pe.Node(ApplyTransform(reference=str(t1w)), name="resample", mem_gb=1)

    sources = [bids_uri(bids_dir, image), bids_uri(bids_dir, t1w)]
    sink = {"base_directory": str(output_dir), "source_file": str(image), "datatype": "anat"}
    ds_xfm = pe.Node(
        DerivativesDataSink(**sink, suffix="xfm",
                            entities={"from": key, "to": "T1w", "mode": "image"}),
        name="ds_xfm", run_without_submitting=True,
    )
    ds_preproc = pe.Node(
        DerivativesDataSink(
            **sink, suffix=SUFFIX[key],
            entities={"acq": ACQUISITION.get(key, ""), "space": "T1w", "desc": "preproc"},
            metadata={"Sources": sources, "SpatialReference": bids_uri(bids_dir, t1w), "SkullStripped": False,
                      "Description": f"{key} aligned to the T1w and resampled onto its grid."},
        ),
        name="ds_preproc", run_without_submitting=True,
    )

    if key in NO_BIAS_CORRECTION:
        workflow.connect([
            (inputnode, register, [("t1w_preproc", "fixed"), ("brain_mask", "fixed_mask")]),
        ])  # fmt: skip
        register.inputs.moving = str(image)
        resample.inputs.moving = str(image)
        workflow.connect([(register, ds_preproc, [("metadata", "run_metadata")])])
    else:
        n4_correction = pe.Node(N4BiasCorrection(in_file=str(image)), name="n4_correction", mem_gb=2)
        merge_metadata = pe.Node(niu.Merge(2), name="merge_metadata", run_without_submitting=True)
        workflow.connect([
            (inputnode, register, [("t1w_preproc", "fixed"), ("brain_mask", "fixed_mask")]),
            (n4_correction, register, [("out_file", "moving")]),
            (n4_correction, resample, [("out_file", "moving")]),
            (n4_correction, merge_metadata, [("metadata", "in1")]),
            (register, merge_metadata, [("metadata", "in2")]),
            (merge_metadata, ds_preproc, [("out", "run_metadata")]),
        ])  # fmt: skip

    workflow.connect([
        (register, resample, [("out_xfm", "xfm")]),
        (register, ds_xfm, [("out_xfm", "in_file")]),
        (register, flirt_xfm_wf, [("out_xfm", "inputnode.xfm")]),
        (resample, ds_preproc, [("out_file", "in_file")]),
        (register, outputnode, [("out_xfm", "xfm")]),
        (resample, outputnode, [("out_file", "preproc")]),
    ])  # fmt: skip
    return workflow


def init_flirt_xfm_wf(
    *,
    key: str,
    source: Path,
    t1w: Path,
    bids_dir: Path,
    output_dir: Path,
    datatype: str,
    name: str = "flirt_xfm_wf",
) -> pe.Workflow:
    """File an FSL (FLIRT) copy of a ``from-<key>_to-T1w_mode-image_xfm.mat`` beside it, for FSL users.

    ``from-<key>_to-T1w_mode-image_desc-flirt_xfm.mat`` maps the raw <key> image's scaled-voxel coordinates to the
    T1w's (:mod:`msynth.preprocessing.fsl_transforms`); its sidecar names the two images it is meant for.

    Parameters
    ----------
    key
        Modality key (names the transform).
    source
        The raw image of that modality (FLIRT's ``-in``).
    t1w
        The session's raw T1w (FLIRT's ``-ref``; the space-T1w grid).
    bids_dir, output_dir
        Input dataset root (for BIDS URIs) and derivatives (staging) root.
    datatype
        Folder of the transform (anat, dwi or pet).

    Inputs
    ------
    xfm
        The ANTs transform.
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["xfm"]), name="inputnode")
    to_flirt = pe.Node(FlirtCopy(source=str(source), reference=str(t1w)), name="to_flirt")
    entities = {"from": key, "to": "T1w", "mode": "image"}
    kept = {entity: value for entity, value in source_entities(source).items() if entity in CONTRACT_ENTITIES}
    ants_xfm = derivative_path({**kept, **entities}, datatype, "xfm", ".mat")
    ds_flirt_xfm = pe.Node(
        DerivativesDataSink(
            base_directory=str(output_dir), source_file=str(source), datatype=datatype, suffix="xfm",
            entities={**entities, "desc": "flirt"},
            metadata={"Description": f"{ants_xfm.name} in FSL FLIRT convention: flirt -in <Source> -ref <Reference> "
                                     "-applyxfm -init <this file> resamples the Source onto the T1w grid.",
                      "Source": bids_uri(bids_dir, source), "Reference": bids_uri(bids_dir, t1w),
                      "Sources": [f"bids::{ants_xfm.as_posix()}", bids_uri(bids_dir, source), bids_uri(bids_dir, t1w)],
                      "SpatialReference": bids_uri(bids_dir, t1w)},
        ),
        name="ds_flirt_xfm", run_without_submitting=True,
    )
    workflow.connect([
        (inputnode, to_flirt, [("xfm", "ants_xfm")]),
        (to_flirt, ds_flirt_xfm, [("out_file", "in_file"), ("metadata", "run_metadata")]),
    ])  # fmt: skip
    return workflow
