"""The training loop: epochs of random patches fed to a step object, validation, early stopping, checkpoints.

What paper 001 (§2.3) does, and what we do
------------------------------------------
* Intensities: z-scored inside the brain, 0 outside. Paper 001 uses one mean and standard deviation per sequence
  over all training images (``intensity_normalisation='cohort'``). Our default, ``'image'``, z-scores each image by
  its own brain statistics: uncalibrated MRI has a scanner gain that changes between sessions (a factor up to 2 in
  the 4 mm phantom), which cohort statistics do not remove. On the phantom (FCN with 8 features, SGD 5e-3, trained
  on one subject, validated on another) the cohort-normalised validation error went 2.07 → 1.04 (epoch 2) → 3.54
  (epoch 10), the image-normalised one 1.10 → 0.47, steadily.
* Loss and optimiser: the step's (:mod:`~msynth.models.training.steps`). Paper 001: mean squared error (eq. 1),
  plain SGD (no momentum: "standard SGD"), learning rate 5e-4, batch size 1; thesis 003: L1-type losses, Adam, and
  for its GANs an adversarial term.
* Samples: random cubic patches (:mod:`~msynth.models.training.patches`; default 64³ voxels,
  ``patches_per_session`` per session and epoch, one per step). Eight 64³ patches hold about as many voxels as one
  of paper 001's 208×256×40 volumes. Or, as thesis 003 ch. 4, every patch of a 50 %-overlap grid
  (``patch_sampling='grid'``), with its rotations and scalings as augmentation.
* A Refiner stage trains on volumes that carry the previous stage's prediction (:attr:`Volume.sketch`): its
  patches and validation volumes get the sketch as extra input channels.
* Early stopping: Prechelt's UP_p criterion with strips of ``q`` epochs (:mod:`~msynth.models.training.stopping`),
  p = 3, q = 5. The generalisation error is the MSE inside the brain of whole validation volumes (subjects held out
  of the training set). The weights kept are those of the epoch with the lowest validation error (Prechelt 1998).
* Reproducibility: initialisation uses ``seed``; each epoch draws its patches and shuffling from a generator seeded
  with ``(seed, epoch)``, and torch's generator is reseeded the same way, so a run resumed from ``checkpoint.pt``
  (written at the end of every strip) gives the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from msynth.models.card import WEIGHTS_NAME, Normalisation
from msynth.models.data import Volume, normalise_array, session_statistics
from msynth.models.training.config import TrainingConfig
from msynth.models.training.patches import (
    extract_patch, grid_patch_corners, patch_size, random_flip, random_transform, sample_patch_corners,
)
from msynth.models.training.steps import TrainingStep, build_step
from msynth.models.training.stopping import StripStopping

__all__ = ["CHECKPOINT_NAME", "EpochRecord", "TrainingResult", "deterministic", "train_model", "validation_error",
           "volume_statistics"]

LOGGER = logging.getLogger("msynth.models")
CHECKPOINT_NAME = "checkpoint.pt"

#: (z-scored inputs, z-scored targets, brain mask) of one whole validation volume.
Prepared = tuple[np.ndarray, np.ndarray, np.ndarray]


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
        The predicting network on the CPU, in evaluation mode, with the kept weights (lowest validation error; the
        last epoch's without validation).
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


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _fingerprint(config: TrainingConfig, inputs: Sequence[str], outputs: Sequence[str],
                 train: Sequence[Volume], validation: Sequence[Volume],
                 normalisation: Mapping[str, Normalisation]) -> str:
    """What a checkpoint must match to be resumed (``max_epochs`` may change): the settings, the data and the
    sketches a Refiner trains on."""
    settings = config.to_dict()
    settings.pop("max_epochs")
    sketches = [hashlib.sha256(np.ascontiguousarray(v.sketch).tobytes()).hexdigest()
                for v in (*train, *validation) if v.sketch is not None]
    text = json.dumps([settings, list(inputs), list(outputs),
                       [v.label for v in train], [v.label for v in validation],
                       {k: [s.mean, s.std] for k, s in sorted(normalisation.items())}, *sketches], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
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


def volume_statistics(volume: Volume, inputs: Sequence[str], outputs: Sequence[str],
                      normalisation: Mapping[str, Normalisation], config: TrainingConfig) -> dict[str, Normalisation]:
    """The statistics that z-score a session: its inputs as ``config.intensity_normalisation`` says, its target as
    ``config.target_scope`` says (:func:`msynth.models.data.session_statistics`)."""
    return {**session_statistics(volume, inputs, normalisation, config.intensity_normalisation),
            **session_statistics(volume, outputs, normalisation, config.target_scope)}


def _prepared(volumes: Sequence[Volume], inputs: Sequence[str], outputs: Sequence[str],
              normalisation: Mapping[str, Normalisation], config: TrainingConfig) -> list[Prepared]:
    """Whole volumes z-scored for validation (a Refiner's with the sketch as the last input channels)."""
    prepared = []
    for v in volumes:
        stats = volume_statistics(v, inputs, outputs, normalisation, config)
        x = normalise_array(v.take(inputs), v.mask, inputs, stats)
        if v.sketch is not None:
            x = np.concatenate([x, v.sketch])
        prepared.append((x, normalise_array(v.take(outputs), v.mask, outputs, stats), v.mask))
    return prepared


def validation_error(model: nn.Module, prepared: Sequence[Prepared], *, window: int, device: torch.device) -> float:
    """MSE inside the brain over whole (normalised) volumes, voxel-weighted across volumes."""
    from msynth.models.inference import predict_volume

    total = count = 0.0
    for x, y, mask in prepared:
        predicted = predict_volume(model, x, window=window, overlap=0.25, device=device, seed=None)
        total += float(np.square(predicted[:, mask] - y[:, mask]).astype(np.float64).sum())
        count += float(mask.sum()) * y.shape[0]
    return total / count


def _progress(total: int, initial: int, enabled: bool | None, description: str) -> Any:
    from tqdm.auto import tqdm

    disable = (not sys.stderr.isatty()) if enabled is None else not enabled
    return tqdm(total=total, initial=initial, disable=disable, desc=description, unit="epoch", leave=False)


def _resume(checkpoint: Path, fingerprint: str, max_epochs: int, step: TrainingStep,
            stopping: StripStopping, device: torch.device) -> tuple[int, list[EpochRecord], Any]:
    """Load a matching checkpoint into ``step`` and ``stopping``: (first epoch to run, history, best weights)."""
    if not checkpoint.is_file():
        return 1, [], None
    state = torch.load(checkpoint, map_location=device, weights_only=True)
    if state.get("fingerprint") != fingerprint or int(state["epoch"]) > max_epochs:
        LOGGER.warning("%s: made with other settings, data or more epochs; starting afresh", checkpoint)
        return 1, [], None
    step.load_state_dict(state["step"])
    stopping.load_state_dict(state["stopping"])
    history = [EpochRecord(int(e), float(t), float(v)) for e, t, v in state["history"]]
    LOGGER.info("%s: resuming after epoch %d", checkpoint, int(state["epoch"]))
    return int(state["epoch"]) + 1, history, state["best_model"]


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
    step: TrainingStep | None = None,
    callback: Callable[[EpochRecord], None] | None = None,
    progress: bool | None = None,
) -> TrainingResult:
    """Train a step on patches of ``train`` with early stopping on ``validation``.

    Parameters
    ----------
    train
        Training sessions (:func:`msynth.models.data.load_volume`).
    validation
        Sessions of other subjects for the stopping rule; empty: train ``config.max_epochs`` epochs and keep the
        last weights.
    inputs, outputs
        Channel names of the network's inputs and targets (:func:`msynth.models.card.channels_of`). Volumes with a
        ``sketch`` add it after the inputs (a Refiner), all or none of them.
    normalisation
        z-score statistics of every channel (computed on the training subjects only).
    config
        The run's settings: the loop's (epochs, patches, stopping, seed, normalisation scope, augmentation) and the
        stage's (network, loss, optimiser, discriminator), which are part of the checkpoint's fingerprint.
    out_dir
        Folder for ``checkpoint.pt`` (written at each strip end; a matching one is resumed) and ``history.tsv``.
    device
        Torch device of the networks.
    step
        The :class:`~msynth.models.training.steps.SupervisedStep` or
        :class:`~msynth.models.training.steps.AdversarialStep` to train, on ``device``; default: the step
        ``config`` describes (:func:`~msynth.models.training.steps.build_step`), its networks initialised after
        ``torch.manual_seed(config.seed)``, with ``inputs`` (and a sketch) and ``outputs`` giving their channels.
    callback
        Called with each epoch's :class:`EpochRecord` (after the checkpoint of a strip end is written).
    progress
        tqdm bar over epochs; ``None``: only when stderr is a terminal.

    Returns
    -------
    TrainingResult
    """
    if not train:
        raise ValueError("no training sessions")
    device = torch.device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sketched = {v.sketch is not None for v in (*train, *validation)}
    if len(sketched) > 1:
        raise ValueError("either every training and validation volume carries a sketch (a Refiner) or none does")
    fingerprint = _fingerprint(config, inputs, outputs, train, validation, normalisation)

    with deterministic():
        if step is None:
            torch.manual_seed(config.seed)
            stage = config.stage("synthesis", in_channels=len(inputs) + len(outputs) * sketched.pop(),
                                 out_channels=len(outputs), weights=WEIGHTS_NAME)
            step = build_step(stage, device)
        model = step.network
        size = patch_size(train, config.patch_size, step.multiple)
        val_data = _prepared(validation, inputs, outputs, normalisation, config)
        train_stats = {id(v): volume_statistics(v, inputs, outputs, normalisation, config) for v in train}
        grids = {id(v): grid_patch_corners(v.mask, size) for v in train} if config.patch_sampling == "grid" else {}
        stopping = StripStopping(config.strip_length, config.strips)
        checkpoint = out_dir / CHECKPOINT_NAME
        start, history, best_state = _resume(checkpoint, fingerprint, config.max_epochs, step, stopping, device)

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

        stop_reason = "max_epochs"
        epoch = start - 1
        bar = _progress(config.max_epochs, start - 1, progress, f"training ({len(train)} sessions)")
        for epoch in range(start, config.max_epochs + 1):
            if val_data and stopping.stops_at(epoch - 1):
                epoch -= 1  # a resumed run that had already met the rule
                stop_reason = stopping.reason
                break
            rng = np.random.default_rng([config.seed, epoch])
            torch.manual_seed(_epoch_seed(config.seed, epoch))
            patches = [(volume, corner) for volume in train
                       for corner in (grids[id(volume)] if grids else
                                      sample_patch_corners(volume.mask, config.patches_per_session, size, rng))]
            order = rng.permutation(len(patches))
            step.train()
            losses = []
            for k in order:
                volume, corner = patches[k]
                batch = extract_patch(volume, corner, size, inputs, outputs, train_stats[id(volume)]).to(device)
                if config.random_flips:
                    batch = random_flip(batch, rng)
                if config.random_rotations or config.random_scaling:
                    batch = random_transform(batch, rng, rotations=config.random_rotations,
                                             scaling=config.random_scaling)
                losses.append(step(batch))
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
                _save_checkpoint(checkpoint, fingerprint=fingerprint, epoch=epoch, step=step, stopping=stopping,
                                 history=history, best_state=best_state)
            if callback is not None:
                callback(record)
            if stop:
                stop_reason = stopping.reason
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


def _save_checkpoint(path: Path, *, fingerprint: str, epoch: int, step: TrainingStep, stopping: StripStopping,
                     history: Sequence[EpochRecord], best_state: Mapping[str, torch.Tensor] | None) -> None:
    state = {
        "fingerprint": fingerprint, "epoch": epoch, "step": step.state_dict(), "stopping": stopping.state_dict(),
        "history": [[r.epoch, r.train_loss, r.validation_error] for r in history], "best_model": best_state,
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
