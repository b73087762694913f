"""The participant level on a 4 mm phantom patient, measured against the phantom's truth."""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from msynth.cli import run as cli
from msynth.phantom.cohort import generate_cohort
from msynth.preprocessing.registration import mean_displacement_mm, read_affine
from msynth.utils.validation import errors_of, run_validator

SUB, SES = "MS01", "01"
STEM = f"sub-{SUB}_ses-{SES}"
#: modality key → (datatype, raw file suffix) of the images registered to the T1w.
REGISTERED = {
    "T2w": ("anat", "T2w"), "PDw": ("anat", "PDw"), "FLAIR": ("anat", "FLAIR"), "T1SE": ("anat", "acq-SE_T1w"),
    "DIR": ("anat", "acq-DIR_T2w"), "MTR": ("anat", "MTRmap"), "DWI": ("dwi", "dwi"), "PET": ("pet", "trc-PIB_pet"),
}


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    cohort = generate_cohort(root / "bids", n_controls=0, n_patients=1, voxel_size=4.0, seed=3)
    out = root / "out"
    argv = [str(cohort.bids_dir), str(out), "participant", "-w", str(root / "work"), "--session-label", SES,
            "--nprocs", "2"]
    assert cli.main(argv) == 0
    return cohort, out


def _path(root: Path, datatype: str, name: str) -> Path:
    return root / f"sub-{SUB}" / f"ses-{SES}" / datatype / f"{STEM}_{name}"


def _data(root: Path, datatype: str, name: str) -> np.ndarray:
    return nb.load(_path(root, datatype, name)).get_fdata()


def test_brain_mask_dice(phantom_run):
    cohort, out = phantom_run
    estimate = _data(out, "anat", "space-T1w_desc-brain_mask.nii.gz") > 0
    truth = _data(cohort.truth_dir, "anat", "space-T1w_desc-brain_mask.nii.gz") > 0
    assert 2 * (estimate & truth).sum() / (estimate.sum() + truth.sum()) >= 0.95


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
