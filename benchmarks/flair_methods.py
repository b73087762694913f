"""FLAIR synthesis: the method, input and width tables of paper 001 on a phantom cohort, and the real-data model.

Usage (the runs behind ``benchmarks/results/flair_methods*``; each run merges its rows into the TSVs and rewrites
the Markdown from all of them). The methods table, 2026-11-30, after
``benchmarks/train_shipped_models.py --scratch /tmp/shipped2 --stage phantom train``: all three methods in the
afternoon, the FCN row again in the evening once ``flair-fcn-phantom`` had trained to <= 90 epochs (its rows
replace the afternoon's)::

    B="benchmarks/flair_methods.py --derivatives /tmp/shipped2/phantom/derivatives --work /tmp/shipped2/bench \
        --folds 5 --voxel-size 2 --parts methods --hidden-layers 2"
    .venv/bin/python $B --methods FCN RF-60 MLP --fcn-folds /tmp/shipped2/train-work/flair-fcn-phantom/folds
    .venv/bin/python $B --methods FCN --fcn-folds /tmp/shipped2/train-work/flair-fcn-phantom/folds --epochs 90

(``--hidden-layers 2``: the FCN of the models of the time, before paper 001's 3 hidden layers became the default.)
The widths and input-removal tables, 2026-11-30 morning, on the former 4 mm phantom (8 patients, 2-D FLAIR;
``--patches-per-session 4 --no-random-flips``, the settings of the models of the time)::

    B="benchmarks/flair_methods.py --derivatives /tmp/shipped/phantom/derivatives --work /tmp/shipped/bench --folds 5 \
        --hidden-layers 2"
    .venv/bin/python $B --parts removal --part-folds 0
    .venv/bin/python $B --parts widths --part-folds 0

The real-data table, after ``benchmarks/train_shipped_models.py --scratch /work/bench --stage real train --models
flair-fcn-real-t1t2`` (every real scan of ../shared/data/open_ms_data through the participant level, then the
model's 5 leave-one-patient-out folds); it needs no phantom::

    .venv/bin/python benchmarks/flair_methods.py --parts --work /work/bench/bench \
        --real-derivatives /work/bench/real/derivatives --real-folds /work/bench/train-work/flair-fcn-real-t1t2/folds

Without ``--part-folds`` every part runs all folds; ``--parts methods widths removal`` (the default) runs it all.

The derivatives are msynth participant-level outputs (``benchmarks/train_shipped_models.py --stage phantom``
makes them: a 2 mm phantom, 16 patients, session 01; ``--voxel-size 2`` loads them on the grid the shipped models
train on). Folds are over subjects, assigned exactly as
``msynth-train`` does (:func:`msynth.models.training.assign_folds`, seed 42), so ``--fcn-folds`` can point at the
fold checkpoints of the shipped ``flair-fcn-phantom`` (trained by ``msynth-train … --folds 5``) and the FCN row
reuses them instead of training again; the FCN training time is then measured by retraining fold 0 once.

Every method sees the same data: inputs and FLAIR z-scored per image inside the brain (msynth's default
``intensity_normalisation='image'``); each prediction is brought back to FLAIR units with the acquired FLAIR's own
brain mean and SD (as :func:`msynth.models.training.evaluate_volume` does with ``scope='image'``: a session's
scanner gain cannot be predicted), clipped at 0 and set to 0 outside the brain. Metrics inside the brain: MSE and
SSIM (:mod:`msynth.analysis.metrics`); Ratio 1 = lesion / NAWM and Ratio 2 = lesion / surrounding NAWM mean
intensity (paper 001 eq. 4) from the participant level's ``label-lesion``, ``label-NAWM`` and
``label-surroundingNAWM`` masks, averaged over the held-out patients (controls have no lesion). "acquired" is the
acquired FLAIR. Baselines (:mod:`msynth.models.baselines`): RF-60 (60 trees, 3×3×3 patches), MLP (2×100,
voxel-wise), modality propagation (5 nearest 3×3×3 patches); each fits on a seeded subsample of
``--max-voxels`` training voxels (memory and time on this 2-core machine).

Wall time and peak memory: training per fold and inference per volume, measured in this process (peak resident
set size sampled every 10 ms, minus the resident size before the step: the memory the step added).

Outputs in ``--out-dir`` (default ``benchmarks/results``): ``flair_methods_<part>.tsv`` (one row per method/fold
and the mean), ``flair_methods.md`` (summary tables, machine, settings; the tables of parts not rerun are read back from
their TSVs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import psutil
import torch

from msynth.analysis.metrics import mse, ratio1, ratio2, ssim
from msynth.models.data import Volume, array_statistics, compute_normalisation, find_examples, load_volume
from msynth.models.inference import predict_volume
from msynth.models.training import TrainingConfig, assign_folds, split_validation, train_model

ROOT = Path(__file__).resolve().parents[1]
ALL_INPUTS = ["T1w", "T2w", "PDw", "T1SE", "DIR"]
SEED = 42


# ----------------------------------------------------------------------------------------------------------------
# measurement
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Usage:
    """Wall time (s) and peak added resident memory (MB) of a block."""

    wall_s: float = 0.0
    peak_mb: float = 0.0


@contextmanager
def measure(usage: Usage):
    """Fill ``usage`` with the wall time and the peak RSS above the starting RSS of the block."""
    process = psutil.Process()
    start_rss = process.memory_info().rss
    peak = [start_rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.01):
            peak[0] = max(peak[0], process.memory_info().rss)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    try:
        yield usage
    finally:
        usage.wall_s = time.perf_counter() - start
        stop.set()
        thread.join()
        peak[0] = max(peak[0], process.memory_info().rss)
        usage.peak_mb = (peak[0] - start_rss) / 2**20


# ----------------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Session:
    """One session: its volume (all inputs and FLAIR) and its region masks on the same grid."""

    volume: Volume
    lesion: np.ndarray | None
    nawm: np.ndarray | None
    surrounding: np.ndarray | None
    stats: dict = field(default_factory=dict)

    @property
    def subject(self) -> str:
        return self.volume.subject

    def z(self, channels: Sequence[str]) -> np.ndarray:
        """The named channels z-scored by their own brain statistics, 0 outside the brain."""
        data = self.volume.take(channels)
        out = np.zeros_like(data)
        for k, c in enumerate(channels):
            s = self.stats[c]
            out[k][self.volume.mask] = (data[k][self.volume.mask] - s.mean) / s.std
        return out


def _region(anat: Path, stem: str, label: str, shape: tuple[int, ...]) -> np.ndarray | None:
    path = anat / f"{stem}_space-T1w_label-{label}_mask.nii.gz"
    if not path.is_file():
        return None
    data = np.asarray(nib.load(path).dataobj) > 0
    return data if data.shape == shape else None


def load_sessions(derivatives: Path, inputs: Sequence[str], voxel_size: float | None, cache: Path) -> list[Session]:
    """Every session of ``derivatives`` with the inputs, a FLAIR and a brain mask, with its region masks."""
    sessions = []
    for example in find_examples(derivatives, inputs, "FLAIR"):
        volume = load_volume(example, voxel_size=voxel_size, cache_dir=cache)
        stem = example.mask.name.split("_space-")[0]
        anat = example.mask.parent
        regions = [_region(anat, stem, label, volume.mask.shape) if voxel_size is None else
                   _resampled_region(anat, stem, label, example.mask, voxel_size)
                   for label in ("lesion", "NAWM", "surroundingNAWM")]
        session = Session(volume, *regions)
        session.stats = array_statistics(volume.take(volume.channels), volume.mask, volume.channels)
        sessions.append(session)
    return sessions


def _resampled_region(anat: Path, stem: str, label: str, mask_file: Path, voxel_size: float) -> np.ndarray | None:
    from msynth.preprocessing.resample import resample_to_grid, target_grid

    path = anat / f"{stem}_space-T1w_label-{label}_mask.nii.gz"
    if not path.is_file():
        return None
    grid = target_grid(nib.load(mask_file), voxel_size)
    return np.asarray(resample_to_grid(nib.load(path), grid, interpolation="mask").dataobj) > 0


# ----------------------------------------------------------------------------------------------------------------
# methods
# ----------------------------------------------------------------------------------------------------------------
def _to_flair(z: np.ndarray, session: Session) -> np.ndarray:
    """A z-scored prediction in the acquired FLAIR's units, clipped at 0, 0 outside the brain."""
    s = session.stats["FLAIR"]
    return np.clip(z * s.std + s.mean, 0, None) * session.volume.mask


