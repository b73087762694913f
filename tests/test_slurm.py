"""A cohort on SLURM through containers/slurm/: one array task per participant, the group job after them.

Uses the cluster that ``SLURM_CONF`` names — ``make test`` starts a single-node one on this machine with
``containers/slurm/localhost-cluster.sh`` — and installs nothing. Three 4 mm phantom participants (a control, two
patients with two sessions) run as a throttled array; the control's task is cancelled with ``scancel`` once it has
staged outputs, which cancels the dependent group job; ``submit.sh --resubmit-failed`` then submits that participant
alone, with the same work directory, and a new group job: 11.4 minutes on a 2-core machine shared with other work
(load 4–5; 16 minutes at load 5–9). The last test runs
``submit.sh --dry-run`` and needs no cluster.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nb
import pandas as pd
import pytest

from msynth.analysis.metrics import dice
from msynth.utils.derivatives import STAGING_FOLDER
from msynth.utils.validation import errors_of, run_validator

SLURM_DIR = Path(__file__).resolve().parents[1] / "containers" / "slurm"
SUBMIT = SLURM_DIR / "submit.sh"
LABELS = ("HC01", "MS01", "MS02")
PATIENTS = ("MS01", "MS02")
#: Task 1, cancelled once it has staged outputs: the two patients then run side by side (two tasks of one CPU at a
#: time), and the resubmission is one session.
CANCELLED = "HC01"
#: Two tasks at a time, one CPU and 3 GB each (a 4 mm participant peaks well under that).
SBATCH = "--cpus-per-task=1 --mem=3G --time=30"
#: Longest wait for one stage (the first array took 12 minutes on a 2-core machine busy with other work, load 5–9).
TIMEOUT_S = 1800
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
       "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "NO_ET": "1"}


def _slurm_unavailable() -> str | None:
    """Why no SLURM cluster can take jobs here, or None."""
    if shutil.which("sbatch") is None:
        return "sbatch is not on PATH (no SLURM client; `make test` installs slurm-wlm as root with apt-get)"
    conf = os.environ.get("SLURM_CONF")
    if not conf:
        return ("SLURM_CONF is not set: run `make test`, which starts a single-node SLURM on this machine, or export "
                "SLURM_CONF of a cluster whose nodes share this file system")
    unavailable = Path(conf).parent / "unavailable"  # written by localhost-cluster.sh when it cannot start
    if unavailable.is_file():
        return f"the localhost SLURM did not start: {unavailable.read_text().strip()}"
    if not Path(conf).is_file():
        return f"SLURM_CONF={conf} is not a file"
    try:
        answer = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, timeout=20,
                                env=ENV, check=False)
    except subprocess.TimeoutExpired:
        return f"sinfo did not answer within 20 s (SLURM_CONF={conf})"
    states = answer.stdout.split()
    if answer.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mixed", "allocated") for s in states):
        return f"no SLURM node takes jobs (SLURM_CONF={conf}): {(answer.stderr or answer.stdout).strip()[:300]}"
    return None


def _submit(cohort, out: Path, work: Path, *options: str) -> dict[str, str]:
    """submit.sh as a user runs it: the phantom's lesion masks (as `make demo`) go to every participant after --."""
    command = [str(SUBMIT), "--max-running", "2", "--sbatch", SBATCH, *options, str(cohort.bids_dir), str(out),
               str(work), "--", "--lesion-masks", str(cohort.lesion_dir)]
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=60, check=False)
    assert done.returncode == 0, f"submit.sh failed: {done.stderr}"
    return dict(line.split("=", 1) for line in done.stdout.split())


def _states(job: str) -> dict[str, str]:
    """``{job id: state}`` of a job, or of each task of an array (``<array>_<task>``), from scontrol."""
    shown = subprocess.run(["scontrol", "--oneliner", "show", "job", job], capture_output=True, text=True, env=ENV,
                           timeout=20, check=True).stdout
    states = {}
    for line in shown.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        task = fields.get("ArrayTaskId")
        states[f"{fields['ArrayJobId']}_{task}" if task else fields["JobId"]] = fields["JobState"]
    return states


