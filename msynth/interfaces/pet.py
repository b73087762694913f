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
from msynth.preprocessing.pvc import PVC_ITERATIONS, pvc_dvr_image


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


class _PVCInputSpec(BaseInterfaceInputSpec):
    dvr = File(exists=True, mandatory=True, desc="DVR map on the T1w grid")
    gm = File(exists=True, mandatory=True, desc="grey-matter probability on the T1w grid")
    wm = File(exists=True, mandatory=True, desc="white-matter probability on the T1w grid")
    csf = File(exists=True, mandatory=True, desc="CSF probability on the T1w grid")
    brain_mask = File(exists=True, mandatory=True, desc="brain mask on the T1w grid")
    lesion_mask = File(exists=True, desc="lesion mask on the T1w grid (its own region when given)")
    pet = File(exists=True, mandatory=True, desc="the PET series the DVR was fitted on (its voxel size)")
    psf_fwhm_mm = traits.Float(mandatory=True, desc="the scanner's reconstructed resolution, FWHM (mm)")
    iterations = traits.Int(PVC_ITERATIONS, usedefault=True, desc="Van Cittert iterations")


class _PVCOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="partial-volume-corrected DVR on the T1w grid")
    metadata = traits.Dict(desc="method and parameters, for the sidecar")


class PartialVolumeCorrection(SimpleInterface):
    """Fractional GTM + Van Cittert PVC of a DVR map; see :mod:`msynth.preprocessing.pvc`."""

    input_spec = _PVCInputSpec
    output_spec = _PVCOutputSpec

    def _run_interface(self, runtime):
        lesion = self.inputs.lesion_mask if isdefined(self.inputs.lesion_mask) else None
        out_file, parameters = pvc_dvr_image(
            self.inputs.dvr, self.inputs.gm, self.inputs.wm, self.inputs.csf, self.inputs.brain_mask,
            pet_zooms=nb.load(self.inputs.pet).header.get_zooms()[:3], psf_fwhm_mm=self.inputs.psf_fwhm_mm,
            iterations=self.inputs.iterations, lesion_mask=lesion, newpath=runtime.cwd,
        )
        self._results["out_file"] = out_file
        self._results["metadata"] = {
            "PartialVolumeCorrection": {
                "Method": "fractional geometric transfer matrix (Rousset et al. 1998) with Van Cittert deconvolution "
                          "of the residual (Van Cittert 1931; Tohka and Reilhac 2008), on the T1w grid",
                "Regions": "lesion, grey matter, normal-appearing white matter, CSF, rest (tissue probabilities)",
                **parameters,
            }
        }
        return runtime
