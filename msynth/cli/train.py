"""``msynth-train``: train and cross-validate synthesis models from participant-level outputs.

``msynth-train flair --derivatives OUTPUT_DIR --out MODEL_DIR`` trains the FLAIR-synthesis FCN of paper 001 on the
sessions of a msynth output folder that have every input, a FLAIR and a brain mask, cross-validates it over subjects,
and writes ``MODEL_DIR/model_card.json`` and ``MODEL_DIR/model.pt``, usable with ``msynth --model MODEL_DIR``.

``msynth-train dvr --derivatives OUTPUT_DIR --method METHOD --out MODEL_DIR`` trains a [11C]PIB DVR model of thesis
003 (:mod:`msynth.models.training.methods`) from MTR and the DTI maps on each subject's baseline session with an
acquired Logan DVR, lesion and NAWM masks, cross-validated over subjects with the controls spread over the folds.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msynth.utils.errors import UsageError

if TYPE_CHECKING:
    from msynth.models.card import ModelCard

PROG = "msynth-train"
LOGGER = logging.getLogger("msynth")
#: paper 001: the five inputs of its FLAIR model
FLAIR_INPUTS = ("T1w", "T2w", "PDw", "T1SE", "DIR")
_INPUT_KEYS = ("T1w", "T2w", "PDw", "T1SE", "DIR", "MTR")
_DEFAULT_LR = {"sgd": 5e-4, "adam": 1e-4}
#: thesis 003: the DVR models' inputs, as channel names (FA, RD and AD together are the DWI modality key)
DVR_INPUTS = ("MTR", "FA", "RD", "AD")
#: ``--method`` choices: :data:`msynth.models.training.methods.DVR_METHODS`, listed here so that the parser is built
#: without importing torch (tests/test_training_dvr.py checks that the two agree)
DVR_METHODS = ("cnn2", "unet", "unet-wl1", "cgan", "refiner-cgan", "cf-sagan", "refiner-cf-sagan")
_DTI_MAPS = ("FA", "RD", "AD")


def _positive_int(text: str) -> int:
    """argparse type of a count that must be at least 1 (named in argparse's message as the option given)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _add_shared_arguments(task: argparse.ArgumentParser, *, inputs: tuple[str, ...], choices: tuple[str, ...],
                          default_name: str, default_folds: int,
                          default_normalisation: str) -> tuple[argparse._ArgumentGroup, argparse._ArgumentGroup]:
    """The options every task takes (data, output, loop, device); returns the ``network`` and ``training`` groups
    for the task's own."""
    data = task.add_argument_group("data")
    data.add_argument("--derivatives", type=Path, required=True, metavar="OUTPUT_DIR",
                      help="msynth participant-level output folder (BIDS-Derivatives)")
    data.add_argument("--inputs", nargs="+", choices=choices, default=list(inputs), metavar="KEY",
                      help=f"inputs, of {' '.join(choices)} (default: {' '.join(inputs)})")
    data.add_argument("--participant-label", nargs="+", default=None, metavar="LABEL",
                      help="train on these subjects only (default: all)")
    data.add_argument("--voxel-size", type=float, default=None, metavar="MM",
                      help="isotropic voxel size to train at (default: the space-T1w grid)")
    data.add_argument("--data-source", default="", metavar="TEXT", help="where the training data came from (card)")
    data.add_argument("--data-license", default="", metavar="TEXT", help="licence of the training data (card)")
    data.add_argument("--data-citation", default="", metavar="TEXT", help="how to cite the training data (card)")
    data.add_argument("--subject-salt", default=os.environ.get("MSYNTH_SUBJECT_SALT"), metavar="SECRET",
                      help="secret salt of the subject hashes in the card (default: $MSYNTH_SUBJECT_SALT, else a "
                      "random one that is not stored)")
    out = task.add_argument_group("output")
    out.add_argument("--out", type=Path, required=True, metavar="MODEL_DIR", help="model folder to write")
    out.add_argument("-w", "--work-dir", type=Path, default=None, metavar="WORK_DIR",
                     help="caches, fold checkpoints and metrics (default: MODEL_DIR_work); rerun to resume")
    out.add_argument("--name", default=None, help=f"model name (default: {default_name})")
    net = task.add_argument_group("network")
    opt = task.add_argument_group("training")
    opt.add_argument("--folds", type=int, default=default_folds, metavar="K",
                     help=f"cross-validation folds over subjects (default: {default_folds}; 0: no cross-validation)")
    opt.add_argument("--epochs", type=int, default=200, metavar="N", help="maximum epochs (default: 200)")
    opt.add_argument("--patch-size", type=int, default=64, metavar="N",
                     help="edge of the cubic training patches in voxels (default: 64)")
    opt.add_argument("--patches-per-session", type=int, default=8, metavar="N",
                     help="random patches per session and epoch (default: 8)")
    opt.add_argument("--intensity-normalisation", choices=("image", "cohort"), default=default_normalisation,
                     help="z-score each input image by its own brain statistics, or all by the training cohort's "
                     f"(default: {default_normalisation})")
    opt.add_argument("--seed", type=int, default=42, help="random seed (default: 42)")
    opt.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                     help="torch device (default: auto — CUDA when available)")
    opt.add_argument("--nprocs", type=int, default=1, metavar="N",
                     help="folds trained in parallel by --worker cf (default: 1)")
    opt.add_argument("--worker", choices=("cf", "slurm"), default="cf",
                     help="where the folds train: cf, local processes; slurm, one SLURM job per fold, submitted from "
                     "this command, which waits for them; rerun it with the same work folder to resume a fold whose "
                     "job was cancelled or killed (default: cf)")
    opt.add_argument("--plugin", dest="worker", choices=("cf", "slurm"), help=argparse.SUPPRESS)  # deprecated name
    opt.add_argument("--slurm-args", default="", metavar="TEXT",
                     help="extra sbatch arguments of the fold jobs of --worker slurm, with an = sign, e.g. "
                     "--slurm-args='--time=4:00:00 --mem=8G --gres=gpu:1'")
    task.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v debug)")
    return net, opt


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``msynth-train``."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Train and cross-validate msynth synthesis models from participant-level outputs.")
    tasks = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    flair = tasks.add_parser(
        "flair", help="FLAIR synthesis (paper 001: 3-D FCN, MSE, SGD 5e-4, early stopping UP3 with 5-epoch strips)",
        description="Train the FLAIR-synthesis network on every session of DERIVATIVES that has the inputs, a FLAIR "
        "and a brain mask; k-fold cross-validation over subjects, then a final model on all subjects.")
    net, opt = _add_shared_arguments(flair, inputs=FLAIR_INPUTS, choices=_INPUT_KEYS,
                                     default_name="flair-synthesis_<inputs>", default_folds=5,
                                     default_normalisation="image")
    net.add_argument("--architecture", choices=("fcn", "unet"), default="fcn", help="network (default: fcn)")
    net.add_argument("--features", type=_positive_int, default=None, metavar="N",
                     help="filters F of each hidden layer (fcn, default 64) or features at the first level (unet, "
                     "default 16)")
    net.add_argument("--depth", type=int, default=None, metavar="N",
                     help="hidden layers L before the output layer (fcn, default 3, as paper 001) or resolution "
                     "levels (unet, default 3)")
    opt.add_argument("--random-flips", action="store_true",
                     help="mirror each training patch along each axis with probability 1/2 (augmentation for small "
                     "cohorts; default: off, as paper 001)")
    opt.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd", help="optimiser (default: sgd)")
    opt.add_argument("--lr", type=float, default=None, help="learning rate (default: 5e-4 sgd, 1e-4 adam)")

    dvr = tasks.add_parser(
        "dvr", help="[11C]PIB DVR synthesis (thesis 003: Sketcher-Refiner cGANs, CF-SAGAN and their baselines)",
        description="Train a DVR-synthesis model on the baseline session of every subject of DERIVATIVES that has the "
        "inputs, an acquired Logan DVR, a brain mask and lesion and NAWM masks; k-fold cross-validation over subjects "
        "(controls spread over the folds), then a final model on all subjects.")
    net, opt = _add_shared_arguments(dvr, inputs=DVR_INPUTS, choices=("MTR", *_DTI_MAPS, "DWI"),
                                     default_name="dvr-<method>_<inputs>", default_folds=3,
                                     default_normalisation="cohort")
    net.add_argument("--method", choices=DVR_METHODS, required=True,
                     help="thesis 003 Tables 3.1/4.1: cnn2, unet (L1), unet-wl1, cgan (the Sketcher), refiner-cgan, "
                     "cf-sagan, refiner-cf-sagan")
    net.add_argument("--refinements", type=int, choices=(0, 1, 2), default=1,
                     help="Refiners after the Sketcher of the refiner-* methods (default: 1, as the thesis)")
    net.add_argument("--features", type=_positive_int, default=None, metavar="N",
                     help="feature maps of the generators' first level and of the discriminators' first block "
                     "(default: the thesis's)")
    return parser


