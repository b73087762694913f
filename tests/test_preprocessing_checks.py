"""Input checks: each bad input gets one message naming the file, the cause and the remedy; good inputs pass."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from msynth.preprocessing.checks import (
    MEMORY_BASE_GB,
    InputImageError,
    available_memory_gb,
    check_dwi,
    check_image,
    check_input_image,
    check_memory,
    check_pet_sidecar,
    estimate_memory_gb,
    session_grid_voxels,
)

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


def test_qform_at_the_quaternion_precision_limit_is_accepted(tmp_path):
    """A left-right flipped slab tilted by a tenth of a degree: the qform's float32 quaternion (a rotation near 180
    degrees) cannot hold the sform within 0.1 mm over a 2 mm whole-head field of view (0.22 mm here, as in a phantom
    MTR), although the header is as consistent as NIfTI-1 can store it; a real disagreement still fails."""
    from scipy.spatial.transform import Rotation

    affine = np.eye(4)
    affine[:3, :3] = (Rotation.from_euler("xyz", (0.1, 0.05, 0.02), degrees=True).as_matrix()
                      @ np.diag([-2.0, 2.0, 2.2]))
    affine[:3, 3] = (99.0, -160.0, -29.0)
    img = nib.Nifti1Image(_volume((96, 120, 80)), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in img.shape], indexing="ij")).reshape(3, -1)
    gap = np.linalg.norm((img.get_qform() - img.get_sform()) @ np.vstack([corners, np.ones(8)]), axis=0).max()
    assert gap > 0.2  # over the tolerance
    img.to_filename(tmp_path / "flipped.nii.gz")
    check_input_image(tmp_path / "flipped.nii.gz", label="MTR")
    shifted = affine.copy()
    shifted[0, 3] += 1.0
    img.set_qform(shifted, code=1)
    img.to_filename(tmp_path / "shifted.nii.gz")
    with pytest.raises(InputImageError, match="qform and sform that disagree by up to 1.0"):
        check_input_image(tmp_path / "shifted.nii.gz", label="MTR")


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


def _no_orientation(path: Path) -> Path:
    """Both codes 0: nibabel and ITK then make up different affines from the voxel sizes."""
    img = nib.Nifti1Image(_volume(), np.diag([2.0, 2.0, 4.0, 1.0]))
    img.set_qform(None, code=0)
    img.set_sform(None, code=0)
    img.to_filename(path)
    return path


BAD_IMAGES = [
    (lambda p: _save(p, _volume((8, 8, 4, 2))),
     "has 4 dimensions (8, 8, 4, 2); msynth expects one 3-D volume — pass --bids-filter-file to select another run"),
    (lambda p: _with_nan(p, np.nan), "has 2 NaN/Inf voxels; msynth expects finite intensities"),
    (lambda p: _with_nan(p, np.inf), "has 2 NaN/Inf voxels"),
    (lambda p: _save(p, np.full((8, 8, 4), np.nan, np.float32)), "has 256 NaN/Inf voxels"),
    (_no_orientation, "has no orientation (qform_code and sform_code are 0), so its position against the session's "
                      "other images is unknown — fix the header: re-convert the image from DICOM"),
    (_singular, "has a singular affine"),
    (lambda p: _qform_off(p, 3.0), "has qform and sform that disagree by up to 3.00 mm (tolerance 0.1 mm)"),
    (_truncated, "cannot be read"),
    (lambda p: (p.write_bytes(b"\x1f\x8b" + b"not a gzip stream" * 10), p)[1], "cannot be read"),
    (lambda p: (p.write_bytes(b""), p)[1], "file is empty (0 bytes) — re-export or re-copy the image"),
    (lambda p: p, "file does not exist"),
    (lambda p: (p.symlink_to("gone.nii.gz"), p)[1],
     "is a broken symbolic link (to gone.nii.gz) — check the BIDS dataset and --bids-filter-file"),
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
    # one code set is enough: qform only (sform code 0) as some converters write
    img = nib.Nifti1Image(_volume(), np.diag([2.0, 2.0, 4.0, 1.0]))
    img.set_qform(img.affine, code=1)
    img.set_sform(None, code=0)
    img.to_filename(tmp_path / "c.nii.gz")
    assert check_image(tmp_path / "c.nii.gz", label=LABEL).shape == (8, 8, 4)


def test_singleton_4d_is_squeezed_with_a_note(tmp_path, caplog):
    """A 3-D volume stored as (x, y, z, 1) is read as 3-D, and the log says so, naming the file."""
    path = _save(tmp_path / "sub-03_ses-t1_FLAIR.nii.gz", _volume((16, 16, 12, 1)), np.diag([4.0, 4.0, 5.0, 1.0]))
    with caplog.at_level("INFO", logger="msynth.preprocessing"):
        assert check_input_image(path, label=LABEL).shape == (16, 16, 12)
    assert f"{LABEL} is stored with shape (16, 16, 12, 1); msynth reads it as (16, 16, 12)" in caplog.text
    assert str(path) in caplog.text


# --- a session's raw images: geometry and content (check_input_image) ------------------------------------------------

def _grid(path: Path, shape: tuple[int, ...], zooms: tuple[float, ...], data: np.ndarray | None = None) -> Path:
    """An image of ``shape`` with voxels of ``zooms`` mm (random intensities unless ``data`` is given)."""
    values = np.random.default_rng(0).uniform(1, 2, shape).astype(np.float32) if data is None else data
    return _save(path, values, np.diag([*zooms, 1.0]))


# (how the image is broken, what makes it, expected ndim, message after the label)
BAD_INPUTS = [
    ("100 mm voxels (issue 17: ran 147 s, then asked for 73.8 GiB)", lambda p: _grid(p, (16, 16, 16), (100, 1, 1)),
     3, "has voxels of 100 × 1 × 1 mm; msynth accepts voxel sides of 0.1–12 mm — check the voxel size in the "
        "header"),
    ("um stored as mm", lambda p: _grid(p, (64, 64, 64), (0.001, 0.001, 0.001)),
     3, "has voxels of 0.001 × 0.001 × 0.001 mm; msynth accepts voxel sides of 0.1–12 mm"),
    ("3x3x3 voxels (issue 17: an all-zero preprocessed T2w)", lambda p: _grid(p, (3, 3, 3), (3, 3, 3)),
     3, "has a field of view of 9 × 9 × 9 mm (3 × 3 × 3 voxels of 3 × 3 × 3 mm); msynth accepts 50–400 mm per "
        "axis, a whole brain — pass --bids-filter-file to select a whole-brain run"),
    ("a thin slab", lambda p: _grid(p, (64, 64, 10), (1, 1, 1)),
     3, "has a field of view of 64 × 64 × 10 mm"),
    ("a body-sized field of view", lambda p: _grid(p, (40, 16, 16), (11, 4, 4)),
     3, "has a field of view of 440 × 64 × 64 mm (40 × 16 × 16 voxels of 11 × 4 × 4 mm); msynth accepts "
        "50–400 mm"),
    ("five thick slices", lambda p: _grid(p, (20, 20, 5), (4, 4, 11)),
     3, "has 20 × 20 × 5 voxels; msynth needs at least 8 along each axis for its registration and bias-correction "
        "pyramids — pass --bids-filter-file to select a run with more slices"),
    ("a 4-D series with a tiny grid", lambda p: _grid(p, (4, 4, 2, 8), (2, 2, 4)),
     4, "has a field of view of 8 × 8 × 8 mm"),
    ("all zero", lambda p: _grid(p, (16, 16, 12), (4, 4, 5), np.zeros((16, 16, 12), np.float32)),
     3, "is all zero: it holds no image — re-export or re-convert the image"),
    ("constant (issue 17: 'argmax of an empty sequence')",
     lambda p: _grid(p, (16, 16, 12), (4, 4, 5), np.full((16, 16, 12), 7, np.int16)),
     3, "is constant (every voxel is 7): it holds no image"),
    ("a constant 4-D series", lambda p: _grid(p, (16, 16, 12, 5), (4, 4, 5), np.ones((16, 16, 12, 5), np.float32)),
     4, "is constant (every voxel is 1): it holds no image"),
    ("NaN everywhere", lambda p: _grid(p, (16, 16, 12), (4, 4, 5), np.full((16, 16, 12), np.nan, np.float32)),
     3, "has 3072 NaN/Inf voxels; msynth expects finite intensities"),
    ("no orientation (issue 17: a T2w silently misregistered)", _no_orientation,
     3, "has no orientation (qform_code and sform_code are 0)"),
]


@pytest.mark.parametrize(("make", "ndim", "message"), [row[1:] for row in BAD_INPUTS],
                         ids=[row[0] for row in BAD_INPUTS])
def test_bad_input_image_message(tmp_path, make, ndim, message):
    path = make(tmp_path / "sub-03_ses-t1_FLAIR.nii.gz")
    with pytest.raises(InputImageError, match=re.escape(f"{LABEL} {message}")) as info:
        check_input_image(path, label=LABEL, expect_ndim=ndim)
    assert str(info.value).endswith(f"(file: {path})") and info.value.path == path
    assert "\n" not in str(info.value)


# (what the image is, what makes it, expected ndim)
GOOD_INPUTS = [
    ("0.3x0.3x6 mm (issue 17: within the bounds)", lambda p: _grid(p, (200, 200, 10), (0.3, 0.3, 6)), 3),
    ("12 mm slices, as the 4 mm phantom's T2w", lambda p: _grid(p, (58, 64, 12), (3.6, 3.6, 12.0)), 3),
    ("on the bounds: 0.1 and 12 mm voxels, 50 and 400 mm, 8 voxels",
     lambda p: _grid(p, (500, 40, 8), (0.1, 10, 12)), 3),
    ("a dynamic PET series", lambda p: _grid(p, (34, 42, 36, 4), (4.88, 4.88, 4.88)), 4),
    ("a singleton 4-D volume", lambda p: _grid(p, (16, 16, 12, 1), (4, 4, 5)), 3),
    ("mostly zero with one bright voxel", lambda p: _grid(
        p, (16, 16, 12), (4, 4, 5), np.pad(np.ones((1, 1, 1), np.float32), ((0, 15), (0, 15), (0, 11)))), 3),
]


@pytest.mark.parametrize(("make", "ndim"), [row[1:] for row in GOOD_INPUTS], ids=[row[0] for row in GOOD_INPUTS])
def test_good_input_image_passes(tmp_path, make, ndim):
    path = make(tmp_path / "image.nii.gz")
    assert check_input_image(path, label=LABEL, expect_ndim=ndim).ndim == ndim


def test_tiny_bids_t1w_passes(tmp_path):
    """The MNI template at 4 mm, as the tests' tiny BIDS datasets hold it."""
    from conftest import write_tiny_bids

    root = write_tiny_bids(tmp_path / "bids", {"01": []})
    assert check_input_image(root / "sub-01" / "anat" / "sub-01_T1w.nii.gz", label=LABEL).ndim == 3


