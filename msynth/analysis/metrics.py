"""Image-synthesis evaluation metrics on numpy arrays, restricted to a mask.

Image quality (paper 001 §3.2, abstract 000, thesis 003 §3.3): :func:`mse`, :func:`psnr`, :func:`ssim`. Lesion
contrast (paper 001 §3.2 eq. 4): :func:`contrast_ratio`, :func:`ratio1` (lesions / NAWM) and :func:`ratio2` (lesions /
surrounding NAWM). Overlap: :func:`dice`.

Every function takes the *prediction* first and the *reference* (acquired image) second where the two roles differ,
and an optional boolean ``mask`` (normally the brain mask; None: every voxel). Region masks (lesions, NAWM,
surrounding NAWM) come from :mod:`msynth.segmentation.regions`; nothing here segments.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["contrast_ratio", "dice", "match_statistics", "mse", "psnr", "ratio1", "ratio2", "ssim"]


def _as_mask(mask: np.ndarray | None, shape: tuple[int, ...], name: str = "mask") -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"{name} shape {mask.shape} does not match the image shape {shape}")
    return mask.astype(bool, copy=False)


def _pair(prediction: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prediction = np.asarray(prediction, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} does not match the reference shape "
                         f"{reference.shape}")
    return prediction, reference


def _nonempty(mask: np.ndarray, name: str = "mask") -> None:
    if not mask.any():
        raise ValueError(f"{name} is empty: no voxel to evaluate")


def mse(prediction: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean squared error over the voxels of ``mask`` (paper 000 eq. 3, restricted to the mask).

    Examples
    --------
    >>> mse(np.array([1.0, 2.0, 4.0]), np.array([1.0, 0.0, 1.0]))
    4.333333333333333
    """
    prediction, reference = _pair(prediction, reference)
    mask = _as_mask(mask, reference.shape)
    _nonempty(mask)
    return float(np.mean((prediction[mask] - reference[mask]) ** 2))


def _data_range(reference: np.ndarray, mask: np.ndarray, data_range: float | None) -> float:
    """``data_range`` if given, else max − min of ``reference`` inside ``mask``; must be positive."""
    if data_range is None:
        data_range = float(reference[mask].max() - reference[mask].min())
        if data_range <= 0:
            raise ValueError("the reference is constant inside the mask, so its data range is 0; pass data_range")
    elif not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range!r}")
    return float(data_range)


