"""Input checks: each bad input gets one message naming the file, the cause and the remedy."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from msynth.preprocessing.checks import InputImageError, check_dwi, check_image, check_pet_sidecar

LABEL = "sub-03 ses-t1: FLAIR"


def _save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.Nifti1Image(data, np.diag([2.0, 2.0, 4.0, 1.0]) if affine is None else affine).to_filename(path)
    return path


def _volume(shape=(8, 8, 4)) -> np.ndarray:
    return np.random.default_rng(0).uniform(1, 2, shape).astype(np.float32)


def _truncated(path: Path) -> Path:
    _save(path, _volume((32, 32, 16)))
    path.write_bytes(path.read_bytes()[:2000])
    return path


def _qform_off(path: Path, shift_mm: float) -> Path:
    img = nib.Nifti1Image(_volume(), np.diag([2.0, 2.0, 4.0, 1.0]))
    qform = img.affine.copy()
    qform[0, 3] += shift_mm
    img.set_qform(qform, code=1)
    img.set_sform(img.affine, code=1)
    img.to_filename(path)
    return path


def _singular(path: Path) -> Path:
    img = nib.Nifti1Image(_volume(), None)
    img.set_qform(None, code=0)
    img.set_sform(np.array([[2.0, 2.0, 0, 0], [0, 0, 4.0, 0], [0, 0, 4.0, 0], [0, 0, 0, 1]]), code=2)
    img.to_filename(path)
    return path


def _with_nan(path: Path, value: float) -> Path:
    data = _volume()
    data[1, 2, 3] = value
    data[4, 4, 0] = value
    return _save(path, data)


BAD_IMAGES = [
    (lambda p: _save(p, _volume((8, 8, 4, 2))),
     "has 4 dimensions (8, 8, 4, 2); msynth expects one 3-D volume — pass --bids-filter-file to select another run"),
    (lambda p: _with_nan(p, np.nan), "has 2 NaN/Inf voxels; msynth expects finite intensities"),
    (lambda p: _with_nan(p, np.inf), "has 2 NaN/Inf voxels"),
    (_singular, "has a singular affine"),
    (lambda p: _qform_off(p, 3.0), "has qform and sform that disagree by up to 3.00 mm (tolerance 0.1 mm)"),
    (_truncated, "cannot be read"),
    (lambda p: (p.write_bytes(b"\x1f\x8b" + b"not a gzip stream" * 10), p)[1], "cannot be read"),
    (lambda p: (p.write_bytes(b""), p)[1], "file is empty (0 bytes) — re-export or re-copy the image"),
    (lambda p: p, "file does not exist"),
]


@pytest.mark.parametrize(("make", "message"), BAD_IMAGES)
def test_bad_image_message(tmp_path, make, message):
    path = make(tmp_path / "sub-03_ses-t1_FLAIR.nii.gz")
    with pytest.raises(InputImageError, match=re.escape(f"{LABEL} {message}")) as info:
        check_image(path, label=LABEL, expect_ndim=3)
    assert str(info.value).endswith(f"(file: {path})")
    assert info.value.path == path


def test_exact_style_message(tmp_path):
    path = _save(tmp_path / "sub-03_ses-t1_FLAIR.nii.gz", _volume((8, 8, 4, 2)))
    with pytest.raises(InputImageError) as info:
        check_image(path, label=LABEL, expect_ndim=3)
    assert str(info.value) == (
        "sub-03 ses-t1: FLAIR has 4 dimensions (8, 8, 4, 2); msynth expects one 3-D volume — pass "
        f"--bids-filter-file to select another run (file: {path})"
    )


def test_3d_where_4d_expected(tmp_path):
    path = _save(tmp_path / "dwi.nii.gz", _volume())
    with pytest.raises(InputImageError, match=re.escape("DWI has 3 dimensions (8, 8, 4); msynth expects a 4-D series")):
        check_image(path, label="DWI", expect_ndim=4)


def test_good_images_pass(tmp_path):
    img = check_image(_save(tmp_path / "a.nii.gz", _volume((8, 8, 4, 1))), label=LABEL)
    assert img.shape == (8, 8, 4)
    # qform within the tolerance of the sform (rounding in real headers)
    assert check_image(_qform_off(tmp_path / "b.nii.gz", 0.01), label=LABEL).shape == (8, 8, 4)


# --- DWI -------------------------------------------------------------------------------------------------------------

def _dwi(tmp_path: Path, n_volumes: int = 8, bvals=None, bvecs=None) -> tuple[Path, Path, Path]:
    dwi = _save(tmp_path / "dwi.nii.gz", _volume((4, 4, 2, n_volumes)))
    bval, bvec = tmp_path / "dwi.bval", tmp_path / "dwi.bvec"
    if bvals is None:
        bvals = np.array([0] + [1000] * (n_volumes - 1))
    if bvecs is None:
        rng = np.random.default_rng(1)
        bvecs = rng.normal(size=(3, len(bvals)))
        bvecs /= np.linalg.norm(bvecs, axis=0)
        bvecs[:, np.asarray(bvals) == 0] = 0
    np.savetxt(bval, np.atleast_2d(bvals), fmt="%g")
    np.savetxt(bvec, bvecs, fmt="%.6f")
    return dwi, bval, bvec


def test_dwi_ok(tmp_path):
    bvals, bvecs = check_dwi(*_dwi(tmp_path), label="DWI")
    assert bvals.shape == (8,) and bvecs.shape == (8, 3)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"bvals": [0] + [1000] * 8}, ".bval has 9 b-values but the DWI has 8 volumes"),
    ({"bvecs": np.ones((8, 3)) / np.sqrt(3)}, ".bvec has shape (8, 3); it looks transposed; BIDS expects 3 rows"),
    ({"bvecs": np.ones((3, 7)) / np.sqrt(3)}, ".bvec has 7 vectors but the DWI has 8 volumes"),
    ({"bvals": [1000] * 8}, "has no b=0 volume (b ≤ 50 s/mm²)"),
    ({"bvals": [0, 0, 0, 1000, 1000, 1000, 1000, 1000]}, "has 5 diffusion-weighted volumes; a tensor fit needs at "
                                                          "least 6"),
    ({"bvecs": np.full((3, 8), 0.2)}, "has diffusion-weighted volumes whose gradient vectors are not unit vectors "
                                       "(norms 0.35–0.35)"),
])
def test_dwi_bad(tmp_path, kwargs, message):
    with pytest.raises(InputImageError, match=re.escape(f"DWI {message}")):
        check_dwi(*_dwi(tmp_path, **kwargs), label="DWI")


def test_dwi_missing_bval(tmp_path):
    dwi, _, bvec = _dwi(tmp_path)
    with pytest.raises(InputImageError, match=re.escape("DWI has no .bval file — add the .bval beside the DWI")):
        check_dwi(dwi, None, bvec, label="DWI")


# --- PET sidecar -----------------------------------------------------------------------------------------------------

def _sidecar(tmp_path: Path, **meta) -> Path:
    path = tmp_path / "pet.json"
    path.write_text(json.dumps({"FrameTimesStart": [0, 60, 120], "FrameDuration": [60, 60, 60], **meta}))
    return path


def test_pet_sidecar_ok(tmp_path):
    starts, durations = check_pet_sidecar(_sidecar(tmp_path), 3, label="PET")
    assert starts.tolist() == [0, 60, 120] and durations.tolist() == [60, 60, 60]


@pytest.mark.parametrize(("meta", "message"), [
    ({"FrameTimesStart": None}, "sidecar has no FrameTimesStart"),
    ({"FrameDuration": [60, 60]}, "sidecar FrameDuration has 2 values but the PET series has 3 frames"),
    ({"FrameDuration": [60, "a", 60]}, "sidecar FrameDuration is not a list of finite numbers"),
    ({"FrameTimesStart": [0, 120, 60]}, "sidecar FrameTimesStart is not strictly increasing"),
    ({"FrameDuration": [60, 0, 60]}, "sidecar FrameDuration has values ≤ 0"),
    ({"FrameDuration": [90, 60, 60]}, "sidecar frames overlap"),
])
def test_pet_sidecar_bad(tmp_path, meta, message):
    with pytest.raises(InputImageError, match=re.escape(f"PET {message}")):
        check_pet_sidecar(_sidecar(tmp_path, **meta), 3, label="PET")


def test_pet_sidecar_missing_or_invalid(tmp_path):
    with pytest.raises(InputImageError, match="PET has no JSON sidecar with the frame timing"):
        check_pet_sidecar(tmp_path / "absent.json", 3, label="PET")
    broken = tmp_path / "broken.json"
    broken.write_text('{"FrameTimesStart": [0, 60,')
    with pytest.raises(InputImageError, match="PET sidecar is not valid JSON"):
        check_pet_sidecar(broken, 3, label="PET")
