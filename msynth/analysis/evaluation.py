"""Evaluation of a synthetic image against the acquired one: a FLAIR as paper 001 reports it, a PIB DVR map as
thesis 003 §3.3 does."""

from __future__ import annotations

from os import PathLike

import nibabel as nb
import numpy as np
import pandas as pd

from msynth.analysis.metrics import dice, match_statistics, mse, psnr, ratio1, ratio2, ssim
from msynth.analysis.statistics import bland_altman

PathOrStr = str | PathLike[str]

#: Columns of the DVR metrics TSV, one row per region (:func:`dvr_metrics`).
DVR_METRICS_COLUMNS = ("roi", "voxels", "mse", "psnr", "mean_acquired", "mean_synthetic", "abs_discrepancy", "mae",
                       "bias", "sd", "lower", "upper")
#: White-matter probability above which a voxel counts as white matter (as the NAWM mask, msynth.segmentation).
WM_THRESHOLD = 0.5


def _load(path: PathOrStr | None) -> np.ndarray | None:
    """An image's voxel values as an array (None for no file)."""
    return None if path is None else np.asanyarray(nb.load(path).dataobj)


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
    brain = _load(brain_mask) > 0
    synth, real = (_load(path).astype(np.float64) for path in (synthetic, acquired))
    z = {name: (image - image[brain].mean()) / image[brain].std() for name, image in
         (("synthetic", synth), ("acquired", real))}
    row: dict[str, float] = {
        "mse": mse(z["synthetic"], z["acquired"], brain),
        "psnr": psnr(z["synthetic"], z["acquired"], brain),
    }
    row["ssim"] = ssim(match_statistics(synth, real, brain), real * brain, brain)
    lesion, normal, near = (None if path is None else _load(path) > 0 for path in (lesion_mask, nawm, surrounding_nawm))
    for name, image in (("synthetic", synth), ("acquired", real)):
        row[f"ratio1_{name}"] = ratio1(image, lesion, normal) if lesion is not None and normal is not None else np.nan
        row[f"ratio2_{name}"] = ratio2(image, lesion, near) if lesion is not None and near is not None else np.nan
    row["lesion_dice"] = np.nan  # undefined without both masks, or when neither finds a lesion
    if synthetic_lesions is not None and acquired_lesions is not None:
        found = [_load(path) > 0 for path in (synthetic_lesions, acquired_lesions)]
        if any(mask.any() for mask in found):
            row["lesion_dice"] = dice(*found)
    return pd.DataFrame([row])


