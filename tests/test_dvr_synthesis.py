"""DVR synthesis in the participant level and its evaluation (issue 15, item 4).

The participant-level test checks wiring, not accuracy: its DVR model is a freshly initialised tiny Sketcher-Refiner
(two CF-SAGAN generators with 2 maps), saved with a valid schema-2 card. What it checks is where the synthetic DVR
goes (the T1w grid, in DVR units, with its sidecar), that a session without PET gets one, that ``--saliency`` writes
the P3S and attention maps, and that the metrics TSV of a session with PET scores the two images it wrote. The
metrics themselves are checked against hand-computed values.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
import torch

from msynth.analysis.evaluation import DVR_METRICS_COLUMNS, dvr_metrics, dvr_region_row, dvr_regions
from msynth.cli import run as cli
from msynth.models.card import (ModelCard, NetworkSpec, Normalisation, OptimizerSpec, Stage, TrainingRecord,
                                channels_of, hash_subject, write_card)
from msynth.models.networks import build_network
from msynth.models.selection import target_models
from msynth.phantom.cohort import generate_cohort

SUB = "MS01"
MODEL = "tiny-dvr-wiring"
#: the MR images the DVR model does not use: left out to save time (as benchmarks/group_phantom.py does)
SKIPPED_KEYS = {key: {"acquisition": "excluded"} for key in ("T2w", "PDw", "T1SE", "DIR")}


# ----------------------------------------------------------------------------------------------------------------
# the metrics, on hand-computed values
# ----------------------------------------------------------------------------------------------------------------
def test_region_row_against_hand_computed_values():
    synthetic = np.array([1.0, 1.2, 0.9, 1.5])
    acquired = np.array([1.1, 1.0, 0.9, 1.0])
    row = dvr_region_row(synthetic, acquired, np.ones(4, bool), peak=2.0)
    # differences s - a: -0.1, 0.2, 0, 0.5
    assert row["voxels"] == 4
    assert row["mse"] == pytest.approx((0.01 + 0.04 + 0 + 0.25) / 4)  # 0.075
    assert row["psnr"] == pytest.approx(20 * np.log10(2.0) - 10 * np.log10(0.075))  # eq. 3.9
    assert row["mean_acquired"] == pytest.approx(1.0) and row["mean_synthetic"] == pytest.approx(1.15)
    assert row["abs_discrepancy"] == pytest.approx(0.15)
    assert row["mae"] == pytest.approx(0.8 / 4)
    sd = np.std([-0.1, 0.2, 0.0, 0.5], ddof=1)
    assert row["bias"] == pytest.approx(0.15) and row["sd"] == pytest.approx(sd)
    assert row["lower"] == pytest.approx(0.15 - 1.96 * sd) and row["upper"] == pytest.approx(0.15 + 1.96 * sd)


def test_empty_region_has_no_statistics():
    row = dvr_region_row(np.ones(3), np.ones(3), np.zeros(3, bool), peak=1.0)
    assert row["voxels"] == 0 and all(np.isnan(row[name]) for name in DVR_METRICS_COLUMNS[2:])


@pytest.mark.parametrize(("lesion", "nawm", "expected"), [
    (None, None, {"brain": [0, 1, 2, 3, 4], "WM": [0, 1, 2]}),  # no lesion mask: a control's white matter
    ([0, 0, 0, 0, 0], None, {"brain": [0, 1, 2, 3, 4], "WM": [0, 1, 2]}),  # an empty one: the same
    ([1, 0, 0, 0, 1], None, {"brain": [0, 1, 2, 3, 4], "NAWM": [1, 2], "lesion": [0, 4]}),
    ([1, 0, 0, 0, 1], [0, 1, 0, 0, 0], {"brain": [0, 1, 2, 3, 4], "NAWM": [1], "lesion": [0, 4]}),  # given NAWM
])
def test_regions(lesion, nawm, expected):
    brain = np.array([1, 1, 1, 1, 1, 0])
    wm = np.array([0.9, 0.5, 0.7, 0.1, 0.2, 1.0])  # the last voxel is outside the brain
    as_array = (lambda values: None if values is None else np.array([*values, 1]))
    regions = dvr_regions(brain, wm, as_array(lesion), as_array(nawm))
    assert {name: mask.nonzero()[0].tolist() for name, mask in regions.items()} == expected


def _write(path: Path, data: np.ndarray) -> Path:
    nb.Nifti1Image(np.asarray(data, dtype=np.float32), np.eye(4)).to_filename(path)
    return path


def test_dvr_metrics_table(tmp_path):
    """A patient's table: brain, NAWM and lesion rows; the synthetic map is the acquired one + 0.1 in the lesion."""
    shape = (6, 6, 6)
    brain = np.zeros(shape, bool)
    brain[1:5, 1:5, 1:5] = True
    wm = np.where(brain, 0.8, 0.0)
    lesion = np.zeros(shape, bool)
    lesion[2:4, 2:4, 2] = True
    acquired = np.where(brain, 1.0, 0.0) + 0.5 * (np.arange(6)[:, None, None] == 1) * brain  # max 1.5
    synthetic = acquired + 0.1 * lesion
    files = {name: _write(tmp_path / f"{name}.nii.gz", data) for name, data in
             {"synthetic": synthetic, "acquired": acquired, "brain_mask": brain, "wm": wm,
              "lesion_mask": lesion}.items()}
    table = dvr_metrics(**files).set_index("roi")
    assert list(table.index) == ["brain", "NAWM", "lesion"] and list(table.columns) == list(DVR_METRICS_COLUMNS[1:])
    assert table.loc["brain", "mse"] == pytest.approx(4 * 0.01 / 64)
    assert table.loc["brain", "psnr"] == pytest.approx(20 * np.log10(1.5) - 10 * np.log10(4 * 0.01 / 64))
    assert table.loc["lesion", "voxels"] == 4 and table.loc["NAWM", "voxels"] == 60
    assert table.loc["lesion", "bias"] == pytest.approx(0.1) and table.loc["lesion", "sd"] == pytest.approx(0)
    assert table.loc["lesion", "abs_discrepancy"] == pytest.approx(0.1)
    assert table.loc["NAWM", "mse"] == 0 and np.isinf(table.loc["NAWM", "psnr"])


