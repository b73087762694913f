"""Console and log file: a quiet console with progress, and every message (Nipype's, msynth's nodes') in the log."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nipype.interfaces.utility import Function
from nipype.pipeline import engine as pe

from msynth.utils import logs
from msynth.utils.progress import MsynthMultiProcPlugin, Progress

MSYNTH = Path(sys.executable).parent / "msynth"


def _msynth(*argv: str) -> subprocess.CompletedProcess:
    """Run the ``msynth`` command with stdout and stderr captured (not a terminal, as in a SLURM job)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(MSYNTH), *argv], capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture(scope="module")
def two_session_run(tmp_path_factory):
    """One 4 mm phantom patient with two sessions, run once with ``--nprocs 2``: ``(folders, console, log)``."""
    from msynth.phantom.cohort import generate_cohort

    root = tmp_path_factory.mktemp("console")
    cohort = generate_cohort(root / "bids", n_controls=0, n_patients=1, voxel_size=4.0, seed=3)
    argv = [str(cohort.bids_dir), str(root / "out"), "participant", "-w", str(root / "work"), "--nprocs", "2"]
    run = _msynth(*argv)
    assert run.returncode == 0, run.stderr
    (log,) = (root / "out" / "logs").glob("msynth-*.log")
    return {"argv": argv, "out": root / "out"}, run.stdout + run.stderr, log.read_text()


@pytest.mark.slow
def test_console_is_short_and_shows_progress(two_session_run):
    _, console, _ = two_session_run
    lines = console.splitlines()
    assert len(lines) < 60, console
    assert not [line for line in lines if " nipype." in line], "Nipype's INFO lines belong in the log file"
    assert not [line for line in lines if "msynth.preprocessing INFO" in line], "node messages belong in the log file"
    final = [line for line in lines if "msynth.progress INFO: sub-MS01: " in line][-1]
    done, total = final.split("sub-MS01: ")[1].split(" nodes")[0].split(" of ")
    assert done == total and int(total) > 50, final
    assert "participant level: 1 of 1 participants finished" in console


@pytest.mark.slow
def test_log_file_holds_node_and_nipype_messages(two_session_run):
    _, _, log = two_session_run
    for session in ("01", "02"):
        assert f"msynth.preprocessing INFO: N4 sub-MS01_ses-{session}_T2w.nii.gz: field range" in log
        assert any(line.endswith(f"of sub-MS01_ses-{session}_dwi.nii.gz") and "INFO: DTI (WLS) in" in line
                   for line in log.splitlines())
    assert "nipype.workflow INFO: [Node] Finished" in log
    assert "msynth.progress INFO: sub-MS01: " in log


def _say(text: str) -> str:
    import logging

    logging.getLogger("msynth.preprocessing").info("node says %s", text)
    return text


@pytest.fixture
def restored_logging(monkeypatch):
    """Put msynth's and Nipype's handlers and levels back after a test that configures logging."""
    names = ("msynth", "nipype", "py.warnings", *logs.NIPYPE_LOGGERS)
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).level) for name in names}
    monkeypatch.setattr(logs, "_current", logs.current())
    yield
    for name, (handlers, level) in saved.items():
        logging.getLogger(name).handlers[:] = handlers
        logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize(("start_method", "verbose"), [("fork", 0), ("forkserver", 0), ("fork", 1)])
def test_node_messages_reach_the_log_file_whatever_the_start_method(start_method, verbose, tmp_path, capfd,
                                                                   restored_logging):
    """Every worker logs to the run's log file; ``-v`` (verbose 1) brings Nipype's and the nodes' INFO lines back
    to the console (checked with forked workers: a forkserver started by an earlier test keeps that test's stderr)."""
    log = tmp_path / "run.log"
    logs.configure(logs.LogSetup(verbose=verbose, log_file=log))
    workflow = pe.Workflow(name="sub_01_wf", base_dir=str(tmp_path / "work"))
    workflow.config["execution"]["crashdump_dir"] = str(tmp_path)
    for text in ("first", "second"):
        node = pe.Node(Function(function=_say, input_names=["text"], output_names=["text"]), name=f"say_{text}")
        node.inputs.text = text
        workflow.add_nodes([node])
    progress = Progress("sub-01", bar=False)
    try:
        workflow.run(plugin=MsynthMultiProcPlugin({"n_procs": 2, "mp_context": start_method}, progress=progress))
    finally:
        progress.close()
    text = log.read_text()
    assert "msynth.preprocessing INFO: node says first" in text and "node says second" in text
    assert "nipype.workflow INFO: [Node] Finished" in text
    assert "sub-01: 2 of 2 nodes" in text
    console = capfd.readouterr()
    console = console.out + console.err
    assert "sub-01: 2 of 2 nodes" in console
    assert ("node says first" in console) == bool(verbose)
    assert ("nipype.workflow INFO: [Node] Finished" in console) == bool(verbose)


class _Node:
    def __init__(self, fullname: str) -> None:
        self.fullname = fullname


def test_progress_names_running_stages_and_estimates_the_time_left():
    anat, dwi, cached, pet = (_Node("sub_01_wf.ses_1_wf.anat_reference_wf.n4"), _Node("sub_01_wf.ses_2_wf.dwi_wf.fit"),
                              _Node("sub_01_wf.ses_2_wf.masks_wf.ds_mask"), _Node("sub_01_wf.ses_2_wf.pet_wf.logan"))
    progress = Progress("sub-01", bar=False, interval_s=3600)
    progress.begin([anat, dwi, cached, pet])
    progress(anat, "start")
    progress(dwi, "start")
    progress(_Node("sub_01_wf.ses_2_wf.dwi_wf._resample0"), "start")  # a MapNode's item: not counted
    assert progress.line().startswith("sub-01: 0 of 4 nodes, 00:00 elapsed; running ses-1 anat_reference, ses-2 dwi")
    progress(cached, "end")  # Nipype ends cached nodes without starting them
    progress(anat, "end")
    progress(dwi, "exception")
    line = progress.line()
    progress.close()
    assert line.startswith("sub-01: 3 of 4 nodes, 00:00 elapsed, about 00:00 left, 1 failed")
    assert "running" not in line


def test_progress_line_every_interval_when_not_a_terminal(caplog):
    progress = Progress("sub-01", bar=False, interval_s=0.05)
    logger = logging.getLogger("msynth.progress")
    logger.addHandler(caplog.handler)  # msynth's loggers may not propagate to the root, where caplog listens
    try:
        with caplog.at_level(logging.INFO, logger="msynth.progress"):
            progress.begin([_Node("sub_01_wf.ses_1_wf.anat_reference_wf.n4")])
            time.sleep(0.3)
            progress.close()
    finally:
        logger.removeHandler(caplog.handler)
    lines = [record.getMessage() for record in caplog.records if record.name == "msynth.progress"]
    assert len(lines) >= 3 and all(line.startswith("sub-01: 0 of 1 nodes") for line in lines)
