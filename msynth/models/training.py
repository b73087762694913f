"""Training synthesis networks: patches, MSE, early stopping by strips, checkpoints, cross-validation.

What paper 001 (§2.3) does, and what we do
------------------------------------------
* Intensities: z-scored inside the brain, 0 outside. Paper 001 uses one mean and standard deviation per sequence
  over all training images (``intensity_normalisation='cohort'``). Our default, ``'image'``, z-scores each image by
  its own brain statistics: uncalibrated MRI has a scanner gain that changes between sessions (a factor up to 2 in
  the 4 mm phantom), which cohort statistics do not remove. On the phantom (FCN with 8 features, SGD 5e-3, trained
  on one subject, validated on another) the cohort-normalised validation error went 2.07 → 1.04 (epoch 2) → 3.54
  (epoch 10), the image-normalised one 1.10 → 0.47, steadily.
* Loss: mean squared error between the z-scored target and the prediction (paper 001 eq. 1).
* Optimiser: plain SGD (no momentum: the paper says "standard SGD"), learning rate 5e-4, batch size 1. Adam is
  available (``optimizer='adam'``) for the U-Net and the GAN generators of thesis 003 (Adam 1e-4).
* Samples: the paper trains on whole 208×256×40 volumes, one per step. We train on random cubic patches
  (default 64³ voxels, ``patches_per_session`` per session and epoch, one per step) whose centre is a random brain
  voxel. For the FCN, whose receptive field is 7³ voxels, a patch gives the same per-voxel gradients as the whole
  volume except within 3 voxels of the patch's border; patches bound memory and time per step whatever the
  image size (1 mm whole brains do not fit many GPUs with 64 features), skip the background, and are what the
  U-Net and GAN models need anyway (thesis 003 ch. 4 trains on 64³ patches). Eight 64³ patches hold about as many
  voxels as one of the paper's volumes.
* Early stopping: Prechelt's UP_p criterion with strips of ``q`` epochs — the paper's "stop when the
  generalization error increased in p successive strips of length q", p = 3, q = 5 (:func:`strip_stop_epoch`).
  The generalisation error is the MSE inside the brain of whole validation volumes (subjects held out of the
  training set). The weights kept are those of the epoch with the lowest validation error (Prechelt 1998).
* Reproducibility: initialisation uses ``seed``; each epoch draws its patches and shuffling from a generator seeded
  with ``(seed, epoch)``, and torch's generator is reseeded the same way, so a run resumed from
  ``checkpoint.pt`` (written at the end of every strip) gives the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from msynth.models.card import Normalisation
from msynth.models.data import Volume, array_statistics, normalise, normalise_array

__all__ = [
    "EpochRecord", "StripStopping", "TrainingConfig", "TrainingResult", "assign_folds", "cross_validate",
    "evaluate_volume", "fold_task", "predict_session", "run_fold", "sample_patch_corners", "split_validation",
    "strip_stop_epoch", "train_model", "validation_error",
]

LOGGER = logging.getLogger("msynth.models")
CHECKPOINT_NAME = "checkpoint.pt"

OptimizerName = Literal["sgd", "adam"]


@dataclass(frozen=True)
class TrainingConfig:
    """Settings of one training run (everything that changes the weights, except the data).

    Attributes
    ----------
    architecture
        Key of :data:`msynth.models.networks.ARCHITECTURES`.
    arguments
        Constructor arguments other than ``in_channels`` and ``out_channels`` (filled in from the data).
    optimizer
        ``'sgd'`` (paper 001) or ``'adam'``.
    lr
        Learning rate (paper 001: 5e-4 with SGD).
    momentum
        SGD momentum (paper 001: plain SGD, 0).
    max_epochs
        Upper bound on epochs.
    patch_size
        Edge of the cubic training patches, in voxels (clipped to the volume).
    patches_per_session
        Patches drawn from each training session per epoch (one optimiser step each).
    strip_length, strips
        ``q`` and ``p`` of the UP stopping rule (paper 001: 5 and 3).
    seed
        Seed of initialisation, patches and shuffling.
    intensity_normalisation
        ``'image'`` (default: each image z-scored by its own brain statistics) or ``'cohort'`` (statistics of the
        training set, as paper 001); see :func:`msynth.models.data.normalise`.
    window
        Sliding-window edge for validation predictions.
    random_flips
        Mirror each training patch (inputs and target together) along each axis with probability 1/2: an
        augmentation that paper 001 does not use, for small cohorts (the map from sequences to FLAIR does not
        depend on orientation).
    """

    architecture: str = "fcn"
    arguments: Mapping[str, Any] = field(default_factory=lambda: {"features": 64, "depth": 3})
    optimizer: OptimizerName = "sgd"
    lr: float = 5e-4
    momentum: float = 0.0
    max_epochs: int = 200
    patch_size: int = 64
    patches_per_session: int = 8
    strip_length: int = 5
    strips: int = 3
    seed: int = 42
    intensity_normalisation: Literal["cohort", "image"] = "image"
    window: int = 96
    random_flips: bool = False

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        for name in ("max_epochs", "patch_size", "patches_per_session", "strip_length", "strips", "window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.intensity_normalisation not in ("cohort", "image"):
            raise ValueError("intensity_normalisation must be 'cohort' or 'image', "
                             f"got {self.intensity_normalisation!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.random_flips, bool):
            raise ValueError(f"random_flips must be True or False, got {self.random_flips!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        data = asdict(self)
        data["arguments"] = dict(self.arguments)
        return data

    def optimizer_record(self) -> dict[str, Any]:
        """The optimiser as recorded in a model card."""
        record: dict[str, Any] = {"name": self.optimizer, "lr": self.lr, "batch_size": 1}
        if self.optimizer == "sgd":
            record["momentum"] = self.momentum
        return record


@dataclass(frozen=True)
class EpochRecord:
    """One epoch: mean training loss over its steps and validation error (NaN without validation)."""

    epoch: int
    train_loss: float
    validation_error: float


@dataclass
class TrainingResult:
    """What :func:`train_model` returns.

    Attributes
    ----------
    model
        The network on the CPU, in evaluation mode, with the kept weights (lowest validation error; the last epoch's
        without validation).
    history
        One :class:`EpochRecord` per epoch; ``history[0]`` is epoch 0, the untrained network (no training loss).
    best_epoch
        Epoch whose weights were kept.
    stopped_epoch
        Last epoch trained.
    stop_reason
        ``'early stopping (UP3, q=5)'``, ``'max_epochs'``.
    """

    model: nn.Module
    history: list[EpochRecord]
    best_epoch: int
    stopped_epoch: int
    stop_reason: str


# ----------------------------------------------------------------------------------------------------------------
# early stopping
# ----------------------------------------------------------------------------------------------------------------
def _up_holds(errors: Mapping[int, float], t: int, q: int, p: int) -> bool:
    """UP_p at epoch ``t``: the error rose over each of the ``p`` strips ending at ``t``."""
    if t % q or t - p * q < 0:
        return False
    return all(errors[t - i * q] > errors[t - (i + 1) * q] for i in range(p))


def strip_stop_epoch(errors: Sequence[float], strip_length: int = 5, strips: int = 3) -> int | None:
    """The epoch at which Prechelt's UP criterion stops training, or ``None``.

    Prechelt (1998, "Early stopping — but when?"): UP_1 stops after the first end-of-strip epoch ``t`` with
    ``E(t) > E(t - q)``; UP_p stops after epoch ``t`` iff UP_(p-1) stops after ``t - q`` and ``E(t) > E(t - q)``;
    i.e. the error at the end of each of ``p`` successive strips of ``q`` epochs is higher than at the end of the
    strip before. Paper 001 uses p = 3, q = 5.

    Parameters
    ----------
    errors
        Validation error per epoch; ``errors[0]`` is the untrained network, ``errors[t]`` the error after epoch
        ``t``. Strip ends are the epochs divisible by ``strip_length``.
    strip_length, strips
        ``q`` and ``p``.

    Returns
    -------
    int or None

    Examples
    --------
    Falling for 10 epochs, then rising: the strip ends 10, 15, 20, 25 have errors 0, 5, 10, 15; UP3 needs rises at
    15, 20 and 25.

    >>> curve = [abs(10 - t) for t in range(40)]
    >>> strip_stop_epoch(curve)
    25
    >>> strip_stop_epoch(curve, strips=1)
    15
    """
    table = dict(enumerate(errors))
    for t in range(len(errors)):
        if _up_holds(table, t, strip_length, strips):
            return t
    return None


class StripStopping:
    """Incremental form of :func:`strip_stop_epoch` that also tracks the best epoch.

    Parameters
    ----------
    strip_length, strips
        ``q`` and ``p``.
    """

    def __init__(self, strip_length: int = 5, strips: int = 3) -> None:
        self.strip_length = strip_length
        self.strips = strips
        self.errors: dict[int, float] = {}
        self.best_epoch: int | None = None

    def update(self, epoch: int, error: float) -> bool:
        """Record the validation error after ``epoch``; ``True`` when training should stop now."""
        self.errors[epoch] = float(error)
        if self.best_epoch is None or error < self.errors[self.best_epoch]:
            self.best_epoch = epoch
        return _up_holds(self.errors, epoch, self.strip_length, self.strips)

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state."""
        return {"errors": [[k, v] for k, v in sorted(self.errors.items())], "best_epoch": self.best_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.errors = {int(k): float(v) for k, v in state["errors"]}
        self.best_epoch = None if state["best_epoch"] is None else int(state["best_epoch"])


# ----------------------------------------------------------------------------------------------------------------
# patches
# ----------------------------------------------------------------------------------------------------------------
def sample_patch_corners(mask: np.ndarray, n: int, size: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Corners of ``n`` patches of ``size`` centred on random brain voxels, shifted to lie inside the volume.

    Returns
    -------
    numpy.ndarray
        ``(n, 3)`` int corner indices.
    """
    brain = np.flatnonzero(mask)
    centres = np.stack(np.unravel_index(brain[rng.integers(0, brain.size, n)], mask.shape), axis=1)
    size = np.asarray(size)
    corners = centres - size // 2
    return np.clip(corners, 0, np.asarray(mask.shape) - size)


def _patch_size(volumes: Sequence[Volume], patch_size: int, multiple: int) -> tuple[int, int, int]:
    smallest = np.min([v.mask.shape for v in volumes], axis=0)
    size = np.minimum(patch_size, smallest) // multiple * multiple
    if np.any(size < 1):
        raise ValueError(f"volumes of shape {tuple(smallest)} are smaller than the network's size multiple "
                         f"{multiple}; use a smaller voxel size or network")
    return tuple(int(s) for s in size)


# ----------------------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------------------
def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _fingerprint(config: TrainingConfig, inputs: Sequence[str], outputs: Sequence[str],
                 train: Sequence[Volume], validation: Sequence[Volume],
                 normalisation: Mapping[str, Normalisation]) -> str:
    """What a checkpoint must match to be resumed (``max_epochs`` may change)."""
    settings = config.to_dict()
    settings.pop("max_epochs")
    text = json.dumps([settings, list(inputs), list(outputs),
                       [v.label for v in train], [v.label for v in validation],
                       {k: [s.mean, s.std] for k, s in sorted(normalisation.items())}], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """Deterministic torch kernels for the duration of a run (restored afterwards)."""
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark = benchmark


def _make_optimizer(config: TrainingConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)


def _session_stats(volume: Volume, channels: Sequence[str], normalisation: Mapping[str, Normalisation],
                   scope: str) -> Mapping[str, Normalisation]:
    """The statistics that z-score ``volume``: the cohort's, or its own (``scope='image'``)."""
    if scope == "image":
        return array_statistics(volume.take(channels), volume.mask, channels)
    return normalisation


def _prepared(volumes: Sequence[Volume], inputs: Sequence[str], outputs: Sequence[str],
              normalisation: Mapping[str, Normalisation],
              scope: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(normalised inputs, normalised targets, mask) per volume."""
    prepared = []
    for v in volumes:
        stats = _session_stats(v, (*inputs, *outputs), normalisation, scope)
        prepared.append((normalise_array(v.take(inputs), v.mask, inputs, stats),
                         normalise_array(v.take(outputs), v.mask, outputs, stats), v.mask))
    return prepared


def _patch(volume: Volume, corner: np.ndarray, size: Sequence[int], inputs: Sequence[str], outputs: Sequence[str],
           normalisation: Mapping[str, Normalisation]) -> tuple[np.ndarray, np.ndarray]:
    """Normalised input and target blocks of one patch (only the patch is read from a memory-mapped volume)."""
    spatial = tuple(slice(int(c), int(c) + s) for c, s in zip(corner, size))
    block = np.asarray(volume.data[(slice(None), *spatial)])
    mask = volume.mask[spatial]
    pick = [volume.channels.index(c) for c in (*inputs, *outputs)]
    block = block[pick]
    x = normalise_array(block[:len(inputs)], mask, inputs, normalisation)
    y = normalise_array(block[len(inputs):], mask, outputs, normalisation)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def validation_error(model: nn.Module, prepared: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], *,
                     window: int, device: torch.device) -> float:
    """MSE inside the brain over whole (normalised) volumes, voxel-weighted across volumes."""
    from msynth.models.inference import predict_volume

    total = count = 0.0
    for x, y, mask in prepared:
        predicted = predict_volume(model, x, window=window, overlap=0.25, device=device)
        total += float(np.square(predicted[:, mask] - y[:, mask]).astype(np.float64).sum())
        count += float(mask.sum()) * y.shape[0]
    return total / count


def _progress(total: int, initial: int, enabled: bool | None, description: str) -> Any:
    from tqdm.auto import tqdm

    disable = (not sys.stderr.isatty()) if enabled is None else not enabled
    return tqdm(total=total, initial=initial, disable=disable, desc=description, unit="epoch", leave=False)


def train_model(
    train: Sequence[Volume],
    validation: Sequence[Volume],
    *,
    inputs: Sequence[str],
    outputs: Sequence[str],
    normalisation: Mapping[str, Normalisation],
    config: TrainingConfig,
    out_dir: str | PathLike[str],
    device: torch.device | str = "cpu",
    callback: Callable[[EpochRecord], None] | None = None,
    progress: bool | None = None,
) -> TrainingResult:
    """Train a network on patches of ``train`` with early stopping on ``validation``.

    Parameters
    ----------
    train
        Training sessions (:func:`msynth.models.data.load_volume`).
    validation
        Sessions of other subjects for the stopping rule; empty: train ``config.max_epochs`` epochs and keep the
        last weights.
    inputs, outputs
        Channel names of the network's inputs and targets (:func:`msynth.models.card.channels_of`).
    normalisation
        z-score statistics of every channel (computed on the training subjects only).
    config
        :class:`TrainingConfig`.
    out_dir
        Folder for ``checkpoint.pt`` (written at each strip end; a matching one is resumed) and
        ``history.tsv``.
    device
        Torch device for the network.
    callback
        Called with each epoch's :class:`EpochRecord` (after the checkpoint of a strip end is written).
    progress
        tqdm bar over epochs; ``None``: only when stderr is a terminal.

    Returns
    -------
    TrainingResult
    """
    from msynth.models.networks import build_network

    if not train:
        raise ValueError("no training sessions")
    device = torch.device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arguments = {**dict(config.arguments), "in_channels": len(inputs), "out_channels": len(outputs)}
    fingerprint = _fingerprint(config, inputs, outputs, train, validation, normalisation)

    with _deterministic():
        torch.manual_seed(config.seed)
        model = build_network(config.architecture, arguments).to(device)
        optimizer = _make_optimizer(config, model)
        multiple = int(getattr(model, "multiple", 1))
        size = _patch_size(train, config.patch_size, multiple)
        scope = config.intensity_normalisation
        val_data = _prepared(validation, inputs, outputs, normalisation, scope)
        train_stats = {id(v): _session_stats(v, (*inputs, *outputs), normalisation, scope) for v in train}
        stopping = StripStopping(config.strip_length, config.strips)
        history: list[EpochRecord] = []
        best_state: dict[str, torch.Tensor] | None = None
        start = 1

        checkpoint = out_dir / CHECKPOINT_NAME
        if checkpoint.is_file():
            state = torch.load(checkpoint, map_location=device, weights_only=True)
            if state.get("fingerprint") == fingerprint and int(state["epoch"]) <= config.max_epochs:
                model.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
                stopping.load_state_dict(state["stopping"])
                history = [EpochRecord(int(e), float(t), float(v)) for e, t, v in state["history"]]
                best_state = state["best_model"]
                start = int(state["epoch"]) + 1
                LOGGER.info("%s: resuming after epoch %d", checkpoint, start - 1)
            else:
                LOGGER.warning("%s: made with other settings, data or more epochs; starting afresh", checkpoint)

        def evaluate() -> float:
            if not val_data:
                return math.nan
            return validation_error(model, val_data, window=config.window, device=device)

        if start == 1:
            record = EpochRecord(0, math.nan, evaluate())
            history.append(record)
            if val_data:
                stopping.update(0, record.validation_error)
                best_state = copy.deepcopy(model.state_dict())

        loss_fn = nn.MSELoss()
        stop_reason = "max_epochs"
        epoch = start - 1
        bar = _progress(config.max_epochs, start - 1, progress, f"training ({len(train)} sessions)")
        for epoch in range(start, config.max_epochs + 1):
            if history and val_data and stopping.errors and _up_holds(
                    stopping.errors, epoch - 1, config.strip_length, config.strips):
                epoch -= 1  # a resumed run that had already met the rule
                stop_reason = f"early stopping (UP{config.strips}, q={config.strip_length})"
                break
            rng = np.random.default_rng([config.seed, epoch])
            torch.manual_seed(_epoch_seed(config.seed, epoch))
            steps = [(volume, corner) for volume in train
                     for corner in sample_patch_corners(volume.mask, config.patches_per_session, size, rng)]
            order = rng.permutation(len(steps))
            model.train()
            losses = []
            for k in order:
                volume, corner = steps[k]
                x, y = _patch(volume, corner, size, inputs, outputs, train_stats[id(volume)])
                xb = torch.from_numpy(x)[None].to(device)
                yb = torch.from_numpy(y)[None].to(device)
                if config.random_flips:
                    axes = [axis + 2 for axis in range(3) if rng.random() < 0.5]  # batch and channel axes first
                    if axes:
                        xb, yb = xb.flip(axes), yb.flip(axes)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(xb), yb)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
            record = EpochRecord(epoch, float(np.mean(losses)), evaluate())
            history.append(record)
            stop = False
            if val_data:
                stop = stopping.update(epoch, record.validation_error)
                if stopping.best_epoch == epoch:
                    best_state = copy.deepcopy(model.state_dict())
            bar.update(1)
            bar.set_postfix(loss=f"{record.train_loss:.4f}", val=f"{record.validation_error:.4f}")
            LOGGER.debug("epoch %d: training loss %.5f, validation error %.5f", epoch, record.train_loss,
                         record.validation_error)
            if epoch % config.strip_length == 0 or stop or epoch == config.max_epochs:
                _save_checkpoint(checkpoint, fingerprint=fingerprint, epoch=epoch, model=model, optimizer=optimizer,
                                 stopping=stopping, history=history, best_state=best_state)
            if callback is not None:
                callback(record)
            if stop:
                stop_reason = f"early stopping (UP{config.strips}, q={config.strip_length})"
                break
        bar.close()

        if val_data and best_state is not None:
            model.load_state_dict(best_state)
            best_epoch = int(stopping.best_epoch)
        else:
            best_epoch = epoch
    _write_history(out_dir / "history.tsv", history)
    LOGGER.info("training stopped after epoch %d (%s); kept epoch %d", epoch, stop_reason, best_epoch)
    return TrainingResult(model.cpu().eval(), history, best_epoch, epoch, stop_reason)


def _save_checkpoint(path: Path, *, fingerprint: str, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                     stopping: StripStopping, history: Sequence[EpochRecord],
                     best_state: Mapping[str, torch.Tensor] | None) -> None:
    state = {
        "fingerprint": fingerprint, "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "stopping": stopping.state_dict(), "history": [[r.epoch, r.train_loss, r.validation_error] for r in history],
        "best_model": best_state,
    }
    tmp = path.with_name(path.name + ".part")
    torch.save(state, tmp)
    tmp.replace(path)


def _write_history(path: Path, history: Sequence[EpochRecord]) -> None:
    def cell(value: float) -> str:
        return "n/a" if math.isnan(value) else f"{value:.6g}"

    lines = ["epoch\ttrain_loss\tvalidation_error"]
    lines += [f"{r.epoch}\t{cell(r.train_loss)}\t{cell(r.validation_error)}" for r in history]
    path.write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# cross-validation and the final model
# ----------------------------------------------------------------------------------------------------------------
def split_validation(volumes: Sequence[Volume], *, fraction: float = 0.2,
                     seed: int = 42) -> tuple[list[Volume], list[Volume]]:
    """Split training sessions into fitting and validation sets by subject.

    ``max(1, round(fraction * n))`` of the ``n`` subjects (drawn with ``seed``) go to validation. With a single
    subject, its last session validates when it has several (a warning says the split is within one subject); with a
    single session there is no validation set (training then runs to ``max_epochs``).

    Returns
    -------
    (fit, validation)
    """
    subjects = sorted({v.subject for v in volumes})
    if len(subjects) >= 2:
        rng = np.random.default_rng([seed, 1])
        n_val = min(len(subjects) - 1, max(1, round(fraction * len(subjects))))
        held = set(rng.permutation(subjects)[:n_val].tolist())
        return [v for v in volumes if v.subject not in held], [v for v in volumes if v.subject in held]
    if len(volumes) >= 2:
        LOGGER.warning("only one training subject (sub-%s): early stopping validates on its last session, "
                       "which overestimates generalisation", subjects[0])
        return list(volumes[:-1]), [volumes[-1]]
    LOGGER.warning("a single training session: no validation set, training runs to max_epochs")
    return list(volumes), []


def assign_folds(subjects: Sequence[str], folds: int, seed: int) -> list[list[str]]:
    """Subjects of each held-out fold: a seeded permutation dealt round-robin (sizes differ by at most one)."""
    subjects = sorted(subjects)
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    if len(subjects) < folds:
        raise ValueError(f"{folds}-fold cross-validation needs at least {folds} subjects, found {len(subjects)}; "
                         f"use --folds {len(subjects)} or fewer (at least 2), or --folds 0 to skip it")
    order = np.random.default_rng([seed, 2]).permutation(len(subjects))
    return [sorted(subjects[i] for i in order[k::folds]) for k in range(folds)]


def predict_session(model: nn.Module, volume: Volume, *, inputs: Sequence[str], output: str,
                    normalisation: Mapping[str, Normalisation], window: int, scope: str = "cohort",
                    device: torch.device | str = "cpu") -> np.ndarray:
    """Predict ``output`` for a session, in the output's units, as :func:`~msynth.models.inference.synthesize` does.

    The prediction is de-normalised, clipped at 0 and zeroed outside the brain. De-normalisation uses the cohort's
    output statistics with ``scope='cohort'``; with ``scope='image'`` it uses the acquired output's own (``volume``
    must then hold it), since a session's scanner gain cannot be predicted from other images.
    """
    from msynth.models.inference import predict_volume

    x = normalise(volume.take(inputs), volume.mask, inputs, normalisation, scope)
    stats = normalisation[output]
    if scope == "image":
        stats = array_statistics(volume.take([output]), volume.mask, [output])[output]
    predicted = predict_volume(model, x, window=window, overlap=0.5, device=device)[0]
    return np.clip(predicted * stats.std + stats.mean, 0, None) * volume.mask


def evaluate_volume(model: nn.Module, volume: Volume, *, inputs: Sequence[str], output: str,
                    normalisation: Mapping[str, Normalisation], window: int, scope: str = "cohort",
                    device: torch.device | str = "cpu") -> dict[str, float]:
    """MSE, PSNR and SSIM inside the brain of a predicted session (:func:`predict_session`), in the output's units.

    With ``scope='image'`` the metrics measure contrast and structure, not the unpredictable scanner gain.
    """
    from msynth.analysis.metrics import mse, psnr, ssim

    predicted = predict_session(model, volume, inputs=inputs, output=output, normalisation=normalisation,
                                window=window, scope=scope, device=device)
    reference = volume.take([output])[0] * volume.mask
    return {"mse": mse(predicted, reference, volume.mask), "psnr": psnr(predicted, reference, volume.mask),
            "ssim": ssim(predicted, reference, volume.mask)}


def _examples_to_json(examples: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"subject": e.subject, "session": e.session, "images": {k: str(v) for k, v in e.images.items()},
             "mask": str(e.mask)} for e in examples]


def _data_key(examples: Sequence[Any]) -> str:
    """Hash of the examples' files, sizes and modification times."""
    files = sorted(str(p) for e in examples for p in (*e.images.values(), e.mask))
    stamp = [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
    return hashlib.sha256(json.dumps(stamp).encode()).hexdigest()


def _examples_from_json(items: Sequence[Mapping[str, Any]]) -> list[Any]:
    from msynth.models.data import Example

    return [Example(i["subject"], i["session"], {k: Path(v) for k, v in i["images"].items()}, Path(i["mask"]))
            for i in items]


def run_fold(fold: int, test_subjects: list[str], examples: list[dict[str, Any]], inputs: list[str], output: str,
             config: dict[str, Any], voxel_size: float | None, volume_cache: str, out_dir: str, device: str,
             threads: int, data_key: str = "") -> dict[str, Any]:
    """Train on the subjects outside ``test_subjects`` and evaluate on them (one cross-validation fold).

    Plain-data arguments and result, so that pydra can hash, pickle and cache it (:func:`cross_validate`);
    ``data_key`` (sizes and modification times of the files) is there only to change that hash when the data
    change.

    Returns
    -------
    dict
        ``fold``, ``n_train``, ``n_test``, ``mse``, ``psnr``, ``ssim`` (means over test sessions), ``epochs`` (kept
        epoch) and ``sessions`` (per-session metrics).
    """
    from msynth.models.card import channels_of
    from msynth.models.data import compute_normalisation, load_volume

    torch.set_num_threads(max(1, threads))
    volumes = [load_volume(e, voxel_size=voxel_size, cache_dir=volume_cache)
               for e in _examples_from_json(examples)]
    test = [v for v in volumes if v.subject in set(test_subjects)]
    fit_all = [v for v in volumes if v.subject not in set(test_subjects)]
    cfg = TrainingConfig(**config)
    fit, validation = split_validation(fit_all, seed=cfg.seed)
    in_channels = channels_of(inputs)
    out_channels = channels_of([output])
    stats = compute_normalisation(fit_all, (*in_channels, *out_channels))
    result = train_model(fit, validation, inputs=in_channels, outputs=out_channels, normalisation=stats,
                         config=cfg, out_dir=out_dir, device=device, progress=False)
    sessions = {v.label: evaluate_volume(result.model, v, inputs=in_channels, output=out_channels[0],
                                         normalisation=stats, window=cfg.window, scope=cfg.intensity_normalisation,
                                         device=device) for v in test}
    summary = {name: float(np.mean([m[name] for m in sessions.values()])) for name in ("mse", "psnr", "ssim")}
    (Path(out_dir) / "metrics.json").write_text(json.dumps({"fold": fold, "sessions": sessions, **summary},
                                                           indent=2, allow_nan=True))
    LOGGER.info("fold %d: MSE %.4g, PSNR %.3g dB, SSIM %.3f on %d held-out session(s)", fold, summary["mse"],
                summary["psnr"], summary["ssim"], len(test))
    return {"fold": fold, "n_train": len({v.subject for v in fit_all}), "n_test": len(test_subjects),
            "epochs": int(result.best_epoch), "sessions": sessions, **summary}


def fold_task(spec: str) -> str:
    """JSON in, JSON out wrapper of :func:`run_fold` (the pydra task; pydra hashes and caches the spec)."""
    if not logging.getLogger().handlers:  # a fresh worker (forkserver): log to stderr as msynth-train does
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    return json.dumps(run_fold(**json.loads(spec)), allow_nan=True)


# pydra 0.25 checks inputs against the annotations as objects; this module's annotations are postponed strings
fold_task.__annotations__ = {"spec": str, "return": str}


@contextlib.contextmanager
def _default_start_method(method: str) -> Iterator[None]:
    """Make ``method`` the default multiprocessing start method inside the block, then restore the previous one."""
    previous = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method(method, force=True)
    try:
        yield
    finally:
        multiprocessing.set_start_method(previous, force=True)


def _pydra_folds(specs: list[dict[str, Any]], *, cache_dir: Path, n_procs: int, plugin: str) -> list[dict[str, Any]]:
    """Run :func:`run_fold` once per fold: one pydra task split over the folds' specifications.

    pydra caches each fold's result under ``cache_dir`` by the hash of its inputs, so a rerun skips finished folds;
    an unfinished fold resumes from its own ``checkpoint.pt``.
    """
    import pydra

    task = pydra.mark.task(fold_task)(name="cv_fold", cache_dir=str(cache_dir))
    task.split("spec", spec=[json.dumps(spec) for spec in specs])
    options = {"n_procs": n_procs} if plugin == "cf" else {}
    # pydra's local worker makes its process pool when the submitter is built, with the default start method:
    # forked folds can hang on the OpenMP pool of a process that has already run torch, so they start from a
    # forkserver (pydra 0.25 takes no multiprocessing context itself)
    with _default_start_method("forkserver"):
        submitter = pydra.Submitter(plugin=plugin, **options)
    with submitter:
        submitter(task)
    results = task.result()
    failed = [r for r in results if r is None or r.errored]
    if failed:
        raise RuntimeError(f"{len(failed)} cross-validation fold(s) failed; their error reports are in the pydra "
                           f"cache {cache_dir} (_error.pklz)")
    return sorted((json.loads(r.output.out) for r in results), key=lambda r: r["fold"])


def cross_validate(
    examples: Sequence[Any],
    *,
    inputs: Sequence[str],
    output: str,
    config: TrainingConfig,
    model_dir: str | PathLike[str],
    work_dir: str | PathLike[str] | None = None,
    folds: int = 5,
    voxel_size: float | None = None,
    device: str = "cpu",
    n_procs: int = 1,
    plugin: str = "cf",
    name: str | None = None,
    task: str = "flair-synthesis",
    data_source: str = "",
    data_license: str = "",
    data_citation: str = "",
    command: str = "",
    salt: str | None = None,
    progress: bool | None = None,
) -> Any:
    """k-fold cross-validation over subjects, then the final model on all subjects, its card and weights.

    Each fold holds out about ``1/folds`` of the subjects, fits on the rest (an inner subject split gives the early-
    stopping validation set, :func:`split_validation`) with z-score statistics of those subjects only, and measures
    MSE, PSNR and SSIM inside the brain on the held-out sessions in the output's units. Folds run as one pydra task
    split over folds (``plugin='cf'``: ``n_procs`` local processes; ``'slurm'``, … on a cluster). The final model is
    trained on every subject for the median of the folds' kept epochs (no data is held out, so there is nothing to
    stop on); with ``folds=0`` there is no cross-validation and the final model stops early on an inner split.

    Parameters
    ----------
    examples
        Sessions (:func:`msynth.models.data.find_examples`).
    inputs, output
        Modality keys.
    config
        :class:`TrainingConfig`.
    model_dir
        Output model folder: ``model_card.json`` and ``model.pt``.
    work_dir
        Caches, fold folders (checkpoints, histories, metrics) and pydra's cache; default ``<model_dir>_work``.
        Rerunning with the same work folder resumes.
    folds
        Number of folds (0: none).
    voxel_size
        Isotropic voxel size (mm) to train at; ``None``: the space-T1w grid.
    device
        ``'cpu'``, ``'cuda'``, ``'cuda:N'``.
    n_procs
        Folds trained at once (and CPU threads shared among them).
    plugin
        pydra submitter plugin.
    name, task
        Card name (default ``<task>_<inputs>``) and task.
    data_source, data_license, data_citation, command
        Recorded in the card.
    salt
        Secret for the subject hashes (default: a random one, not stored, so nobody can link the hashes to labels).
    progress
        Progress bar of the final model's training.

    Returns
    -------
    msynth.models.card.ModelCard
        The card written to ``model_dir``.
    """
    import secrets
    import statistics

    from msynth.models.card import (
        WEIGHTS_NAME, FoldMetrics, ModelCard, TrainingRecord, channels_of, hash_subject, write_card,
    )
    from msynth.models.data import compute_normalisation, load_volume, subjects_of

    inputs = list(inputs)
    model_dir = Path(model_dir)
    work_dir = Path(work_dir) if work_dir is not None else model_dir.with_name(model_dir.name + "_work")
    if not examples:
        raise ValueError("no training sessions: no session has every input, the output and a brain mask")
    subjects = subjects_of(examples)
    if folds:
        fold_subjects = assign_folds(subjects, folds, config.seed)
    elif len(subjects) < 2:
        LOGGER.warning("a single subject: the model cannot be validated on anyone else")
    cache_dir = work_dir / "cache"
    volumes = [load_volume(e, voxel_size=voxel_size, cache_dir=cache_dir) for e in examples]
    threads = max(1, torch.get_num_threads() // max(1, n_procs))

    cv: list[FoldMetrics] = []
    final_config = config
    if folds:
        common = {"examples": _examples_to_json(examples), "inputs": inputs, "output": output,
                  "config": config.to_dict(), "voxel_size": voxel_size, "volume_cache": str(cache_dir),
                  "device": device, "threads": threads, "data_key": _data_key(examples)}
        specs = [{**common, "fold": k, "test_subjects": fold_subjects[k],
                  "out_dir": str(work_dir / "folds" / f"fold-{k}")} for k in range(folds)]
        LOGGER.info("%d-fold cross-validation over %d subjects (%s plugin, %d process(es))", folds, len(subjects),
                    plugin, n_procs)
        results = _pydra_folds(specs, cache_dir=work_dir / "pydra", n_procs=n_procs, plugin=plugin)
        cv = [FoldMetrics(fold=r["fold"], n_train=r["n_train"], n_test=r["n_test"], mse=r["mse"], psnr=r["psnr"],
                          ssim=r["ssim"], epochs=r["epochs"]) for r in results]
        epochs = max(1, round(statistics.median(r["epochs"] for r in results)))
        final_config = TrainingConfig(**{**config.to_dict(), "max_epochs": epochs})
        LOGGER.info("cross-validation: MSE %.4g ± %.2g, SSIM %.3f; final model: %d epochs on all subjects",
                    np.mean([f.mse for f in cv]), np.std([f.mse for f in cv]), np.mean([f.ssim for f in cv]), epochs)
        fit, validation = volumes, []
    else:
        fit, validation = split_validation(volumes, seed=config.seed)
    in_channels = channels_of(inputs)
    out_channels = channels_of([output])
    stats = compute_normalisation(volumes, (*in_channels, *out_channels))
    result = train_model(fit, validation, inputs=in_channels, outputs=out_channels, normalisation=stats,
                         config=final_config, out_dir=work_dir / "final", device=device, progress=progress)

    salt = salt if salt is not None else secrets.token_hex(16)
    arguments = {**dict(config.arguments), "in_channels": len(in_channels), "out_channels": len(out_channels)}
    card = ModelCard(
        name=name or f"{task}_{'-'.join(inputs)}",
        task=task,
        inputs=tuple(inputs),
        output=output,
        voxel_size_mm=voxel_size,
        normalisation=stats,
        intensity_normalisation=config.intensity_normalisation,
        architecture=config.architecture,
        architecture_arguments=arguments,
        training=TrainingRecord(
            subjects=tuple(sorted(hash_subject(s, salt) for s in subjects)),
            salt_fingerprint=hashlib.sha256(salt.encode()).hexdigest(),
            n_sessions=len(volumes),
            data_source=data_source, data_license=data_license, data_citation=data_citation,
            command=command or " ".join(sys.argv),
            seed=config.seed,
            optimizer=config.optimizer_record(),
            epochs=max(1, int(result.best_epoch)),
            patch_size=config.patch_size,
            early_stopping={"strip_length": config.strip_length, "strips": config.strips},
            augmentation=("random_flips",) if config.random_flips else (),
            cv=tuple(cv),
        ),
    )
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.save(result.model.state_dict(), model_dir / WEIGHTS_NAME)
    write_card(card, model_dir)
    LOGGER.info("model written to %s", model_dir)
    return card
