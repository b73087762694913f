"""FSL (FLIRT) copies of msynth's ANTs co-registration transforms, computed with fslpy.

An ANTs ``from-<key>_to-T1w_mode-image_xfm.mat`` maps a T1w point to a point of the raw <key> image, in LPS
millimetres (:mod:`msynth.preprocessing.registration`). FLIRT's matrix goes the other way and in other coordinates:
it maps *source* scaled-voxel coordinates to *reference* scaled-voxel coordinates (FSL coordinates: voxel indices
times the voxel sizes, with x mirrored when the header's affine has a positive determinant), source = the raw <key>
image, reference = the T1w. The FSL coordinates of each image depend on its header, so a FLIRT matrix is only
meaningful with the two images it was written for; its sidecar names them. fslpy (the FSL team's library) does the
header arithmetic, so msynth's copy follows FSL's own definition rather than a re-derivation of it.

``flirt -in <source> -ref <T1w> -applyxfm -init <copy> -out <out>`` then resamples the raw image onto the T1w grid
as ``ants.apply_transforms`` does with the ANTs transform (tests/test_fsl_transforms.py checks it by resampling
with fslpy).
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np
from fsl.data.image import Image
from fsl.transform import flirt
from fsl.version import __version__ as FSLPY_VERSION

from msynth.preprocessing.registration import read_affine

PathOrStr = str | PathLike[str]

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS (its own inverse)


def _header_only(path: PathOrStr) -> Image:
    """An fslpy image of ``path``: fslpy reads the data lazily, so a 4-D series stays on disk (only the header is
    needed here)."""
    return Image(str(path))


def ants_to_flirt(ants_xfm: PathOrStr, source: PathOrStr, reference: PathOrStr) -> np.ndarray:
    """The FLIRT matrix of an ANTs ``from-<key>_to-T1w`` transform.

    Parameters
    ----------
    ants_xfm
        ITK/ANTs affine mapping reference (T1w) points to source points, LPS mm (what ANTs' registration with
        fixed = reference, moving = source writes).
    source
        The image that the transform resamples (the raw <key> image; only its header is read).
    reference
        The image whose grid the result takes (the session's raw T1w).

    Returns
    -------
    numpy.ndarray, shape (4, 4)
        Maps source FSL (scaled-voxel) coordinates to reference FSL coordinates.
    """
    reference_to_source_ras = _LPS @ read_affine(ants_xfm) @ _LPS
    source_to_reference_ras = np.linalg.inv(reference_to_source_ras)
    return flirt.toFlirt(source_to_reference_ras, _header_only(source), _header_only(reference),
                         from_="world", to="world")


def flirt_to_world(matrix: np.ndarray, source: PathOrStr, reference: PathOrStr) -> np.ndarray:
    """The world (RAS mm) source → reference map of a FLIRT matrix (fslpy's ``fromFlirt``), e.g. to resample."""
    return flirt.fromFlirt(matrix, _header_only(source), _header_only(reference), from_="world", to="world")


def write_flirt_copy(ants_xfm: PathOrStr, source: PathOrStr, reference: PathOrStr, *, newpath: PathOrStr) -> Path:
    """Write :func:`ants_to_flirt` as FLIRT's text matrix (fslpy's ``writeFlirt``) into ``newpath``.

    Returns
    -------
    pathlib.Path
        ``<newpath>/<name of ants_xfm without .mat>_flirt.mat``.
    """
    out_file = Path(newpath) / f"{Path(ants_xfm).stem}_flirt.mat"
    flirt.writeFlirt(ants_to_flirt(ants_xfm, source, reference), str(out_file))
    return out_file


def flirt_metadata() -> dict[str, object]:
    """What a FLIRT copy's sidecar says of its convention and of the software that wrote it."""
    return {
        "Software": {"Name": "fslpy", "Version": FSLPY_VERSION},
        "Convention": "FSL FLIRT: 4x4 text matrix from Source scaled-voxel coordinates to Reference scaled-voxel "
                      "coordinates",
    }
