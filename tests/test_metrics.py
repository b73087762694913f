"""Tests of msynth.analysis.metrics against known values and an independent SSIM implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from msynth.analysis.metrics import contrast_ratio, dice, match_statistics, mse, psnr, ratio1, ratio2, ssim

RNG = np.random.default_rng(0)
VOLUME = gaussian_filter(RNG.random((20, 18, 16)), 1.0) * 1000
NOISY = VOLUME + RNG.normal(scale=5.0, size=VOLUME.shape)
BRAIN = np.zeros(VOLUME.shape, bool)
BRAIN[3:17, 3:15, 2:14] = True


def _reference_ssim_map(x: np.ndarray, y: np.ndarray, data_range: float, sigma: float = 1.5,
                        radius: int = 5) -> np.ndarray:
    """SSIM map of Wang et al. (2004) with scipy Gaussian filters (mirror boundary), in float64."""
    def blur(image: np.ndarray) -> np.ndarray:
        return gaussian_filter(image, sigma, truncate=radius / sigma, mode="reflect")

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


# -- MSE and PSNR ----------------------------------------------------------------------------------------------------
def test_mse_known_values():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    b = np.array([[1.0, 0.0], [0.0, 4.0]])
    assert mse(a, b) == pytest.approx((4 + 9) / 4)
    assert mse(a, b, np.array([[True, True], [False, False]])) == pytest.approx(2.0)
    assert mse(a, a) == 0.0


def test_psnr_formula():
    a = np.array([0.0, 10.0, 5.0, 5.0])
    b = np.array([0.0, 10.0, 4.0, 7.0])
    # default data range: reference max - min inside the mask = 10; MSE = 5 / 4
    assert psnr(a, b) == pytest.approx(10 * math.log10(100 / 1.25))
    assert psnr(a, b, data_range=255.0) == pytest.approx(10 * math.log10(255**2 / 1.25))
    mask = np.array([True, True, True, False])
    assert psnr(a, b, mask) == pytest.approx(10 * math.log10(100 / (1 / 3)))
    assert psnr(b, b) == math.inf


def test_psnr_matches_mse_on_volumes():
    peak = VOLUME[BRAIN].max() - VOLUME[BRAIN].min()
    assert psnr(NOISY, VOLUME, BRAIN) == pytest.approx(10 * math.log10(peak**2 / mse(NOISY, VOLUME, BRAIN)))


# -- SSIM ------------------------------------------------------------------------------------------------------------
def test_ssim_identical_is_one():
    assert ssim(VOLUME, VOLUME, BRAIN) == pytest.approx(1.0, abs=1e-6)


def test_ssim_matches_independent_implementation():
    value = ssim(NOISY, VOLUME, BRAIN)
    peak = VOLUME[BRAIN].max() - VOLUME[BRAIN].min()
    expected = _reference_ssim_map(NOISY, VOLUME, peak)[BRAIN].mean()
    assert value < 0.999
    assert value == pytest.approx(expected, abs=1e-4)


def test_ssim_decreases_with_noise_and_uses_the_mask():
    worse = VOLUME + RNG.normal(scale=40.0, size=VOLUME.shape)
    assert ssim(worse, VOLUME, BRAIN) < ssim(NOISY, VOLUME, BRAIN) < 1
    # corrupting voxels far outside the mask (beyond the window) does not change the masked mean
    corrupted = NOISY.copy()
    corrupted[:, :, -1] = 0
    assert ssim(corrupted, VOLUME, BRAIN, win_size=3, sigma=1.0) == pytest.approx(
        ssim(NOISY, VOLUME, BRAIN, win_size=3, sigma=1.0), abs=1e-6)


def test_ssim_anisotropic_window():
    value = ssim(NOISY, VOLUME, BRAIN, win_size=(7, 7, 3), sigma=(1.5, 1.5, 0.5))
    assert 0 < value < 1


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(win_size=4), "win_size must be an odd positive integer"),
    (dict(win_size=(3, 3)), "win_size must be an odd positive integer"),
    (dict(sigma=0.0), "sigma must be a positive number"),
    (dict(data_range=0.0), "data_range must be positive"),
])
def test_ssim_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ssim(NOISY, VOLUME, BRAIN, **kwargs)


def test_match_statistics_puts_an_image_on_the_reference_scale():
    """A synthetic image of arbitrary gain and offset, matched to the reference, has its brain mean and SD, is 0
    outside the brain, and keeps its own structure (a linear map inside the brain)."""
    rng = np.random.default_rng(3)
    reference = 800.0 + 100.0 * rng.standard_normal((10, 10, 10))
    image = -2.0 + 0.01 * reference + 0.1 * rng.standard_normal(reference.shape)
    mask = np.zeros(reference.shape, bool)
    mask[2:8, 2:8, 2:8] = True
    matched = match_statistics(image, reference, mask)
    assert matched[mask].mean() == pytest.approx(reference[mask].mean())
    assert matched[mask].std() == pytest.approx(reference[mask].std())
    assert np.all(matched[~mask] == 0)
    assert np.corrcoef(matched[mask], image[mask])[0, 1] == pytest.approx(1.0)


@pytest.mark.parametrize(("function", "args", "message"), [
    (mse, (np.zeros(3), np.zeros(4)), r"prediction shape \(3,\) does not match the reference shape \(4,\)"),
    (mse, (np.zeros(3), np.zeros(3), np.zeros(3, bool)), "mask is empty"),
    (psnr, (np.zeros(3), np.ones(3)), "the reference is constant inside the mask"),
    (ssim, (np.zeros((4, 4)), np.zeros((4, 4))), "ssim expects 3-D volumes"),
    (ssim, (VOLUME, VOLUME, BRAIN[:-1]), "mask shape"),
    (dice, (np.zeros(3), np.zeros(4)), "mask shapes differ"),
    (match_statistics, (np.ones(3), np.arange(3.0), np.ones(3, bool)), "constant inside the mask"),
    (match_statistics, (np.arange(3.0), np.arange(3.0), np.zeros(3, bool)), "mask is empty"),
])
def test_bad_inputs(function, args, message):
    with pytest.raises(ValueError, match=message):
        function(*args)


# -- lesion contrast -------------------------------------------------------------------------------------------------
def _lesion_phantom() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lesion 1.5, surrounding NAWM 1.2, distant NAWM 0.9 (so NAWM mean is known)."""
    image = np.zeros((12, 12, 12))
    lesion = np.zeros(image.shape, bool)
    lesion[5:7, 5:7, 5:7] = True
    surrounding = np.zeros(image.shape, bool)
    surrounding[3:9, 3:9, 3:9] = True
    surrounding &= ~lesion
    nawm = np.zeros(image.shape, bool)
    nawm[1:11, 1:11, 1:11] = True
    nawm &= ~lesion
    image[nawm] = 0.9
    image[surrounding] = 1.2
    image[lesion] = 1.5
    return image, lesion, nawm, surrounding


