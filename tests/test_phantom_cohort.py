"""A 4 mm phantom cohort: BIDS validity, truth layout and grids, transform convention, contrasts, EDSS model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ants
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import ndimage

from msynth.phantom import CohortResult, generate_cohort

SESSIONS = [("HC01", "01"), ("HC02", "01")] + [(f"MS0{i}", s) for i in range(1, 8) for s in ("01", "02")]
RAW = ["anat/{b}_T1w.nii.gz", "anat/{b}_T2w.nii.gz", "anat/{b}_PDw.nii.gz", "anat/{b}_FLAIR.nii.gz",
       "anat/{b}_acq-SE_T1w.nii.gz", "anat/{b}_acq-DIR_T2w.nii.gz", "anat/{b}_MTRmap.nii.gz", "dwi/{b}_dwi.nii.gz",
       "dwi/{b}_dwi.bval", "dwi/{b}_dwi.bvec", "pet/{b}_trc-PIB_pet.nii.gz", "pet/{b}_trc-PIB_pet.json"]
TRUTH_ON_T1W = ["anat/{b}_space-T1w_desc-brain_mask", "anat/{b}_space-T1w_label-lesion_mask",
                "anat/{b}_space-T1w_label-GM_probseg", "anat/{b}_space-T1w_label-WM_probseg",
                "anat/{b}_space-T1w_label-CSF_probseg", "anat/{b}_space-T1w_desc-demyelinated_mask",
                "pet/{b}_trc-PIB_space-T1w_meas-DVR_mimap"] + [
    f"dwi/{{b}}_space-T1w_model-DTI_param-{p}_dwimap" for p in ("FA", "RD", "AD", "MD")]
TRANSFORMS = {"T2w": "anat", "PDw": "anat", "FLAIR": "anat", "T1SE": "anat", "DIR": "anat", "MTR": "anat",
              "DWI": "dwi", "PET": "pet"}
#: Raw image of each modality key checked for contrast (anat).
CONTRAST_IMAGES = {"T1w": "T1w", "FLAIR": "FLAIR", "DIR": "acq-DIR_T2w", "T2w": "T2w"}


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> CohortResult:
    """Two controls and seven patients at 4 mm (enough patients for the EDSS regression)."""
    return generate_cohort(tmp_path_factory.mktemp("phantom") / "ds", n_controls=2, n_patients=7, voxel_size=4,
                           seed=7)


def _stem(subject: str, session: str) -> str:
    return f"sub-{subject}_ses-{session}"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _validator_errors(bids_dir: Path) -> tuple[list, dict]:
    """Errors of the official validator, recursive so that the lesion-mask derivatives are checked too."""
    validator = Path(sys.executable).with_name("bids-validator-deno")
    run = subprocess.run([str(validator), "-r", "--format", "json", str(bids_dir)], capture_output=True, text=True,
                         check=False)
    report = json.loads(run.stdout)
    datasets = [report, *report.get("derivativesSummary", {}).values()]
    errors = [(i["code"], i.get("subCode"), i.get("location")) for d in datasets for i in d["issues"]["issues"]
              if i["severity"] == "error"]
    return errors, report


def test_bids_validator_reports_no_error(cohort: CohortResult) -> None:
    errors, report = _validator_errors(cohort.bids_dir)
    assert errors == []
    assert "/derivatives/lesions/" in report["derivativesSummary"]


@pytest.mark.slow
def test_bids_validator_reports_no_error_at_2mm(tmp_path: Path) -> None:
    result = generate_cohort(tmp_path / "ds", n_controls=1, n_patients=1, voxel_size=2, seed=1, n_procs=2)
    assert _validator_errors(result.bids_dir)[0] == []


def test_layout_and_truth_grids(cohort: CohortResult) -> None:
    """Every raw file exists; every truth map lies exactly on its session's raw T1w grid."""
    participants = pd.read_csv(cohort.bids_dir / "participants.tsv", sep="\t")
    assert list(participants.columns) == ["participant_id", "age", "sex", "group"]
    assert participants["group"].tolist() == ["HC"] * 2 + ["MS"] * 7
    for subject, session in SESSIONS:
        b = _stem(subject, session)
        raw = cohort.bids_dir / f"sub-{subject}" / f"ses-{session}"
        truth = cohort.truth_dir / f"sub-{subject}" / f"ses-{session}"
        assert all((raw / f.format(b=b)).is_file() for f in RAW)
        t1w = nib.load(raw / "anat" / f"{b}_T1w.nii.gz")
        for name in TRUTH_ON_T1W:
            img = nib.load(truth / f"{name.format(b=b)}.nii.gz")
            assert img.shape == t1w.shape and np.allclose(img.affine, t1w.affine)
        for key, datatype in TRANSFORMS.items():
            assert ants.read_transform(str(truth / datatype / f"{b}_from-{key}_to-T1w_mode-image_xfm.mat"))
        lesion = cohort.lesion_dir / f"sub-{subject}" / f"ses-{session}" / "anat" / \
            f"{b}_space-FLAIR_label-lesion_mask.nii.gz"
        assert nib.load(lesion).shape == nib.load(raw / "anat" / f"{b}_FLAIR.nii.gz").shape
    sessions = pd.read_csv(cohort.bids_dir / "sub-MS01" / "sub-MS01_sessions.tsv", sep="\t")
    assert sessions["session_id"].tolist() == ["ses-01", "ses-02"]
    truth = pd.read_csv(cohort.truth_dir / "participants.tsv", sep="\t").set_index("participant_id")
    assert sessions["edss"].iloc[0] == truth.loc["sub-MS01", "edss"]


