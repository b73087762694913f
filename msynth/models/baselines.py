"""Voxel-wise synthesis baselines of paper 001 (Wei et al., §2.3 and Table 2).

Three classical regressors that predict a target image (FLAIR) voxel by voxel from co-registered input images:

* :class:`RandomForestSynthesizer` — random forest with 60 trees on 3×3×3 patches of every input (Jog et al., 2014;
  paper 001 ref. 9);
* :class:`MLPSynthesizer` — voxel-wise multilayer perceptron, two hidden layers of 100 units, trained on the
  input intensities at the voxel (no neighbourhood) to minimise the mean squared error;
* :class:`ModalityPropagation` — patch-based nearest-neighbour search in the training subjects, 3×3×3 patches
  (Ye et al., 2013, "Modality propagation: coherent synthesis of subject-specific scans with data-driven
  regularization", MICCAI; paper 001 ref. 27).

They share one protocol, on numpy arrays: ``fit(images, targets, masks)`` with one ``(C, X, Y, Z)`` input stack,
one ``(X, Y, Z)`` target and one boolean ``(X, Y, Z)`` brain mask per training subject, and
``predict(images, mask)`` returning an ``(X, Y, Z)`` float32 volume that is 0 outside the mask. Only voxels inside
the masks are used for training and predicted.

Before patches are extracted every input channel is z-scored with the mean and standard deviation of that channel
over all training voxels (as paper 001 §2.3 does for the networks), so the baselines can be fed raw or already
normalised images alike. Training voxels can be subsampled (``max_training_voxels``, seeded by ``random_state``)
to bound memory and time; prediction runs in chunks of voxels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
from sklearn.ensemble import RandomForestRegressor
from sklearn.neighbors import NearestNeighbors
from sklearn.neural_network import MLPRegressor
from threadpoolctl import threadpool_limits

__all__ = ["MLPSynthesizer", "ModalityPropagation", "RandomForestSynthesizer", "extract_patches"]

LOGGER = logging.getLogger("msynth.models.baselines")

#: Voxels per chunk at prediction time (bounds the patch matrix to ~ chunk × features × 4 bytes).
_CHUNK_VOXELS = 65_536


#: Patch distance (z-scored units) below which a dictionary patch counts as an exact match.
_EXACT_DISTANCE = 1e-5


# --------------------------------------------------------------------------------------------------------------------
# patches
# --------------------------------------------------------------------------------------------------------------------
def _check_radius(radius: int) -> None:
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
        raise ValueError(f"radius must be a non-negative integer, got {radius!r}")


def _pad(images: np.ndarray, radius: int) -> np.ndarray:
    """Pad the spatial axes of ``(C, X, Y, Z)`` by ``radius`` voxels, repeating the edge voxels."""
    return np.pad(images, [(0, 0)] + [(radius, radius)] * 3, mode="edge")


def _patches_at(padded: np.ndarray, coords: tuple[np.ndarray, np.ndarray, np.ndarray], radius: int) -> np.ndarray:
    """Patches centred on ``coords`` (indices into the unpadded volume) from an array padded by ``radius``."""
    n_channels = padded.shape[0]
    width = 2 * radius + 1
    x, y, z = (c + radius for c in coords)
    out = np.empty((x.size, n_channels, width**3), dtype=np.float32)
    offset = 0
    for dx in range(-radius, radius + 1):
        for dy in range(-radius, radius + 1):
            for dz in range(-radius, radius + 1):
                out[:, :, offset] = padded[:, x + dx, y + dy, z + dz].T
                offset += 1
    return out.reshape(x.size, n_channels * width**3)


def extract_patches(images: np.ndarray, mask: np.ndarray, *, radius: int = 1) -> np.ndarray:
    """Cubic patches of every input channel around each voxel of ``mask``.

    Parameters
    ----------
    images : numpy.ndarray
        Input stack of shape ``(C, X, Y, Z)``.
    mask : numpy.ndarray
        Boolean ``(X, Y, Z)`` mask of the voxels to extract, in the order of ``numpy.nonzero(mask)``.
    radius : int, optional
        Patch half-width: patches are ``(2 * radius + 1)`` voxels on a side (1: 3×3×3; 0: the voxel alone).

    Returns
    -------
    numpy.ndarray
        float32 array of shape ``(mask.sum(), C * (2 * radius + 1)**3)``. Features are grouped by channel; within a
        channel the offsets run in C order (x slowest, z fastest), so the centre voxel of channel ``c`` is column
        ``c * w**3 + w**3 // 2`` with ``w = 2 * radius + 1``. Beyond the array border the edge voxel is repeated.

    Raises
    ------
    ValueError
        If ``images`` is not 4-D, ``mask`` does not match its spatial shape, or ``radius`` is negative.

    Examples
    --------
    >>> images = np.arange(2 * 27, dtype=float).reshape(2, 3, 3, 3)
    >>> mask = np.zeros((3, 3, 3), bool); mask[1, 1, 1] = True
    >>> extract_patches(images, mask).shape
    (1, 54)
    >>> extract_patches(images, mask, radius=0).tolist()
    [[13.0, 40.0]]
    """
    _check_radius(radius)
    images = np.asarray(images)
    mask = np.asarray(mask)
    if images.ndim != 4:
        raise ValueError(f"images must have shape (C, X, Y, Z), got {images.shape}")
    if mask.shape != images.shape[1:]:
        raise ValueError(f"mask shape {mask.shape} does not match the images' spatial shape {images.shape[1:]}")
    return _patches_at(_pad(images.astype(np.float32, copy=False), radius), np.nonzero(mask.astype(bool)), radius)


# --------------------------------------------------------------------------------------------------------------------
# shared protocol
# --------------------------------------------------------------------------------------------------------------------
class _VoxelwiseSynthesizer:
    """Validation, channel normalisation, subsampling, patch extraction and chunked prediction.

    Subclasses set ``radius`` and implement ``_fit_features`` and ``_predict_features`` on patch matrices.
    """

    radius: int

    def __init__(self, *, max_training_voxels: int | None, random_state: int | None, n_jobs: int | None) -> None:
        if max_training_voxels is not None and (isinstance(max_training_voxels, bool)
                                                or not isinstance(max_training_voxels, int)
                                                or max_training_voxels < 1):
            raise ValueError(f"max_training_voxels must be a positive integer or None, got {max_training_voxels!r}")
        if n_jobs is not None and (isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs == 0):
            raise ValueError(f"n_jobs must be a non-zero integer or None, got {n_jobs!r}")
        self.max_training_voxels = max_training_voxels
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.n_channels_: int | None = None
        self.channel_mean_: np.ndarray | None = None
        self.channel_std_: np.ndarray | None = None

    # -- subclass hooks ------------------------------------------------------------------------------------------------
    def _fit_features(self, features: np.ndarray, target: np.ndarray) -> None:
        raise NotImplementedError

    def _predict_features(self, features: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # -- protocol ------------------------------------------------------------------------------------------------------
    def fit(self, images: Sequence[np.ndarray], targets: Sequence[np.ndarray],
            masks: Sequence[np.ndarray]) -> _VoxelwiseSynthesizer:
        """Train on the masked voxels of several subjects.

        Parameters
        ----------
        images : sequence of numpy.ndarray
            One ``(C, X, Y, Z)`` input stack per subject (the same C, channels in the same order for all).
        targets : sequence of numpy.ndarray
            One ``(X, Y, Z)`` target image per subject.
        masks : sequence of numpy.ndarray
            One boolean ``(X, Y, Z)`` brain mask per subject; only these voxels are used.

        Returns
        -------
        self
        """
        images, targets, masks = list(images), list(targets), list(masks)
        if not images:
            raise ValueError("fit needs at least one training subject")
        if not len(images) == len(targets) == len(masks):
            raise ValueError(f"fit needs as many targets and masks as images; got {len(images)} images, "
                             f"{len(targets)} targets and {len(masks)} masks")
        n_channels = np.asarray(images[0]).shape[0] if np.asarray(images[0]).ndim == 4 else None
        for i, (image, target, mask) in enumerate(zip(images, targets, masks)):
            self._check_subject(image, mask, n_channels, f"training subject {i}")
            if np.shape(target) != np.shape(mask):
                raise ValueError(f"training subject {i}: target shape {np.shape(target)} does not match the mask "
                                 f"shape {np.shape(mask)}")
        counts = np.array([int(np.count_nonzero(m)) for m in masks])
        if counts.sum() == 0:
            raise ValueError("fit: every training mask is empty")

        # per-channel z-scoring over all training voxels (paper 001 §2.3)
        total = np.zeros(n_channels)
        total_sq = np.zeros(n_channels)
        for image, mask in zip(images, masks):
            values = np.asarray(image, dtype=np.float64)[:, np.asarray(mask, bool)]
            total += values.sum(axis=1)
            total_sq += (values**2).sum(axis=1)
        mean = total / counts.sum()
        std = np.sqrt(np.maximum(total_sq / counts.sum() - mean**2, 0.0))
        self.n_channels_ = n_channels
        self.channel_mean_ = mean
        self.channel_std_ = np.where(std > 0, std, 1.0)

        # seeded subsample of the training voxels, drawn over all subjects together
        chosen = self._subsample(counts)
        features, values = [], []
        for image, target, mask, keep in zip(images, targets, masks, chosen):
            coords = tuple(c[keep] for c in np.nonzero(np.asarray(mask, bool)))
            features.append(_patches_at(_pad(self._normalise(image), self.radius), coords, self.radius))
            values.append(np.asarray(target, dtype=np.float64)[coords])
        features_all = np.concatenate(features)
        LOGGER.info("%s: training on %d voxels × %d features from %d subject(s)", type(self).__name__,
                    features_all.shape[0], features_all.shape[1], len(images))
        self._fit_features(features_all, np.concatenate(values))
        return self

    def predict(self, images: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Predict the target inside ``mask``.

        Parameters
        ----------
        images : numpy.ndarray
            ``(C, X, Y, Z)`` input stack, channels as in training.
        mask : numpy.ndarray
            Boolean ``(X, Y, Z)`` brain mask.

        Returns
        -------
        numpy.ndarray
            float32 ``(X, Y, Z)`` prediction, 0 outside ``mask``.
        """
        if self.n_channels_ is None:
            raise ValueError(f"{type(self).__name__} is not fitted yet; call fit() first")
        self._check_subject(images, mask, self.n_channels_, "predict")
        mask = np.asarray(mask, bool)
        padded = _pad(self._normalise(images), self.radius)
        coords = np.nonzero(mask)
        values = np.empty(coords[0].size, dtype=np.float32)
        for start in range(0, values.size, _CHUNK_VOXELS):
            chunk = tuple(c[start:start + _CHUNK_VOXELS] for c in coords)
            values[start:start + _CHUNK_VOXELS] = self._predict_features(_patches_at(padded, chunk, self.radius))
        out = np.zeros(mask.shape, dtype=np.float32)
        out[coords] = values
        return out

    # -- helpers -------------------------------------------------------------------------------------------------------
    @staticmethod
    def _check_subject(image: np.ndarray, mask: np.ndarray, n_channels: int | None, where: str) -> None:
        shape = np.shape(image)
        if len(shape) != 4:
            raise ValueError(f"{where}: images must have shape (C, X, Y, Z), got {shape}")
        if shape[0] != n_channels:
            raise ValueError(f"{where}: images have {shape[0]} channel(s), expected {n_channels}")
        if np.shape(mask) != shape[1:]:
            raise ValueError(f"{where}: mask shape {np.shape(mask)} does not match the images' spatial shape "
                             f"{shape[1:]}")

    def _normalise(self, images: np.ndarray) -> np.ndarray:
        mean = self.channel_mean_[:, None, None, None]
        std = self.channel_std_[:, None, None, None]
        return ((np.asarray(images, dtype=np.float64) - mean) / std).astype(np.float32)

    def _subsample(self, counts: np.ndarray) -> list[np.ndarray]:
        """Per subject, the indices (into its masked voxels) kept for training."""
        total = int(counts.sum())
        if self.max_training_voxels is None or total <= self.max_training_voxels:
            return [np.arange(n) for n in counts]
        rng = np.random.default_rng(self.random_state)
        picked = np.sort(rng.choice(total, size=self.max_training_voxels, replace=False))
        edges = np.concatenate([[0], np.cumsum(counts)])
        return [picked[(picked >= lo) & (picked < hi)] - lo for lo, hi in zip(edges[:-1], edges[1:])]


