"""Find a session's given lesion mask (``--lesion-masks DERIV_DIR``) and the image it was drawn on.

A lesion mask may be traced on any of the session's images (FLAIR most often). Which one is read, in this order,
from the mask's sidecar (``SpatialReference``, then ``Sources``: a BIDS URI or a path relative to the raw dataset),
from its ``space-<key>`` entity (a modality key, e.g. ``space-FLAIR``), and last from its voxel grid (the session
image with the same shape and affine, FLAIR first). The mask then reaches space-T1w through that image's transform.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nb
import numpy as np

from msynth.preprocessing.checks import InputImageError
from msynth.utils.bids import MODALITY_KEYS, SessionData

LOGGER = logging.getLogger("msynth.bids")

#: Images a lesion mask may be drawn on, in the order tried when only its voxel grid tells which.
MASKABLE_KEYS = ("FLAIR", "T2w", "PDw", "DIR", "T1SE", "T1w", "MTR")
_MASK_PATTERN = "*_label-lesion_mask.nii*"
_URI_PREFIX = re.compile(r"^bids:[^:]*:")


@dataclass(frozen=True)
class GivenLesionMask:
    """A lesion mask from ``--lesion-masks``: the file, and the key and raw file of the image it was drawn on."""

    mask: Path
    drawn_on: str
    image: Path


def find_lesion_mask(deriv_dir: Path, data: SessionData) -> GivenLesionMask | None:
    """The lesion mask of one session in a derivatives dataset, or None when it has none.

    Raises
    ------
    InputImageError
        When the mask names an image the session does not have, or no session image shares its grid.
    """
    folder = deriv_dir / f"sub-{data.subject}" / (f"ses-{data.session}" if data.session else "") / "anat"
    prefix = f"sub-{data.subject}" + (f"_ses-{data.session}" if data.session else "") + "_"
    found = sorted(path for path in folder.glob(_MASK_PATTERN) if path.name.startswith(prefix))
    if not found:
        LOGGER.info("%s: no lesion mask in %s", data.label, deriv_dir)
        return None
    if len(found) > 1:
        LOGGER.warning("%s: %d lesion masks in %s; using %s", data.label, len(found), folder,
                       ", ".join(path.name for path in found[:1]))
    mask = found[0]
    key = _key_from_sidecar(mask, data) or _key_from_space(mask, data) or _key_from_grid(mask, data)
    LOGGER.info("%s: lesion mask %s was drawn on the %s", data.label, mask.name, key)
    return GivenLesionMask(mask=mask, drawn_on=key, image=data.files[key])


def _key_from_sidecar(mask: Path, data: SessionData) -> str | None:
    sidecar = mask.with_name(mask.name.split(".nii")[0] + ".json")
    if not sidecar.exists():
        return None
    try:
        meta = json.loads(sidecar.read_text())
    except json.JSONDecodeError as error:
        raise InputImageError(f"{data.label}: lesion mask sidecar", sidecar, f"is not valid JSON ({error})",
                              "fix or remove the sidecar") from error
    references = meta.get("SpatialReference")
    references = [references] if isinstance(references, str) else list(meta.get("Sources") or [])
    by_name = {path.name: key for key, path in data.files.items() if key in MASKABLE_KEYS}
    for reference in references:
        name = Path(_URI_PREFIX.sub("", str(reference))).name
        if name in by_name:
            return by_name[name]
    if references:
        raise InputImageError(f"{data.label}: lesion mask", mask,
                              f"its sidecar names {references[0]!r}, which is not an image of this session",
                              "point SpatialReference at the session's raw image the mask was drawn on")
    return None


def _key_from_space(mask: Path, data: SessionData) -> str | None:
    match = re.search(r"_space-([A-Za-z0-9]+)_", mask.name)
    if not match or match.group(1) not in MODALITY_KEYS:
        return None
    if match.group(1) not in MASKABLE_KEYS:
        raise InputImageError(f"{data.label}: lesion mask", mask, f"is in space-{match.group(1)}",
                              f"msynth reads lesion masks drawn on {', '.join(MASKABLE_KEYS)}")
    key = match.group(1)
    if key not in data.files:
        raise InputImageError(f"{data.label}: lesion mask", mask, f"is in space-{key} but the session has no {key}",
                              "give the mask of an image this session has, or add that image")
    return key


def _key_from_grid(mask: Path, data: SessionData) -> str:
    grid = nb.load(mask)
    for key in MASKABLE_KEYS:
        if key in data.files:
            image = nb.load(data.files[key])
            if image.shape[:3] == grid.shape[:3] and np.allclose(image.affine, grid.affine, atol=1e-3):
                return key
    raise InputImageError(f"{data.label}: lesion mask", mask,
                          f"has shape {grid.shape} and no space- entity or sidecar, and no image of the session has "
                          "its grid", "add SpatialReference to its sidecar, naming the image it was drawn on")
