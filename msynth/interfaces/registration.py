"""Nipype interfaces for registration to the T1w reference and resampling onto target grids."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nb
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, isdefined, traits

from msynth.preprocessing.fsl_transforms import flirt_metadata, write_flirt_copy
from msynth.preprocessing.registration import (
    MAX_PLAUSIBLE_SCALE,
    apply_transform,
    compose,
    invert,
    mattes_mi,
    pyramid_for,
    register_to_reference,
)
from msynth.preprocessing.registration_qc import RegistrationQCError, score_coregistration, score_template
from msynth.preprocessing.resample import to_target_space
from msynth.utils.itk import ITK_THREADS, single_threaded_itk

LOGGER = logging.getLogger("msynth.interfaces.registration")


class _RegisterInputSpec(BaseInterfaceInputSpec):
    moving = File(exists=True, mandatory=True, desc="image to align (bias-corrected)")
    fixed = File(exists=True, mandatory=True, desc="T1w reference")
    fixed_mask = File(exists=True, mandatory=True, desc="brain mask on the T1w grid")
    key = traits.Str(mandatory=True, desc="modality key of the moving image, names the transform")
    initialization = traits.Enum(
        "scanner", "centre-of-mass", "multi-start", usedefault=True,
        desc="'scanner' (world coordinates) for images of one session; 'centre-of-mass' or 'multi-start' (the best "
             "of several rotated starts) across subjects",
    )
    intra_subject = traits.Bool(
        True, usedefault=True,
        desc="True: a co-registration (warn on implausible scaling; QC by normalised mutual information); False: the "
             "skull-stripped template onto the T1w (QC by the Dice of the brain masks)",
    )
    affine = traits.Bool(True, usedefault=True, desc="rigid then affine; False: rigid only")
    continue_on_qc_failure = traits.Bool(
        False, usedefault=True, desc="on a QC failure log a warning and flag it in the metadata instead of raising",
    )


class _RegisterOutputSpec(TraitedSpec):
    out_xfm = File(exists=True, desc="ITK affine mapping T1w points to moving-image points")
    metadata = traits.Dict(desc="registration method, for the sidecar")


class RegisterToReference(SimpleInterface):
    """Rigid (by default then affine) mutual-information registration to the T1w (ANTsPy), brain-masked."""

    input_spec = _RegisterInputSpec
    output_spec = _RegisterOutputSpec

    def _run_interface(self, runtime):
        single_threaded_itk()
        inputs = self.inputs
        pyramid = pyramid_for(min(nb.load(inputs.fixed).header.get_zooms()[:3]))
        out_xfm = register_to_reference(
            inputs.moving, inputs.fixed, inputs.fixed_mask,
            out_xfm=f"{runtime.cwd}/from-{inputs.key}_to-T1w_mode-image_xfm.mat",
            initialization=inputs.initialization,
            affine=inputs.affine,
            max_scale=MAX_PLAUSIBLE_SCALE if inputs.intra_subject else None,
            **pyramid,
        )
        score = score_coregistration if inputs.intra_subject else score_template
        qc = score(inputs.moving, inputs.fixed, inputs.fixed_mask, out_xfm)
        if not qc.passed:
            message = qc.failure_message(inputs.moving, inputs.fixed)
            if not inputs.continue_on_qc_failure:
                raise RegistrationQCError(message)
            LOGGER.warning("%s; continuing (--continue-on-qc-failure): the sidecar says QC Passed false", message)
        self._results["out_xfm"] = str(out_xfm)
        self._results["metadata"] = {
            "Registration": {"Method": f"ANTs rigid{' then affine' if inputs.affine else ''}",
                             "Metric": "Mattes mutual information",
                             "FinalMetricValue": round(mattes_mi(inputs.fixed, inputs.moving, out_xfm,
                                                                 inputs.fixed_mask), 6),
                             "Mask": "T1w brain mask", "Initialization": inputs.initialization,
                             "ITKThreads": ITK_THREADS, "MovingImage": Path(inputs.moving).name,
                             **pyramid},
            "QC": qc.as_metadata(),
        }
        return runtime


class _ApplyInputSpec(BaseInterfaceInputSpec):
    moving = File(exists=True, mandatory=True, desc="image to resample")
    reference = File(exists=True, mandatory=True, desc="image whose grid the output takes")
    xfm = File(exists=True, mandatory=True, desc="transform mapping reference points to moving points")
    interpolation = traits.Enum("linear", "nearestNeighbor", "genericLabel", "bSpline", usedefault=True,
                                desc="ANTs interpolator")
    invert_xfm = traits.Bool(False, usedefault=True, desc="apply the inverse of xfm (e.g. T1w images onto PET)")


class _ApplyOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the resampled image")


class ApplyTransform(SimpleInterface):
    """Resample an image onto a reference grid through an affine transform (ANTsPy)."""

    input_spec = _ApplyInputSpec
    output_spec = _ApplyOutputSpec

    def _run_interface(self, runtime):
        xfm = (invert(self.inputs.xfm, out_xfm=f"{runtime.cwd}/inverse.mat") if self.inputs.invert_xfm
               else self.inputs.xfm)
        self._results["out_file"] = str(
            apply_transform(
                self.inputs.moving, self.inputs.reference, xfm, newpath=runtime.cwd,
                interpolation=self.inputs.interpolation,
            )
        )
        return runtime


class _ComposeInputSpec(BaseInterfaceInputSpec):
    xfms = traits.List(File(exists=True), mandatory=True, desc="transforms, in apply_transforms order")
    invert = traits.List(traits.Bool, desc="which transforms to invert first (default: none)")


class _ComposeOutputSpec(TraitedSpec):
    out_xfm = File(exists=True, desc="the composed affine")


class ComposeTransforms(SimpleInterface):
    """Compose affines (each optionally inverted) into one; see :func:`msynth.preprocessing.registration.compose`."""

    input_spec = _ComposeInputSpec
    output_spec = _ComposeOutputSpec

    def _run_interface(self, runtime):
        flags = self.inputs.invert if isdefined(self.inputs.invert) else [False] * len(self.inputs.xfms)
        if len(flags) != len(self.inputs.xfms):
            raise ValueError(f"invert has {len(flags)} flags for {len(self.inputs.xfms)} transforms")
        steps = [
            invert(xfm, out_xfm=f"{runtime.cwd}/inverse_{index}.mat") if flag else xfm
            for index, (xfm, flag) in enumerate(zip(self.inputs.xfms, flags))
        ]
        self._results["out_xfm"] = str(compose(steps, out_xfm=f"{runtime.cwd}/composed.mat"))
        return runtime


class _FlirtCopyInputSpec(BaseInterfaceInputSpec):
    ants_xfm = File(exists=True, mandatory=True, desc="ANTs from-<key>_to-T1w transform (T1w points to source points)")
    source = File(exists=True, mandatory=True, desc="the raw image the transform resamples (FLIRT's -in)")
    reference = File(exists=True, mandatory=True, desc="the session's raw T1w (FLIRT's -ref)")


class _FlirtCopyOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the transform as a FLIRT text matrix")
    metadata = traits.Dict(desc="convention and fslpy version, for the sidecar")


class FlirtCopy(SimpleInterface):
    """The ANTs transform in FLIRT convention, for FSL users; see :mod:`msynth.preprocessing.fsl_transforms`."""

    input_spec = _FlirtCopyInputSpec
    output_spec = _FlirtCopyOutputSpec

    def _run_interface(self, runtime):
        self._results["out_file"] = str(
            write_flirt_copy(self.inputs.ants_xfm, self.inputs.source, self.inputs.reference, newpath=runtime.cwd)
        )
        self._results["metadata"] = flirt_metadata()
        return runtime


class _TargetInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="image in space-T1w")
    target = File(exists=True, mandatory=True, desc="image whose grid the output takes")
    target_xfm = File(exists=True, desc="from-<key>_to-T1w transform of the target (for a native target space)")
    voxel_size = traits.Float(desc="model voxel size (mm) on the target's field of view")
    interpolation = traits.Enum("linear", "nearest", usedefault=True, desc="linear for intensities")


class _TargetOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the image on the target grid")


class ResampleToTarget(SimpleInterface):
    """Bring a space-T1w image onto a model's target grid; see :func:`msynth.preprocessing.resample.to_target_space`."""

    input_spec = _TargetInputSpec
    output_spec = _TargetOutputSpec

    def _run_interface(self, runtime):
        self._results["out_file"] = str(
            to_target_space(
                self.inputs.in_file, self.inputs.target, newpath=runtime.cwd,
                target_xfm=self.inputs.target_xfm if isdefined(self.inputs.target_xfm) else None,
                voxel_size=self.inputs.voxel_size if isdefined(self.inputs.voxel_size) else None,
                interpolation=self.inputs.interpolation,
            )
        )
        return runtime
