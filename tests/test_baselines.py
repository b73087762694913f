"""Tests of msynth.models.baselines on synthetic volumes with a known voxel mapping."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from msynth.models.baselines import (MLPSynthesizer, ModalityPropagation, RandomForestSynthesizer,
                                     extract_patches)

SHAPE = (14, 14, 10)


def _subject(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smooth random 'T1' and 'T2', target = 2 T1 − T2 + noise, and a box mask."""
    rng = np.random.default_rng(seed)
    t1 = gaussian_filter(rng.normal(size=SHAPE), 1.0) * 50 + 300
    t2 = gaussian_filter(rng.normal(size=SHAPE), 1.0) * 40 + 200
    target = 2 * t1 - t2 + rng.normal(scale=1.0, size=SHAPE)
    mask = np.zeros(SHAPE, bool)
    mask[2:-2, 2:-2, 1:-1] = True
    return np.stack([t1, t2]), target, mask


TRAIN = [_subject(seed) for seed in (0, 1)]
TEST = _subject(7)


def _fit(model):
    images, targets, masks = zip(*TRAIN)
    return model.fit(list(images), list(targets), list(masks))


def _r2(prediction: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    residual = ((prediction[mask] - target[mask]) ** 2).sum()
    return 1 - residual / ((target[mask] - target[mask].mean()) ** 2).sum()


# -- patches ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("channels", "radius", "n_features"), [(1, 0, 1), (2, 1, 54), (3, 2, 375)])
def test_extract_patches_shape(channels, radius, n_features):
    images = np.random.default_rng(0).random((channels, 6, 5, 4))
    mask = np.zeros((6, 5, 4), bool)
    mask[1:4, 2, :] = True
    assert extract_patches(images, mask, radius=radius).shape == (12, n_features)


def test_extract_patches_values():
    images = np.arange(2 * 4 * 5 * 6, dtype=float).reshape(2, 4, 5, 6)
    mask = np.zeros((4, 5, 6), bool)
    mask[1, 2, 3] = mask[0, 0, 0] = True
    patches = extract_patches(images, mask)
    # rows follow numpy.nonzero order: (0, 0, 0) then (1, 2, 3)
    np.testing.assert_array_equal(patches[1, :27], images[0, 0:3, 1:4, 2:5].ravel())
    np.testing.assert_array_equal(patches[1, 27:], images[1, 0:3, 1:4, 2:5].ravel())
    assert patches[0, 13] == images[0, 0, 0, 0]  # centre column of channel 0
    # at the corner, the edge voxel is repeated beyond the border
    corner = images[0, :2, :2, :2][np.ix_([0, 0, 1], [0, 0, 1], [0, 0, 1])]
    np.testing.assert_array_equal(patches[0, :27], corner.ravel())


@pytest.mark.parametrize(("images", "mask", "radius", "message"), [
    (np.zeros((4, 4, 4)), np.ones((4, 4, 4), bool), 1, r"images must have shape \(C, X, Y, Z\)"),
    (np.zeros((1, 4, 4, 4)), np.ones((4, 4, 3), bool), 1, "does not match the images' spatial shape"),
    (np.zeros((1, 4, 4, 4)), np.ones((4, 4, 4), bool), -1, "radius must be a non-negative integer"),
])
def test_extract_patches_errors(images, mask, radius, message):
    with pytest.raises(ValueError, match=message):
        extract_patches(images, mask, radius=radius)


# -- recovering a known mapping --------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", [
    RandomForestSynthesizer(n_estimators=20, random_state=0, n_jobs=1),
    MLPSynthesizer(max_iter=100, max_training_voxels=2000, random_state=0, n_jobs=1),
], ids=["random_forest", "mlp"])
def test_recovers_linear_mapping_on_held_out_subject(model):
    images, target, mask = TEST
    prediction = _fit(model).predict(images, mask)
    assert prediction.shape == SHAPE and prediction.dtype == np.float32
    assert np.all(prediction[~mask] == 0)
    assert _r2(prediction, target, mask) > 0.9


