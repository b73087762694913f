"""The participant level on a 4 mm phantom patient, measured against the phantom's truth."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from msynth.analysis.evaluation import synthesis_metrics
from msynth.cli import run as cli
from msynth.preprocessing.registration import apply_transform, mean_displacement_mm, read_affine
from msynth.utils.validation import errors_of, run_validator

SUB, SES = "MS01", "01"
STEM = f"sub-{SUB}_ses-{SES}"
#: The inputs of the FLAIR model of paper 001.
REGISTERED_MR_INPUTS = ("T1w", "T2w", "PDw", "T1SE", "DIR")
#: Lesion Dice of the automatic route at 4 mm (issue 5 asks 0.6; measured at finer grids in benchmarks/lesions.py).
AUTOMATIC_LESION_DICE = 0.5
#: modality key → (datatype, raw file suffix) of the images registered to the T1w.
REGISTERED = {
    "T2w": ("anat", "T2w"), "PDw": ("anat", "PDw"), "FLAIR": ("anat", "FLAIR"), "T1SE": ("anat", "acq-SE_T1w"),
    "DIR": ("anat", "acq-DIR_T2w"), "MTR": ("anat", "MTRmap"), "DWI": ("dwi", "dwi"), "PET": ("pet", "trc-PIB_pet"),
}


@pytest.fixture(scope="module")
def phantom_run(phantom_participants):
    cohort, out, _ = phantom_participants
    return cohort, out


def _path(root: Path, datatype: str, name: str) -> Path:
    return root / f"sub-{SUB}" / f"ses-{SES}" / datatype / f"{STEM}_{name}"


def _data(root: Path, datatype: str, name: str) -> np.ndarray:
    return nb.load(_path(root, datatype, name)).get_fdata()


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_brain_mask_dice(phantom_run):
    cohort, out = phantom_run
    estimate = _data(out, "anat", "space-T1w_desc-brain_mask.nii.gz") > 0
    truth = _data(cohort.truth_dir, "anat", "space-T1w_desc-brain_mask.nii.gz") > 0
    assert _dice(estimate, truth) >= 0.95


def test_registrations_record_their_qc(phantom_run):
    """The template transform's sidecar and a co-registered image's sidecar hold a passed QC score and its metric."""
    _, out = phantom_run
    template = json.loads(_path(out, "anat", "from-MNI152NLin2009aSym_to-T1w_mode-image_xfm.json").read_text())
    assert template["QC"]["Metric"].startswith("Dice") and template["QC"]["Passed"] is True
    assert template["QC"]["Value"] >= template["QC"]["Threshold"] == 0.88
    assert template["Registration"]["Initialization"] == "multi-start" and template["Registration"]["ITKThreads"] == 1
    t2w = json.loads(_path(out, "anat", "space-T1w_desc-preproc_T2w.json").read_text())
    assert t2w["QC"]["Passed"] is True and t2w["QC"]["Value"] >= t2w["QC"]["Threshold"] == 1.025


@pytest.mark.parametrize("key", list(REGISTERED))
def test_registration_within_half_a_voxel(phantom_run, key):
    """Mean displacement over the brain ≤ half the larger of the T1w voxel and the image's own voxel."""
    cohort, out = phantom_run
    datatype, suffix = REGISTERED[key]
    name = f"from-{key}_to-T1w_mode-image_xfm.mat"
    brain = nb.load(_path(cohort.truth_dir, "anat", "space-T1w_desc-brain_mask.nii.gz"))
    error = mean_displacement_mm(read_affine(_path(out, datatype, name)),
                                 read_affine(_path(cohort.truth_dir, datatype, name)), brain)
    own = np.mean(nb.load(_path(cohort.bids_dir, datatype, f"{suffix}.nii.gz")).header.get_zooms()[:3])
    t1w = np.mean(brain.header.get_zooms()[:3])
    assert error <= 0.5 * max(own, t1w)


def test_tissue_contrasts_of_the_maps(phantom_run):
    """FA is higher in white matter than grey; PIB DVR is higher in normal-appearing WM than in GM and lesions."""
    cohort, out = phantom_run
    wm = _data(cohort.truth_dir, "anat", "space-T1w_label-WM_probseg.nii.gz") > 0.9
    gm = _data(cohort.truth_dir, "anat", "space-T1w_label-GM_probseg.nii.gz") > 0.9
    lesion = _data(cohort.truth_dir, "anat", "space-T1w_label-lesion_mask.nii.gz") > 0
    fa = _data(out, "dwi", "space-T1w_model-DTI_param-FA_dwimap.nii.gz")
    dvr = _data(out, "pet", "trc-PIB_space-T1w_model-Logan_meas-DVR_mimap.nii.gz")
    assert np.median(fa[wm & ~lesion]) > 1.5 * np.median(fa[gm])
    assert np.median(dvr[wm & ~lesion]) > np.median(dvr[gm])
    assert np.median(dvr[lesion]) < np.median(dvr[wm & ~lesion])