def _wait(jobs: list[str], *, until=None, timeout: float = TIMEOUT_S) -> None:
    """Wait until ``until()`` holds, or (without it) until none of ``jobs`` is pending, running or completing."""
    deadline = time.monotonic() + timeout
    while True:
        if until is not None and until():
            return
        if until is None:
            queued = subprocess.run(["squeue", "--noheader", "--format=%i", f"--jobs={','.join(jobs)}"],
                                    capture_output=True, text=True, env=ENV, timeout=20, check=False).stdout
            if not queued.split():
                return
        if time.monotonic() > deadline:
            states = {job: _states(job) for job in jobs}
            pytest.fail(f"SLURM jobs {jobs} not done within {timeout:.0f} s: {states}")
        time.sleep(1)


def _published(out: Path, label: str) -> bool:
    lock = out / STAGING_FOLDER / f"sub-{label}.lock"
    return lock.is_file() and json.loads(lock.read_text() or "{}").get("state") == "published"


def _participant_files(out: Path, label: str) -> list[Path]:
    """What a participant has in OUTPUT_DIR besides its staging folder and its crash-report folder."""
    files = [p for p in out.glob(f"sub-{label}*") if p.is_file()]  # sub-<L>.html
    return files + [p for p in (out / f"sub-{label}").rglob("*")
                    if p.is_file() and p.relative_to(out / f"sub-{label}").parts[0] != "log"]


@pytest.fixture(scope="module")
def cohort_on_slurm(tmp_path_factory):
    """The three participants through the array, one task cancelled mid-run and resubmitted, and the group job."""
    reason = _slurm_unavailable()
    if reason:
        pytest.skip(reason)
    from msynth.phantom.cohort import generate_cohort

    root = tmp_path_factory.mktemp("slurm")
    cohort = generate_cohort(root / "bids", n_controls=1, n_patients=2, voxel_size=4.0, seed=5, n_procs=2)
    out, work = root / "out", root / "work"
    submitted = []
    try:
        yield _run_cohort(cohort, out, work, submitted)
    finally:  # a failed or interrupted test leaves no job behind
        subprocess.run(["scancel", *submitted], env=ENV, timeout=20, check=False, capture_output=True)


def _run_cohort(cohort, out: Path, work: Path, submitted: list[str]) -> dict:
    first = _submit(cohort, out, work)
    submitted += first.values()
    array, cancelled_task = first["array_job"], f"{first['array_job']}_{LABELS.index(CANCELLED) + 1}"
    staged = out / STAGING_FOLDER
    _wait([array], until=lambda: any(staged.glob(f"*_sub-{CANCELLED}/sub-{CANCELLED}/ses-*/anat/*.nii.gz")))
    assert _states(array)[cancelled_task] == "RUNNING"
    subprocess.run(["scancel", cancelled_task], env=ENV, timeout=20, check=True)
    _wait([cancelled_task])
    after_cancel = {"files": _participant_files(out, CANCELLED), "published": _published(out, CANCELLED),
                    "staging": sorted(staged.glob(f"*_sub-{CANCELLED}"))}
    _wait([array, first["group_job"]])
    first_states = {**_states(array), **_states(first["group_job"])}
    group_after_cancel = (out / "group").exists()

    second = _submit(cohort, out, work, "--resubmit-failed")
    submitted += second.values()
    _wait([second["array_job"], second["group_job"]])
    return {"cohort": cohort, "out": out, "work": work, "first": first, "second": second,
            "first_states": first_states, "after_cancel": after_cancel, "group_after_cancel": group_after_cancel,
            "second_states": {**_states(second["array_job"]), **_states(second["group_job"])}}


