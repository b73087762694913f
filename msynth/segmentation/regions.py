"""Regions of interest derived from the tissue probabilities and the lesion mask, in space-T1w.

* **NAWM**, normal-appearing white matter: voxels of the brain whose WM probability is at least 0.5, outside the
  lesions (the thesis, paper 003 §4.2.4: "WM outside visible lesions").
* **Surrounding NAWM**: NAWM within a dilation of the lesions by ``dilation_voxels`` voxels (5 in paper 001 §3.2,
  "a dilatation of 5 voxels around the lesions"), with the 3-D cross (6-connected) structuring element applied
  ``dilation_voxels`` times, so the ring reaches ``dilation_voxels`` voxels along each axis (city-block distance).
* **Distance to CSF** in millimetres for every brain voxel: the Euclidean distance from the voxel centre to the
  nearest centre of a CSF voxel, using the voxel sizes (anisotropic grids are handled), 0 in CSF and outside the
  brain. CSF is the brain voxels whose CSF probability is at least 0.5; voxels outside the brain mask do not count as
  CSF (the distance is to the ventricles and the sulcal CSF that the brain mask holds). This is the covariate along
  which the thesis (paper 003 ch. 4, after Bodini et al. 2016) compares patients' DVR with healthy controls.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from msynth.preprocessing._io import output_path, write_like

LOGGER = logging.getLogger("msynth.segmentation")

PathOrStr = str | PathLike[str]

#: Probability at or above which a voxel belongs to a tissue for the binary regions.
TISSUE_THRESHOLD = 0.5


@dataclass(frozen=True)
class RegionResult:
    """What :func:`region_masks` wrote (all on the T1w grid).

    Attributes
    ----------
    nawm
        NAWM mask (uint8 0/1).
    surrounding_nawm
        NAWM within the dilated lesions (uint8 0/1); empty when there are no lesions.
    distance_to_csf
        Distance to the nearest CSF voxel in mm (float32; 0 in CSF and outside the brain).
    """

    nawm: Path
    surrounding_nawm: Path
    distance_to_csf: Path


def nawm_mask(wm: np.ndarray, lesion: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """NAWM: ``brain & (wm ≥ 0.5) & ~lesion`` (boolean)."""
    return brain & (wm >= TISSUE_THRESHOLD) & ~lesion


def surrounding_nawm_mask(nawm: np.ndarray, lesion: np.ndarray, dilation_voxels: int = 5) -> np.ndarray:
    """NAWM within ``dilation_voxels`` 6-connected dilation steps of the lesions (boolean).

    >>> import numpy as np
    >>> lesion = np.zeros((1, 1, 21), bool); lesion[0, 0, 10] = True
    >>> ring = surrounding_nawm_mask(~lesion, lesion, dilation_voxels=5)
    >>> np.flatnonzero(ring[0, 0]).tolist()
    [5, 6, 7, 8, 9, 11, 12, 13, 14, 15]
    """
    if dilation_voxels < 0:
        raise ValueError(f"dilation_voxels must be ≥ 0, got {dilation_voxels}")
    if dilation_voxels == 0 or not np.any(lesion):
        return np.zeros_like(nawm, dtype=bool)
    cross = ndimage.generate_binary_structure(3, 1)
    grown = ndimage.binary_dilation(lesion, structure=cross, iterations=dilation_voxels)
    return nawm & grown & ~lesion


def distance_to_csf(csf: np.ndarray, brain: np.ndarray, zooms: tuple[float, float, float]) -> np.ndarray:
    """Euclidean distance (mm) from each brain voxel to the nearest CSF voxel (``csf ≥ 0.5`` inside the brain).

    Parameters
    ----------
    csf
        CSF probability.
    brain
        Boolean brain mask.
    zooms
        Voxel sizes (mm) along the array axes.

    Returns
    -------
    numpy.ndarray
        Float32; 0 in CSF and outside the brain.

    Raises
    ------
    ValueError
        When the brain holds no CSF voxel (the distance is undefined).
    """
    is_csf = brain & (csf >= TISSUE_THRESHOLD)
    if not np.any(is_csf):
        raise ValueError("distance to CSF: no brain voxel has a CSF probability ≥ 0.5; check the tissue "
                         "segmentation and the brain mask")
    distance = ndimage.distance_transform_edt(~is_csf, sampling=[float(z) for z in zooms])
    distance[~brain] = 0.0
    return distance.astype(np.float32)


def region_masks(
    wm: PathOrStr,
    csf: PathOrStr,
    lesion_mask: PathOrStr,
    brain_mask: PathOrStr,
    *,
    newpath: PathOrStr,
    dilation_voxels: int = 5,
) -> RegionResult:
    """NAWM, surrounding NAWM and distance-to-CSF maps on the T1w grid (see the module docstring).

    Parameters
    ----------
    wm, csf
        WM and CSF probabilities (:func:`msynth.segmentation.tissue.segment_tissues`).
    lesion_mask
        Binary lesion mask in space-T1w (given or automatic; may be empty).
    brain_mask
        Brain mask on the T1w grid.
    newpath
        Output directory.
    dilation_voxels
        Width of the surrounding-NAWM ring in voxels (paper 001: 5).

    Returns
    -------
    RegionResult
    """
    ref = nib.load(brain_mask)
    arrays = {}
    for what, path in (("WM", wm), ("CSF", csf), ("lesion mask", lesion_mask)):
        img = nib.load(path)
        if img.shape[:3] != ref.shape[:3] or not np.allclose(img.affine, ref.affine, atol=1e-3):
            raise ValueError(f"region_masks: the {what} is not on the grid of the brain mask (shape {img.shape[:3]} "
                             f"vs {ref.shape[:3]}, or another affine) (file: {path})")
        arrays[what] = np.asarray(img.get_fdata(), dtype=np.float32)
    brain = np.asanyarray(ref.dataobj) > 0
    lesion = (arrays["lesion mask"] > 0) & brain
    nawm = nawm_mask(arrays["WM"], lesion, brain)
    ring = surrounding_nawm_mask(nawm, lesion, dilation_voxels)
    if not np.any(lesion):
        LOGGER.info("no lesion voxel: the surrounding-NAWM mask is empty")
    distance = distance_to_csf(arrays["CSF"], brain, ref.header.get_zooms()[:3])
    source = Path(lesion_mask)
    return RegionResult(
        nawm=write_like(nawm.astype(np.uint8), ref, output_path(source, newpath, "label-NAWM_mask")),
        surrounding_nawm=write_like(ring.astype(np.uint8), ref,
                                    output_path(source, newpath, "label-surroundingNAWM_mask")),
        distance_to_csf=write_like(distance, ref, output_path(source, newpath, "desc-CSFdistance_map")),
    )
