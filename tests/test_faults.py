"""Faults at the participant level: reruns, a killed run, a full disk, concurrent processes, no GPU, skipped sessions.

Every run is real (4 mm tiny dataset, ``--nprocs 1``). One finished run is shared by the rerun tests; one work
directory by the disk-full and concurrency tests, whose runs then only rerun the data sinks.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nb
import pytest

from msynth.cli import run as cli
from msynth.utils.derivatives import BIDSIGNORE, DERIVATIVES_README, STAGING_FOLDER, TMP_PREFIX
from msynth.utils.validation import errors_of, run_validator

from conftest import write_tiny_bids

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _argv(bids: Path, out: Path, work: Path, *extra: str) -> list[str]:
    return [str(bids), str(out), "participant", "-w", str(work), "--nprocs", "1", "--device", "cpu",
            "--skip-bids-validation", *extra]


def _node_results(work: Path) -> dict[Path, int]:
    """Each node's result file and its mtime: a node that runs rewrites it."""
    return {p: p.stat().st_mtime_ns for p in work.rglob("result_*.pklz")}


def _outputs(out: Path, label: str) -> dict[Path, tuple[int, bytes]]:
    """Each derivative of a participant (crash reports aside), with its mtime and bytes."""
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / f"sub-{label}").rglob("*")
            if p.is_file() and "log" not in p.relative_to(out).parts}