@pytest.mark.slurm
@pytest.mark.slow
def test_a_cancelled_task_leaves_no_partial_output_and_cancels_the_group_job(cohort_on_slurm):
    run = cohort_on_slurm
    array, group = run["first"]["array_job"], run["first"]["group_job"]
    expected = {f"{array}_{task}": "CANCELLED" if label == CANCELLED else "COMPLETED"
                for task, label in enumerate(LABELS, start=1)}
    assert run["first_states"] == {**expected, group: "CANCELLED"}
    after = run["after_cancel"]
    assert after["files"] == [], f"the cancelled sub-{CANCELLED} published files: {after['files']}"
    assert not after["published"] and len(after["staging"]) == 1, "the killed run's staging folder is not left"
    assert not run["group_after_cancel"], "the group level ran although a participant was cancelled"


@pytest.mark.slurm
@pytest.mark.slow
def test_resubmission_runs_only_the_unfinished_participant_and_the_group(cohort_on_slurm):
    run = cohort_on_slurm
    array, group = run["second"]["array_job"], run["second"]["group_job"]
    assert run["second_states"] == {f"{array}_1": "COMPLETED", group: "COMPLETED"}
    labels_files = sorted((run["work"] / "slurm").glob("labels-*.txt"))
    assert [p.read_text().split() for p in labels_files] == [list(LABELS), [CANCELLED]]
    log = (run["work"] / "slurm" / f"msynth-participant-{array}_1.log").read_text()
    assert f"sub-{CANCELLED} ended" in log and "with exit code 0" in log
    assert "which did not finish" in log, "the resubmitted task did not remove the killed run's staging folder"
    staging = sorted((run["out"] / STAGING_FOLDER).glob(f"*_sub-{CANCELLED}"))
    assert len(staging) == 1 and staging != run["after_cancel"]["staging"]


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.parametrize("label", LABELS)
def test_every_participant_finished_with_its_outputs(cohort_on_slurm, label):
    cohort, out = cohort_on_slurm["cohort"], cohort_on_slurm["out"]
    assert _published(out, label) and (out / f"sub-{label}.html").is_file()
    sessions = sorted(p.name for p in (cohort.bids_dir / f"sub-{label}").glob("ses-*"))
    assert len(sessions) == (2 if label in PATIENTS else 1)
    for session in sessions:
        stem = f"sub-{label}_{session}"
        anat = out / f"sub-{label}" / session / "anat"
        raw = nb.load(cohort.bids_dir / f"sub-{label}" / session / "anat" / f"{stem}_T1w.nii.gz")
        mask = nb.load(anat / f"{stem}_space-T1w_desc-brain_mask.nii.gz")
        assert mask.shape == raw.shape and (mask.affine == raw.affine).all(), "the mask is not on the T1w grid"
        truth = nb.load(cohort.truth_dir / f"sub-{label}" / session / "anat"
                        / f"{stem}_space-T1w_desc-brain_mask.nii.gz")
        assert dice(mask.get_fdata() > 0, truth.get_fdata() > 0) >= 0.9
        for name in ("desc-preproc_T1w", "label-WM_probseg", "label-lesion_mask", "desc-synth_FLAIR"):
            assert (anat / f"{stem}_space-T1w_{name}.nii.gz").is_file(), name
        pet = out / f"sub-{label}" / session / "pet"
        for name in ("model-Logan_meas-DVR_mimap", "desc-synth_meas-DVR_mimap"):
            assert (pet / f"{stem}_trc-PIB_space-T1w_{name}.nii.gz").is_file(), name
        if label in PATIENTS:  # written by the group level
            assert (pet / f"{stem}_trc-PIB_space-T1w_desc-demyelinated_mask.nii.gz").is_file()