def _network_method(config: TrainingConfig, inputs: Sequence[str], work: Path) -> Callable:
    """fit(train sessions) → predict(session) for a network trained by :func:`train_model`."""

    def fit(train: list[Session]) -> Callable[[Session], np.ndarray]:
        volumes = [s.volume for s in train]
        fit_volumes, validation = split_validation(volumes, seed=config.seed)
        stats = compute_normalisation(volumes, (*inputs, "FLAIR"))
        result = train_model(fit_volumes, validation, inputs=inputs, outputs=["FLAIR"], normalisation=stats,
                             config=config, out_dir=work, device="cpu", progress=False)
        return _network_predictor(result.model, inputs, config.window)

    return fit


def _network_predictor(model: torch.nn.Module, inputs: Sequence[str], window: int) -> Callable:
    def predict(session: Session) -> np.ndarray:
        z = predict_volume(model, session.z(inputs), window=window, overlap=0.5, device="cpu")[0]
        return _to_flair(z, session)

    return predict


def _baseline_method(factory: Callable, inputs: Sequence[str]) -> Callable:
    def fit(train: list[Session]) -> Callable[[Session], np.ndarray]:
        model = factory()
        model.fit([s.z(inputs) for s in train], [s.z(["FLAIR"])[0] for s in train],
                  [s.volume.mask for s in train])

        def predict(session: Session) -> np.ndarray:
            return _to_flair(model.predict(session.z(inputs), session.volume.mask), session)

        return predict

    return fit


