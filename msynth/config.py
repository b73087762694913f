"""The resolved configuration of one msynth run, and the input checks that produce it."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import msynth
from msynth.models.selection import resolve_model
from msynth.preprocessing.pvc import PVC_ITERATIONS
from msynth.utils.bids import DEFAULT_QUERIES, load_filter_file
from msynth.utils.derivatives import atomic_write_text
from msynth.utils.errors import UsageError
from msynth.utils.layout_index import INDEX_FILE
from msynth.utils.plugins import load_plugin_file

LOGGER = logging.getLogger("msynth.config")


@dataclass
class RunConfig:
    """Everything a run needs, resolved from the command line and checked against the dataset."""

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    work_dir: Path
    participants: list[str]
    sessions: list[str] | None
    nprocs: int
    omp_nthreads: int
    device: str
    skip_bids_validation: bool
    verbose: int
    bids_filter_file: Path | None = None
    lesion_masks: Path | None = None
    models: list[Path] = field(default_factory=list)
    saliency: bool = False
    mem_gb: float | None = None
    continue_on_qc_failure: bool = False
    pet_psf_fwhm_mm: float | None = None
    pet_pvc_iterations: int = PVC_ITERATIONS
    reports_only: bool = False
    stop_on_first_crash: bool = False
    clean_workdir: bool = False
    bids_database_dir: Path | None = None
    #: ``--use-plugin`` file, and the Nipype plugin and arguments it names (None: MultiProc, or Linear for one process).
    use_plugin: Path | None = None
    plugin: str | None = None
    plugin_args: dict = field(default_factory=dict)
    queries: dict[str, dict[str, object]] = field(default_factory=lambda: dict(DEFAULT_QUERIES))
    run_id: str = ""
    version: str = msynth.__version__

    def to_json(self) -> str:
        """The configuration as JSON (paths as strings, pybids query sentinels by name)."""
        data = asdict(self)
        data["command"] = sys.argv
        return json.dumps(data, indent=2, default=_json_default) + "\n"

    def write(self) -> Path:
        """Record the configuration in ``OUTPUT_DIR/logs/`` (every run, whatever its level)."""
        path = self.output_dir / "logs" / f"msynth-{self.run_id}_config.json"
        atomic_write_text(path, self.to_json())
        return path


def _json_default(value: object) -> str:
    return value.name if hasattr(value, "name") and not isinstance(value, Path) else str(value)


def new_run_id() -> str:
    """A sortable, unique run identifier: UTC time and a short random suffix."""
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}_{uuid.uuid4().hex[:8]}"


def _is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_paths(bids_dir: Path, output_dir: Path, work_dir: Path) -> tuple[Path, Path, Path]:
    """Check the three folders and return them absolute; raise UsageError on the first problem."""
    bids_dir, output_dir, work_dir = (p.expanduser().resolve() for p in (bids_dir, output_dir, work_dir))
    if not bids_dir.is_dir():
        raise UsageError(f"BIDS directory {bids_dir} does not exist — pass the root folder of a BIDS dataset")
    if not (bids_dir / "dataset_description.json").is_file():
        raise UsageError(
            f"{bids_dir} is not a BIDS dataset: it has no dataset_description.json — pass the dataset's root folder"
        )
    if _is_within(output_dir, bids_dir):
        raise UsageError(
            f"output directory {output_dir} is the input BIDS dataset {bids_dir} or lies inside it; "
            "msynth never writes into its input — choose a folder outside it"
        )
    if _is_within(work_dir, bids_dir):
        raise UsageError(
            f"work directory {work_dir} lies inside the input BIDS dataset {bids_dir}; "
            "msynth never writes into its input — pass -w with a folder outside it"
        )
    check_writable_folder(output_dir, what="output directory", remedy="choose another OUTPUT_DIR")
    check_writable_folder(work_dir, what="work directory", remedy="pass -w with another folder")
    return bids_dir, output_dir, work_dir


#: Why a folder cannot be written, by errno, in the words of the message.
_WRITE_ERRORS = {
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
}


def check_writable_folder(folder: Path, *, what: str, remedy: str) -> None:
    """Raise UsageError unless ``folder`` is, or can be made, a folder msynth can write into.

    Nothing is created: a missing folder is judged by its nearest existing parent (msynth creates the folder when it
    starts writing, after the other checks). Writability is tested by creating and removing an empty temporary file,
    which, unlike the permission bits, also sees a read-only file system and access control lists.

    Parameters
    ----------
    folder
        Absolute path of the output or work directory.
    what
        Its name in the message, e.g. ``"output directory"``.
    remedy
        What to do, e.g. ``"choose another OUTPUT_DIR"``.

    Raises
    ------
    UsageError
        One line naming the path and the cause: a file where a folder should be, or a folder that cannot be written.
    """
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{what} {folder} exists and is a file, not a folder — remove it or {remedy}")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{what} {folder} cannot be created: {existing} is a file, not a folder — {remedy}")
    try:
        handle, probe = tempfile.mkstemp(prefix=".msynth-write-test-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        cause = _WRITE_ERRORS.get(error.errno, error.strerror or type(error).__name__)
        where = f"{folder} is not writable" if existing == folder else f"{folder} cannot be created in {existing}"
        raise UsageError(f"{what} {where} ({cause}) — {remedy}") from None


def check_lesion_masks(lesion_masks: Path | None) -> Path | None:
    """The ``--lesion-masks`` folder, absolute, after checking it is a derivatives dataset with lesion masks."""
    if lesion_masks is None:
        return None
    lesion_masks = lesion_masks.expanduser().resolve()
    if not lesion_masks.is_dir():
        raise UsageError(f"--lesion-masks {lesion_masks} does not exist — pass the root folder of a BIDS-Derivatives "
                         "dataset of *_label-lesion_mask.nii.gz files")
    if not any(lesion_masks.glob("sub-*/**/*_label-lesion_mask.nii*")):
        raise UsageError(f"--lesion-masks {lesion_masks} holds no sub-*/[ses-*/]anat/*_label-lesion_mask.nii.gz file "
                         "— check the folder and the file names")
    return lesion_masks


def check_database_dir(database_dir: Path | None, bids_dir: Path) -> Path | None:
    """The ``--bids-database-dir`` folder, absolute: one holding an index (read only) or one msynth can write into."""
    if database_dir is None:
        return None
    database_dir = database_dir.expanduser().resolve()
    if _is_within(database_dir, bids_dir):
        raise UsageError(f"--bids-database-dir {database_dir} lies inside the input BIDS dataset {bids_dir}; msynth "
                         "never writes into its input — pass a folder outside it")
    if (database_dir / INDEX_FILE).is_file():
        return database_dir
    check_writable_folder(database_dir, what="--bids-database-dir", remedy="pass another folder")
    return database_dir


def check_plugin(path: Path | None) -> tuple[Path | None, str | None, dict]:
    """The ``--use-plugin`` file, absolute, and the plugin and arguments it names (:func:`load_plugin_file`)."""
    if path is None:
        return None, None, {}
    path = path.expanduser().resolve()
    return path, *load_plugin_file(path)


def check_models(models: list[str] | None) -> list[Path]:
    """The ``--model`` values as model folders (none given: the shipped models are chosen from per session)."""
    try:
        return [resolve_model(model) for model in models or []]
    except ValueError as error:
        raise UsageError(str(error)) from None


def dataset_labels(bids_dir: Path, kind: str) -> list[str]:
    """Participant labels (``sub-*`` folders) or session labels (``sub-*/ses-*`` folders) of a dataset.

    Read from the folder names, so the check works before pybids indexes (and could choke on) the files.
    """
    pattern = "sub-*" if kind == "participant" else "sub-*/ses-*"
    prefix = "sub-" if kind == "participant" else "ses-"
    return sorted({p.name[len(prefix):] for p in bids_dir.glob(pattern) if p.is_dir()})


def check_labels(bids_dir: Path, kind: str, requested: list[str] | None) -> list[str]:
    """Return the requested labels (all when None) after checking each exists in the dataset."""
    available = dataset_labels(bids_dir, kind)
    if requested is None:
        return available
    missing = [label for label in dict.fromkeys(requested) if label not in available]
    if missing:
        shown = ", ".join(available[:20]) + (" …" if len(available) > 20 else "") if available else "none"
        raise UsageError(
            f"{kind} label(s) {', '.join(missing)} not found in {bids_dir} (it has: {shown}) — "
            f"check --{kind}-label"
        )
    return list(dict.fromkeys(requested))


def _omp_nthreads(requested: int, nprocs: int) -> int:
    """Threads per network node: the request capped at nprocs (a node asking for more could never be scheduled)."""
    if requested > nprocs:
        LOGGER.warning("--omp-nthreads %d exceeds --nprocs %d; using %d threads per node", requested, nprocs, nprocs)
    return min(requested, nprocs)


def resolve_config(args: argparse.Namespace) -> RunConfig:
    """Check the command line against the file system and the dataset, before any work."""
    if args.reports_only and args.analysis_level != "participant":
        raise UsageError("--reports-only rebuilds the participant reports; the group report is rebuilt by running "
                         "the group level again, which reads the participant outputs and recomputes only the tables")
    bids_dir, output_dir, work_dir = check_paths(args.bids_dir, args.output_dir, args.work_dir)
    queries = load_filter_file(args.bids_filter_file)
    participants = check_labels(bids_dir, "participant", args.participant_label)
    sessions = check_labels(bids_dir, "session", args.session_label) if args.session_label else None
    use_plugin, plugin, plugin_args = check_plugin(args.use_plugin)
    return RunConfig(
        bids_dir=bids_dir,
        output_dir=output_dir,
        analysis_level=args.analysis_level,
        work_dir=work_dir,
        participants=participants,
        sessions=sessions,
        nprocs=args.nprocs,
        omp_nthreads=_omp_nthreads(args.omp_nthreads, args.nprocs),
        device=args.device,
        skip_bids_validation=args.skip_bids_validation,
        verbose=args.verbose,
        bids_filter_file=args.bids_filter_file.resolve() if args.bids_filter_file else None,
        lesion_masks=check_lesion_masks(args.lesion_masks),
        models=check_models(args.models),
        saliency=args.saliency,
        mem_gb=args.mem_gb,
        continue_on_qc_failure=args.continue_on_qc_failure,
        pet_psf_fwhm_mm=args.pet_psf_fwhm,
        pet_pvc_iterations=args.pet_pvc_iterations,
        reports_only=args.reports_only,
        stop_on_first_crash=args.stop_on_first_crash,
        clean_workdir=args.clean_workdir,
        bids_database_dir=check_database_dir(args.bids_database_dir, bids_dir),
        use_plugin=use_plugin,
        plugin=plugin,
        plugin_args=plugin_args,
        queries=queries,
        run_id=new_run_id(),
    )