def test_maps_follow_the_noise_free_truth(phantom_run):
    """Voxel-wise agreement with the noise-free maps (seed 3 gave r = 0.95 for DVR, 0.84 for FA at 4 mm).

    At 4 mm the DWI voxels are 8 mm, so FA in white matter is diluted by partial volume (−27 %); the 1 mm
    benchmark measures the issue's accuracy criteria.
    """
    cohort, out = phantom_run
    brain = _data(cohort.truth_dir, "anat", "space-T1w_desc-brain_mask.nii.gz") > 0
    wm = (_data(cohort.truth_dir, "anat", "space-T1w_label-WM_probseg.nii.gz") > 0.9)
    wm &= _data(cohort.truth_dir, "anat", "space-T1w_label-lesion_mask.nii.gz") == 0
    dvr = _data(out, "pet", "trc-PIB_space-T1w_model-Logan_meas-DVR_mimap.nii.gz")
    true_dvr = _data(cohort.truth_dir, "pet", "trc-PIB_space-T1w_meas-DVR_mimap.nii.gz")
    fa = _data(out, "dwi", "space-T1w_model-DTI_param-FA_dwimap.nii.gz")
    true_fa = _data(cohort.truth_dir, "dwi", "space-T1w_model-DTI_param-FA_dwimap.nii.gz")
    assert np.corrcoef(dvr[brain], true_dvr[brain])[0, 1] > 0.85
    assert dvr[wm].mean() == pytest.approx(true_dvr[wm].mean(), rel=0.15)
    assert np.corrcoef(fa[brain], true_fa[brain])[0, 1] > 0.7


def test_phantom_derivatives_validate(phantom_run):
    assert errors_of(run_validator(phantom_run[1])) == []


def test_target_grid_in_flair_space(phantom_run, tmp_path):
    """space-T1w images reach the raw FLAIR's grid through the inverse of from-FLAIR_to-T1w."""
    from msynth.pipelines.target import init_target_grid_wf

    cohort, out = phantom_run
    raw_flair = _path(cohort.bids_dir, "anat", "FLAIR.nii.gz")
    workflow = init_target_grid_wf(target=raw_flair, native=True)
    workflow.base_dir = str(tmp_path)
    workflow.inputs.inputnode.in_files = [str(_path(out, "anat", "space-T1w_desc-preproc_FLAIR.nii.gz"))]
    workflow.inputs.inputnode.target_xfm = str(_path(out, "anat", "from-FLAIR_to-T1w_mode-image_xfm.mat"))
    (result,) = [n for n in workflow.run().nodes() if n.name == "resample"]
    back = nb.load(result.result.outputs.out_file[0])
    raw = nb.load(raw_flair)
    assert back.shape == raw.shape and np.allclose(back.affine, raw.affine)
    # the round trip T1w → FLAIR grid lands on the acquired FLAIR: strong correlation where the brain was imaged
    inside = back.get_fdata() > 0
    assert np.corrcoef(back.get_fdata()[inside], raw.get_fdata()[inside])[0, 1] > 0.9


def test_target_grid_at_model_voxel_size(phantom_run, tmp_path):
    from msynth.pipelines.target import init_target_grid_wf

    cohort, out = phantom_run
    t1w = _path(cohort.bids_dir, "anat", "T1w.nii.gz")
    workflow = init_target_grid_wf(target=t1w, voxel_size=8.0, interpolation="nearest")
    workflow.base_dir = str(tmp_path)
    mask = _path(out, "anat", "space-T1w_desc-brain_mask.nii.gz")
    workflow.inputs.inputnode.in_files = [str(mask)]
    (result,) = [n for n in workflow.run().nodes() if n.name == "resample"]
    coarse = nb.load(result.result.outputs.out_file[0])
    fine = nb.load(mask)
    assert np.allclose(coarse.header.get_zooms()[:3], 8.0)
    volume = lambda img: (img.get_fdata() > 0).sum() * np.prod(img.header.get_zooms()[:3])  # noqa: E731
    assert volume(coarse) == pytest.approx(volume(fine), rel=0.1)


