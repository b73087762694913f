"""Participant level end to end on a tiny dataset: outputs, validation, reruns, failure isolation."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from nilearn.datasets import load_mni152_brain_mask

from msynth.cli import run as cli
from msynth.utils.validation import errors_of, run_validator

from conftest import write_tiny_bids


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _bias_field(shape: tuple[int, ...]) -> np.ndarray:
    """A smooth multiplicative field from 0.7 to 1.3 along the first axis and 0.85–1.15 along the last."""
    x = np.linspace(-1, 1, shape[0])[:, None, None]
    z = np.linspace(-1, 1, shape[2])[None, None, :]
    return (1 + 0.3 * x) * (1 + 0.15 * z)


@pytest.fixture(scope="module")
def biased_run(tmp_path_factory):
    """One participant whose T1w carries a known bias field, processed once; returns the folders."""
    root = tmp_path_factory.mktemp("participant")
    bids = write_tiny_bids(root / "bids", {"01": ["1"]})
    t1w_path = bids / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T1w.nii.gz"
    t1w = nb.load(t1w_path)
    data = np.asarray(t1w.dataobj, dtype=np.float32)
    nb.save(nb.Nifti1Image(data * _bias_field(data.shape).astype(np.float32), t1w.affine, t1w.header), t1w_path)
    argv = [str(bids), str(root / "out"), "participant", "-w", str(root / "work"), "--nprocs", "1"]
    assert cli.main(argv) == 0
    return {"bids": bids, "out": root / "out", "work": root / "work", "argv": argv, "truth": data}


def _anat(out: Path) -> Path:
    return out / "sub-01" / "ses-1" / "anat"


def test_brain_mask_matches_the_template_mask(biased_run):
    mask = nb.load(_anat(biased_run["out"]) / "sub-01_ses-1_space-T1w_desc-brain_mask.nii.gz")
    truth = load_mni152_brain_mask(resolution=4)
    assert mask.shape == truth.shape and np.allclose(mask.affine, truth.affine)
    assert _dice(np.asarray(mask.dataobj) > 0, truth.get_fdata() > 0) >= 0.9


def test_n4_removes_the_planted_bias(biased_run):
    """Inside the brain the corrected T1w is proportional to the unbiased image; the raw one is not."""
    anat = _anat(biased_run["out"])
    corrected = nb.load(anat / "sub-01_ses-1_space-T1w_desc-preproc_T1w.nii.gz").get_fdata()
    raw = nb.load(biased_run["bids"] / "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz").get_fdata()
    truth = biased_run["truth"]
    brain = nb.load(anat / "sub-01_ses-1_space-T1w_desc-brain_mask.nii.gz").get_fdata() > 0
    brain &= truth > np.percentile(truth[brain], 25)  # leave out dim voxels, where noise dominates the ratio
    ratio_spread = {
        name: np.std(image[brain] / truth[brain]) / np.mean(image[brain] / truth[brain])
        for name, image in (("raw", raw), ("corrected", corrected))
    }
    assert ratio_spread["raw"] > 0.1
    assert ratio_spread["corrected"] < 0.5 * ratio_spread["raw"]


def test_sidecars_and_dataset_description(biased_run):
    out = biased_run["out"]
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "msynth"
    assert description["SourceDatasets"] == [{"URL": biased_run["bids"].resolve().as_uri()}]
    sidecar = json.loads((_anat(out) / "sub-01_ses-1_space-T1w_desc-preproc_T1w.json").read_text())
    assert sidecar["SpatialReference"] == "bids:raw:sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"
    assert sidecar["SkullStripped"] is True
    assert sidecar["BiasCorrection"]["shrink_factor"] == 2  # 4 mm voxels, fitted on an 8 mm grid
    configs = list((out / "logs").glob("msynth-*_config.json"))
    assert len(configs) == 1 and json.loads(configs[0].read_text())["participants"] == ["01"]


def test_derivatives_pass_the_bids_validator(biased_run):
    issues = run_validator(biased_run["out"])
    assert errors_of(issues) == []


def test_rerun_recomputes_nothing(biased_run):
    results = sorted(biased_run["work"].rglob("result_*.pklz"))
    heavy = [p for p in results if p.parent.name in ("brain_extraction", "n4_correction")]
    assert len(heavy) == 2
    before = {p: p.stat().st_mtime_ns for p in heavy}
    assert cli.main(biased_run["argv"]) == 0
    assert {p: p.stat().st_mtime_ns for p in heavy} == before


def test_failing_participant_is_isolated(tmp_path, capsys):
    """A truncated T1w fails its participant before any work; a node crash fails another; sub-01 finishes."""
    bids = write_tiny_bids(tmp_path / "bids", {"01": ["1"], "02": ["1"], "03": ["1"]})
    truncated = bids / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T1w.nii.gz"
    truncated.write_bytes(truncated.read_bytes()[:2000])
    empty = bids / "sub-03" / "ses-1" / "anat" / "sub-03_ses-1_T1w.nii.gz"  # passes the checks, no tissue to segment
    image = nb.load(empty)
    data = np.zeros(image.shape, np.float32)
    data[20, 20, 20] = 1000
    nb.save(nb.Nifti1Image(data, image.affine), empty)
    before = {p: p.stat().st_mtime_ns for p in bids.rglob("*")}

    out = tmp_path / "out"
    argv = [str(bids), str(out), "participant", "-w", str(tmp_path / "work"), "--nprocs", "1",
            "--skip-bids-validation"]
    assert cli.main(argv) == 1

    assert (out / "sub-01/ses-1/anat/sub-01_ses-1_space-T1w_desc-preproc_T1w.nii.gz").is_file()
    assert not list((out / "sub-02").rglob("*.nii.gz")) and not list((out / "sub-03").rglob("*.nii.gz"))
    summary = capsys.readouterr().err
    assert "participant level: 1 of 3 participants finished" in summary
    assert "sub-02 FAILED: sub-02 ses-1: T1w cannot be read" in summary and "truncated or corrupt" in summary
    assert "sub-03 FAILED:" in summary
    (error_report,) = (out / "sub-02" / "log").glob("*/error.txt")
    assert str(truncated) in error_report.read_text()
    (crash_report,) = (out / "sub-03" / "log").glob("*/crash-*.txt")
    assert "Traceback" in crash_report.read_text()
    assert not list((out / ".msynth-staging").glob("*_sub-0[23]")), "a failed participant's staging was left"
    assert {p: p.stat().st_mtime_ns for p in bids.rglob("*")} == before, "the input dataset was written to"
    assert errors_of(run_validator(out)) == []


def test_participant_without_the_requested_session_is_not_a_failure(tmp_path, capsys):
    bids = write_tiny_bids(tmp_path / "bids", {"01": ["1", "2"], "02": ["1"]})
    out = tmp_path / "out"
    argv = [str(bids), str(out), "participant", "-w", str(tmp_path / "work"), "--session-label", "2",
            "--nprocs", "1", "--skip-bids-validation"]
    assert cli.main(argv) == 0
    assert "participant level: 2 of 2 participants finished" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "sub-01").iterdir()) == ["figures", "ses-2"]  # figures: its report's
    assert not (out / "sub-02").exists() and not (out / "sub-02.html").exists()


@pytest.mark.parametrize(("values", "message"), [
    (lambda shape: np.where(np.indices(shape)[0] < 3, 2.0, 0.0), "lesion mask is not binary"),
    (lambda shape: np.where(np.indices(shape)[0] < 3, 1.0, 0.0) * np.nan, "NaN"),
])
def test_bad_given_lesion_mask_fails_its_participant(tmp_path, capsys, values, message):
    """A given mask that is not a usable lesion mask stops its participant before any work, naming the file."""
    bids = write_tiny_bids(tmp_path / "bids", {"01": ["1"]})
    t1w = nb.load(bids / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T1w.nii.gz")
    mask = tmp_path / "lesions" / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_space-T1w_label-lesion_mask.nii.gz"
    mask.parent.mkdir(parents=True)
    nb.Nifti1Image(values(t1w.shape).astype(np.float32), t1w.affine).to_filename(mask)
    argv = [str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"), "--skip-bids-validation",
            "--lesion-masks", str(tmp_path / "lesions")]
    assert cli.main(argv) == 1
    summary = capsys.readouterr().err
    assert "sub-01 FAILED:" in summary and message in summary and mask.name in summary
