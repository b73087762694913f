"""Intra-subject rigid (optionally then affine) registration with ANTs, and the affine transform algebra around it.

Transform convention (DESIGN.md): ``from-<key>_to-T1w_mode-image_xfm.mat`` *resamples* <key> into T1w space, so as a
point map it takes a point of T1w physical space to the corresponding point of <key> physical space. This is the ITK
convention for the transform of a registration with fixed = T1w and moving = <key> (``ants.registration(fixed=t1w,
moving=key)['fwdtransforms']``), and the one ``ants.apply_transforms(fixed=t1w, moving=key, transformlist=[xfm])``
expects. ITK points are in LPS millimetres (NIfTI world coordinates with x and y negated).

As 4×4 matrices (:func:`read_affine`), a transform ``M`` maps homogeneous LPS points ``p_key = M @ p_t1w``; the dataset
transforms ``studyN_<X>_intrastudy_to_FLAIR.txt`` of the open_ms_data longitudinal set follow the same convention
(they map FLAIR points to <X> points: they resample <X> onto the FLAIR), which ``tests/test_preprocessing_registration``
checks by registering T2W onto FLAIR.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Literal

import ants
import nibabel as nib
import numpy as np

from msynth.preprocessing._io import output_path, write_like

LOGGER = logging.getLogger("msynth.preprocessing")

PathOrStr = str | PathLike[str]
Interpolation = Literal["linear", "nearestNeighbor", "genericLabel", "bSpline", "lanczosWindowedSinc", "gaussian"]
Initialization = Literal["scanner", "centre-of-mass", "geometric-centre", "origin", "multi-start"]

#: An intra-subject affine scaling any axis by more than this (or less than its inverse) is reported as suspect.
MAX_PLAUSIBLE_SCALE = 1.15

_ANTS_INIT = {"geometric-centre": 0, "centre-of-mass": 1, "origin": 2}
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS (its own inverse)
_LABEL_INTERPOLATIONS = ("nearestNeighbor", "genericLabel")


def read_affine(xfm: PathOrStr) -> np.ndarray:
    """Read an ITK/ANTs affine transform file (``.mat`` or ``.txt``) as a 4×4 matrix on LPS points.

    ITK stores ``y = A (x - c) + t + c`` (``c``: the centre in the fixed parameters); the matrix returned is
    ``[[A, t + c - A c], [0, 1]]``.

    Parameters
    ----------
    xfm
        Transform file holding a 3-D ``AffineTransform`` or ``MatrixOffsetTransformBase`` (what ANTs registrations
        and the dataset transforms hold).

    Returns
    -------
    numpy.ndarray, shape (4, 4)
    """
    tx = ants.read_transform(str(xfm), precision="double")
    params = np.asarray(tx.parameters, dtype=float)
    if tx.dimension != 3 or tx.type not in ("AffineTransform", "MatrixOffsetTransformBase"):
        raise ValueError(f"{xfm}: not a 3-D affine transform ({tx.dimension}-D {tx.type}); write it as an "
                         "AffineTransform (e.g. with ants.write_transform)")
    centre = np.asarray(tx.fixed_parameters, dtype=float)
    matrix, translation = params[:9].reshape(3, 3), params[9:]
    out = np.eye(4)
    out[:3, :3] = matrix
    out[:3, 3] = translation + centre - matrix @ centre
    return out


def write_affine(matrix: np.ndarray, out_xfm: PathOrStr) -> Path:
    """Write a 4×4 LPS matrix as an ITK ``AffineTransform_double_3_3`` (``.mat`` binary or ``.txt`` text, by suffix).

    Returns
    -------
    pathlib.Path
        ``out_xfm``.
    """
    matrix = np.asarray(matrix, dtype=float)
    tx = ants.create_ants_transform(
        transform_type="AffineTransform", precision="double", dimension=3,
        parameters=list(matrix[:3, :3].ravel()) + list(matrix[:3, 3]), fixed_parameters=[0.0, 0.0, 0.0],
    )
    out_xfm = Path(out_xfm)
    ants.write_transform(tx, str(out_xfm))
    return out_xfm


#: Rotations (degrees, ± about each axis) of the extra starts of ``initialization="multi-start"``.
START_ROTATIONS_DEG = (20.0,)
#: Iterations of the rigid registration at the coarsest level run from each start.
START_ITERATIONS = 200

#: Resolution levels of the registration pyramid: shrink factor → (smoothing sigma in mm, iterations).
PYRAMID = {4: (2.0, 1000), 2: (1.0, 500), 1: (0.0, 250)}
#: A level is used only if it keeps the fixed grid at or below this spacing; coarser grids of a coarse image hold
#: too few voxels for mutual information (on the 4 mm phantom, a 16 mm level sent T2w/PDw/DIR/MTR 20–90 mm astray).
COARSEST_LEVEL_MM = 8.0


def pyramid_for(spacing_mm: float) -> dict[str, tuple]:
    """Shrink factors, smoothing sigmas and iterations for a fixed image of the given finest voxel side.

    >>> pyramid_for(1.0)["shrink_factors"], pyramid_for(4.0)["shrink_factors"]
    ((4, 2, 1), (2, 1))
    """
    factors = [f for f in PYRAMID if f == 1 or f * spacing_mm <= COARSEST_LEVEL_MM]
    return {
        "shrink_factors": tuple(factors),
        "smoothing_sigmas_mm": tuple(PYRAMID[f][0] for f in factors),
        "iterations": tuple(PYRAMID[f][1] for f in factors),
    }


def register_to_reference(
    moving: PathOrStr,
    fixed: PathOrStr,
    fixed_mask: PathOrStr | None,
    *,
    out_xfm: PathOrStr,
    initialization: Initialization = "centre-of-mass",
    histogram_bins: int = 32,
    sampling_rate: float = 0.25,
    shrink_factors: tuple[int, ...] = (4, 2, 1),
    smoothing_sigmas_mm: tuple[float, ...] = (2.0, 1.0, 0.0),
    iterations: tuple[int, ...] = (1000, 500, 250),
    convergence_threshold: float = 1e-6,
    random_seed: int = 42,
    max_scale: float | None = MAX_PLAUSIBLE_SCALE,
    affine: bool = True,
) -> Path:
    """Rigid then affine registration of an image to the T1w reference, by Mattes mutual information.

    One ``antsRegistration`` run with two stages, rigid (6 parameters) then affine (12), each multi-resolution,
    initialised by aligning the two images' centres of mass. The metric is computed only inside ``fixed_mask`` (the
    brain), so skull, neck and field-of-view edges do not drive it. Shrink factors are applied by ANTs per dimension
    for anisotropic voxels (a 0.5×0.5×4 mm image is shrunk in-plane first), and smoothing is in millimetres so it is
    the same along thick and thin axes. Regular sampling with a fixed seed makes the result repeatable.

    Parameters
    ----------
    moving
        Image to align (e.g. the N4-corrected FLAIR).
    fixed
        T1w reference (whole head or brain, N4-corrected), which defines T1w space.
    fixed_mask
        Brain mask on the fixed grid, or ``None`` to use the whole image.
    out_xfm
        Output ``.mat``: maps T1w points to moving points (the module's convention), the
        ``from-<key>_to-T1w_mode-image_xfm.mat`` of DESIGN.md.
    initialization
        ``"scanner"`` starts from the images' own world coordinates (identity), right for images of one session,
        which the scanner already places within a few millimetres; ``"centre-of-mass"``, ``"geometric-centre"`` and
        ``"origin"`` start from a translation aligning the centres of mass, the geometric centres of the grids, or
        the grid origins; ``"multi-start"`` (needs ``fixed_mask``) runs a coarse rigid registration from each of
        :func:`rotated_starts` (:data:`START_ROTATIONS_DEG`) and continues from the one whose Mattes MI
        (:func:`mattes_mi`) is best: a centre-of-mass start missed a head tilted by 15–27° by as many millimetres,
        the multi-start by under 1.5 mm (``benchmarks/results/registration_repeats.md``).
    histogram_bins, sampling_rate
        Mattes mutual information: joint-histogram bins and the fraction of fixed voxels sampled (on a regular grid).
    shrink_factors, smoothing_sigmas_mm, iterations
        Per resolution level, the same for both stages. The coarsest level is a 4× shrink: an 8× level (as in
        ``antsRegistrationSyN``) let the affine stage run away into 20–40 % scaling on a real T2W → FLAIR pair,
        depending on the sampling seed, while 4× converged for all seeds tried.
    convergence_threshold
        Stop a level when the metric's slope over its last 10 iterations is below this.
    random_seed
        Seed of the metric sampling. The result is repeatable to the byte only with one ITK thread: with two, the
        metric's sums change order from run to run, and template → T1w repeats spread over 1.4 mm on the 4 mm phantom
        (``benchmarks/results/registration_repeats.md``).
    affine
        Follow the rigid stage by an affine one (12 parameters); ``False`` stops at rigid, the physically right
        model within one head when the images are too coarse to pin down scaling and shear.
    max_scale
        Log a warning when the affine scales an axis by more than this or less than its inverse (a failed
        intra-subject registration); ``None`` for registrations across subjects, e.g. to a template.

    Returns
    -------
    pathlib.Path
        ``out_xfm``.
    """
    if not len(shrink_factors) == len(smoothing_sigmas_mm) == len(iterations):
        raise ValueError("shrink_factors, smoothing_sigmas_mm and iterations need one entry per level")
    if initialization == "multi-start" and fixed_mask is None:
        raise ValueError("initialization='multi-start' needs the fixed image's brain mask (fixed_mask)")
    out_xfm = Path(out_xfm)
    out_xfm.parent.mkdir(parents=True, exist_ok=True)
    fixed, moving = str(fixed), str(moving)
    metric = f"MI[{fixed},{moving},1,{histogram_bins},Regular,{sampling_rate}]"
    masks = ["--masks", str(fixed_mask)] if fixed_mask is not None else []

    def run(initial: list[str], stages: tuple[str, ...], levels: list[str], prefix: str) -> str:
        ants.registration([
            "--dimensionality", "3", "--float", "0", "--collapse-output-transforms", "1",
            "--output", prefix, "--interpolation", "Linear", "--use-histogram-matching", "0",
            "--winsorize-image-intensities", "[0.005,0.995]", *initial,
            *[arg for stage in stages for arg in ("--transform", f"{stage}[0.1]", "--metric", metric, *levels, *masks)],
            "--random-seed", str(random_seed),
        ], None)
        return f"{prefix}0GenericAffine.mat"

    stages = ("Rigid", "Affine") if affine else ("Rigid",)
    levels = _levels(shrink_factors, smoothing_sigmas_mm, iterations, convergence_threshold)
    LOGGER.info("antsRegistration (%s, MI) %s → %s", " → ".join(stages).lower(), Path(moving).name,
                Path(fixed).name)
    with tempfile.TemporaryDirectory(dir=out_xfm.parent) as tmp:
        if initialization == "scanner":
            initial = []
        elif initialization == "multi-start":
            coarse = _levels(shrink_factors[:1], smoothing_sigmas_mm[:1], (START_ITERATIONS,), convergence_threshold)
            scored = []
            for index, start in enumerate(rotated_starts(fixed_mask, moving, START_ROTATIONS_DEG)):
                xfm = run(["--initial-moving-transform", str(write_affine(start, f"{tmp}/start{index}.mat"))],
                          ("Rigid",), coarse, f"{tmp}/start{index}_")
                scored.append((mattes_mi(fixed, moving, xfm, fixed_mask, bins=histogram_bins), index, xfm))
            best_value, best, best_xfm = min(scored)
            LOGGER.info("multi-start: start %d of %d scored best (Mattes MI %.4f)", best, len(scored), best_value)
            initial = ["--initial-moving-transform", best_xfm]
        else:
            initial = ["--initial-moving-transform", f"[{fixed},{moving},{_ANTS_INIT[initialization]}]"]
        shutil.move(run(initial, stages, levels, f"{tmp}/reg_"), out_xfm)
    scales = np.linalg.svd(read_affine(out_xfm)[:3, :3], compute_uv=False)
    if max_scale is not None and (scales.max() > max_scale or scales.min() < 1 / max_scale):
        LOGGER.warning("%s → %s: the affine scales by %s, implausible for one subject; check the registration",
                       Path(moving).name, Path(fixed).name, np.round(scales, 3).tolist())
    return out_xfm


def _levels(shrink_factors: tuple[int, ...], smoothing_sigmas_mm: tuple[float, ...], iterations: tuple[int, ...],
            convergence_threshold: float) -> list[str]:
    """antsRegistration arguments of one stage's resolution levels."""
    return [
        "--convergence", f"[{'x'.join(map(str, iterations))},{convergence_threshold},10]",
        "--shrink-factors", "x".join(map(str, shrink_factors)),
        "--smoothing-sigmas", "x".join(f"{s:g}" for s in smoothing_sigmas_mm) + "mm",
    ]


def _centre_lps(img: nib.Nifti1Image) -> np.ndarray:
    """Intensity-weighted centre (LPS mm) of an image's positive voxels."""
    data = np.asanyarray(img.dataobj).astype(float)
    ijk = np.nonzero(data > 0)
    weights = data[ijk]
    points = _LPS @ img.affine @ np.vstack([*ijk, np.ones(ijk[0].size)])
    return (points[:3] * weights).sum(axis=1) / weights.sum()


def _rotation(axis: int, degrees: float) -> np.ndarray:
    """3×3 rotation by ``degrees`` about coordinate axis ``axis`` (0, 1, 2)."""
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    i, j = [k for k in range(3) if k != axis]
    out = np.eye(3)
    out[i, i], out[i, j], out[j, i], out[j, j] = c, -s, s, c
    return out


def rotated_starts(fixed_mask: PathOrStr, moving: PathOrStr, degrees: Sequence[float]) -> list[np.ndarray]:
    """Rigid starts: the centres aligned (fixed brain mask → moving intensities), then rotated about that centre.

    One start without rotation and, for each angle in ``degrees``, one rotation by ± that angle about each axis.

    Returns
    -------
    list of numpy.ndarray, shape (4, 4)
        LPS matrices mapping fixed points to moving points (the module's convention).
    """
    c_fixed, c_moving = _centre_lps(nib.load(fixed_mask)), _centre_lps(nib.load(moving))
    rotations = [np.eye(3)] + [_rotation(axis, sign * angle) for angle in degrees for axis in range(3)
                               for sign in (1, -1)]
    starts = []
    for rotation in rotations:
        start = np.eye(4)
        start[:3, :3] = rotation
        start[:3, 3] = c_moving - rotation @ c_fixed
        starts.append(start)
    return starts


def mattes_mi(fixed: PathOrStr, moving: PathOrStr, xfm: PathOrStr, fixed_mask: PathOrStr | None,
              *, bins: int = 32) -> float:
    """The registration metric at a transform: Mattes mutual information (ANTs sign: lower is better) of the fixed
    image and the moving image resampled onto it, over every voxel of the fixed mask."""
    fixed_img = ants.image_read(str(fixed))
    warped = ants.apply_transforms(fixed=fixed_img, moving=ants.image_read(str(moving)), transformlist=[str(xfm)],
                                   interpolator="linear", defaultvalue=0)
    mask = None if fixed_mask is None else ants.image_read(str(fixed_mask))
    return float(ants.image_similarity(fixed_img, warped, metric_type="MattesMutualInformation", fixed_mask=mask))


def apply_transform(
    moving: PathOrStr,
    reference: PathOrStr,
    xfms: PathOrStr | Sequence[PathOrStr],
    *,
    newpath: PathOrStr,
    interpolation: Interpolation = "linear",
    suffix: str = "resampled",
) -> Path:
    """Resample an image onto a reference grid through one or more affine transforms.

    Parameters
    ----------
    moving
        3-D image to resample.
    reference
        Image whose grid (shape, affine, header) the output takes.
    xfms
        One transform, or a list applied like ``ants.apply_transforms``' ``transformlist``: ``[A, B]`` maps an output
        point ``p`` to ``B(A(p))`` in the moving image. The chain maps reference points to moving points (the
        module's convention), e.g. ``from-FLAIR_to-T1w`` alone brings the FLAIR into T1w space.
    newpath
        Output directory.
    interpolation
        An ANTs interpolator. ``'nearestNeighbor'`` and ``'genericLabel'`` (for label maps) keep the input dtype;
        the others give float32.
    suffix
        Output name: ``<moving stem>_<suffix>.nii.gz``.

    Returns
    -------
    pathlib.Path
    """
    xfms = [xfms] if isinstance(xfms, (str, PathLike)) else list(xfms)
    moving_img = nib.load(moving)
    ref_img = nib.load(reference)
    warped = ants.apply_transforms(
        fixed=ants.image_read(str(reference)), moving=ants.image_read(str(moving)),
        transformlist=[str(x) for x in xfms], interpolator=interpolation, defaultvalue=0,
    ).numpy()
    dtype = moving_img.get_data_dtype() if interpolation in _LABEL_INTERPOLATIONS else np.float32
    return write_like(np.asarray(warped).astype(dtype), ref_img, output_path(moving, newpath, suffix))


def compose(xfms: Sequence[PathOrStr], *, out_xfm: PathOrStr) -> Path:
    """Compose affine transforms into one, in ``transformlist`` order: ``p`` goes to ``xfms[-1](…xfms[0](p))``.

    ``ants.apply_transforms(transformlist=[A, B])`` sends an output point through ``A`` first, then ``B``
    (``[warp, affine]`` from a registration: warp, then affine), and so does ``compose([A, B])``.
    Example: with ``flair = from-FLAIR_to-T1w`` and ``t2w = from-T2w_to-T1w``, the transform resampling T2w onto the
    FLAIR (FLAIR points → T1w points → T2w points) is ``compose([invert(flair), t2w])``.

    Returns
    -------
    pathlib.Path
        ``out_xfm``.
    """
    matrix = np.eye(4)
    for xfm in xfms:
        matrix = read_affine(xfm) @ matrix
    return write_affine(matrix, out_xfm)


def invert(xfm: PathOrStr, *, out_xfm: PathOrStr) -> Path:
    """Write the inverse of an affine transform (e.g. ``from-T1w_to-FLAIR`` from ``from-FLAIR_to-T1w``).

    Returns
    -------
    pathlib.Path
        ``out_xfm``.
    """
    return write_affine(np.linalg.inv(read_affine(xfm)), out_xfm)


def mean_displacement_mm(
    xfm_a: PathOrStr | np.ndarray,
    xfm_b: PathOrStr | np.ndarray,
    mask_img: PathOrStr | nib.Nifti1Image,
) -> float:
    """Mean distance (mm) between where two transforms send the voxel centres of a mask.

    Both transforms must map points of the mask's space (e.g. T1w) somewhere (e.g. FLAIR); the metric is
    ``mean_v ||A(x_v) - B(x_v)||`` over the voxel centres ``x_v`` of the mask (voxels > 0), in world millimetres,
    so it is independent of voxel size and orientation (anisotropic and oblique grids are fine).

    Parameters
    ----------
    xfm_a, xfm_b
        Transform files, or 4×4 LPS matrices as from :func:`read_affine`.
    mask_img
        Mask whose voxels are averaged over (e.g. the T1w brain mask).

    Returns
    -------
    float
    """
    mask = nib.load(mask_img) if isinstance(mask_img, (str, PathLike)) else mask_img
    ijk = np.nonzero(np.asanyarray(mask.dataobj) > 0)
    if ijk[0].size == 0:
        raise ValueError("mean_displacement_mm: the mask is empty")
    points = _LPS @ mask.affine @ np.vstack([*ijk, np.ones(ijk[0].size)])
    a = xfm_a if isinstance(xfm_a, np.ndarray) else read_affine(xfm_a)
    b = xfm_b if isinstance(xfm_b, np.ndarray) else read_affine(xfm_b)
    return float(np.linalg.norm(((a - b) @ points)[:3], axis=0).mean())