def _temporaries(out: Path) -> list[Path]:
    return sorted(out.rglob(f"{TMP_PREFIX}*")) + sorted(out.rglob("*.partial*"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """sub-01 with a T1w session and a session without T1w (a T2w only), processed once."""
    root = tmp_path_factory.mktemp("finished")
    bids = write_tiny_bids(root / "bids", {"01": ["1", "2"]})
    anat = bids / "sub-01" / "ses-2" / "anat"
    for path in anat.iterdir():
        path.rename(path.with_name(path.name.replace("_T1w", "_T2w")))
    argv = _argv(bids, root / "out", root / "work")
    assert cli.main(argv) == 0
    (log,) = (root / "out" / "logs").glob("msynth-*.log")
    return {"out": root / "out", "work": root / "work", "argv": argv, "log": log}


def test_a_skipped_session_is_named_in_the_summary(finished):
    log = finished["log"].read_text()
    assert "participant level: 1 of 1 participants finished; 1 session skipped" in log
    assert "sub-01 ses-2 SKIPPED: no T1w image" in log


def test_rerun_runs_no_node_and_rewrites_no_output(finished):
    results, outputs = _node_results(finished["work"]), _outputs(finished["out"], "01")
    sinks = [p for p in results if p.parent.name.startswith("ds_")]
    assert len(sinks) >= 5 and len(outputs) >= len(sinks)
    assert cli.main(finished["argv"]) == 0
    assert _node_results(finished["work"]) == results
    assert _outputs(finished["out"], "01") == outputs


def test_rerun_restores_a_deleted_output(finished):
    results, outputs = _node_results(finished["work"]), _outputs(finished["out"], "01")
    deleted = [p for p in outputs if p.name.endswith("desc-preproc_T1w.nii.gz")]
    deleted.append(deleted[0].with_name(deleted[0].name.replace(".nii.gz", ".json")))
    for path in deleted:
        path.unlink()
    assert cli.main(finished["argv"]) == 0
    assert _node_results(finished["work"]) == results
    assert {p: data for p, (_, data) in _outputs(finished["out"], "01").items()} == {
        p: data for p, (_, data) in outputs.items()}


def test_cuda_without_gpu_falls_back_to_the_cpu_with_one_warning(finished, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    results = _node_results(finished["work"])
    argv = [a if a != "cpu" else "cuda" for a in finished["argv"]]
    assert cli.main(argv) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines()
                if "WARNING" in line and ("cuda" in line.lower() or "cpu" in line.lower())]
    assert len(warnings) == 1 and "--device cuda: torch sees no CUDA GPU" in warnings[0]
    assert _node_results(finished["work"]) == results, "the nodes did not get the CPU as the --device cpu run did"


def test_a_second_process_on_the_same_participant_is_refused(finished, capsys):
    """While another process holds sub-01's lock, a run leaves sub-01 (its staging included) alone and exits 1."""
    staging = sorted((finished["out"] / STAGING_FOLDER).glob("*_sub-01"))
    results, outputs = _node_results(finished["work"]), _outputs(finished["out"], "01")
    with open(finished["out"] / STAGING_FOLDER / "sub-01.lock", "a+") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        assert cli.main(finished["argv"]) == 1
    assert "sub-01 FAILED: another msynth process (run " in capsys.readouterr().err
    assert sorted((finished["out"] / STAGING_FOLDER).glob("*_sub-01")) == staging and len(staging) == 1
    assert _node_results(finished["work"]) == results and _outputs(finished["out"], "01") == outputs


def test_sigkill_leaves_no_partial_output_and_the_rerun_cleans_up(tmp_path, capsys):
    bids = write_tiny_bids(tmp_path / "bids", {"01": ["1"]})
    out, work = tmp_path / "out", tmp_path / "work"
    argv = _argv(bids, out, work)
    process = subprocess.Popen([sys.executable, "-m", "msynth.cli.run", *argv], env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not list((out / STAGING_FOLDER).glob("*_sub-01/sub-01/ses-1/anat/*.nii.gz")):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it staged a file"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    (killed,) = (out / STAGING_FOLDER).glob("*_sub-01")
    assert not _outputs(out, "01"), "a killed run published files"

    assert cli.main(argv) == 0
    assert "which did not finish" in capsys.readouterr().err
    assert not killed.exists() and len(list((out / STAGING_FOLDER).glob("*_sub-01"))) == 1
    assert any(p.name.endswith("desc-brain_mask.nii.gz") for p in _outputs(out, "01"))
    assert _temporaries(out) == []


@pytest.fixture(scope="module")
def two_participants(tmp_path_factory):
    """A dataset of two participants and a work directory filled by one run: the runs below, each into another
    OUTPUT_DIR, rerun only the data sinks."""
    root = tmp_path_factory.mktemp("two")
    bids = write_tiny_bids(root / "bids", {"01": ["1"], "02": ["1"]})
    assert cli.main(_argv(bids, root / "first", root / "work")) == 0
    return bids, root / "work"


def test_a_full_disk_fails_its_participant_cleanly(two_participants, tmp_path, monkeypatch, capsys):
    """A data sink of sub-01 meets a full disk half-way through a file: sub-01 fails with one line, its partial
    files are removed, and sub-02 still runs."""
    bids, work = two_participants
    out = tmp_path / "out"
    save = nb.save

    def full_disk(image, filename):
        if f"_sub-01{os.sep}" in str(filename) and STAGING_FOLDER in str(filename):
            Path(filename).write_bytes(b"\x1f\x8b half a file")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as gzip raises it: no file name
        return save(image, filename)

    monkeypatch.setattr(nb, "save", full_disk)
    assert cli.main(_argv(bids, out, work)) == 1
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if "sub-01 FAILED:" in line]
    assert f"writing {out / STAGING_FOLDER}" in line and f"(OUTPUT_DIR {out}: " in line, line
    assert line.count("no space left on device") == 1, line
    assert "Traceback" not in err and "participant level: 1 of 2 participants finished" in err
    assert not list((out / STAGING_FOLDER).glob("*_sub-01")) and not _outputs(out, "01")
    assert _outputs(out, "02") and _temporaries(out) == []


def test_a_really_full_disk_fails_each_participant_with_one_line(two_participants, tmp_path):
    """OUTPUT_DIR on a 200 kB tmpfs (mounted in a user namespace): every participant fails with one line, and the
    file system holds no partial file afterwards."""
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True).returncode != 0:
        pytest.skip("no user namespaces here to mount a small tmpfs")
    bids, work = two_participants
    out = tmp_path / "out"
    out.mkdir()
    script = ('mount -t tmpfs -o size=200k tmpfs "$1" && shift && "$@"; rc=$?; echo "== files"; '
              'find "$OUT" -type f; exit $rc')
    command = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", str(out),
               sys.executable, "-m", "msynth.cli.run", *_argv(bids, out, work)]
    run = subprocess.run(command, env={**ENV, "OUT": str(out)}, capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr and "Logging error" not in run.stderr
    failed = [line for line in run.stderr.splitlines() if " FAILED: " in line]
    assert len(failed) == 2 and all(f"writing {out}" in line for line in failed), run.stderr
    assert all(line.count("no space left on device") == 1 and f"(OUTPUT_DIR {out}: 0 MiB free" in line
               for line in failed), run.stderr
    files = run.stdout.split("== files", 1)[1].split()
    assert not [f for f in files if TMP_PREFIX in f or (f"{STAGING_FOLDER}/" in f and not f.endswith(".lock"))]
    assert not [f for f in files if "/ses-1/" in f]


def test_two_processes_on_disjoint_participants_share_one_output_dir(two_participants, tmp_path):
    """SLURM array tasks: one process per participant, started together, into one OUTPUT_DIR."""
    bids, work = two_participants
    out = tmp_path / "out"
    processes = [subprocess.Popen([sys.executable, "-m", "msynth.cli.run", *_argv(bids, out, work),
                                   "--participant-label", label], env=ENV, stderr=subprocess.PIPE, text=True)
                 for label in ("01", "02")]
    errors = [p.communicate(timeout=600)[1] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], errors
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "msynth"
    assert (out / ".bidsignore").read_text() == BIDSIGNORE
    assert (out / "README").read_text() == DERIVATIVES_README.format(source=bids.resolve())
    logs = sorted((out / "logs").glob("msynth-*[0-9a-f].log"))
    assert len(logs) == 2
    for log in logs:
        text = log.read_text()
        (label,) = {label for label in ("01", "02") if f"sub-{label} finished" in text}
        assert "participant level: 1 of 1 participants finished" in text
        assert f"sub-{'02' if label == '01' else '01'}" not in text
    assert _outputs(out, "01") and _outputs(out, "02") and _temporaries(out) == []
    assert errors_of(run_validator(out)) == []


def test_cuda_out_of_memory_retries_on_the_cpu_once():
    """The step that ran out of GPU memory is redone on the CPU with one warning; the CPU's own error is raised."""
    torch = pytest.importorskip("torch")
    from msynth.models.inference import on_cpu_after_out_of_memory

    def step(device):
        if device.type == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return device.type

    with pytest.warns(RuntimeWarning, match="on the CPU instead") as caught:
        assert on_cpu_after_out_of_memory(step, "cuda", "GPU full; on the CPU instead") == "cpu"
    assert len(caught) == 1

    def cpu_step(device):
        raise torch.OutOfMemoryError("out of memory on the CPU")

    with pytest.raises(torch.OutOfMemoryError, match="on the CPU"):
        on_cpu_after_out_of_memory(cpu_step, "cpu", "unused")