# --------------------------------------------------------------------------------------------------------------------
# the three baselines
# --------------------------------------------------------------------------------------------------------------------
class RandomForestSynthesizer(_VoxelwiseSynthesizer):
    """Random-forest regression from input patches to the target voxel (Jog et al., 2014; paper 001 §2.3).

    Each training sample is the concatenation of the ``(2 * radius + 1)``³ patches of every input channel around a
    voxel; the regression target is the target image at that voxel.

    Parameters
    ----------
    n_estimators : int, optional
        Number of trees (paper 001: 60).
    radius : int, optional
        Patch half-width (1: the 3×3×3 patches of paper 001).
    min_samples_leaf : int, optional
        Minimum training voxels per leaf (scikit-learn's default 1 grows full trees).
    max_training_voxels : int or None, optional
        Train on at most this many voxels, drawn uniformly over all subjects (None: all).
    random_state : int or None, optional
        Seed of the subsampling and of the forest.
    n_jobs : int or None, optional
        Parallel jobs for the forest (scikit-learn convention; -1: all cores).
    """

    def __init__(self, *, n_estimators: int = 60, radius: int = 1, min_samples_leaf: int = 1,
                 max_training_voxels: int | None = 200_000, random_state: int | None = None,
                 n_jobs: int | None = None) -> None:
        super().__init__(max_training_voxels=max_training_voxels, random_state=random_state, n_jobs=n_jobs)
        _check_radius(radius)
        if isinstance(n_estimators, bool) or not isinstance(n_estimators, int) or n_estimators < 1:
            raise ValueError(f"n_estimators must be a positive integer, got {n_estimators!r}")
        self.n_estimators = n_estimators
        self.radius = radius
        self.min_samples_leaf = min_samples_leaf
        self.model_ = RandomForestRegressor(n_estimators=n_estimators, min_samples_leaf=min_samples_leaf,
                                            random_state=random_state, n_jobs=n_jobs)

    def _fit_features(self, features: np.ndarray, target: np.ndarray) -> None:
        self.model_.fit(features, target)

    def _predict_features(self, features: np.ndarray) -> np.ndarray:
        return self.model_.predict(features)