@pytest.mark.slow
def test_phantom_sessions_pass(tmp_path):
    """Every image of a 4 mm phantom session passes the checks run before any work (12 mm 2-D slices included)."""
    from msynth.phantom.cohort import generate_cohort
    from msynth.runner import check_inputs
    from msynth.utils.bids import collect_session, load_filter_file, open_layout

    cohort = generate_cohort(tmp_path / "bids", n_controls=0, n_patients=1, voxel_size=4.0, seed=3, n_procs=1)
    data = collect_session(open_layout(cohort.bids_dir), "MS01", "01", load_filter_file(None))
    assert {"T1w", "T2w", "PDw", "FLAIR", "T1SE", "DIR", "MTR", "DWI", "PET"} <= set(data.files)
    check_inputs(data)


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
    ({"bvals": [0] + [-1000] * 7}, ".bval has 7 negative b-value(s) (the first: -1000 at volume 1, counting from 0); "
                                   "b-values are ≥ 0 s/mm² — fix the .bval file"),
    ({"bvals": [0, 1000, 1000, -5, 1000, 1000, 1000, 1000]}, ".bval has 1 negative b-value(s) (the first: -5 at "
                                                              "volume 3, counting from 0)"),
    ({"bvals": [0] + [1000] * 6 + [np.nan]}, ".bval has 1 non-finite value(s) (NaN/Inf) — fix or re-export"),
    ({"bvals": [0] + [1000] * 6 + [np.inf]}, ".bval has 1 non-finite value(s) (NaN/Inf)"),
])
def test_dwi_bad(tmp_path, kwargs, message):
    with pytest.raises(InputImageError, match=re.escape(f"DWI {message}")):
        check_dwi(*_dwi(tmp_path, **kwargs), label="DWI")


