"""Participant-level execution: one Nipype workflow per participant, isolated from the others.

Each participant runs in its own workflow so that a failure (bad input, a crashing node) is caught,
reported with its reason and crash files, and does not stop the next participant — a full disk included:
one line names the path and the free space, the participant's partial files are removed, and the next
participant is tried. Outputs are written to the participant's staging folder inside the output directory
(:class:`~msynth.utils.derivatives.Staging`, locked for the run) and linked into place only when the
participant finished cleanly: the derivatives hold whole files, and a participant's new files only once
all of them are made. With ``--stop-on-first-crash`` the first failure ends the run instead, as in fMRIPrep; with
``--clean-workdir`` a published participant's work folder is removed.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import re
import shutil
import subprocess
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nb
from bids import BIDSLayout
from nipype.pipeline import engine as pe

from msynth.config import RunConfig
from msynth.pipelines.participant import init_participant_wf
from msynth.reports.participant import build_participant_report, workflow_methods
from msynth.models.card import read_card
from msynth.models.selection import shipped_models
from msynth.preprocessing.checks import (available_memory_gb, check_dwi, check_input_image, check_memory,
                                         check_pet_timing)
from msynth.segmentation.lesions import check_lesion_mask
from msynth.utils.bids import SessionData, collect_session, report_session
from msynth.utils.derivatives import STAGING_FOLDER, Staging, StagingBusy, atomic_write_text, write_dataset_description
from msynth.utils.lesion_masks import find_lesion_mask
from msynth.utils.plugins import MULTIPROC_PLUGINS
from msynth.utils.progress import MsynthLinearPlugin, MsynthMultiProcPlugin, Progress
from msynth.utils.workdir import WORKFLOWS_FOLDER, clean_participant_workdir, workflow_name

__all__ = ["NO_SPACE", "STAGING_FOLDER", "ParticipantOutcome", "check_inputs", "crash_dir", "error_reason", "execute",
           "memory_budget_gb", "multiproc_arguments", "no_space_reason", "participant_sessions", "rebuild_reports",
           "resolve_device", "run_participant", "run_participant_level", "summarise", "write_report"]

LOGGER = logging.getLogger("msynth.runner")

#: Modalities stored as 4-D series (every other modality is one 3-D volume).
SERIES_KEYS = frozenset({"DWI", "PET"})
#: errno values of a full file system (or a quota or file-size limit reached), in the words of the one-line reason.
NO_SPACE = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file too large"}


@dataclass
class ParticipantOutcome:
    """What happened to one participant."""

    label: str
    ok: bool
    reason: str = ""
    published: list[Path] = field(default_factory=list)
    crash_files: list[Path] = field(default_factory=list)
    #: ``(session label, reason)`` of each session that was left out, e.g. for want of a T1w image.
    skipped: list[tuple[str, str]] = field(default_factory=list)
    #: The methods paragraph of the workflow built for the participant (for its report); empty when none was built.
    methods: str = ""


def participant_sessions(layout: BIDSLayout, label: str, sessions: list[str] | None) -> list[str | None]:
    """The sessions of a participant to process; ``[None]`` for a dataset without sessions."""
    available = sorted(layout.get_sessions(subject=label))
    if not available:
        return [None]
    return [s for s in available if sessions is None or s in sessions]


def crash_dir(config: RunConfig, label: str) -> Path:
    """Where Nipype crash reports of a participant go: ``OUTPUT_DIR/sub-<L>/log/<run id>/``."""
    return config.output_dir / f"sub-{label}" / "log" / config.run_id


def run_participant(config: RunConfig, layout: BIDSLayout, label: str) -> ParticipantOutcome:
    """Build and run the workflow of one participant, then write its visual report; never raises."""
    if not participant_sessions(layout, label, config.sessions):
        LOGGER.info("sub-%s has none of the requested sessions (%s); nothing to do", label, " ".join(config.sessions))
        return ParticipantOutcome(label=label, ok=True)
    try:
        outcome = _run_participant(config, layout, label)
    except StagingBusy as err:  # another process owns this participant's outputs, and its report
        LOGGER.error("sub-%s not processed: %s", label, err)
        return ParticipantOutcome(label=label, ok=False, reason=str(err))
    except Exception as err:  # noqa: BLE001 - isolate the participant whatever went wrong
        reason = error_reason(err, config)
        report = crash_dir(config, label) / "error.txt"
        try:
            atomic_write_text(report, f"sub-{label}: {reason}\n\n{traceback.format_exc()}")
        except OSError:  # a full disk, most likely: the reason says what matters
            LOGGER.error("sub-%s failed: %s (its error report could not be written either)", label, reason)
            return ParticipantOutcome(label=label, ok=False, reason=reason)
        LOGGER.error("sub-%s failed: %s (details in %s)", label, reason, report)
        outcome = ParticipantOutcome(label=label, ok=False, reason=reason, crash_files=[report])
    write_report(config, outcome)
    return outcome


def write_report(config: RunConfig, outcome: ParticipantOutcome) -> Path | None:
    """Write ``OUTPUT_DIR/sub-<L>.html`` from what OUTPUT_DIR holds now, with the run's failure and skipped sessions.

    The report is quality control, not a result: one that cannot be made is a warning and changes no exit code.
    """
    try:
        path = build_participant_report(config.output_dir, outcome.label, methods=outcome.methods,
                                        failure=None if outcome.ok else outcome.reason, skipped=outcome.skipped)
    except Exception as err:  # noqa: BLE001 - a report must never cost the participant its outputs
        LOGGER.warning("sub-%s: the visual report could not be made (%s: %s); the outputs are not affected — "
                       "rebuild it with --reports-only", outcome.label, type(err).__name__, err)
        return None
    LOGGER.info("sub-%s: visual report %s", outcome.label, path)
    return path


def rebuild_reports(config: RunConfig, layout: BIDSLayout) -> int:
    """``--reports-only``: rebuild every requested participant's report from OUTPUT_DIR; runs no workflow.

    The methods paragraph is that of the workflow these options would build. Returns 1 when a report could not be
    made, else 0.
    """
    made = 0
    for label in config.participants:
        sessions, skipped, methods = [], [], ""
        try:
            sessions, skipped = _collect_sessions(config, layout, label, check=False)
            if sessions:
                methods = workflow_methods(_participant_workflow(config, sessions, config.output_dir, label))
        except Exception as err:  # noqa: BLE001 - the report says what exists even when the inputs changed since
            LOGGER.warning("sub-%s: no methods paragraph, the workflow cannot be built from the inputs: %s", label, err)
        outcome = ParticipantOutcome(label=label, ok=True, skipped=skipped, methods=methods)
        made += write_report(config, outcome) is not None
    LOGGER.info("reports rebuilt for %d of %d participants", made, len(config.participants))
    return 0 if made == len(config.participants) else 1


def error_reason(err: BaseException, config: RunConfig) -> str:
    """One line for an exception: a full file system is named with its path and the free space left."""
    if isinstance(err, OSError) and err.errno in NO_SPACE:
        return no_space_reason(err.errno, _path_written(err), config)
    return str(err) or type(err).__name__


def _path_written(err: BaseException | None) -> str | None:
    """The file an OSError names; else the one named by the errors it was handling (Nipype failing to write the
    crash report of a node that met the full disk first)."""
    while err is not None:
        if isinstance(err, OSError) and err.filename:
            return str(err.filename)
        match = _ERRNO_LINE.search(str(err).strip().rsplit("\n", 1)[-1])
        if match and match["path"]:
            return match["path"]
        err = err.__cause__ or err.__context__
    return None


def no_space_reason(code: int, path: str | None, config: RunConfig) -> str:
    """What a full file system stopped, the free space of the two folders msynth writes to, and what to do."""
    free = ", ".join(f"{what} {folder}: {_free_space(folder)} free"
                     for what, folder in (("OUTPUT_DIR", config.output_dir), ("work directory", config.work_dir)))
    where = f" writing {path}" if path else ""
    return f"{NO_SPACE[code]}{where} ({free}) — free some space, or choose folders on a larger file system, and rerun"


def _free_space(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "unknown"
    return f"{free / 2**30:.1f} GiB" if free >= 2**30 else f"{free / 2**20:.0f} MiB"


def check_inputs(data: SessionData, *, mem_gb: float | None = None, model_voxel_sizes: Sequence[float] = ()) -> None:
    """Check every image of a session before any work; raises InputImageError naming the file and the cause.

    ``mem_gb`` is the memory budget (``--mem-gb``; None: what this job may use) that the session's estimated peak,
    on its largest grid (the T1w, or its field of view at a model's ``model_voxel_sizes``), must fit in.
    """
    images = {key: check_input_image(path, label=f"{data.label}: {key}", expect_ndim=4 if key in SERIES_KEYS else 3)
              for key, path in data.files.items()}
    check_memory(images["T1w"], data.files["T1w"], label=f"{data.label}: T1w", model_voxel_sizes=model_voxel_sizes,
                 budget_gb=mem_gb)
    if "DWI" in data.files:
        check_dwi(data.files["DWI"], *data.gradients, label=f"{data.label}: DWI")
    if "PET" in data.files:
        pet = Path(data.files["PET"])
        sidecar = pet.with_name(pet.name.split(".")[0] + ".json")  # the file to fix (BIDS inheritance aside)
        check_pet_timing(data.metadata["PET"], nb.load(pet).shape[3], label=f"{data.label}: PET",
                         source=sidecar if sidecar.is_file() else pet)
    if data.lesion_mask is not None:
        check_lesion_mask(data.lesion_mask.mask, data.lesion_mask.image)


#: Why a session without a T1w image is left out.
NO_T1W = ("no T1w image, and every stage needs the T1w reference — check the dataset or the T1w query of "
          "--bids-filter-file")


def _collect_sessions(config: RunConfig, layout: BIDSLayout, label: str, *,
                      check: bool = True) -> tuple[list[SessionData], list[tuple[str, str]]]:
    """The participant's requested sessions with a T1w, each checked (``check``) before any work, and the
    ``(session, reason)`` of those left out."""
    sessions, skipped = [], []
    cards = [read_card(model) for model in config.models or shipped_models()] if check else []
    model_voxel_sizes = [card.voxel_size_mm for card in cards if card.voxel_size_mm]
    for session in participant_sessions(layout, label, config.sessions):
        data = collect_session(layout, label, session, config.queries)
        if config.lesion_masks is not None:
            data.lesion_mask = find_lesion_mask(config.lesion_masks, data)
        if check:
            LOGGER.info(report_session(data))
        if "T1w" not in data.files:
            skipped.append((session, NO_T1W))
            continue
        if check:
            check_inputs(data, mem_gb=config.mem_gb, model_voxel_sizes=model_voxel_sizes)
        sessions.append(data)
    return sessions, skipped


def _participant_workflow(config: RunConfig, sessions: list[SessionData], output_dir: Path, label: str) -> pe.Workflow:
    return init_participant_wf(
        sessions=sessions,
        bids_dir=config.bids_dir,
        output_dir=output_dir,
        omp_nthreads=config.omp_nthreads,
        device=config.device,
        models=config.models,
        saliency=config.saliency,
        continue_on_qc_failure=config.continue_on_qc_failure,
        pet_psf_fwhm_mm=config.pet_psf_fwhm_mm,
        pet_pvc_iterations=config.pet_pvc_iterations,
        name=workflow_name(label),
    )


def _run_participant(config: RunConfig, layout: BIDSLayout, label: str) -> ParticipantOutcome:
    sessions, skipped = _collect_sessions(config, layout, label)
    for session, reason in skipped:
        LOGGER.warning("sub-%s%s skipped: %s", label, f" ses-{session}" if session else "", reason)
    if not sessions:
        raise ValueError("no session with a T1w image — check the dataset or the T1w query of --bids-filter-file")

    with Staging(config.output_dir, f"sub-{label}", config.run_id) as staging:
        workflow = _participant_workflow(config, sessions, staging.folder, label)
        methods = workflow_methods(workflow)
        reason, crash_files = execute(workflow, config=config, crashes=crash_dir(config, label), label=f"sub-{label}")
        publication = None if reason is not None else staging.publish()
        if publication is not None and config.clean_workdir:  # under the participant's lock: no run is using it
            clean_participant_workdir(config.work_dir, label)
    if publication is None:  # logged once the staging folder is gone: on a full disk, that made room for the log
        LOGGER.error("sub-%s failed: %s (crash reports in %s)", label, reason, crash_dir(config, label))
        return ParticipantOutcome(label=label, ok=False, reason=reason, crash_files=crash_files, skipped=skipped,
                                  methods=methods)
    LOGGER.info("sub-%s finished: %d files in %s, %d of them new or changed", label,
                len(publication.written) + len(publication.unchanged), config.output_dir, len(publication.written))
    return ParticipantOutcome(label=label, ok=True, published=publication.written, skipped=skipped, methods=methods)


def execute(workflow: pe.Workflow, *, config: RunConfig, crashes: Path, label: str) -> tuple[str | None, list[Path]]:
    """Run a workflow under ``WORK_DIR/msynth_wf`` with text crash reports in ``crashes``, its progress shown on the
    console under ``label`` (:class:`~msynth.utils.progress.Progress`; not with a ``--use-plugin`` plugin).

    msynth's MultiProc runs ``config.nprocs`` nodes at once at most, and only as many as the nodes' ``mem_gb``
    estimates fit in :func:`memory_budget_gb`. With ``config.stop_on_first_crash`` the workflow stops at its first
    crashed node (nodes already running finish).

    Returns None and no files when it finished, else the reason (the crashed nodes and their last error line, nodes
    that failed alike named together) and the crash reports. Nipype's own crash messages, tracebacks included, stay
    out of the console (:mod:`msynth.utils.logs`; they are in the crash reports and the log file): the caller's one
    line says what failed.
    """
    workflow.base_dir = str(config.work_dir / WORKFLOWS_FOLDER)
    workflow.config["execution"].update(
        {
            "crashdump_dir": str(crashes),
            "crashfile_format": "txt",
            "stop_on_first_crash": config.stop_on_first_crash,
            "remove_unnecessary_outputs": False,
        }
    )
    progress = None if config.plugin else Progress(label)
    try:
        workflow.run(**_plugin(config, progress, label))
    except RuntimeError as err:
        files = sorted(crashes.glob("crash-*.txt"))
        by_message: dict[str, list[str]] = {}
        for node, message in (_crash_reason(path, config) for path in files):
            by_message.setdefault(message, []).append(node)
        reasons = [f"{', '.join(nodes)}: {message}" for message, nodes in by_message.items()]
        return "; ".join(reasons) or f"the workflow did not finish ({err})", files
    finally:
        if progress is not None:
            progress.close()
    return None, []


def memory_budget_gb(config: RunConfig) -> float:
    """The memory the nodes running at once may use (GiB): ``--mem``, else what this job may use now (the cgroup
    limit of a container or SLURM job, else the machine's available memory), never Nipype's default of 90 % of the
    machine's memory."""
    return config.mem_gb if config.mem_gb is not None else available_memory_gb()


def _plugin(config: RunConfig, progress: Progress | None, label: str) -> dict:
    """``Workflow.run``'s plugin arguments: the ``--use-plugin`` plugin, else msynth's Linear or MultiProc."""
    if config.plugin is not None:
        plugin_args = dict(config.plugin_args)
        if config.plugin in MULTIPROC_PLUGINS:  # the file's own n_procs and memory_gb win
            plugin_args = multiproc_arguments(config.nprocs, memory_gb=memory_budget_gb(config)) | plugin_args
        LOGGER.info("%s: Nipype plugin %s (--use-plugin %s)", label, config.plugin, config.use_plugin)
        return {"plugin": config.plugin, "plugin_args": plugin_args}
    if config.nprocs == 1:
        return {"plugin": MsynthLinearPlugin({}, progress=progress)}
    arguments = multiproc_arguments(config.nprocs, memory_gb=memory_budget_gb(config))
    LOGGER.debug("%s: MultiProc, %d processes, %.1f GiB", label, arguments["n_procs"], arguments["memory_gb"])
    return {"plugin": MsynthMultiProcPlugin(arguments, progress=progress)}


def multiproc_arguments(n_procs: int, *, memory_gb: float | None = None) -> dict:
    """Arguments of Nipype's MultiProc plugin.

    ``memory_gb`` caps the nodes that run at once: their ``mem_gb`` estimates must fit in it together; a node
    estimated above it runs alone (``raise_insufficient`` is off). None leaves Nipype's default, 90 % of the
    machine's memory, which :func:`execute` never does (:func:`memory_budget_gb`).

    Workers are forked. Once torch has run in this process (msynth used as a library after training or inference, as
    in the test suite), forked workers can hang on its OpenMP thread pool; the workers then start from a fresh
    forkserver process instead. Either way each worker logs like this process (:mod:`msynth.utils.logs`).
    """
    arguments = {"n_procs": n_procs, "raise_insufficient": False}
    if memory_gb is not None:
        arguments["memory_gb"] = memory_gb
    if "torch" in sys.modules:
        LOGGER.debug("torch is loaded in this process: Nipype workers start from a forkserver")
        arguments["mp_context"] = "forkserver"
    return arguments


#: The last line of a crash report raised by msynth's own errors (an input or a registration QC failure): their
#: message is a whole sentence naming the file, shown without the exception's module path.
_OWN_ERROR = re.compile(r"^msynth(?:\.\w+)+Error: (?P<message>.+)$")
#: An OSError's last traceback line in a crash report: ``OSError: [Errno 28] No space left on device: '/path'``.
_ERRNO_LINE = re.compile(r"\[Errno (?P<code>\d+)\][^:]*(?::\s*'(?P<path>[^']*)')?")


def _crash_reason(crash_file: Path, config: RunConfig) -> tuple[str, str]:
    """The node name and the last line of the traceback of a Nipype text crash report.

    A full disk is put in words, and the file being written goes with the node name, so that the nodes that met
    the full disk share one message.
    """
    lines = [line.strip() for line in crash_file.read_text(errors="replace").splitlines() if line.strip()]
    node = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Node:")), crash_file.name)
    last = lines[-1] if lines else "no message"
    own = _OWN_ERROR.match(last)
    last = own["message"] if own else last
    match = _ERRNO_LINE.search(last)
    if not match or int(match["code"]) not in NO_SPACE:
        return node, last
    where = f"{node} writing {match['path']}" if match["path"] else node
    return where, no_space_reason(int(match["code"]), None, config)


def summarise(outcomes: list[ParticipantOutcome]) -> str:
    """A closing summary: who finished, who failed and why, and each session left out and why."""
    failed = [o for o in outcomes if not o.ok]
    skipped = [(o.label, session, reason) for o in outcomes for session, reason in o.skipped]
    head = f"participant level: {len(outcomes) - len(failed)} of {len(outcomes)} participants finished"
    if skipped:
        head += f"; {len(skipped)} session{'s' * (len(skipped) > 1)} skipped"
    lines = [head]
    for outcome in failed:
        where = f" — see {outcome.crash_files[0].parent}" if outcome.crash_files else ""
        lines.append(f"  sub-{outcome.label} FAILED: {outcome.reason}{where}")
    lines += [f"  sub-{label} ses-{session} SKIPPED: {reason}" for label, session, reason in skipped]
    return "\n".join(lines)


def resolve_device(requested: str) -> str:
    """The device the nodes get: ``cuda`` without a CUDA GPU falls back to ``cpu``, with one warning for the run.

    torch is asked in a child process: imported here, it would make the MultiProc workers start from a forkserver
    (:func:`multiproc_arguments`), slower to start than forked ones.
    """
    if requested != "cuda":
        return requested
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True, check=False)
    if probe.stdout.strip() == "True":
        return requested
    LOGGER.warning("--device cuda: torch sees no CUDA GPU here; the networks run on the CPU instead (slower) — "
                   "pass --device auto to use a GPU only where there is one")
    return "cpu"


def run_participant_level(config: RunConfig, layout: BIDSLayout) -> int:
    """Write the derivatives' description, run every participant, print the summary; return the exit code.

    The exit code is 1 when a participant failed or was left to another process, else 0. With
    ``--stop-on-first-crash`` the first participant that fails ends the run: those after it are not started and are
    named in the summary. A session left out for want of its inputs (no T1w) is named in the summary but does not
    change the exit code, as fMRIPrep and MRIQC warn of the data they cannot use and exit 0: rerunning would not
    help, and an HPC job would fail forever on a dataset with, say, a PET-only session. A participant with no usable
    session fails (exit 1), as in fMRIPrep.
    """
    try:
        write_dataset_description(config.output_dir, config.bids_dir, config.lesion_masks)
    except OSError as err:
        LOGGER.error("participant level not started: the dataset description cannot be written: %s",
                     error_reason(err, config))
        return 1
    config = dataclasses.replace(config, device=resolve_device(config.device))
    if config.plugin is None and config.nprocs > 1:
        LOGGER.info("Nipype runs at most %d steps at once, as many as their estimates fit in %.1f GiB (%s)",
                    config.nprocs, memory_budget_gb(config),
                    "--mem" if config.mem_gb is not None else "the memory available to this job")
    outcomes = []
    for label in config.participants:
        outcomes.append(run_participant(config, layout, label))
        if config.stop_on_first_crash and not outcomes[-1].ok:
            outcomes += [ParticipantOutcome(label=rest, ok=False, reason=f"not started: sub-{label} failed and "
                                            "--stop-on-first-crash stops the run")
                         for rest in config.participants[len(outcomes):]]
            break
    succeeded = all(outcome.ok for outcome in outcomes)
    LOGGER.log(logging.INFO if succeeded else logging.ERROR, summarise(outcomes))
    return 0 if succeeded else 1