@pytest.mark.parametrize(("key", "datatype", "own_mask"), [
    ("FLAIR", "anat", "anat/{b}_space-FLAIR_desc-brain_mask"),
    ("PET", "pet", "pet/{b}_trc-PIB_space-PET_desc-brain_mask"),
])
def test_true_transforms_resample_into_t1w(cohort: CohortResult, key: str, datatype: str, own_mask: str) -> None:
    """``ants.apply_transforms(fixed=T1w, moving=image, [xfm])`` lands the image on the T1w anatomy.

    The brain mask drawn on the other grid, resampled through the written transform, matches the T1w-grid brain
    mask (Dice > 0.9) and does so better than with no transform or the inverted one (the RAS/LPS sign test).
    """
    for subject, session in SESSIONS[::3]:
        b = _stem(subject, session)
        truth = cohort.truth_dir / f"sub-{subject}" / f"ses-{session}"
        t1w = ants.image_read(str(cohort.bids_dir / f"sub-{subject}" / f"ses-{session}" / "anat" / f"{b}_T1w.nii.gz"))
        reference = ants.image_read(str(truth / "anat" / f"{b}_space-T1w_desc-brain_mask.nii.gz")).numpy() > 0
        moving = ants.image_read(str(truth / f"{own_mask.format(b=b)}.nii.gz"))
        xfm = str(truth / datatype / f"{b}_from-{key}_to-T1w_mode-image_xfm.mat")
        warped = {
            "true": ants.apply_transforms(fixed=t1w, moving=moving, transformlist=[xfm], interpolator="linear"),
            "inverse": ants.apply_transforms(fixed=t1w, moving=moving, transformlist=[xfm], whichtoinvert=[True],
                                             interpolator="linear"),
            "none": ants.resample_image_to_target(moving, t1w, interp_type="linear"),
        }
        dice = {name: _dice(image.numpy() >= 0.5, reference) for name, image in warped.items()}
        assert dice["true"] > 0.9, dice
        assert dice["true"] >= max(dice["inverse"], dice["none"]), dice


def _in_t1w(cohort: CohortResult, subject: str, session: str, key: str) -> np.ndarray:
    b = _stem(subject, session)
    raw = cohort.bids_dir / f"sub-{subject}" / f"ses-{session}" / "anat"
    t1w = ants.image_read(str(raw / f"{b}_T1w.nii.gz"))
    image = ants.image_read(str(raw / f"{b}_{CONTRAST_IMAGES[key]}.nii.gz"))
    if key == "T1w":
        return image.numpy()
    xfm = cohort.truth_dir / f"sub-{subject}" / f"ses-{session}" / "anat" / f"{b}_from-{key}_to-T1w_mode-image_xfm.mat"
    return ants.apply_transforms(fixed=t1w, moving=image, transformlist=[str(xfm)]).numpy()