def _write_bvec_nan(tmp_path: Path) -> tuple[Path, Path, Path]:
    dwi, bval, bvec = _dwi(tmp_path)
    table = np.loadtxt(bvec)
    table[1, 4] = np.nan
    np.savetxt(bvec, table, fmt="%.6f")
    return dwi, bval, bvec


def _write_text(name: str, text: str | bytes):
    """Replace the .bval or .bvec of a good series with ``text``."""
    def make(tmp_path: Path) -> tuple[Path, Path, Path]:
        files = _dwi(tmp_path)
        target = files[1] if name == "bval" else files[2]
        (target.write_bytes if isinstance(text, bytes) else target.write_text)(text)
        return files
    return make


# (how the gradient file is broken, what makes the series, which file is named, message after the label)
BAD_GRADIENT_FILES = [
    ("words", _write_text("bval", "0 1000 1000 b1000 1000 1000 1000 1000\n"), 1,
     ".bval is not a table of numbers (could not convert string 'b1000' to float64 at row 0, column 4.) — fix or "
     "re-export the .bval file"),
    ("commas", _write_text("bval", "0,1000,1000,1000,1000,1000,1000,1000\n"), 1, ".bval is not a table of numbers"),
    ("ragged rows", _write_text("bvec", "1 0 0 1 0 0 1 0\n0 1 0 0 1 0\n0 0 1 0 0 1 0 1\n"), 2,
     ".bvec is not a table of numbers"),
    ("binary", _write_text("bval", b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x01"), 1, ".bval is not a table of numbers"),
    ("empty", _write_text("bval", ""), 1, ".bval is empty — fix or re-export the .bval file"),
    ("NaN in the .bvec", _write_bvec_nan, 2, ".bvec has 1 non-finite value(s) (NaN/Inf)"),
]


@pytest.mark.parametrize(("make", "named", "message"), [row[1:] for row in BAD_GRADIENT_FILES],
                         ids=[row[0] for row in BAD_GRADIENT_FILES])
def test_dwi_bad_gradient_file(tmp_path, make, named, message):
    files = make(tmp_path)
    with pytest.raises(InputImageError, match=re.escape(f"DWI {message}")) as info:
        check_dwi(*files, label="DWI")
    assert info.value.path == files[named] and str(info.value).endswith(f"(file: {files[named]})")
    assert "\n" not in str(info.value)


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


# --- memory: a session's estimate against the budget ----------------------------------------------------------------

@pytest.mark.parametrize(("shape", "zooms", "model_sizes", "voxels", "grid"), [
    ((48, 60, 50), (4, 4, 4.4), [], 144_000, "the T1w grid 48 × 60 × 50"),
    ((48, 60, 50), (4, 4, 4.4), [8.0], 144_000, "the T1w grid 48 × 60 × 50"),
    ((48, 60, 50), (4, 4, 4.4), [8.0, 4.0], 158_400, "the T1w field of view at 4 mm (48 × 60 × 55)"),
    # issue 17: the tiny T1w with 100 mm voxels ran 147 s, then asked for 73.8 GiB on the 4 mm model grid
    ((50, 59, 48), (100, 100, 100), [4.0], 2_212_500_000, "the T1w field of view at 4 mm (1250 × 1475 × 1200)"),
])
def test_session_grid_voxels(shape, zooms, model_sizes, voxels, grid):
    assert session_grid_voxels(shape, zooms, model_sizes) == (voxels, grid)


def test_memory_estimate_is_checked_against_the_budget(tmp_path):
    path = _grid(tmp_path / "sub-03_ses-t1_T1w.nii.gz", (48, 60, 50), (4, 4, 4.4))
    img = nib.load(path)
    estimate = estimate_memory_gb(144_000)
    assert MEMORY_BASE_GB < estimate < MEMORY_BASE_GB + 0.5
    assert check_memory(img, path, label=LABEL, budget_gb=estimate + 0.01) == estimate
    with pytest.raises(InputImageError) as info:
        check_memory(img, path, label=LABEL, budget_gb=0.5)
    assert str(info.value) == (
        f"{LABEL} would need about {estimate:.1f} GiB of memory (the T1w grid 48 × 60 × 50, 144,000 voxels), more "
        "than the 0.5 GiB allowed — check the voxel size in the header, or run on a machine (or job) with more "
        f"memory (file: {path})")


def test_huge_grid_is_refused_with_the_machines_budget(tmp_path):
    """The T1w of issue 17 with 100 mm voxels (it asked for 73.8 GiB after 147 s): refused before any work."""
    path = _grid(tmp_path / "sub-03_ses-t1_T1w.nii.gz", (50, 59, 48), (100, 100, 100))
    estimate = estimate_memory_gb(2_212_500_000)
    assert estimate > 200
    with pytest.raises(InputImageError, match=rf"would need about {estimate:.1f} GiB of memory \(the T1w field of view "
                                              r"at 4 mm \(1250 × 1475 × 1200\), 2,212,500,000 voxels\), more than "
                                              r"the [\d.]+ GiB available — check the voxel size"):
        check_memory(nib.load(path), path, label=LABEL, model_voxel_sizes=[4.0])


def test_budget_is_the_smallest_of_available_memory_and_cgroup_limits(tmp_path):
    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text("MemTotal:       16777216 kB\nMemAvailable:    8388608 kB\n")
    (proc / "self" / "cgroup").write_text("0::/\n")
    assert available_memory_gb(proc, cgroup) == 8.0
    # cgroup v2 (SLURM): the job's limit counts, its step has none
    (proc / "self" / "cgroup").write_text("0::/slurm/job_1/step_0\n")
    (cgroup / "slurm" / "job_1" / "step_0").mkdir(parents=True)
    (cgroup / "slurm" / "job_1" / "step_0" / "memory.max").write_text("max\n")
    (cgroup / "slurm" / "job_1" / "memory.max").write_text(f"{3 * 2**30}\n")
    assert available_memory_gb(proc, cgroup) == 3.0
    # cgroup v1 (Docker): memory.limit_in_bytes of the memory controller
    (proc / "self" / "cgroup").write_text("4:memory:/docker/abc\n1:cpu,cpuacct:/\n")
    (cgroup / "memory" / "docker" / "abc").mkdir(parents=True)
    (cgroup / "memory" / "docker" / "abc" / "memory.limit_in_bytes").write_text(f"{2 * 2**30}\n")
    assert available_memory_gb(proc, cgroup) == 2.0
    assert 0 < available_memory_gb() < 2**20  # this machine
