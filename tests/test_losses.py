"""Tests of msynth.models.losses against values computed by hand (thesis 003 eqs. 3.4, 3.5, 4.4 and §4.3.1)."""

from __future__ import annotations

import math

import pytest
import torch

from msynth.models.losses import (LESION, NAWM, OTHER, adversarial_loss, l1_loss, normalized_weighted_l1_loss,
                                  weighted_l1_loss)

# Two samples of 1 × 1 × 2 × 3 voxels (N 1 D H W). Target 0, so the prediction is the error.
# sample 0 (patient): lesion error 2 (1 voxel), NAWM errors 1 and 3 (2 voxels), other errors 0, 0, 3 (3 voxels)
# sample 1 (control): NAWM errors 1 and 1, other errors 2, 2, 2, 2
ERRORS = torch.tensor([[2.0, 1.0, 3.0, 0.0, 0.0, 3.0],
                       [1.0, 1.0, 2.0, 2.0, 2.0, 2.0]]).reshape(2, 1, 1, 2, 3)
ROI = torch.tensor([[LESION, NAWM, NAWM, OTHER, OTHER, OTHER],
                    [NAWM, NAWM, OTHER, OTHER, OTHER, OTHER]]).reshape(2, 1, 1, 2, 3)


def test_roi_codes():
    assert (OTHER, NAWM, LESION) == (0, 1, 2)


def test_l1_loss():
    prediction = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    target = torch.tensor([[0.0, 2.0], [3.0, 3.0]])
    assert l1_loss(prediction, target).item() == pytest.approx((1 + 0 + 0 + 2) / 4)
    mask = torch.tensor([[True, False], [False, True]])
    assert l1_loss(prediction, target, mask).item() == pytest.approx((1 + 2) / 2)


def test_l1_loss_mask_broadcasts_over_channels():
    prediction = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 2, 1, 1, 2)  # channel 0: 1, 2; channel 1: 3, 4
    mask = torch.tensor([True, False]).reshape(1, 1, 1, 1, 2)
    assert l1_loss(prediction, torch.zeros_like(prediction), mask).item() == pytest.approx((1 + 3) / 2)


@pytest.mark.parametrize(("target", "mask", "message"), [
    (torch.zeros(2, 3), None, r"same shape, got \(2, 2\) and \(2, 3\)"),
    (torch.zeros(2, 2), torch.ones(2, 2), "mask must be a boolean tensor"),
    (torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.bool), "mask selects no voxel"),
])
def test_l1_loss_errors(target, mask, message):
    with pytest.raises(ValueError, match=message):
        l1_loss(torch.zeros(2, 2), target, mask)


def test_weighted_l1_loss_eq_3_5():
    # sample 0: mean(lesion 2, NAWM (1 + 3) / 2, other (0 + 0 + 3) / 3) = 5/3; sample 1: mean(NAWM 1, other 2) = 3/2
    expected = (5 / 3 + 3 / 2) / 2
    assert weighted_l1_loss(ERRORS, torch.zeros_like(ERRORS), ROI).item() == pytest.approx(expected)
    # the error's sign does not matter, and target and prediction play symmetric roles
    assert weighted_l1_loss(torch.zeros_like(ERRORS), -ERRORS, ROI).item() == pytest.approx(expected)


def test_weighted_l1_loss_gradient_weighs_each_roi_equally():
    """d WL1 / d voxel = sign / (N · |K_i| · N_k,i): the lone lesion voxel weighs 3 times an 'other' voxel."""
    prediction = ERRORS.clone().requires_grad_(True)
    weighted_l1_loss(prediction, torch.zeros_like(ERRORS), ROI).backward()
    gradient = prediction.grad.reshape(2, 6)
    expected = torch.tensor([[1 / 6, 1 / 12, 1 / 12, 0, 0, 1 / 18],  # 2 samples × 3 ROIs × ROI size (0: |0|' = 0)
                             [1 / 8, 1 / 8, 1 / 16, 1 / 16, 1 / 16, 1 / 16]])  # 2 samples × 2 ROIs × ROI size
    torch.testing.assert_close(gradient, expected)


def test_weighted_l1_loss_equals_l1_when_every_roi_has_the_same_error():
    prediction = torch.full((2, 1, 1, 2, 3), 0.7)
    assert weighted_l1_loss(prediction, torch.zeros_like(prediction), ROI).item() == pytest.approx(0.7)


def test_weighted_l1_loss_broadcasts_roi_over_channels():
    # two channels with errors 1 and 3 everywhere; ROI means are (1 + 3) / 2 = 2 in every ROI
    prediction = torch.cat([torch.ones(2, 1, 1, 2, 3), torch.full((2, 1, 1, 2, 3), 3.0)], dim=1)
    assert weighted_l1_loss(prediction, torch.zeros_like(prediction), ROI).item() == pytest.approx(2.0)


def test_normalized_weighted_l1_loss_eq_4_4():
    # sample 0: m = 6, ω = 1 − (1, 2, 3)/6 for lesion, NAWM, other; error sums 2, 4, 3
    sample_0 = (5 / 6 * 2 + 4 / 6 * 4 + 3 / 6 * 3) / (2 * 6)  # = 35/72
    # sample 1: ω = 1 − (2, 4)/6 for NAWM, other; error sums 2, 8
    sample_1 = (4 / 6 * 2 + 2 / 6 * 8) / (2 * 6)  # = 1/3
    loss = normalized_weighted_l1_loss(ERRORS, torch.zeros_like(ERRORS), ROI)
    assert loss.item() == pytest.approx((sample_0 + sample_1) / 2) == pytest.approx(59 / 144)