class MLPSynthesizer(_VoxelwiseSynthesizer):
    """Voxel-wise multilayer perceptron (paper 001 §2.3): 2 hidden layers of 100 units, mean squared error.

    "Voxel-wise" means the features are the input intensities at the voxel alone (one per channel, ``radius=0``),
    unlike the patch-based forest and modality propagation. scikit-learn's :class:`~sklearn.neural_network.
    MLPRegressor` (ReLU, Adam, squared-error loss) is trained on z-scored inputs and a z-scored target; predictions are
    mapped back to the target's scale.

    Parameters
    ----------
    hidden_layer_sizes : tuple of int, optional
        Units per hidden layer (paper 001: two layers of 100).
    max_iter : int, optional
        Maximum epochs of Adam.
    early_stopping : bool, optional
        Hold out 10 % of the training voxels and stop when their error stops improving.
    max_training_voxels : int or None, optional
        Train on at most this many voxels, drawn uniformly over all subjects (None: all).
    random_state : int or None, optional
        Seed of the subsampling, the weight initialisation and the mini-batch order.
    n_jobs : int or None, optional
        Threads the BLAS library may use during fit and predict (None: unchanged).
    """

    def __init__(self, *, hidden_layer_sizes: tuple[int, ...] = (100, 100), max_iter: int = 200,
                 early_stopping: bool = True, max_training_voxels: int | None = 500_000,
                 random_state: int | None = None, n_jobs: int | None = None) -> None:
        super().__init__(max_training_voxels=max_training_voxels, random_state=random_state, n_jobs=n_jobs)
        if not hidden_layer_sizes or any(isinstance(h, bool) or not isinstance(h, int) or h < 1
                                         for h in hidden_layer_sizes):
            raise ValueError(f"hidden_layer_sizes must be positive integers, got {hidden_layer_sizes!r}")
        self.radius = 0
        self.hidden_layer_sizes = tuple(hidden_layer_sizes)
        self.model_ = MLPRegressor(hidden_layer_sizes=self.hidden_layer_sizes, max_iter=max_iter,
                                   early_stopping=early_stopping, random_state=random_state)
        self.target_mean_ = 0.0
        self.target_std_ = 1.0

    def _fit_features(self, features: np.ndarray, target: np.ndarray) -> None:
        self.target_mean_ = float(target.mean())
        self.target_std_ = float(target.std()) or 1.0
        with threadpool_limits(limits=self._threads()):
            self.model_.fit(features, (target - self.target_mean_) / self.target_std_)

    def _predict_features(self, features: np.ndarray) -> np.ndarray:
        with threadpool_limits(limits=self._threads()):
            return self.model_.predict(features) * self.target_std_ + self.target_mean_

    def _threads(self) -> int | None:
        return None if self.n_jobs is None or self.n_jobs < 0 else self.n_jobs