@pytest.mark.parametrize("weights", ["uniform", "distance"])
def test_modality_propagation_reproduces_a_training_subject(weights):
    model = _fit(ModalityPropagation(n_neighbors=1 if weights == "uniform" else 4, weights=weights,
                                     max_training_voxels=None, n_jobs=1))
    images, target, mask = TRAIN[1]
    prediction = model.predict(images, mask)
    np.testing.assert_allclose(prediction[mask], target[mask], rtol=1e-6)
    assert np.all(prediction[~mask] == 0)


def test_modality_propagation_generalises():
    images, target, mask = TEST
    prediction = _fit(ModalityPropagation(n_neighbors=5, random_state=0)).predict(images, mask)
    assert _r2(prediction, target, mask) > 0.7


def test_subsampling_is_seeded_and_bounded():
    first = _fit(ModalityPropagation(n_neighbors=1, max_training_voxels=300, random_state=4))
    second = _fit(ModalityPropagation(n_neighbors=1, max_training_voxels=300, random_state=4))
    other = _fit(ModalityPropagation(n_neighbors=1, max_training_voxels=300, random_state=5))
    assert first.dictionary_targets_.shape == (300,)
    np.testing.assert_array_equal(first.dictionary_targets_, second.dictionary_targets_)
    assert not np.array_equal(first.dictionary_targets_, other.dictionary_targets_)


def test_channel_normalisation_uses_training_voxels():
    model = _fit(ModalityPropagation(n_neighbors=1, max_training_voxels=None))
    stacked = np.concatenate([images[:, mask] for images, _, mask in TRAIN], axis=1)
    np.testing.assert_allclose(model.channel_mean_, stacked.mean(axis=1))
    np.testing.assert_allclose(model.channel_std_, stacked.std(axis=1))


# -- protocol errors -------------------------------------------------------------------------------------------------
def test_predict_before_fit():
    with pytest.raises(ValueError, match="RandomForestSynthesizer is not fitted yet"):
        RandomForestSynthesizer().predict(*TEST[::2])


@pytest.mark.parametrize(("images", "targets", "masks", "message"), [
    ([], [], [], "at least one training subject"),
    ([TEST[0]], [TEST[1], TEST[1]], [TEST[2]], "got 1 images, 2 targets and 1 masks"),
    ([TEST[0], TEST[0][:1]], [TEST[1]] * 2, [TEST[2]] * 2, "training subject 1: images have 1 channel"),
    ([TEST[0]], [TEST[1][:-1]], [TEST[2]], "training subject 0: target shape"),
    ([TEST[0]], [TEST[1]], [np.zeros(SHAPE, bool)], "every training mask is empty"),
])
def test_fit_errors(images, targets, masks, message):
    with pytest.raises(ValueError, match=message):
        ModalityPropagation(n_neighbors=1).fit(images, targets, masks)


def test_predict_channel_mismatch():
    model = _fit(ModalityPropagation(n_neighbors=1, max_training_voxels=100, random_state=0))
    with pytest.raises(ValueError, match="predict: images have 3 channel"):
        model.predict(np.zeros((3, *SHAPE)), TEST[2])


@pytest.mark.parametrize(("cls", "kwargs", "message"), [
    (RandomForestSynthesizer, dict(n_estimators=0), "n_estimators must be a positive integer"),
    (RandomForestSynthesizer, dict(radius=-1), "radius must be a non-negative integer"),
    (MLPSynthesizer, dict(hidden_layer_sizes=(100, 0)), "hidden_layer_sizes must be positive integers"),
    (ModalityPropagation, dict(weights="gaussian"), "weights must be 'uniform' or 'distance'"),
    (ModalityPropagation, dict(n_neighbors=0), "n_neighbors must be a positive integer"),
    (ModalityPropagation, dict(max_training_voxels=0), "max_training_voxels must be a positive integer or None"),
    (ModalityPropagation, dict(n_jobs=0), "n_jobs must be a non-zero integer or None"),
])
def test_bad_arguments(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)
