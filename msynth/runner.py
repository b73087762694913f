"""Participant-level execution: one Nipype workflow per participant, isolated from the others.

Each participant runs in its own workflow so that a failure (bad input, a crashing node) is caught,
reported with its reason and crash files, and does not stop the next participant. Outputs are written
to a staging folder inside the output directory and moved into place only when the participant
finished cleanly: the derivatives hold whole participants or nothing new.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nb
from bids import BIDSLayout
from nipype.pipeline import engine as pe

from msynth.config import RunConfig
from msynth.pipelines.participant import init_participant_wf
from msynth.preprocessing.checks import check_dwi, check_input_image, check_pet_timing
from msynth.segmentation.lesions import check_lesion_mask
from msynth.utils.bids import SessionData, collect_session, report_session
from msynth.utils.derivatives import atomic_write_text, publish_staged, write_dataset_description
from msynth.utils.lesion_masks import find_lesion_mask

LOGGER = logging.getLogger("msynth.runner")

STAGING_FOLDER = ".msynth-staging"
#: Modalities stored as 4-D series (every other modality is one 3-D volume).
SERIES_KEYS = frozenset({"DWI", "PET"})


@dataclass
class ParticipantOutcome:
    """What happened to one participant."""

    label: str
    ok: bool
    reason: str = ""
    published: list[Path] = field(default_factory=list)
    crash_files: list[Path] = field(default_factory=list)


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
    """Build and run the workflow of one participant; never raises."""
    try:
        return _run_participant(config, layout, label)
    except Exception as err:  # noqa: BLE001 - isolate the participant whatever went wrong
        reason = str(err) or type(err).__name__
        report = crash_dir(config, label) / "error.txt"
        atomic_write_text(report, f"sub-{label}: {reason}\n\n{traceback.format_exc()}")
        LOGGER.error("sub-%s failed: %s (details in %s)", label, reason, report)
        return ParticipantOutcome(label=label, ok=False, reason=reason, crash_files=[report])


def check_inputs(data: SessionData) -> None:
    """Check every image of a session before any work; raises InputImageError naming the file and the cause."""
    for key, path in data.files.items():
        check_input_image(path, label=f"{data.label}: {key}", expect_ndim=4 if key in SERIES_KEYS else 3)
    if "DWI" in data.files:
        check_dwi(data.files["DWI"], *data.gradients, label=f"{data.label}: DWI")
    if "PET" in data.files:
        pet = Path(data.files["PET"])
        sidecar = pet.with_name(pet.name.split(".")[0] + ".json")  # the file to fix (BIDS inheritance aside)
        check_pet_timing(data.metadata["PET"], nb.load(pet).shape[3], label=f"{data.label}: PET",
                         source=sidecar if sidecar.is_file() else pet)
    if data.lesion_mask is not None:
        check_lesion_mask(data.lesion_mask.mask, data.lesion_mask.image)


def _run_participant(config: RunConfig, layout: BIDSLayout, label: str) -> ParticipantOutcome:
    requested = participant_sessions(layout, label, config.sessions)
    if not requested:
        LOGGER.info("sub-%s has none of the requested sessions (%s); nothing to do", label, " ".join(config.sessions))
        return ParticipantOutcome(label=label, ok=True)
    sessions = []
    for session in requested:
        data = collect_session(layout, label, session, config.queries)
        if config.lesion_masks is not None:
            data.lesion_mask = find_lesion_mask(config.lesion_masks, data)
        LOGGER.info(report_session(data))
        if "T1w" not in data.files:
            LOGGER.warning("%s skipped: no T1w image, and every stage needs the T1w reference", data.label)
            continue
        check_inputs(data)
        sessions.append(data)
    if not sessions:
        raise ValueError("no session with a T1w image — check the dataset or the T1w query of --bids-filter-file")

    staging = config.output_dir / STAGING_FOLDER / f"{config.run_id}_sub-{label}"
    workflow = init_participant_wf(
        sessions=sessions,
        bids_dir=config.bids_dir,
        output_dir=staging,
        omp_nthreads=config.omp_nthreads,
        device=config.device,
        models=config.models,
        saliency=config.saliency,
        name=f"sub_{label}_wf",
    )
    reason, crash_files = execute(workflow, config=config, crashes=crash_dir(config, label))
    if reason is not None:
        LOGGER.error("sub-%s failed: %s (crash reports in %s)", label, reason, crash_dir(config, label))
        shutil.rmtree(staging, ignore_errors=True)
        return ParticipantOutcome(label=label, ok=False, reason=reason, crash_files=crash_files)
    published = publish_staged(staging, config.output_dir)
    LOGGER.info("sub-%s finished: %d files written to %s", label, len(published), config.output_dir)
    return ParticipantOutcome(label=label, ok=True, published=published)


def execute(workflow: pe.Workflow, *, config: RunConfig, crashes: Path) -> tuple[str | None, list[Path]]:
    """Run a workflow under ``WORK_DIR/msynth_wf`` with text crash reports in ``crashes``.

    Returns None and no files when it finished, else the reason (each crashed node and its last error line) and the
    crash reports.
    """
    workflow.base_dir = str(config.work_dir / "msynth_wf")
    workflow.config["execution"].update(
        {
            "crashdump_dir": str(crashes),
            "crashfile_format": "txt",
            "stop_on_first_crash": False,
            "remove_unnecessary_outputs": False,
        }
    )
    plugin, plugin_args = ("Linear", {}) if config.nprocs == 1 else ("MultiProc", multiproc_arguments(config.nprocs))
    try:
        workflow.run(plugin=plugin, plugin_args=plugin_args)
    except RuntimeError as err:
        files = sorted(crashes.glob("crash-*.txt"))
        return "; ".join(_crash_reason(path) for path in files) or f"the workflow did not finish ({err})", files
    return None, []


def multiproc_arguments(n_procs: int) -> dict:
    """Arguments of Nipype's MultiProc plugin.

    Workers are forked, so that they inherit the console and log-file handlers and the nodes' messages reach the
    user. Once torch has run in this process (msynth used as a library after training or inference, as in the test
    suite), forked workers can hang on its OpenMP thread pool; the workers then start from a fresh forkserver process
    instead, whose node messages stay in the nodes' own reports.
    """
    arguments = {"n_procs": n_procs, "raise_insufficient": False}
    if "torch" in sys.modules:
        LOGGER.debug("torch is loaded in this process: Nipype workers start from a forkserver")
        arguments["mp_context"] = "forkserver"
    return arguments


def _crash_reason(crash_file: Path) -> str:
    """The node name and the last line of the traceback of a Nipype text crash report."""
    lines = [line.strip() for line in crash_file.read_text(errors="replace").splitlines() if line.strip()]
    node = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Node:")), crash_file.name)
    return f"{node}: {lines[-1] if lines else 'no message'}"


def summarise(outcomes: list[ParticipantOutcome]) -> str:
    """A closing summary: who finished, who failed and why."""
    failed = [o for o in outcomes if not o.ok]
    lines = [f"participant level: {len(outcomes) - len(failed)} of {len(outcomes)} participants finished"]
    for outcome in failed:
        where = f" — see {outcome.crash_files[0].parent}" if outcome.crash_files else ""
        lines.append(f"  sub-{outcome.label} FAILED: {outcome.reason}{where}")
    return "\n".join(lines)


def run_participant_level(config: RunConfig, layout: BIDSLayout) -> int:
    """Write the derivatives' description, run every participant, print the summary; return the exit code."""
    write_dataset_description(config.output_dir, config.bids_dir)
    outcomes = [run_participant(config, layout, label) for label in config.participants]
    staging_root = config.output_dir / STAGING_FOLDER
    with contextlib.suppress(OSError):  # another job sharing OUTPUT_DIR may be staging right now
        staging_root.rmdir()
    succeeded = all(outcome.ok for outcome in outcomes)
    LOGGER.log(logging.INFO if succeeded else logging.ERROR, summarise(outcomes))
    return 0 if succeeded else 1
