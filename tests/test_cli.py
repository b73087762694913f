"""The BIDS-App command line: options, and each input check's exact message and exit code."""

from __future__ import annotations

import json
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
    """Workers are forked from the main process (inheriting its log handlers) only while it has not run torch."""
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
