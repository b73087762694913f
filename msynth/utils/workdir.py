"""The work directory's layout, and ``--clean-workdir``: removing a participant's work folder once it is published."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

__all__ = ["WORKFLOWS_FOLDER", "clean_participant_workdir", "participant_workdir", "workflow_name"]

LOGGER = logging.getLogger("msynth.workdir")

#: The folder of ``WORK_DIR`` that holds the workflows' folders (Nipype's ``base_dir``).
WORKFLOWS_FOLDER = "msynth_wf"


def workflow_name(label: str) -> str:
    """The name of a participant's workflow, and of its folder under ``WORK_DIR/msynth_wf``: ``sub_<L>_wf``."""
    return f"sub_{label}_wf"


def participant_workdir(work_dir: Path, label: str) -> Path:
    """``WORK_DIR/msynth_wf/sub_<L>_wf``, the one folder of the work directory that is the participant's alone."""
    return work_dir / WORKFLOWS_FOLDER / workflow_name(label)


def clean_participant_workdir(work_dir: Path, label: str) -> int:
    """Remove a published participant's work folder; return the bytes freed.

    Only ``WORK_DIR/msynth_wf/sub_<L>_wf`` is removed: other participants' folders stay (SLURM array tasks share the
    work directory). The caller calls this only once the participant's outputs are published; a failed participant
    keeps its folder, from which a rerun resumes. Bytes freed count the files with no other hard link (an output
    linked from the work folder keeps its data). A folder that cannot be removed whole is a warning, not a failure.

    Parameters
    ----------
    work_dir
        The run's work directory (``-w``).
    label
        The participant's label, without ``sub-``.
    """
    folder = participant_workdir(work_dir, label)
    if folder.is_symlink() or not folder.is_dir():
        LOGGER.info("sub-%s: --clean-workdir: no work folder %s to remove", label, folder)
        return 0
    freed = sum(stat.st_size for stat in _file_stats(folder) if stat.st_nlink == 1)
    errors: list[str] = []
    shutil.rmtree(folder, onerror=lambda _function, path, info: errors.append(f"{path}: {info[1]}"))
    if errors:
        LOGGER.warning("sub-%s: --clean-workdir: %d item(s) of %s could not be removed, e.g. %s", label, len(errors),
                       folder, errors[0])
        freed -= sum(stat.st_size for stat in _file_stats(folder) if stat.st_nlink == 1)
    LOGGER.info("sub-%s: --clean-workdir: removed %s (%s freed)", label, folder, _size(freed))
    return freed


def _file_stats(folder: Path) -> list[os.stat_result]:
    """``lstat`` of every file below ``folder`` (links not followed)."""
    stats = []
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                stats.append(os.lstat(os.path.join(root, name)))
            except OSError:
                continue
    return stats


def _size(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"