def test_acquired_contrast_order(cohort: CohortResult) -> None:
    """In the acquired images (brought to T1w by the true transforms), tissue medians keep their order."""
    patients = [s for s in SESSIONS if s[0].startswith("MS")]
    pooled: dict[str, dict[str, list[np.ndarray]]] = {k: {"GM": [], "WM": [], "CSF": [], "LES": []}
                                                       for k in CONTRAST_IMAGES}
    for subject, session in patients:
        b = _stem(subject, session)
        anat = cohort.truth_dir / f"sub-{subject}" / f"ses-{session}" / "anat"
        prob = {t: nib.load(anat / f"{b}_space-T1w_label-{t}_probseg.nii.gz").get_fdata() for t in ("GM", "WM", "CSF")}
        lesion = nib.load(anat / f"{b}_space-T1w_label-lesion_mask.nii.gz").get_fdata() > 0
        masks = {"GM": (prob["GM"] > 0.7) & ~lesion, "WM": (prob["WM"] > 0.9) & ~lesion,
                 "CSF": prob["CSF"] > 0.8, "LES": lesion}
        for key in CONTRAST_IMAGES:
            image = _in_t1w(cohort, subject, session, key)
            scale = np.median(image[masks["WM"]]) or 1.0
            for tissue, mask in masks.items():
                pooled[key][tissue].append(image[mask] / scale)
    med = {k: {t: float(np.median(np.concatenate(v))) for t, v in d.items()} for k, d in pooled.items()}
    assert med["T1w"]["WM"] > med["T1w"]["GM"] > med["T1w"]["CSF"], med["T1w"]
    # 3-D FLAIR (TR 5000, TI 1811): pure GM is only ~8 % brighter than WM (the truth order is checked in
    # tests/test_phantom_physics.py), and the nulled CSF in the partial volume of GM voxels at 4 mm evens that out;
    # lesions stand out from both
    assert med["FLAIR"]["LES"] > 1.05 * max(med["FLAIR"]["GM"], med["FLAIR"]["WM"]), med["FLAIR"]
    assert min(med["FLAIR"]["GM"], med["FLAIR"]["WM"]) > 2 * med["FLAIR"]["CSF"], med["FLAIR"]
    assert med["T2w"]["CSF"] > med["T2w"]["GM"] > med["T2w"]["WM"], med["T2w"]
    assert min(med["DIR"]["GM"], med["DIR"]["LES"]) > max(med["DIR"]["WM"], med["DIR"]["CSF"]), med["DIR"]


def test_truth_maps_are_consistent(cohort: CohortResult) -> None:
    """DVR is WM 1.5-2 and GM 1.0-1.25; demyelinated voxels lie in lesions and have lower DVR than NAWM."""
    wm_dvr, gm_dvr = [], []
    for subject, session in SESSIONS:
        b = _stem(subject, session)
        folder = cohort.truth_dir / f"sub-{subject}" / f"ses-{session}"
        dvr = nib.load(folder / "pet" / f"{b}_trc-PIB_space-T1w_meas-DVR_mimap.nii.gz").get_fdata()
        prob = {t: nib.load(folder / "anat" / f"{b}_space-T1w_label-{t}_probseg.nii.gz").get_fdata()
                for t in ("GM", "WM")}
        lesion = nib.load(folder / "anat" / f"{b}_space-T1w_label-lesion_mask.nii.gz").get_fdata() > 0
        demyelinated = nib.load(folder / "anat" / f"{b}_space-T1w_desc-demyelinated_mask.nii.gz").get_fdata() > 0
        wm_dvr.append(dvr[(prob["WM"] > 0.9) & ~lesion])
        gm_dvr.append(dvr[prob["GM"] > 0.7])
        assert not (demyelinated & ~lesion).any()
        if demyelinated.any():
            assert np.median(dvr[demyelinated]) < np.median(dvr[(prob["WM"] > 0.9) & ~lesion])
    assert 1.5 < np.median(np.concatenate(wm_dvr)) < 2.0
    assert 1.0 < np.median(np.concatenate(gm_dvr)) < 1.25


