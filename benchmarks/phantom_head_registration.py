"""Reproduce ``msynth.phantom.anatomy.MNI_TO_HEAD``: register pydeface's mean head to the MNI152 template once.

The mean head has a skull and scalp, the template does not, so the mean head is first reduced to its intracranial
cavity (:func:`msynth.phantom.anatomy.intracranial_mask`) and then matched to the template by a 7-parameter
similarity (ANTs, Mattes mutual information inside the dilated template brain, 2 mm).  Run::

    ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1 .venv/bin/python benchmarks/phantom_head_registration.py

It prints the 4x4 RAS matrix (MNI mm -> mean-head mm), the Dice overlap of the cavity with the template brain above
z = -20 mm, and writes both to ``benchmarks/results/phantom_head_registration.txt``.
"""

from __future__ import annotations

from pathlib import Path

import ants
import nibabel as nib
import numpy as np
import pydeface
from nilearn import datasets
from scipy import ndimage

from msynth.phantom.anatomy import intracranial_mask
from msynth.phantom.geometry import RAS_TO_LPS, Grid, resample


def _ants_2mm(data: np.ndarray, affine: np.ndarray) -> ants.ANTsImage:
    """ANTs image of ``data`` resampled to 2 mm."""
    img = nib.Nifti1Image(data.astype(np.float32), affine)
    img.header.set_xyzt_units("mm", "sec")
    return ants.resample_image(ants.from_nibabel_nifti(img), (2.0, 2.0, 2.0), False, 0)


def _itk_to_ras(tx: ants.ANTsTransform) -> np.ndarray:
    """4x4 RAS matrix of an ITK affine transform (LPS, with centre)."""
    params, centre = np.asarray(tx.parameters), np.asarray(tx.fixed_parameters)
    linear = params[:9].reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = linear
    lps[:3, 3] = params[9:] + centre - linear @ centre
    return RAS_TO_LPS @ lps @ RAS_TO_LPS


def main() -> None:
    """Fit the similarity, check it, and print/write it as a RAS matrix."""
    template = datasets.load_mni152_template(resolution=1)
    t1 = np.asarray(template.get_fdata(), dtype=np.float32)
    brain = ndimage.binary_fill_holes(t1 > 0.2)
    head_img = nib.load(Path(pydeface.__file__).parent / "data" / "mean_reg2mean.nii.gz")
    head = np.asarray(head_img.get_fdata(), dtype=np.float32)
    cavity = intracranial_mask(head)
    fixed = _ants_2mm(t1, template.affine)
    moving = _ants_2mm(head * cavity / np.percentile(head[cavity], 99), head_img.affine)
    mask = _ants_2mm(ndimage.binary_dilation(brain, iterations=2), template.affine)
    reg = ants.registration(
        fixed, moving, type_of_transform="Similarity", aff_metric="mattes", mask=mask, random_seed=1
    )
    ras = _itk_to_ras(ants.read_transform(reg["fwdtransforms"][0]))
    mni = Grid(template.shape, template.affine)
    warped = resample(cavity.astype(np.float32), Grid(head_img.shape, head_img.affine), mni, ras) > 0.5
    upper = mni.world_coordinates()[2] > -20.0
    dice = 2.0 * (warped & brain & upper).sum() / ((warped & upper).sum() + (brain & upper).sum())
    text = np.array2string(ras, precision=4, suppress_small=True, separator=", ")
    report = f"MNI_TO_HEAD =\n{text}\nDice(cavity, MNI brain | z > -20 mm) = {dice:.3f}\n"
    print(report, end="")
    out = Path(__file__).parent / "results" / "phantom_head_registration.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)


if __name__ == "__main__":
    main()