class ModalityPropagation(_VoxelwiseSynthesizer):
    """Patch-based nearest-neighbour synthesis after Ye et al. (2013), the modality-propagation baseline of paper 001.

    The training subjects' ``(2 * radius + 1)``³ multi-channel patches form a dictionary; for each voxel to predict,
    the ``n_neighbors`` closest patches (Euclidean distance on z-scored intensities) are found and the target values
    at their centres are averaged — uniformly, or with inverse-distance weights (where a dictionary patch matches
    exactly, the exact matches alone are averaged).

    This keeps the core of Ye et al.'s method — patch matching against subjects with both modalities — and omits
    its spatial search window and iterative data-driven regularisation; it predicts the centre voxel rather than
    averaging overlapping target patches.

    Parameters
    ----------
    n_neighbors : int, optional
        Number of nearest dictionary patches averaged.
    weights : {'uniform', 'distance'}, optional
        Plain mean, or inverse-distance weighted mean, of the neighbours' targets.
    radius : int, optional
        Patch half-width (1: the 3×3×3 patches of paper 001).
    max_training_voxels : int or None, optional
        Dictionary size: at most this many training voxels, drawn uniformly over all subjects (None: all).
    random_state : int or None, optional
        Seed of the subsampling.
    n_jobs : int or None, optional
        Parallel jobs for the neighbour search (scikit-learn convention).
    """

    def __init__(self, *, n_neighbors: int = 5, weights: Literal["uniform", "distance"] = "uniform", radius: int = 1,
                 max_training_voxels: int | None = 100_000, random_state: int | None = None,
                 n_jobs: int | None = None) -> None:
        super().__init__(max_training_voxels=max_training_voxels, random_state=random_state, n_jobs=n_jobs)
        _check_radius(radius)
        if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int) or n_neighbors < 1:
            raise ValueError(f"n_neighbors must be a positive integer, got {n_neighbors!r}")
        if weights not in ("uniform", "distance"):
            raise ValueError(f"weights must be 'uniform' or 'distance', got {weights!r}")
        self.n_neighbors = n_neighbors
        self.weights = weights
        self.radius = radius
        self.index_: NearestNeighbors | None = None
        self.dictionary_targets_: np.ndarray | None = None

    def _fit_features(self, features: np.ndarray, target: np.ndarray) -> None:
        if features.shape[0] < self.n_neighbors:
            raise ValueError(f"ModalityPropagation: {features.shape[0]} training voxel(s), fewer than "
                             f"n_neighbors={self.n_neighbors}")
        self.index_ = NearestNeighbors(n_neighbors=self.n_neighbors, n_jobs=self.n_jobs).fit(features)
        self.dictionary_targets_ = target

    def _predict_features(self, features: np.ndarray) -> np.ndarray:
        distances, indices = self.index_.kneighbors(features)
        values = self.dictionary_targets_[indices]
        if self.weights == "uniform":
            return values.mean(axis=1)
        exact = distances <= _EXACT_DISTANCE
        with np.errstate(divide="ignore"):
            weights = np.where(exact.any(axis=1, keepdims=True), exact.astype(float), 1.0 / distances)
        return (weights * values).sum(axis=1) / weights.sum(axis=1)
