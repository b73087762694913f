"""N4 intensity non-uniformity correction (Tustison et al. 2010) with ANTsPy."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import ants
import nibabel as nib
import numpy as np

from msynth.preprocessing._io import load_3d, output_path, write_like

LOGGER = logging.getLogger("msynth.preprocessing")


@dataclass(frozen=True)
class N4Result:
    """Result of :func:`n4_correct`.

    Attributes
    ----------
    corrected : pathlib.Path
        float32 corrected image on the input grid.
    bias_field : pathlib.Path
        float32 multiplicative field (input = corrected × field where the input is positive), mean 1 in the fit mask.
    """

    corrected: Path
    bias_field: Path


def n4_correct(
    in_file: str | PathLike[str],
    *,
    newpath: str | PathLike[str],
    mask: str | PathLike[str] | None = None,
    shrink_factor: int = 4,
    iterations: tuple[int, ...] = (50, 50, 50, 50),
    convergence_threshold: float = 1e-7,
    spline_distance_mm: float = 200.0,
) -> N4Result:
    """Correct the intensity non-uniformity of an MR image with N4, fitted inside a mask.

    N4 models the image as true intensity × a smooth field and fits the log of the field with B-splines, so it needs
    strictly positive intensities. Negative intensities (reconstruction or interpolation undershoot) are clipped to
    0, and voxels that are then 0 are left out of the fit, so they neither enter the log nor pull the field; they stay
    0 in the output. The fitted field is rescaled to mean 1 inside the fit mask, so the corrected image keeps the
    input's intensity scale.

    Parameters
    ----------
    in_file
        3-D image (a volume stored as ``(x, y, z, 1)`` is read as 3-D, :func:`~msynth.preprocessing._io.load_3d`).
    newpath
        Output directory.
    mask
        Fit region on the same grid (e.g. the brain mask for the T1w); ``None`` fits over the whole positive image,
        as for images whose brain mask lives in another space.
    shrink_factor
        Down-sampling of the image for the fit (4: a 1 mm image is fitted at 4 mm; use 1–2 for coarse images).
    iterations
        Maximum iterations per fitting level; the number of levels is its length (each halves the B-spline spacing).
    convergence_threshold
        Stop a level when the coefficient of variation of the field update falls below this.
    spline_distance_mm
        B-spline control point spacing at the first level (200 mm: the usual choice for brain MRI at 1.5–3 T).

    Returns
    -------
    N4Result
        ``<stem>_n4.nii.gz`` and ``<stem>_n4field.nii.gz`` in ``newpath``.
    """
    img = load_3d(in_file)
    data = np.asanyarray(img.dataobj).astype(np.float32)
    n_negative = int(np.count_nonzero(data < 0))
    if n_negative:
        LOGGER.info("N4 %s: %d negative voxels clipped to 0", Path(in_file).name, n_negative)
        data = np.clip(data, 0, None)
    fit = data > 0
    if mask is not None:
        fit &= np.asanyarray(nib.load(mask).dataobj) > 0
    if not fit.any():
        raise ValueError(f"N4 {in_file}: no positive voxel inside the mask to fit the bias field on")

    reference = ants.image_read(str(in_file))
    image = reference.new_image_like(data)
    fit_mask = reference.new_image_like(fit.astype(np.float32))
    field = ants.n4_bias_field_correction(
        image, mask=fit_mask, shrink_factor=shrink_factor,
        convergence={"iters": list(iterations), "tol": convergence_threshold},
        spline_param=spline_distance_mm, return_bias_field=True,
    ).numpy()
    field = field / field[fit].mean()
    corrected = np.where(data > 0, data / field, 0).astype(np.float32)
    LOGGER.info("N4 %s: field range %.2f–%.2f in the mask", Path(in_file).name, field[fit].min(), field[fit].max())
    return N4Result(
        write_like(corrected, img, output_path(in_file, newpath, "n4")),
        write_like(field.astype(np.float32), img, output_path(in_file, newpath, "n4field")),
    )
