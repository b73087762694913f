"""Cross-validation over subjects, then the final model on every subject, its card and its weights.

Folds run as one pydra task split over folds, each in its own process started from a forkserver (docs/design.md
"Run bookkeeping"); pydra caches each fold's result, and an unfinished fold resumes from its own checkpoint.

A model has one stage (the FLAIR FCN, the baselines of thesis 003) or several: a Sketcher, then one or more
Refiners, each trained from scratch after the previous one is fixed, on the inputs and the previous stage's
prediction (thesis 003 §3.3.1: "we first iteratively trained the Sketcher … Then we … trained the Refiner from
scratch … by fixing our Sketcher"); :func:`train_stages`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
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
from msynth.models.training.loop import TrainingResult, train_model
from msynth.models.training.workers import own_cache, slurm_fold_worker

__all__ = ["PSNR_PEAK", "add_sketches", "assign_folds", "cross_validate", "evaluate_volume", "fold_task",
           "predict_session", "roi_errors", "run_fold", "split_validation", "stage_names", "train_stages"]

LOGGER = logging.getLogger("msynth.models")

#: The peak of each target's PSNR: ``'range'``, the reference's max − min in the brain (the FLAIR metrics); ``'max'``,
#: the acquired map's maximum in the brain, thesis 003 eq. 3.9's ``MAX_I`` ("the maximum voxel value of the image").
PSNR_PEAK = {"FLAIR": "range", "DVR": "max"}
#: Region names of the per-ROI metrics, by ROI code (:mod:`msynth.models.losses`: other, NAWM, lesion).
ROI_NAMES = ("other", "NAWM", "lesion")


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


def assign_folds(subjects: Sequence[str], folds: int, seed: int,
                 groups: Mapping[str, str] | None = None) -> list[list[str]]:
    """Subjects of each held-out fold: a seeded permutation dealt round-robin (sizes differ by at most one).

    With ``groups`` (subject → group, :func:`msynth.models.data.subject_groups`) each group is permuted on its own
    and the groups are dealt one after the other, so every group is spread over the folds as evenly as it can be:
    thesis 003 §3.3.1 puts 3, 3 and 4 of its 10 healthy controls in its 3 folds.
    """
    subjects = sorted(subjects)
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    if len(subjects) < folds:
        raise ValueError(f"{folds}-fold cross-validation needs at least {folds} subjects, found {len(subjects)}; "
                         f"use --folds {len(subjects)} or fewer (at least 2), or --folds 0 to skip it")
    rng = np.random.default_rng([seed, 2])
    if groups is None:
        ordered = [subjects[i] for i in rng.permutation(len(subjects))]
    else:
        ordered = []
        for group in sorted({groups.get(s, "n/a") for s in subjects}):
            members = [s for s in subjects if groups.get(s, "n/a") == group]
            ordered += [members[i] for i in rng.permutation(len(members))]
    return [sorted(ordered[k::folds]) for k in range(folds)]


def predict_session(model: nn.Module, volume: Volume, *, inputs: Sequence[str], output: str,
                    normalisation: Mapping[str, Normalisation], window: int, scope: str = "cohort",
                    target_scope: str | None = None, device: torch.device | str = "cpu") -> np.ndarray:
    """Predict ``output`` for a session, in the output's units, as :func:`~msynth.models.inference.synthesize` does.

    The prediction is de-normalised, clipped at 0 and zeroed outside the brain. Inputs are z-scored as ``scope``
    says. De-normalisation uses the cohort's output statistics when ``target_scope`` (default: ``scope``) is
    ``'cohort'``; with ``'image'`` it uses the acquired output's own (``volume`` must then hold it), since a
    session's scanner gain cannot be predicted from other images.
    """
    from msynth.models.inference import predict_volume

    x = normalise(volume.take(inputs), volume.mask, inputs, normalisation, scope)
    stats = normalisation[output]
    if (target_scope or scope) == "image":
        stats = array_statistics(volume.take([output]), volume.mask, [output])[output]
    predicted = predict_volume(model, x, window=window, overlap=0.5, device=device)[0]
    return np.clip(predicted * stats.std + stats.mean, 0, None) * volume.mask


def roi_errors(predicted: np.ndarray, reference: np.ndarray, roi: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Per-region errors of a prediction inside the brain: ``<region>_discrepancy``, the absolute difference of the
    regions' mean predicted and reference values (thesis 003 Table 3.2's "myelin content prediction discrepancy"
    of a session), and ``<region>_mae``, the mean absolute voxel error, for the regions of :data:`ROI_NAMES`
    (NaN for a region the session lacks).

    >>> errors = roi_errors(np.array([1.0, 2.0, 4.0, 9.0]), np.array([1.0, 1.0, 2.0, 0.0]), np.array([1, 2, 2, 0]),
    ...                     np.array([1, 1, 1, 0], bool))
    >>> errors["lesion_discrepancy"], errors["lesion_mae"], errors["NAWM_mae"], errors["other_mae"]
    (1.5, 1.5, 0.0, nan)
    """
    errors = {}
    for code, name in enumerate(ROI_NAMES):
        region = mask & (roi == code)
        p, r = predicted[region].astype(np.float64), reference[region].astype(np.float64)
        errors[f"{name}_discrepancy"] = float(abs(p.mean() - r.mean())) if region.any() else math.nan
        errors[f"{name}_mae"] = float(np.abs(p - r).mean()) if region.any() else math.nan
    return errors


