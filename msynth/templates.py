"""The MNI152 2009 template that ships inside nilearn, and the regions msynth defines on it."""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
from nilearn import datasets

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
    from msynth.phantom.anatomy import cerebellum_mask
    from msynth.phantom.geometry import Grid

    t1w = datasets.load_mni152_template(resolution=resolution)
    gm = datasets.load_mni152_gm_template(resolution=resolution)
    t1 = np.asarray(t1w.get_fdata(), dtype=np.float32)
    brain = (t1 > 0.2).astype(np.float32)
    cerebellum = cerebellum_mask(t1, brain, Grid(t1.shape, t1w.affine)) > 0
    probability = np.where(cerebellum, gm.get_fdata(), 0).astype(np.float32)
    path = Path(newpath) / f"tpl-{TEMPLATE_NAME}_res-{resolution}_label-CerebellarGM_probseg.nii.gz"
    nb.save(nb.Nifti1Image(probability, t1w.affine), path)
    return path
