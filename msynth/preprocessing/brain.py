"""Brain extraction: deepbet for whole-head images, the cleaned support for images already skull-stripped.

deepbet (Fisch et al. 2024, MIT licence) is a pair of 3-D U-Nets whose TorchScript weights ship inside its wheel: a
low-resolution network finds the brain's bounding box, a second one segments the brain inside it at 256³, so its run
time does not depend on the input voxel size (about 6 s on 2 CPU cores, measured on the 1 mm pydeface mean head).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from msynth.preprocessing._io import load_3d, output_path, write_like

LOGGER = logging.getLogger("msynth.preprocessing")

Device = Literal["auto", "cpu", "cuda"]

#: Voxels whose magnitude is at most this fraction of the robust maximum (98th percentile of the positive voxels)
#: count as background, so that interpolation residue around a resampled, skull-stripped brain is not foreground.
BACKGROUND_FRACTION = 0.01
#: A skull-stripped image has (almost) only background on the faces of its field of view ...
STRIPPED_MIN_BORDER_BACKGROUND = 0.99
#: ... and a foreground no larger than an adult brain, even in MNI space (the MNI152 brain mask is 1.9 L), while a
#: whole head with a zeroed background is larger (about 2.4 L for the thick-slab raw scans of the real dataset, which
#: cover only the brain's height, 8.5 L for the pydeface mean head).
STRIPPED_MAX_VOLUME_L = 2.2
#: Radius (mm) of the closing that turns the grey and white matter into the brain envelope (:func:`refine_brain_mask`).
ENVELOPE_CLOSING_MM = 3.0
#: A refinement removing more than this fraction of the mask is not trusted (measured: 9 % on a real 0.7 mm scan,
#: 12-13 % on the phantom at 1-4 mm, 28 % where it fails, on the blurred mean head of pydeface).
MAX_FRACTION_REMOVED = 0.25


@dataclass(frozen=True)
class BrainMask:
    """Result of :func:`extract_brain`.

    Attributes
    ----------
    mask : pathlib.Path
        uint8 brain mask on the input grid (same shape and affine).
    skull_stripped : bool
        Whether the input was recognised as already skull-stripped (then the mask is its cleaned support).
    method : str
        ``'deepbet'`` or ``'support'``, for the sidecar.
    volume_ml : float
        Mask volume in millilitres, a plausibility figure for the report (adults: about 1000–1800 ml).
    """

    mask: Path
    skull_stripped: bool
    method: str
    volume_ml: float


@dataclass(frozen=True)
class RefinedMask:
    """Result of :func:`refine_brain_mask`.

    Attributes
    ----------
    mask : pathlib.Path
        The mask written (the input's voxels when the refinement was rejected).
    volume_ml : float
        Its volume.
    fraction_removed : float
        Fraction of the input mask the envelope leaves out.
    applied : bool
        False when that fraction exceeded :data:`MAX_FRACTION_REMOVED` and the input mask was kept.
    """

    mask: Path
    volume_ml: float
    fraction_removed: float
    applied: bool


def is_skull_stripped(img: nib.Nifti1Image, sidecar_meta: Mapping[str, Any] | None = None) -> bool:
    """Tell whether an image is already skull-stripped.

    The BIDS sidecar decides when it has the key ``SkullStripped``. Otherwise the image decides: background voxels
    are those whose magnitude is at most :data:`BACKGROUND_FRACTION` of the robust maximum; the image is skull-stripped
    when at least :data:`STRIPPED_MIN_BORDER_BACKGROUND` of the voxels on the six faces of the field of view are
    background (a whole-head scan has noise or tissue there) and the largest foreground component, holes filled, is
    at most :data:`STRIPPED_MAX_VOLUME_L` litres (a whole head whose air was set to zero is larger).

    Parameters
    ----------
    img
        3-D image (T1w).
    sidecar_meta
        Its BIDS sidecar as a dict, or ``None``.

    Returns
    -------
    bool
    """
    if sidecar_meta is not None and "SkullStripped" in sidecar_meta:
        return bool(sidecar_meta["SkullStripped"])
    data = np.asanyarray(img.dataobj).astype(np.float32)
    foreground = _foreground(data)
    border = np.ones(data.shape, dtype=bool)
    border[1:-1, 1:-1, 1:-1] = False
    border_background = 1.0 - float(foreground[border].mean())
    if border_background < STRIPPED_MIN_BORDER_BACKGROUND:
        LOGGER.info("skull-stripping detection: %.1f %% background on the border -> whole head",
                    100 * border_background)
        return False
    volume_l = _largest_component(foreground).sum() * _voxel_volume_ml(img) / 1000
    stripped = volume_l <= STRIPPED_MAX_VOLUME_L
    LOGGER.info("skull-stripping detection: %.1f %% background on the border, foreground %.2f L -> %s",
                100 * border_background, volume_l, "skull-stripped" if stripped else "whole head")
    return stripped


def support_mask(img: nib.Nifti1Image) -> np.ndarray:
    """Brain mask of a skull-stripped image: its foreground, largest component, holes filled.

    Parameters
    ----------
    img
        3-D skull-stripped image.

    Returns
    -------
    numpy.ndarray of bool, the image's shape
    """
    return _largest_component(_foreground(np.asanyarray(img.dataobj).astype(np.float32)))


def deepbet_mask(
    img: nib.Nifti1Image,
    *,
    device: Device = "auto",
    threshold: float = 0.5,
    n_dilate: int = 0,
) -> np.ndarray:
    """Brain mask of a whole-head T1w image with deepbet.

    Parameters
    ----------
    img
        3-D whole-head image (T1-weighted; deepbet was trained on T1w).
    device
        ``'auto'``: CUDA when torch sees a GPU, else CPU; ``'cuda'``: CUDA, falling back to the CPU with a warning
        when torch sees no GPU or the GPU runs out of memory; ``'cpu'``.
    threshold
        Probability above which a voxel is brain. 0.5 (deepbet's default) balances inclusion of the cortex surface
        against dura and sinus; lower values give larger masks.
    n_dilate
        Voxel layers (6-connected) added (> 0) to or removed (< 0) from the mask after deepbet's own cleaning (largest
        component, holes filled). 0 keeps deepbet's boundary, which the Dice in the tests is measured on.

    Returns
    -------
    numpy.ndarray of bool, the image's shape
    """
    # torch and deepbet are imported here, when a whole head is stripped: importing torch takes seconds.
    import torch
    from deepbet import BrainExtraction

    from msynth.models.inference import on_cpu_after_out_of_memory, select_device

    def strip(on: torch.device) -> np.ndarray:
        LOGGER.info("deepbet on %s (threshold %.2f, n_dilate %d)", on.type, threshold, n_dilate)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`torch.jit.load` is deprecated", category=DeprecationWarning)
            extractor = BrainExtraction(no_gpu=on.type == "cpu")
        _, mask_img, _ = extractor.run(img, threshold=threshold, n_dilate=n_dilate)
        return np.asanyarray(mask_img.dataobj) > 0

    return on_cpu_after_out_of_memory(strip, select_device(device),
                                      "CUDA ran out of memory in deepbet; stripping the skull on the CPU instead")


def extract_brain(
    in_file: str | PathLike[str],
    *,
    newpath: str | PathLike[str],
    sidecar_meta: Mapping[str, Any] | None = None,
    device: Device = "auto",
    threshold: float = 0.5,
    n_dilate: int = 0,
) -> BrainMask:
    """Brain mask of a T1w image, skull-stripped or not, written on its grid.

    Already skull-stripped images (:func:`is_skull_stripped`) are not stripped again: their mask is their cleaned
    support (:func:`support_mask`). Whole-head images go through :func:`deepbet_mask`.

    Parameters
    ----------
    in_file
        3-D T1w image.
    newpath
        Output directory.
    sidecar_meta
        The image's BIDS sidecar (for ``SkullStripped``).
    device, threshold, n_dilate
        Passed to :func:`deepbet_mask`.

    Returns
    -------
    BrainMask
        The mask file ``<in_file stem>_brainmask.nii.gz`` and how it was made.
    """
    img = load_3d(in_file)
    skull_stripped = is_skull_stripped(img, sidecar_meta)
    if skull_stripped:
        LOGGER.info("%s is skull-stripped: brain mask = its support, deepbet skipped", Path(in_file).name)
        mask = support_mask(img)
    else:
        mask = deepbet_mask(img, device=device, threshold=threshold, n_dilate=n_dilate)
    out_file = write_like(mask.astype(np.uint8), img, output_path(in_file, newpath, "brainmask"))
    volume_ml = float(mask.sum() * _voxel_volume_ml(img))
    LOGGER.info("brain mask %s: %.0f ml", out_file.name, volume_ml)
    return BrainMask(out_file, skull_stripped, "support" if skull_stripped else "deepbet", volume_ml)


def refine_brain_mask(
    t1w: str | PathLike[str],
    mask: str | PathLike[str],
    *,
    newpath: str | PathLike[str],
    closing_mm: float = ENVELOPE_CLOSING_MM,
) -> RefinedMask:
    """Trim the extracerebral CSF from a brain mask: the envelope of grey and white matter, as ANTs' brain extraction.

    deepbet, like most learned brain extractors, keeps a layer of the CSF between the cortex and the dura (about
    2 mm on the 1 mm phantom, up to 6 mm at the skull base). Following the last stage of ``antsBrainExtraction.sh``
    (Avants et al., 2011), a three-class Atropos k-means segmentation of the bias-corrected T1w inside the mask
    separates CSF (the darkest class) from tissue; the tissue is closed with a ball of ``closing_mm`` (which bridges
    the sulci and the narrow CSF channels between the ventricles and the cisterns), its holes filled (ventricles,
    T1-hypointense lesions), its largest component kept, and the result intersected with the input mask. When more
    than :data:`MAX_FRACTION_REMOVED` of the mask would go (a blurred or low-contrast T1w, whose cortex falls into the
    dark class), the input mask is kept and a warning says so.

    Parameters
    ----------
    t1w
        Bias-corrected T1w (N4 inside ``mask``).
    mask
        Brain mask on the same grid (deepbet's).
    newpath
        Output directory (Atropos' working files go to its ``atropos_kmeans`` folder).
    closing_mm
        Radius of the closing ball in mm (at least one voxel along each axis).

    Returns
    -------
    RefinedMask
        The refined mask ``<t1w stem>_brainmask_refined.nii.gz``, its volume and the fraction of the input it removed.
    """
    from msynth.segmentation.tissue import atropos

    img, mask_img = nib.load(t1w), nib.load(mask)
    brain = np.asanyarray(mask_img.dataobj) > 0
    if img.shape[:3] != brain.shape:
        raise ValueError(f"refine_brain_mask: {Path(mask).name} {brain.shape} is not on the grid of "
                         f"{Path(t1w).name} {img.shape[:3]}")
    posteriors = atropos(np.asarray(img.get_fdata(), dtype=np.float32), brain, 3, img,
                         newpath=Path(newpath) / "atropos_kmeans")
    tissue = brain & (np.argmax(posteriors, axis=0) > 0)
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
    radius = np.maximum(np.round(closing_mm / zooms), 1).astype(int)
    offsets = np.ogrid[tuple(slice(-r, r + 1) for r in radius)]
    ball = sum((o * z / max(closing_mm, z)) ** 2 for o, z in zip(offsets, zooms)) <= 1.0
    padded = np.pad(tissue, [(r, r) for r in radius])
    closed = ndi.binary_closing(padded, structure=ball)[tuple(slice(r, -r) for r in radius)]
    refined = _largest_component(ndi.binary_fill_holes(closed) & brain)
    removed = float(1.0 - refined.sum() / max(int(brain.sum()), 1))
    applied = removed <= MAX_FRACTION_REMOVED
    if applied:
        LOGGER.info("brain mask refined to the grey/white-matter envelope (closing %.1f mm): %.1f %% of %s removed",
                    closing_mm, 100 * removed, Path(mask).name)
    else:
        LOGGER.warning("brain-mask refinement rejected: the grey/white-matter envelope of %s leaves out %.0f %% of %s "
                       "(more than %.0f %%: a blurred or low-contrast T1w?); the mask is kept as it was", Path(t1w).name,
                       100 * removed, Path(mask).name, 100 * MAX_FRACTION_REMOVED)
        refined = brain
    out_file = write_like(refined.astype(np.uint8), mask_img, output_path(t1w, newpath, "brainmask_refined"))
    return RefinedMask(out_file, float(refined.sum() * _voxel_volume_ml(mask_img)), removed, applied)


def _foreground(data: np.ndarray) -> np.ndarray:
    """Voxels brighter (in magnitude) than BACKGROUND_FRACTION of the 98th percentile of the positive voxels."""
    positive = data[data > 0]
    if positive.size == 0:
        return np.zeros(data.shape, dtype=bool)
    return np.abs(data) > BACKGROUND_FRACTION * np.percentile(positive, 98)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 26-connected component of a mask, with its holes filled."""
    labels, n = ndi.label(mask, structure=np.ones((3, 3, 3)))
    if n == 0:
        return mask.copy()
    largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
    return ndi.binary_fill_holes(labels == largest)


def _voxel_volume_ml(img: nib.Nifti1Image) -> float:
    return float(abs(np.linalg.det(img.affine[:3, :3]))) / 1000