def test_white_matter_probability_dice(phantom_run):
    """At 4 mm (measured 0.78); tests/test_segmentation.py asserts the issue's 0.85 at 2 mm."""
    cohort, out = phantom_run
    estimate = _data(out, "anat", "space-T1w_label-WM_probseg.nii.gz") >= 0.5
    truth = _data(cohort.truth_dir, "anat", "space-T1w_label-WM_probseg.nii.gz") >= 0.5
    assert _dice(estimate, truth) >= 0.72


def test_automatic_route_is_recorded(phantom_run):
    """No mask given and a FLAIR acquired: the automatic route runs and says so; its table matches its mask.

    At 4 mm (FLAIR slices 12 mm) lesions are barely visible and the automatic mask may be empty; its accuracy is
    measured at 2 mm in tests/test_segmentation.py and at 1 mm in benchmarks/lesions.py.
    """
    _, out = phantom_run
    estimate = _data(out, "anat", "space-T1w_label-lesion_mask.nii.gz") > 0
    assert json.loads(_path(out, "anat", "space-T1w_label-lesion_mask.json").read_text())["LesionMaskSource"] == (
        "automatic")
    table = pd.read_csv(_path(out, "anat", "space-T1w_label-lesion_stats.tsv"), sep="\t")
    voxel_mm3 = np.prod(nb.load(_path(out, "anat", "space-T1w_label-lesion_mask.nii.gz")).header.get_zooms()[:3])
    assert table["volume_mm3"].sum() == pytest.approx(estimate.sum() * voxel_mm3)
    assert json.loads(_path(out, "anat", "space-T1w_label-lesion_stats.json").read_text())["LesionCount"] == len(table)


@pytest.fixture(scope="module")
def given_run(phantom_participants, tiny_flair_model):
    """The same session with the phantom's expert-like FLAIR masks given, a FLAIR model, and saliency maps: the
    preprocessing comes from the work folder, the masks and the synthesis are added."""
    cohort, _, work = phantom_participants
    out = work.parent / "out-given"
    argv = [str(cohort.bids_dir), str(out), "participant", "-w", str(work), "--session-label", SES, "--nprocs", "2",
            "--participant-label", SUB, "--lesion-masks", str(cohort.lesion_dir), "--model", str(tiny_flair_model),
            "--saliency"]
    assert cli.main(argv) == 0
    return cohort, out


def test_given_lesion_mask_reaches_t1w_space(given_run, tmp_path):
    """The FLAIR mask brought in through the estimated transform matches it brought in through the true one.

    At 4 mm a half-voxel registration error moves lesions of a few voxels (measured Dice 0.67); the issue's 0.9 is
    measured at 1 mm by benchmarks/masks.py.
    """
    cohort, out = given_run
    expert = cohort.lesion_dir / f"sub-{SUB}" / f"ses-{SES}" / "anat" / f"{STEM}_space-FLAIR_label-lesion_mask.nii.gz"
    true_xfm = _path(cohort.truth_dir, "anat", "from-FLAIR_to-T1w_mode-image_xfm.mat")
    reference = _path(cohort.bids_dir, "anat", "T1w.nii.gz")
    truth = nb.load(apply_transform(expert, reference, true_xfm, newpath=tmp_path)).get_fdata() >= 0.5
    estimate = _data(out, "anat", "space-T1w_label-lesion_mask.nii.gz") > 0
    assert truth.any() and _dice(estimate, truth) >= 0.6
    sidecar = json.loads(_path(out, "anat", "space-T1w_label-lesion_mask.json").read_text())
    assert sidecar["LesionMaskSource"] == "given" and sidecar["LesionCount"] >= 1


def test_regions_respect_the_lesions(given_run):
    """NAWM never overlaps lesions; surrounding NAWM lies in the NAWM within 5 voxels of a lesion."""
    _, out = given_run
    lesion = _data(out, "anat", "space-T1w_label-lesion_mask.nii.gz") > 0
    nawm = _data(out, "anat", "space-T1w_label-NAWM_mask.nii.gz") > 0
    surrounding = _data(out, "anat", "space-T1w_label-surroundingNAWM_mask.nii.gz") > 0
    assert lesion.any() and nawm.any() and surrounding.any()
    assert not (nawm & lesion).any() and not (surrounding & ~nawm).any()
    assert not (surrounding & ~ndi.binary_dilation(lesion, iterations=5)).any()
    distance = _data(out, "anat", "space-T1w_desc-CSFdistance_map.nii.gz")
    csf = _data(out, "anat", "space-T1w_label-CSF_probseg.nii.gz") >= 0.5
    assert not distance[csf].any() and np.median(distance[nawm]) >= 4.0  # white matter lies a voxel or more from CSF


