"""Group-level execution: check the participant-level outputs, run the group workflow, publish it whole."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable

from msynth.config import RunConfig
from msynth.pipelines.group import init_group_wf
from msynth.runner import STAGING_FOLDER, execute
from msynth.utils.derivatives import publish_staged, write_dataset_description
from msynth.utils.errors import UsageError
from msynth.utils.group_inputs import collect_group_inputs

LOGGER = logging.getLogger("msynth.group")


def run_group_level(config: RunConfig, *, on_start: Callable[[], None] = lambda: None) -> int:
    """Run the group level on ``config.output_dir``'s participant-level outputs; return the exit code.

    ``on_start`` runs once the inputs are checked, before anything is written (the CLI starts its log file there).

    Raises
    ------
    UsageError
        Before any work, listing every missing input (one line each): a participant without participant-level
        outputs, a patient without a numeric baseline EDSS, a cohort without controls or without patients.
    """
    inputs = collect_group_inputs(config.bids_dir, config.output_dir, config.participants)
    if inputs.problems:
        raise UsageError("the group level cannot start:\n" + "\n".join(f"  {p}" for p in inputs.problems))
    if not inputs.sources:
        raise UsageError(f"no DVR map in {config.output_dir} (no session had a PET or a synthetic DVR) — the group "
                         "level measures myelin from DVR maps")
    on_start()
    for note in inputs.notes:
        LOGGER.warning(note)
    patients, controls = inputs.group("MS"), inputs.group("HC")
    LOGGER.info("group level: %d controls, %d patients, DVR sources: %s", len(controls), len(patients),
                ", ".join(inputs.sources))
    for patient in patients:
        if len(patient.sessions) < 2:
            LOGGER.warning("%s has one session: its t1 and dynamic indices are n/a", patient.participant_id)
        elif len(patient.sessions) > 2:
            LOGGER.warning("%s has %d sessions: the indices use the first two (%s)", patient.participant_id,
                           len(patient.sessions), ", ".join(s.session for s in patient.sessions[:2]))
    staging = config.output_dir / STAGING_FOLDER / f"{config.run_id}_group"
    workflow = init_group_wf(inputs=inputs, output_dir=staging)
    write_dataset_description(config.output_dir, config.bids_dir)
    crashes = config.output_dir / "logs" / f"group-{config.run_id}"
    reason, _files = execute(workflow, config=config, crashes=crashes, label="group")
    if reason is not None:
        shutil.rmtree(staging, ignore_errors=True)
        LOGGER.error("group level failed: %s (crash reports in %s); nothing was published", reason, crashes)
        return 1
    published = publish_staged(staging, config.output_dir)
    LOGGER.info("group level finished: %d files written; tables in %s", len(published), config.output_dir / "group")
    return 0