def evaluate_volume(model: nn.Module, volume: Volume, *, inputs: Sequence[str], output: str,
                    normalisation: Mapping[str, Normalisation], window: int, scope: str = "cohort",
                    target_scope: str | None = None, peak: str = "range",
                    device: torch.device | str = "cpu") -> dict[str, float]:
    """MSE, PSNR and SSIM inside the brain of a predicted session (:func:`predict_session`), in the output's units,
    and the per-region errors (:func:`roi_errors`) when the volume has region labels.

    With ``scope='image'`` the metrics measure contrast and structure, not the unpredictable scanner gain. ``peak``
    is the PSNR's peak (:data:`PSNR_PEAK`).
    """
    from msynth.analysis.metrics import mse, psnr, ssim

    predicted = predict_session(model, volume, inputs=inputs, output=output, normalisation=normalisation,
                                window=window, scope=scope, target_scope=target_scope, device=device)
    reference = volume.take([output])[0] * volume.mask
    data_range = float(reference[volume.mask].max()) if peak == "max" else None
    metrics = {"mse": mse(predicted, reference, volume.mask),
               "psnr": psnr(predicted, reference, volume.mask, data_range=data_range),
               "ssim": ssim(predicted, reference, volume.mask)}
    if volume.roi is not None:
        metrics.update(roi_errors(predicted, reference, volume.roi, volume.mask))
    return metrics


def stage_names(n_stages: int) -> list[str]:
    """Stage names of an ``n_stages`` model: ``['synthesis']``, or ``['sketcher', 'refiner', 'refiner-2', …]``."""
    if n_stages == 1:
        return ["synthesis"]
    return ["sketcher", "refiner", *(f"refiner-{k}" for k in range(2, n_stages))]


def _stage_weights(names: Sequence[str]) -> list[str]:
    """Weights files: ``model.pt`` for a one-stage model, ``<stage>.pt`` for each stage otherwise."""
    return [WEIGHTS_NAME] if len(names) == 1 else [f"{name}.pt" for name in names]


def add_sketches(volumes: Sequence[Volume], model: nn.Module, *, inputs: Sequence[str],
                 normalisation: Mapping[str, Normalisation], config: TrainingConfig,
                 device: torch.device | str = "cpu") -> list[Volume]:
    """The volumes with ``sketch`` set to ``model``'s prediction: the input of the next stage (thesis 003 §3.2.1).

    ``model`` takes the z-scored inputs (and the volume's own sketch, for a second refinement) and predicts the
    z-scored target; its prediction over the whole volume (sliding windows of ``config.window``) is set to 0 outside
    the brain, as every input channel is. torch's generator is seeded with ``config.seed`` first, so a Sketcher's
    noise z, and the sketches, are the same in a resumed run.
    """
    from msynth.models.inference import predict_volume

    torch.manual_seed(config.seed)
    sketched = []
    for volume in volumes:
        x = normalise(volume.take(inputs), volume.mask, inputs, normalisation, config.intensity_normalisation)
        if volume.sketch is not None:
            x = np.concatenate([x, volume.sketch])
        sketch = predict_volume(model, x, window=config.window, overlap=0.5, device=device,
                                seed=None) * volume.mask
        sketched.append(dataclasses.replace(volume, sketch=sketch.astype(np.float32)))
    return sketched