def dvr_regions(
    brain: np.ndarray,
    wm: np.ndarray,
    lesion: np.ndarray | None = None,
    nawm: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The regions in which thesis 003 §3.3.4 compares DVR maps: ``brain``, then ``WM`` or ``NAWM`` and ``lesion``.

    A session without lesions (no lesion mask, or an empty one: a healthy control) has its white matter, the voxels
    of the brain whose WM probability is at least :data:`WM_THRESHOLD`; a session with lesions has its NAWM and its
    lesions (thesis: "WM in healthy controls, NAWM in MS patients, lesions in MS patients"). Without a NAWM mask the
    NAWM is that white matter outside the lesions, as :mod:`msynth.segmentation.regions` draws it.

    Parameters
    ----------
    brain
        Brain mask.
    wm
        White-matter probability map.
    lesion, nawm
        Lesion and NAWM masks (optional).

    Returns
    -------
    dict
        Region name → boolean mask (inside the brain), in the order of the TSV's rows.

    Examples
    --------
    >>> brain = np.ones(4, bool)
    >>> dvr_regions(brain, np.array([0.9, 0.6, 0.2, 0.0]))["WM"].nonzero()[0].tolist()
    [0, 1]
    >>> regions = dvr_regions(brain, np.array([0.9, 0.6, 0.2, 0.0]), lesion=np.array([1, 0, 0, 0]))
    >>> list(regions), regions["NAWM"].nonzero()[0].tolist()
    (['brain', 'NAWM', 'lesion'], [1])
    """
    brain = np.asarray(brain) > 0
    white = brain & (np.asarray(wm) >= WM_THRESHOLD)
    lesions = None if lesion is None else brain & (np.asarray(lesion) > 0)
    if lesions is None or not lesions.any():
        return {"brain": brain, "WM": white}
    normal = white & ~lesions if nawm is None else brain & (np.asarray(nawm) > 0)
    return {"brain": brain, "NAWM": normal, "lesion": lesions}


def dvr_region_row(synthetic: np.ndarray, acquired: np.ndarray, region: np.ndarray, peak: float) -> dict[str, float]:
    """Agreement of a synthetic and an acquired DVR map over one region's voxels (thesis 003 §3.3).

    ``mse`` is eq. 3.8 over the region; ``psnr`` eq. 3.9, ``20 log10(MAX_I) − 10 log10(MSE)`` with ``MAX_I`` =
    ``peak`` (the acquired map's maximum in the brain: "the maximum voxel value of the image"); ``abs_discrepancy``
    the absolute difference of the two mean DVRs, the per-session term of the thesis's "myelin content prediction
    discrepancy"; ``mae`` the mean of the voxels' absolute differences; ``bias``, ``sd``, ``lower``, ``upper`` the
    Bland-Altman bias (synthetic − acquired) and 95 % limits of agreement over the voxels
    (:func:`msynth.analysis.statistics.bland_altman`). An empty region gives 0 voxels and NaN elsewhere.

    Examples
    --------
    >>> row = dvr_region_row(np.array([1.0, 2.0, 4.0]), np.array([1.0, 1.0, 2.0]), np.ones(3, bool), peak=2.0)
    >>> round(row["mse"], 6), round(row["abs_discrepancy"], 6), round(row["bias"], 6)
    (1.666667, 1.0, 1.0)
    """
    row: dict[str, float] = {"voxels": int(region.sum())}
    if not region.any():
        return {**row, **{name: np.nan for name in DVR_METRICS_COLUMNS[2:]}}
    s, a = synthetic[region].astype(np.float64), acquired[region].astype(np.float64)
    agreement = bland_altman(pd.Series(a), pd.Series(s))
    row.update(
        mse=mse(s, a), psnr=psnr(s, a, data_range=peak), mean_acquired=float(a.mean()), mean_synthetic=float(s.mean()),
        abs_discrepancy=float(abs(s.mean() - a.mean())), mae=float(np.abs(s - a).mean()),
        **{name: agreement[name] for name in ("bias", "sd", "lower", "upper")},
    )
    return row


def dvr_metrics(
    *,
    synthetic: PathOrStr,
    acquired: PathOrStr,
    brain_mask: PathOrStr,
    wm: PathOrStr,
    lesion_mask: PathOrStr | None = None,
    nawm: PathOrStr | None = None,
) -> pd.DataFrame:
    """The DVR metrics TSV of a session: one row per region of :func:`dvr_regions` (:data:`DVR_METRICS_COLUMNS`).

    Both maps are compared in DVR units, as thesis 003 §3.3 compares them (DVR is a ratio of distribution volumes,
    calibrated across sessions, so nothing is z-scored). Each row is :func:`dvr_region_row`, with ``MAX_I`` the
    acquired map's maximum inside the brain for every region.

    Parameters
    ----------
    synthetic, acquired
        Synthetic and acquired (Logan) DVR maps on one grid (space-T1w).
    brain_mask, wm
        Brain mask and white-matter probability map.
    lesion_mask, nawm
        The session's lesion and NAWM masks, when it has them.
    """
    synth, real = (_load(path).astype(np.float64) for path in (synthetic, acquired))
    regions = dvr_regions(_load(brain_mask), _load(wm), _load(lesion_mask), _load(nawm))
    peak = float(real[regions["brain"]].max())
    rows = [{"roi": name, **dvr_region_row(synth, real, region, peak)} for name, region in regions.items()]
    return pd.DataFrame(rows, columns=list(DVR_METRICS_COLUMNS))
