"""Tissue probabilities, lesion mask, NAWM, surrounding NAWM and distance to CSF, in space-T1w."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from msynth.interfaces.bids import DerivativesDataSink
from msynth.interfaces.masks import (
    DetectLesions,
    LesionMaskToT1w,
    LesionStatistics,
    RegionMasks,
    SegmentTissues,
    TissuePriors,
)
from msynth.utils.derivatives import bids_uri, lesion_mask_uri, table_ids
from msynth.utils.lesion_masks import GivenLesionMask
from msynth.utils.provenance import id_dictionary

#: Where a session's lesion mask comes from: a given mask, FLAIR hyperintensities, or nowhere.
LesionSource = Literal["given", "automatic", "none"]

#: Column descriptions of the per-lesion TSV (its JSON data dictionary).
LESION_TABLE_DICTIONARY = {
    "lesion": {"Description": "Lesion number: connected component of the lesion mask (26-connectivity), 1 = largest"},
    "n_voxels": {"Description": "Lesion size in voxels of the T1w grid"},
    "volume_mm3": {"Description": "Lesion volume", "Units": "mm^3"},
    "centroid_x_mm": {"Description": "Lesion centre of mass, scanner x (RAS)", "Units": "mm"},
    "centroid_y_mm": {"Description": "Lesion centre of mass, scanner y (RAS)", "Units": "mm"},
    "centroid_z_mm": {"Description": "Lesion centre of mass, scanner z (RAS)", "Units": "mm"},
}


def init_masks_wf(
    *,
    t1w: Path,
    bids_dir: Path,
    output_dir: Path,
    lesion_source: LesionSource,
    given: GivenLesionMask | None = None,
    name: str = "masks_wf",
) -> pe.Workflow:
    """Build the lesion-aware tissue, lesion and region masks of one session.

    With a lesion mask (given, or detected from the FLAIR on a first, unfilled segmentation), the lesions are filled
    with NAWM-like intensities before the final segmentation, so that T1w-hypointense lesions do not become grey
    matter or CSF; NAWM, surrounding NAWM (5-voxel dilation of the lesions), distance to CSF and the lesion table
    follow. Without one, only the tissue probabilities are computed. Sidecars name their sources by BIDS URI: a
    given mask as :func:`msynth.utils.derivatives.lesion_mask_uri` says.

    Parameters
    ----------
    t1w
        The session's raw T1w (space-T1w grid, names the outputs).
    bids_dir, output_dir
        Input dataset root and derivatives (staging) root.
    lesion_source
        ``'given'`` (``given`` must be set), ``'automatic'`` (``flair`` input needed) or ``'none'``.
    given
        The mask from ``--lesion-masks`` and the image it was drawn on.

    Inputs
    ------
    t1w_preproc, brain_mask
        The T1w reference and its brain mask.
    template_xfm
        Template → T1w transform (tissue priors).
    flair
        FLAIR in space-T1w (automatic lesion mask).
    lesion_xfm
        ``from-<key>_to-T1w`` of the image a given mask was drawn on (unused when drawn on the T1w).

    Outputs
    -------
    gm, wm, csf, gm_prior, wm_prior, lesion_mask, nawm, surrounding_nawm, distance_to_csf
        (``gm_prior``, ``wm_prior``: the template's tissue maps on the T1w grid, for lesion detection)
    """
    if lesion_source == "given" and given is None:
        raise ValueError("init_masks_wf: lesion_source='given' needs the given mask")
    workflow = pe.Workflow(name=name)
    workflow.__desc__ = _description(lesion_source, given)
    fields = ["t1w_preproc", "brain_mask", "template_xfm", "flair", "lesion_xfm"]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=[
        "gm", "wm", "csf", "gm_prior", "wm_prior", "lesion_mask", "nawm", "surrounding_nawm", "distance_to_csf",
    ]), name="outputnode")
    tissue_priors = pe.Node(TissuePriors(), name="tissue_priors", mem_gb=3)
    segment_tissues = pe.Node(SegmentTissues(), name="segment_tissues", mem_gb=3)
    priors = [("gm_prior", "gm_prior"), ("wm_prior", "wm_prior"), ("csf_prior", "csf_prior")]
    workflow.connect([
        (inputnode, tissue_priors, [("t1w_preproc", "t1w"), ("brain_mask", "brain_mask"),
                                    ("template_xfm", "template_xfm")]),
        (inputnode, segment_tissues, [("t1w_preproc", "t1w"), ("brain_mask", "brain_mask")]),
        (tissue_priors, segment_tissues, priors),
        (segment_tissues, outputnode, [("gm", "gm"), ("wm", "wm"), ("csf", "csf")]),
        (tissue_priors, outputnode, [("gm_prior", "gm_prior"), ("wm_prior", "wm_prior")]),
    ])  # fmt: skip

    sink = {"base_directory": str(output_dir), "source_file": str(t1w), "datatype": "anat"}
    reference = {"SpatialReference": bids_uri(bids_dir, t1w)}
    sources = [bids_uri(bids_dir, t1w)]
    for label in ("GM", "WM", "CSF"):
        ds_probseg = pe.Node(DerivativesDataSink(
            **sink, suffix="probseg", entities={"space": "T1w", "label": label},
            metadata={**reference, "Sources": sources, "Description": f"{label} probability (lesion-aware)."}),
            name=f"ds_{label.lower()}_probseg", run_without_submitting=True)
        workflow.connect([
            (segment_tissues, ds_probseg, [(label.lower(), "in_file"), ("metadata", "run_metadata")]),
        ])  # fmt: skip
    if lesion_source == "none":
        return workflow

    if lesion_source == "given":
        lesion = pe.Node(LesionMaskToT1w(mask=str(given.mask), image=str(given.image), reference=str(t1w)),
                         name="lesion_to_t1w", mem_gb=1)
        if given.drawn_on != "T1w":
            workflow.connect([(inputnode, lesion, [("lesion_xfm", "xfm")])])
        sources = [*sources, lesion_mask_uri(bids_dir, given.mask), bids_uri(bids_dir, given.image)]
    else:
        initial_tissues = pe.Node(SegmentTissues(), name="initial_tissues", mem_gb=3)
        lesion = pe.Node(DetectLesions(), name="detect_lesions", mem_gb=2)
        workflow.connect([
            (inputnode, initial_tissues, [("t1w_preproc", "t1w"), ("brain_mask", "brain_mask")]),
            (tissue_priors, initial_tissues, priors),
            (inputnode, lesion, [("flair", "flair"), ("brain_mask", "brain_mask")]),
            (initial_tissues, lesion, [("gm", "gm"), ("wm", "wm"), ("csf", "csf")]),
            (tissue_priors, lesion, [("gm_prior", "gm_prior"), ("wm_prior", "wm_prior")]),
        ])  # fmt: skip
    region_masks = pe.Node(RegionMasks(), name="region_masks", mem_gb=2)
    lesion_statistics = pe.Node(LesionStatistics(table_ids=table_ids(t1w)), name="lesion_statistics")

    def data_sink(name: str, suffix: str, entities: dict[str, str], description: str, **extra: object) -> pe.Node:
        return pe.Node(DerivativesDataSink(
            **sink, suffix=suffix, entities={"space": "T1w", **entities},
            metadata={**reference, "Sources": sources, "Description": description, **extra}),
            name=name, run_without_submitting=True)

    ds_lesion = data_sink("ds_lesion_mask", "mask", {"label": "lesion"}, "Lesion mask.")
    ds_nawm = data_sink("ds_nawm_mask", "mask", {"label": "NAWM"}, "Normal-appearing white matter: WM "
                        "(probability ≥ 0.5) outside the lesions.")
    ds_surrounding = data_sink("ds_surrounding_nawm_mask", "mask", {"label": "surroundingNAWM"},
                               "NAWM within a 5-voxel dilation of the lesions (paper 001, §3.2).")
    ds_distance = data_sink("ds_distance_to_csf", "map", {"desc": "CSFdistance"},
                            "Distance to the nearest CSF voxel (CSF probability ≥ 0.5), in mm, inside the brain.",
                            Units="mm")
    ds_lesion_table = data_sink("ds_lesion_table", "stats", {"label": "lesion"}, "One row per lesion.",
                                **id_dictionary(table_ids(t1w)), **LESION_TABLE_DICTIONARY)
    lesion_metadata = pe.Node(niu.Merge(2), name="lesion_metadata", run_without_submitting=True)

    workflow.connect([
        (lesion, segment_tissues, [("out_mask", "lesion_mask")]),
        (inputnode, region_masks, [("brain_mask", "brain_mask")]),
        (lesion, region_masks, [("out_mask", "lesion_mask")]),
        (segment_tissues, region_masks, [("wm", "wm"), ("csf", "csf")]),
        (lesion, lesion_statistics, [("out_mask", "lesion_mask")]),
        (lesion, lesion_metadata, [("metadata", "in1")]),
        (lesion_statistics, lesion_metadata, [("summary", "in2")]),
        (lesion, ds_lesion, [("out_mask", "in_file")]),
        (lesion_metadata, ds_lesion, [("out", "run_metadata")]),
        (region_masks, ds_nawm, [("nawm", "in_file")]),
        (region_masks, ds_surrounding, [("surrounding_nawm", "in_file")]),
        (region_masks, ds_distance, [("distance_to_csf", "in_file")]),
        (lesion_statistics, ds_lesion_table, [("out_tsv", "in_file"), ("summary", "run_metadata")]),
        (lesion, outputnode, [("out_mask", "lesion_mask")]),
        (region_masks, outputnode, [("nawm", "nawm"), ("surrounding_nawm", "surrounding_nawm"),
                                    ("distance_to_csf", "distance_to_csf")]),
    ])  # fmt: skip
    return workflow


def _description(lesion_source: LesionSource, given: GivenLesionMask | None) -> str:
    """The methods sentence of the masks workflow."""
    tissues = ("Grey-matter, white-matter and CSF probabilities were estimated with ANTs Atropos (three-class "
               "Gaussian mixture with a Markov random field) with priors from the MNI152 2009a tissue maps registered "
               "to the T1w")
    if lesion_source == "none":
        return tissues + "; no lesion mask was available (none given, no FLAIR)."
    lesion = (f"a lesion mask drawn on the {given.drawn_on} and brought into T1w space (linear interpolation, "
              "threshold 0.5)" if lesion_source == "given" else
              "a lesion mask detected automatically as FLAIR hyperintensities relative to the white matter, with "
              "lesion growth (after Schmidt et al. 2012, LST-LGA)")
    return (f"{tissues}, after filling the lesions of {lesion} with normal-appearing white-matter intensities. "
            "Normal-appearing white matter (NAWM) is white matter outside the lesions; surrounding NAWM the NAWM "
            "within a 5-voxel dilation of the lesions; the distance of each brain voxel to the CSF was computed in mm.")