# ----------------------------------------------------------------------------------------------------------------
# the participant level
# ----------------------------------------------------------------------------------------------------------------
def _tiny_dvr_model(folder: Path) -> Path:
    """A freshly initialised Sketcher-Refiner of CF-SAGAN generators (2 maps, 2 blocks) over MTR + DWI, saved with
    its card.

    The target is z-scored with a DVR mean and SD (1.2, 0.3): the synthesis must return DVR units. The Sketcher's
    attention layers have key weights 0: their attention is uniform, and their attention maps 1 in the brain.
    """
    inputs = ("MTR", "DWI")
    n_inputs = len(channels_of(inputs))
    stats = {"MTR": Normalisation(40.0, 8.0), "FA": Normalisation(0.3, 0.15), "RD": Normalisation(6e-4, 2e-4),
             "AD": Normalisation(1.2e-3, 3e-4), "DVR": Normalisation(1.2, 0.3)}

    def stage(name: str, in_channels: int, weights: str) -> Stage:
        network = NetworkSpec("cf-sagan-generator", {"in_channels": in_channels, "features": 2, "blocks": 2,
                                                     "attention_level": 1})
        return Stage(name=name, network=network, loss="l1", optimizer=OptimizerSpec("adam", 1e-4), weights=weights)

    card = ModelCard(
        name=MODEL, target="DVR", inputs=inputs, voxel_size_mm=None, normalisation=stats,
        intensity_normalisation="image",
        stages=(stage("sketcher", n_inputs, "sketcher.pt"), stage("refiner", n_inputs + 1, "refiner.pt")),
        training=TrainingRecord(
            subjects=(hash_subject("01", "salt"),), salt_fingerprint="0" * 64, n_sessions=1,
            data_source="none: untrained (wiring test)", data_license="CC0", data_citation="", command="test",
            seed=0, epochs=1, patch_size=16, early_stopping={"strip_length": 5, "strips": 3}),
    )
    torch.manual_seed(0)
    write_card(card, folder)
    for spec in card.stages:
        state = build_network(spec.network.architecture, spec.network.arguments).state_dict()
        if spec.name == "sketcher":  # f(x) = 0: every logit 0, β = 1/L
            state["encoder_attention.key.weight"].zero_()
            state["decoder_attention.key.weight"].zero_()
        torch.save(state, folder / spec.weights)
    return folder


@pytest.fixture(scope="module")
def dvr_run(tmp_path_factory):
    """One 4 mm phantom patient, two sessions; session 02's PET removed; DVR model, P3S and attention maps."""
    root = tmp_path_factory.mktemp("dvr")
    cohort = generate_cohort(root / "bids", n_controls=0, n_patients=1, voxel_size=4.0, seed=5)
    for path in (cohort.bids_dir / f"sub-{SUB}" / "ses-02" / "pet").iterdir():
        path.unlink()
    model = _tiny_dvr_model(root / MODEL)
    filters = root / "filter.json"
    filters.write_text(json.dumps(SKIPPED_KEYS))
    out = root / "out"
    argv = [str(cohort.bids_dir), str(out), "participant", "-w", str(root / "work"), "--nprocs", "2",
            "--omp-nthreads", "1", "--lesion-masks", str(cohort.lesion_dir), "--bids-filter-file", str(filters),
            "--model", str(model), "--saliency", "--skip-bids-validation"]
    assert cli.main(argv) == 0, f"the participant level failed; see {out}/sub-*/log"
    return cohort, out


def _file(root: Path, session: str, datatype: str, name: str) -> Path:
    return root / f"sub-{SUB}" / f"ses-{session}" / datatype / f"sub-{SUB}_ses-{session}_{name}"


