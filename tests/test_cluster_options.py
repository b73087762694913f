"""Options for cohorts on a cluster (issue 20): --mem, --use-plugin, --bids-database-dir, --clean-workdir and
--stop-on-first-crash, on tiny Nipype workflows of Function nodes and the tiny BIDS dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from msynth import runner
from msynth.cli.parser import build_parser
from msynth.config import RunConfig, check_database_dir, resolve_config
from msynth.utils.errors import UsageError
from msynth.utils.layout_index import FINGERPRINT_FILE, INDEX_FILE, open_indexed_layout
from msynth.utils.plugins import load_plugin_file
from msynth.utils.workdir import clean_participant_workdir, participant_workdir, workflow_name


def _config(tmp_path: Path, **options) -> RunConfig:
    defaults = dict(bids_dir=tmp_path / "bids", output_dir=tmp_path / "out", analysis_level="participant",
                    work_dir=tmp_path / "work", participants=["A"], sessions=None, nprocs=2, omp_nthreads=1,
                    device="cpu", skip_bids_validation=True, verbose=0, run_id="test")
    return RunConfig(**{**defaults, **options})


def _stamp(folder: str, label: str, fail: bool) -> str:
    """Sleep a second and record the start and end times and the process in ``folder/label``."""
    import os
    import time
    from pathlib import Path

    start = time.time()
    time.sleep(1.0)
    if fail:
        raise ValueError(f"{label} failed on purpose")
    Path(folder, label).write_text(f"{start} {time.time()} {os.getpid()}")
    return label


def _stamping_workflow(name: str, stamps: Path, mem_gb: list[float], fail: tuple[int, ...] = ()) -> pe.Workflow:
    """Independent nodes, each estimated at ``mem_gb[i]`` GB, that stamp their run into ``stamps``."""
    stamps.mkdir(parents=True, exist_ok=True)
    workflow = pe.Workflow(name=name)
    for i, gb in enumerate(mem_gb):
        stamp = pe.Node(niu.Function(function=_stamp, output_names=["label"]), name=f"stamp{i}", mem_gb=gb)
        stamp.inputs.trait_set(folder=str(stamps), label=f"stamp{i}", fail=i in fail)
        workflow.add_nodes([stamp])
    workflow.config["execution"]["poll_sleep_duration"] = 0.1
    return workflow


def _intervals(stamps: Path) -> list[tuple[float, float, int]]:
    return sorted(tuple(float(v) for v in path.read_text().split()) for path in stamps.iterdir())


def _most_at_once(intervals: list[tuple[float, float, int]]) -> int:
    return max(sum(start <= moment < end for start, end, _pid in intervals) for moment, _end, _pid in intervals)


@pytest.mark.parametrize(("mem_gb", "at_once"), [(1.0, 1), (4.0, 2)])
def test_mem_caps_the_nodes_running_at_once(tmp_path, mem_gb, at_once):
    """Four nodes estimated at 1, 1, 1 and 3 GB on two processes: within 1 GB one at a time (the 3 GB node runs,
    alone), within 4 GB two at once."""
    workflow = _stamping_workflow("mem_wf", tmp_path / "stamps", [1, 1, 1, 3])
    config = _config(tmp_path, mem_gb=mem_gb)
    assert runner.execute(workflow, config=config, crashes=tmp_path / "crashes", label="test") == (None, [])
    intervals = _intervals(tmp_path / "stamps")
    assert len(intervals) == 4
    assert _most_at_once(intervals) == at_once


def test_memory_budget_is_the_job_memory_when_not_given(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "available_memory_gb", lambda: 3.5)
    assert runner.memory_budget_gb(_config(tmp_path)) == 3.5
    assert runner.memory_budget_gb(_config(tmp_path, mem_gb=2.0)) == 2.0
    assert runner.multiproc_arguments(2, memory_gb=3.5)["memory_gb"] == 3.5


@pytest.mark.parametrize(("option", "value", "gigabytes"), [
    ("--mem", "3", 3.0), ("--mem-gb", "16G", 16.0), ("--mem_gb", "1.5", 1.5), ("--mem", "2048M", 2.0),
    ("--mem-mb", "1024", 1.0), ("--mem", "1T", 1024.0),
])
def test_mem_spellings(option, value, gigabytes):
    assert build_parser().parse_args(["bids", "out", "participant", option, value]).mem_gb == gigabytes


@pytest.mark.parametrize(("value", "message"), [
    ("16000", "16000 GB is more than any job has: a bare number is in GB here (fMRIPrep's --mem is in MB) — write "
              "16000M for megabytes, or add a unit (G, T)"),
    ("lots", "not a memory amount: 'lots' (e.g. 16, 16G, 16000M)"),
    ("0", "must be a positive amount, got 0"),
])
def test_bad_mem(capsys, value, message):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bids", "out", "participant", "--mem", value])
    assert capsys.readouterr().err.strip().endswith(f"argument --mem/--mem-gb/--mem_gb: {message}")


def test_options_land_in_the_config_json(tiny_bids, tmp_path):
    plugin = tmp_path / "plugin.yml"
    plugin.write_text("plugin: MultiProc\nplugin_args: {n_procs: 3}\n")
    argv = [str(tiny_bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"), "--mem", "3",
            "--stop-on-first-crash", "--clean-workdir", "--bids-database-dir", str(tmp_path / "db"),
            "--use-plugin", str(plugin)]
    recorded = json.loads(resolve_config(build_parser().parse_args(argv)).to_json())
    assert {key: recorded[key] for key in ("mem_gb", "stop_on_first_crash", "clean_workdir", "bids_database_dir",
                                           "use_plugin", "plugin", "plugin_args")} == {
        "mem_gb": 3.0, "stop_on_first_crash": True, "clean_workdir": True, "bids_database_dir": str(tmp_path / "db"),
        "use_plugin": str(plugin), "plugin": "MultiProc", "plugin_args": {"n_procs": 3}}


@pytest.mark.parametrize(("text", "message"), [
    (None, "does not exist — pass a YAML or JSON file such as {plugin: SLURM}"),
    ("plugin: [Linear\n", "is not valid YAML or JSON (line 2) — write {plugin: NAME, plugin_args: {...}}"),
    ('{"plugin_args": {}}', "names no plugin — write {plugin: NAME, plugin_args: {...}}"),
    ("plugin: Linear\nplugins_args: {}\n", "has unknown key(s) plugins_args — only plugin and plugin_args are read"),
    ("plugin: SLURMGraph\n", ": the SLURMGraph plugin submits the workflow and returns before it ran, and msynth "
                             "publishes a participant's outputs only once its steps finished — use SLURM instead "
                             "(one job a step, and msynth waits for them)"),
    ("plugin: Linear\nplugin_args: [1]\n", ": plugin_args must be a mapping of argument names to values"),
])
def test_plugin_file_errors(tmp_path, text, message):
    path = tmp_path / "plugin.yml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UsageError) as excinfo:
        load_plugin_file(path)
    assert str(excinfo.value) == f"--use-plugin {path} {message}".replace(" :", ":")


def test_unknown_plugin_names_nipype_plugins(tmp_path):
    path = tmp_path / "plugin.json"
    path.write_text('{"plugin": "Slurm"}')
    with pytest.raises(UsageError, match=r"Nipype has no plugin 'Slurm' \(it has: .*\bMultiProc\b.*\bSLURM\b"):
        load_plugin_file(path)


def test_plugin_file_runs_the_workflow_with_that_plugin(tmp_path):
    """{plugin: Linear} with --nprocs 2: the nodes run in this process, not in MultiProc workers."""
    path = tmp_path / "plugin.yml"
    path.write_text("plugin: Linear\n")
    plugin, plugin_args = load_plugin_file(path)
    config = _config(tmp_path, use_plugin=path, plugin=plugin, plugin_args=plugin_args)
    workflow = _stamping_workflow("plugin_wf", tmp_path / "stamps", [1, 1])
    assert runner.execute(workflow, config=config, crashes=tmp_path / "crashes", label="test") == (None, [])
    assert [pid for _start, _end, pid in _intervals(tmp_path / "stamps")] == [os.getpid()] * 2


def test_stop_on_first_crash_sets_nipype_execution_config(tmp_path):
    """Two failing nodes, one process: the workflow stops at the first, which alone leaves a crash report."""
    workflow = _stamping_workflow("crash_wf", tmp_path / "stamps", [1, 1], fail=(0, 1))
    reason, crashes = runner.execute(workflow, config=_config(tmp_path, nprocs=1, stop_on_first_crash=True),
                                     crashes=tmp_path / "crashes", label="test")
    assert workflow.config["execution"]["stop_on_first_crash"] is True
    assert len(crashes) == 1
    assert reason.startswith("crash_wf.stamp") and reason.endswith("failed on purpose")


class _Layout:
    """A dataset without sessions, for :func:`msynth.runner.participant_sessions`."""

    def get_sessions(self, subject: str) -> list[str]:
        return []


@pytest.fixture
def fake_participants(tmp_path, monkeypatch):
    """Participants whose workflow is a two-node stamping workflow; those in the returned set fail."""
    failing: set[str] = set()
    (tmp_path / "bids").mkdir()
    (tmp_path / "bids" / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.10.0"}')
    monkeypatch.setattr(runner, "_collect_sessions", lambda config, layout, label, check=True: (["session"], []))
    monkeypatch.setattr(runner, "_participant_workflow", lambda config, sessions, output_dir, label: (
        _stamping_workflow(workflow_name(label), tmp_path / "stamps" / label, [0.1, 0.1],
                           fail=(0,) if label in failing else ())))
    return failing


def test_clean_workdir_removes_only_the_published_participants_folder(tmp_path, fake_participants):
    fake_participants.add("B")
    config = _config(tmp_path, participants=["A", "B", "C"], clean_workdir=True)
    assert runner.run_participant_level(config, _Layout()) == 1
    assert not participant_workdir(config.work_dir, "A").exists()
    assert participant_workdir(config.work_dir, "B").is_dir()  # failed: kept, to resume from
    assert not participant_workdir(config.work_dir, "C").exists()


def test_without_clean_workdir_the_work_folders_stay(tmp_path, fake_participants):
    config = _config(tmp_path, participants=["A"])
    assert runner.run_participant_level(config, _Layout()) == 0
    assert participant_workdir(config.work_dir, "A").is_dir()


def test_clean_participant_workdir_touches_no_other_participant(tmp_path, caplog):
    work = tmp_path / "work"
    for label, size in (("A", 3000), ("AB", 10), ("B", 10)):
        folder = participant_workdir(work, label) / "node"
        folder.mkdir(parents=True)
        (folder / "result.nii.gz").write_bytes(b"0" * size)
    os.link(participant_workdir(work, "A") / "node" / "result.nii.gz", tmp_path / "published.nii.gz")
    (participant_workdir(work, "A") / "node" / "own.txt").write_bytes(b"1" * 100)
    caplog.set_level("INFO", logger="msynth.workdir")
    assert clean_participant_workdir(work, "A") == 100  # the hard-linked output frees nothing
    assert sorted(p.name for p in (work / "msynth_wf").iterdir()) == ["sub_AB_wf", "sub_B_wf"]
    assert f"sub-A: --clean-workdir: removed {work}/msynth_wf/sub_A_wf (100 bytes freed)" in caplog.messages
    assert clean_participant_workdir(work, "C") == 0


@pytest.mark.parametrize("stop", [False, True])
def test_stop_on_first_crash_stops_the_run(tmp_path, fake_participants, stop):
    """fMRIPrep stops the whole run at the first crash: the participants after the failing one are not started."""
    fake_participants.add("A")
    config = _config(tmp_path, participants=["A", "B"], stop_on_first_crash=stop)
    assert runner.run_participant_level(config, _Layout()) == 1
    assert (tmp_path / "stamps" / "B" / "stamp0").exists() is not stop


def test_bids_database_is_built_once_then_loaded(tiny_bids, tmp_path, monkeypatch):
    from bids.layout.index import BIDSLayoutIndexer

    database = tmp_path / "db"
    built = open_indexed_layout(tiny_bids, database, ["01", "02"])
    index = database / INDEX_FILE
    assert index.is_file() and (database / FINGERPRINT_FILE).is_file()
    assert sorted(p.name for p in database.iterdir() if p.name.startswith(".building-")) == []
    mtime = index.stat().st_mtime_ns

    def no_indexing(*args, **kwargs):
        raise AssertionError("the dataset was indexed again")

    monkeypatch.setattr(BIDSLayoutIndexer, "__call__", no_indexing)
    loaded = open_indexed_layout(tiny_bids, database, ["01"])
    assert sorted(loaded.get(return_type="filename")) == sorted(built.get(return_type="filename"))
    assert len(loaded.get(suffix="T1w", extension=".nii.gz")) == 4
    assert index.stat().st_mtime_ns == mtime


def test_stale_bids_database_is_refused(tiny_bids, tmp_path):
    database = tmp_path / "db"
    open_indexed_layout(tiny_bids, database, ["01", "02"])
    (tiny_bids / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T2w.nii.gz").write_bytes(b"")
    open_indexed_layout(tiny_bids, database, ["01"])  # sub-01 is as it was
    with pytest.raises(UsageError, match=r"indexes .* as it was at .*; since then sub-02 changed \(a file added, "
                                         r"removed or modified\) — delete the folder to index the dataset again"):
        open_indexed_layout(tiny_bids, database, ["01", "02"])


def test_concurrent_first_use_builds_one_index(tiny_bids, tmp_path):
    database = tmp_path / "db"
    code = ("import logging, sys; from pathlib import Path; from msynth.utils.layout_index import open_indexed_layout; "
            "logging.basicConfig(level=logging.INFO, format='%(message)s'); "
            "layout = open_indexed_layout(Path(sys.argv[1]), Path(sys.argv[2]), ['01', '02']); "
            "print(len(layout.get(suffix='T1w', extension='.nii.gz')))")
    processes = [subprocess.Popen([sys.executable, "-c", code, str(tiny_bids), str(database)], text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    results = [(process.communicate(timeout=120), process.returncode) for process in processes]
    assert [(out.strip(), code) for (out, _err), code in results] == [("4", 0), ("4", 0)]
    logs = "".join(err for (_out, err), _code in results)
    assert logs.count("built and saved") == 1 and logs.count("loaded from") == 1
    assert sorted(p.name for p in database.iterdir()) == [".msynth-index.lock", INDEX_FILE, FINGERPRINT_FILE]


def test_bids_database_dir_checks(tmp_path):
    bids_dir = tmp_path / "bids"
    bids_dir.mkdir()
    afile = tmp_path / "db"
    afile.write_text("")
    with pytest.raises(UsageError) as excinfo:
        check_database_dir(afile, bids_dir)
    assert str(excinfo.value) == (f"--bids-database-dir {afile} exists and is a file, not a folder — remove it or "
                                  "pass another folder")
    with pytest.raises(UsageError, match="lies inside the input BIDS dataset"):
        check_database_dir(bids_dir / "db", bids_dir)
    assert check_database_dir(tmp_path / "new" / "db", bids_dir) == tmp_path / "new" / "db"
