"""The MNI152 2009 template that ships inside nilearn, and the regions msynth defines on it."""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
from nilearn import datasets
from scipy import ndimage

#: TemplateFlow name of nilearn's MNI152 template (ICBM 2009a, symmetric).
TEMPLATE_NAME = "MNI152NLin2009aSym"
#: Grey-matter probability above which a cerebellar voxel counts as grey matter.
CEREBELLAR_GM_MIN_PROBABILITY = 0.5


def write_template(newpath: Path, resolution: int = 1) -> Path:
    """Write the skull-stripped MNI152 2009a T1 template (registration target) into ``newpath``."""
    path = Path(newpath) / f"tpl-{TEMPLATE_NAME}_res-{resolution}_T1w.nii.gz"
    nb.save(datasets.load_mni152_template(resolution=resolution), path)
    return path


def write_cerebellar_gm(newpath: Path, resolution: int = 1) -> Path:
    """Write the cerebellar grey-matter probability on the template grid: GM probability × cerebellum mask.

    The cerebellum is cut from the template by MNI coordinates and the tentorium (see
    :func:`cerebellum_mask`); it is the reference region of [11C]PIB Logan DVR (thesis, paper 003).
    """
    t1w = datasets.load_mni152_template(resolution=resolution)
    gm = datasets.load_mni152_gm_template(resolution=resolution)
    t1 = np.asarray(t1w.get_fdata(), dtype=np.float32)
    brain = (t1 > 0.2).astype(np.float32)
    cerebellum = cerebellum_mask(t1, brain, t1w.affine) > 0
    probability = np.where(cerebellum, gm.get_fdata(), 0).astype(np.float32)
    path = Path(newpath) / f"tpl-{TEMPLATE_NAME}_res-{resolution}_label-CerebellarGM_probseg.nii.gz"
    nb.save(nb.Nifti1Image(probability, t1w.affine), path)
    return path


def cerebellum_mask(t1: np.ndarray, brain: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Cerebellum of the MNI152 template, from MNI coordinates and the tentorium.

    Tissue (template intensity above 0.55) posterior to y = -38 mm and below z = 0 is cut from the brainstem
    (|x| < 14 mm, y > -52 mm); the CSF of the tentorium then separates the cerebellar hemispheres, whose components
    are picked at (+-25, -65, -35) mm, from the occipital and temporal lobes.

    Parameters
    ----------
    t1, brain
        Template intensities (0–1) and brain fraction on one grid.
    affine
        That grid's voxel → MNI mm affine.

    Returns
    -------
    numpy.ndarray of float32 (0 or 1)
    """
    ijk = np.indices(t1.shape, dtype=np.float64).reshape(3, -1)
    x, y, z = (affine[:3, :3] @ ijk + affine[:3, 3:]).reshape((3, *t1.shape))
    tissue = (t1 > 0.55) & (y < -38) & (z < 0) & ~((np.abs(x) < 14) & (y > -52))
    labels, _ = ndimage.label(tissue)
    seeds = [np.round(np.linalg.solve(affine, [sx, -65.0, -35.0, 1.0])[:3]).astype(int) for sx in (-25.0, 25.0)]
    keep = [labels[tuple(s)] for s in seeds if labels[tuple(s)] > 0]
    cerebellum = ndimage.binary_dilation(np.isin(labels, keep), iterations=2)
    return (ndimage.binary_fill_holes(cerebellum) & (brain > 0.5)).astype(np.float32)
