"""The group report: numbers from the TSVs, embedded figures only, overlays, and a look in headless Chromium."""

from __future__ import annotations

import doctest
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from _browser import needs_chromium, screenshot
from msynth.reports import group_figures, html as report_html
from msynth.reports.group import PatientOverlay, write_group_report
from msynth.reports.group_figures import lesion_slices, overlay_labels

MODEL = "sketch-refine"
PATIENTS = [f"sub-P0{i}" for i in range(1, 7)]
CONTROLS = ["sub-C01", "sub-C02"]
IMG = '<img src="data:image/png;base64,'
INDICES = ["pct_demyelinated_t0", "pct_demyelinated_t1", "global_index", "dynamic_demyelination",
           "dynamic_remyelination"]


def _write_tsv(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, sep="\t", index=False, na_rep="n/a")


def _group_tables(group_dir: Path, models: list[str]) -> None:
    """Hand-made group TSVs: 2 controls, 6 patients, sub-P06 with one session (its t1 indices n/a)."""
    rng = np.random.default_rng(7)
    group_dir.mkdir(parents=True)
    _write_tsv(pd.DataFrame({
        "participant_id": CONTROLS + PATIENTS, "group": ["HC"] * 2 + ["MS"] * 6,
        "age": [31, 44, 41, 29, 52, 38, 47, 35], "sex": list("FMFFMFMF"),
        "edss_t0": [np.nan, np.nan, 3.5, 1.0, 6.0, 2.5, 4.5, 2.0],
        "t2_lesion_load_mm3": [0, 0, 12345.6, 4800, 22010, 7650, 15300, 3900],
        "n_sessions": [2, 2, 2, 2, 2, 2, 2, 1]}), group_dir / "cohort.tsv")
    rows = []
    for shift, source in enumerate(["acquired", *models]):
        for i, participant in enumerate(PATIENTS):
            t0, t1 = 35.27 + 4 * i + shift, 31.0 + 3 * i + shift
            rows.append({"participant_id": participant, "source": source, "lesion_voxels_t0": 40 + 5 * i,
                         "pct_demyelinated_t0": t0, "pct_demyelinated_t1": t1, "global_index": t1 - t0,
                         "dynamic_demyelination": 8.0 + i, "dynamic_remyelination": 20.0 + 3 * i - shift})
    indices = pd.DataFrame(rows)
    indices.loc[indices["participant_id"] == "sub-P06", INDICES[1:]] = np.nan
    _write_tsv(indices, group_dir / "myelin_indices.tsv")
    regression = [{"source": source, "index": index, "n": 5, "coef": coef, "se": 0.085, "t": -2.75, "p": p,
                   "beta_std": beta}
                  for source in ["acquired", *models]
                  for index, coef, p, beta in [("dynamic_demyelination", 0.0904, 0.578, 0.2163),
                                               ("dynamic_remyelination", -0.2331, 0.0213, -0.7031)]]
    _write_tsv(pd.DataFrame(regression), group_dir / "edss_regression.tsv")
    if not models:
        return
    _write_tsv(pd.DataFrame([{"participant_id": participant, "source": model, "dice_t0": 0.873 - 0.01 * i,
                              "dice_t1": 0.851, "dice_dynamic_demyelination": 0.712,
                              "dice_dynamic_remyelination": np.nan if participant == "sub-P06" else 0.694}
                             for model in models for i, participant in enumerate(PATIENTS)]),
               group_dir / "agreement.tsv")
    quantities = {"dvr_lesion": PATIENTS, "dvr_nawm": PATIENTS, "dvr_control_wm": CONTROLS,
                  "pct_demyelinated_t0": PATIENTS}
    _write_tsv(pd.DataFrame([{"source": model, "quantity": quantity, "n": len(members), "bias": -0.0237,
                              "sd": 0.0412, "lower": -0.1045, "upper": 0.0571, "t": -1.41, "p_ttest": 0.2178,
                              "p_wilcoxon": 0.0004}
                             for model in models for quantity, members in quantities.items()]),
               group_dir / "bland_altman.tsv")
    points = [{"participant_id": participant, "session": "", "source": model, "quantity": quantity,
               "acquired": (value := 1.0 + rng.normal(0, 0.1)), "synthetic": value + rng.normal(-0.02, 0.04)}
              for model in models for quantity, members in quantities.items() for participant in members]
    _write_tsv(pd.DataFrame(points), group_dir / "bland_altman_points.tsv")


