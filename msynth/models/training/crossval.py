"""Cross-validation over subjects, then the final model on every subject, its card and its weights.

Folds run as one pydra task split over folds, each in its own process started from a forkserver (docs/design.md
"Run bookkeeping"); pydra caches each fold's result, and an unfinished fold resumes from its own checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from msynth.models.card import (
    TARGETS, WEIGHTS_NAME, FoldMetrics, ModelCard, Normalisation, TrainingRecord, channels_of, hash_subject, write_card,
)
from msynth.models.data import (
    Example, Volume, array_statistics, compute_normalisation, load_volume, normalise, subjects_of,
)
from msynth.models.training.config import TrainingConfig
from msynth.models.training.loop import train_model

__all__ = ["assign_folds", "cross_validate", "evaluate_volume", "fold_task", "predict_session", "run_fold",
           "split_validation"]

LOGGER = logging.getLogger("msynth.models")


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


def _examples_to_json(examples: Sequence[Example]) -> list[dict[str, Any]]:
    return [{"subject": e.subject, "session": e.session, "images": {k: str(v) for k, v in e.images.items()},
             "mask": str(e.mask)} for e in examples]


def _examples_from_json(items: Sequence[Mapping[str, Any]]) -> list[Example]:
    return [Example(i["subject"], i["session"], {k: Path(v) for k, v in i["images"].items()}, Path(i["mask"]))
            for i in items]


def _data_key(examples: Sequence[Example]) -> str:
    """Hash of the examples' files, sizes and modification times."""
    files = sorted(str(p) for e in examples for p in (*e.images.values(), e.mask))
    stamp = [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
    return hashlib.sha256(json.dumps(stamp).encode()).hexdigest()


def run_fold(fold: int, test_subjects: list[str], examples: list[dict[str, Any]], inputs: list[str], target: str,
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
    torch.set_num_threads(max(1, threads))
    volumes = [load_volume(e, voxel_size=voxel_size, cache_dir=volume_cache)
               for e in _examples_from_json(examples)]
    test = [v for v in volumes if v.subject in set(test_subjects)]
    fit_all = [v for v in volumes if v.subject not in set(test_subjects)]
    cfg = TrainingConfig(**config)
    fit, validation = split_validation(fit_all, seed=cfg.seed)
    in_channels = channels_of(inputs)
    (out_channel,) = channels_of([TARGETS[target].modality])
    stats = compute_normalisation(fit_all, (*in_channels, out_channel))
    result = train_model(fit, validation, inputs=in_channels, outputs=[out_channel], normalisation=stats,
                         config=cfg, out_dir=out_dir, device=device, progress=False)
    sessions = {v.label: evaluate_volume(result.model, v, inputs=in_channels, output=out_channel,
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


def _cross_validated_epochs(examples: Sequence[Example], subjects: Sequence[str], *, inputs: Sequence[str],
                            target: str, config: TrainingConfig, folds: int, voxel_size: float | None,
                            cache_dir: Path, work_dir: Path, device: str, n_procs: int,
                            plugin: str) -> tuple[list[FoldMetrics], int]:
    """Each fold's held-out metrics, and the median of the folds' kept epochs (the final model's epochs)."""
    import statistics

    fold_subjects = assign_folds(subjects, folds, config.seed)
    common = {"examples": _examples_to_json(examples), "inputs": list(inputs), "target": target,
              "config": config.to_dict(), "voxel_size": voxel_size, "volume_cache": str(cache_dir),
              "device": device, "threads": max(1, torch.get_num_threads() // max(1, n_procs)),
              "data_key": _data_key(examples)}
    specs = [{**common, "fold": k, "test_subjects": fold_subjects[k],
              "out_dir": str(work_dir / "folds" / f"fold-{k}")} for k in range(folds)]
    LOGGER.info("%d-fold cross-validation over %d subjects (%s plugin, %d process(es))", folds, len(subjects),
                plugin, n_procs)
    results = _pydra_folds(specs, cache_dir=work_dir / "pydra", n_procs=n_procs, plugin=plugin)
    cv = [FoldMetrics(fold=r["fold"], n_train=r["n_train"], n_test=r["n_test"], mse=r["mse"], psnr=r["psnr"],
                      ssim=r["ssim"], epochs=r["epochs"]) for r in results]
    epochs = max(1, round(statistics.median(r["epochs"] for r in results)))
    LOGGER.info("cross-validation: MSE %.4g ± %.2g, SSIM %.3f; final model: %d epochs on all subjects",
                np.mean([f.mse for f in cv]), np.std([f.mse for f in cv]), np.mean([f.ssim for f in cv]), epochs)
    return cv, epochs


def cross_validate(
    examples: Sequence[Example],
    *,
    inputs: Sequence[str],
    target: str,
    config: TrainingConfig,
    model_dir: str | PathLike[str],
    work_dir: str | PathLike[str] | None = None,
    folds: int = 5,
    voxel_size: float | None = None,
    device: str = "cpu",
    n_procs: int = 1,
    plugin: str = "cf",
    name: str | None = None,
    data_source: str = "",
    data_license: str = "",
    data_citation: str = "",
    command: str = "",
    salt: str | None = None,
    progress: bool | None = None,
) -> ModelCard:
    """k-fold cross-validation over subjects, then the final one-stage model on all subjects, its card and weights.

    Each fold holds out about ``1/folds`` of the subjects, fits on the rest (an inner subject split gives the early-
    stopping validation set, :func:`split_validation`) with z-score statistics of those subjects only, and measures
    MSE, PSNR and SSIM inside the brain on the held-out sessions in the target's units. Folds run as one pydra task
    split over folds (``plugin='cf'``: ``n_procs`` local processes; ``'slurm'``, … on a cluster). The final model is
    trained on every subject for the median of the folds' kept epochs (no data is held out, so there is nothing to
    stop on); with ``folds=0`` there is no cross-validation and the final model stops early on an inner split.

    Parameters
    ----------
    examples
        Sessions (:func:`msynth.models.data.find_examples`).
    inputs
        Input modality keys.
    target
        A key of :data:`~msynth.models.card.TARGETS` (``'FLAIR'``, ``'DVR'``).
    config
        :class:`~msynth.models.training.config.TrainingConfig`.
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
    name
        Card name (default ``<target>-synthesis_<inputs>``, lower-case target).
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

    inputs = list(inputs)
    model_dir = Path(model_dir)
    work_dir = Path(work_dir) if work_dir is not None else model_dir.with_name(model_dir.name + "_work")
    if not examples:
        raise ValueError("no training sessions: no session has every input, the target and a brain mask")
    subjects = subjects_of(examples)
    if folds:
        assign_folds(subjects, folds, config.seed)  # too few subjects: fail before reading any image
    elif len(subjects) < 2:
        LOGGER.warning("a single subject: the model cannot be validated on anyone else")
    cache_dir = work_dir / "cache"
    volumes = [load_volume(e, voxel_size=voxel_size, cache_dir=cache_dir) for e in examples]

    cv: list[FoldMetrics] = []
    final_config = config
    if folds:
        cv, epochs = _cross_validated_epochs(examples, subjects, inputs=inputs, target=target, config=config,
                                             folds=folds, voxel_size=voxel_size, cache_dir=cache_dir,
                                             work_dir=work_dir, device=device, n_procs=n_procs, plugin=plugin)
        final_config = TrainingConfig(**{**config.to_dict(), "max_epochs": epochs})
        fit, validation = volumes, []
    else:
        fit, validation = split_validation(volumes, seed=config.seed)
    in_channels = channels_of(inputs)
    out_channels = channels_of([TARGETS[target].modality])
    stats = compute_normalisation(volumes, (*in_channels, *out_channels))
    result = train_model(fit, validation, inputs=in_channels, outputs=out_channels, normalisation=stats,
                         config=final_config, out_dir=work_dir / "final", device=device, progress=progress)

    salt = salt if salt is not None else secrets.token_hex(16)
    card = ModelCard(
        name=name or f"{target.lower()}-synthesis_{'-'.join(inputs)}",
        target=target,
        inputs=tuple(inputs),
        voxel_size_mm=voxel_size,
        normalisation=stats,
        intensity_normalisation=config.intensity_normalisation,
        stages=(config.stage("synthesis", in_channels=len(in_channels), out_channels=len(out_channels),
                             weights=WEIGHTS_NAME),),
        training=TrainingRecord(
            subjects=tuple(sorted(hash_subject(s, salt) for s in subjects)),
            salt_fingerprint=hashlib.sha256(salt.encode()).hexdigest(),
            n_sessions=len(volumes),
            data_source=data_source, data_license=data_license, data_citation=data_citation,
            command=command or " ".join(sys.argv),
            seed=config.seed,
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
