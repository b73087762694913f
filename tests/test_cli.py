"""The BIDS-App command line: options, and each input check's exact message and exit code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from msynth.cli import run as cli
from msynth.cli.parser import build_parser


def test_help_lists_every_bids_app_option(capsys):
    with pytest.raises(SystemExit) as excinfo:
        cli.main(["--help"])
    assert excinfo.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "bids_dir", "output_dir", "{participant,group}", "--participant-label", "--session-label",
        "-w WORK_DIR, --work-dir", "--nprocs", "--omp-nthreads", "--bids-filter-file",
        "--skip-bids-validation", "--device {auto,cpu,cuda}", "-v, --verbose", "--version",
    ):
        assert option in text, option


def test_version(capsys):
    import msynth

    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"msynth {msynth.__version__}"


@pytest.mark.parametrize("given", [["01", "sub-02"], ["sub-01", "02"]])
def test_labels_with_or_without_prefix(given, tmp_path):
    args = build_parser().parse_args(
        [str(tmp_path), str(tmp_path / "out"), "participant", "--participant-label", *given,
         "--session-label", "ses-1", "2"]
    )
    assert args.participant_label == ["01", "02"]
    assert args.session_label == ["1", "2"]


def _error(capsys, argv: list[str]) -> str:
    """Run msynth expecting exit code 1; return the error message (log lines before it dropped)."""
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    return err[err.index("msynth: error:"):].strip()


def test_missing_bids_dir(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert _error(capsys, [str(missing), str(tmp_path / "out"), "participant"]) == (
        f"msynth: error: BIDS directory {missing} does not exist — pass the root folder of a BIDS dataset"
    )


def test_not_a_bids_dataset(tmp_path, capsys):
    folder = tmp_path / "raw"
    folder.mkdir()
    assert _error(capsys, [str(folder), str(tmp_path / "out"), "participant"]) == (
        f"msynth: error: {folder} is not a BIDS dataset: it has no dataset_description.json — "
        "pass the dataset's root folder"
    )


@pytest.mark.parametrize("inside", ["", "derivatives/msynth"])
def test_output_inside_bids_dir(tiny_bids, tmp_path, capsys, inside):
    output = tiny_bids / inside if inside else tiny_bids
    message = _error(capsys, [str(tiny_bids), str(output), "participant", "-w", str(tmp_path / "work")])
    assert message == (
        f"msynth: error: output directory {output} is the input BIDS dataset {tiny_bids} or lies inside it; "
        "msynth never writes into its input — choose a folder outside it"
    )


def test_work_dir_inside_bids_dir(tiny_bids, tmp_path, capsys):
    work = tiny_bids / "work"
    assert _error(capsys, [str(tiny_bids), str(tmp_path / "out"), "participant", "-w", str(work)]) == (
        f"msynth: error: work directory {work} lies inside the input BIDS dataset {tiny_bids}; "
        "msynth never writes into its input — pass -w with a folder outside it"
    )


def _one_line_error(capsys, argv: list[str]) -> str:
    """Run msynth expecting exit code 1 and one error line, no traceback; return that line."""
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("msynth: error:")]
    assert err.rstrip().endswith(line)
    return line


# (which folder, how it is broken, expected message after "msynth: error: ")
BAD_FOLDERS = [
    ("output", lambda p: (p.write_text("x"), p)[1],
     "output directory {path} exists and is a file, not a folder — remove it or choose another OUTPUT_DIR"),
    ("work", lambda p: (p.write_text("x"), p)[1],
     "work directory {path} exists and is a file, not a folder — remove it or pass -w with another folder"),
    ("output", lambda p: (p.write_text("x"), p / "derivatives" / "msynth")[1],
     "output directory {path} cannot be created: {parent} is a file, not a folder — choose another OUTPUT_DIR"),
]


@pytest.mark.parametrize(("which", "make", "message"), BAD_FOLDERS)
def test_output_or_work_path_not_a_folder(tiny_bids, tmp_path, capsys, which, make, message):
    """An OUTPUT_DIR or -w that is a file (or lies below one) is refused before any work, in one line."""
    target = tmp_path / which
    path = make(target)
    folders = {"output": tmp_path / "output", "work": tmp_path / "work", which: path}
    argv = [str(tiny_bids), str(folders["output"]), "participant", "-w", str(folders["work"])]
    line = _one_line_error(capsys, argv)
    assert line == "msynth: error: " + message.format(path=path, parent=target)
    assert target.is_file() and target.read_text() == "x", "the file given as a folder was changed"
    assert not (tmp_path / ("work" if which == "output" else "output")).exists()


def test_read_only_output_dir(tiny_bids, tmp_path, capsys):
    """A folder without write permission (chmod 0o555) is refused in one line naming it and the cause."""
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("this user can write into a chmod 0o555 folder (root ignores permissions); the read-only "
                        "file-system cases are tested by the read-only bind mount and simulated EROFS tests")
        line = _one_line_error(capsys, _base(tiny_bids, tmp_path))
        assert line == (f"msynth: error: output directory {out} is not writable (permission denied) — "
                        "choose another OUTPUT_DIR")
    finally:
        out.chmod(0o755)


def _read_only_bind(folder: Path) -> list[str] | None:
    """A command prefix running a command with ``folder`` bind-mounted read-only (a mount namespace of its own, via
    ``unshare``), or None where this system does not allow it."""
    import shutil
    import subprocess

    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'
    prefix = [unshare, "-rm", "sh", "-c", script, str(folder)]
    probe = subprocess.run([*prefix, "touch", str(folder / ".probe")], capture_output=True, text=True)
    if probe.returncode == 0:  # mounted, but not read-only: do not trust this system's mounts
        (folder / ".probe").unlink()
        return None
    return prefix if "Read-only file system" in probe.stderr else None


def test_output_dir_on_a_read_only_bind_mount(tiny_bids, tmp_path):
    """A real read-only file system (a read-only bind mount, which root cannot write either): one line, exit 1."""
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    prefix = _read_only_bind(out)
    if prefix is None:
        pytest.skip("no read-only bind mount here (needs unshare and mount namespaces); "
                    "test_output_dir_on_read_only_file_system simulates the case")
    msynth = Path(sys.executable).parent / "msynth"
    run = subprocess.run([*prefix, str(msynth), *_base(tiny_bids, tmp_path), "--skip-bids-validation"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        f"msynth: error: output directory {out} is not writable (read-only file system) — choose another OUTPUT_DIR"
    )
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(("which", "exists"), [("out", True), ("out", False), ("work", True)])
def test_output_dir_on_read_only_file_system(tiny_bids, tmp_path, capsys, monkeypatch, which, exists):
    """A read-only file system (EROFS, simulated: mounting one needs privileges) gives one line, exit code 1."""
    import errno
    import tempfile

    folder = tmp_path / which
    probed = folder if exists else tmp_path
    if exists:
        folder.mkdir()
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        if Path(kwargs.get("dir", "")) == probed:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    line = _one_line_error(capsys, _base(tiny_bids, tmp_path))
    what, remedy = (("output directory", "choose another OUTPUT_DIR") if which == "out"
                    else ("work directory", "pass -w with another folder"))
    where = f"{folder} is not writable" if exists else f"{folder} cannot be created in {tmp_path}"
    assert line == f"msynth: error: {what} {where} (read-only file system) — {remedy}"
    assert list(folder.iterdir()) == [] if exists else not folder.exists()


def _base(tiny_bids: Path, tmp_path: Path) -> list[str]:
    return [str(tiny_bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work")]


def test_unknown_participant(tiny_bids, tmp_path, capsys):
    message = _error(capsys, _base(tiny_bids, tmp_path) + ["--participant-label", "sub-01", "07"])
    assert message == (
        f"msynth: error: participant label(s) 07 not found in {tiny_bids} (it has: 01, 02) — "
        "check --participant-label"
    )


def test_unknown_session(tiny_bids, tmp_path, capsys):
    message = _error(capsys, _base(tiny_bids, tmp_path) + ["--session-label", "3"])
    assert message == (
        f"msynth: error: session label(s) 3 not found in {tiny_bids} (it has: 1, 2) — check --session-label"
    )


def test_filter_file_not_json(tiny_bids, tmp_path, capsys):
    bad = tmp_path / "filter.json"
    bad.write_text('{"T1w": {"acquisition": "MPRAGE"},}')
    message = _error(capsys, _base(tiny_bids, tmp_path) + ["--bids-filter-file", str(bad)])
    assert message == (
        f"msynth: error: BIDS filter file {bad} is not valid JSON "
        "(Expecting property name enclosed in double quotes at line 1, column 35) — fix the file"
    )


def test_filter_file_unknown_modality(tiny_bids, tmp_path, capsys):
    bad = tmp_path / "filter.json"
    bad.write_text(json.dumps({"t1w": {"acquisition": "MPRAGE"}, "FLAIR": {"run": 1}}))
    message = _error(capsys, _base(tiny_bids, tmp_path) + ["--bids-filter-file", str(bad)])
    assert message == (
        f"msynth: error: BIDS filter file {bad} names unknown modality key(s) t1w — "
        "valid keys are T1w T2w PDw FLAIR T1SE DIR MTR DWI PET"
    )


def test_validator_errors_stop_the_run(tiny_bids, tmp_path, capsys):
    (tiny_bids / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T1w.json").write_text("{not json")
    message = _error(capsys, _base(tiny_bids, tmp_path) + ["--participant-label", "01"])
    first, *listing = message.splitlines()
    assert first == (
        f"msynth: error: the BIDS validator found {len(listing)} error(s) in {tiny_bids} — fix them, "
        "or pass --skip-bids-validation to run anyway:"
    )
    assert any("JSON_INVALID" in line and "sub-01_ses-1_T1w.json" in line for line in listing)
    assert not (tmp_path / "out").exists()


def test_validation_is_restricted_to_requested_participants(tiny_bids, tmp_path):
    from msynth.utils.validation import errors_of, validate_participants

    (tiny_bids / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T1w.json").write_text("{not json")
    assert errors_of(validate_participants(tiny_bids, ["01"])) == []
    assert any(issue.code == "JSON_INVALID" for issue in errors_of(validate_participants(tiny_bids, ["02"])))


def test_console_scripts_are_installed():
    """The entry points of setup.cfg exist beside the interpreter."""
    import subprocess
    import sys

    bin_dir = Path(sys.executable).parent
    version = subprocess.run([bin_dir / "msynth", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("msynth ")
    train = subprocess.run([bin_dir / "msynth-train", "flair", "--help"], capture_output=True, text=True)
    assert train.returncode == 0 and "--derivatives" in train.stdout
    phantom = subprocess.run([bin_dir / "msynth-phantom", "--help"], capture_output=True, text=True)
    assert phantom.returncode == 0 and "--voxel-size" in phantom.stdout


def test_group_level_without_participant_outputs_stops_before_any_work(tiny_bids, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main([str(tiny_bids), str(out), "group", "-w", str(tmp_path / "work")]) == 1
    error = capsys.readouterr().err
    assert "msynth: error: the group level cannot start:" in error
    assert f"{out} holds no participant-level output of the 2 participant(s) — run the participant level first" in error
    assert not out.exists()


def test_unknown_model_is_refused(tiny_bids, tmp_path, capsys):
    code = cli.main([str(tiny_bids), str(tmp_path / "out"), "participant", "--model", "no-such-model"])
    assert code == 1
    assert "--model no-such-model: neither a shipped model" in capsys.readouterr().err


def test_main_process_does_not_load_torch():
    """Workers are forked from the main process (faster to start than a forkserver's) only while it has not run torch."""
    import subprocess
    import sys

    code = ("import sys, msynth.cli.run, msynth.runner, msynth.pipelines.participant, msynth.group_runner; "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_workers_come_from_a_forkserver_once_torch_is_loaded():
    from msynth.runner import multiproc_arguments

    pytest.importorskip("torch")
    assert multiproc_arguments(3) == {"n_procs": 3, "raise_insufficient": False, "mp_context": "forkserver"}
