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


def write_like(data: np.ndarray, reference: nib.Nifti1Image, out_file: str | PathLike[str]) -> Path:
    """Write ``data`` with the reference's affine and header (qform/sform codes kept) and ``data``'s dtype."""
    header = reference.header.copy()
    header.set_data_dtype(data.dtype)
    img = nib.Nifti1Image(data, reference.affine, header)
    img.header.set_slope_inter(1, 0)
    out_file = Path(out_file)
    img.to_filename(out_file)
    return out_file