def test_planted_edss_model_recovered_from_truth_table(cohort: CohortResult) -> None:
    """statsmodels OLS on the truth participants.tsv gives back beta = -0.70 for dynamic remyelination."""
    table = pd.read_csv(cohort.truth_dir / "participants.tsv", sep="\t")
    patients = table[table["group"] == "MS"]
    x = pd.DataFrame({"dynamic_remyelination": patients["dynamic_remyelination"], "age": patients["age"],
                      "sex_female": (patients["sex"] == "F").astype(float),
                      "t2_lesion_load": patients["t2_lesion_load"]})
    x = x.loc[:, x.std() > 0]
    z = (x - x.mean()) / x.std()
    edss = (patients["edss"] - patients["edss"].mean()) / patients["edss"].std()
    fit = sm.OLS(edss, sm.add_constant(z)).fit()
    assert fit.params["dynamic_remyelination"] == pytest.approx(-0.70, abs=0.1)
    regression = json.loads((cohort.truth_dir / "regression.json").read_text())
    assert regression["StandardizedBeta"]["dynamic_remyelination"] == -0.70
    for column in ("pct_demyelinated_ses01", "pct_demyelinated_ses02", "global_change", "dynamic_demyelination",
                   "dynamic_remyelination", "t2_lesion_load"):
        assert patients[column].notna().all()


def test_expert_masks_follow_the_lesions(cohort: CohortResult) -> None:
    """The FLAIR-traced masks, taken to T1w by the true transform, sit on the true lesions (within one voxel)."""
    traced_total, near_total = 0, 0
    for subject, session in [s for s in SESSIONS if s[0].startswith("MS")]:
        b = _stem(subject, session)
        truth = cohort.truth_dir / f"sub-{subject}" / f"ses-{session}" / "anat"
        t1w = ants.image_read(str(cohort.bids_dir / f"sub-{subject}" / f"ses-{session}" / "anat" / f"{b}_T1w.nii.gz"))
        folder = cohort.lesion_dir / f"sub-{subject}" / f"ses-{session}" / "anat"
        traced = ants.image_read(str(folder / f"{b}_space-FLAIR_label-lesion_mask.nii.gz"))
        warped = ants.apply_transforms(fixed=t1w, moving=traced, transformlist=[
            str(truth / f"{b}_from-FLAIR_to-T1w_mode-image_xfm.mat")], interpolator="linear").numpy() >= 0.5
        lesion = nib.load(truth / f"{b}_space-T1w_label-lesion_mask.nii.gz").get_fdata() > 0
        traced_total += int(warped.sum())
        near_total += int((warped & ndimage.binary_dilation(lesion, iterations=1)).sum())
        sidecar = json.loads((folder / f"{b}_space-FLAIR_label-lesion_mask.json").read_text())
        assert sidecar["Sources"] == [f"bids:raw:sub-{subject}/ses-{session}/anat/{b}_FLAIR.nii.gz"]
    assert traced_total > 0
    assert near_total >= 0.8 * traced_total


def test_aligned_session_keeps_the_acquired_intensities_without_bias_correction(cohort: CohortResult,
                                                                                 tmp_path: Path) -> None:
    from msynth.phantom.aligned import align_session

    b = _stem("MS01", "01")
    raw = align_session(cohort, "MS01", "01", ["T1w", "FLAIR"], newpath=tmp_path / "raw", bias_correction=False)
    corrected = align_session(cohort, "MS01", "01", ["T1w", "FLAIR"], newpath=tmp_path / "n4")
    acquired = nib.load(cohort.bids_dir / "sub-MS01" / "ses-01" / RAW[0].format(b=b)).get_fdata()
    np.testing.assert_array_equal(nib.load(raw.images["T1w"]).get_fdata(), acquired)
    brain = nib.load(raw.brain_mask).get_fdata() > 0
    for key in ("T1w", "FLAIR"):
        before = nib.load(raw.images[key]).get_fdata()[brain]
        after = nib.load(corrected.images[key]).get_fdata()[brain]
        assert before.shape == after.shape
        field = after[before > 0] / before[before > 0]  # what N4 multiplied the acquired image by
        assert field.std() / field.mean() > 0.01  # the phantom's bias (strength 0.10-0.12) is not left in place
