"""Nipype interfaces for tissue probabilities, lesion masks and the regions built on them."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, isdefined, traits

from msynth.preprocessing.registration import apply_transform
from msynth.segmentation.lesions import (
    binarize_resampled,
    check_lesion_mask,
    detect_lesions,
    lesion_statistics,
    lesion_summary,
    load_parameters,
)
from msynth.segmentation.regions import region_masks
from msynth.segmentation.tissue import SubjectPriors, segment_tissues, write_subject_priors
from msynth.utils.itk import single_threaded_itk
from msynth.utils.provenance import with_ids


class _TissuePriorsInputSpec(BaseInterfaceInputSpec):
    t1w = File(exists=True, mandatory=True, desc="bias-corrected T1w reference")
    brain_mask = File(exists=True, mandatory=True, desc="brain mask on the T1w grid")
    template_xfm = File(exists=True, mandatory=True, desc="template → T1w affine (from-<template>_to-T1w)")


class _TissuePriorsOutputSpec(TraitedSpec):
    gm_prior = File(exists=True, desc="template grey-matter prior on the T1w grid")
    wm_prior = File(exists=True, desc="template white-matter prior on the T1w grid")
    csf_prior = File(exists=True, desc="template CSF prior on the T1w grid")


class TissuePriors(SimpleInterface):
    """Template tissue maps on the T1w grid, the affine refined by SyN.

    See :func:`msynth.segmentation.tissue.write_subject_priors`.
    """

    input_spec = _TissuePriorsInputSpec
    output_spec = _TissuePriorsOutputSpec

    def _run_interface(self, runtime):
        single_threaded_itk()
        priors = write_subject_priors(self.inputs.t1w, self.inputs.brain_mask, template_xfm=self.inputs.template_xfm,
                                      newpath=runtime.cwd)
        self._results.update(gm_prior=str(priors.gm), wm_prior=str(priors.wm), csf_prior=str(priors.csf))
        return runtime


class _SegmentTissuesInputSpec(BaseInterfaceInputSpec):
    t1w = File(exists=True, mandatory=True, desc="bias-corrected T1w reference")
    brain_mask = File(exists=True, mandatory=True, desc="brain mask on the T1w grid")
    gm_prior = File(exists=True, mandatory=True, desc="grey-matter prior on the T1w grid")
    wm_prior = File(exists=True, mandatory=True, desc="white-matter prior on the T1w grid")
    csf_prior = File(exists=True, mandatory=True, desc="CSF prior on the T1w grid")
    lesion_mask = File(exists=True, desc="lesion mask on the T1w grid; its voxels are filled before segmentation")


class _SegmentTissuesOutputSpec(TraitedSpec):
    gm = File(exists=True, desc="grey-matter probability")
    wm = File(exists=True, desc="white-matter probability")
    csf = File(exists=True, desc="CSF probability")
    metadata = traits.Dict(desc="method and parameters, for the sidecars")


class SegmentTissues(SimpleInterface):
    """GM/WM/CSF probabilities with Atropos and template priors, lesion-filled (:mod:`msynth.segmentation.tissue`)."""

    input_spec = _SegmentTissuesInputSpec
    output_spec = _SegmentTissuesOutputSpec

    def _run_interface(self, runtime):
        single_threaded_itk()
        priors = SubjectPriors(gm=Path(self.inputs.gm_prior), wm=Path(self.inputs.wm_prior),
                               csf=Path(self.inputs.csf_prior))
        result = segment_tissues(
            self.inputs.t1w, self.inputs.brain_mask, priors=priors, newpath=runtime.cwd,
            lesion_mask=self.inputs.lesion_mask if isdefined(self.inputs.lesion_mask) else None,
        )
        self._results.update(gm=str(result.gm), wm=str(result.wm), csf=str(result.csf), metadata=result.metadata)
        return runtime


class _DetectLesionsInputSpec(BaseInterfaceInputSpec):
    flair = File(exists=True, mandatory=True, desc="FLAIR in space-T1w (acquired or synthetic)")
    brain_mask = File(exists=True, mandatory=True, desc="brain mask on the T1w grid")
    gm = File(exists=True, mandatory=True, desc="grey-matter probability")
    wm = File(exists=True, mandatory=True, desc="white-matter probability")
    csf = File(exists=True, mandatory=True, desc="CSF probability")
    gm_prior = File(exists=True, mandatory=True, desc="template grey-matter prior (defines the cortex)")
    wm_prior = File(exists=True, mandatory=True, desc="template white-matter prior")


class _LesionMaskOutputSpec(TraitedSpec):
    out_mask = File(exists=True, desc="binary lesion mask on the T1w grid")
    metadata = traits.Dict(desc="how the mask was obtained, for the sidecar")


class DetectLesions(SimpleInterface):
    """Automatic lesion mask from FLAIR hyperintensity (:func:`msynth.segmentation.lesions.detect_lesions`)."""

    input_spec = _DetectLesionsInputSpec
    output_spec = _LesionMaskOutputSpec

    def _run_interface(self, runtime):
        out_mask = detect_lesions(
            self.inputs.flair, self.inputs.brain_mask, gm=self.inputs.gm, wm=self.inputs.wm, csf=self.inputs.csf,
            gm_prior=self.inputs.gm_prior, wm_prior=self.inputs.wm_prior, newpath=runtime.cwd,
        )
        self._results["out_mask"] = str(out_mask)
        self._results["metadata"] = {"LesionMaskSource": "automatic", "LesionDetection": load_parameters()}
        return runtime


class _LesionMaskToT1wInputSpec(BaseInterfaceInputSpec):
    mask = File(exists=True, mandatory=True, desc="given lesion mask, on the grid of the image it was drawn on")
    image = File(exists=True, mandatory=True, desc="the raw image the mask was drawn on")
    reference = File(exists=True, mandatory=True, desc="the raw T1w (space-T1w grid)")
    xfm = File(exists=True, desc="from-<key>_to-T1w transform; undefined when the mask was drawn on the T1w")
    threshold = traits.Range(0.0, 1.0, 0.5, usedefault=True, exclude_low=True,
                             desc="a voxel is lesion where the linearly resampled mask reaches this value")


class LesionMaskToT1w(SimpleInterface):
    """Bring a given lesion mask into space-T1w: linear resampling through the transform, then a threshold."""

    input_spec = _LesionMaskToT1wInputSpec
    output_spec = _LesionMaskOutputSpec

    def _run_interface(self, runtime):
        check_lesion_mask(self.inputs.mask, self.inputs.image)
        moving = self.inputs.mask
        if isdefined(self.inputs.xfm):
            moving = apply_transform(moving, self.inputs.reference, self.inputs.xfm, newpath=runtime.cwd,
                                     interpolation="linear")
        out_mask = binarize_resampled(moving, newpath=Path(runtime.cwd) / "binary", threshold=self.inputs.threshold)
        self._results["out_mask"] = str(out_mask)
        self._results["metadata"] = {
            "LesionMaskSource": "given",
            "Resampling": "linear interpolation through the image's transform to the T1w, thresholded at "
                          f"{self.inputs.threshold:g}" if isdefined(self.inputs.xfm) else "none (drawn on the T1w)",
        }
        return runtime


class _RegionMasksInputSpec(BaseInterfaceInputSpec):
    wm = File(exists=True, mandatory=True, desc="white-matter probability")
    csf = File(exists=True, mandatory=True, desc="CSF probability")
    lesion_mask = File(exists=True, mandatory=True, desc="lesion mask")
    brain_mask = File(exists=True, mandatory=True, desc="brain mask")


class _RegionMasksOutputSpec(TraitedSpec):
    nawm = File(exists=True, desc="normal-appearing white matter")
    surrounding_nawm = File(exists=True, desc="NAWM within the 5-voxel dilation of the lesions")
    distance_to_csf = File(exists=True, desc="distance to CSF (mm) of every brain voxel")


class RegionMasks(SimpleInterface):
    """NAWM, surrounding NAWM and distance to CSF (:func:`msynth.segmentation.regions.region_masks`)."""

    input_spec = _RegionMasksInputSpec
    output_spec = _RegionMasksOutputSpec

    def _run_interface(self, runtime):
        result = region_masks(self.inputs.wm, self.inputs.csf, self.inputs.lesion_mask, self.inputs.brain_mask,
                              newpath=runtime.cwd)
        self._results.update(nawm=str(result.nawm), surrounding_nawm=str(result.surrounding_nawm),
                             distance_to_csf=str(result.distance_to_csf))
        return runtime


class _LesionStatisticsInputSpec(BaseInterfaceInputSpec):
    lesion_mask = File(exists=True, mandatory=True, desc="lesion mask")
    table_ids = traits.Dict(traits.Str, traits.Str, mandatory=True,
                            desc="participant_id and session_id: the table's first columns")


class _LesionStatisticsOutputSpec(TraitedSpec):
    out_tsv = File(exists=True, desc="one row per lesion")
    summary = traits.Dict(desc="lesion count and total volume, for the sidecar")


class LesionStatistics(SimpleInterface):
    """Per-lesion volumes (after the session's ``table_ids``) and the session's lesion count and load."""

    input_spec = _LesionStatisticsInputSpec
    output_spec = _LesionStatisticsOutputSpec

    def _run_interface(self, runtime):
        table = lesion_statistics(self.inputs.lesion_mask)
        out_tsv = Path(runtime.cwd) / "lesions.tsv"
        with_ids(table, self.inputs.table_ids).to_csv(out_tsv, sep="\t", index=False, na_rep="n/a")
        summary = lesion_summary(table)
        self._results["out_tsv"] = str(out_tsv)
        self._results["summary"] = {"LesionCount": summary["n_lesions"],
                                    "LesionVolumeML": round(summary["total_volume_ml"], 4)}
        return runtime
