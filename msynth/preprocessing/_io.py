"""Small file helpers shared by the preprocessing modules."""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np


def output_path(in_file: str | PathLike[str], newpath: str | PathLike[str], suffix: str,
                ext: str = ".nii.gz") -> Path:
    """``<newpath>/<in_file name without .nii/.nii.gz>_<suffix><ext>``; creates ``newpath``."""
    name = Path(in_file).name
    for known in (".nii.gz", ".nii", ".mat", ".txt"):
        if name.endswith(known):
            name = name[: -len(known)]
            break
    newpath = Path(newpath)
    newpath.mkdir(parents=True, exist_ok=True)
    return newpath / f"{name}_{suffix}{ext}"


def squeeze_to(img: nib.Nifti1Image, ndim: int = 3) -> nib.Nifti1Image:
    """``img`` without the trailing axes of length 1 beyond ``ndim``: ``(x, y, z, 1)`` becomes ``(x, y, z)``.

    Converters store some 3-D volumes with a 4th axis of length 1; ITK (ANTsPy) drops it when reading, nibabel does
    not. The data stay on disk (the array proxy is reshaped, not read); ``img`` itself is returned when there is
    nothing to drop.
    """
    shape = tuple(img.shape)
    while len(shape) > ndim and shape[-1] == 1:
        shape = shape[:-1]
    if shape == img.shape:
        return img
    return img.__class__(img.dataobj.reshape(shape), img.affine, img.header)


def load_3d(path: str | PathLike[str]) -> nib.Nifti1Image:
    """Load a NIfTI volume as 3-D, as ANTsPy reads it (:func:`squeeze_to`): use it for every raw 3-D input."""
    return squeeze_to(nib.load(path), 3)


def write_like(data: np.ndarray, reference: nib.Nifti1Image, out_file: str | PathLike[str]) -> Path:
    """Write ``data`` with the reference's affine and header (qform/sform codes kept) and ``data``'s dtype."""
    header = reference.header.copy()
    header.set_data_dtype(data.dtype)
    img = nib.Nifti1Image(data, reference.affine, header)
    img.header.set_slope_inter(1, 0)
    out_file = Path(out_file)
    img.to_filename(out_file)
    return out_file