@pytest.mark.slurm
@pytest.mark.slow
def test_group_outputs_have_one_row_per_patient_and_source(cohort_on_slurm):
    out = cohort_on_slurm["out"]
    indices = pd.read_csv(out / "group" / "myelin_indices.tsv", sep="\t", na_values=["n/a"])
    assert sorted(set(indices["participant_id"])) == [f"sub-{p}" for p in PATIENTS]
    assert not indices.duplicated(["participant_id", "source"]).any() and "acquired" in set(indices["source"])
    assert (indices["lesion_voxels_t0"] > 0).all(), "a patient without lesions: the given masks were not used"
    assert indices["pct_demyelinated_t0"].notna().all() and indices["pct_demyelinated_t1"].notna().all()
    cohort = pd.read_csv(out / "group" / "cohort.tsv", sep="\t", na_values=["n/a"])
    assert sorted(cohort["participant_id"]) == [f"sub-{label}" for label in LABELS]
    assert (out / "group" / "report.html").is_file()


@pytest.mark.slurm
@pytest.mark.slow
def test_outputs_pass_the_bids_validator(cohort_on_slurm):
    assert errors_of(run_validator(cohort_on_slurm["out"])) == []


def test_submit_dry_run_labels_dependency_and_resubmission(tmp_path):
    """submit.sh without a cluster (--dry-run): labels from participants.tsv, the sbatch lines, --resubmit-failed."""
    bids, out, work = tmp_path / "bids", tmp_path / "out", tmp_path / "work"
    bids.mkdir()
    (bids / "dataset_description.json").write_text('{"Name": "dry", "BIDSVersion": "1.10.0"}')
    (bids / "participants.tsv").write_text("age\tparticipant_id\r\n40\tsub-A\r\n51\tsub-B\r\n33\tsub-C\r\n")
    (out / STAGING_FOLDER).mkdir(parents=True)
    (out / STAGING_FOLDER / "sub-A.lock").write_text(json.dumps({"state": "published", "folder": "x_sub-A"}) + "\n")
    (out / STAGING_FOLDER / "sub-B.lock").write_text(json.dumps({"state": "running", "folder": "y_sub-B"}) + "\n")

    def dry_run(*options: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(SUBMIT), "--dry-run", "--max-running", "3", "--sbatch", "--time=5", *options,
                               str(bids), str(out), str(work), "--", "--model", "a b"],
                              capture_output=True, text=True, env=ENV, timeout=60, check=False)

    first = dry_run()
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == ["array_job=DRYRUN", "group_job=DRYRUN"]
    assert "--array=1-3%3" in first.stderr and "--time=5" in first.stderr and "--model a\\ b" in first.stderr
    assert "--dependency=afterok:DRYRUN --kill-on-invalid-dep=yes" in first.stderr
    second = dry_run("--resubmit-failed", "--no-group")
    assert second.returncode == 0 and second.stdout.split() == ["array_job=DRYRUN"], second.stderr
    assert "2 of 3 participants have not finished" in second.stderr and "--array=1-2%3" in second.stderr
    labels = sorted((work / "slurm").glob("labels-*.txt"), key=lambda p: p.stat().st_mtime_ns)
    assert [p.read_text().split() for p in labels] == [["A", "B", "C"], ["B", "C"]]
    bad = dry_run("--max-running", "0")
    assert bad.returncode == 2 and "--max-running must be a positive integer, got '0'" in bad.stderr


#: msynth-train on the participant-level outputs above: a tiny FCN, 2 folds over the 3 participants, a job per fold
TRAIN = ("flair", "--folds", "2", "--epochs", "20", "--patch-size", "16", "--features", "8", "--depth", "2",
         "--optimizer", "adam", "--lr", "5e-3", "--device", "cpu", "--subject-salt", "s3cret", "--worker", "slurm",
         "--slurm-args", "--cpus-per-task=1 --mem=2G --time=30")


def _fold_jobs() -> dict[str, tuple[str, str]]:
    """``{fold: (job id, state)}`` of the queued fold jobs (pydra names them ``cv_fold.<uid>_<fold>``)."""
    queued = subprocess.run(["squeue", "--noheader", "--format=%i %j %T"], capture_output=True, text=True, env=ENV,
                            timeout=20, check=True).stdout
    return {name.rsplit("_", 1)[1]: (job, state) for job, name, state in (line.split() for line in queued.splitlines())
            if name.startswith("cv_fold.")}