def _check(args: argparse.Namespace) -> None:
    """Raise :class:`UsageError` for arguments argparse cannot check."""
    if not args.derivatives.is_dir():
        raise UsageError(f"{args.derivatives}: no such folder — pass the OUTPUT_DIR of `msynth BIDS_DIR OUTPUT_DIR "
                         "participant`")
    if len(set(args.inputs)) != len(args.inputs):
        raise UsageError(f"--inputs lists a key twice: {' '.join(args.inputs)}")
    dti = [key for key in args.inputs if key in _DTI_MAPS]
    if dti and (len(dti) != len(_DTI_MAPS) or "DWI" in args.inputs):
        raise UsageError(f"--inputs: FA, RD and AD are the DTI maps of one input (DWI); pass all three, or DWI, "
                         f"got {' '.join(args.inputs)}")
    for name in ("epochs", "patch_size", "patches_per_session", "nprocs"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.folds < 0 or args.folds == 1:
        raise UsageError(f"--folds must be 0 (no cross-validation) or at least 2, got {args.folds}")
    if args.voxel_size is not None and args.voxel_size <= 0:
        raise UsageError(f"--voxel-size must be positive, got {args.voxel_size}")
    if getattr(args, "lr", None) is not None and args.lr <= 0:
        raise UsageError(f"--lr must be positive, got {args.lr}")
    if args.slurm_args and args.worker != "slurm":
        raise UsageError("--slurm-args is for --worker slurm")
    if args.out.exists() and any(args.out.iterdir()) and not (args.out / "model_card.json").is_file():
        raise UsageError(f"{args.out}: exists and is not a msynth model folder — choose another --out")


def _network_arguments(args: argparse.Namespace) -> dict[str, int]:
    arguments = {}
    fcn = args.architecture == "fcn"
    if args.features is not None:
        arguments["filters" if fcn else "features"] = args.features
    if args.depth is not None:
        arguments["hidden_layers" if fcn else "levels"] = args.depth
    if fcn:
        arguments = {"filters": 64, "hidden_layers": 3, **arguments}
    return arguments


def _shared_options(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Keyword arguments of :func:`~msynth.models.training.cross_validate` that every task passes alike."""
    from msynth.models.inference import select_device

    return dict(model_dir=args.out, work_dir=args.work_dir, folds=args.folds, voxel_size=args.voxel_size,
                device=str(select_device(args.device)), n_procs=args.nprocs, plugin=args.worker,
                sbatch_args=args.slurm_args, name=args.name,
                data_source=args.data_source, data_license=args.data_license, data_citation=args.data_citation,
                command=shlex.join([PROG, *argv]), salt=args.subject_salt)


def _train_flair(args: argparse.Namespace, argv: list[str]) -> ModelCard:
    """``msynth-train flair``: paper 001's FCN (or a U-Net), one stage."""
    from msynth.models.card import channels_of
    from msynth.models.data import find_examples  # heavy imports after the command line is checked
    from msynth.models.networks import build_network
    from msynth.models.training import TrainingConfig, cross_validate

    inputs = sorted(args.inputs, key=_INPUT_KEYS.index)
    examples = find_examples(args.derivatives, inputs, "FLAIR", subjects=args.participant_label)
    if not examples:
        raise UsageError(f"{args.derivatives}: no session has {' '.join(inputs)}, a FLAIR and a brain mask "
                         "(run with -v to see why each was skipped)")
    config = TrainingConfig(
        architecture=args.architecture, arguments=_network_arguments(args), optimizer=args.optimizer,
        lr=args.lr if args.lr is not None else _DEFAULT_LR[args.optimizer], max_epochs=args.epochs,
        patch_size=args.patch_size, patches_per_session=args.patches_per_session, seed=args.seed,
        intensity_normalisation=args.intensity_normalisation, random_flips=args.random_flips)
    build_network(config.architecture, {**config.arguments, "in_channels": len(channels_of(inputs))})
    return cross_validate(examples, inputs=inputs, target="FLAIR", config=config, **_shared_options(args, argv))


def _dvr_keys(inputs: list[str]) -> list[str]:
    """Modality keys of ``--inputs`` channel names: MTR, and DWI for the DTI maps (canonical order)."""
    from msynth.models.card import MODALITY_KEYS

    keys = {"DWI" if key in _DTI_MAPS else key for key in inputs}
    return sorted(keys, key=MODALITY_KEYS.index)


def _train_dvr(args: argparse.Namespace, argv: list[str]) -> ModelCard:
    """``msynth-train dvr``: a method of thesis 003, on each subject's baseline session, controls spread over folds."""
    from msynth.models.card import channels_of
    from msynth.models.data import find_examples, subject_groups, subjects_of
    from msynth.models.networks import build_network
    from msynth.models.training import cross_validate
    from msynth.models.training.methods import dvr_stage_configs

    keys = _dvr_keys(args.inputs)
    examples = find_examples(args.derivatives, keys, "PET", subjects=args.participant_label, roi=True,
                             sessions="baseline")
    if not examples:
        raise UsageError(f"{args.derivatives}: no subject's baseline session has {' '.join(channels_of(keys))}, a "
                         "Logan DVR map, a brain mask and lesion and NAWM masks (run with -v to see why each was "
                         "skipped)")
    loop = {"max_epochs": args.epochs, "patches_per_session": args.patches_per_session, "seed": args.seed,
            "intensity_normalisation": args.intensity_normalisation}
    sketcher, *refiners = dvr_stage_configs(args.method, refinements=args.refinements, features=args.features,
                                            patch_size=args.patch_size, loop=loop)
    n_in = len(channels_of(keys))
    for k, config in enumerate((sketcher, *refiners)):  # bad sizes fail before any image is read
        stage = config.stage("check", in_channels=n_in + (k > 0), out_channels=1, weights="check.pt")
        build_network(stage.network.architecture, stage.network.arguments)
        if stage.adversarial is not None:
            build_network(stage.adversarial.discriminator.architecture, stage.adversarial.discriminator.arguments)
    groups = subject_groups(args.derivatives, subjects_of(examples))
    options = _shared_options(args, argv)
    options["name"] = args.name or f"dvr-{args.method}_{'-'.join(keys)}"
    return cross_validate(examples, inputs=keys, target="DVR", config=sketcher, refiners=refiners, groups=groups,
                          **options)


def main(argv: list[str] | None = None) -> int:
    """Run ``msynth-train``; return the exit code (0 done, 1 bad input, 2 bad command line)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    logging.captureWarnings(True)
    try:
        _check(args)
        args.derivatives = args.derivatives.absolute()  # the folds read it from pydra's cache folders
        card = _train_flair(args, argv) if args.task == "flair" else _train_dvr(args, argv)
    except (UsageError, FileNotFoundError, ValueError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    except RuntimeError as err:  # a cross-validation fold failed (its report is in the pydra cache)
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    summary = ""
    if card.training.cv:
        mse = sum(f.mse for f in card.training.cv) / len(card.training.cv)
        ssim = sum(f.ssim for f in card.training.cv) / len(card.training.cv)
        summary = f"; cross-validated MSE {mse:.4g}, SSIM {ssim:.3f}"
        lesion = [f.roi_discrepancy["lesion"] for f in card.training.cv
                  if f.roi_discrepancy.get("lesion", math.nan) == f.roi_discrepancy.get("lesion")]  # not NaN
        if lesion:
            summary += f", lesion discrepancy {sum(lesion) / len(lesion):.3g}"
    print(f"{PROG}: wrote {args.out} ({card.name}{summary})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
