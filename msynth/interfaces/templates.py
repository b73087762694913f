"""Nipype interface that writes the template and its reference regions into the work directory."""

from __future__ import annotations

from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits

from msynth.templates import write_cerebellar_gm, write_template


class _TemplateFilesInputSpec(BaseInterfaceInputSpec):
    resolution = traits.Enum(1, 2, usedefault=True, desc="template voxel size (mm)")


class _TemplateFilesOutputSpec(TraitedSpec):
    t1w = File(exists=True, desc="skull-stripped MNI152 2009a T1 template")
    cerebellar_gm = File(exists=True, desc="cerebellar grey-matter probability on the template grid")


class TemplateFiles(SimpleInterface):
    """Write nilearn's MNI152 2009a template and the cerebellar grey matter msynth defines on it."""

    input_spec = _TemplateFilesInputSpec
    output_spec = _TemplateFilesOutputSpec

    def _run_interface(self, runtime):
        self._results["t1w"] = str(write_template(runtime.cwd, self.inputs.resolution))
        self._results["cerebellar_gm"] = str(write_cerebellar_gm(runtime.cwd, self.inputs.resolution))
        return runtime