def test_ratios_on_constructed_image():
    image, lesion, nawm, surrounding = _lesion_phantom()
    n_surrounding, n_far = surrounding.sum(), (nawm & ~surrounding).sum()
    nawm_mean = (1.2 * n_surrounding + 0.9 * n_far) / (n_surrounding + n_far)
    assert ratio1(image, lesion, nawm) == pytest.approx(1.5 / nawm_mean)
    assert ratio2(image, lesion, surrounding) == pytest.approx(1.5 / 1.2)
    assert contrast_ratio(image, lesion, surrounding) == ratio2(image, lesion, surrounding)
    # intensity scaling does not change a ratio
    assert ratio1(3 * image, lesion, nawm) == pytest.approx(ratio1(image, lesion, nawm))


def test_ratio_undefined_without_lesion():
    image, _, nawm, _ = _lesion_phantom()
    assert math.isnan(ratio1(image, np.zeros(image.shape, bool), nawm))
    assert math.isnan(contrast_ratio(np.zeros(image.shape), nawm, nawm))


# -- Dice ------------------------------------------------------------------------------------------------------------
def _cube(start: int, stop: int) -> np.ndarray:
    mask = np.zeros((10, 10, 10), bool)
    mask[start:stop, 2:6, 2:6] = True
    return mask


@pytest.mark.parametrize(("a", "b", "expected"), [
    (_cube(0, 4), _cube(0, 4), 1.0),
    (_cube(0, 4), _cube(2, 6), 0.5),
    (_cube(0, 2), _cube(5, 8), 0.0),
    (_cube(0, 4), _cube(0, 2), 2 * 32 / (64 + 32)),
    (np.zeros((10, 10, 10), bool), np.zeros((10, 10, 10), bool), 1.0),
    (np.zeros((10, 10, 10), bool), _cube(0, 2), 0.0),
])
def test_dice(a, b, expected):
    assert dice(a, b) == pytest.approx(expected)
    assert dice(b, a) == pytest.approx(expected)
