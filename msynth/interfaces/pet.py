"""Nipype interfaces of the dynamic [11C]PIB PET stage."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, isdefined, traits

from msynth.preprocessing.pet import (
    K2_REF_PER_MIN,
    T_STAR_MIN,
    frame_times,
    logan_dvr_image,
    mean_image,
    reference_region_mask,
)


def _write_sidecar(metadata: dict, newpath: str) -> Path:
    """The PET metadata (BIDS inheritance already applied) as a JSON file the science functions read."""
    path = Path(newpath) / "pet_metadata.json"
    path.write_text(json.dumps(metadata))
    return path


class _PETMeanInputSpec(BaseInterfaceInputSpec):
    pet = File(exists=True, mandatory=True, desc="4-D dynamic PET")
    metadata = traits.Dict(mandatory=True, desc="BIDS-PET metadata (frame timing)")
    label = traits.Str("PET", usedefault=True, desc="prefix of error messages")


class _PETMeanOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="frame-duration weighted mean image")


class PETMean(SimpleInterface):
    """Mean of the frames weighted by their durations: the image registered to the T1w."""

    input_spec = _PETMeanInputSpec
    output_spec = _PETMeanOutputSpec

    def _run_interface(self, runtime):
        sidecar = _write_sidecar(self.inputs.metadata, runtime.cwd)
        n_frames = nb.load(self.inputs.pet).shape[3]
        _, durations = frame_times(sidecar, n_frames, label=self.inputs.label)
        self._results["out_file"] = str(mean_image(self.inputs.pet, durations, newpath=runtime.cwd))
        return runtime


class _ReferenceRegionInputSpec(BaseInterfaceInputSpec):
    probability = File(exists=True, mandatory=True, desc="cerebellar GM probability on the PET grid")


class _ReferenceRegionOutputSpec(TraitedSpec):
    out_mask = File(exists=True, desc="reference-region mask on the PET grid")


class ReferenceRegion(SimpleInterface):
    """Threshold and erode the cerebellar grey matter into the Logan reference region."""

    input_spec = _ReferenceRegionInputSpec
    output_spec = _ReferenceRegionOutputSpec

    def _run_interface(self, runtime):
        self._results["out_mask"] = str(reference_region_mask(self.inputs.probability, newpath=runtime.cwd))
        return runtime


class _LoganInputSpec(BaseInterfaceInputSpec):
    pet = File(exists=True, mandatory=True, desc="4-D decay-corrected dynamic PET")
    metadata = traits.Dict(mandatory=True, desc="BIDS-PET metadata (frame timing)")
    reference_mask = File(exists=True, mandatory=True, desc="reference region on the PET grid")
    brain_mask = File(exists=True, desc="voxels to fit, on the PET grid")
    t_star_min = traits.Float(T_STAR_MIN, usedefault=True, desc="start of the linear phase (min)")
    k2_ref_per_min = traits.Either(None, traits.Float, default=K2_REF_PER_MIN, usedefault=True,
                                   desc="reference efflux k2' (1/min); None for the form without it")
    estimator = traits.Enum("multilinear", "graphical", usedefault=True,
                            desc="multilinear (Ichise 2003, default) or graphical (Logan plot) fit")
    label = traits.Str("PET", usedefault=True, desc="prefix of error messages")


class _LoganOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="DVR map on the PET grid")
    metadata = traits.Dict(desc="model parameters, for the sidecar")


class LoganDVR(SimpleInterface):
    """Voxel-wise Logan reference-tissue DVR (Logan 1996); see :mod:`msynth.preprocessing.pet`."""

    input_spec = _LoganInputSpec
    output_spec = _LoganOutputSpec

    def _run_interface(self, runtime):
        sidecar = _write_sidecar(self.inputs.metadata, runtime.cwd)
        brain = self.inputs.brain_mask if isdefined(self.inputs.brain_mask) else None
        self._results["out_file"] = str(
            logan_dvr_image(
                self.inputs.pet, sidecar, self.inputs.reference_mask, newpath=runtime.cwd, brain_mask=brain,
                t_star_min=self.inputs.t_star_min, k2_ref_per_min=self.inputs.k2_ref_per_min,
                estimator=self.inputs.estimator, label=self.inputs.label,
            )
        )
        self._results["metadata"] = {
            "ModelName": "Logan reference-tissue model",
            "Estimator": {"multilinear": "multilinear least squares (Ichise et al. 2003, MRTM2 form)",
                          "graphical": "graphical analysis (Logan et al. 1996)"}[self.inputs.estimator],
            "TStarMin": self.inputs.t_star_min,
            "K2PrimeReferencePerMin": self.inputs.k2_ref_per_min,
            "ReferenceRegion": "cerebellar grey matter (MNI152 2009a template registered to the T1w)",
        }
        return runtime