def _fold_checkpoint_method(folds_dir: Path, fold: int, config: TrainingConfig, inputs: Sequence[str]) -> Callable:
    """A fold network already trained by ``msynth-train`` (its ``checkpoint.pt`` best weights)."""
    from msynth.models.networks import build_network

    def fit(train: list[Session]) -> Callable[[Session], np.ndarray]:
        state = torch.load(folds_dir / f"fold-{fold}" / "checkpoint.pt", map_location="cpu", weights_only=True)
        model = build_network(config.architecture, {**dict(config.arguments), "in_channels": len(inputs),
                                                    "out_channels": 1})
        # the kept weights: the best epoch's, or the last epoch's when the fold had no validation set
        model.load_state_dict(state["best_model"] if state.get("best_model") else state["step"]["network"])
        return _network_predictor(model.eval(), inputs, config.window)

    return fit


def evaluate(prediction: np.ndarray, session: Session) -> dict[str, float]:
    """MSE, SSIM, Ratio 1 and 2 of a prediction (and the acquired FLAIR's ratios)."""
    reference = session.volume.take(["FLAIR"])[0] * session.volume.mask
    row = {"subject": session.subject, "mse": mse(prediction, reference, session.volume.mask),
           "ssim": ssim(prediction, reference, session.volume.mask)}
    for name, region, function in (("ratio1", session.nawm, ratio1), ("ratio2", session.surrounding, ratio2)):
        ok = session.lesion is not None and region is not None and session.lesion.any() and region.any()
        row[name] = function(prediction, session.lesion, region) if ok else float("nan")
        row[f"{name}_acquired"] = function(reference, session.lesion, region) if ok else float("nan")
    return row


