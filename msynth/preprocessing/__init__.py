"""Preprocessing science layer: typed functions that the Nipype interfaces of msynth wrap.

Modules: :mod:`.checks` (input sanity checks), :mod:`.brain` (brain extraction), :mod:`.bias` (N4),
:mod:`.registration` (rigid or affine to T1w, and the transform algebra), :mod:`.resample` (target grids),
:mod:`.dti` (tensor fit) and :mod:`.pet` (Logan reference DVR). Each function takes paths or arrays and, when it
writes files, writes them into a given ``newpath`` (or output file) and returns their paths.
"""

from msynth.preprocessing.checks import InputImageError, check_dwi, check_image, check_pet_sidecar

__all__ = ["InputImageError", "check_dwi", "check_image", "check_pet_sidecar"]