def psnr(prediction: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None, *,
         data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(R² / MSE)`` over the voxels of ``mask``.

    Parameters
    ----------
    prediction, reference : numpy.ndarray
        Synthetic and acquired image, same shape.
    mask : numpy.ndarray, optional
        Voxels to evaluate (None: all).
    data_range : float, optional
        ``R``, the peak-to-peak intensity range. Convention: by default ``R`` is max − min of the *reference* inside
        the mask, so the value depends on the reference's intensity scale and not on the prediction; pass a fixed
        ``R`` to compare across subjects on one scale (e.g. 1 for images scaled to [0, 1]).

    Returns
    -------
    float
        PSNR in decibels; ``inf`` when the prediction equals the reference inside the mask.

    Examples
    --------
    >>> psnr(np.array([0.0, 1.0, 0.5]), np.array([0.0, 1.0, 0.6]))  # R = 1, MSE = 0.01 / 3
    24.771212547196626
    """
    prediction, reference = _pair(prediction, reference)
    mask = _as_mask(mask, reference.shape)
    _nonempty(mask)
    peak = _data_range(reference, mask, data_range)
    error = float(np.mean((prediction[mask] - reference[mask]) ** 2))
    if error == 0:
        return float("inf")
    return float(10 * np.log10(peak**2 / error))


def ssim(prediction: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None, *,
         data_range: float | None = None, win_size: int | Sequence[int] = 11,
         sigma: float | Sequence[float] = 1.5, k1: float = 0.01, k2: float = 0.03) -> float:
    """Mean structural similarity (Wang et al., 2004) of two 3-D volumes, averaged over the voxels of ``mask``.

    The local SSIM map is computed by MONAI (:func:`monai.metrics.regression.compute_ssim_and_cs`) with Gaussian
    windows of ``win_size`` voxels per axis (11) and standard deviation ``sigma`` voxels (1.5), constants
    ``C1 = (k1 R)²`` and ``C2 = (k2 R)²`` with ``k1 = 0.01``, ``k2 = 0.03`` — the settings of Wang et al. — and
    population (biased) local variances. Both volumes are first padded by ``win_size // 2`` voxels by mirror
    reflection (``numpy.pad(mode='symmetric')``, scipy's ``'reflect'``) so the map covers every voxel; the map is then
    averaged over the mask. MONAI computes in float32.

    Parameters
    ----------
    prediction, reference : numpy.ndarray
        Synthetic and acquired 3-D volume, same shape.
    mask : numpy.ndarray, optional
        Voxels whose local SSIM is averaged (None: all).
    data_range : float, optional
        ``R`` in the constants; by default max − min of the reference inside the mask (as in :func:`psnr`).
    win_size : int or sequence of 3 ints, optional
        Odd window edge length(s), in voxels.
    sigma : float or sequence of 3 floats, optional
        Standard deviation(s) of the Gaussian window, in voxels.
    k1, k2 : float, optional
        Stability constants.

    Returns
    -------
    float
        Mean SSIM; 1 for identical volumes.

    Examples
    --------
    >>> volume = np.random.default_rng(0).random((12, 12, 12))
    >>> round(ssim(volume, volume), 6)
    1.0
    """
    prediction, reference = _pair(prediction, reference)
    if reference.ndim != 3:
        raise ValueError(f"ssim expects 3-D volumes, got shape {reference.shape}")
    mask = _as_mask(mask, reference.shape)
    _nonempty(mask)
    sizes = [win_size] * 3 if isinstance(win_size, int) else list(win_size)
    sigmas = [float(sigma)] * 3 if isinstance(sigma, (int, float)) else [float(s) for s in sigma]
    if len(sizes) != 3 or any(not isinstance(s, int) or s < 1 or s % 2 == 0 for s in sizes):
        raise ValueError(f"win_size must be an odd positive integer or three of them, got {win_size!r}")
    if len(sigmas) != 3 or any(s <= 0 for s in sigmas):
        raise ValueError(f"sigma must be a positive number or three of them, got {sigma!r}")
    peak = _data_range(reference, mask, data_range)
    # torch and MONAI are imported here, by the nodes that score images: loading them takes seconds
    import torch
    from monai.metrics.regression import compute_ssim_and_cs

    # scale both images by 1/R (SSIM is unchanged when images and R are scaled together): float32 keeps precision
    pad = [(s // 2, s // 2) for s in sizes]
    x = torch.from_numpy(np.pad(prediction / peak, pad, mode="symmetric")[None, None].astype(np.float32))
    y = torch.from_numpy(np.pad(reference / peak, pad, mode="symmetric")[None, None].astype(np.float32))
    ssim_map, _ = compute_ssim_and_cs(x, y, spatial_dims=3, kernel_size=sizes, kernel_sigma=sigmas,
                                      data_range=1.0, k1=k1, k2=k2)
    return float(ssim_map[0, 0].double().numpy()[mask].mean())


def match_statistics(image: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``image`` linearly rescaled to the mean and SD of ``reference`` inside ``mask``, and 0 outside it.

    A synthetic image has no calibrated intensity scale, so before SSIM, whose luminance and contrast terms compare
    absolute local means and variances, it is put on the acquired image's scale this way.

    Examples
    --------
    >>> image, reference = np.array([1.0, 2.0, 3.0, 9.0]), np.array([10.0, 20.0, 30.0, 0.0])
    >>> match_statistics(image, reference, np.array([True, True, True, False])).tolist()
    [10.0, 20.0, 30.0, 0.0]
    """
    image, reference = _pair(image, reference)
    mask = _as_mask(mask, reference.shape)
    _nonempty(mask)
    inside = image[mask]
    if inside.std() == 0:
        raise ValueError("the image is constant inside the mask: it has no contrast to rescale")
    z = (image - inside.mean()) / inside.std()
    return (z * reference[mask].std() + reference[mask].mean()) * mask


def contrast_ratio(image: np.ndarray, lesion: np.ndarray, reference: np.ndarray) -> float:
    """Ratio of the mean intensity of ``image`` in the ``lesion`` mask to that in the ``reference`` mask.

    This is the per-subject term of paper 001 eq. 4, ``I(Lesions) / I(R)`` with ``I(R)`` the mean intensity of
    region ``R``. It is meaningful on non-negative intensities (raw or [0, 1]-scaled images, not z-scores).

    Returns
    -------
    float
        The ratio; NaN when either mask is empty (e.g. a healthy control has no lesion) or the reference mean is 0,
        so cohort averages can skip it with :func:`numpy.nanmean`.

    Examples
    --------
    >>> image = np.array([3.0, 3.0, 1.0, 2.0])
    >>> contrast_ratio(image, np.array([1, 1, 0, 0], bool), np.array([0, 0, 1, 1], bool))
    2.0
    """
    image = np.asarray(image, dtype=np.float64)
    lesion = _as_mask(lesion, image.shape, "lesion mask")
    reference = _as_mask(reference, image.shape, "reference mask")
    if not lesion.any() or not reference.any():
        return float("nan")
    denominator = image[reference].mean()
    if denominator == 0:
        return float("nan")
    return float(image[lesion].mean() / denominator)


def ratio1(image: np.ndarray, lesion: np.ndarray, nawm: np.ndarray) -> float:
    """Paper 001 Ratio 1 for one subject: mean intensity in lesions / mean intensity in NAWM (eq. 4).

    Paper 001 reports the mean of this value over the N subjects of a fold (take :func:`numpy.nanmean`).
    """
    return contrast_ratio(image, lesion, nawm)


def ratio2(image: np.ndarray, lesion: np.ndarray, surrounding_nawm: np.ndarray) -> float:
    """Paper 001 Ratio 2 for one subject: mean intensity in lesions / mean intensity in the surrounding NAWM (eq. 4).

    The surrounding NAWM is the NAWM within a 5-voxel dilation of the lesions (paper 001 §3.2), supplied by
    :mod:`msynth.segmentation.regions`.
    """
    return contrast_ratio(image, lesion, surrounding_nawm)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap ``2 |A ∩ B| / (|A| + |B|)`` of two boolean masks (non-zero voxels count as inside).

    Defined as 1.0 when both masks are empty (the two agree that there is nothing), so that, for example, a patient
    with no demyelinated voxel in either the acquired or the synthetic map counts as perfect agreement.

    Examples
    --------
    >>> dice(np.array([1, 1, 0, 0]), np.array([0, 1, 1, 0]))
    0.5
    >>> dice(np.zeros(3), np.zeros(3))
    1.0
    """
    a = np.asarray(a).astype(bool)
    b = np.asarray(b).astype(bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} and {b.shape}")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return float(2 * np.logical_and(a, b).sum() / total)
