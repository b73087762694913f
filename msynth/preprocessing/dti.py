"""Diffusion tensor fit with dipy: FA, MD, RD, AD maps and the mean b=0 image, on the DWI grid.

The thesis (paper 003, ch. 3–4) feeds FA, RD and AD to the myelin networks; MD is kept for the reports. The tensor is
fitted by weighted least squares (dipy ``TensorModel(fit_method='WLS')``, Basser et al. 1994; weights from a first
ordinary fit, which corrects the noise amplification of the log transform) in every voxel of a brain mask.
Diffusivities are in mm²/s when the b-values are in s/mm² (BIDS).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np
from dipy.core.gradients import gradient_table
from dipy.reconst.dti import TensorModel
from dipy.segment.mask import median_otsu

from msynth.preprocessing._io import output_path, write_like
from msynth.preprocessing.checks import B0_THRESHOLD, check_dwi

LOGGER = logging.getLogger("msynth.preprocessing")


@dataclass(frozen=True)
class DTIMaps:
    """Files written by :func:`fit_dti`, all float32 on the DWI grid (mask: uint8)."""

    fa: Path
    md: Path
    rd: Path
    ad: Path
    b0: Path
    mask: Path


def mean_b0(data: np.ndarray, bvals: np.ndarray, *, b0_threshold: float = B0_THRESHOLD) -> np.ndarray:
    """Mean of the b=0 volumes (b ≤ ``b0_threshold`` s/mm²) of a 4-D series, float32."""
    return data[..., bvals <= b0_threshold].mean(axis=-1, dtype=np.float64).astype(np.float32)


def b0_brain_mask(b0: np.ndarray, *, median_radius: int = 2, numpass: int = 1, dilate: int = 1) -> np.ndarray:
    """Brain mask of a mean b=0 image by median filtering and Otsu's threshold (dipy ``median_otsu``).

    The b=0 image has bright CSF and brain and dark skull, so a smoothed Otsu threshold separates the brain; one
    pass of a radius-2 median filter suits 2 mm DWI, and one dilation keeps the cortex edge in.

    Returns
    -------
    numpy.ndarray of bool
    """
    _, mask = median_otsu(b0, median_radius=median_radius, numpass=numpass, dilate=dilate)
    return mask.astype(bool)


def tensor_metrics(
    data: np.ndarray,
    bvals: np.ndarray,
    bvecs: np.ndarray,
    mask: np.ndarray,
    *,
    b0_threshold: float = B0_THRESHOLD,
) -> dict[str, np.ndarray]:
    """Fit the tensor and return its scalar maps.

    Parameters
    ----------
    data
        4-D series (x, y, z, N).
    bvals, bvecs
        Shapes (N,) and (N, 3); b-values ≤ ``b0_threshold`` are b=0 images (their vectors are ignored).
    mask
        3-D boolean mask of the voxels to fit; 0 elsewhere in the outputs.

    Returns
    -------
    dict
        ``'FA'`` (in [0, 1]), ``'MD'`` = (λ1+λ2+λ3)/3, ``'RD'`` = (λ2+λ3)/2, ``'AD'`` = λ1 — float32 arrays of the
        mask's shape.
    """
    gtab = gradient_table(np.asarray(bvals, dtype=float), bvecs=np.asarray(bvecs, dtype=float),
                          b0_threshold=b0_threshold)
    fit = TensorModel(gtab, fit_method="WLS").fit(data, mask=mask)
    maps = {"FA": np.clip(np.nan_to_num(fit.fa), 0, 1), "MD": fit.md, "RD": fit.rd, "AD": fit.ad}
    return {key: np.where(mask, np.nan_to_num(value), 0).astype(np.float32) for key, value in maps.items()}


def fit_dti(
    dwi: str | PathLike[str],
    bval: str | PathLike[str],
    bvec: str | PathLike[str],
    *,
    newpath: str | PathLike[str],
    mask: str | PathLike[str] | None = None,
    b0_threshold: float = B0_THRESHOLD,
    label: str = "DWI",
) -> DTIMaps:
    """Check a DWI series, fit the tensor in the brain, and write FA, MD, RD, AD, the mean b=0 and the mask.

    Parameters
    ----------
    dwi, bval, bvec
        4-D series and its BIDS gradient files (checked with :func:`msynth.preprocessing.checks.check_dwi`).
    newpath
        Output directory.
    mask
        Brain mask on the DWI grid; ``None`` computes one from the mean b=0 (:func:`b0_brain_mask`).
    b0_threshold
        b-values (s/mm²) at or below which a volume is a b=0 image (50: covers the b=5–10 some scanners store).
    label
        Prefix for error messages, e.g. ``"sub-03 ses-t1: DWI"``.

    Returns
    -------
    DTIMaps
        ``<stem>_FA.nii.gz`` … ``<stem>_b0.nii.gz``, ``<stem>_b0mask.nii.gz``.
    """
    bvals, bvecs = check_dwi(dwi, bval, bvec, label=label, b0_threshold=b0_threshold)
    img = nib.load(dwi)
    data = np.asanyarray(img.dataobj).astype(np.float32)
    b0 = mean_b0(data, bvals, b0_threshold=b0_threshold)
    brain = np.asanyarray(nib.load(mask).dataobj) > 0 if mask is not None else b0_brain_mask(b0)
    LOGGER.info("DTI (WLS) in %d voxels of %s", int(brain.sum()), Path(dwi).name)
    maps = tensor_metrics(data, bvals, bvecs, brain, b0_threshold=b0_threshold)
    written = {key: write_like(value, img, output_path(dwi, newpath, key)) for key, value in maps.items()}
    return DTIMaps(
        fa=written["FA"], md=written["MD"], rd=written["RD"], ad=written["AD"],
        b0=write_like(b0, img, output_path(dwi, newpath, "b0")),
        mask=write_like(brain.astype(np.uint8), img, output_path(dwi, newpath, "b0mask")),
    )