def _patient_images(folder: Path, label: str, *, with_synthetic: bool) -> PatientOverlay:
    """The MNI T1 template at 4 mm with three spherical WM lesions; acquired and synthetic demyelination inside."""
    from nilearn.datasets import load_mni152_template

    template = load_mni152_template(resolution=4)
    t1w = np.asarray(template.dataobj, dtype=np.float32)
    t1w[t1w < 0.01] = 0  # the template's sub-normal values outside the head
    grid = np.indices(t1w.shape)
    lesion = np.zeros(t1w.shape, bool)
    for centre in [(18, 30, 30), (32, 33, 28), (20, 24, 22)]:
        lesion |= sum((grid[axis] - c) ** 2 for axis, c in enumerate(centre)) <= 6
    # the lesion at z = 22 stays myelinated; in the others, rows of y alternate between the overlay's classes
    demyelinated = lesion & (grid[2] >= 25)
    acquired, synthetic = demyelinated & (grid[1] % 3 != 0), demyelinated & (grid[1] % 3 != 1)
    paths = {}
    for name, volume in [("T1w", t1w), ("lesion", lesion), ("acquired", acquired), ("synthetic", synthetic)]:
        paths[name] = folder / f"sub-{label}_{name}.nii.gz"
        nb.save(nb.Nifti1Image(volume.astype(np.float32 if name == "T1w" else np.uint8), template.affine),
                paths[name])
    return PatientOverlay(participant_id=f"sub-{label}", session="01", t1w=paths["T1w"],
                          lesion_mask=paths["lesion"], acquired_mask=paths["acquired"],
                          synthetic_mask=paths["synthetic"] if with_synthetic else None,
                          synthetic_source=MODEL if with_synthetic else None)


@pytest.fixture(scope="module")
def overlays(tmp_path_factory) -> list[PatientOverlay]:
    folder = tmp_path_factory.mktemp("overlays")
    return [_patient_images(folder, "P01", with_synthetic=True), _patient_images(folder, "P02", with_synthetic=False)]


@pytest.fixture(scope="module")
def report(tmp_path_factory, overlays) -> Path:
    group_dir = tmp_path_factory.mktemp("out") / "group"
    _group_tables(group_dir, [MODEL])
    return write_group_report(group_dir, overlays=overlays, methods="Indices after Bodini et al.\n\nOLS per index.",
                              messages=["sub-P06: one session, so its t1 indices are n/a"])


def test_numbers_of_the_tsvs_appear_formatted(report):
    text = report.read_text()
    for expected in ["<td>-0.703</td>", "<td>0.021*</td>", "<td>0.578</td>", "<td>-0.233</td>",  # regression
                     "<td>-0.0237</td>", "<td>-0.1045</td>", "<td>0.0571</td>",  # Bland-Altman bias and limits
                     "<td>0.218</td>", "<td>&lt;0.001*</td>",  # and its paired tests
                     "<td>0.87</td>", "<td>0.82</td>",  # Dice t0 of sub-P01 and sub-P06
                     "<td>35.3</td>", "<td>12346</td>", "<td class=\"text\">sub-P06</td>",  # indices and cohort
                     "8 participants (6 MS, 2 HC)", "Dice t0 (acquired vs sketch-refine) = 0.87",
                     "sub-P02 ses-01: no synthetic demyelination mask", "OLS per index.",
                     "sub-P06: one session, so its t1 indices are n/a", "Bodini B, Veronese M",
                     "the reasons are in group/myelin_indices.json", "the reasons are in group/agreement.json"]:
        assert expected in text, expected
    assert "group/edss_regression.json" not in text  # no n/a in that table, so no note
    # sub-P06's four t1 indices and its dynamic-remyelination Dice, in both sources' rows
    assert text.count("<td>n/a</td>") == 2 * 4 + 1 + 2  # + the controls' missing EDSS


def test_figures_are_embedded_and_nothing_is_fetched(report):
    text = report.read_text()
    # index box plots + one Bland-Altman figure per model + EDSS + one overlay per patient
    assert text.count(IMG) == 1 + 1 + 1 + 2
    assert "http" not in text and "<script" not in text and "<link" not in text
    assert not re.search(r'src="(?!data:image/png;base64,)', text)
    assert text.isascii()


@pytest.mark.parametrize("models, n_images", [([], 1 + 0 + 1), ([MODEL, "cfsagan"], 1 + 2 + 1)])
def test_number_of_synthetic_sources(tmp_path, models, n_images):
    """Box plots, one Bland-Altman figure per model, EDSS; no overlay requested."""
    _group_tables(tmp_path / "group", models)
    text = write_group_report(tmp_path / "group").read_text()
    assert text.count(IMG) == n_images
    assert ("No synthetic DVR source" in text) == (not models)
    assert "No patient overlay was requested." in text


