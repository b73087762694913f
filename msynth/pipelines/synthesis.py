"""Synthesis of a model card's target (a FLAIR, a PIB DVR map) in space-T1w, with a trained model."""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from msynth.interfaces.bids import DerivativesDataSink
from msynth.interfaces.registration import ResampleToTarget
from msynth.interfaces.synthesis import SynthesizeImage
from msynth.models.card import TARGETS, ModelCard, Target, channels_of
from msynth.utils.derivatives import bids_uri

#: Relative difference between the model's and the T1w's voxel size below which the model runs on the T1w grid.
GRID_TOLERANCE = 0.1


def init_synthesis_wf(
    *,
    model_dir: Path,
    card: ModelCard,
    t1w: Path,
    sources: list[Path],
    bids_dir: Path,
    output_dir: Path,
    device: str,
    omp_nthreads: int,
    saliency: bool,
    target_acquired: bool = False,
    name: str = "synthesis_wf",
) -> pe.Workflow:
    """Synthesise a model card's target from a session's co-registered images.

    The inputs (space-T1w) go onto the model's grid (its voxel size on the T1w field of view) when it differs from
    the T1w's by more than 10 %, the model's stages run with sliding windows, and the prediction returns to
    space-T1w, named as the card's target says (:data:`msynth.models.card.TARGETS`).

    Parameters
    ----------
    model_dir, card
        The chosen model folder and its card.
    t1w
        The session's raw T1w (space-T1w grid, names the outputs).
    sources
        The raw images the inputs come from (the sidecar's ``Sources``).
    bids_dir, output_dir
        Input dataset root and derivatives (staging) root.
    device
        ``auto``, ``cpu`` or ``cuda``.
    omp_nthreads
        torch CPU threads.
    saliency
        Also write the P3S map of each input channel (paper 001, §2.2) and, for a model with CF-SAGAN stages, the
        attention map of each of their attention layers (thesis 003 §4.2.2; see :mod:`msynth.models.saliency`).
    target_acquired
        ``inputnode.acquired`` will hold the acquired target: the P3S maps then measure the prediction's error
        against it (paper 001 eq. 3) rather than the prediction itself.

    Inputs
    ------
    brain_mask
        Brain mask (space-T1w).
    <channel> for each input channel of the card
        The preprocessed image in space-T1w (DWI as FA, RD and AD).
    acquired
        The acquired target image in space-T1w (``target_acquired`` only).

    Outputs
    -------
    synthetic
        The synthetic image in space-T1w.
    """
    target = TARGETS[card.target]
    channels = list(channels_of(card.inputs))
    networks = " then ".join(f"{stage.network.architecture} {stage.name}" if len(card.stages) > 1
                             else stage.network.architecture for stage in card.stages)
    workflow = pe.Workflow(name=name)
    workflow.__desc__ = (
        f"A {target.noun} was synthesised from the {', '.join(card.inputs)} images with the model '{card.name}' "
        f"({networks}; msynth, after Wei et al.), run with overlapping sliding windows and Gaussian blending "
        "(MONAI)."
    )
    inputnode = pe.Node(niu.IdentityInterface(fields=["brain_mask", *channels, "acquired"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["synthetic"]), name="outputnode")

    gather_inputs = pe.Node(niu.Merge(len(channels)), name="gather_inputs", run_without_submitting=True)
    synthesize = pe.Node(
        SynthesizeImage(model_dir=str(model_dir), model_files=sorted(str(f) for f in Path(model_dir).iterdir()
                                                                     if f.suffix in (".json", ".pt")),
                        keys=channels, device=device, saliency=saliency,
                        companion_entities=companion_entities(target), omp_nthreads=omp_nthreads),
        name="synthesize", n_procs=omp_nthreads, mem_gb=4,
    )
    sink = {"base_directory": str(output_dir), "source_file": str(t1w), "datatype": target.datatype}
    reference = {"SpatialReference": bids_uri(bids_dir, t1w)}
    ds_synthetic = pe.Node(
        DerivativesDataSink(**sink, suffix=target.suffix, entities=target.entities,
                            metadata={**reference, "Sources": [bids_uri(bids_dir, path) for path in sources],
                                      "SkullStripped": True, "Description": target.description}),
        name="ds_synthetic", run_without_submitting=True,
    )
    # The synthetic image in space-T1w: the network's output, or its output brought back from the model's grid.
    synthetic_to_t1w = pe.Node(niu.IdentityInterface(fields=["out_file"]), name="synthetic_to_t1w")
    workflow.connect([
        *[(inputnode, gather_inputs, [(channel, f"in{index}")]) for index, channel in enumerate(channels, start=1)],
        (synthetic_to_t1w, ds_synthetic, [("out_file", "in_file")]),
        (synthesize, ds_synthetic, [("metadata", "run_metadata")]),
        (synthetic_to_t1w, outputnode, [("out_file", "synthetic")]),
    ])  # fmt: skip

    on_t1w_grid = _on_t1w_grid(card, t1w)
    if on_t1w_grid:
        workflow.connect([
            (gather_inputs, synthesize, [("out", "in_files")]),
            (inputnode, synthesize, [("brain_mask", "brain_mask")]),
            (synthesize, synthetic_to_t1w, [("out_file", "out_file")]),
        ])  # fmt: skip
    else:
        model_grid_to_t1w = pe.Node(ResampleToTarget(target=str(t1w)), name="model_grid_to_t1w", mem_gb=1)
        inputs_to_model_grid = pe.MapNode(ResampleToTarget(target=str(t1w), voxel_size=card.voxel_size_mm),
                                          iterfield=["in_file"], name="inputs_to_model_grid", mem_gb=1)
        mask_to_model_grid = pe.Node(ResampleToTarget(target=str(t1w), voxel_size=card.voxel_size_mm,
                                                      interpolation="nearest"), name="mask_to_model_grid")
        workflow.connect([
            (gather_inputs, inputs_to_model_grid, [("out", "in_file")]),
            (inputs_to_model_grid, synthesize, [("out_file", "in_files")]),
            (inputnode, mask_to_model_grid, [("brain_mask", "in_file")]),
            (mask_to_model_grid, synthesize, [("out_file", "brain_mask")]),
            (synthesize, model_grid_to_t1w, [("out_file", "in_file")]),
            (model_grid_to_t1w, synthetic_to_t1w, [("out_file", "out_file")]),
        ])  # fmt: skip

    if saliency:
        # P3S maps, then attention maps (CF-SAGAN stages): their names and descriptions come with them
        ds_saliency = pe.MapNode(
            DerivativesDataSink(**sink, suffix="saliency", metadata=reference),
            iterfield=["in_file", "entities", "run_metadata"], name="ds_saliency", run_without_submitting=True,
        )
        workflow.connect([
            (synthesize, ds_saliency, [("saliency_entities", "entities"), ("saliency_metadata", "run_metadata")]),
        ])  # fmt: skip
        if on_t1w_grid:
            workflow.connect([(synthesize, ds_saliency, [("saliency_files", "in_file")])])
        else:
            saliency_to_t1w = pe.MapNode(ResampleToTarget(target=str(t1w)), iterfield=["in_file"],
                                         name="saliency_to_t1w", mem_gb=1)
            workflow.connect([
                (synthesize, saliency_to_t1w, [("saliency_files", "in_file")]),
                (saliency_to_t1w, ds_saliency, [("out_file", "in_file")]),
            ])  # fmt: skip
        if target_acquired and on_t1w_grid:  # the paper's map compares the prediction with the acquired image
            workflow.connect([(inputnode, synthesize, [("acquired", "target")])])
    return workflow


def companion_entities(target: Target) -> dict[str, str]:
    """The entities a target's companion files (metrics, saliency maps) share with it: its tracer and space, not
    its ``desc`` or ``meas``.

    >>> companion_entities(TARGETS["DVR"])
    {'trc': 'PIB', 'space': 'T1w'}
    """
    return {key: value for key, value in target.entities.items() if key not in ("desc", "meas")}


def _on_t1w_grid(card: ModelCard, t1w: Path) -> bool:
    """Whether the model runs on the T1w grid itself (no voxel size in the card, or about the T1w's)."""
    if card.voxel_size_mm is None:
        return True
    zooms = np.asarray(nb.load(t1w).header.get_zooms()[:3], dtype=float)
    return bool(np.all(np.abs(zooms / card.voxel_size_mm - 1) <= GRID_TOLERANCE))
