"""Nipype interface that files a result into the BIDS-Derivatives tree with its JSON sidecar."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from msynth.utils.derivatives import (atomic_copy, atomic_target, atomic_write_text, derivative_path,
                                      source_entities)

_NIFTI = (".nii.gz", ".nii")
#: Source entities every derivative name keeps; the others come from DESIGN.md's contract, set by each sink.
CONTRACT_ENTITIES = ("sub", "ses")


def write_derivative(
    in_file: Path,
    *,
    base_directory: Path,
    source_file: Path,
    datatype: str,
    suffix: str,
    entities: dict[str, str],
    metadata: dict[str, object],
    keep: tuple[str, ...] = CONTRACT_ENTITIES,
) -> Path:
    """Copy ``in_file`` to its BIDS-Derivatives name under ``base_directory`` and write its sidecar.

    The name keeps the entities of ``source_file`` listed in ``keep`` (subject and session: DESIGN.md's
    names do not carry a raw file's run, reconstruction …) and adds ``entities`` (acq, trc, space, desc,
    label …). NIfTI outputs get spatial units in mm; NIfTI and TSV outputs get a sidecar with ``metadata`` (for a
    TSV, its data dictionary); other files (transforms) are copied as they are, with a sidecar only when ``metadata``
    holds something (the template registration's method and QC score).
    """
    in_file = Path(in_file)
    extension = next((ext for ext in _NIFTI if in_file.name.endswith(ext)), in_file.suffix)
    inherited = {k: v for k, v in source_entities(source_file).items() if k in keep}
    relative = derivative_path({**inherited, **entities}, datatype, suffix, extension)
    target = Path(base_directory) / relative
    if extension in _NIFTI:
        image = nb.load(in_file)
        image.header.set_xyzt_units(xyz="mm", t="sec")
        with atomic_target(target) as tmp:
            nb.save(image, tmp)
    else:
        atomic_copy(in_file, target)
    if extension in (*_NIFTI, ".tsv") or metadata:
        sidecar = target.with_name(target.name[: -len(extension)] + ".json")
        atomic_write_text(sidecar, json.dumps(metadata, indent=2, sort_keys=True, default=str) + "\n")
    return target


class _DerivativesDataSinkInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="the file to publish")
    base_directory = traits.Directory(mandatory=True, desc="root of the (staging) derivatives tree")
    source_file = File(mandatory=True, desc="raw BIDS file whose entities name the output")
    datatype = traits.Enum("anat", "dwi", "pet", usedefault=True, desc="BIDS datatype folder")
    suffix = traits.Str(mandatory=True, desc="BIDS suffix, e.g. T1w, mask, probseg, xfm")
    entities = traits.Dict(traits.Str, traits.Str, desc="entities added to the name (space, desc, label …)")
    keep_entities = traits.List(traits.Str, desc="source entities the name keeps (default: sub, ses)")
    metadata = traits.Dict(desc="sidecar content known when the workflow is built (Sources, SpatialReference …)")
    run_metadata = InputMultiObject(
        traits.Dict, desc="sidecar content computed at run time (parameters used); merged over metadata, in order"
    )


class _DerivativesDataSinkOutputSpec(TraitedSpec):
    out_file = File(desc="the published file")


class DerivativesDataSink(SimpleInterface):
    """File one result under its BIDS-Derivatives name (see :func:`write_derivative`).

    Unlike niworkflows' sink it is cached like any node (no ``_always_run``): ``base_directory`` is a participant's
    staging folder, which outlives the run (:class:`~msynth.utils.derivatives.Staging`), so a rerun with nothing
    changed reruns no sink; a new staging folder (the previous run failed or was killed) changes the hash and reruns
    them all.
    """

    input_spec = _DerivativesDataSinkInputSpec
    output_spec = _DerivativesDataSinkOutputSpec

    def _run_interface(self, runtime):
        metadata = dict(self.inputs.metadata) if isdefined(self.inputs.metadata) else {}
        for extra in self.inputs.run_metadata if isdefined(self.inputs.run_metadata) else []:
            metadata.update(extra)
        self._results["out_file"] = str(
            write_derivative(
                Path(self.inputs.in_file),
                base_directory=Path(self.inputs.base_directory),
                source_file=Path(self.inputs.source_file),
                datatype=self.inputs.datatype,
                suffix=self.inputs.suffix,
                entities=self.inputs.entities if isdefined(self.inputs.entities) else {},
                metadata=metadata,
                keep=tuple(self.inputs.keep_entities) if isdefined(self.inputs.keep_entities) else CONTRACT_ENTITIES,
            )
        )
        return runtime
