"""Evaluation of a synthetic FLAIR against the acquired one: the participant's synthesis metrics TSV (paper 001)."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from msynth.interfaces.bids import DerivativesDataSink
from msynth.interfaces.masks import DetectLesions
from msynth.interfaces.synthesis import SynthesisMetrics
from msynth.utils.derivatives import bids_uri

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
    metrics = pe.Node(SynthesisMetrics(), name="metrics", mem_gb=2)
    ds_metrics = pe.Node(
        DerivativesDataSink(base_directory=str(output_dir), source_file=str(t1w), datatype="anat", suffix="metrics",
                            entities={"space": "T1w", "desc": "synthFLAIR"},
                            metadata={"SpatialReference": bids_uri(bids_dir, t1w), **METRICS_DICTIONARY}),
        name="ds_metrics", run_without_submitting=True,
    )
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
