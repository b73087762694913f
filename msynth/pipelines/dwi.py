"""DWI: tensor fit, b=0 registration to the T1w, tensor maps in space-T1w."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from msynth.interfaces.bids import DerivativesDataSink
from msynth.interfaces.dwi import DTI_PARAMETERS, DTIFit
from msynth.interfaces.registration import ApplyTransform, RegisterToReference
from msynth.pipelines.coregistration import init_flirt_xfm_wf
from msynth.utils.derivatives import bids_uri


def init_dwi_wf(
    *,
    dwi: Path,
    bval: Path,
    bvec: Path,
    t1w: Path,
    bids_dir: Path,
    output_dir: Path,
    label: str,
    continue_on_qc_failure: bool = False,
    name: str = "dwi_wf",
) -> pe.Workflow:
    """Fit the tensor on the DWI grid and bring FA, RD, AD and MD into space-T1w.

    The maps are computed on the native DWI grid (no resampling of the diffusion signal), the mean
    b=0 image is registered to the T1w reference (rigid, mutual information: one head, and
    too few voxels to pin down scaling and shear), and each map
    is resampled through that transform.

    Parameters
    ----------
    dwi, bval, bvec
        The 4-D series and its gradient files.
    t1w
        The session's raw T1w (space-T1w grid).
    bids_dir, output_dir
        Input dataset root and derivatives (staging) root.
    label
        ``sub-<L> ses-<S>`` prefix for error messages.
    continue_on_qc_failure
        On a registration that fails its QC, flag it (sidecar, log) instead of failing the session.

    Inputs
    ------
    t1w_preproc, brain_mask
        The T1w reference and its brain mask.

    Outputs
    -------
    maps
        FA, RD, AD, MD in space-T1w.
    FA, RD, AD, MD
        Each map alone (the DWI channels of a synthesis model, :data:`msynth.models.card.CHANNELS`).
    xfm
        ``from-DWI_to-T1w_mode-image_xfm.mat``.
    """
    workflow = pe.Workflow(name=name)
    workflow.__desc__ = (
        "The diffusion tensor was fitted by weighted least squares (dipy) inside a b=0 brain mask; the mean b=0 "
        "image was registered to the T1w reference (ANTs, rigid, mutual information) and FA, RD, AD "
        "and MD were resampled onto the T1w grid."
    )
    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w_preproc", "brain_mask"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["maps", "xfm", *DTI_PARAMETERS]), name="outputnode")

    dti_fit = pe.Node(DTIFit(dwi=str(dwi), bval=str(bval), bvec=str(bvec), label=f"{label}: DWI"),
                      name="dti_fit", mem_gb=4)
    register_b0 = pe.Node(RegisterToReference(key="DWI", affine=False, continue_on_qc_failure=continue_on_qc_failure),
                          name="register_b0", mem_gb=2)
    resample_maps = pe.MapNode(ApplyTransform(reference=str(t1w)), iterfield=["moving"], name="resample_maps",
                               mem_gb=1)

    sink = {"base_directory": str(output_dir), "source_file": str(dwi), "datatype": "dwi"}
    flirt_xfm_wf = init_flirt_xfm_wf(key="DWI", source=dwi, t1w=t1w, bids_dir=bids_dir, output_dir=output_dir,
                                     datatype="dwi")
    ds_xfm = pe.Node(
        DerivativesDataSink(**sink, suffix="xfm",
                            entities={"from": "DWI", "to": "T1w", "mode": "image"}),
        name="ds_xfm", run_without_submitting=True,
    )
    reference = {"Sources": [bids_uri(bids_dir, dwi), bids_uri(bids_dir, t1w)],
                 "SpatialReference": bids_uri(bids_dir, t1w)}
    ds_maps = pe.MapNode(
        DerivativesDataSink(**sink, suffix="dwimap"),
        iterfield=["in_file", "entities", "metadata"], name="ds_maps", run_without_submitting=True,
    )
    ds_maps.inputs.entities = [{"space": "T1w", "model": "DTI", "param": key} for key in DTI_PARAMETERS]
    ds_maps.inputs.metadata = [
        {**reference, "Description": f"DTI {key} resampled onto the T1w grid.",
         **({} if key == "FA" else {"Units": "mm^2/s"})}
        for key in DTI_PARAMETERS
    ]
    merge_metadata = pe.Node(niu.Merge(2), name="merge_metadata", run_without_submitting=True)
    split_maps = pe.Node(niu.Split(splits=[1] * len(DTI_PARAMETERS), squeeze=True), name="split_maps",
                         run_without_submitting=True)

    workflow.connect([
        (inputnode, register_b0, [("t1w_preproc", "fixed"), ("brain_mask", "fixed_mask")]),
        (dti_fit, register_b0, [("b0", "moving")]),
        (dti_fit, resample_maps, [("maps", "moving")]),
        (register_b0, resample_maps, [("out_xfm", "xfm")]),
        (register_b0, ds_xfm, [("out_xfm", "in_file")]),
        (register_b0, flirt_xfm_wf, [("out_xfm", "inputnode.xfm")]),
        (resample_maps, ds_maps, [("out_file", "in_file")]),
        (dti_fit, merge_metadata, [("metadata", "in1")]),
        (register_b0, merge_metadata, [("metadata", "in2")]),
        (merge_metadata, ds_maps, [("out", "run_metadata")]),
        (resample_maps, outputnode, [("out_file", "maps")]),
        (resample_maps, split_maps, [("out_file", "inlist")]),
        (split_maps, outputnode, [(f"out{index}", key) for index, key in enumerate(DTI_PARAMETERS, start=1)]),
        (register_b0, outputnode, [("out_xfm", "xfm")]),
    ])  # fmt: skip
    return workflow
