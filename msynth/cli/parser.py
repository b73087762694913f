"""Command-line parser of the ``msynth`` BIDS-App (BIDS-Apps convention, NiPreps habits)."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import msynth
from msynth.preprocessing.pvc import PVC_ITERATIONS


def _label(value: str) -> str:
    """Strip an optional ``sub-``/``ses-`` prefix so both spellings are accepted."""
    for prefix in ("sub-", "ses-"):
        if value.startswith(prefix):
            return value[len(prefix):]
    return value


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return number


#: A memory amount: a number and an optional binary unit (``16G``, ``16000M``, ``16GB``, ``1.5T``).
_MEMORY = re.compile(r"^(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?:(?P<unit>[KMGT])i?B?)?$", re.IGNORECASE)
_UNIT_GB = {"K": 2**-20, "M": 2**-10, "G": 1.0, "T": 2**10}
#: A bare number from this on is refused as ambiguous: fMRIPrep's ``--mem`` reads it in megabytes.
_AMBIGUOUS_GB = 1024


def _memory(value: str, *, unit: str) -> float:
    """A memory amount in GiB; a bare number is in ``unit`` (``"G"`` or ``"M"``), a suffix (K, M, G, T) overrides it."""
    match = _MEMORY.match(value.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a memory amount: {value!r} (e.g. 16, 16G, 16000M)")
    number = float(match["number"])
    if unit == "G" and match["unit"] is None and number >= _AMBIGUOUS_GB:
        raise argparse.ArgumentTypeError(
            f"{value} GB is more than any job has: a bare number is in GB here (fMRIPrep's --mem is in MB) — "
            f"write {value}M for megabytes, or add a unit (G, T)")
    gigabytes = number * _UNIT_GB[(match["unit"] or unit).upper()]
    if not gigabytes > 0:
        raise argparse.ArgumentTypeError(f"must be a positive amount, got {value}")
    return gigabytes


def _gigabytes(value: str) -> float:
    return _memory(value, unit="G")


def _megabytes(value: str) -> float:
    return _memory(value, unit="M")


def build_parser() -> argparse.ArgumentParser:
    """The ``msynth`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="msynth",
        description=(
            "msynth: synthesise the FLAIR and [11C]PIB myelin (DVR) maps a multiple sclerosis cohort lacks, "
            "from the MRI it has, and measure demyelination and remyelination per patient."
        ),
        epilog="Outputs are BIDS-Derivatives; see the README and docs/ for what each stage writes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("bids_dir", type=Path, help="root folder of a BIDS dataset (read only, never written to)")
    parser.add_argument(
        "output_dir", type=Path, help="folder for the BIDS-Derivatives outputs (must not be inside bids_dir)"
    )
    parser.add_argument(
        "analysis_level",
        choices=["participant", "group"],
        help="'participant' processes each subject; 'group' builds the control reference and cohort statistics",
    )
    parser.add_argument("--version", action="version", version=f"msynth {msynth.__version__}")

    selection = parser.add_argument_group("Selecting data")
    selection.add_argument(
        "--participant-label", "--participant_label",
        dest="participant_label", nargs="+", type=_label, metavar="LABEL",
        help="participant labels to process, with or without 'sub-' (default: all)",
    )
    selection.add_argument(
        "--session-label", "--session_label",
        dest="session_label", nargs="+", type=_label, metavar="LABEL",
        help="session labels to process, with or without 'ses-' (default: all)",
    )
    selection.add_argument(
        "--bids-filter-file", type=Path, metavar="FILE",
        help="JSON file overriding the pybids query of a modality key "
        '(T1w T2w PDw FLAIR T1SE DIR MTR DWI PET), e.g. {"T1w": {"acquisition": "MPRAGE"}}; '
        'null means the entity must be absent, "*" any value',
    )
    selection.add_argument(
        "--lesion-masks", type=Path, metavar="DERIV_DIR",
        help="BIDS-Derivatives dataset of lesion masks (sub-<L>/[ses-<S>/]anat/*_label-lesion_mask.nii.gz) drawn on "
        "any of a session's images (named by SpatialReference in the sidecar, a space-<key> entity, or the grid); "
        "sessions without one get the automatic lesion mask when they have a FLAIR",
    )
    selection.add_argument(
        "--skip-bids-validation", "--skip_bids_validation",
        dest="skip_bids_validation", action="store_true",
        help="do not run the BIDS validator (bids-validator-deno) on the input",
    )

    models = parser.add_argument_group("Synthesis")
    models.add_argument(
        "--model", dest="models", action="append", metavar="NAME_OR_DIR",
        help="synthesis model to use: a shipped model's name or a folder written by msynth-train (repeatable); "
        "default: among the shipped models, per session the one whose inputs are all present, most inputs first",
    )
    models.add_argument(
        "--saliency", action="store_true",
        help="also write the P3S saliency map of each input of the synthesis model (paper 001, §2.2) and, for "
             "CF-SAGAN models, the attention map of each attention layer (thesis 003, §4.2.2)",
    )

    pet = parser.add_argument_group("PET")
    pet.add_argument(
        "--pet-psf-fwhm", type=_positive_float, default=None, metavar="MM",
        help="the PET scanner's reconstructed resolution (FWHM, mm, isotropic); when given, the Logan DVR is also "
        "corrected for partial volume (…_desc-pvc_model-Logan_meas-DVR_mimap; the group level then analyses it as "
        "the source 'acquired-pvc'); without it, no correction is made",
    )
    pet.add_argument(
        "--pet-pvc-iterations", type=_positive_int, default=PVC_ITERATIONS, metavar="N",
        help="Van Cittert iterations of the partial-volume correction: more sharpen the lesions and amplify the noise "
        "(see docs/preprocessing.md)",
    )

    resources = parser.add_argument_group("Resources")
    resources.add_argument(
        "-w", "--work-dir", type=Path, default=Path("work"),
        help="folder for intermediate results; reusing it makes a rerun recompute nothing",
    )
    resources.add_argument(
        "--nprocs", "--n-cpus", dest="nprocs", type=_positive_int, default=len(os.sched_getaffinity(0)),
        help="processes run in parallel (sessions and modalities); default: the CPUs this job may use",
    )
    resources.add_argument(
        "--omp-nthreads", type=_positive_int, default=1,
        help="torch threads of each neural-network step on the CPU, at most nprocs: more is faster, but the "
        "synthetic maps then change in their last bits (ANTs steps always run on one thread, so that the same "
        "inputs give the same bytes)",
    )
    resources.add_argument(
        "--mem", "--mem-gb", "--mem_gb", dest="mem_gb", type=_gigabytes, default=None, metavar="GB",
        help="memory this run may use, in GB unless a unit is given (16, 16G, 16000M): a session whose estimated "
        "peak exceeds it is refused before any work, and Nipype runs at once only the steps whose estimates fit in "
        "it (a step estimated above it runs alone); when not given: the memory available to this job, i.e. the "
        "cgroup limit of a container or SLURM job, else the machine's available memory",
    )
    resources.add_argument(
        "--mem-mb", "--mem_mb", dest="mem_gb", type=_megabytes, default=None,
        metavar="MB", help="--mem in megabytes (fMRIPrep's spelling)",
    )
    resources.add_argument(
        "--use-plugin", "--use_plugin", dest="use_plugin", type=Path, default=None, metavar="FILE",
        help="YAML or JSON file naming a Nipype plugin and its arguments, {plugin: SLURM, plugin_args: {sbatch_args: "
        "...}}, to run the workflows with instead of msynth's own MultiProc (Linear with --nprocs 1): msynth's "
        "progress lines are then lost, crash reports go where they always go; plugins that submit the "
        "graph and return before it ran (SLURMGraph, SGEGraph, PBSGraph, CondorDAGMan, SomaFlow) are refused: "
        "msynth publishes a participant's outputs once its steps have finished",
    )
    resources.add_argument(
        "--bids-database-dir", "--bids_database_dir", dest="bids_database_dir", type=Path, default=None,
        metavar="DIR",
        help="keep pybids' index of BIDS_DIR in DIR: the first run builds it, later runs (SLURM array tasks) load it "
        "without indexing again; a run whose participants changed since is refused — delete DIR to rebuild it",
    )
    resources.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto",
        help="where neural networks run: 'auto' uses a CUDA GPU when present, else the CPU",
    )

    other = parser.add_argument_group("Other")
    other.add_argument(
        "--continue-on-qc-failure", action="store_true",
        help="when a registration fails its quality check, keep going: the score is flagged in the log and the "
        "sidecar instead of failing the session",
    )
    other.add_argument(
        "--stop-on-first-crash", "--stop_on_first_crash", dest="stop_on_first_crash", action="store_true",
        help="stop at the first failure, as fMRIPrep does: the failing participant's workflow stops at its first "
        "crashed step, and the participants after it are not started (without it, a participant's other steps and "
        "the next participants still run)",
    )
    other.add_argument(
        "--clean-workdir", "--clean_workdir", dest="clean_workdir", action="store_true",
        help="participant level: remove a participant's work folder (WORK_DIR/msynth_wf/sub_<L>_wf) once its "
        "outputs are published; a failed participant keeps it, to resume from",
    )
    other.add_argument(
        "--reports-only", action="store_true",
        help="participant level: rebuild each participant's visual report (OUTPUT_DIR/sub-<L>.html and "
        "sub-<L>/figures/) from the outputs already in OUTPUT_DIR, and run nothing else",
    )
    other.add_argument(
        "-v", "--verbose", dest="verbose", action="count", default=0,
        help="more output on the console: -v adds Nipype's node log and each step's messages, -vv debugging "
        "detail; everything is always in OUTPUT_DIR/logs/msynth-<run id>.log",
    )
    return parser
