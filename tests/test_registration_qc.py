"""Registration QC on the 4 mm phantom: correct registrations pass, misplaced ones fail naming the image; the
template registration follows a tilted head; a registration repeated on identical inputs gives identical bytes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from msynth.interfaces.registration import RegisterToReference
from msynth.preprocessing.registration import (
    mean_displacement_mm,
    pyramid_for,
    read_affine,
    register_to_reference,
    write_affine,
)
from msynth.preprocessing.registration_qc import (
    COREGISTRATION_MIN_NMI,
    TEMPLATE_MIN_DICE,
    RegistrationQCError,
    score_coregistration,
    score_template,
)
from msynth.templates import write_template

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _rigid_lps(axis: int, degrees: float, shift_mm: tuple[float, float, float], centre: np.ndarray) -> np.ndarray:
    """4×4 LPS rotation about ``axis`` through ``centre``, then a shift."""
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    i, j = [k for k in range(3) if k != axis]
    out = np.eye(4)
    out[i, i], out[i, j], out[j, i], out[j, j] = c, -s, s, c
    out[:3, 3] = centre - out[:3, :3] @ centre + np.asarray(shift_mm)
    return out


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> dict:
    """One 4 mm phantom session: raw T1w, FLAIR, the true brain mask and FLAIR transform, the brain centre (LPS)."""
    from msynth.phantom.cohort import generate_cohort

    root = tmp_path_factory.mktemp("qc_phantom")
    generate_cohort(root / "bids", root / "truth", n_controls=0, n_patients=1, voxel_size=4.0, seed=3)
    anat = root / "bids" / "sub-MS01" / "ses-01" / "anat"
    truth = root / "truth" / "sub-MS01" / "ses-01" / "anat"
    mask = truth / "sub-MS01_ses-01_space-T1w_desc-brain_mask.nii.gz"
    mask_img = nib.load(mask)
    ijk = np.argwhere(np.asanyarray(mask_img.dataobj) > 0).mean(axis=0)
    return {
        "root": root, "t1w": anat / "sub-MS01_ses-01_T1w.nii.gz", "flair": anat / "sub-MS01_ses-01_FLAIR.nii.gz",
        "mask": mask, "flair_xfm": truth / "sub-MS01_ses-01_from-FLAIR_to-T1w_mode-image_xfm.mat",
        "centre": (LPS @ mask_img.affine @ np.append(ijk, 1))[:3],
    }


@pytest.mark.parametrize(("axis", "degrees", "shift"), [(0, 0.0, (10.0, 0.0, 0.0)), (0, 27.0, (0.0, 0.0, 0.0)),
                                                        (2, 27.0, (0.0, 0.0, 0.0))])
def test_coregistration_qc_passes_the_truth_and_fails_a_misplacement(phantom, tmp_path, axis, degrees, shift):
    truth = read_affine(phantom["flair_xfm"])
    good = score_coregistration(phantom["flair"], phantom["t1w"], phantom["mask"], phantom["flair_xfm"])
    moved = write_affine(truth @ _rigid_lps(axis, degrees, shift, phantom["centre"]), tmp_path / "moved.mat")
    bad = score_coregistration(phantom["flair"], phantom["t1w"], phantom["mask"], moved)
    assert good.passed and good.value > 1.08  # measured 1.091
    assert not bad.passed and bad.value < 1.02  # measured 1.015-1.016
    message = bad.failure_message(phantom["flair"], phantom["t1w"])
    assert "sub-MS01_ses-01_FLAIR.nii.gz" in message and f"{bad.value:.3f}" in message
    assert f"{COREGISTRATION_MIN_NMI:g}" in message and "--continue-on-qc-failure" in message


def test_template_registration_follows_a_tilted_head_and_qc_catches_14_mm(phantom, tmp_path):
    template = write_template(tmp_path, 1)
    pyramid = pyramid_for(4.0)
    xfm = register_to_reference(template, phantom["t1w"], phantom["mask"], out_xfm=tmp_path / "tpl.mat",
                                initialization="multi-start", max_scale=None, **pyramid)
    assert score_template(template, phantom["t1w"], phantom["mask"], xfm).value > 0.9  # measured 0.91-0.92
    # the same head with its header tilted by 27°: the template must follow (centre of mass alone missed by 26 mm)
    tilt = _rigid_lps(0, 27.0, (0.0, 0.0, 0.0), phantom["centre"])
    tilted = {}
    for key in ("t1w", "mask"):
        img = nib.load(phantom[key])
        affine = LPS @ tilt @ LPS @ img.affine
        nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), affine), tmp_path / f"tilted_{key}.nii.gz")
        tilted[key] = tmp_path / f"tilted_{key}.nii.gz"
    tilted_xfm = register_to_reference(template, tilted["t1w"], tilted["mask"], out_xfm=tmp_path / "tilted.mat",
                                       initialization="multi-start", max_scale=None, **pyramid)
    expected = read_affine(xfm) @ np.linalg.inv(tilt)
    assert mean_displacement_mm(expected, tilted_xfm, tilted["mask"]) < 2.0  # measured 0.65
    off = write_affine(read_affine(xfm) @ _rigid_lps(0, 0.0, (14.0, 0.0, 0.0), phantom["centre"]),
                       tmp_path / "off.mat")
    qc = score_template(template, phantom["t1w"], phantom["mask"], off)
    assert not qc.passed and qc.value < TEMPLATE_MIN_DICE


def _upside_down(image: Path, out: Path) -> Path:
    """The image with its voxels flipped top to bottom and front to back (a 180° header error)."""
    img = nib.load(image)
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj)[:, ::-1, ::-1].copy(), img.affine), out)
    return out


def test_register_to_reference_interface_qc(phantom, tmp_path):
    for run in ("good", "bad", "continued"):
        (tmp_path / run).mkdir()
    node = RegisterToReference(moving=str(phantom["flair"]), fixed=str(phantom["t1w"]),
                               fixed_mask=str(phantom["mask"]), key="FLAIR", affine=False)
    result = node.run(cwd=str(tmp_path / "good"))
    metadata = result.outputs.metadata
    assert metadata["QC"]["Passed"] is True and metadata["QC"]["Value"] > COREGISTRATION_MIN_NMI
    assert metadata["Registration"]["FinalMetricValue"] < 0  # ANTs Mattes MI: negative, lower is better
    assert mean_displacement_mm(result.outputs.out_xfm, phantom["flair_xfm"], phantom["mask"]) < 2.0

    flipped = _upside_down(phantom["flair"], tmp_path / "sub-MS01_ses-01_FLAIR_flipped.nii.gz")
    node = RegisterToReference(moving=str(flipped), fixed=str(phantom["t1w"]), fixed_mask=str(phantom["mask"]),
                               key="FLAIR", affine=False)
    failure = r"sub-MS01_ses-01_FLAIR_flipped\.nii\.gz .* 1\.0[0-2]\d is below the threshold 1\.025"
    with pytest.raises(RegistrationQCError, match=failure):
        node.run(cwd=str(tmp_path / "bad"))
    node.inputs.continue_on_qc_failure = True
    qc = node.run(cwd=str(tmp_path / "continued")).outputs.metadata["QC"]
    assert qc["Passed"] is False and qc["Value"] < COREGISTRATION_MIN_NMI == qc["Threshold"]


def test_coregistration_follows_a_27_degree_header_tilt(phantom, tmp_path):
    """Issue 17's T1w rotated 27° against the other images: the rigid co-registration recovers it and QC passes."""
    tilt = _rigid_lps(0, 27.0, (0.0, 0.0, 0.0), phantom["centre"])
    img = nib.load(phantom["flair"])
    tilted = tmp_path / "sub-MS01_ses-01_FLAIR_tilted.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), LPS @ tilt @ LPS @ img.affine), tilted)
    (tmp_path / "node").mkdir()
    result = RegisterToReference(moving=str(tilted), fixed=str(phantom["t1w"]), fixed_mask=str(phantom["mask"]),
                                 key="FLAIR", affine=False).run(cwd=str(tmp_path / "node"))
    expected = tilt @ read_affine(phantom["flair_xfm"])
    assert mean_displacement_mm(expected, result.outputs.out_xfm, phantom["mask"]) < 1.0  # measured 0.46
    assert result.outputs.metadata["QC"]["Passed"] is True


