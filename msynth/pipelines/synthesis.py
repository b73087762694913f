"""FLAIR synthesis with a trained model, in space-T1w, and its evaluation when a FLAIR was acquired."""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from msynth.interfaces.bids import DerivativesDataSink
from msynth.interfaces.masks import DetectLesions
from msynth.interfaces.registration import ResampleToTarget
from msynth.interfaces.synthesis import SynthesisMetrics, SynthesizeImage
from msynth.models.card import ModelCard, channels_of
from msynth.utils.derivatives import bids_uri

#: Relative difference between the model's and the T1w's voxel size below which the model runs on the T1w grid.
GRID_TOLERANCE = 0.1

#: Column descriptions of the synthesis metrics TSV (its JSON data dictionary).
METRICS_DICTIONARY = {
    "mse": {"Description": "Mean squared error inside the brain, both images z-scored inside the brain"},
    "psnr": {"Description": "Peak signal-to-noise ratio inside the brain (z-scored images)", "Units": "dB"},
    "ssim": {"Description": "Structural similarity averaged inside the brain (MONAI; 11-voxel Gaussian window), the "
                      "synthetic FLAIR matched to the acquired one's brain mean and SD, both 0 outside the brain"},
    "ratio1_synthetic": {"Description": "Mean lesion / mean NAWM intensity of the synthetic FLAIR (paper 001)"},
    "ratio1_acquired": {"Description": "Mean lesion / mean NAWM intensity of the acquired FLAIR"},
    "ratio2_synthetic": {"Description": "Mean lesion / mean surrounding-NAWM intensity of the synthetic FLAIR"},
    "ratio2_acquired": {"Description": "Mean lesion / mean surrounding-NAWM intensity of the acquired FLAIR"},
    "lesion_dice": {"Description": "Dice of the automatic lesion masks of the synthetic and the acquired FLAIR"},
}


