"""T1w reference: brain mask and bias-corrected T1w in space-T1w."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from msynth.interfaces.anat import BrainExtraction, N4BiasCorrection, RefineBrainMask
from msynth.interfaces.bids import DerivativesDataSink
from msynth.utils.derivatives import bids_uri


def init_anat_reference_wf(
    *,
    t1w: Path,
    bids_dir: Path,
    output_dir: Path,
    skull_stripped: bool | None,
    omp_nthreads: int,
    device: str,
    name: str = "anat_reference_wf",
) -> pe.Workflow:
    """Build the T1w reference of one session.

    The brain is extracted with deepbet (or, for an image already skull-stripped, taken as its
    non-zero support), then N4 corrects the intensity bias inside the brain, and deepbet's mask is
    trimmed to the grey/white-matter envelope (Atropos k-means and a closing, as ANTs' brain
    extraction), dropping the extracerebral CSF deepbet keeps. Both are written in space-T1w, the
    grid of the raw T1w every other output is compared against.

    Parameters
    ----------
    t1w
        The raw T1w image.
    bids_dir, output_dir
        Input dataset root (for BIDS URIs in sidecars) and derivatives (staging) root.
    skull_stripped
        ``SkullStripped`` from the sidecar; ``None`` lets the image decide.
    omp_nthreads
        Threads for N4 and the network.
    device
        ``auto``, ``cpu`` or ``cuda`` for deepbet.

    Outputs
    -------
    t1w_preproc
        Bias-corrected T1w (space-T1w).
    brain_mask
        Binary brain mask (space-T1w), refined to the grey/white-matter envelope.
    registration_mask
        deepbet's mask before the refinement (the brain with its rim of CSF): the fixed mask of the registrations
        to the T1w, which the brain/CSF edge helps.
    """
    workflow = pe.Workflow(name=name)
    workflow.__desc__ = (
        "The T1w image was brain-extracted with deepbet (or, when already skull-stripped, masked by its "
        "non-zero support) and corrected for intensity non-uniformity with N4 (ANTsPy) inside the brain mask. "
        "The deepbet mask was then refined to the envelope of grey and white matter (three-class Atropos k-means "
        "segmentation of the corrected T1w, morphological closing, hole filling), which excludes the "
        "extracerebral CSF."
    )
    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w"]), name="inputnode")
    inputnode.inputs.t1w = str(t1w)
    outputnode = pe.Node(niu.IdentityInterface(fields=["t1w_preproc", "brain_mask", "registration_mask"]),
                         name="outputnode")

    brain_extraction = pe.Node(
        BrainExtraction(device=device, omp_nthreads=omp_nthreads), name="brain_extraction", n_procs=omp_nthreads,
        mem_gb=3,
    )
    if skull_stripped is not None:
        brain_extraction.inputs.skull_stripped = skull_stripped
    n4_correction = pe.Node(
        N4BiasCorrection(), name="n4_correction", mem_gb=2
    )
    refine_mask = pe.Node(
        RefineBrainMask(), name="refine_mask", mem_gb=2
    )

    reference = {"SpatialReference": bids_uri(bids_dir, t1w), "Sources": [bids_uri(bids_dir, t1w)]}
    sink = {"base_directory": str(output_dir), "source_file": str(t1w), "datatype": "anat"}
    ds_brain_mask = pe.Node(
        DerivativesDataSink(
            **sink, suffix="mask", entities={"space": "T1w", "desc": "brain"},
            metadata={**reference, "Type": "Brain", "Description": "Brain mask of the session's T1w."},
        ),
        name="ds_brain_mask", run_without_submitting=True,
    )
    ds_t1w_preproc = pe.Node(
        DerivativesDataSink(
            **sink, suffix="T1w", entities={"space": "T1w", "desc": "preproc"},
            metadata={**reference, "Description": "T1w corrected for intensity non-uniformity (N4)."},
        ),
        name="ds_t1w_preproc", run_without_submitting=True,
    )

    workflow.connect([
        (inputnode, brain_extraction, [("t1w", "in_file")]),
        (inputnode, n4_correction, [("t1w", "in_file")]),
        (brain_extraction, n4_correction, [("out_mask", "mask_file"), ("skull_stripped", "skull_stripped")]),
        (brain_extraction, refine_mask, [("out_mask", "mask_file"), ("skull_stripped", "skull_stripped"),
                                         ("metadata", "metadata")]),
        (n4_correction, refine_mask, [("out_file", "t1w")]),
        (refine_mask, ds_brain_mask, [("out_mask", "in_file"), ("metadata", "run_metadata")]),
        (n4_correction, ds_t1w_preproc, [("out_file", "in_file"), ("metadata", "run_metadata")]),
        (refine_mask, outputnode, [("out_mask", "brain_mask")]),
        (brain_extraction, outputnode, [("out_mask", "registration_mask")]),
        (n4_correction, outputnode, [("out_file", "t1w_preproc")]),
    ])  # fmt: skip
    return workflow
