"""Evaluation of a synthetic image against the acquired one, as paper 001 reports it."""

from __future__ import annotations

from os import PathLike

import nibabel as nb
import numpy as np
import pandas as pd

from msynth.analysis.metrics import dice, match_statistics, mse, psnr, ratio1, ratio2, ssim

PathOrStr = str | PathLike[str]


def synthesis_metrics(
    *,
    synthetic: PathOrStr,
    acquired: PathOrStr,
    brain_mask: PathOrStr,
    lesion_mask: PathOrStr | None = None,
    nawm: PathOrStr | None = None,
    surrounding_nawm: PathOrStr | None = None,
    synthetic_lesions: PathOrStr | None = None,
    acquired_lesions: PathOrStr | None = None,
) -> pd.DataFrame:
    """One row of evaluation metrics of a synthetic image against the acquired one (missing inputs: n/a).

    MSE and PSNR compare the images after z-scoring each inside the brain, as paper 001 compares normalised images,
    so they do not depend on the scanner's arbitrary intensity scale. SSIM is not computed on z-scores: its
    luminance term assumes non-negative intensities and breaks down where local means are near 0. The synthetic
    image is instead matched to the acquired one's brain mean and SD, and both are zeroed outside the brain, which
    is how ``msynth-train`` scores its cross-validation; what lies outside the brain (skull, background) does not
    count. Ratio 1 and Ratio 2 are reported for the synthetic and the acquired image (lesion / NAWM and lesion /
    surrounding NAWM mean intensities); the lesion Dice compares the automatic lesion masks of both images (n/a when
    neither finds a lesion).
    """
    def load(path: PathOrStr | None) -> np.ndarray | None:
        return None if path is None else np.asanyarray(nb.load(path).dataobj)

    brain = load(brain_mask) > 0
    synth, real = (load(path).astype(np.float64) for path in (synthetic, acquired))
    z = {name: (image - image[brain].mean()) / image[brain].std() for name, image in
         (("synthetic", synth), ("acquired", real))}
    row: dict[str, float] = {
        "mse": mse(z["synthetic"], z["acquired"], brain),
        "psnr": psnr(z["synthetic"], z["acquired"], brain),
    }
    row["ssim"] = ssim(match_statistics(synth, real, brain), real * brain, brain)
    lesion, normal, near = (None if path is None else load(path) > 0 for path in (lesion_mask, nawm, surrounding_nawm))
    for name, image in (("synthetic", synth), ("acquired", real)):
        row[f"ratio1_{name}"] = ratio1(image, lesion, normal) if lesion is not None and normal is not None else np.nan
        row[f"ratio2_{name}"] = ratio2(image, lesion, near) if lesion is not None and near is not None else np.nan
    row["lesion_dice"] = np.nan  # undefined without both masks, or when neither finds a lesion
    if synthetic_lesions is not None and acquired_lesions is not None:
        found = [load(path) > 0 for path in (synthetic_lesions, acquired_lesions)]
        if any(mask.any() for mask in found):
            row["lesion_dice"] = dice(*found)
    return pd.DataFrame([row])