def init_flair_synthesis_wf(
    *,
    model_dir: Path,
    card: ModelCard,
    t1w: Path,
    bids_dir: Path,
    output_dir: Path,
    device: str,
    omp_nthreads: int,
    saliency: bool,
    evaluate: bool,
    name: str = "flair_synthesis_wf",
) -> pe.Workflow:
    """Synthesise a FLAIR from a session's co-registered images with a trained model.

    The inputs (space-T1w) go onto the model's grid (its voxel size on the T1w field of view) when it differs from
    the T1w's by more than 10 %, the network runs with sliding windows, and the prediction returns to space-T1w.

    Parameters
    ----------
    model_dir, card
        The chosen model folder and its card.
    t1w
        The session's raw T1w (space-T1w grid, names the outputs).
    bids_dir, output_dir
        Input dataset root and derivatives (staging) root.
    device
        ``auto``, ``cpu`` or ``cuda``.
    omp_nthreads
        torch CPU threads.
    saliency
        Also write the P3S map of each input (paper 001, §2.2).
    evaluate
        A FLAIR was acquired: compare the synthetic one with it (``desc-synth_FLAIR`` metrics TSV).

    Inputs
    ------
    brain_mask
        Brain mask (space-T1w).
    <key> for each input key of the card
        The preprocessed image in space-T1w.
    flair, lesion_mask, nawm, surrounding_nawm, gm, wm, csf, gm_prior, wm_prior
        The acquired FLAIR (space-T1w) and the session's masks and tissue maps (``evaluate`` only).

    Outputs
    -------
    synthetic_flair
        The synthetic FLAIR in space-T1w.
    """
    workflow = pe.Workflow(name=name)
    workflow.__desc__ = (
        f"A FLAIR image was synthesised from the {', '.join(card.inputs)} images with the {card.architecture} model "
        f"'{card.name}' (msynth, after Wei et al.), run with overlapping sliding windows and Gaussian blending "
        "(MONAI)."
    )
    keys = list(card.inputs)
    fields = ["brain_mask", *keys, "flair", "lesion_mask", "nawm", "surrounding_nawm", "gm", "wm", "csf", "gm_prior",
              "wm_prior"]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["synthetic_flair"]), name="outputnode")

    gather_inputs = pe.Node(niu.Merge(len(keys)), name="gather_inputs", run_without_submitting=True)
    synthesize = pe.Node(
        SynthesizeImage(model_dir=str(model_dir), keys=keys, device=device, saliency=saliency,
                        omp_nthreads=omp_nthreads),
        name="synthesize", n_procs=omp_nthreads, mem_gb=4,
    )
    sink = {"base_directory": str(output_dir), "source_file": str(t1w), "datatype": "anat"}
    reference = {"SpatialReference": bids_uri(bids_dir, t1w)}
    ds_synthetic = pe.Node(
        DerivativesDataSink(**sink, suffix="FLAIR", entities={"space": "T1w", "desc": "synth"},
                            metadata={**reference, "SkullStripped": True,
                                      "Description": "Synthetic FLAIR (msynth model), 0 outside the brain mask."}),
        name="ds_synthetic", run_without_submitting=True,
    )
    # The synthetic FLAIR in space-T1w: the network's output, or its output brought back from the model's grid.
    synthetic_to_t1w = pe.Node(niu.IdentityInterface(fields=["out_file"]), name="synthetic_to_t1w")
    workflow.connect([
        *[(inputnode, gather_inputs, [(key, f"in{index}")]) for index, key in enumerate(keys, start=1)],
        (synthetic_to_t1w, ds_synthetic, [("out_file", "in_file")]),
        (synthesize, ds_synthetic, [("metadata", "run_metadata")]),
        (synthetic_to_t1w, outputnode, [("out_file", "synthetic_flair")]),
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
        ds_saliency = pe.MapNode(
            DerivativesDataSink(**sink, suffix="saliency",
                                metadata={**reference, "Description": "P3S saliency map of one input (paper 001 "
                                          "§2.2): |d(prediction error)/d(input)|, normalised inputs."}),
            iterfield=["in_file", "entities"], name="ds_saliency", run_without_submitting=True,
        )
        ds_saliency.inputs.entities = [{"space": "T1w", "desc": f"P3S{channel}"} for channel in channels_of(keys)]
        if on_t1w_grid:
            workflow.connect([(synthesize, ds_saliency, [("saliency_files", "in_file")])])
        else:
            saliency_to_t1w = pe.MapNode(ResampleToTarget(target=str(t1w)), iterfield=["in_file"],
                                         name="saliency_to_t1w", mem_gb=1)
            workflow.connect([
                (synthesize, saliency_to_t1w, [("saliency_files", "in_file")]),
                (saliency_to_t1w, ds_saliency, [("out_file", "in_file")]),
            ])  # fmt: skip
        if evaluate and on_t1w_grid:  # the paper's map compares the prediction with the acquired FLAIR
            workflow.connect([(inputnode, synthesize, [("flair", "target")])])

    if evaluate:
        # Both automatic masks of the lesion Dice come from the same (final) tissue maps, so they differ only by the
        # FLAIR they were drawn on; the masks workflow's own mask may be given, or drawn with the unfilled tissues.
        detect_synthetic = pe.Node(DetectLesions(), name="detect_synthetic_lesions", mem_gb=2)
        detect_acquired = pe.Node(DetectLesions(), name="detect_acquired_lesions", mem_gb=2)
        metrics = pe.Node(SynthesisMetrics(), name="metrics", mem_gb=2)
        ds_metrics = pe.Node(
            DerivativesDataSink(**sink, suffix="metrics", entities={"space": "T1w", "desc": "synthFLAIR"},
                                metadata={**reference, **METRICS_DICTIONARY}),
            name="ds_metrics", run_without_submitting=True,
        )
        tissues = [("brain_mask", "brain_mask"), ("gm", "gm"), ("wm", "wm"), ("csf", "csf"), ("gm_prior", "gm_prior"),
                   ("wm_prior", "wm_prior")]
        workflow.connect([
            (inputnode, detect_synthetic, tissues),
            (synthetic_to_t1w, detect_synthetic, [("out_file", "flair")]),
            (inputnode, detect_acquired, [*tissues, ("flair", "flair")]),
            (synthetic_to_t1w, metrics, [("out_file", "synthetic")]),
            (inputnode, metrics, [("flair", "acquired"), ("brain_mask", "brain_mask"), ("lesion_mask", "lesion_mask"),
                                  ("nawm", "nawm"), ("surrounding_nawm", "surrounding_nawm")]),
            (detect_synthetic, metrics, [("out_mask", "synthetic_lesions")]),
            (detect_acquired, metrics, [("out_mask", "acquired_lesions")]),
            (metrics, ds_metrics, [("out_tsv", "in_file")]),
        ])  # fmt: skip
    return workflow


def _on_t1w_grid(card: ModelCard, t1w: Path) -> bool:
    """Whether the model runs on the T1w grid itself (no voxel size in the card, or about the T1w's)."""
    if card.voxel_size_mm is None:
        return True
    zooms = np.asarray(nb.load(t1w).header.get_zooms()[:3], dtype=float)
    return bool(np.all(np.abs(zooms / card.voxel_size_mm - 1) <= GRID_TOLERANCE))