_REGISTER = """
import sys
from msynth.preprocessing.registration import pyramid_for, register_to_reference
register_to_reference(sys.argv[1], sys.argv[2], sys.argv[3], out_xfm=sys.argv[4], initialization="scanner",
                      affine=False, **pyramid_for(4.0))
"""


def test_registration_repeats_give_identical_bytes(phantom, tmp_path):
    env = {**os.environ, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"}  # what RegisterToReference asks for
    outputs = []
    for index in range(2):  # a fresh process each, as two pipeline runs
        out = tmp_path / f"run{index}.mat"
        subprocess.run([sys.executable, "-c", _REGISTER, str(phantom["flair"]), str(phantom["t1w"]),
                        str(phantom["mask"]), str(out)], env=env, check=True, capture_output=True)
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]


def test_a_failed_registration_is_summarised_by_its_message(tmp_path):
    """The participant's failure line carries the QC sentence (image, score, threshold), not the exception's path."""
    from msynth.runner import _crash_reason

    message = ("registration QC failed: sub-01_T2w_n4.nii.gz → sub-01_T1w_n4.nii.gz: normalised mutual information "
               "in the T1w brain mask 1.012 is below the threshold 1.025")
    crash = tmp_path / "crash-register.txt"
    crash.write_text(f"Node: sub_01_wf.ses_1_wf.coregister_T2w_wf.register\nTraceback (most recent call last):\n"
                     f"  File \"x.py\", line 1\nmsynth.preprocessing.registration_qc.RegistrationQCError: {message}\n")
    assert _crash_reason(crash, config=None) == ("sub_01_wf.ses_1_wf.coregister_T2w_wf.register", message)