def test_normalized_weighted_l1_loss_of_a_uniform_error():
    """A uniform error e gives e (1 − Σ_k f_k²) / 2 with f_k the ROI fractions; a single-ROI sample gives 0."""
    roi = torch.tensor([LESION] + [NAWM] * 3 + [OTHER] * 6).reshape(1, 1, 1, 1, 10)
    prediction = torch.full((1, 1, 1, 1, 10), 0.5)
    expected = 0.5 * (1 - (0.1**2 + 0.3**2 + 0.6**2)) / 2
    assert normalized_weighted_l1_loss(prediction, torch.zeros_like(prediction), roi).item() == pytest.approx(expected)
    only_other = torch.full_like(roi, OTHER)
    assert normalized_weighted_l1_loss(prediction, torch.zeros_like(prediction), only_other).item() == 0


@pytest.mark.parametrize("loss", [weighted_l1_loss, normalized_weighted_l1_loss])
@pytest.mark.parametrize(("roi", "message"), [
    (torch.full((2, 1, 1, 2, 3), 3), r"roi labels must be 0 \(other\), 1 \(NAWM\) or 2 \(lesion\); got values \[3\]"),
    (torch.full((2, 1, 1, 2, 3), -1), r"got values \[-1\]"),
    (torch.zeros(2, 1, 1, 2, 3), "roi must be an integer label tensor"),
    (torch.zeros(2, 1, 1, 2, 3, dtype=torch.bool), "roi must be an integer label tensor"),
    (torch.zeros(3, 1, 1, 2, 3, dtype=torch.long), r"roi of shape \(3, 1, 1, 2, 3\) does not broadcast"),
])
def test_roi_loss_errors(loss, roi, message):
    with pytest.raises(ValueError, match=message):
        loss(ERRORS, torch.zeros_like(ERRORS), roi)


def test_roi_loss_shape_mismatch():
    with pytest.raises(ValueError, match="prediction and target must have the same shape"):
        weighted_l1_loss(ERRORS, torch.zeros(2, 1, 1, 2, 2), ROI)


# Two samples of two patches: logits 0 and ln 3 (sample 0), −ln 3 and 0 (sample 1); σ(ln 3) = 3/4.
LOGITS = torch.tensor([[0.0, math.log(3)], [-math.log(3), 0.0]]).reshape(2, 1, 1, 1, 2)


def test_adversarial_loss_sums_patches_and_averages_samples():
    # real: −log σ(l) = log 2, log 4/3 | log 4, log 2  → sums log 8/3 and log 8
    real = (math.log(8 / 3) + math.log(8)) / 2
    assert adversarial_loss(LOGITS, real=True).item() == pytest.approx(real)
    # generated: −log(1 − σ(l)) = log 2, log 4 | log 4/3, log 2 → sums log 8 and log 8/3
    assert adversarial_loss(LOGITS, real=False).item() == pytest.approx(real)
    assert adversarial_loss(LOGITS[:1], real=True).item() == pytest.approx(math.log(8 / 3))


def test_adversarial_loss_smoothing_draws_labels_from_the_thesis_ranges():
    logits = torch.ones(1, 1, 10, 10, 10)  # BCE(1, y) = softplus(1) − y per patch
    softplus = math.log1p(math.e)
    for real, low, high in ((True, 0.9, 1.0), (False, 0.0, 0.1)):
        loss = adversarial_loss(logits, real, generator=torch.Generator().manual_seed(0), smoothing=True).item()
        labels = torch.rand(logits.shape, generator=torch.Generator().manual_seed(0))
        labels = low + (high - low) * labels
        assert loss == pytest.approx(1000 * softplus - labels.sum().item(), rel=1e-6)
        mean_label = softplus - loss / 1000
        assert low < mean_label < high
        assert abs(mean_label - (low + high) / 2) < 0.005  # 1000 draws: the mean of U(low, high) ± 3 SE


def test_adversarial_loss_smoothing_is_reproducible():
    logits = torch.ones(1, 1, 4, 4, 4)

    def smoothed(seed: int) -> float:
        return adversarial_loss(logits, True, generator=torch.Generator().manual_seed(seed), smoothing=True).item()

    assert smoothed(0) == smoothed(0)
    assert smoothed(0) != smoothed(1)


def test_adversarial_loss_gradient_pushes_the_right_way():
    logits = torch.zeros(1, 1, 2, 1, 1, requires_grad=True)
    adversarial_loss(logits, real=True).backward()
    torch.testing.assert_close(logits.grad, torch.full_like(logits, -0.5))  # σ(0) − 1 per patch (sum over patches)


@pytest.mark.parametrize(("real", "smoothing", "logits", "message"), [
    (1, False, LOGITS, "real must be True or False"),
    (True, "yes", LOGITS, "smoothing must be True or False"),
    (True, False, torch.tensor(0.0), "logits must have a batch axis"),
])
def test_adversarial_loss_errors(real, smoothing, logits, message):
    with pytest.raises(ValueError, match=message):
        adversarial_loss(logits, real, smoothing=smoothing)
