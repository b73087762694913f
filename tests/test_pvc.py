"""Partial-volume correction of the DVR (:mod:`msynth.preprocessing.pvc`): the pure functions on a synthetic scene
with a known truth, the file-level function, and the participant level with ``--pet-psf-fwhm``."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from msynth.preprocessing import pvc

ZOOMS = (2.0, 2.0, 2.0)


def _scene(shape=(40, 40, 40)):
    """A ball of 'white matter' (DVR 2.0) with a grey shell (1.4), CSF core (0.4), a lesion (1.6) of which one half
    is demyelinated (1.0); returns the tissue maps and the true DVR."""
    grid = np.indices(shape).astype(np.float32)
    centre = (np.array(shape, dtype=np.float32) - 1) / 2
    radius = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(axis=0))
    brain = radius < 17
    csf = (radius < 4).astype(np.float32)
    gm = ((radius >= 13) & brain).astype(np.float32)
    wm = (brain & (radius >= 4) & (radius < 13)).astype(np.float32)
    lesion = np.zeros(shape, bool)
    lesion[26:31, 17:23, 17:23] = True  # 5 x 6 x 6 voxels: 10 x 12 x 12 mm, inside the white matter
    demyelinated = lesion & (grid[1] < 20)
    truth = 0.4 * csf + 1.4 * gm + 2.0 * wm
    truth[lesion] = 1.6
    truth[demyelinated] = 1.0
    return {"gm": gm, "wm": wm, "csf": csf, "brain": brain, "lesion": lesion, "demyelinated": demyelinated,
            "truth": truth}


def test_effective_fwhm_adds_the_variances():
    # PSF alone when both grids are infinitely fine
    assert pvc.effective_fwhm(3.0, [1e-6] * 3, [1e-6] * 3) == pytest.approx(3.0)
    # a 2 mm PET voxel adds d^2/4 (box + interpolation), a 2 mm T1w voxel removes d^2/12 of variance
    sigma2 = (3.0 / pvc.FWHM_PER_SIGMA) ** 2 + 4.0 / 4 - 4.0 / 12
    assert pvc.effective_fwhm(3.0, [2.0] * 3, [2.0] * 3) == pytest.approx(pvc.FWHM_PER_SIGMA * np.sqrt(sigma2))
    assert pvc.sigma_voxels(2.0 * pvc.FWHM_PER_SIGMA, [2.0, 1.0, 4.0]) == pytest.approx((1.0, 2.0, 0.5))


def test_fractional_gtm_recovers_the_region_values_of_a_blurred_piecewise_image():
    scene = _scene()
    fractions = pvc.tissue_fractions(scene["gm"], scene["wm"], scene["csf"], scene["brain"], scene["lesion"])
    assert fractions.shape[0] == 5  # rest, lesion, GM, NAWM, CSF
    values = np.array([0.0, 1.6, 1.4, 2.0, 0.4])
    sigma = pvc.sigma_voxels(4.0, ZOOMS)
    blurred_fractions = np.stack([pvc.blur(p, sigma) for p in fractions])
    observed = pvc.blur(np.tensordot(values, fractions, axes=1), sigma)
    np.testing.assert_allclose(pvc.fractional_gtm(observed, fractions, blurred_fractions), values, atol=1e-4)
    # without a lesion mask the lesion joins the NAWM region
    assert pvc.tissue_fractions(scene["gm"], scene["wm"], scene["csf"], scene["brain"]).shape[0] == 4


def test_van_cittert_restores_the_demyelinated_contrast_that_partial_volume_hides():
    scene = _scene()
    sigma = pvc.sigma_voxels(4.5, ZOOMS)
    observed = pvc.blur(scene["truth"], sigma)
    fractions = pvc.tissue_fractions(scene["gm"], scene["wm"], scene["csf"], scene["brain"], scene["lesion"])
    blurred_fractions = np.stack([pvc.blur(p, sigma) for p in fractions])
    demyelinated, intact = scene["demyelinated"], scene["lesion"] & ~scene["demyelinated"]

    def contrast(image):
        return float(image[intact].mean() - image[demyelinated].mean())

    true_contrast = contrast(scene["truth"])  # 0.6
    errors = {n: abs(contrast(pvc.gtm_van_cittert(observed, fractions, blurred_fractions, sigma, n)) - true_contrast)
              for n in (0, 2, 10)}
    blurred_error = abs(contrast(observed) - true_contrast)
    # measured: the blurred map keeps 0.30 of 0.60; 0, 2 and 10 iterations leave errors of 0.30, 0.15 and 0.07
    assert blurred_error > 0.2
    assert errors[2] < 0.6 * blurred_error and errors[10] < 0.3 * blurred_error
    assert errors[10] < errors[2] < errors[0] + 1e-6


def test_van_cittert_amplifies_noise_with_every_iteration():
    scene = _scene()
    sigma = pvc.sigma_voxels(4.5, ZOOMS)
    rng = np.random.default_rng(0)
    observed = pvc.blur(scene["truth"], sigma) + rng.normal(0.0, 0.05, scene["truth"].shape).astype(np.float32)
    fractions = pvc.tissue_fractions(scene["gm"], scene["wm"], scene["csf"], scene["brain"], scene["lesion"])
    blurred_fractions = np.stack([pvc.blur(p, sigma) for p in fractions])
    deep_wm = scene["wm"] > 0  # the noise SD where the truth is flat (away from edges, mostly)
    core = deep_wm & (pvc.blur(scene["wm"], sigma) > 0.99) & ~scene["lesion"]
    sds = [float(pvc.gtm_van_cittert(observed, fractions, blurred_fractions, sigma, n)[core].std())
           for n in (0, 2, 10)]
    assert sds[0] < sds[1] < sds[2], sds  # measured: 0.051, 0.142, 0.470 (white noise of SD 0.05)
    with pytest.raises(ValueError, match="iterations"):
        pvc.gtm_van_cittert(observed, fractions, blurred_fractions, sigma, -1)


def _write(array, path, zooms=ZOOMS):
    affine = np.diag([*zooms, 1.0])
    nb.Nifti1Image(np.asarray(array, dtype=np.float32), affine).to_filename(path)
    return path


def test_pvc_dvr_image_writes_the_corrected_map_inside_the_brain(tmp_path):
    scene = _scene()
    fwhm = pvc.effective_fwhm(3.0, [2.5] * 3, ZOOMS)
    observed = pvc.blur(scene["truth"], pvc.sigma_voxels(fwhm, ZOOMS))
    files = {key: _write(scene[key], tmp_path / f"{key}.nii.gz") for key in ("gm", "wm", "csf", "brain", "lesion")}
    dvr = _write(observed, tmp_path / "dvr.nii.gz")
    out, parameters = pvc.pvc_dvr_image(dvr, files["gm"], files["wm"], files["csf"], files["brain"],
                                        pet_zooms=(2.5, 2.5, 2.5), psf_fwhm_mm=3.0, iterations=10,
                                        lesion_mask=files["lesion"], newpath=tmp_path / "out")
    corrected = nb.load(out).get_fdata()
    assert parameters == {"PSFFWHMmm": 3.0, "EffectiveFWHMmm": round(fwhm, 3), "VanCittertIterations": 10,
                          "LesionRegion": True}
    assert np.all(corrected[~scene["brain"]] == 0)
    lesion_error = np.abs(corrected - scene["truth"])[scene["lesion"]].mean()
    assert lesion_error < 0.5 * np.abs(observed - scene["truth"])[scene["lesion"]].mean()
    with pytest.raises(ValueError, match="psf_fwhm_mm"):
        pvc.pvc_dvr_image(dvr, files["gm"], files["wm"], files["csf"], files["brain"], pet_zooms=(2.5,) * 3,
                          psf_fwhm_mm=0.0)


@pytest.mark.slow
def test_participant_level_writes_the_corrected_dvr(phantom_participants, tmp_path):
    """``--pet-psf-fwhm`` adds the corrected DVR, with its sidecar, beside the Logan DVR; the lesions' DVR deficit
    against the NAWM (the signal the group level classifies) comes closer to the truth's."""
    from msynth.cli import run as cli

    cohort, _, work = phantom_participants
    out = tmp_path / "out"
    argv = [str(cohort.bids_dir), str(out), "participant", "-w", str(work), "--session-label", "01", "--nprocs", "2",
            "--participant-label", "MS01", "--pet-psf-fwhm", "3.25"]
    assert cli.main(argv) == 0
    pet = out / "sub-MS01" / "ses-01" / "pet"
    corrected = pet / "sub-MS01_ses-01_trc-PIB_space-T1w_desc-pvc_model-Logan_meas-DVR_mimap.nii.gz"
    sidecar = json.loads(corrected.with_name(corrected.name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["PartialVolumeCorrection"]["PSFFWHMmm"] == 3.25
    assert sidecar["PartialVolumeCorrection"]["LesionRegion"] is True
    assert "acquired DVR corrected for partial volume" in (out / "sub-MS01.html").read_text()  # its report shows it
    anat = out / "sub-MS01" / "ses-01" / "anat"
    lesion = nb.load(anat / "sub-MS01_ses-01_space-T1w_label-lesion_mask.nii.gz").get_fdata() > 0.5
    nawm = nb.load(anat / "sub-MS01_ses-01_space-T1w_label-NAWM_mask.nii.gz").get_fdata() > 0.5
    truth = nb.load(cohort.truth_dir / "sub-MS01" / "ses-01" / "pet"
                    / "sub-MS01_ses-01_trc-PIB_space-T1w_meas-DVR_mimap.nii.gz").get_fdata()
    logan = nb.load(pet / "sub-MS01_ses-01_trc-PIB_space-T1w_model-Logan_meas-DVR_mimap.nii.gz").get_fdata()

    def deficit(image):
        return float(image[nawm].mean() - image[lesion].mean())

    errors = {name: abs(deficit(image) - deficit(truth)) for name, image in
              (("logan", logan), ("pvc", nb.load(corrected).get_fdata()))}
    assert errors["pvc"] < errors["logan"], errors


@pytest.fixture(scope="module")
def blurred_cohort_group(tmp_path_factory):
    """A 4 mm phantom cohort (3 controls, 4 patients) whose 'acquired' DVR is the truth blurred by the PET's
    effective kernel (what partial volume does) and whose 'acquired-pvc' DVR is that map corrected by
    :func:`msynth.preprocessing.pvc.pvc_dvr_image` with the truth's tissue maps; then the group level."""
    from msynth.cli import run as cli
    from msynth.phantom.cohort import generate_cohort
    from msynth.phantom.truth_derivatives import write_truth_derivatives

    root = tmp_path_factory.mktemp("pvc_group")
    cohort = generate_cohort(root / "bids", n_controls=3, n_patients=4, voxel_size=4.0, seed=5, n_procs=2)
    out = write_truth_derivatives(cohort.bids_dir, cohort.truth_dir, root / "out")
    for logan in sorted(out.glob("sub-*/ses-*/pet/*_model-Logan_meas-DVR_mimap.nii.gz")):
        prefix = logan.name.split("_trc-")[0]
        anat = logan.parent.parent / "anat"
        image = nb.load(logan)
        zooms = image.header.get_zooms()[:3]
        blurred = pvc.blur(image.get_fdata(dtype=np.float32), pvc.sigma_voxels(pvc.effective_fwhm(3.0, zooms, zooms),
                                                                               zooms))
        nb.Nifti1Image(blurred, image.affine, image.header).to_filename(logan)
        corrected, _ = pvc.pvc_dvr_image(
            logan, *(anat / f"{prefix}_space-T1w_label-{k}_probseg.nii.gz" for k in ("GM", "WM", "CSF")),
            anat / f"{prefix}_space-T1w_desc-brain_mask.nii.gz", pet_zooms=zooms, psf_fwhm_mm=3.0,
            lesion_mask=anat / f"{prefix}_space-T1w_label-lesion_mask.nii.gz", newpath=root / "pvc")
        target = logan.with_name(logan.name.replace("_model-Logan", "_desc-pvc_model-Logan"))
        Path(corrected).replace(target)
        target.with_name(target.name.replace(".nii.gz", ".json")).write_text(json.dumps({"Description": "test"}))
    argv = [str(cohort.bids_dir), str(out), "group", "-w", str(root / "work"), "--nprocs", "2"]
    assert cli.main(argv) == 0
    return cohort, out


@pytest.mark.slow
def test_group_level_analyses_the_corrected_dvr_as_its_own_source(blurred_cohort_group):
    from msynth.analysis.metrics import dice
    from msynth.utils.validation import errors_of, run_validator

    cohort, out = blurred_cohort_group
    group = out / "group"
    indices = pd.read_csv(group / "myelin_indices.tsv", sep="\t")
    assert list(dict.fromkeys(indices["source"])) == ["acquired", "acquired-pvc"]
    # the corrected source is no synthesis model: no agreement rows, no Bland-Altman pairs
    assert pd.read_csv(group / "agreement.tsv", sep="\t").empty
    assert set(pd.read_csv(group / "edss_regression.tsv", sep="\t")["source"]) == {"acquired", "acquired-pvc"}
    scores = {"demyelinated": [], "pvcdemyelinated": []}
    for truth in sorted(cohort.truth_dir.glob("sub-MS*/ses-*/anat/*_space-T1w_desc-demyelinated_mask.nii.gz")):
        session = out / truth.relative_to(cohort.truth_dir).parent.parent / "pet"
        for desc in scores:
            name = truth.name.replace("_space-T1w_desc-demyelinated", f"_trc-PIB_space-T1w_desc-{desc}")
            scores[desc].append(dice(nb.load(session / name).get_fdata() > 0, nb.load(truth).get_fdata() > 0))
    medians = {desc: float(np.median(values)) for desc, values in scores.items()}
    assert len(scores["pvcdemyelinated"]) == 8
    assert medians["pvcdemyelinated"] > medians["demyelinated"] + 0.05, medians
    assert "corrected for partial volume at the participant level" in (group / "report.html").read_text()
    assert errors_of(run_validator(out)) == []
