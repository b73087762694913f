"""Affine registration of the MNI152 2009a template to the T1w reference."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from msynth.interfaces.bids import DerivativesDataSink
from msynth.interfaces.registration import RegisterToReference
from msynth.interfaces.templates import TemplateFiles
from msynth.templates import TEMPLATE_NAME


def init_template_registration_wf(
    *, t1w: Path, output_dir: Path, continue_on_qc_failure: bool = False, name: str = "template_registration_wf"
) -> pe.Workflow:
    """Register the template to the T1w reference (rigid → affine, mutual information, brain-masked).

    The registration starts from the best of several rotated starts (``initialization="multi-start"``) and runs ITK
    single-threaded: from the centre of mass alone it missed heads tilted by 15° or more by as much as the tilt in
    mm, and with 2 threads its repeats differed (``benchmarks/results/registration_repeats.md``). Its QC is the Dice
    of the template brain on the T1w with the T1w brain mask (:mod:`msynth.preprocessing.registration_qc`).

    Parameters
    ----------
    t1w
        The session's raw T1w (names the outputs).
    output_dir
        Derivatives (staging) root.
    continue_on_qc_failure
        On a failed QC, log a warning and flag it in the transform's sidecar instead of failing the session.

    Inputs
    ------
    t1w_preproc, brain_mask
        The T1w reference and its brain mask.

    Outputs
    -------
    xfm
        ``from-MNI152NLin2009aSym_to-T1w_mode-image_xfm.mat``: resamples template images onto the T1w.
    cerebellar_gm
        Cerebellar grey-matter probability on the template grid.
    """
    workflow = pe.Workflow(name=name)
    workflow.__desc__ = (
        f"The {TEMPLATE_NAME} template (nilearn) was registered to the T1w reference with an affine transform "
        "(ANTs, mutual information inside the brain mask, started from the best of seven rotated starts), and its "
        "overlap with the T1w brain mask was checked (Dice)."
    )
    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w_preproc", "brain_mask"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["xfm", "cerebellar_gm"]), name="outputnode")
    template_files = pe.Node(TemplateFiles(), name="template_files")
    register_template = pe.Node(RegisterToReference(key=TEMPLATE_NAME, initialization="multi-start",
                                                    intra_subject=False, continue_on_qc_failure=continue_on_qc_failure),
                                name="register_template", mem_gb=3)
    ds_xfm = pe.Node(
        DerivativesDataSink(base_directory=str(output_dir), source_file=str(t1w), datatype="anat", suffix="xfm",
                            entities={"from": TEMPLATE_NAME, "to": "T1w",
                                                                     "mode": "image"}),
        name="ds_xfm", run_without_submitting=True,
    )
    workflow.connect([
        (inputnode, register_template, [("t1w_preproc", "fixed"), ("brain_mask", "fixed_mask")]),
        (template_files, register_template, [("t1w", "moving")]),
        (register_template, ds_xfm, [("out_xfm", "in_file"), ("metadata", "run_metadata")]),
        (register_template, outputnode, [("out_xfm", "xfm")]),
        (template_files, outputnode, [("cerebellar_gm", "cerebellar_gm")]),
    ])  # fmt: skip
    return workflow