def test_missing_inputs_become_sentences(tmp_path):
    (tmp_path / "group").mkdir()
    (tmp_path / "group" / "edss_regression.tsv").write_text("source\tindex\tn\tcoef\tse\tt\tp\tbeta_std\n")
    missing = PatientOverlay("sub-P09", "01", tmp_path / "t1w.nii.gz", tmp_path / "lesion.nii.gz",
                             tmp_path / "acquired.nii.gz")
    text = write_group_report(tmp_path / "group", overlays=[missing]).read_text()
    assert IMG not in text
    for sentence in ["group/cohort.tsv not written", "group/myelin_indices.tsv not written",
                     "group/edss_regression.tsv has no row: no regression could be fitted", "sub-P09 ses-01: no overlay, missing T1w t1w.nii.gz",
                     "No methods text was provided.", "No message: every stage of the group level ran."]:
        assert sentence in text, sentence


def test_overlay_on_another_grid_is_refused(tmp_path, overlays):
    small = tmp_path / "small.nii.gz"
    nb.save(nb.Nifti1Image(np.ones((4, 4, 4), np.uint8), np.eye(4)), small)
    (tmp_path / "group").mkdir()
    with pytest.raises(ValueError, match=r"small.nii.gz \(shape \(4, 4, 4\)\) is not on the grid of the T1w"):
        write_group_report(tmp_path / "group", overlays=[PatientOverlay(
            "sub-P01", "01", overlays[0].t1w, overlays[0].lesion_mask, small)])


def test_overlay_paths_follow_the_derivatives_names(tmp_path):
    synthetic = tmp_path / "sub-01/ses-1/pet/sub-01_ses-1_trc-PIB_space-T1w_desc-synthdemyelinated_mask.nii.gz"
    overlay = PatientOverlay.from_derivatives(tmp_path, "01", "1", MODEL)
    assert overlay.t1w == tmp_path / "sub-01/ses-1/anat/sub-01_ses-1_space-T1w_desc-preproc_T1w.nii.gz"
    assert overlay.lesion_mask.name == "sub-01_ses-1_space-T1w_label-lesion_mask.nii.gz"
    assert overlay.acquired_mask.name == "sub-01_ses-1_trc-PIB_space-T1w_desc-demyelinated_mask.nii.gz"
    assert overlay.synthetic_mask is None
    synthetic.parent.mkdir(parents=True)
    synthetic.touch()
    assert PatientOverlay.from_derivatives(tmp_path, "01", "1", MODEL).synthetic_mask == synthetic


def test_lesion_slices_and_overlay_classes():
    lesion = np.zeros((3, 3, 10), bool)
    lesion[:, :, 2] = True  # 9 voxels
    lesion[0, 0, 6] = lesion[1, 1, 8] = True  # 1 voxel each: cumulative 9, 10, 11 at slices 2, 6, 8
    assert lesion_slices(lesion, 1) == [2]  # 5.5 of 11
    assert lesion_slices(lesion, 4) == [2, 6]  # 1.375, 4.125, 6.875 → slice 2; 9.625 → slice 6
    assert lesion_slices(np.zeros((2, 2, 2), bool), 3) == []
    with pytest.raises(ValueError, match="n_slices must be at least 1, got 0"):
        lesion_slices(lesion, 0)
    labels = overlay_labels(lesion, lesion & (np.arange(10) < 5), lesion & (np.arange(10) > 4))
    assert np.bincount(labels.ravel(), minlength=5).tolist() == [79, 0, 9, 2, 0]
    with pytest.raises(ValueError, match="must have one shape"):
        overlay_labels(lesion, lesion[..., :5])


def test_doctests_of_the_report_modules():
    for module in (report_html, group_figures):
        assert doctest.testmod(module).failed == 0


def test_report_modules_do_not_load_torch():
    code = "import sys, msynth.reports.group; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@needs_chromium
def test_report_renders_in_headless_chromium(report, tmp_path):
    pixels = screenshot(report, tmp_path)
    assert pixels.shape == (3000, 1200, 3)
    assert np.mean(np.any(pixels < 245, axis=-1)) > 0.05  # not a blank page (tables and plots: 0.14)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500  # rendered plots, not only text
    orange = np.all(np.abs(pixels.astype(int) - [255, 127, 14]) <= 12, axis=-1)  # tab:orange: acquired PET points
    assert orange.sum() > 50