def test_synthetic_flair_follows_the_acquired_one(given_run):
    """A tiny FCN (8 filters, 4 epochs) already correlates with the acquired FLAIR (measured r = 0.79)."""
    _, out = given_run
    brain = _data(out, "anat", "space-T1w_desc-brain_mask.nii.gz") > 0
    synthetic = _data(out, "anat", "space-T1w_desc-synth_FLAIR.nii.gz")
    acquired = _data(out, "anat", "space-T1w_desc-preproc_FLAIR.nii.gz")
    assert synthetic.min() >= 0 and not synthetic[~brain].any()
    assert np.corrcoef(synthetic[brain], acquired[brain])[0, 1] > 0.6
    sidecar = json.loads(_path(out, "anat", "space-T1w_desc-synth_FLAIR.json").read_text())
    assert sidecar["Model"]["Inputs"] == list(REGISTERED_MR_INPUTS)


def test_synthesis_metrics_and_saliency(given_run):
    _, out = given_run
    metrics = pd.read_csv(_path(out, "anat", "space-T1w_desc-synthFLAIR_metrics.tsv"), sep="\t").iloc[0]
    assert 0 < metrics["mse"] < 1  # z-scored images: below the variance of either
    # the node scores the files it wrote, inside the written brain mask
    written = synthesis_metrics(synthetic=_path(out, "anat", "space-T1w_desc-synth_FLAIR.nii.gz"),
                                acquired=_path(out, "anat", "space-T1w_desc-preproc_FLAIR.nii.gz"),
                                brain_mask=_path(out, "anat", "space-T1w_desc-brain_mask.nii.gz")).iloc[0]
    assert 0 < metrics["ssim"] < 1 and metrics["ssim"] == pytest.approx(written["ssim"], abs=1e-6)
    assert metrics["ratio1_acquired"] > 1 and metrics["ratio2_acquired"] > 1  # lesions are FLAIR-bright
    assert np.isfinite(metrics["ratio1_synthetic"])
    assert np.isnan(metrics["lesion_dice"]) or 0 <= metrics["lesion_dice"] <= 1  # n/a: no automatic lesion at 4 mm
    for key in REGISTERED_MR_INPUTS:
        saliency = _data(out, "anat", f"space-T1w_desc-P3S{key}_saliency.nii.gz")
        assert saliency.min() >= 0 and saliency.max() > 0


def test_given_run_derivatives_validate(given_run):
    assert errors_of(run_validator(given_run[1])) == []


def test_session_without_flair_gets_a_synthetic_one_and_its_lesions(phantom_participants, tmp_path, capsys):
    """A legacy session without FLAIR: a shipped model predicts it, and the automatic lesion mask is drawn on it.

    The model (T1w + T2w, trained at 2 mm) runs on its own grid, and its prediction comes back to the 4 mm T1w grid.
    """
    cohort, _, _ = phantom_participants
    view = tmp_path / "bids"
    for path in cohort.bids_dir.rglob("*"):
        relative = path.relative_to(cohort.bids_dir)
        if path.is_dir() or "FLAIR" in path.name or relative.parts[0] in ("derivatives", "sub-MS02"):
            continue
        (view / relative).parent.mkdir(parents=True, exist_ok=True)
        (view / relative).symlink_to(path)
    out = tmp_path / "out"
    argv = [str(view), str(out), "participant", "-w", str(tmp_path / "work"), "--session-label", SES, "--nprocs", "2",
            "--model", "flair-fcn-real-t1t2", "--skip-bids-validation"]
    assert cli.main(argv) == 0
    assert "lesions are detected automatically on the synthetic FLAIR" in capsys.readouterr().err
    synthetic = nb.load(_path(out, "anat", "space-T1w_desc-synth_FLAIR.nii.gz"))
    t1w = nb.load(_path(cohort.bids_dir, "anat", "T1w.nii.gz"))
    assert synthetic.shape == t1w.shape and np.allclose(synthetic.affine, t1w.affine)
    brain = _data(out, "anat", "space-T1w_desc-brain_mask.nii.gz") > 0
    assert synthetic.get_fdata()[brain].mean() > 0
    assert not _path(out, "anat", "space-T1w_desc-synthFLAIR_metrics.tsv").exists()  # nothing to compare with
    sidecar = json.loads(_path(out, "anat", "space-T1w_label-lesion_mask.json").read_text())
    assert sidecar["LesionMaskSource"] == "automatic"