def cross_validate_method(name: str, fit: Callable, sessions: list[Session], folds: list[list[str]],
                          only_folds: Sequence[int] | None = None) -> pd.DataFrame:
    """Per held-out session rows: method, fold, metrics, training and inference time and memory."""
    rows = []
    for k, test_subjects in enumerate(folds):
        if only_folds is not None and k not in only_folds:
            continue
        train = [s for s in sessions if s.subject not in test_subjects]
        test = [s for s in sessions if s.subject in test_subjects]
        trained = Usage()
        with measure(trained):
            predictor = fit(train)
        for session in test:
            inferred = Usage()
            with measure(inferred):
                prediction = predictor(session)
            rows.append({"method": name, "fold": k, **evaluate(prediction, session),
                         "train_wall_s": trained.wall_s, "train_peak_mb": trained.peak_mb,
                         "infer_wall_s": inferred.wall_s, "infer_peak_mb": inferred.peak_mb})
        print(f"{name} fold {k}: trained in {trained.wall_s:.0f} s; "
              f"SSIM {np.mean([r['ssim'] for r in rows if r['fold'] == k]):.3f}", flush=True)
    return pd.DataFrame(rows)


def real_data_part(derivatives: Path, model_dir: Path, folds_dir: Path, voxel_size: float, work: Path,
                   max_voxels: int) -> list[pd.DataFrame]:
    """``flair-fcn-real-t1t2`` against RF-60 (60 trees, 3x3x3 patches) on the same leave-one-patient-out folds.

    The FCN rows reuse ``msynth-train``'s fold checkpoints in ``folds_dir`` (``<work>/folds`` of its run; the
    network is the one of ``model_dir``'s card). The folds are over subjects, assigned as msynth-train does, so
    fold ``k`` holds out the same patient here; RF-60 is fitted here on the same training patients' T1w and T2w.
    """
    from msynth.models.baselines import RandomForestSynthesizer
    from msynth.models.card import read_card

    inputs = ["T1w", "T2w"]
    network = read_card(model_dir).stages[0].network
    config = TrainingConfig(architecture=network.architecture, arguments={
        k: v for k, v in network.arguments.items() if k not in ("in_channels", "out_channels")})
    sessions = load_sessions(derivatives, inputs, voxel_size, work / "real-cache")
    subjects = sorted({s.subject for s in sessions})
    folds = assign_folds(subjects, len(subjects), SEED)
    frames = [cross_validate_method(model_dir.name, _fold_checkpoint_method(folds_dir, k, config, inputs), sessions,
                                    folds, only_folds=[k]) for k in range(len(folds))]
    for frame in frames:  # trained by msynth-train, not here
        frame["train_wall_s"] = float("nan")
        frame["train_peak_mb"] = float("nan")
    frames.append(cross_validate_method("RF-60", _baseline_method(lambda: RandomForestSynthesizer(
        n_estimators=60, max_training_voxels=max_voxels, random_state=SEED, n_jobs=2), inputs), sessions, folds))
    return frames


