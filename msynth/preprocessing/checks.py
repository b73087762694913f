"""Input sanity checks run before any preprocessing.

Every check raises :class:`InputImageError` with one message that names the subject, session and modality (the
``label``), the cause, what to do about it, and the file, so that the participant can be marked as failed with a
message a user can act on, while the other participants go on.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import zlib
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np

LOGGER = logging.getLogger("msynth.preprocessing")

#: Largest distance (mm) allowed between the positions that the qform and the sform give to the corners of the field
#: of view, when both are set. Tools disagree on which of the two they read (nibabel prefers the sform, ITK/ANTs may
#: use the qform), so a larger disagreement would silently shift one modality against another.
QFORM_SFORM_TOLERANCE_MM = 0.1

#: b-values at or below this (s/mm²) count as b=0 volumes (scanners often store b=5 or b=10 for the b=0 images).
B0_THRESHOLD = 50.0

_DWI_MIN_DIRECTIONS = 6
_BVEC_NORM_TOLERANCE = 0.1
_FRAME_OVERLAP_TOLERANCE_S = 0.5


class InputImageError(ValueError):
    """An input file cannot be used; the message says which file, why, and what to do.

    Attributes
    ----------
    path : pathlib.Path
        The offending file.
    label : str
        The prefix naming subject, session and modality, e.g. ``"sub-03 ses-t1: FLAIR"``.
    """

    def __init__(self, label: str, path: str | PathLike[str], cause: str, advice: str) -> None:
        self.label = label
        self.path = Path(path)
        super().__init__(f"{label} {cause} — {advice} (file: {self.path})")


def check_image(
    path: str | PathLike[str],
    *,
    label: str,
    expect_ndim: int = 3,
    qform_tolerance_mm: float = QFORM_SFORM_TOLERANCE_MM,
) -> nib.Nifti1Image:
    """Load a NIfTI image and check that msynth can use it.

    Checks, in order: the file exists and is not empty; nibabel can read the header and the whole data block (a
    truncated or corrupt gzip fails here); no dimension has length 0; the number of dimensions, ignoring trailing
    dimensions of length 1; all voxels are finite; the affine is finite and not singular; and, when both the qform
    and the sform codes are > 0, that they place the corners of the field of view within ``qform_tolerance_mm`` of
    each other.

    Parameters
    ----------
    path
        NIfTI file (``.nii`` or ``.nii.gz``).
    label
        Prefix for messages naming subject, session and modality, e.g. ``"sub-03 ses-t1: FLAIR"``.
    expect_ndim
        3 for a single volume, 4 for a series (DWI, dynamic PET).
    qform_tolerance_mm
        Largest allowed distance between qform and sform positions of the field-of-view corners.

    Returns
    -------
    nibabel.Nifti1Image
        The loaded image, with trailing singleton dimensions dropped (a ``(x, y, z, 1)`` image becomes 3-D when
        ``expect_ndim`` is 3).

    Raises
    ------
    InputImageError
        With the cause and the remedy.
    """
    path = Path(path)
    if not path.is_file():
        raise InputImageError(label, path, "file does not exist", "check the BIDS dataset and --bids-filter-file")
    if path.stat().st_size == 0:
        raise InputImageError(label, path, "file is empty (0 bytes)", "re-export or re-copy the image")
    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise InputImageError(
            label, path, f"cannot be read ({type(exc).__name__}: {exc}); the file is truncated or corrupt",
            "re-copy or re-convert the image (check the download or the DICOM conversion)",
        ) from exc

    shape = tuple(int(s) for s in img.shape)
    while len(shape) > expect_ndim and shape[-1] == 1:
        shape = shape[:-1]
    if 0 in shape:
        raise InputImageError(label, path, f"has an empty dimension {shape}", "re-export or re-convert the image")
    if len(shape) != expect_ndim:
        what = "one 3-D volume" if expect_ndim == 3 else f"a {expect_ndim}-D series"
        raise InputImageError(
            label, path, f"has {len(shape)} dimensions {shape}; msynth expects {what}",
            "pass --bids-filter-file to select another run",
        )
    if shape != img.shape:
        data = data.reshape(shape)
        img = img.__class__(data, img.affine, img.header)

    n_bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
    if n_bad:
        raise InputImageError(
            label, path, f"has {n_bad} NaN/Inf voxels; msynth expects finite intensities",
            "replace them (e.g. with 0) or re-convert the image",
        )

    _check_affine(img, path, label=label, tolerance_mm=qform_tolerance_mm)
    return img


def _check_affine(img: nib.Nifti1Image, path: Path, *, label: str, tolerance_mm: float) -> None:
    """Raise when the affine is non-finite or singular, or qform and sform disagree."""
    affine = img.affine
    if not np.all(np.isfinite(affine)):
        raise InputImageError(label, path, "has a non-finite affine (NaN/Inf in the header)",
                              "fix the qform/sform of the header")
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    # Determinant relative to the voxel volume: 1 for an orthogonal grid, 0 for a degenerate (flat) one.
    if np.any(zooms == 0) or abs(np.linalg.det(affine[:3, :3])) / np.prod(zooms) < 1e-3:
        raise InputImageError(label, path, "has a singular affine (the voxel axes are degenerate)",
                              "fix the qform/sform of the header")
    header = img.header
    if not hasattr(header, "get_qform"):
        return
    qform, qcode = header.get_qform(coded=True)
    sform, scode = header.get_sform(coded=True)
    if qform is None or sform is None or not (int(qcode) > 0 and int(scode) > 0):
        return
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in img.shape[:3]], indexing="ij")).reshape(3, -1)
    corners = np.vstack([corners, np.ones(corners.shape[1])])
    gap = float(np.linalg.norm((qform - sform) @ corners, axis=0).max())
    if gap > tolerance_mm:
        raise InputImageError(
            label, path,
            f"has qform and sform that disagree by up to {gap:.2f} mm (tolerance {tolerance_mm} mm)",
            "tools would place the image differently; fix the header, e.g. with nibabel "
            "`img.set_qform(img.get_sform())`, or set one of the two codes to 0",
        )


def check_dwi(
    dwi: str | PathLike[str],
    bval: str | PathLike[str] | None,
    bvec: str | PathLike[str] | None,
    *,
    label: str,
    b0_threshold: float = B0_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray]:
    """Check a diffusion series and its FSL-format gradient files.

    Parameters
    ----------
    dwi
        4-D diffusion-weighted series (checked with :func:`check_image`).
    bval, bvec
        BIDS ``.bval`` (one row of N b-values, s/mm²) and ``.bvec`` (3 rows of N components); ``None`` when absent.
    label
        Message prefix, e.g. ``"sub-03 ses-t1: DWI"``.
    b0_threshold
        b-values at or below this count as b=0; at least one b=0 volume and six diffusion-weighted volumes are needed
        for a tensor fit, and the diffusion-weighted volumes need unit-norm vectors (±10 %).

    Returns
    -------
    bvals : numpy.ndarray, shape (N,)
    bvecs : numpy.ndarray, shape (N, 3)
    """
    img = check_image(dwi, label=label, expect_ndim=4)
    n_volumes = img.shape[3]
    bvals = _read_table(bval, label=label, kind=".bval")
    bvecs = _read_table(bvec, label=label, kind=".bvec")
    bvals = bvals.ravel() if bvals.ndim == 2 and 1 in bvals.shape else bvals
    if bvals.ndim != 1:
        raise InputImageError(label, bval, f".bval has shape {bvals.shape}; BIDS expects one row of b-values",
                              "write the b-values on one line")
    if bvals.size != n_volumes:
        raise InputImageError(label, bval, f".bval has {bvals.size} b-values but the DWI has {n_volumes} volumes",
                              "use the .bval written with this series")
    if bvecs.ndim != 2 or bvecs.shape[0] != 3:
        hint = ("; it looks transposed" if bvecs.ndim == 2 and bvecs.shape[1] == 3 else "")
        raise InputImageError(label, bvec, f".bvec has shape {bvecs.shape}{hint}; BIDS expects 3 rows of N values",
                              "write the vectors as 3 rows (x, y, z)")
    if bvecs.shape[1] != n_volumes:
        raise InputImageError(label, bvec,
                              f".bvec has {bvecs.shape[1]} vectors but the DWI has {n_volumes} volumes",
                              "use the .bvec written with this series")
    weighted = bvals > b0_threshold
    if not np.any(~weighted):
        raise InputImageError(label, bval, f"has no b=0 volume (b ≤ {b0_threshold:g} s/mm²)",
                              "a b=0 volume is needed for the brain mask and the registration to T1w")
    if np.count_nonzero(weighted) < _DWI_MIN_DIRECTIONS:
        raise InputImageError(label, bval, f"has {np.count_nonzero(weighted)} diffusion-weighted volumes; "
                              f"a tensor fit needs at least {_DWI_MIN_DIRECTIONS}", "select another DWI run")
    norms = np.linalg.norm(bvecs[:, weighted], axis=0)
    if np.any(np.abs(norms - 1) > _BVEC_NORM_TOLERANCE):
        raise InputImageError(label, bvec, "has diffusion-weighted volumes whose gradient vectors are not unit "
                              f"vectors (norms {norms.min():.2f}–{norms.max():.2f})",
                              "check the .bvec file (BIDS expects unit vectors)")
    return bvals, bvecs.T


def _read_table(path: str | PathLike[str] | None, *, label: str, kind: str) -> np.ndarray:
    """Read a whitespace-separated numeric text file, translating failures into InputImageError."""
    if path is None or not Path(path).is_file():
        raise InputImageError(label, path or f"<no {kind}>", f"has no {kind} file",
                              f"add the {kind} beside the DWI series (BIDS requires it)")
    try:
        table = np.loadtxt(path, ndmin=2)
    except ValueError as exc:
        raise InputImageError(label, path, f"{kind} is not a table of numbers ({exc})",
                              f"fix or re-export the {kind} file") from exc
    if table.size == 0:
        raise InputImageError(label, path, f"{kind} is empty", f"fix or re-export the {kind} file")
    return table


def check_pet_sidecar(
    json_path: str | PathLike[str] | None,
    n_frames: int,
    *,
    label: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Check the frame timing of a dynamic PET series in its BIDS-PET sidecar.

    Parameters
    ----------
    json_path
        The ``_pet.json`` sidecar; ``None`` when absent.
    n_frames
        Number of frames (4th dimension) of the PET series.
    label
        Message prefix, e.g. ``"sub-03 ses-t1: PET"``.

    Returns
    -------
    starts, durations : numpy.ndarray, shape (n_frames,)
        ``FrameTimesStart`` and ``FrameDuration`` in seconds; starts strictly increasing, durations positive, frames
        not overlapping (0.5 s tolerance for rounding).
    """
    if json_path is None or not Path(json_path).is_file():
        raise InputImageError(label, json_path or "<no sidecar>", "has no JSON sidecar with the frame timing",
                              "add FrameTimesStart and FrameDuration (BIDS-PET) beside the PET series")
    try:
        meta = json.loads(Path(json_path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputImageError(label, json_path, f"sidecar is not valid JSON ({exc})", "fix the JSON file") from exc
    return check_pet_timing(meta, n_frames, label=label, source=json_path)


def check_pet_timing(
    meta: Mapping[str, object],
    n_frames: int,
    *,
    label: str,
    source: str | PathLike[str],
) -> tuple[np.ndarray, np.ndarray]:
    """Check the frame timing in BIDS-PET metadata (JSON inheritance already applied).

    Parameters
    ----------
    meta
        The PET series' metadata.
    n_frames
        Number of frames (4th dimension) of the series.
    label
        Message prefix, e.g. ``"sub-03 ses-t1: PET"``.
    source
        The file named in error messages (the sidecar, or the series whose metadata this is).

    Returns
    -------
    starts, durations : numpy.ndarray, shape (n_frames,)
        See :func:`check_pet_sidecar`.
    """
    arrays = {}
    for key in ("FrameTimesStart", "FrameDuration"):
        value = meta.get(key)
        if value is None:
            raise InputImageError(label, source, f"sidecar has no {key}",
                                  "add FrameTimesStart and FrameDuration (seconds, one per frame; BIDS-PET)")
        if isinstance(value, (int, float)):
            value = [value]
        if not (isinstance(value, Sequence) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                    and math.isfinite(v) for v in value)):
            raise InputImageError(label, source, f"sidecar {key} is not a list of finite numbers",
                                  "write the frame timing in seconds, one number per frame")
        if len(value) != n_frames:
            raise InputImageError(label, source, f"sidecar {key} has {len(value)} values but the PET series "
                                  f"has {n_frames} frames", "use the sidecar written with this series")
        arrays[key] = np.asarray(value, dtype=float)
    starts, durations = arrays["FrameTimesStart"], arrays["FrameDuration"]
    if np.any(durations <= 0):
        raise InputImageError(label, source, "sidecar FrameDuration has values ≤ 0",
                              "frame durations must be positive (seconds)")
    if np.any(np.diff(starts) <= 0):
        raise InputImageError(label, source, "sidecar FrameTimesStart is not strictly increasing",
                              "list the frames in acquisition order")
    if np.any(starts[:-1] + durations[:-1] > starts[1:] + _FRAME_OVERLAP_TOLERANCE_S):
        raise InputImageError(label, source, "sidecar frames overlap (a frame starts before the previous ends)",
                              "check FrameTimesStart and FrameDuration")
    return starts, durations
