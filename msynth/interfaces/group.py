"""Nipype interfaces of the group level: thin wrappers of :mod:`msynth.analysis.myelin_maps` and
:mod:`msynth.analysis.group_tables`."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from msynth.analysis.group_tables import group_tables, write_group_tables
from msynth.utils.derivatives import atomic_copy
from msynth.analysis.myelin_maps import (
    patient_measures,
    read_reference,
    write_control_reference,
    write_demyelinated_mask,
)


class _ControlReferenceInputSpec(BaseInterfaceInputSpec):
    controls = traits.List(traits.Dict(traits.Str, traits.Str), mandatory=True,
                           desc="per control session: participant_id, session, dvr, wm, csf_distance")
    map_files = InputMultiObject(File(exists=True), mandatory=True,
                                 desc="every file named in controls (so a rerun notices when one changes)")
    source = traits.Str(mandatory=True, desc="DVR source: 'acquired', 'acquired-pvc' or a model name")
    ring_width_mm = traits.Float(mandatory=True, desc="width of a distance-to-CSF ring")
    max_distance_mm = traits.Float(mandatory=True, desc="distance from which voxels share the last ring")
    wm_probability = traits.Float(mandatory=True, desc="WM probability from which a control voxel counts as WM")


class _ControlReferenceOutputSpec(TraitedSpec):
    reference = File(exists=True, desc="threshold (mean - 1 SD) per ring")
    measures = File(exists=True, desc="each control's mean white-matter DVR (long measures)")


class ControlReference(SimpleInterface):
    """Healthy-control DVR threshold by distance to CSF
    (:func:`~msynth.analysis.myelin_maps.write_control_reference`)."""

    input_spec = _ControlReferenceInputSpec
    output_spec = _ControlReferenceOutputSpec

    def _run_interface(self, runtime):
        reference, measures = write_control_reference(
            self.inputs.controls, source=self.inputs.source, newpath=runtime.cwd,
            ring_width_mm=self.inputs.ring_width_mm, max_distance_mm=self.inputs.max_distance_mm,
            wm_probability=self.inputs.wm_probability,
        )
        self._results.update(reference=str(reference), measures=str(measures))
        return runtime


class _DemyelinatedMaskInputSpec(BaseInterfaceInputSpec):
    dvr = File(exists=True, mandatory=True, desc="DVR in space-T1w")
    lesion = File(exists=True, mandatory=True, desc="lesion mask in space-T1w")
    csf_distance = File(exists=True, mandatory=True, desc="distance to CSF (mm) in space-T1w")
    reference = File(exists=True, mandatory=True, desc="control reference of the same DVR source")


class _DemyelinatedMaskOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="demyelinated lesion voxels (uint8) in space-T1w")


class DemyelinatedMask(SimpleInterface):
    """A session's demyelinated lesion voxels (:func:`~msynth.analysis.myelin_maps.write_demyelinated_mask`)."""

    input_spec = _DemyelinatedMaskInputSpec
    output_spec = _DemyelinatedMaskOutputSpec

    def _run_interface(self, runtime):
        self._results["out_file"] = str(write_demyelinated_mask(
            self.inputs.dvr, self.inputs.lesion, self.inputs.csf_distance, self.inputs.reference,
            newpath=runtime.cwd,
        ))
        return runtime


class _PatientMeasuresInputSpec(BaseInterfaceInputSpec):
    participant_id = traits.Str(mandatory=True, desc="sub-<L>")
    baseline = traits.Dict(traits.Str, traits.Str, mandatory=True, desc="baseline maps (see patient_measures)")
    follow_up = traits.Dict(traits.Str, traits.Str, desc="follow-up maps; undefined for a single session")
    follow_up_xfm = File(exists=True, desc="baseline T1w → follow-up T1w rigid transform")
    map_files = InputMultiObject(File(exists=True), mandatory=True,
                                 desc="every file named in baseline and follow_up (a rerun notices when one changes)")
    references = InputMultiObject(File(exists=True), mandatory=True,
                                  desc="control-reference TSVs, one per DVR source (named in their 'source' column)")


class _PatientMeasuresOutputSpec(TraitedSpec):
    measures = File(exists=True, desc="long measures of the patient")


