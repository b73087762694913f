"""Segmentation science layer: tissue probabilities, lesion masks, and the regions built from them (space-T1w).

Modules: :mod:`.tissue` (lesion-filled, prior-based Atropos GM/WM/CSF probabilities), :mod:`.lesions` (checks of
given lesion masks, automatic FLAIR lesion detection, per-lesion statistics) and :mod:`.regions` (NAWM, surrounding
NAWM, distance to CSF). Like :mod:`msynth.preprocessing`, each function takes paths or arrays, writes its files into
a given ``newpath`` and returns their paths; the Nipype interfaces wrap them.
"""

from msynth.segmentation.lesions import (
    binarize_resampled,
    check_lesion_mask,
    detect_lesions,
    lesion_statistics,
    lesion_summary,
)
from msynth.segmentation.regions import RegionResult, region_masks
from msynth.segmentation.tissue import TissueResult, segment_tissues

__all__ = [
    "RegionResult",
    "TissueResult",
    "binarize_resampled",
    "check_lesion_mask",
    "detect_lesions",
    "lesion_statistics",
    "lesion_summary",
    "region_masks",
    "segment_tissues",
]
