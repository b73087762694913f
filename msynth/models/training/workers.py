"""pydra workers of the cross-validation folds (:func:`msynth.models.training.crossval.cross_validate`).

A fold killed mid-training (``scancel``, pre-emption, a killed ``msynth-train``) leaves pydra's lock on its cache
entry; :func:`own_cache` removes such locks before a rerun and :func:`run_fold_job` when SLURM restarts the job, so
that the fold resumes from its ``checkpoint.pt``. :func:`slurm_fold_worker` adapts pydra 0.25's SLURM worker to
clusters without accounting and leaves a user's ``scancel`` final.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["own_cache", "run_fold_job", "slurm_fold_worker"]

LOGGER = logging.getLogger("msynth.models")


#: The batch script line of pydra's SLURM worker that runs a fold, and the one :class:`SlurmFoldWorker` writes
_PYDRA_RUN = "from pydra.engine.helpers import load_and_run; load_and_run("
_MSYNTH_RUN = "from msynth.models.training.workers import run_fold_job; run_fold_job("


def run_fold_job(task_pkl: str, ind: int | None = None, rerun: bool = False) -> Any:
    """A fold's SLURM job: pydra's ``load_and_run``, after removing the fold's lock when SLURM restarts the job.

    A job that SLURM requeues (pre-emption, or pydra's own requeue after ``TIMEOUT`` or ``PREEMPTED``) was killed
    inside pydra's lock of the fold, which is then never released: the restarted job (``SLURM_RESTART_COUNT`` > 0,
    the same fold) would wait on it for ever. Without it, the fold resumes from its ``checkpoint.pt``.
    """
    from pydra.engine.helpers import load_and_run, load_task

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0:
        task = load_task(task_pkl=task_pkl, ind=ind)
        lock = Path(task.cache_dir) / f"{task.checksum}.lock"
        if lock.exists():
            LOGGER.warning("restarted SLURM job: removing the lock %s of its killed run", lock)
            lock.unlink(missing_ok=True)
    return load_and_run(task_pkl=task_pkl, ind=ind, rerun=rerun)


def slurm_fold_worker() -> type:
    """pydra's SLURM worker, made to work without SLURM accounting, and to leave a user's ``scancel`` final.

    pydra 0.25 reads a finished job's state with ``sacct``, which fails on clusters without an accounting database
    (this one asks ``scontrol``, which keeps finished jobs for ``MinJobAge``), and requeues a ``CANCELLED`` job as it
    does a ``TIMEOUT`` or ``PREEMPTED`` one; this one requeues only the latter two (the fold resumes from its
    checkpoint) and reports a cancelled fold as unfinished once the other folds are done. Its batch scripts run
    :func:`run_fold_job`.
    """
    import re

    from pydra.engine.helpers import read_and_display_async
    from pydra.engine.workers import SlurmWorker

    class SlurmFoldWorker(SlurmWorker):
        def _prepare_runscripts(self, task, interpreter="/bin/sh", rerun=False):
            script_dir, batch_script = super()._prepare_runscripts(task, interpreter=interpreter, rerun=rerun)
            text = batch_script.read_text()
            if _PYDRA_RUN not in text:
                raise RuntimeError(f"{batch_script}: not the batch script of pydra 0.25's SLURM worker")
            batch_script.write_text(text.replace(_PYDRA_RUN, _MSYNTH_RUN))
            return script_dir, batch_script

        async def _verify_exit_code(self, jobid):
            _, shown, _ = await read_and_display_async("scontrol", "--oneliner", "show", "job", jobid,
                                                       hide_display=True)
            fields = dict(re.findall(r"(\w+)=(\S*)", shown))
            if "JobState" not in fields:  # gone from slurmctld's memory: ask the accounting database
                return await super()._verify_exit_code(jobid)
            state = fields["JobState"]
            if state in ("TIMEOUT", "PREEMPTED"):
                LOGGER.warning("fold job %s: %s; requeued, it resumes from its checkpoint", jobid, state)
                return state
            if state in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "REQUEUED", "SUSPENDED"):
                return False
            if state != "COMPLETED" or fields.get("ExitCode", "0:0") != "0:0":
                LOGGER.warning("fold job %s ended %s (exit code %s); its log: %s", jobid, state,
                               fields.get("ExitCode", "?"), self.error.get(jobid))
            return True  # a fold without a result is reported by _pydra_folds

    return SlurmFoldWorker


@contextlib.contextmanager
def own_cache(cache_dir: Path) -> Iterator[None]:
    """Hold ``cache_dir`` for this process, and remove the locks that earlier, killed runs left in it.

    pydra locks a fold's cache entry while it runs; a fold killed inside it (``scancel``, a killed
    ``msynth-train``) leaves the lock, on which a rerun would wait for ever. Once this process holds the cache
    (another ``msynth-train`` on the same work folder fails here) and no SLURM job of an earlier run is queued, every
    lock left is stale.
    """
    import fcntl
    import subprocess

    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / "msynth-train.lock", "w") as held:
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"{cache_dir}: another msynth-train is running on this work folder") from None
        jobs = sorted({p.stem.split("-", 1)[1] for p in cache_dir.glob("*_scripts/*/slurm-*.out")})
        if jobs:
            queued = subprocess.run(["squeue", "--noheader", "--format=%i", f"--jobs={','.join(jobs)}"],
                                    capture_output=True, text=True, timeout=60, check=False).stdout.split()
            if queued:
                raise RuntimeError(f"fold job(s) {' '.join(queued)} of an earlier run on this work folder are still "
                                   "queued or running: wait for them to end, or scancel them, then rerun")
        for lock in cache_dir.glob("*.lock"):
            if lock.name != "msynth-train.lock":
                LOGGER.info("removing %s, the lock of a fold whose run was killed; the fold resumes", lock.name)
                lock.unlink(missing_ok=True)
        yield