def train_stages(fit: Sequence[Volume], validation: Sequence[Volume], *, inputs: Sequence[str],
                 outputs: Sequence[str], normalisation: Mapping[str, Normalisation],
                 configs: Sequence[TrainingConfig], out_dir: Path, device: str,
                 progress: bool | None = False) -> list[TrainingResult]:
    """Train a model's stages one after the other (:func:`~msynth.models.training.loop.train_model` each).

    Stage ``k > 0`` trains from scratch on the volumes sketched by the fixed stage ``k − 1`` (:func:`add_sketches`).
    A one-stage model trains in ``out_dir``; stage ``name`` of a multi-stage one in ``out_dir/name``, each resumable.
    """
    names = stage_names(len(configs))
    results: list[TrainingResult] = []
    for k, (name, config) in enumerate(zip(names, configs)):
        if results:
            fit, validation = (add_sketches(volumes, results[-1].model, inputs=inputs, normalisation=normalisation,
                                            config=configs[k - 1], device=device) for volumes in (fit, validation))
        critic = "" if config.adversarial is None else f" against {config.adversarial.discriminator.architecture}"
        LOGGER.info("stage %s: %s, %s loss%s", name, config.architecture, config.loss, critic)
        results.append(train_model(fit, validation, inputs=inputs, outputs=outputs, normalisation=normalisation,
                                   config=config, out_dir=out_dir if len(configs) == 1 else out_dir / name,
                                   device=device, progress=progress))
    return results


def _chain(results: Sequence[TrainingResult]) -> nn.Module:
    """The predicting network of trained stages (:class:`~msynth.models.inference.StageChain` for several)."""
    from msynth.models.inference import StageChain

    return results[0].model if len(results) == 1 else StageChain([r.model for r in results]).eval()


def _examples_to_json(examples: Sequence[Example]) -> list[dict[str, Any]]:
    return [{"subject": e.subject, "session": e.session, "images": {k: str(v) for k, v in e.images.items()},
             "mask": str(e.mask), "roi_masks": {k: str(v) for k, v in e.roi_masks.items()}} for e in examples]


def _examples_from_json(items: Sequence[Mapping[str, Any]]) -> list[Example]:
    return [Example(i["subject"], i["session"], {k: Path(v) for k, v in i["images"].items()}, Path(i["mask"]),
                    {k: Path(v) for k, v in i["roi_masks"].items()}) for i in items]


