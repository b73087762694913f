"""Finding a session's given lesion mask and the image it was drawn on (``--lesion-masks``)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from msynth.cli import run as cli
from msynth.preprocessing.checks import InputImageError
from msynth.utils.bids import SessionData
from msynth.utils.lesion_masks import find_lesion_mask

AFFINE_T1W = np.diag([2.0, 2.0, 2.0, 1.0])
AFFINE_FLAIR = np.diag([1.0, 1.0, 4.0, 1.0])


def _image(path: Path, shape: tuple[int, int, int], affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nb.Nifti1Image(np.zeros(shape, np.float32), affine).to_filename(path)
    return path


@pytest.fixture
def session(tmp_path) -> SessionData:
    anat = tmp_path / "bids" / "sub-01" / "ses-1" / "anat"
    return SessionData(subject="01", session="1", files={
        "T1w": _image(anat / "sub-01_ses-1_T1w.nii.gz", (10, 10, 10), AFFINE_T1W),
        "FLAIR": _image(anat / "sub-01_ses-1_FLAIR.nii.gz", (20, 20, 5), AFFINE_FLAIR),
    })


def _mask(deriv: Path, name: str, affine: np.ndarray, shape: tuple[int, int, int], sidecar: dict | None = None):
    path = _image(deriv / "sub-01" / "ses-1" / "anat" / name, shape, affine)
    if sidecar is not None:
        path.with_name(name.replace(".nii.gz", ".json")).write_text(json.dumps(sidecar))
    return path


@pytest.mark.parametrize(("name", "sidecar", "affine", "shape", "expected"), [
    ("sub-01_ses-1_label-lesion_mask.nii.gz",
     {"SpatialReference": "bids:raw:sub-01/ses-1/anat/sub-01_ses-1_FLAIR.nii.gz"}, np.eye(4), (3, 3, 3), "FLAIR"),
    ("sub-01_ses-1_label-lesion_mask.nii.gz",
     {"Sources": ["sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"]}, np.eye(4), (3, 3, 3), "T1w"),
    ("sub-01_ses-1_space-FLAIR_label-lesion_mask.nii.gz", None, np.eye(4), (3, 3, 3), "FLAIR"),
    ("sub-01_ses-1_label-lesion_mask.nii.gz", None, AFFINE_FLAIR, (20, 20, 5), "FLAIR"),
    ("sub-01_ses-1_label-lesion_mask.nii.gz", None, AFFINE_T1W, (10, 10, 10), "T1w"),
])
def test_drawn_on(tmp_path, session, name, sidecar, affine, shape, expected):
    """Sidecar first, then the space- entity, then the grid tell which image the mask was drawn on."""
    deriv = tmp_path / "lesions"
    mask = _mask(deriv, name, affine, shape, sidecar)
    found = find_lesion_mask(deriv, session)
    assert (found.mask, found.drawn_on, found.image) == (mask, expected, session.files[expected])


@pytest.mark.parametrize(("name", "sidecar", "message"), [
    ("sub-01_ses-1_space-T2w_label-lesion_mask.nii.gz", None, "is in space-T2w but the session has no T2w"),
    ("sub-01_ses-1_space-PET_label-lesion_mask.nii.gz", None, "msynth reads lesion masks drawn on FLAIR"),
    ("sub-01_ses-1_label-lesion_mask.nii.gz", {"SpatialReference": "bids:raw:sub-01/anat/sub-01_T2w.nii.gz"},
     "which is not an image of this session"),
    ("sub-01_ses-1_label-lesion_mask.nii.gz", None, "no image of the session has its grid"),
])
def test_drawn_on_errors(tmp_path, session, name, sidecar, message):
    deriv = tmp_path / "lesions"
    _mask(deriv, name, np.eye(4), (3, 3, 3), sidecar)
    with pytest.raises(InputImageError, match=message):
        find_lesion_mask(deriv, session)


def test_no_mask_for_the_session(tmp_path, session):
    deriv = tmp_path / "lesions"
    (deriv / "sub-01" / "ses-2" / "anat").mkdir(parents=True)
    _image(deriv / "sub-01" / "ses-2" / "anat" / "sub-01_ses-2_label-lesion_mask.nii.gz", (3, 3, 3), np.eye(4))
    assert find_lesion_mask(deriv, session) is None


@pytest.mark.parametrize(("make", "message"), [
    (lambda root: root / "missing", "does not exist"),
    (lambda root: root, "holds no sub-"),
])
def test_lesion_masks_option_checked(tiny_bids, tmp_path, capsys, make, message):
    folder = make(tmp_path / "empty")
    (tmp_path / "empty").mkdir(exist_ok=True)
    code = cli.main([str(tiny_bids), str(tmp_path / "out"), "participant", "--lesion-masks", str(folder),
                     "--skip-bids-validation"])
    assert code == 1 and message in capsys.readouterr().err