# ----------------------------------------------------------------------------------------------------------------
# summaries
# ----------------------------------------------------------------------------------------------------------------
def summarise(rows: pd.DataFrame, by: str = "method") -> pd.DataFrame:
    """Mean (SD over folds of the fold means) of each metric per method; times are means per fold / volume."""
    metrics = ["mse", "ssim", "ratio1", "ratio2"]
    fold_means = rows.groupby([by, "fold"], sort=False)[metrics].mean()
    out = []
    for method, table in fold_means.groupby(level=0, sort=False):
        sub = rows[rows[by] == method]
        per_fold = sub.groupby("fold")[["train_wall_s", "train_peak_mb"]].first()
        record = {by: method, "folds": len(table)}
        for m in metrics:
            record[m] = table[m].mean()
            record[f"{m}_sd"] = table[m].std(ddof=1) if len(table) > 1 else float("nan")
        record["ratio1_acquired"] = sub["ratio1_acquired"].mean()
        record["ratio2_acquired"] = sub["ratio2_acquired"].mean()
        # the share of the acquired lesion contrast (Ratio 1 - 1) the synthesis keeps, median over held-out sessions
        record["contrast_kept"] = ((sub["ratio1"] - 1) / (sub["ratio1_acquired"] - 1)).median()
        record["train_wall_s"] = per_fold["train_wall_s"].mean()
        record["train_peak_mb"] = per_fold["train_peak_mb"].max()
        record["infer_wall_s"] = sub["infer_wall_s"].mean()
        record["infer_peak_mb"] = sub["infer_peak_mb"].max()
        out.append(record)
    return pd.DataFrame(out)


