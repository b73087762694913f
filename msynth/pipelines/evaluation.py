"""Evaluation of a synthetic image against the acquired one: the participant's synthesis metrics TSVs.

A synthetic FLAIR is scored as paper 001 scores it (:func:`init_flair_evaluation_wf`), a synthetic PIB DVR map as
thesis 003 §3.3 does (:func:`init_dvr_evaluation_wf`). Each writes ``desc-synth<channel>_metrics.tsv`` beside the
acquired image's datatype, with its JSON data dictionary; its first columns are ``participant_id`` and (in a dataset
with sessions) ``session_id``.
"""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from msynth.interfaces.bids import DerivativesDataSink
from msynth.interfaces.masks import DetectLesions
from msynth.interfaces.synthesis import DVRMetrics, SynthesisMetrics
from msynth.models.card import TARGETS
from msynth.pipelines.synthesis import companion_entities
from msynth.utils.derivatives import bids_uri, table_ids
from msynth.utils.provenance import id_dictionary

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
#: Column descriptions of the DVR metrics TSV (one row per region; :func:`msynth.analysis.evaluation.dvr_metrics`).
DVR_METRICS_DICTIONARY = {
    "roi": {"Description": "Region: brain; WM (white matter, probability >= 0.5, of a session without lesions: a "
                           "healthy control) or NAWM and lesion (thesis 003 section 3.3.4)",
            "Levels": {"brain": "brain mask", "WM": "white matter of a session without lesions",
                       "NAWM": "normal-appearing white matter", "lesion": "lesions"}},
    "voxels": {"Description": "Voxels in the region"},
    "mse": {"Description": "Mean squared error of the synthetic DVR in the region (thesis 003 eq. 3.8)"},
    "psnr": {"Description": "Peak signal-to-noise ratio, 20 log10(MAX) - 10 log10(MSE), MAX the acquired DVR's "
                            "maximum in the brain (thesis 003 eq. 3.9)", "Units": "dB"},
    "mean_acquired": {"Description": "Mean acquired (Logan) DVR in the region"},
    "mean_synthetic": {"Description": "Mean synthetic DVR in the region"},
    "abs_discrepancy": {"Description": "|mean synthetic - mean acquired DVR| (thesis 003 section 3.3: myelin "
                                       "content prediction discrepancy, one session)"},
    "mae": {"Description": "Mean over the region's voxels of |synthetic - acquired DVR|"},
    "bias": {"Description": "Bland-Altman bias over the region's voxels: mean of synthetic - acquired DVR"},
    "sd": {"Description": "Standard deviation of the voxels' differences (ddof 1)"},
    "lower": {"Description": "Lower 95 % limit of agreement, bias - 1.96 sd"},
    "upper": {"Description": "Upper 95 % limit of agreement, bias + 1.96 sd"},
}
#: The session's masks and tissue maps the evaluation reads (outputs of the masks workflow).
MASK_FIELDS = ("lesion_mask", "nawm", "surrounding_nawm", "gm", "wm", "csf", "gm_prior", "wm_prior")


def init_flair_evaluation_wf(
    *,
    t1w: Path,
    bids_dir: Path,
    output_dir: Path,
    name: str = "flair_evaluation_wf",
) -> pe.Workflow:
    """Compare a synthetic FLAIR with the acquired one: the ``desc-synthFLAIR`` metrics TSV of a session.

    MSE, PSNR and SSIM inside the brain, the lesion contrast ratios of paper 001 (lesion / NAWM and lesion /
    surrounding NAWM) of both images, and the Dice of the automatic lesion masks drawn on each.

    Parameters
    ----------
    t1w
        The session's raw T1w (names the output).
    bids_dir, output_dir
        Input dataset root and derivatives (staging) root.

    Inputs
    ------
    synthetic, acquired
        The synthetic and the acquired FLAIR in space-T1w.
    brain_mask, lesion_mask, nawm, surrounding_nawm, gm, wm, csf, gm_prior, wm_prior
        The session's masks and tissue maps (space-T1w).

    Outputs
    -------
    metrics
        The metrics TSV (one row).
    """
    workflow = pe.Workflow(name=name)
    workflow.__desc__ = (
        "The synthetic FLAIR was compared with the acquired one inside the brain (MSE, PSNR, SSIM), by the lesion "
        "contrast ratios of Wei et al. (lesion / NAWM, lesion / surrounding NAWM), and by the Dice of the automatic "
        "lesion masks drawn on each image with the same tissue maps."
    )
    inputnode = pe.Node(niu.IdentityInterface(fields=["synthetic", "acquired", "brain_mask", *MASK_FIELDS]),
                        name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["metrics"]), name="outputnode")
    # Both automatic masks of the lesion Dice come from the same (final) tissue maps, so they differ only by the
    # FLAIR they were drawn on.
    detect_synthetic_lesions = pe.Node(DetectLesions(), name="detect_synthetic_lesions", mem_gb=2)
    detect_acquired_lesions = pe.Node(DetectLesions(), name="detect_acquired_lesions", mem_gb=2)
    metrics = pe.Node(SynthesisMetrics(table_ids=table_ids(t1w)), name="metrics", mem_gb=2)
    ds_metrics = _metrics_sink("FLAIR", METRICS_DICTIONARY, t1w=t1w, bids_dir=bids_dir, output_dir=output_dir)
    tissues = [(field, field) for field in ("brain_mask", "gm", "wm", "csf", "gm_prior", "wm_prior")]
    workflow.connect([
        (inputnode, detect_synthetic_lesions, [*tissues, ("synthetic", "flair")]),
        (inputnode, detect_acquired_lesions, [*tissues, ("acquired", "flair")]),
        (inputnode, metrics, [("synthetic", "synthetic"), ("acquired", "acquired"), ("brain_mask", "brain_mask"),
                              ("lesion_mask", "lesion_mask"), ("nawm", "nawm"),
                              ("surrounding_nawm", "surrounding_nawm")]),
        (detect_synthetic_lesions, metrics, [("out_mask", "synthetic_lesions")]),
        (detect_acquired_lesions, metrics, [("out_mask", "acquired_lesions")]),
        (metrics, ds_metrics, [("out_tsv", "in_file")]),
        (metrics, outputnode, [("out_tsv", "metrics")]),
    ])  # fmt: skip
    return workflow


