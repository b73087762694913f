"""Input sanity checks run before any preprocessing.

Every check raises :class:`InputImageError` with one message that names the subject, session and modality (the
``label``), the cause, what to do about it, and the file, so that the participant can be marked as failed with a
message a user can act on, while the other participants go on.

Two levels: :func:`check_image` asks whether a file is a usable NIfTI image at all (readable, the expected number of
dimensions, finite, a sound and present orientation) and is run wherever msynth reads an image, masks and
intermediate files included; :func:`check_input_image` adds what a session's raw image must also be — a plausible
brain acquisition (:func:`check_geometry`) that holds an image (:func:`check_content`) — and is run on every image
of a session before any work.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import math
import os
import warnings
import zlib
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.affines import voxel_sizes

from msynth.preprocessing._io import squeeze_to

LOGGER = logging.getLogger("msynth.preprocessing")

#: Largest distance (mm) allowed between the positions that the qform and the sform give to the corners of the field
#: of view, when both are set. Tools disagree on which of the two they read (nibabel prefers the sform, ITK/ANTs may
#: use the qform), so a larger disagreement would silently shift one modality against another.
QFORM_SFORM_TOLERANCE_MM = 0.1

#: b-values at or below this (s/mm²) count as b=0 volumes (scanners often store b=5 or b=10 for the b=0 images).
B0_THRESHOLD = 50.0

#: Voxel sides (mm) accepted for a session's images. Real MR and PET voxels lie between about 0.2 mm (high-resolution
#: in-plane) and 8 mm (2-D slices with a gap, older PET); values outside say that the header is wrong — a unit
#: error (µm or cm written as mm) or a missing pixdim — and such an image fails late and expensively (a T1w with
#: 100 mm voxels ran 147 s, then asked for 73.8 GiB). Issue 17 proposed 10 mm as the upper bound; it is 12 mm
#: because the project's own 4 mm test phantom (``msynth-phantom --voxel-size 4``) scales the 3 mm slices of its
#: 2-D T2w, PDw and T1SE protocols to 12 mm, and such coarse slices are harmless. A µm-as-mm error fails the lower
#: bound; a cm-as-mm error (voxels ×10) mostly fails the field-of-view bound below.
MIN_VOXEL_SIZE_MM = 0.1
MAX_VOXEL_SIZE_MM = 12.0

#: Field of view (voxels × voxel side, mm) accepted along each array axis. An adult head is about 140 × 170 ×
#: 120 mm; 50 mm still admits a slab through the brain, while a scout, a few slices or a crop fall below it (a
#: 3 × 3 × 3-voxel T2w, 9 mm, was published as an all-zero preprocessed T2w). Head MR and PET fields of view stay
#: below about 300 mm; 400 mm admits a body-coil or whole-body PET field of view, and more means a wrong voxel size
#: in the header (a cm-as-mm error).
MIN_FOV_MM = 50.0
MAX_FOV_MM = 400.0

#: Fewest voxels along each of the three spatial axes. The registrations and N4 work on pyramids shrunk up to 4×
#: (:data:`msynth.preprocessing.registration.PYRAMID`, ``N4_MAX_SHRINK``), and ITK needs at least 2 voxels per
#: axis at the coarsest level to compute gradients and to interpolate: 4 × 2 = 8. The bounds above already imply
#: at least 5 (50 mm / 12 mm); this catches a thick-slab acquisition of a few slices.
MIN_VOXELS_PER_AXIS = 8

#: Peak memory of one session at the participant level ≈ ``MEMORY_BASE_GB`` + ``MEMORY_BYTES_PER_VOXEL`` × the voxels
#: of the largest grid its work builds on the T1w field of view (:func:`session_grid_voxels`). Measured as the maximum
#: resident set size (``/usr/bin/time -v``, ``--nprocs 1``: one process): the per-voxel part on a T1w-only session
#: (``write_tiny_bids``: the MNI template, skull-stripped) at 4 mm (141 600 voxels: 1.28 GiB) and 1 mm (8 675 469
#: voxels: 2.12 GiB), 106 bytes per voxel (N4, Atropos and the template registration on the T1w grid); the base on a
#: whole session of the 4 mm phantom (every modality, deepbet, both shipped models; 144 000 voxels: 1.46 GiB), less
#: its voxels' part. The 2 mm phantom (1 152 000 voxels) peaked at 1.43 GiB, below the 1.56 GiB estimated. The
#: issue-17 T1w with 100 mm voxels would build a 2.2-billion-voxel grid for a 4 mm model: about 230 GiB.
MEMORY_BASE_GB = 1.45
MEMORY_BYTES_PER_VOXEL = 110.0

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
    dimensions of length 1 (dropped, with a logged note); all voxels are finite; the image has an orientation (its
    qform or sform code is > 0); the affine is finite and not singular; and, when both the qform and the sform codes
    are > 0, that they place the corners of the field of view within ``qform_tolerance_mm`` of each other.

    This is what any image msynth reads must pass, masks and intermediate files included; a session's raw images
    also go through :func:`check_input_image`.

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
    img, _ = _load_image(Path(path), label=label, expect_ndim=expect_ndim, qform_tolerance_mm=qform_tolerance_mm)
    return img


def check_input_image(
    path: str | PathLike[str],
    *,
    label: str,
    expect_ndim: int = 3,
    qform_tolerance_mm: float = QFORM_SFORM_TOLERANCE_MM,
) -> nib.Nifti1Image:
    """Check one of a session's raw images before any work: :func:`check_image`, geometry and content.

    Parameters
    ----------
    path, label, expect_ndim, qform_tolerance_mm
        See :func:`check_image`.

    Returns
    -------
    nibabel.Nifti1Image
        The loaded image, as :func:`check_image` returns it.

    Raises
    ------
    InputImageError
        From :func:`check_image`, :func:`check_geometry` or :func:`check_content`, in that order.
    """
    path = Path(path)
    img, data = _load_image(path, label=label, expect_ndim=expect_ndim, qform_tolerance_mm=qform_tolerance_mm)
    check_geometry(img, path, label=label)
    check_content(data, path, label=label)
    return img


def _load_image(
    path: Path, *, label: str, expect_ndim: int, qform_tolerance_mm: float,
) -> tuple[nib.Nifti1Image, np.ndarray]:
    """The checks of :func:`check_image`; returns the image and its (scaled) voxel array, read once."""
    if not path.is_file():
        cause = f"is a broken symbolic link (to {os.readlink(path)})" if path.is_symlink() else "file does not exist"
        raise InputImageError(label, path, cause, "check the BIDS dataset and --bids-filter-file")
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

    squeezed = squeeze_to(img, expect_ndim)
    shape = tuple(int(s) for s in squeezed.shape)
    if 0 in shape:
        raise InputImageError(label, path, f"has an empty dimension {shape}", "re-export or re-convert the image")
    if len(shape) != expect_ndim:
        what = "one 3-D volume" if expect_ndim == 3 else f"a {expect_ndim}-D series"
        raise InputImageError(
            label, path, f"has {len(shape)} dimensions {shape}; msynth expects {what}",
            "pass --bids-filter-file to select another run",
        )
    if squeezed is not img:
        LOGGER.info("%s is stored with shape %s; msynth reads it as %s (trailing dimensions of length 1 dropped; "
                    "file: %s)", label, tuple(img.shape), shape, path)
        img, data = squeezed, data.reshape(shape)

    n_bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
    if n_bad:
        raise InputImageError(
            label, path, f"has {n_bad} NaN/Inf voxels; msynth expects finite intensities",
            "replace them (e.g. with 0) or re-convert the image",
        )

    _check_orientation(img, path, label=label)
    _check_affine(img, path, label=label, tolerance_mm=qform_tolerance_mm)
    return img, data


def _check_orientation(img: nib.Nifti1Image, path: Path, *, label: str) -> None:
    """Raise when neither the qform nor the sform is set: the image has no position in the scanner.

    nibabel then makes up an affine from the voxel sizes alone, and ANTs/ITK another one, so the image would be
    placed wrongly against the session's other images without any error (a T2w so stored correlated 0.04 with a
    clean run after registration to the T1w).
    """
    header = img.header
    if "qform_code" not in header or "sform_code" not in header:
        return  # Analyze-style header: no orientation fields to read
    if int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
        raise InputImageError(
            label, path, "has no orientation (qform_code and sform_code are 0), so its position against the "
            "session's other images is unknown",
            "fix the header: re-convert the image from DICOM (e.g. with dcm2niix), or copy the qform/sform of the "
            "image it was derived from",
        )


def check_geometry(img: nib.Nifti1Image, path: str | PathLike[str], *, label: str) -> None:
    """Check that an image's voxel grid is that of a plausible brain acquisition.

    Checks, in order: every voxel side (the norms of the affine's columns) within :data:`MIN_VOXEL_SIZE_MM` –
    :data:`MAX_VOXEL_SIZE_MM`; the field of view (voxels × voxel side) within :data:`MIN_FOV_MM` –
    :data:`MAX_FOV_MM` along each spatial axis; at least :data:`MIN_VOXELS_PER_AXIS` voxels along each spatial axis.
    The first three dimensions are the spatial ones; a 4th (volumes, frames) is not checked.

    Parameters
    ----------
    img
        The image, as :func:`check_image` returns it.
    path
        The file, named in the message.
    label
        Prefix for messages naming subject, session and modality.

    Raises
    ------
    InputImageError
        With the offending sizes and the accepted range.
    """
    shape = np.asarray(img.shape[:3])
    # Headers store float32: a 12 mm voxel may read as 12.000001 mm. Sizes within 1e-4 (relative) of a bound pass.
    zooms = voxel_sizes(img.affine)
    fov = shape * zooms
    if _outside(zooms, MIN_VOXEL_SIZE_MM, MAX_VOXEL_SIZE_MM):
        raise InputImageError(
            label, path, f"has voxels of {_sizes(zooms)} mm; msynth accepts voxel sides of "
            f"{MIN_VOXEL_SIZE_MM:g}–{MAX_VOXEL_SIZE_MM:g} mm",
            "check the voxel size in the header (pixdim and the qform/sform; a unit error, µm or cm stored as mm, "
            "gives such values)",
        )
    if _outside(fov, MIN_FOV_MM, MAX_FOV_MM):
        raise InputImageError(
            label, path, f"has a field of view of {_sizes(fov)} mm ({_counts(shape)} voxels of {_sizes(zooms)} mm); "
            f"msynth accepts {MIN_FOV_MM:g}–{MAX_FOV_MM:g} mm per axis, a whole brain",
            "pass --bids-filter-file to select a whole-brain run, or check the voxel size in the header",
        )
    if np.any(shape < MIN_VOXELS_PER_AXIS):
        raise InputImageError(
            label, path, f"has {_counts(shape)} voxels; msynth needs at least {MIN_VOXELS_PER_AXIS} along each axis "
            "for its registration and bias-correction pyramids",
            "pass --bids-filter-file to select a run with more slices",
        )


def _outside(values: np.ndarray, low: float, high: float, rtol: float = 1e-4) -> bool:
    """Whether any value lies outside ``[low, high]`` by more than ``rtol`` of the bound (float32 header rounding)."""
    return bool(np.any(values < low * (1 - rtol)) or np.any(values > high * (1 + rtol)))


def _sizes(values: np.ndarray) -> str:
    """``0.3 × 0.3 × 6``: sizes per axis for a message, 3 significant digits."""
    return " × ".join(f"{float(v):.3g}" for v in values)


def _counts(values: np.ndarray) -> str:
    """``1250 × 1475 × 1200``: voxel counts per axis for a message."""
    return " × ".join(str(int(v)) for v in values)


def check_content(data: np.ndarray, path: str | PathLike[str], *, label: str) -> None:
    """Check that an image holds an image: not all zero, not one constant value.

    Non-finite voxels are refused earlier, by :func:`check_image`. A 4-D series is judged as a whole.

    Parameters
    ----------
    data
        The voxel values (after the header's scaling), e.g. ``np.asanyarray(img.dataobj)``.
    path
        The file, named in the message.
    label
        Prefix for messages naming subject, session and modality.

    Raises
    ------
    InputImageError
        Naming the value that fills the image.
    """
    low, high = float(np.min(data)), float(np.max(data))
    if low != high:
        return
    cause = "is all zero" if low == 0 else f"is constant (every voxel is {low:g})"
    raise InputImageError(label, path, f"{cause}: it holds no image",
                          "re-export or re-convert the image (check the DICOM conversion), or remove it")


def session_grid_voxels(
    shape: Sequence[int], zooms: Sequence[float], model_voxel_sizes: Sequence[float] = (),
) -> tuple[int, str]:
    """The largest voxel grid a session's work builds on its T1w: the T1w grid, or its field of view at a model's size.

    The synthesis resamples its inputs onto the T1w's field of view at the model's voxel size
    (:func:`msynth.preprocessing.resample.target_grid`: extent ÷ size, rounded, at least 1 voxel per axis).

    Parameters
    ----------
    shape, zooms
        The T1w's first three dimensions and voxel sides (mm).
    model_voxel_sizes
        Voxel sides (mm) of the models that will run (``voxel_size_mm`` of their cards).

    Returns
    -------
    voxels : int
    grid : str
        Which grid, for a message, e.g. ``"the T1w grid 256 × 256 × 176"``.

    Examples
    --------
    A 1 mm T1w, and the T1w with 100 mm voxels of issue 17 under a 4 mm model:

    >>> session_grid_voxels((176, 256, 256), (1, 1, 1), [4.0])
    (11534336, 'the T1w grid 176 × 256 × 256')
    >>> session_grid_voxels((50, 59, 48), (100, 100, 100), [4.0])
    (2212500000, 'the T1w field of view at 4 mm (1250 × 1475 × 1200)')
    """
    shape = np.asarray(shape[:3], dtype=int)
    extent = shape * np.asarray(zooms[:3], dtype=float)
    grids = [(int(np.prod(shape)), f"the T1w grid {_counts(shape)}")]
    for size in model_voxel_sizes:
        resampled = np.maximum(np.round(extent / size), 1).astype(int)
        grids.append((int(np.prod(resampled)), f"the T1w field of view at {size:g} mm ({_counts(resampled)})"))
    return max(grids, key=lambda grid: grid[0])


def estimate_memory_gb(grid_voxels: int) -> float:
    """Peak memory (GiB) of one session whose largest grid has ``grid_voxels`` voxels (see :data:`MEMORY_BASE_GB`)."""
    return MEMORY_BASE_GB + MEMORY_BYTES_PER_VOXEL * grid_voxels / 2**30


def available_memory_gb(proc: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")) -> float:
    """Memory (GiB) this process may use: the machine's available memory, capped by its control-group limits.

    Containers and batch jobs (SLURM, Kubernetes) limit the memory of the job's control group: ``memory.max``
    (cgroup v2) or ``memory.limit_in_bytes`` (v1); the limits of the process's group and of every group above it
    count. Without ``/proc`` (not Linux), the machine's physical memory.

    Parameters
    ----------
    proc, cgroup_root
        Where the proc and cgroup file systems are mounted.
    """
    try:
        meminfo = (proc / "meminfo").read_text()
    except OSError:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    available = next(int(line.split()[1]) * 1024 for line in meminfo.splitlines() if line.startswith("MemAvailable:"))
    limits = [available]
    for limit in _cgroup_limit_files(proc / "self" / "cgroup", cgroup_root):
        with contextlib.suppress(OSError, ValueError):
            limits.append(int(limit.read_text().strip()))  # "max" (no limit) is a ValueError
    return min(limits) / 2**30


def _cgroup_limit_files(membership: Path, cgroup_root: Path) -> list[Path]:
    """The memory-limit files of this process's control group and of the groups above it (v2 and v1)."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return []
    files = []
    for line in lines:  # "0::/job/step" (v2) or "4:memory:/job/step" (v1)
        _, controllers, group = line.split(":", 2)
        if controllers == "":
            root, name = cgroup_root, "memory.max"
        elif "memory" in controllers.split(","):
            root, name = cgroup_root / "memory", "memory.limit_in_bytes"
        else:
            continue
        folder = root / group.strip().lstrip("/")
        files += [folder / name, *(parent / name for parent in folder.parents if parent.is_relative_to(root))]
    return files


def check_memory(
    img: nib.Nifti1Image,
    path: str | PathLike[str],
    *,
    label: str,
    model_voxel_sizes: Sequence[float] = (),
    budget_gb: float | None = None,
) -> float:
    """Refuse a session whose estimated peak memory exceeds the budget, before any work.

    Parameters
    ----------
    img
        The session's T1w (its header is enough: nothing is read).
    path
        Its file, named in the message.
    label
        Prefix for messages naming subject and session, e.g. ``"sub-03 ses-t1: T1w"``.
    model_voxel_sizes
        Voxel sides (mm) of the models that will run on the session.
    budget_gb
        Memory msynth may use (GiB); ``None``: :func:`available_memory_gb`.

    Returns
    -------
    float
        The estimate (GiB).

    Raises
    ------
    InputImageError
        Naming the grid, the estimate and the budget.
    """
    zooms = voxel_sizes(img.affine)
    voxels, grid = session_grid_voxels(img.shape, zooms, model_voxel_sizes)
    estimate = estimate_memory_gb(voxels)
    budget = available_memory_gb() if budget_gb is None else budget_gb
    if estimate > budget:
        raise InputImageError(
            label, path, f"would need about {estimate:.1f} GiB of memory ({grid}, {voxels:,} voxels), more than the "
            f"{budget:.1f} GiB {'available' if budget_gb is None else 'allowed'}",
            "check the voxel size in the header, or run on a machine (or job) with more memory",
        )
    return estimate


def _check_affine(img: nib.Nifti1Image, path: Path, *, label: str, tolerance_mm: float) -> None:
    """Raise when the affine is non-finite or singular, or qform and sform disagree."""
    affine = img.affine
    if not np.all(np.isfinite(affine)):
        raise InputImageError(label, path, "has a non-finite affine (NaN/Inf in the header)",
                              "fix the qform/sform of the header")
    zooms = voxel_sizes(affine)
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
    # The qform is a float32 quaternion, which cannot hold every rotation exactly (near 180 degrees, e.g. a
    # left-right flipped oblique slab, it is off by up to ~1e-3): a qform equal to the sform as the qform can store it
    # is as consistent as the header can be, whatever the gap.
    if gap > tolerance_mm and not np.allclose(qform, _as_qform(sform), rtol=0, atol=1e-5):
        raise InputImageError(
            label, path,
            f"has qform and sform that disagree by up to {gap:.2f} mm (tolerance {tolerance_mm} mm)",
            "tools would place the image differently; fix the header, e.g. with nibabel "
            "`img.set_qform(img.get_sform())`, or set one of the two codes to 0",
        )


def _as_qform(sform: np.ndarray) -> np.ndarray:
    """``sform`` as a NIfTI-1 qform stores it (a float32 quaternion, offsets and voxel sizes)."""
    header = nib.Nifti1Header()
    header.set_qform(sform, code=1)
    return header.get_qform()


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

    Both files must hold finite numbers only, one per volume (``.bvec``: three per volume), and the b-values must be
    ≥ 0 (a negative b-value fits without error and gives nonsense: −1000 raised FA by 286 %).

    Returns
    -------
    bvals : numpy.ndarray, shape (N,)
    bvecs : numpy.ndarray, shape (N, 3)
    """
    img = check_image(dwi, label=label, expect_ndim=4)
    n_volumes = img.shape[3]
    bvals = _read_table(bval, label=label, kind=".bval", series=dwi)
    bvecs = _read_table(bvec, label=label, kind=".bvec", series=dwi)
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
    negative = np.flatnonzero(bvals < 0)
    if negative.size:
        first = negative[0]
        raise InputImageError(label, bval, f".bval has {negative.size} negative b-value(s) (the first: "
                              f"{bvals[first]:g} at volume {first}, counting from 0); b-values are ≥ 0 s/mm²",
                              "fix the .bval file (a sign error, or the file of another series)")
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


def _read_table(path: str | PathLike[str] | None, *, label: str, kind: str, series: str | PathLike[str]) -> np.ndarray:
    """Read a whitespace-separated table of finite numbers, translating failures into InputImageError.

    A missing table is named by the file BIDS expects beside the ``series`` it belongs to.
    """
    if path is None or not Path(path).is_file():
        expected = path or Path(series).with_name(Path(series).name.split(".")[0] + kind)
        raise InputImageError(label, expected, f"has no {kind} file",
                              f"add the {kind} beside the DWI series (BIDS requires it)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": reported below as empty
            table = np.loadtxt(path, ndmin=2)
    except (ValueError, OSError) as exc:  # UnicodeDecodeError (a binary file) is a ValueError
        cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputImageError(label, path, f"{kind} is not a table of numbers ({cause})",
                              f"fix or re-export the {kind} file") from exc
    if table.size == 0:
        raise InputImageError(label, path, f"{kind} is empty", f"fix or re-export the {kind} file")
    n_bad = int(table.size - np.count_nonzero(np.isfinite(table)))
    if n_bad:
        raise InputImageError(label, path, f"{kind} has {n_bad} non-finite value(s) (NaN/Inf)",
                              f"fix or re-export the {kind} file")
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