def _data_key(examples: Sequence[Example]) -> str:
    """Hash of the examples' files, sizes and modification times."""
    files = sorted(str(p) for e in examples for p in (*e.images.values(), e.mask, *e.roi_masks.values()))
    stamp = [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
    return hashlib.sha256(json.dumps(stamp).encode()).hexdigest()


def _session_means(sessions: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Each metric's mean over the sessions that have it (not NaN: a control has no lesion); NaN when none has."""
    names = dict.fromkeys(name for metrics in sessions.values() for name in metrics)
    values = {name: [m[name] for m in sessions.values() if not math.isnan(m.get(name, math.nan))] for name in names}
    return {name: float(np.mean(found)) if found else math.nan for name, found in values.items()}


def run_fold(fold: int, test_subjects: list[str], examples: list[dict[str, Any]], inputs: list[str], target: str,
             config: dict[str, Any], voxel_size: float | None, volume_cache: str, out_dir: str, device: str,
             threads: int, data_key: str = "", refiners: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """Train on the subjects outside ``test_subjects`` and evaluate on them (one cross-validation fold).

    Plain-data arguments and result, so that pydra can hash, pickle and cache it (:func:`cross_validate`);
    ``data_key`` (sizes and modification times of the files) is there only to change that hash when the data
    change. ``refiners``: the configurations of the stages after the first (:func:`train_stages`).

    Returns
    -------
    dict
        ``fold``, ``n_train``, ``n_test``, ``mse``, ``psnr``, ``ssim`` and, with region labels,
        ``<region>_discrepancy`` and ``<region>_mae`` (means over the test sessions that have the region),
        ``epochs`` (kept epoch of each stage, a list) and ``sessions`` (per-session metrics).
    """
    torch.set_num_threads(max(1, threads))
    volumes = [load_volume(e, voxel_size=voxel_size, cache_dir=volume_cache)
               for e in _examples_from_json(examples)]
    test = [v for v in volumes if v.subject in set(test_subjects)]
    fit_all = [v for v in volumes if v.subject not in set(test_subjects)]
    configs = [TrainingConfig(**c) for c in (config, *refiners)]
    cfg = configs[0]
    fit, validation = split_validation(fit_all, seed=cfg.seed)
    in_channels = channels_of(inputs)
    (out_channel,) = channels_of([TARGETS[target].modality])
    stats = compute_normalisation(fit_all, (*in_channels, out_channel))
    results = train_stages(fit, validation, inputs=in_channels, outputs=[out_channel], normalisation=stats,
                           configs=configs, out_dir=Path(out_dir), device=device)
    model = _chain(results)
    sessions = {v.label: evaluate_volume(model, v, inputs=in_channels, output=out_channel, normalisation=stats,
                                         window=cfg.window, scope=cfg.intensity_normalisation,
                                         target_scope=cfg.target_scope, peak=PSNR_PEAK[target], device=device)
                for v in test}
    summary = _session_means(sessions)
    (Path(out_dir) / "metrics.json").write_text(json.dumps({"fold": fold, "sessions": sessions, **summary},
                                                           indent=2, allow_nan=True))
    LOGGER.info("fold %d: MSE %.4g, PSNR %.3g dB, SSIM %.3f on %d held-out session(s)", fold, summary["mse"],
                summary["psnr"], summary["ssim"], len(test))
    return {"fold": fold, "n_train": len({v.subject for v in fit_all}), "n_test": len(test_subjects),
            "epochs": [int(r.best_epoch) for r in results], "sessions": sessions, **summary}


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


def _pydra_folds(specs: list[dict[str, Any]], *, cache_dir: Path, n_procs: int, plugin: str,
                 sbatch_args: str = "") -> list[dict[str, Any]]:
    """Run :func:`run_fold` once per fold: one pydra task split over the folds' specifications.

    pydra caches each fold's result under ``cache_dir`` by the hash of its inputs, so a rerun skips finished folds;
    an unfinished fold resumes from its own ``checkpoint.pt`` (:func:`~msynth.models.training.workers.own_cache` removes the lock it left).
    ``plugin``: ``'cf'`` (``n_procs`` local processes) or ``'slurm'`` (a job per fold, with ``sbatch_args``).
    """
    import pydra

    task = pydra.mark.task(fold_task)(name="cv_fold", cache_dir=str(cache_dir))
    task.split("spec", spec=[json.dumps(spec) for spec in specs])
    if plugin == "cf":
        worker: Any = plugin
        options: dict[str, Any] = {"n_procs": n_procs}
    elif plugin == "slurm":
        # a requeued job appends to its log instead of truncating it (the killed run's lines stay)
        worker, options = slurm_fold_worker(), {"sbatch_args": f"--open-mode=append {sbatch_args}".strip()}
    else:
        worker, options = plugin, {}
    with own_cache(cache_dir):
        # pydra's local worker makes its process pool when the submitter is built, with the default start method:
        # forked folds can hang on the OpenMP pool of a process that has already run torch, so they start from a
        # forkserver (pydra 0.25 takes no multiprocessing context itself)
        with _default_start_method("forkserver"):
            submitter = pydra.Submitter(plugin=worker, **options)
        with submitter:
            submitter(task)
    results = [task.result(state_index=k) for k in range(len(specs))]  # None: no result (a cancelled job)
    failed = [k for k, r in enumerate(results) if r is None or r.errored]
    if failed:
        logs = f"; the fold jobs' logs are in {cache_dir}/*_scripts" if plugin == "slurm" else ""
        raise RuntimeError(f"cross-validation fold(s) {', '.join(map(str, failed))} did not finish (error reports, "
                           f"if any, are in the pydra cache {cache_dir}, _error.pklz{logs}); rerun the same command "
                           "with the same work folder to resume them from their checkpoints")
    return sorted((json.loads(r.output.out) for r in results), key=lambda r: r["fold"])


def _cross_validated_epochs(examples: Sequence[Example], subjects: Sequence[str], *, inputs: Sequence[str],
                            target: str, configs: Sequence[TrainingConfig], folds: int, voxel_size: float | None,
                            groups: Mapping[str, str] | None, cache_dir: Path, work_dir: Path, device: str,
                            n_procs: int, plugin: str, sbatch_args: str = "") -> tuple[list[FoldMetrics], list[int]]:
    """Each fold's held-out metrics, and for each stage the median of the folds' kept epochs (the final model's)."""
    import statistics

    config = configs[0]
    fold_subjects = assign_folds(subjects, folds, config.seed, groups)
    common = {"examples": _examples_to_json(examples), "inputs": list(inputs), "target": target,
              "config": config.to_dict(), "refiners": [c.to_dict() for c in configs[1:]],
              "voxel_size": voxel_size, "volume_cache": str(cache_dir),
              "device": device, "threads": max(1, torch.get_num_threads() // max(1, n_procs)),
              "data_key": _data_key(examples)}
    specs = [{**common, "fold": k, "test_subjects": fold_subjects[k],
              "out_dir": str(work_dir / "folds" / f"fold-{k}")} for k in range(folds)]
    LOGGER.info("%d-fold cross-validation over %d subjects (%s plugin, %d process(es))", folds, len(subjects),
                plugin, n_procs)
    results = _pydra_folds(specs, cache_dir=work_dir / "pydra", n_procs=n_procs, plugin=plugin,
                           sbatch_args=sbatch_args)
    cv = [FoldMetrics(fold=r["fold"], n_train=r["n_train"], n_test=r["n_test"], mse=r["mse"], psnr=r["psnr"],
                      ssim=r["ssim"], epochs=r["epochs"][0], stage_epochs=r["epochs"] if len(configs) > 1 else (),
                      roi_discrepancy={name: r[f"{name}_discrepancy"] for name in ROI_NAMES
                                       if f"{name}_discrepancy" in r},
                      roi_mae={name: r[f"{name}_mae"] for name in ROI_NAMES if f"{name}_mae" in r})
          for r in results]
    epochs = [max(1, round(statistics.median(r["epochs"][k] for r in results))) for k in range(len(configs))]
    LOGGER.info("cross-validation: MSE %.4g ± %.2g, SSIM %.3f; final model: %s epochs on all subjects",
                np.mean([f.mse for f in cv]), np.std([f.mse for f in cv]), np.mean([f.ssim for f in cv]),
                "+".join(map(str, epochs)))
    return cv, epochs


def cross_validate(
    examples: Sequence[Example],
    *,
    inputs: Sequence[str],
    target: str,
    config: TrainingConfig,
    model_dir: str | PathLike[str],
    refiners: Sequence[TrainingConfig] = (),
    groups: Mapping[str, str] | None = None,
    work_dir: str | PathLike[str] | None = None,
    folds: int = 5,
    voxel_size: float | None = None,
    device: str = "cpu",
    n_procs: int = 1,
    plugin: str = "cf",
    sbatch_args: str = "",
    name: str | None = None,
    data_source: str = "",
    data_license: str = "",
    data_citation: str = "",
    command: str = "",
    salt: str | None = None,
    progress: bool | None = None,
) -> ModelCard:
    """k-fold cross-validation over subjects, then the final model on all subjects, its card and weights.

    Each fold holds out about ``1/folds`` of the subjects, fits on the rest (an inner subject split gives the early-
    stopping validation set, :func:`split_validation`) with z-score statistics of those subjects only, and measures
    MSE, PSNR and SSIM inside the brain on the held-out sessions in the target's units (and the per-region errors
    of :func:`roi_errors` for volumes with region labels). Folds run as one pydra task split over folds
    (``plugin='cf'``: ``n_procs`` local processes; ``'slurm'``, … on a cluster). The final model is trained on every
    subject, each stage for the median of the folds' kept epochs of that stage (no data is held out, so there is
    nothing to stop on); with ``folds=0`` there is no cross-validation and the final model stops early on an inner
    split.

    Parameters
    ----------
    examples
        Sessions (:func:`msynth.models.data.find_examples`).
    inputs
        Input modality keys.
    target
        A key of :data:`~msynth.models.card.TARGETS` (``'FLAIR'``, ``'DVR'``).
    config
        :class:`~msynth.models.training.config.TrainingConfig` of the model's (first) stage; its loop settings
        (seed, patches, stopping, normalisation, augmentation) are the ones the card records.
    model_dir
        Output model folder: ``model_card.json`` and ``model.pt`` (one stage) or ``<stage>.pt`` per stage.
    refiners
        Configurations of the stages after the first: a Sketcher-Refiner model (:func:`train_stages`).
    groups
        Subject → group (:func:`msynth.models.data.subject_groups`): each group spread over the folds
        (:func:`assign_folds`); ``None``: subjects dealt regardless of group.
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
        pydra worker of the folds: ``'cf'`` (local processes) or ``'slurm'`` (a job per fold; a fold whose job is
        cancelled resumes from its checkpoint when the same call is made again with the same ``work_dir``).
    sbatch_args
        Extra ``sbatch`` arguments of the fold jobs (``plugin='slurm'``), e.g. ``'--time=4:00:00 --mem=8G'``.
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
    # absolute: pydra runs each fold in its own cache folder (a SLURM job maybe on another node)
    work_dir = (Path(work_dir) if work_dir is not None else model_dir.with_name(model_dir.name + "_work")).absolute()
    if not examples:
        raise ValueError("no training sessions: no session has every input, the target and a brain mask")
    subjects = subjects_of(examples)
    if folds:
        assign_folds(subjects, folds, config.seed)  # too few subjects: fail before reading any image
    elif len(subjects) < 2:
        LOGGER.warning("a single subject: the model cannot be validated on anyone else")
    cache_dir = work_dir / "cache"
    volumes = [load_volume(e, voxel_size=voxel_size, cache_dir=cache_dir) for e in examples]

    configs = [config, *refiners]
    cv: list[FoldMetrics] = []
    final_configs = configs
    if folds:
        cv, epochs = _cross_validated_epochs(examples, subjects, inputs=inputs, target=target, configs=configs,
                                             folds=folds, voxel_size=voxel_size, groups=groups, cache_dir=cache_dir,
                                             work_dir=work_dir, device=device, n_procs=n_procs, plugin=plugin,
                                             sbatch_args=sbatch_args)
        final_configs = [TrainingConfig(**{**c.to_dict(), "max_epochs": n}) for c, n in zip(configs, epochs)]
        fit, validation = volumes, []
    else:
        fit, validation = split_validation(volumes, seed=config.seed)
    in_channels = channels_of(inputs)
    out_channels = channels_of([TARGETS[target].modality])
    stats = compute_normalisation(volumes, (*in_channels, *out_channels))
    results = train_stages(fit, validation, inputs=in_channels, outputs=out_channels, normalisation=stats,
                           configs=final_configs, out_dir=work_dir / "final", device=device, progress=progress)
    names = stage_names(len(configs))
    weights = _stage_weights(names)
    stages = tuple(c.stage(name, in_channels=len(in_channels) + (k > 0) * len(out_channels),
                           out_channels=len(out_channels), weights=w)
                   for k, (name, c, w) in enumerate(zip(names, configs, weights)))
    stage_epochs = tuple(max(1, int(r.best_epoch)) for r in results)

    salt = salt if salt is not None else secrets.token_hex(16)
    card = ModelCard(
        name=name or f"{target.lower()}-synthesis_{'-'.join(inputs)}",
        target=target,
        inputs=tuple(inputs),
        voxel_size_mm=voxel_size,
        normalisation=stats,
        intensity_normalisation=config.intensity_normalisation,
        stages=stages,
        training=TrainingRecord(
            subjects=tuple(sorted(hash_subject(s, salt) for s in subjects)),
            salt_fingerprint=hashlib.sha256(salt.encode()).hexdigest(),
            n_sessions=len(volumes),
            data_source=data_source, data_license=data_license, data_citation=data_citation,
            command=command or " ".join(sys.argv),
            seed=config.seed,
            epochs=stage_epochs[0],
            patch_size=config.patch_size,
            patch_sampling=config.patch_sampling,
            stage_epochs=stage_epochs if len(stages) > 1 else (),
            early_stopping={"strip_length": config.strip_length, "strips": config.strips},
            augmentation=config.augmentation,
            cv=tuple(cv),
        ),
    )
    model_dir.mkdir(parents=True, exist_ok=True)
    for stage, result in zip(stages, results):
        torch.save(result.model.state_dict(), model_dir / stage.weights)
    write_card(card, model_dir)
    LOGGER.info("model written to %s", model_dir)
    return card