def _cancel_a_fold_then_resume(derivatives: Path, root: Path) -> dict:
    """msynth-train --worker slurm; scancel fold 0's job once it has a checkpoint; the same command again."""
    model, work = root / "model", root / "model_work"
    command = [sys.executable, "-m", "msynth.cli.train", *TRAIN, "--derivatives", str(derivatives),
               "--out", str(model), "-w", str(work)]
    checkpoint = work / "folds" / "fold-0" / "checkpoint.pt"
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    try:
        _wait([], until=lambda: checkpoint.is_file() or first.poll() is not None, timeout=600)
        job, state = _fold_jobs().get("0", ("", "gone"))
        assert state == "RUNNING", f"fold 0's job is {state} once it has a checkpoint"
        subprocess.run(["scancel", job], env=ENV, timeout=20, check=True)
        first_log, _ = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    second = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=900, check=False)
    jobs_log = "".join(p.read_text() for p in sorted((work / "pydra").glob("*_scripts/*/slurm-*.err")))
    return {"model": model, "cancelled": job, "first": (first.returncode, first_log),
            "second": (second.returncode, second.stdout + second.stderr), "jobs_log": jobs_log}


@pytest.mark.slurm
@pytest.mark.slow
def test_a_cancelled_training_fold_resumes_from_its_checkpoint(cohort_on_slurm, tmp_path):
    """The participant-level outputs train a tiny FLAIR model, a SLURM job per fold; fold 0's job is cancelled
    mid-training: msynth-train ends the other fold and fails naming fold 0; the same command again resumes fold 0
    from its checkpoint (removing the lock its killed run left in pydra's cache), reuses fold 1, and writes the card.
    """
    run = _cancel_a_fold_then_resume(cohort_on_slurm["out"], tmp_path)
    code, log = run["first"]
    assert code == 1 and "fold(s) 0 did not finish" in log and "rerun the same command" in log, log[-3000:]
    assert f"fold job {run['cancelled']} ended CANCELLED" in log
    code, log = run["second"]
    assert code == 0, log[-3000:]
    assert "the lock of a fold whose run was killed" in log
    resumed = re.findall(r"fold-0/checkpoint\.pt: resuming after epoch (\d+)", run["jobs_log"])
    assert len(resumed) == 1 and int(resumed[0]) >= 1, run["jobs_log"][-3000:]
    assert run["jobs_log"].count("fold 1: MSE") == 1, "fold 1 was trained again"
    assert run["jobs_log"].count("fold 0: MSE") == 1
    from msynth.models.card import read_card

    assert [fold.fold for fold in read_card(run["model"]).training.cv] == [0, 1]
    assert (run["model"] / "model.pt").is_file()


def test_training_removes_the_locks_of_killed_folds_and_refuses_a_second_run(tmp_path, caplog):
    """No cluster: the pydra cache of msynth-train's folds, as a killed run leaves it, and the --worker options."""
    from msynth.cli import train as train_cli
    from msynth.models.training.workers import own_cache

    cache = tmp_path / "pydra"
    cache.mkdir()
    stale = cache / "FunctionTask_0123.lock"
    stale.write_text("")
    with caplog.at_level("INFO", logger="msynth.models"), own_cache(cache):
        assert not stale.exists() and "the lock of a fold whose run was killed" in caplog.text
        with pytest.raises(RuntimeError, match="another msynth-train is running on this work folder"):
            with own_cache(cache):
                pass
    with own_cache(cache):  # released when the first run ends
        pass
    parsed = train_cli.build_parser().parse_args(["flair", "--derivatives", "d", "--out", "m", "--plugin", "slurm"])
    assert parsed.worker == "slurm"  # --plugin: the former name of --worker
    assert train_cli.main(["flair", "--derivatives", str(tmp_path), "--out", str(tmp_path / "m"),
                           "--slurm-args=--time=5"]) == 1
