"""Resampling of preprocessed images onto a synthesis model's target grid."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from msynth.interfaces.registration import ResampleToTarget


def init_target_grid_wf(
    *,
    target: Path,
    voxel_size: float | None = None,
    native: bool = False,
    interpolation: str = "linear",
    name: str = "target_grid_wf",
) -> pe.Workflow:
    """Resample a set of space-T1w images onto one target grid.

    The papers train and predict on the target's grid: FLAIR space for FLAIR synthesis, PET (DVR)
    space for myelin synthesis, or the model's own voxel size on the T1w field of view when the
    target was not acquired.

    Parameters
    ----------
    target
        Image naming the grid: the raw target acquisition (``native=True``) or the raw T1w.
    voxel_size
        Model voxel size (mm) on the target's field of view; ``None`` keeps the target's voxels.
    native
        The target is an acquisition in its own space: connect its ``from-<key>_to-T1w`` transform.
    interpolation
        ``linear`` for intensities, ``nearest`` for labels.

    Inputs
    ------
    in_files
        Images in space-T1w.
    target_xfm
        The target's ``from-<key>_to-T1w`` transform (``native=True`` only).

    Outputs
    -------
    out_files
        The images on the target grid, in the order of ``in_files``.
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["in_files", "target_xfm"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_files"]), name="outputnode")
    resample = pe.MapNode(ResampleToTarget(target=str(target), interpolation=interpolation),
                          iterfield=["in_file"], name="resample", mem_gb=1)
    if voxel_size is not None:
        resample.inputs.voxel_size = voxel_size
    workflow.connect([
        (inputnode, resample, [("in_files", "in_file")]),
        (resample, outputnode, [("out_file", "out_files")]),
    ])  # fmt: skip
    if native:
        workflow.connect([(inputnode, resample, [("target_xfm", "target_xfm")])])
    return workflow