def markdown(table: pd.DataFrame, by: str) -> str:
    """A Markdown table of :func:`summarise`."""
    def cell(value: float, sd: float | None = None, significant: int | None = None) -> str:
        """3 decimals, or ``significant`` digits (MSE: its scale depends on the data)."""
        def number(x: float) -> str:
            return f"{x:.{significant}g}" if significant else f"{x:.3f}"

        if value is None or not np.isfinite(value):
            return "n/a"
        return number(value) + (f" ({number(sd)})" if sd is not None and np.isfinite(sd) else "")

    lines = [f"| {by} | folds | MSE (SD) | SSIM (SD) | Ratio 1 (SD) | Ratio 2 (SD) | acquired Ratio 1 / 2 | "
             "contrast kept | train s / fold | train peak MB | infer s / volume | infer peak MB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for _, r in table.iterrows():
        lines.append(
            f"| {r[by]} | {r['folds']} | {cell(r['mse'], r['mse_sd'], significant=4)} | "
            f"{cell(r['ssim'], r['ssim_sd'])} | "
            f"{cell(r['ratio1'], r['ratio1_sd'])} | {cell(r['ratio2'], r['ratio2_sd'])} | "
            f"{cell(r['ratio1_acquired'])} / {cell(r['ratio2_acquired'])} | {cell(r['contrast_kept'])} | "
            f"{_number(r['train_wall_s'], 0)} | "
            f"{_number(r['train_peak_mb'], 0)} | {_number(r['infer_wall_s'], 2)} | {_number(r['infer_peak_mb'], 0)} |")
    return "\n".join(lines)


FINDINGS = "## Findings (written by hand after the run"
NOTES = """\
How to read these tables (the module docstring has the details):

* Data: msynth participant-level outputs of the phantom of `benchmarks/train_shipped_models.py --stage phantom`
  (16 patients at 2 mm with a 3-D FLAIR, session 01), on a 2 mm grid (`--voxel-size 2`). FCN with 2 hidden layers
  of 32 filters (the shipped models' network; paper 001 has 3, msynth's default since issue 18), Adam 1e-3,
  <= 90 epochs (`--epochs 90`; the width and removal rows: <= 30), 32^3 patches (8 per session and epoch), random
  flips: the settings of the shipped `flair-fcn-phantom`, chosen so that everything fits on 2 CPU cores (paper 001:
  1 mm-ish volumes, 64 filters, SGD 5e-4). Folds over subjects as `msynth-train` assigns them (seed 42). The
  widths and input-removal tables are older: the 4 mm, 8-patient phantom with a 2-D FLAIR (see the findings).
* Every method gets image-wise z-scored inputs and target; predictions are de-normalised with the acquired FLAIR's
  brain mean and SD, so MSE and SSIM measure contrast and structure, not the unpredictable scanner gain. Metrics
  inside the brain mask; Ratio 1/2 = mean in lesions / mean in NAWM / surrounding NAWM (5-voxel dilation), averaged
  over held-out patients; "acquired" is the acquired FLAIR's ratio on the same sessions.
* FCN: the 5 cross-validation folds of the shipped `flair-fcn-phantom` (msynth-train's fold checkpoints, reused);
  its training time is one retraining of fold 0 here. U-Net: msynth's `UNet3D` (16 base features, 3 levels), same
  training. RF-60 / MLP / MP: `msynth.models.baselines` on a 20 000-voxel seeded subsample of the training voxels.
* Real scans: the leave-one-patient-out folds of `flair-fcn-real-t1t2` (msynth-train's fold checkpoints) against
  RF-60 fitted here on the same training patients' T1w and T2w, on the model's 2 mm grid; a row's means are over
  patients (one fold each). Its lesion masks are the consensus masks (MNI patients) and the automatic ones (raw
  patients). "contrast kept": median over held-out sessions of (Ratio 1 - 1) / (acquired Ratio 1 - 1).
* `folds` says how many of the 5 folds a row ran: where it is below 5 (time on this machine), the row is a partial
  cross-validation and must be compared only with rows over the same folds (the widths and removal tables repeat the
  FCN-32 / all-inputs row over their folds).
* Wall time and peak memory: per fold (training) and per volume (inference), in this process; peak memory is the
  largest resident set size above the one before the step. The machine was shared (see the load average): times
  are upper bounds of what the code needs.
"""


def _number(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if np.isfinite(value) else "n/a"


def _gemm_gflops() -> float:
    """Measured float32 GEMM throughput of this machine (torch, its default threads), GFLOP/s."""
    a = torch.randn(1024, 1024)
    b = torch.randn(1024, 1024)
    a @ b
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    return 10 * 2 * 1024**3 / (time.perf_counter() - start) / 1e9


# ----------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--derivatives", type=Path, default=None,
                        help="phantom participant-level outputs (needed by the methods, widths and removal parts)")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (caches, checkpoints)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--voxel-size", type=float, default=None,
                        help="isotropic grid of the phantom part, as msynth-train --voxel-size (default: space-T1w)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--parts", nargs="*", default=["methods", "widths", "removal"],
                        choices=("methods", "widths", "removal"))
    parser.add_argument("--methods", nargs="+", default=["FCN", "U-Net", "RF-60", "MLP", "MP"])
    parser.add_argument("--part-folds", type=int, nargs="+", default=None,
                        help="run only these folds of the U-Net, widths and removal (time)")
    parser.add_argument("--fcn-folds", type=Path, default=None,
                        help="fold folders of msynth-train's flair-fcn-phantom work dir, to reuse")
    parser.add_argument("--features", type=int, default=32, help="FCN filters F")
    parser.add_argument("--hidden-layers", type=int, default=3, help="FCN hidden layers L (paper 001: 3)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--patches-per-session", type=int, default=8)
    parser.add_argument("--random-flips", action=argparse.BooleanOptionalAction, default=True,
                        help="mirror training patches (as the shipped phantom models; default: on)")
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-voxels", type=int, default=20000)
    parser.add_argument("--real-derivatives", type=Path, default=None,
                        help="participant-level outputs of every real scan (train_shipped_models.py --stage real)")
    parser.add_argument("--real-model", type=Path,
                        default=ROOT / "msynth" / "models" / "weights" / "flair-fcn-real-t1t2",
                        help="model folder of the real-data model (its card names the network)")
    parser.add_argument("--real-folds", type=Path, default=None,
                        help="fold folders of msynth-train's work dir for that model (<work>/folds)")
    parser.add_argument("--real-voxel-size", type=float, default=2.0)
    args = parser.parse_args(argv)
    if args.parts and args.derivatives is None:
        parser.error(f"--parts {' '.join(args.parts)} need --derivatives (phantom participant-level outputs)")
    if args.real_derivatives is not None and args.real_folds is None:
        parser.error("--real-derivatives needs --real-folds (the fold checkpoints of the real-data model)")

    from msynth.models.baselines import MLPSynthesizer, ModalityPropagation, RandomForestSynthesizer

    args.out_dir.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    phantom = "Phantom: not loaded by the last run (the phantom parts' rows are from earlier runs)."
    if args.parts:
        sessions = load_sessions(args.derivatives, ALL_INPUTS, args.voxel_size, args.work / "cache")
        subjects = sorted({s.subject for s in sessions})
        folds = assign_folds(subjects, args.folds, SEED)
        phantom = (f"Phantom: {len(subjects)} subjects (session 01), grid {sessions[0].volume.mask.shape}, "
                   f"{args.folds}-fold CV over subjects.")

    def config(**changes) -> TrainingConfig:
        base = {"architecture": "fcn", "arguments": {"filters": args.features, "hidden_layers": args.hidden_layers},
                "optimizer": args.optimizer, "lr": args.lr, "max_epochs": args.epochs, "patch_size": args.patch_size,
                "patches_per_session": args.patches_per_session, "random_flips": args.random_flips, "seed": SEED}
        return TrainingConfig(**{**base, **changes})

    results: dict[str, pd.DataFrame] = {}
    existing = {}
    for part in ("methods", "widths", "removal", "real"):
        path = args.out_dir / f"flair_methods_{part}.tsv"
        if path.is_file():
            existing[part] = pd.read_csv(path, sep="\t")

    def save(part: str, frame: pd.DataFrame) -> None:
        """Write a part's rows, keeping the rows of methods this run did not redo."""
        path = args.out_dir / f"flair_methods_{part}.tsv"
        if path.is_file():  # read now, not at start: another run may have written meanwhile
            kept = pd.read_csv(path, sep="\t")
            frame = pd.concat([kept[~kept["method"].isin(frame["method"].unique())], frame], ignore_index=True)
        existing.pop(part, None)
        results[part] = frame
        frame.to_csv(args.out_dir / f"flair_methods_{part}.tsv", sep="\t", index=False, na_rep="n/a")

    if "methods" in args.parts:
        frames = []
        for method in args.methods:
            if method == "FCN" and args.fcn_folds is not None:
                for k in range(args.folds):
                    frames.append(cross_validate_method(
                        "FCN", _fold_checkpoint_method(args.fcn_folds, k, config(), ALL_INPUTS), sessions, folds,
                        only_folds=[k]))
                # the reused folds were trained by msynth-train: time one fold's training here
                timing = Usage()
                with measure(timing):
                    _network_method(config(), ALL_INPUTS, args.work / "fcn-timing")(
                        [s for s in sessions if s.subject not in folds[0]])
                for f in frames[-args.folds:]:
                    f["train_wall_s"] = timing.wall_s
                    f["train_peak_mb"] = timing.peak_mb
                continue
            fit = {
                "FCN": lambda: _network_method(config(), ALL_INPUTS, args.work / "fcn"),
                "U-Net": lambda: _network_method(config(architecture="unet", arguments={"features": 16, "levels": 3}),
                                                 ALL_INPUTS, args.work / "unet"),
                "RF-60": lambda: _baseline_method(lambda: RandomForestSynthesizer(
                    n_estimators=60, max_training_voxels=args.max_voxels, random_state=SEED, n_jobs=2), ALL_INPUTS),
                "MLP": lambda: _baseline_method(lambda: MLPSynthesizer(
                    max_training_voxels=args.max_voxels, random_state=SEED), ALL_INPUTS),
                "MP": lambda: _baseline_method(lambda: ModalityPropagation(
                    max_training_voxels=args.max_voxels, random_state=SEED), ALL_INPUTS),
            }[method]()
            if method in ("FCN", "U-Net"):
                for k in (args.part_folds or range(args.folds)) if method == "U-Net" else range(args.folds):
                    work = args.work / f"{method.lower()}-fold-{k}"
                    base = config() if method == "FCN" else config(architecture="unet",
                                                                   arguments={"features": 16, "levels": 3})
                    frames.append(cross_validate_method(method, _network_method(base, ALL_INPUTS, work), sessions,
                                                        folds, only_folds=[k]))
            else:
                frames.append(cross_validate_method(method, fit, sessions, folds))
        save("methods", pd.concat(frames, ignore_index=True))

    if "widths" in args.parts:
        frames = []
        for width in (32, 64, 96):
            methods = results.get("methods", existing.get("methods"))
            if width == args.features and methods is not None and (methods["method"] == "FCN").any():
                frame = methods[methods["method"] == "FCN"].copy()
                frame = frame[frame["fold"].isin(args.part_folds)] if args.part_folds else frame
            else:
                cfg = config(arguments={"filters": width, "hidden_layers": args.hidden_layers})
                frame = pd.concat([cross_validate_method(
                    f"FCN-{width}", _network_method(cfg, ALL_INPUTS, args.work / f"width{width}-fold-{k}"),
                    sessions, folds, only_folds=[k]) for k in (args.part_folds or range(args.folds))])
            frame["method"] = f"F1=F2=F3={width}"
            frames.append(frame)
            save("widths", pd.concat(frames, ignore_index=True))

    if "removal" in args.parts:
        frames = []
        methods = results.get("methods", existing.get("methods"))
        if methods is not None and (methods["method"] == "FCN").any():  # the reference: all five inputs
            frame = methods[methods["method"] == "FCN"].copy()
            frame = frame[frame["fold"].isin(args.part_folds)] if args.part_folds else frame
            frame["method"] = "none (all five)"
            frames.append(frame)
        for removed in ALL_INPUTS:
            inputs = [c for c in ALL_INPUTS if c != removed]
            frame = pd.concat([cross_validate_method(
                f"without {removed}", _network_method(config(), inputs, args.work / f"without{removed}-fold-{k}"),
                sessions, folds, only_folds=[k]) for k in (args.part_folds or range(args.folds))])
            frames.append(frame)
            save("removal", pd.concat(frames, ignore_index=True))  # after each input: a long run keeps its rows

    if args.real_derivatives is not None:
        frames = real_data_part(args.real_derivatives, args.real_model, args.real_folds, args.real_voxel_size,
                                args.work, args.max_voxels)
        save("real", pd.concat(frames, ignore_index=True))

    # Markdown summary of everything measured so far (this run and earlier runs' TSVs)
    for part in ("methods", "widths", "removal", "real"):
        path = args.out_dir / f"flair_methods_{part}.tsv"
        if path.is_file():
            results[part] = pd.read_csv(path, sep="\t")
    meta = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "cpu": platform.processor() or
            platform.machine(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gemm_gflops": round(_gemm_gflops(), 1), "load_average": os.getloadavg(),
            "python": sys.version.split()[0], "torch": torch.__version__,
            "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])}
    titles = {"methods": "Methods (paper 001 Tables 2 and 3)",
              "widths": "Widths F1=F2=F3 (paper 001 Table 1)",
              "removal": "Input removal (paper 001 Table 4a)",
              "real": "Real scans: flair-fcn-real-t1t2 against RF-60, leave one patient out"}
    text = ["# FLAIR synthesis benchmark (`benchmarks/flair_methods.py`)\n", NOTES,
            f"{phantom} Last run: {json.dumps(meta)}\n"]
    for part in ("methods", "widths", "removal", "real"):
        if part in results:
            text += [f"## {titles[part]}\n", markdown(summarise(results[part]), "method"), ""]
    previous = args.out_dir / "flair_methods.md"
    if previous.is_file() and FINDINGS in previous.read_text():  # keep the hand-written findings section
        text += ["", FINDINGS + previous.read_text().split(FINDINGS, 1)[1].rstrip("\n")]
    previous.write_text("\n".join(text) + "\n")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
