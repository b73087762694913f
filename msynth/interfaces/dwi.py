"""Nipype interface of the tensor fit."""

from __future__ import annotations

from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits

from msynth.preprocessing.checks import B0_THRESHOLD
from msynth.preprocessing.dti import fit_dti

#: Scalar maps of the tensor, in the order the workflow writes them.
DTI_PARAMETERS = ("FA", "RD", "AD", "MD")


class _DTIFitInputSpec(BaseInterfaceInputSpec):
    dwi = File(exists=True, mandatory=True, desc="4-D diffusion series")
    bval = File(exists=True, mandatory=True, desc="BIDS .bval")
    bvec = File(exists=True, mandatory=True, desc="BIDS .bvec")
    label = traits.Str("DWI", usedefault=True, desc="prefix of error messages (subject, session, key)")


class _DTIFitOutputSpec(TraitedSpec):
    maps = traits.List(File(exists=True), desc="FA, RD, AD, MD on the DWI grid, in DTI_PARAMETERS order")
    b0 = File(exists=True, desc="mean b=0 image")
    mask = File(exists=True, desc="b=0 brain mask the tensor was fitted in")
    metadata = traits.Dict(desc="fit parameters, for the sidecars")


class DTIFit(SimpleInterface):
    """Weighted least-squares tensor fit with dipy; see :func:`msynth.preprocessing.dti.fit_dti`."""

    input_spec = _DTIFitInputSpec
    output_spec = _DTIFitOutputSpec

    def _run_interface(self, runtime):
        result = fit_dti(self.inputs.dwi, self.inputs.bval, self.inputs.bvec, newpath=runtime.cwd,
                         label=self.inputs.label)
        files = {"FA": result.fa, "RD": result.rd, "AD": result.ad, "MD": result.md}
        self._results["maps"] = [str(files[key]) for key in DTI_PARAMETERS]
        self._results["b0"] = str(result.b0)
        self._results["mask"] = str(result.mask)
        self._results["metadata"] = {
            "Model": {"Name": "diffusion tensor", "FitMethod": "WLS (dipy TensorModel)", "B0Threshold": B0_THRESHOLD},
        }
        return runtime