def test_model_choice_is_per_target(tmp_path):
    """``--model`` naming a DVR model: DVR synthesis gets it, FLAIR synthesis none."""
    model = _tiny_dvr_model(tmp_path / MODEL)
    assert target_models("DVR", [model]) == [model] and target_models("FLAIR", [model]) == []


@pytest.mark.parametrize("session", ["01", "02"])
def test_every_session_gets_a_synthetic_dvr_on_the_t1w_grid(dvr_run, session):
    cohort, out = dvr_run
    synthetic = nb.load(_file(out, session, "pet", "trc-PIB_space-T1w_desc-synth_meas-DVR_mimap.nii.gz"))
    t1w = nb.load(_file(cohort.bids_dir, session, "anat", "T1w.nii.gz"))
    assert synthetic.shape == t1w.shape and np.allclose(synthetic.affine, t1w.affine)
    values = synthetic.get_fdata()
    brain = nb.load(_file(out, session, "anat", "space-T1w_desc-brain_mask.nii.gz")).get_fdata() > 0
    assert np.isfinite(values).all() and values.min() >= 0 and not values[~brain].any()
    assert 0 < values[brain].mean() < 10  # DVR units (target mean 1.2), not z-scores
    sidecar = json.loads(_file(out, session, "pet", "trc-PIB_space-T1w_desc-synth_meas-DVR_mimap.json").read_text())
    assert sidecar["Model"]["Name"] == MODEL and sidecar["Model"]["Inputs"] == ["MTR", "DWI"]
    assert [stage["Name"] for stage in sidecar["Model"]["Stages"]] == ["sketcher", "refiner"]
    assert sidecar["SpatialReference"].endswith(f"sub-{SUB}_ses-{session}_T1w.nii.gz")
    assert [Path(source).name for source in sidecar["Sources"]] == [f"sub-{SUB}_ses-{session}_MTRmap.nii.gz",
                                                                   f"sub-{SUB}_ses-{session}_dwi.nii.gz"]
    for channel in ("MTR", "FA", "RD", "AD"):  # P3S maps, one per input channel
        saliency = nb.load(_file(out, session, "pet", f"trc-PIB_space-T1w_desc-P3S{channel}_saliency.nii.gz"))
        assert saliency.shape == t1w.shape and saliency.get_fdata().max() > 0
    for label in ("SketcherEncoder", "SketcherDecoder", "RefinerEncoder", "RefinerDecoder"):  # CF-SAGAN attention
        name = f"trc-PIB_space-T1w_desc-attention{label}_saliency"
        attention = nb.load(_file(out, session, "pet", f"{name}.nii.gz"))
        received = attention.get_fdata()
        assert attention.shape == t1w.shape and np.allclose(attention.affine, t1w.affine) and not received[~brain].any()
        if label.startswith("Sketcher"):  # uniform attention
            np.testing.assert_allclose(received[brain], 1.0, atol=1e-6)
        else:  # the rows of β sum to 1: received attention averages 1 over the volume, about 1 in the brain
            assert received[brain].min() > 0 and received[brain].mean() == pytest.approx(1.0, abs=0.2)
        description = json.loads(_file(out, session, "pet", f"{name}.json").read_text())["Description"]
        assert description.startswith(f"Attention received by each location in the CF-SAGAN attention layer {label}")


def test_metrics_score_the_written_images(dvr_run):
    """Session 01 (PET acquired) has the metrics TSV, its MSE that of the two written images in the brain; session
    02 (no PET) has none."""
    _, out = dvr_run
    table = pd.read_csv(_file(out, "01", "pet", "trc-PIB_space-T1w_desc-synthDVR_metrics.tsv"), sep="\t",
                        na_values="n/a").set_index("roi")
    assert list(table.columns) == ["participant_id", "session_id", *DVR_METRICS_COLUMNS[1:]]
    assert list(table.index) == ["brain", "NAWM", "lesion"] and set(table["session_id"]) == {"ses-01"}

    def data(name: str) -> np.ndarray:
        return nb.load(_file(out, "01", "pet" if "DVR" in name else "anat", name)).get_fdata()

    brain = data("space-T1w_desc-brain_mask.nii.gz") > 0
    synthetic = data("trc-PIB_space-T1w_desc-synth_meas-DVR_mimap.nii.gz")
    acquired = data("trc-PIB_space-T1w_model-Logan_meas-DVR_mimap.nii.gz")
    assert table.loc["brain", "mse"] == pytest.approx(np.mean((synthetic[brain] - acquired[brain]) ** 2), rel=1e-5)
    lesion = data("space-T1w_label-lesion_mask.nii.gz") > 0
    assert table.loc["lesion", "voxels"] == (lesion & brain).sum() > 0
    assert table.loc["lesion", "mean_acquired"] == pytest.approx(acquired[lesion & brain].mean(), rel=1e-5)
    assert json.loads(_file(out, "01", "pet", "trc-PIB_space-T1w_desc-synthDVR_metrics.json").read_text())["psnr"]
    assert not _file(out, "02", "pet", "trc-PIB_space-T1w_desc-synthDVR_metrics.tsv").exists()
