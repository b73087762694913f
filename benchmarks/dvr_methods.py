"""Every DVR-synthesis method of thesis 003 on a phantom cohort, under the same cross-validation folds.

Usage (one core; the real configuration takes hours per method, see the timings it writes)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dvr_methods.py --scratch /tmp/dvrm \\
        --derivatives OUTPUT_DIR --truth TRUTH_DIR [--methods M ...] [--epochs N] [--voxel-size MM] \\
        [--patch-size N] [--patches-per-session N] [--features N] [--folds K] [--device cpu|cuda|auto] \\
        [--results DIR] [--stage STAGE ...]

Stages (default: all, in this order; a stage whose output exists in ``--scratch`` is not redone):

``cohort``
    Only without ``--derivatives``: the 2 mm phantom cohort of ``benchmarks/group_phantom.py`` (10 controls,
    18 patients, two sessions, seed 2027) and its participant level (about an hour on both cores), in
    ``SCRATCH/cohort``; the truth is ``SCRATCH/cohort/bids-truth``.
``train``
    ``msynth-train dvr`` once per method with the same ``--seed``, data and ``--folds`` (hence the same folds,
    :func:`msynth.models.training.crossval.assign_folds`), into ``SCRATCH/models/<method>`` and
    ``SCRATCH/train-work/<method>``; the wall time and the peak resident memory of its process tree are kept in
    ``SCRATCH/timings/<method>.json``.
``evaluate``
    Per method and fold: the fold's test subjects are read from ``fold-k/metrics.json`` and checked against the
    expected assignment (every method must have the same folds); the fold's model is rebuilt from the card's stage
    networks and each stage's kept weights (``best_model`` of the fold's ``checkpoint.pt``), with the fold's
    z-score statistics (:func:`msynth.models.data.compute_normalisation` of its training subjects, as
    :func:`~msynth.models.training.crossval.run_fold` computes them); each held-out baseline session is predicted
    with :func:`~msynth.models.training.crossval.predict_session` (timed) and scored. Also the noise ceiling: the
    acquired Logan DVR scored against the phantom's noise-free DVR. Per-session tables in ``SCRATCH/evaluation``.
``report``
    One row per method × fold (and a ``noise-ceiling`` row per fold) → ``RESULTS/dvr_methods.tsv``, and the
    per-method summary beside the thesis's numbers → ``RESULTS/dvr_methods.md``.

What is measured, and on which grid:

* MSE, PSNR (peak: the reference's brain maximum, thesis eq. 3.9) and the per-ROI absolute discrepancy of the
  session's mean DVR (:func:`~msynth.models.training.crossval.roi_errors`) inside the brain on the training grid,
  where ``msynth-train`` measures them; the reference is the acquired DVR (the noise ceiling: the true DVR). The
  lesion and NAWM regions are the participant level's masks; "control WM" is the NAWM label of a control (WM
  probability >= 0.5). ``mse_truth``/``psnr_truth`` score every map against the true DVR.
* Bland-Altman (:func:`msynth.analysis.statistics.bland_altman`) of the per-session mean DVR per ROI (lesion and
  NAWM of the fold's held-out patients, WM of its held-out controls), synthetic − acquired (noise ceiling:
  acquired − truth), on the training grid.
* Demyelinated lesion voxels (:mod:`msynth.analysis.myelin`) on each session's T1w grid, where the distance to CSF
  and the WM probability are defined: the prediction is resampled back onto the T1w grid (trilinear,
  :func:`msynth.preprocessing.resample.resample_to_grid`). A synthetic map is classified with the control reference
  of the same fold's model, built from that fold's held-out controls (as the group level calibrates each DVR source
  with its own controls); the acquired map with the reference of every control's acquired baseline DVR (the group
  level's). Dice (:func:`msynth.analysis.myelin.mask_agreement`) against the acquired map's mask and against the
  phantom's truth mask (its noise-free DVR classified with its own control reference on its native grid), median
  over the fold's held-out patients.
* Training seconds per epoch: the ``msynth-train`` wall time (loading, cross-validation folds with their
  per-epoch validation, and the final model) over every epoch it trained (every stage of every fold and of the
  final model, from the ``history.tsv`` files). Peak training memory: the resident memory of the process tree
  (``msynth-train`` and its fold workers), sampled every half second (``RUSAGE_CHILDREN`` cannot tell methods
  apart: it is the largest child waited for so far). Inference: seconds of ``predict_session`` per volume, and
  this process's peak resident memory (``RUSAGE_SELF``) after the method's evaluation.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
import pandas as pd
from lesions import markdown_table  # benchmarks/lesions.py

if TYPE_CHECKING:
    import psutil
    from torch import nn

    from msynth.models.card import ModelCard
    from msynth.models.data import Example, Volume

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = ROOT / "benchmarks" / "results"
STAGES = ("cohort", "train", "evaluate", "report")
LOGGER = logging.getLogger("msynth.benchmarks.dvr_methods")
#: Seconds between two samples of the training process tree's memory.
SAMPLE_S = 0.5
#: Methods whose lesion discrepancy every other method is compared with, fold by fold.
BASELINES = ("unet", "cnn2")
#: ROIs of the Bland-Altman analysis: (name, group, ROI label name of the per-session table).
BA_ROIS = (("lesion", "MS", "lesion"), ("NAWM", "MS", "NAWM"), ("control_wm", "HC", "NAWM"))
NOISE_CEILING = "noise-ceiling"
#: Thesis 003 numbers (means; the thesis gives mean (SD)): MSE and PSNR of Tables 3.1/4.1, the myelin content
#: prediction discrepancy of Table 3.2 (WM in HC, NAWM, MS lesions) and Table 4.2, and the demyelinated-voxel Dice
#: against the acquired PET at t0 of §3.3.5 and §4.3.4 (text, not a table).
THESIS = {
    "cnn2": {"mse": 0.0136, "psnr": 27.767, "control_wm": 0.059, "NAWM": 0.041, "lesion": 0.131,
             "source": "Tables 3.1 and 4.1 (2-Layer DNN), 3.2"},
    "unet": {"mse": 0.0107, "psnr": 29.297, "control_wm": 0.053, "NAWM": 0.039, "lesion": 0.035,
             "source": "Tables 3.1 and 4.1 (3D U-Net), 3.2, 4.2 (L1)"},
    "unet-wl1": {"mse": 0.0113, "psnr": 28.606, "control_wm": 0.054, "NAWM": 0.038, "lesion": 0.032,
                 "source": "Table 3.1 (3D U-Net+L1W), 3.2, 4.2 (WL1)"},
    "cgan": {"mse": 0.0094, "psnr": 29.475, "control_wm": 0.053, "NAWM": 0.034, "lesion": 0.030,
             "source": "Tables 3.1 (Sketcher) and 4.1 (cGAN), 3.2, 4.2 (L1)"},
    "refiner-cgan": {"mse": 0.0083, "psnr": 30.044, "control_wm": 0.048, "NAWM": 0.029, "lesion": 0.022,
                     "dice": 0.83, "source": "Tables 3.1 (Refiner) and 4.1 (Refiner cGAN), 3.2; Dice §3.3.5"},
    "cf-sagan": {"mse": 0.0089, "lesion": 0.022,
                 "source": "Table 4.2 (CF-SAGAN, NWL1); Table 4.1's CF-SAGAN row, 0.0085 and 29.942 dB, is its "
                           "L1 column"},
    "refiner-cf-sagan": {"mse": 0.0078, "psnr": 30.285, "dice": 0.91, "source": "Table 4.1; Dice §4.3.4"},
}


# --------------------------------------------------------------------------------------------------- cohort


def stage_cohort(scratch: Path) -> tuple[Path, Path]:
    """Generate the 2 mm phantom cohort and run its participant level (``benchmarks/group_phantom.py``'s stages);
    return ``(derivatives, truth)``."""
    import group_phantom  # benchmarks/group_phantom.py

    folder = scratch / "cohort"
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "bids" / "participants.tsv").is_file():
        LOGGER.info("cohort: %s exists, not regenerated", folder / "bids")
    else:
        group_phantom.stage_phantom(folder)
    if (folder / "derivatives" / "dataset_description.json").is_file():
        LOGGER.info("cohort: %s exists, participant level not rerun", folder / "derivatives")
    else:
        group_phantom.stage_participant(folder)
    return folder / "derivatives", folder / "bids-truth"


# --------------------------------------------------------------------------------------------------- train


def train_command(method: str, args: argparse.Namespace) -> list[str]:
    """The ``msynth-train dvr`` command line of one method."""
    argv = [str(BIN / "msynth-train"), "dvr", "--derivatives", str(args.derivatives), "--method", method,
            "--folds", str(args.folds), "--epochs", str(args.epochs), "--patch-size", str(args.patch_size),
            "--patches-per-session", str(args.patches_per_session), "--seed", str(args.seed),
            "--device", args.device, "--out", str(args.scratch / "models" / method),
            "-w", str(args.scratch / "train-work" / method)]
    if args.voxel_size is not None:
        argv += ["--voxel-size", str(args.voxel_size)]
    if args.features is not None:
        argv += ["--features", str(args.features)]
    return argv


def _tree_rss(process: psutil.Process) -> int:
    """Resident bytes of a ``psutil.Process`` and all its descendants (processes that end meanwhile count 0)."""
    import psutil

    total = 0
    for member in (process, *process.children(recursive=True)):
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue
    return total


def run_sampled(argv: Sequence[str], log: Path) -> dict[str, float]:
    """Run a command (output appended to ``log``); its wall time and the peak resident memory of its process tree.

    Raises
    ------
    SystemExit
        When the command fails, naming its log.
    """
    import psutil

    print("$", shlex.join(argv), flush=True)
    start = time.perf_counter()
    peak = 0
    with log.open("a") as handle:
        handle.write("$ " + shlex.join(argv) + "\n")
        handle.flush()
        process = subprocess.Popen(list(argv), stdout=handle, stderr=subprocess.STDOUT)
        root = psutil.Process(process.pid)
        while True:
            try:
                peak = max(peak, _tree_rss(root))
            except psutil.NoSuchProcess:  # the command has just exited
                pass
            try:
                process.wait(timeout=SAMPLE_S)
                break
            except subprocess.TimeoutExpired:
                continue
    wall = time.perf_counter() - start
    if process.returncode:
        raise SystemExit(f"{argv[0]} failed (exit code {process.returncode}); see {log}")
    print(f"  done in {wall:.0f} s, peak {peak / 1024**3:.2f} GB", flush=True)
    return {"wall_s": wall, "peak_rss_gb": peak / 1024**3}


def stage_train(args: argparse.Namespace) -> None:
    """Train and cross-validate every method (skipped when its card and timings exist for the same command)."""
    (args.scratch / "timings").mkdir(parents=True, exist_ok=True)
    (args.scratch / "logs").mkdir(parents=True, exist_ok=True)
    for method in args.methods:
        argv = train_command(method, args)
        timings = args.scratch / "timings" / f"{method}.json"
        if timings.is_file() and (args.scratch / "models" / method / "model_card.json").is_file():
            recorded = json.loads(timings.read_text())["command"]
            if recorded != argv:
                raise SystemExit(f"{timings}: {method} was trained with other settings ({shlex.join(recorded)}); "
                                 "use another --scratch")
            LOGGER.info("train %s: model and timings exist, not retrained", method)
            continue
        result = run_sampled(argv, args.scratch / "logs" / f"train-{method}.log")
        timings.write_text(json.dumps({"command": argv, **result}, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------- evaluate


def session_prefix(example: Example) -> str:
    """``sub-<L>[_ses-<S>]`` of an :class:`~msynth.models.data.Example`."""
    return f"sub-{example.subject}" + (f"_ses-{example.session}" if example.session else "")


def session_dir(root: Path, example: Example) -> Path:
    """The example's session folder under a derivatives-like ``root``."""
    return root / f"sub-{example.subject}" / (f"ses-{example.session}" if example.session else "")


def truth_dvr_file(truth: Path, example: Example) -> Path:
    """The phantom's noise-free DVR on the session's T1w grid."""
    return session_dir(truth, example) / "pet" / f"{session_prefix(example)}_trc-PIB_space-T1w_meas-DVR_mimap.nii.gz"


def t1w_maps(derivatives: Path, truth: Path, example: Example) -> dict[str, Any]:
    """What the demyelinated-voxel classification of a session needs, on its T1w grid.

    Returns
    -------
    dict
        ``mask_img`` (the brain mask image), ``brain``, ``lesion`` (the participant level's), ``wm`` (WM probability
        >= :data:`msynth.analysis.myelin.WM_PROBABILITY`), ``rings`` (:func:`msynth.analysis.myelin.distance_rings`
        of the distance to CSF), ``acquired`` (Logan DVR) and ``truth_mask`` (the phantom's demyelinated voxels;
        ``None`` for a session without one).
    """
    from msynth.analysis import myelin
    from msynth.models.data import CHANNEL_FILES

    anat = session_dir(derivatives, example) / "anat"
    prefix = session_prefix(example)

    def read(path: Path) -> np.ndarray:
        return np.asanyarray(nib.load(path).dataobj).astype(np.float32)

    mask_img = nib.load(example.mask)
    truth_mask = session_dir(truth, example) / "anat" / f"{prefix}_space-T1w_desc-demyelinated_mask.nii.gz"
    datatype, name = CHANNEL_FILES["DVR"]
    return {
        "mask_img": mask_img,
        "brain": np.asanyarray(mask_img.dataobj) > 0,
        "lesion": read(anat / f"{prefix}_space-T1w_label-lesion_mask.nii.gz") > 0.5,
        "wm": read(anat / f"{prefix}_space-T1w_label-WM_probseg.nii.gz") >= myelin.WM_PROBABILITY,
        "rings": myelin.distance_rings(read(anat / f"{prefix}_space-T1w_desc-CSFdistance_map.nii.gz")),
        "acquired": read(session_dir(derivatives, example) / datatype / f"{prefix}_{name}"),
        "truth_mask": read(truth_mask) > 0.5 if truth_mask.is_file() else None,
    }


def to_t1w_grid(prediction: np.ndarray, affine: np.ndarray, maps: Mapping[str, Any]) -> np.ndarray:
    """A prediction on the training grid resampled (trilinear) onto the session's T1w grid, 0 outside the brain."""
    from msynth.preprocessing.resample import Grid, resample_to_grid

    image = resample_to_grid(nib.Nifti1Image(prediction.astype(np.float32), affine), Grid.of(maps["mask_img"]),
                             interpolation="linear")
    return np.asarray(image.dataobj) * maps["brain"]


def control_reference(dvr_maps: Sequence[np.ndarray], t1w: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """:func:`msynth.analysis.myelin.control_reference` of the controls' DVR maps (T1w grids)."""
    from msynth.analysis import myelin

    return myelin.control_reference([myelin.white_matter_samples(dvr, maps["wm"], maps["rings"])
                                     for dvr, maps in zip(dvr_maps, t1w)])


def demyelinated(dvr: np.ndarray, maps: Mapping[str, Any], reference: pd.DataFrame) -> np.ndarray:
    """Demyelinated lesion voxels of a DVR map (:func:`msynth.analysis.myelin.demyelinated_voxels`)."""
    from msynth.analysis import myelin

    return myelin.demyelinated_voxels(dvr, maps["lesion"], maps["rings"], reference)


def score_session(prediction: np.ndarray, reference: np.ndarray, truth: np.ndarray,
                  volume: Volume) -> dict[str, float]:
    """MSE, PSNR and per-ROI errors against ``reference`` (and MSE, PSNR against ``truth``), and the per-ROI
    mean DVR of map and reference, inside the brain on the training grid."""
    from msynth.analysis.metrics import mse, psnr
    from msynth.analysis.myelin import roi_means
    from msynth.models.losses import LESION, NAWM
    from msynth.models.training.crossval import roi_errors

    brain = volume.mask

    def peak(image: np.ndarray) -> float:  # thesis 003 eq. 3.9: the reference's maximum (crossval.PSNR_PEAK)
        return float(image[brain].max())

    regions = {"lesion": brain & (volume.roi == LESION), "NAWM": brain & (volume.roi == NAWM)}
    row = {"mse": mse(prediction, reference, brain),
           "psnr": psnr(prediction, reference, brain, data_range=peak(reference)),
           "mse_truth": mse(prediction, truth, brain),
           "psnr_truth": psnr(prediction, truth, brain, data_range=peak(truth)),
           **roi_errors(prediction, reference, volume.roi, brain)}
    row.update({f"{name}_map": value for name, value in roi_means(prediction, regions).items()})
    row.update({f"{name}_reference": value for name, value in roi_means(reference, regions).items()})
    return row


def fold_test_subjects(fold_dir: Path) -> list[str]:
    """Subjects of a fold's held-out sessions, from the session labels of its ``metrics.json``."""
    sessions = json.loads((fold_dir / "metrics.json").read_text())["sessions"]
    return sorted({label.split()[0].removeprefix("sub-") for label in sessions})


def fold_model(card: ModelCard, fold_dir: Path) -> nn.Module:
    """The network a fold trained: the card's stage networks with each stage's kept weights (``best_model`` of the
    stage's ``checkpoint.pt`` in the fold folder), chained as :func:`msynth.models.inference.load_model` does."""
    import torch

    from msynth.models.inference import StageChain
    from msynth.models.networks import build_network
    from msynth.models.training import CHECKPOINT_NAME, stage_names

    names = stage_names(len(card.stages))
    networks = []
    for name, stage in zip(names, card.stages):
        checkpoint = (fold_dir if len(names) == 1 else fold_dir / name) / CHECKPOINT_NAME
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)["best_model"]
        if state is None:
            raise ValueError(f"{checkpoint}: holds no kept weights (a fold without validation subjects)")
        network = build_network(stage.network.architecture, stage.network.arguments)
        network.load_state_dict(state)
        networks.append(network)
    return (networks[0] if len(networks) == 1 else StageChain(networks)).eval()


def expected_folds(examples: Sequence[Example], derivatives: Path, folds: int, seed: int) -> list[list[str]]:
    """The test subjects of each fold that ``msynth-train dvr`` deals (groups spread over the folds)."""
    from msynth.models.data import subject_groups, subjects_of
    from msynth.models.training import assign_folds

    subjects = subjects_of(examples)
    return assign_folds(subjects, folds, seed, subject_groups(derivatives, subjects))


def evaluate_method(method: str, *, args: argparse.Namespace, volumes: Sequence[Volume],
                    t1w: Mapping[str, Mapping[str, Any]], groups: Mapping[str, str],
                    folds: Sequence[Sequence[str]], acquired_masks: Mapping[str, np.ndarray],
                    truth_volumes: Mapping[str, Volume]) -> pd.DataFrame:
    """Per-session scores of one method's fold models on their held-out baseline sessions (see the module
    docstring); also checks the folds and that a noise-free model reproduces its fold's ``metrics.json``."""
    import torch

    from msynth.analysis.myelin import mask_agreement
    from msynth.models.card import TARGETS, channels_of, read_card
    from msynth.models.data import compute_normalisation
    from msynth.models.inference import select_device
    from msynth.models.training import TrainingConfig, predict_session

    card = read_card(args.scratch / "models" / method)
    inputs, output = channels_of(card.inputs), TARGETS[card.target].channel
    noisy = any(stage.network.arguments.get("noise_channels", 0) for stage in card.stages)
    device = select_device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rows = []
    for k, test in enumerate(folds):
        fold_dir = args.scratch / "train-work" / method / "folds" / f"fold-{k}"
        if fold_test_subjects(fold_dir) != list(test):
            raise SystemExit(f"{fold_dir}: held out {fold_test_subjects(fold_dir)}, expected {list(test)}: the "
                             "methods were not trained on the same folds")
        model = fold_model(card, fold_dir)
        stats = compute_normalisation([v for v in volumes if v.subject not in test], (*inputs, output))
        written = json.loads((fold_dir / "metrics.json").read_text())["sessions"]
        held_out = [v for v in volumes if v.subject in test]
        synthetic, fold_rows = {}, {}
        for volume in held_out:
            torch.manual_seed(args.seed)  # the Sketchers' noise z: the same draw for every session and rerun
            start = time.perf_counter()
            prediction = predict_session(model, volume, inputs=inputs, output=output, normalisation=stats,
                                         window=TrainingConfig.window, scope=card.intensity_normalisation,
                                         target_scope="cohort", device=device)  # methods.py: DVR is cohort-scaled
            infer_s = time.perf_counter() - start
            row = {"method": method, "fold": k, "participant_id": f"sub-{volume.subject}",
                   "session": volume.session, "group": groups[volume.subject],
                   **score_session(prediction, volume.take([output])[0] * volume.mask,
                                   truth_volumes[volume.label].take([output])[0] * volume.mask, volume),
                   "infer_s": infer_s}
            if not noisy and not math.isclose(row["mse"], written[volume.label]["mse"], rel_tol=1e-3):
                raise SystemExit(f"{method} fold {k} {volume.label}: the rebuilt model's MSE {row['mse']:.6g} is not "
                                 f"the fold's {written[volume.label]['mse']:.6g} ({fold_dir / 'metrics.json'})")
            synthetic[volume.label] = to_t1w_grid(prediction, volume.affine, t1w[volume.label])
            fold_rows[volume.label] = row
        controls = [v.label for v in held_out if groups[v.subject] == "HC"]
        reference = control_reference([synthetic[label] for label in controls], [t1w[label] for label in controls])
        for label, row in fold_rows.items():
            if row["group"] != "MS":
                continue
            mask = {"t0": demyelinated(synthetic[label], t1w[label], reference)}
            row["dice_acquired"] = mask_agreement({"t0": acquired_masks[label]}, mask)["dice_t0"]
            if t1w[label]["truth_mask"] is not None:
                row["dice_truth"] = mask_agreement({"t0": t1w[label]["truth_mask"]}, mask)["dice_t0"]
        rows += fold_rows.values()
        LOGGER.info("%s fold %d: %d held-out sessions evaluated", method, k, len(held_out))
    table = pd.DataFrame(rows)
    table["peak_rss_infer_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    if device.type == "cuda":
        table["peak_gpu_infer_gb"] = torch.cuda.max_memory_allocated(device) / 1024**3
    return table


def evaluate_noise_ceiling(*, volumes: Sequence[Volume], t1w: Mapping[str, Mapping[str, Any]],
                           groups: Mapping[str, str], folds: Sequence[Sequence[str]],
                           acquired_masks: Mapping[str, np.ndarray],
                           truth_volumes: Mapping[str, Volume]) -> pd.DataFrame:
    """Per-session scores of the acquired Logan DVR against the true DVR, by fold (the synthetic maps' folds)."""
    from msynth.analysis.myelin import mask_agreement
    from msynth.models.card import TARGETS

    output = TARGETS["DVR"].channel
    rows = []
    for k, test in enumerate(folds):
        for volume in (v for v in volumes if v.subject in test):
            truth = truth_volumes[volume.label].take([output])[0] * volume.mask
            row = {"method": NOISE_CEILING, "fold": k, "participant_id": f"sub-{volume.subject}",
                   "session": volume.session, "group": groups[volume.subject],
                   **score_session(volume.take([output])[0] * volume.mask, truth, truth, volume)}
            truth_mask = t1w[volume.label]["truth_mask"]
            if groups[volume.subject] == "MS" and truth_mask is not None:
                row["dice_truth"] = mask_agreement({"t0": truth_mask},
                                                   {"t0": acquired_masks[volume.label]})["dice_t0"]
            rows.append(row)
    return pd.DataFrame(rows)


def stage_evaluate(args: argparse.Namespace) -> None:
    """Evaluate every trained method's folds and the noise ceiling (skipped where the per-session table exists)."""
    from msynth.models.card import TARGETS, read_card
    from msynth.models.data import Example, find_examples, load_volume, subject_groups, subjects_of

    out = args.scratch / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    todo = [m for m in args.methods if not (out / f"{m}.tsv").is_file()]
    for method in sorted(set(args.methods) - set(todo)):
        LOGGER.info("evaluate %s: %s exists, not re-evaluated", method, out / f"{method}.tsv")
    if not todo and (out / f"{NOISE_CEILING}.tsv").is_file():
        return
    untrained = [m for m in todo if not (args.scratch / "models" / m / "model_card.json").is_file()]
    if untrained:
        raise SystemExit(f"not trained in {args.scratch}: {' '.join(untrained)} — run the train stage first")
    card = read_card(args.scratch / "models" / args.methods[0])
    examples = find_examples(args.derivatives, card.inputs, TARGETS[card.target].modality, roi=True,
                             sessions="baseline")
    folds = expected_folds(examples, args.derivatives, args.folds, args.seed)
    groups = subject_groups(args.derivatives, subjects_of(examples))
    cache = args.scratch / "cache"
    volumes = [load_volume(e, voxel_size=args.voxel_size, cache_dir=cache) for e in examples]
    truth_volumes = {
        v.label: load_volume(Example(e.subject, e.session, {TARGETS["DVR"].channel: truth_dvr_file(args.truth, e)},
                                     e.mask, e.roi_masks), voxel_size=args.voxel_size, cache_dir=cache)
        for e, v in zip(examples, volumes)}
    t1w = {v.label: t1w_maps(args.derivatives, args.truth, e) for e, v in zip(examples, volumes)}
    controls = [v.label for v in volumes if groups[v.subject] == "HC"]
    acquired_reference = control_reference([t1w[label]["acquired"] for label in controls],
                                           [t1w[label] for label in controls])
    acquired_masks = {label: demyelinated(maps["acquired"], maps, acquired_reference) for label, maps in t1w.items()}
    shared = {"volumes": volumes, "t1w": t1w, "groups": groups, "folds": folds, "acquired_masks": acquired_masks,
              "truth_volumes": truth_volumes}
    if not (out / f"{NOISE_CEILING}.tsv").is_file():
        evaluate_noise_ceiling(**shared).to_csv(out / f"{NOISE_CEILING}.tsv", sep="\t", index=False, na_rep="n/a")
    for method in todo:
        table = evaluate_method(method, args=args, **shared)
        table.to_csv(out / f"{method}.tsv", sep="\t", index=False, na_rep="n/a")
    (out / "folds.json").write_text(json.dumps({"folds": folds}, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------- report


def trained_epochs(work: Path, n_stages: int) -> tuple[dict[int, list[int]], int]:
    """Epochs each stage trained, per fold (``{fold: [epochs per stage]}``), and in total with the final model,
    from the ``history.tsv`` files the training loop writes."""
    from msynth.models.training import stage_names

    def epochs(folder: Path) -> list[int]:
        names = stage_names(n_stages)
        files = [folder / "history.tsv"] if n_stages == 1 else [folder / name / "history.tsv" for name in names]
        return [int(pd.read_csv(f, sep="\t")["epoch"].max()) for f in files]

    per_fold = {int(d.name.removeprefix("fold-")): epochs(d) for d in sorted((work / "folds").glob("fold-*"))}
    return per_fold, sum(map(sum, per_fold.values())) + sum(epochs(work / "final"))


def fold_row(sessions: pd.DataFrame) -> dict[str, float]:
    """One method × fold row from its per-session table: means, Bland-Altman per ROI and median Dice."""
    from msynth.analysis.statistics import bland_altman

    patients, controls = sessions[sessions["group"] == "MS"], sessions[sessions["group"] == "HC"]
    row = {"n_test": len(sessions), "n_patients": len(patients), "n_controls": len(controls),
           "mse": sessions["mse"].mean(), "psnr": sessions["psnr"].mean(),
           "mse_truth": sessions["mse_truth"].mean(), "psnr_truth": sessions["psnr_truth"].mean(),
           "lesion_discrepancy": patients["lesion_discrepancy"].mean(),
           "NAWM_discrepancy": patients["NAWM_discrepancy"].mean(),
           "control_wm_discrepancy": controls["NAWM_discrepancy"].mean(),
           "other_discrepancy": sessions["other_discrepancy"].mean()}
    for name, group, region in BA_ROIS:
        members = patients if group == "MS" else controls
        agreement = bland_altman(members[f"dvr_{region}_reference"], members[f"dvr_{region}_map"])
        row.update({f"ba_{name}_{key}": agreement[key] for key in ("bias", "lower", "upper")})
    for column in ("dice_acquired", "dice_truth"):
        row[f"{column}_median"] = patients[column].median() if column in patients else math.nan
    return row


def machine() -> dict[str, str]:
    """CPU model, cores available, torch version and GPU."""
    import torch

    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.is_file() else [])
             if line.startswith("model name")]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"cpu": names[0] if names else platform.processor() or platform.machine(),
            "cores": str(len(os.sched_getaffinity(0))), "torch": torch.__version__, "gpu": gpu,
            "python": platform.python_version()}


def build_table(args: argparse.Namespace) -> pd.DataFrame:
    """The method × fold table (noise-ceiling rows first)."""
    from msynth.models.card import read_card

    evaluation = args.scratch / "evaluation"
    rows = []
    ceiling = pd.read_csv(evaluation / f"{NOISE_CEILING}.tsv", sep="\t", na_values=["n/a"])
    for fold, sessions in ceiling.groupby("fold"):
        rows.append({"method": NOISE_CEILING, "fold": fold, "reference": "truth", **fold_row(sessions)})
    for method in args.methods:
        table = pd.read_csv(evaluation / f"{method}.tsv", sep="\t", na_values=["n/a"])
        timings = json.loads((args.scratch / "timings" / f"{method}.json").read_text())
        n_stages = len(read_card(args.scratch / "models" / method).stages)
        per_fold, total = trained_epochs(args.scratch / "train-work" / method, n_stages)
        for fold, sessions in table.groupby("fold"):
            rows.append({"method": method, "fold": fold, "reference": "acquired", **fold_row(sessions),
                         "epochs": sum(per_fold[fold]), "stage_epochs": "+".join(map(str, per_fold[fold])),
                         "train_s_per_epoch": timings["wall_s"] / total,
                         "infer_s_per_volume": sessions["infer_s"].mean(),
                         "peak_rss_train_gb": timings["peak_rss_gb"],
                         "peak_rss_infer_gb": sessions["peak_rss_infer_gb"].iloc[0],
                         **({"peak_gpu_infer_gb": sessions["peak_gpu_infer_gb"].iloc[0]}
                            if "peak_gpu_infer_gb" in sessions else {})})
    return pd.DataFrame(rows)


def beats_baselines(table: pd.DataFrame, method: str) -> str:
    """``yes`` when the method's lesion discrepancy is below every other baseline's (:data:`BASELINES`) in every
    fold, ``no`` otherwise, ``n/a`` when no other baseline was run."""
    others = [b for b in BASELINES if b != method and b in set(table["method"])]
    if not others:
        return "n/a"
    lesion = table.pivot(index="fold", columns="method", values="lesion_discrepancy")
    return "yes" if all((lesion[method] < lesion[b]).all() for b in others) else "no"


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per method: the mean over folds of every numeric column, and the yes/no baseline comparison."""
    numeric = table.drop(columns=["fold", "reference", "stage_epochs"], errors="ignore")
    means = numeric.groupby("method", sort=False).mean(numeric_only=True).reset_index()
    means["lesion_below_baselines_every_fold"] = [
        "n/a" if method == NOISE_CEILING else beats_baselines(table[table["method"] != NOISE_CEILING], method)
        for method in means["method"]]
    return means


def significant(table: pd.DataFrame, columns: Sequence[str], digits: int = 4) -> pd.DataFrame:
    """``table`` with ``columns`` written to ``digits`` significant digits (``markdown_table`` keeps 3 decimals,
    too few for MSEs of about 0.01)."""
    def cell(value: float) -> str:
        return "n/a" if pd.isna(value) else f"{value:.{digits}g}"

    return table.assign(**{c: table[c].map(cell) for c in columns if c in table})


def thesis_table(methods: Sequence[str]) -> pd.DataFrame:
    """The thesis's numbers of the methods run (:data:`THESIS`)."""
    columns = ("mse", "psnr", "lesion", "NAWM", "control_wm", "dice")
    return pd.DataFrame([{"method": m, **{c: THESIS[m].get(c, math.nan) for c in columns},
                          "source": THESIS[m]["source"]} for m in methods])


def stage_report(args: argparse.Namespace, argv: Sequence[str]) -> None:
    """Write ``dvr_methods.tsv`` and ``dvr_methods.md`` into ``--results``."""
    table = build_table(args)
    args.results.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.results / "dvr_methods.tsv", sep="\t", index=False, na_rep="n/a", float_format="%.6g")
    means = summary(table)
    folds = json.loads((args.scratch / "evaluation" / "folds.json").read_text())["folds"]
    host = machine()
    command = shlex.join(["OMP_NUM_THREADS=1", ".venv/bin/python", "benchmarks/dvr_methods.py", *argv])
    quality = ["method", "mse", "psnr", "mse_truth", "psnr_truth", "lesion_discrepancy", "NAWM_discrepancy",
               "control_wm_discrepancy", "other_discrepancy", "dice_acquired_median", "dice_truth_median",
               "lesion_below_baselines_every_fold"]
    agreement = ["method", *[f"ba_{name}_{key}" for name, _, _ in BA_ROIS for key in ("bias", "lower", "upper")]]
    cost = [c for c in ("method", "epochs", "train_s_per_epoch", "infer_s_per_volume", "peak_rss_train_gb",
                        "peak_rss_infer_gb", "peak_gpu_infer_gb") if c in means]
    train_commands = [shlex.join(json.loads((args.scratch / "timings" / f"{m}.json").read_text())["command"])
                      for m in args.methods]
    lines = [
        "# DVR-synthesis methods of thesis 003 on a phantom cohort (`benchmarks/dvr_methods.py`)", "",
        f"Command: `{command}`", "",
        f"Settings: derivatives `{args.derivatives}`, truth `{args.truth}`; {args.folds} folds over subjects "
        f"(seed {args.seed}, controls spread over the folds), training on each subject's baseline session; "
        f"{args.epochs} epochs at most; voxel size {args.voxel_size or 'of the T1w grid'} mm; patches "
        f"{args.patch_size}³, {args.patches_per_session} per session and epoch; features "
        f"{args.features or 'the thesis defaults'}; device {args.device}.", "",
        f"Machine: {host['cpu']}, {host['cores']} cores available, GPU: {host['gpu']}; torch {host['torch']}, "
        f"Python {host['python']}.", "",
        "Held-out subjects per fold (the same for every method: read from each fold's `metrics.json` and checked): "
        + "; ".join(f"fold {k}: {' '.join(subjects)}" for k, subjects in enumerate(folds)) + ".", "",
        "## Image quality and myelin content (mean over folds)", "",
        markdown_table(significant(means[quality], ("mse", "mse_truth"))), "",
        "MSE, PSNR and discrepancies against the acquired Logan DVR (`noise-ceiling`: the acquired DVR against the "
        "phantom's noise-free DVR); `*_truth`: against the noise-free DVR. Discrepancy: |mean map − mean reference| "
        "of a session's region, averaged over the fold's patients (lesion, NAWM) or controls (control WM). Dice: "
        "demyelinated lesion voxels, median over the fold's patients, against the acquired DVR's mask and the truth "
        "mask. `lesion_below_baselines_every_fold`: lower lesion discrepancy than unet and cnn2 in every fold (for "
        "unet and cnn2 themselves: than the other one).", "",
        "## Bland-Altman of the per-session mean DVR (mean over folds)", "",
        markdown_table(means[agreement]), "",
        "Bias = mean(map − reference), limits = bias ± 1.96 SD, over the fold's patients (lesion, NAWM) or "
        "controls (control WM); reference: acquired DVR (`noise-ceiling`: the true DVR).", "",
        "## Cost", "",
        markdown_table(significant(means.loc[means["method"] != NOISE_CEILING, cost], ("epochs",))), "",
        "`epochs`: epochs a fold trained, all stages. `train_s_per_epoch`: `msynth-train` wall time (loading, "
        "the folds with their per-epoch validation, the final model) over every epoch it trained; the CF-SAGAN "
        "methods train on every patch of a 50 % overlap grid (thesis §4.3.1; `--patches-per-session` does not "
        "apply to them), so their epochs hold many more steps. "
        "`peak_rss_train_gb`: resident memory of the `msynth-train` process tree, sampled every 0.5 s. "
        "`infer_s_per_volume`: `predict_session` on one held-out volume. `peak_rss_infer_gb`: this script's peak "
        "resident memory after the method's evaluation (`RUSAGE_SELF`, cumulative over the run).", "",
        "## Thesis 003 (real cohort; means only)", "",
        markdown_table(significant(thesis_table([m for m in args.methods if m in THESIS]), ("mse",))), "",
        "MSE and PSNR: Tables 3.1/4.1 (4.2(a) for NWL1); `lesion`, `NAWM`, `control_wm` (WM in HC): the myelin "
        "content prediction discrepancy of Tables 3.2 and 4.2(b); Dice at t0 from §3.3.5 (0.83) and §4.3.4 (0.91). "
        "The thesis's numbers are on its 20 MS patients and 10 controls and not comparable in level with a "
        "phantom; compare the ranking.", "",
        "## How the numbers are made", "",
        "MSE, PSNR, ROI discrepancies and Bland-Altman: inside the brain on the training grid, as `msynth-train` "
        "scores its folds (`crossval.roi_errors`, `analysis.metrics`, `analysis.statistics.bland_altman`). The "
        "fold's model is rebuilt from its stage checkpoints' kept weights and the fold's training-subject "
        "statistics; for the models without a noise input the rebuilt model's MSE was checked against the fold's "
        "`metrics.json` (relative tolerance 1e-3). Dice: each prediction resampled (trilinear) back onto its "
        "session's T1w grid; a synthetic map is classified with the control reference (WM mean − 1 SD per 1 mm "
        "ring of distance to CSF, `analysis.myelin`) of its own fold's held-out controls' synthetic maps, the "
        "acquired map with the reference of all controls' acquired baseline DVR, as the group level does. The "
        "truth mask is the phantom's: its noise-free DVR classified with its controls' reference on its native "
        "grid, within the true lesions, while the synthetic and acquired masks lie within the participant "
        "level's lesion mask, so Dice against the truth also counts lesion-mask disagreement.", "",
        "## Commands", "",
        "```", command, *train_commands, "```",
    ]
    (args.results / "dvr_methods.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


# --------------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command line."""
    from msynth.models.training.methods import DVR_METHODS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scratch", type=Path, required=True, help="working folder (models, work, evaluation)")
    parser.add_argument("--stage", nargs="+", choices=STAGES, default=list(STAGES), help="stages to run")
    parser.add_argument("--derivatives", type=Path, default=None, metavar="OUTPUT_DIR",
                        help="participant-level outputs of the cohort (default: generate the 2 mm phantom cohort)")
    parser.add_argument("--truth", type=Path, default=None, metavar="TRUTH_DIR",
                        help="the phantom's truth folder (required with --derivatives)")
    parser.add_argument("--methods", nargs="+", choices=DVR_METHODS, default=list(DVR_METHODS), metavar="METHOD",
                        help=f"methods (default: all: {' '.join(DVR_METHODS)})")
    parser.add_argument("--epochs", type=int, default=200, help="maximum epochs (msynth-train's default: 200)")
    parser.add_argument("--voxel-size", type=float, default=None, metavar="MM",
                        help="voxel size to train at (default: the T1w grid)")
    parser.add_argument("--patch-size", type=int, default=64, metavar="N", help="training patch edge (default: 64)")
    parser.add_argument("--patches-per-session", type=int, default=8, metavar="N",
                        help="patches per session and epoch (default: 8)")
    parser.add_argument("--features", type=int, default=None, metavar="N",
                        help="first-level feature maps (default: the thesis's per method)")
    parser.add_argument("--folds", type=int, default=3, metavar="K", help="cross-validation folds (default: 3)")
    parser.add_argument("--seed", type=int, default=42, help="training seed, hence the folds (default: 42)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu",
                        help="torch device of training and inference (default: cpu)")
    parser.add_argument("--results", type=Path, default=RESULTS, metavar="DIR",
                        help=f"where dvr_methods.tsv and .md go (default: {RESULTS.relative_to(ROOT)})")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the stages asked for; return 0."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    args.scratch = args.scratch.resolve()
    args.scratch.mkdir(parents=True, exist_ok=True)
    if args.derivatives is None:
        if "cohort" not in args.stage and not (args.scratch / "cohort" / "derivatives").is_dir():
            raise SystemExit("no --derivatives and no generated cohort in --scratch: run the cohort stage")
        if "cohort" in args.stage:
            args.derivatives, args.truth = stage_cohort(args.scratch)
        else:
            args.derivatives, args.truth = (args.scratch / "cohort" / "derivatives",
                                            args.scratch / "cohort" / "bids-truth")
    else:
        if args.truth is None:
            raise SystemExit("--derivatives needs --truth (the phantom's truth folder)")
        LOGGER.info("cohort: skipped, --derivatives %s given", args.derivatives)
    args.derivatives, args.truth = args.derivatives.resolve(), args.truth.resolve()
    if "train" in args.stage:
        stage_train(args)
    if "evaluate" in args.stage:
        stage_evaluate(args)
    if "report" in args.stage:
        stage_report(args, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
