"""Nipype interfaces of the T1w reference: brain extraction, N4 bias correction, brain-mask refinement."""

from __future__ import annotations

import logging

import nibabel as nb
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from msynth.preprocessing.bias import n4_correct
from msynth.preprocessing.brain import ENVELOPE_CLOSING_MM, extract_brain, refine_brain_mask
from msynth.utils.itk import single_threaded_itk

LOGGER = logging.getLogger("msynth.preprocessing")

DEEPBET_THRESHOLD = 0.5
N4_PARAMETERS = {"iterations": (50, 50, 50, 50), "convergence_threshold": 1e-7, "spline_distance_mm": 200.0}
#: N4 fits on a grid shrunk towards this spacing: the bias field is smooth (200 mm B-spline spacing), so an
#: 8 mm fit grid samples it densely while keeping N4, whose cost grows with the fitted voxels, fast.
N4_FIT_SPACING_MM = 8.0
#: The usual ANTs shrink factor for 1 mm images, kept as the upper bound.
N4_MAX_SHRINK = 4


def n4_shrink_factor(image_path: str) -> int:
    """Shrink factor bringing the finest voxel side towards N4_FIT_SPACING_MM, between 1 and N4_MAX_SHRINK."""
    finest = min(nb.load(image_path).header.get_zooms()[:3])
    return min(N4_MAX_SHRINK, max(1, int(round(N4_FIT_SPACING_MM / finest))))


class _BrainExtractionInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="3-D T1w image")
    skull_stripped = traits.Bool(desc="SkullStripped from the sidecar; undefined lets the image decide")
    device = traits.Enum("auto", "cpu", "cuda", usedefault=True, desc="where deepbet runs")
    omp_nthreads = traits.Int(1, usedefault=True, desc="threads")


class _BrainExtractionOutputSpec(TraitedSpec):
    out_mask = File(exists=True, desc="binary brain mask on the input grid")
    skull_stripped = traits.Bool(desc="whether the input was already skull-stripped")
    metadata = traits.Dict(desc="how the mask was made, for the sidecar")


class BrainExtraction(SimpleInterface):
    """Brain mask with deepbet, or the support of an already skull-stripped image."""

    input_spec = _BrainExtractionInputSpec
    output_spec = _BrainExtractionOutputSpec

    def _run_interface(self, runtime):
        import torch  # only the network node pays for importing torch

        torch.set_num_threads(self.inputs.omp_nthreads)
        sidecar = {"SkullStripped": self.inputs.skull_stripped} if isdefined(self.inputs.skull_stripped) else None
        result = extract_brain(
            self.inputs.in_file, newpath=runtime.cwd, sidecar_meta=sidecar, device=self.inputs.device,
            threshold=DEEPBET_THRESHOLD,
        )
        self._results["out_mask"] = str(result.mask)
        self._results["skull_stripped"] = result.skull_stripped
        method = (
            {"Method": "deepbet", "Threshold": DEEPBET_THRESHOLD}
            if result.method == "deepbet"
            else {"Method": "non-zero support of the skull-stripped input"}
        )
        self._results["metadata"] = {"BrainExtraction": method, "BrainVolumeMl": round(result.volume_ml, 1)}
        return runtime


class _N4InputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="3-D MR image")
    mask_file = File(exists=True, desc="fit region on the same grid")
    skull_stripped = traits.Bool(False, usedefault=True, desc="whether in_file is skull-stripped (for the sidecar)")


class _N4OutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="bias-corrected image")
    bias_field = File(exists=True, desc="multiplicative bias field, mean 1 in the mask")
    metadata = traits.Dict(desc="parameters used, for the sidecar")


class N4BiasCorrection(SimpleInterface):
    """N4 bias-field correction (ANTsPy) inside a mask; see :func:`msynth.preprocessing.bias.n4_correct`."""

    input_spec = _N4InputSpec
    output_spec = _N4OutputSpec

    def _run_interface(self, runtime):
        single_threaded_itk()
        mask = self.inputs.mask_file if isdefined(self.inputs.mask_file) else None
        parameters = {**N4_PARAMETERS, "shrink_factor": n4_shrink_factor(self.inputs.in_file)}
        result = n4_correct(self.inputs.in_file, newpath=runtime.cwd, mask=mask, **parameters)
        self._results["out_file"] = str(result.corrected)
        self._results["bias_field"] = str(result.bias_field)
        self._results["metadata"] = {
            "SkullStripped": bool(self.inputs.skull_stripped),
            "BiasCorrection": {"Method": "N4 (ANTsPy)", **parameters},
        }
        return runtime


class _RefineInputSpec(BaseInterfaceInputSpec):
    t1w = File(exists=True, mandatory=True, desc="bias-corrected T1w")
    mask_file = File(exists=True, mandatory=True, desc="brain mask on the T1w grid")
    skull_stripped = traits.Bool(False, usedefault=True, desc="the input was skull-stripped: keep its mask")
    metadata = traits.Dict(desc="sidecar fields of the input mask, extended with the refinement")


class _RefineOutputSpec(TraitedSpec):
    out_mask = File(exists=True, desc="refined brain mask")
    metadata = traits.Dict(desc="how the mask was made, for the sidecar")


class RefineBrainMask(SimpleInterface):
    """Brain mask trimmed to the grey/white-matter envelope; see :func:`msynth.preprocessing.brain.refine_brain_mask`.

    The mask of an input that was already skull-stripped is its provider's and passes through unchanged.
    """

    input_spec = _RefineInputSpec
    output_spec = _RefineOutputSpec

    def _run_interface(self, runtime):
        metadata = dict(self.inputs.metadata) if isdefined(self.inputs.metadata) else {}
        if self.inputs.skull_stripped:
            LOGGER.info("brain-mask refinement skipped: the T1w was skull-stripped by its provider, whose mask is kept")
            self._results["out_mask"] = self.inputs.mask_file
            self._results["metadata"] = metadata
            return runtime
        single_threaded_itk()
        refined = refine_brain_mask(self.inputs.t1w, self.inputs.mask_file, newpath=runtime.cwd)
        metadata["BrainMaskRefinement"] = {
            "Method": "grey/white-matter envelope: Atropos k-means (3 classes) on the N4-corrected T1w inside the "
                      "mask, tissue closed with a ball and holes filled (as antsBrainExtraction.sh)",
            "ClosingRadiusMm": ENVELOPE_CLOSING_MM,
            "FractionRemoved": round(refined.fraction_removed, 4) if refined.applied else 0.0,
            "Applied": refined.applied,
        }
        metadata["BrainVolumeMl"] = round(refined.volume_ml, 1)
        self._results["out_mask"] = str(refined.mask)
        self._results["metadata"] = metadata
        return runtime
