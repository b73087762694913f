"""Nipype interfaces for image synthesis with a trained model, its saliency maps, and its evaluation."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

import pandas as pd

from msynth.analysis.evaluation import dvr_metrics, synthesis_metrics
from msynth.utils.provenance import cpu_fallbacks, file_sha256, model_reference, software_versions, with_ids

LOGGER = logging.getLogger("msynth.models")


class _SynthesizeInputSpec(BaseInterfaceInputSpec):
    model_dir = traits.Directory(exists=True, mandatory=True, desc="model folder (model_card.json, model.pt)")
    model_files = InputMultiObject(File(exists=True), desc="the model's card and weights: hashed with the node's "
                                   "inputs, so a model retrained into the same folder is run again, not reused")
    keys = traits.List(traits.Str, mandatory=True,
                       desc="input channel of each file, in order (a modality key; DWI as FA, RD and AD)")
    in_files = InputMultiObject(File(exists=True), mandatory=True, desc="input images on the brain mask's grid")
    brain_mask = File(exists=True, mandatory=True, desc="brain mask; its grid is the output's")
    device = traits.Enum("auto", "cpu", "cuda", usedefault=True, desc="where the network runs")
    saliency = traits.Bool(False, usedefault=True,
                           desc="also write the P3S map of each input and the map of each CF-SAGAN attention layer")
    companion_entities = traits.Dict(traits.Str, traits.Str,
                                     desc="entities every saliency map's name shares (tracer, space); each adds a desc")
    target = File(exists=True, desc="the acquired output image, for the P3S maps (paper 001, eq. 3)")
    omp_nthreads = traits.Int(1, usedefault=True, desc="torch CPU threads")


class _SynthesizeOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="synthetic image")
    saliency_files = traits.List(File(exists=True),
                                 desc="P3S maps, one per input channel in the card's order, then attention maps, one "
                                      "per attention layer of each stage (none for a model without attention layers)")
    saliency_entities = traits.List(traits.Dict(traits.Str, traits.Str),
                                    desc="name entities of each saliency map: companion_entities and its desc")
    saliency_metadata = traits.List(traits.Dict, desc="sidecar of each saliency map (its Description)")
    metadata = traits.Dict(desc="model, device used and software versions, for the sidecar")


class SynthesizeImage(SimpleInterface):
    """Run a model card's network over its input images (:func:`msynth.models.inference.synthesize`).

    The sidecar records the device the network ran on (``auto`` resolved; ``cpu`` after a CUDA out-of-memory
    fallback of the synthesis, which ``OutOfMemoryFallback`` then says), the model folder by its portable name and
    its weights by their SHA-256 (:mod:`msynth.utils.provenance`), and the versions of msynth, torch and MONAI.
    """

    input_spec = _SynthesizeInputSpec
    output_spec = _SynthesizeOutputSpec

    def _run_interface(self, runtime):
        import torch  # imported by the node that needs it: importing torch takes seconds

        from msynth.models.card import TARGETS, channels_of, read_card
        from msynth.models.inference import on_cpu_after_out_of_memory, select_device, synthesize
        from msynth.models.saliency import (ATTENTION_DESCRIPTION, P3S_DESCRIPTION, write_attention_maps,
                                            write_p3s_maps)

        torch.set_num_threads(self.inputs.omp_nthreads)
        images = dict(zip(self.inputs.keys, self.inputs.in_files, strict=True))
        card = read_card(self.inputs.model_dir)
        device = select_device(self.inputs.device)
        with cpu_fallbacks() as fallbacks:
            self._results["out_file"] = str(synthesize(self.inputs.model_dir, images, self.inputs.brain_mask,
                                                       newpath=runtime.cwd, device=str(device), progress=False))
        saliency = []  # (file, desc, Description) of each map
        if self.inputs.saliency:
            target = self.inputs.target if isdefined(self.inputs.target) else None
            p3s = on_cpu_after_out_of_memory(
                lambda on: write_p3s_maps(self.inputs.model_dir, images, self.inputs.brain_mask, newpath=runtime.cwd,
                                          target=target, device=str(on)),
                device, "CUDA ran out of memory in the P3S saliency maps; computing them on the CPU instead (--device "
                "cpu avoids this)")
            attention = on_cpu_after_out_of_memory(
                lambda on: write_attention_maps(self.inputs.model_dir, images, self.inputs.brain_mask,
                                                newpath=runtime.cwd, device=str(on)),
                device, "CUDA ran out of memory in the attention maps; computing them on the CPU instead (--device cpu "
                "avoids this)")
            saliency = [(p3s[channel], f"P3S{channel}", P3S_DESCRIPTION) for channel in channels_of(card.inputs)]
            saliency += [(path, f"attention{label}", ATTENTION_DESCRIPTION.format(label=label))
                         for label, path in attention.items()]
        shared = self.inputs.companion_entities if isdefined(self.inputs.companion_entities) else {}
        self._results["saliency_files"] = [str(path) for path, _, _ in saliency]
        self._results["saliency_entities"] = [{**shared, "desc": desc} for _, desc, _ in saliency]
        self._results["saliency_metadata"] = [{"Description": description} for _, _, description in saliency]
        model_dir = Path(self.inputs.model_dir)
        self._results["metadata"] = {
            "Model": {"Name": card.name, "Target": TARGETS[card.target].channel, "Inputs": card.inputs,
                      "Stages": [{"Name": stage.name, "Architecture": stage.network.architecture}
                                 for stage in card.stages],
                      "VoxelSizeMM": card.voxel_size_mm, "Folder": model_reference(model_dir),
                      "WeightsSHA256": {stage.weights: file_sha256(model_dir / stage.weights)
                                        for stage in card.stages}},
            "Inference": {"Device": "cpu" if fallbacks else str(device), "RequestedDevice": self.inputs.device,
                          "OutOfMemoryFallback": bool(fallbacks),
                          "Method": "MONAI sliding windows, Gaussian blending"},
            "Software": software_versions("torch", "MONAI"),
        }
        return runtime


class _MetricsInputSpec(BaseInterfaceInputSpec):
    table_ids = traits.Dict(traits.Str, traits.Str, mandatory=True,
                            desc="participant_id and session_id: the table's first columns")


class _SynthesisMetricsInputSpec(_MetricsInputSpec):
    synthetic = File(exists=True, mandatory=True, desc="synthetic image (space-T1w)")
    acquired = File(exists=True, mandatory=True, desc="the acquired image it predicts (space-T1w)")
    brain_mask = File(exists=True, mandatory=True, desc="brain mask")
    lesion_mask = File(exists=True, desc="lesion mask (contrast ratios)")
    nawm = File(exists=True, desc="normal-appearing white matter")
    surrounding_nawm = File(exists=True, desc="NAWM near the lesions")
    synthetic_lesions = File(exists=True, desc="automatic lesion mask from the synthetic image")
    acquired_lesions = File(exists=True, desc="automatic lesion mask from the acquired image")


class _MetricsOutputSpec(TraitedSpec):
    out_tsv = File(exists=True, desc="the metrics table (BIDS TSV)")


class _MetricsTable(SimpleInterface):
    """Write the table of :attr:`metrics`, called with every input but ``table_ids`` (undefined ones as None), as a
    BIDS TSV whose first columns are ``table_ids``."""

    output_spec = _MetricsOutputSpec
    #: the pure function computing the table from the inputs
    metrics: Callable[..., pd.DataFrame]

    def _run_interface(self, runtime):
        out_tsv = Path(runtime.cwd) / "synthesis_metrics.tsv"
        inputs = {name: getattr(self.inputs, name) if isdefined(getattr(self.inputs, name)) else None
                  for name in self.inputs.copyable_trait_names() if name != "table_ids"}
        table = with_ids(self.metrics(**inputs), self.inputs.table_ids)
        table.to_csv(out_tsv, sep="\t", index=False, na_rep="n/a")
        self._results["out_tsv"] = str(out_tsv)
        return runtime


class SynthesisMetrics(_MetricsTable):
    """MSE, PSNR and SSIM inside the brain; lesion contrast ratios; Dice of automatic lesion masks (paper 001)."""

    input_spec = _SynthesisMetricsInputSpec
    metrics = staticmethod(synthesis_metrics)


class _DVRMetricsInputSpec(_MetricsInputSpec):
    synthetic = File(exists=True, mandatory=True, desc="synthetic DVR map (space-T1w)")
    acquired = File(exists=True, mandatory=True, desc="acquired (Logan) DVR map (space-T1w)")
    brain_mask = File(exists=True, mandatory=True, desc="brain mask")
    wm = File(exists=True, mandatory=True, desc="white-matter probability map (WM of a session without lesions)")
    lesion_mask = File(exists=True, desc="lesion mask")
    nawm = File(exists=True, desc="normal-appearing white matter")


class DVRMetrics(_MetricsTable):
    """MSE, PSNR and per-region mean DVR, discrepancy and Bland-Altman agreement (thesis 003 §3.3)."""

    input_spec = _DVRMetricsInputSpec
    metrics = staticmethod(dvr_metrics)