class PatientMeasures(SimpleInterface):
    """Indices, agreement and ROI means of one patient (:func:`~msynth.analysis.myelin_maps.patient_measures`)."""

    input_spec = _PatientMeasuresInputSpec
    output_spec = _PatientMeasuresOutputSpec

    def _run_interface(self, runtime):
        references = {str(read_reference(path)["source"].iloc[0]): path for path in self.inputs.references}
        table = patient_measures(
            participant_id=self.inputs.participant_id, baseline=self.inputs.baseline,
            follow_up=self.inputs.follow_up if isdefined(self.inputs.follow_up) else None,
            follow_up_xfm=self.inputs.follow_up_xfm if isdefined(self.inputs.follow_up_xfm) else None,
            references=references, newpath=runtime.cwd,
        )
        out = f"{runtime.cwd}/measures.tsv"
        table.to_csv(out, sep="\t", index=False, na_rep="n/a")
        self._results["measures"] = out
        return runtime


class _GroupTablesInputSpec(BaseInterfaceInputSpec):
    measures = InputMultiObject(File(exists=True), mandatory=True, desc="long measures of every subject")
    cohort = traits.List(traits.Dict, mandatory=True, desc="cohort rows (participant_id group age sex edss_t0 …)")
    references = InputMultiObject(File(exists=True), mandatory=True, desc="control-reference TSV of each source")
    parameters = traits.Dict(mandatory=True, desc="analysis parameters, recorded in every sidecar")


class _GroupTablesOutputSpec(TraitedSpec):
    out_files = traits.List(File(exists=True), desc="the TSVs and their JSON dictionaries")
    out_dir = traits.Directory(exists=True, desc="folder holding them")


class GroupTables(SimpleInterface):
    """The group TSVs (:func:`~msynth.analysis.group_tables.group_tables`)."""

    input_spec = _GroupTablesInputSpec
    output_spec = _GroupTablesOutputSpec

    def _run_interface(self, runtime):
        measures = pd.concat([pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False,
                                          dtype={"session": str, "source": str, "note": str})
                              for path in self.inputs.measures], ignore_index=True)
        measures[["session", "source", "note"]] = measures[["session", "source", "note"]].fillna("")
        reference = pd.concat([read_reference(path) for path in self.inputs.references], ignore_index=True)
        tables = group_tables(measures, pd.DataFrame(self.inputs.cohort), reference)
        out_dir = f"{runtime.cwd}/group"
        self._results["out_files"] = [str(p) for p in write_group_tables(tables, measures, newpath=out_dir,
                                                                         parameters=self.inputs.parameters)]
        self._results["out_dir"] = out_dir
        return runtime


class _GroupDataSinkInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True, desc="group tables, sidecars and report")
    base_directory = traits.Directory(mandatory=True, desc="root of the (staging) derivatives tree")


class _GroupDataSinkOutputSpec(TraitedSpec):
    out_files = traits.List(File(exists=True), desc="the files under <base_directory>/group/")


class GroupDataSink(SimpleInterface):
    """File the group outputs under ``<base_directory>/group/`` by their names."""

    input_spec = _GroupDataSinkInputSpec
    output_spec = _GroupDataSinkOutputSpec

    def _run_interface(self, runtime):
        folder = Path(self.inputs.base_directory) / "group"
        outputs = []
        for path in map(Path, self.inputs.in_files):
            atomic_copy(path, folder / path.name)
            outputs.append(str(folder / path.name))
        self._results["out_files"] = outputs
        return runtime


class _GroupReportInputSpec(BaseInterfaceInputSpec):
    group_dir = traits.Directory(exists=True, mandatory=True, desc="folder of the group TSVs")
    overlays = traits.List(traits.Dict, desc="PatientOverlay fields per patient (paths as strings)")
    methods = traits.Str(mandatory=True, desc="methods text")
    messages = traits.List(traits.Str, desc="what could not be computed, known when the workflow was built")
    masks = InputMultiObject(File(exists=True), desc="the demyelinated masks the overlays show (to wait for them)")


class _GroupReportOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="report.html")


class GroupReport(SimpleInterface):
    """The self-contained HTML group report (:func:`msynth.reports.group.write_group_report`)."""

    input_spec = _GroupReportInputSpec
    output_spec = _GroupReportOutputSpec

    def _run_interface(self, runtime):
        from msynth.reports.group import PatientOverlay, write_group_report

        overlays = [PatientOverlay(**{key: (Path(value) if key.endswith(("t1w", "_mask")) else value) if value
                                      else None for key, value in fields.items()}) for fields in self.inputs.overlays]
        reasons = json.loads((Path(self.inputs.group_dir) / "myelin_indices.json").read_text()).get("NotAvailable", {})
        messages = [*self.inputs.messages, *(f"{key}: n/a ({why})" for key, why in reasons.items())]
        self._results["out_file"] = str(write_group_report(
            Path(self.inputs.group_dir), overlays=overlays, methods=self.inputs.methods, messages=messages,
            out_file=Path(runtime.cwd) / "report.html",
        ))
        return runtime