def init_dvr_evaluation_wf(
    *,
    t1w: Path,
    bids_dir: Path,
    output_dir: Path,
    lesions: bool,
    name: str = "dvr_evaluation_wf",
) -> pe.Workflow:
    """Compare a synthetic PIB DVR map with the acquired (Logan) one: the ``desc-synthDVR`` metrics TSV of a session.

    One row per region (:func:`msynth.analysis.evaluation.dvr_metrics`): the brain, then the white matter of a
    session without lesions, or its NAWM and lesions; in each, MSE and PSNR (thesis 003 eqs. 3.8-3.9), the mean
    acquired and synthetic DVR and their absolute discrepancy, and the Bland-Altman bias and limits of agreement.

    Parameters
    ----------
    t1w
        The session's raw T1w (names the output).
    bids_dir, output_dir
        Input dataset root and derivatives (staging) root.
    lesions
        The session has a lesion mask and NAWM (``inputnode.lesion_mask`` and ``inputnode.nawm`` are connected).

    Inputs
    ------
    synthetic, acquired
        The synthetic and the acquired DVR in space-T1w.
    brain_mask, wm, lesion_mask, nawm
        The session's brain mask, WM probability and (``lesions``) lesion and NAWM masks (space-T1w).

    Outputs
    -------
    metrics
        The metrics TSV.
    """
    workflow = pe.Workflow(name=name)
    workflow.__desc__ = (
        "The synthetic DVR map was compared with the acquired one, in DVR units, by the mean squared error and the "
        "peak signal-to-noise ratio (Wei, thesis eqs. 3.8-3.9), and in the white matter of sessions without lesions "
        "or in the NAWM and the lesions by the mean DVR of each map, their absolute difference and the Bland-Altman "
        "bias and 95 % limits of agreement over the region's voxels."
    )
    fields = ["synthetic", "acquired", "brain_mask", "wm", "lesion_mask", "nawm"]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["metrics"]), name="outputnode")
    metrics = pe.Node(DVRMetrics(table_ids=table_ids(t1w)), name="metrics", mem_gb=2)
    ds_metrics = _metrics_sink("DVR", DVR_METRICS_DICTIONARY, t1w=t1w, bids_dir=bids_dir, output_dir=output_dir)
    used = fields if lesions else fields[:4]
    workflow.connect([
        (inputnode, metrics, [(field, field) for field in used]),
        (metrics, ds_metrics, [("out_tsv", "in_file")]),
        (metrics, outputnode, [("out_tsv", "metrics")]),
    ])  # fmt: skip
    return workflow


def _metrics_sink(target: str, dictionary: dict[str, dict[str, object]], *, t1w: Path, bids_dir: Path,
                  output_dir: Path) -> pe.Node:
    """The data sink of a target's metrics TSV: ``<datatype>/…_space-T1w_desc-synth<channel>_metrics.tsv`` (the
    datatype and entities of :data:`msynth.models.card.TARGETS`, ``trc-PIB`` for a DVR), with its dictionary (the
    identifier columns' first)."""
    spec = TARGETS[target]
    return pe.Node(
        DerivativesDataSink(base_directory=str(output_dir), source_file=str(t1w), datatype=spec.datatype,
                            suffix="metrics", entities={**companion_entities(spec), "desc": f"synth{spec.channel}"},
                            metadata={"SpatialReference": bids_uri(bids_dir, t1w),
                                      **id_dictionary(table_ids(t1w)), **dictionary}),
        name="ds_metrics", run_without_submitting=True,
    )
