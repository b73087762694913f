"""participants.tsv / sessions.tsv checks: a malformed table stops the run, a bad value is one line naming its row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from msynth.utils.group_inputs import collect_group_inputs
from msynth.utils.tabular_checks import TableError, check_clinical_tables, edss_problem

PARTICIPANTS = "participant_id\tage\tsex\tgroup\nsub-01\t40\tF\tMS\nsub-02\t35\tmale\tHC\n"
SESSIONS = "session_id\tedss\nses-1\t4.5\nses-2\tn/a\n"


def _dataset(root: Path, participants: str = PARTICIPANTS, sessions: str = SESSIONS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "participants.tsv").write_text(participants)
    for label in ("01", "02"):
        (root / f"sub-{label}").mkdir(exist_ok=True)
    (root / "sub-01" / "sub-01_sessions.tsv").write_text(sessions)
    return root


def test_valid_tables_have_no_problem(tmp_path):
    assert check_clinical_tables(_dataset(tmp_path)) == []


@pytest.mark.parametrize(("participants", "sessions", "expected"), [
    (PARTICIPANTS.replace("participant_id", "subject"), SESSIONS,
     r"participants\.tsv has no participant_id column \(columns: subject, age, sex, group\)"),
    (PARTICIPANTS.replace("sub-02\t35", "sub-01\t35"), SESSIONS,
     r"participants\.tsv lines 2, 3: participant_id sub-01 is listed more than once"),
    (PARTICIPANTS.replace("sub-02", "02"), SESSIONS,
     r"participants\.tsv line 3: participant_id is '02'; it must be sub-<label>"),
    (PARTICIPANTS.replace("\tHC", "\tHC\textra"), SESSIONS,
     r"participants\.tsv line 3 has 5 cells but the header has 4 — separate the columns by one tab each"),
    (PARTICIPANTS, SESSIONS.replace("session_id", "session"),
     r"sub-01_sessions\.tsv has no session_id column"),
    (PARTICIPANTS, SESSIONS + "\n\nses-1\t5\n",
     r"sub-01_sessions\.tsv lines 2, 6: session_id ses-1 is listed more than once"),
    (PARTICIPANTS, "", r"sub-01_sessions\.tsv is empty"),
])
def test_malformed_table_stops_with_its_line(tmp_path, participants, sessions, expected):
    with pytest.raises(TableError, match=expected):
        check_clinical_tables(_dataset(tmp_path, participants, sessions))


@pytest.mark.parametrize(("participants", "sessions", "expected"), [
    (PARTICIPANTS.replace("\tF\t", "\tX\t"), SESSIONS,
     "participants.tsv line 2 (sub-01): sex is 'X' — BIDS allows M/F/O, male/female/other (any case) or n/a"),
    (PARTICIPANTS.replace("\tHC", "\tcontrol"), SESSIONS,
     "participants.tsv line 3 (sub-02): group is 'control' — msynth's group level knows HC and MS"),
    (PARTICIPANTS.replace("\tHC", "\tn/a"), SESSIONS,
     "participants.tsv line 3 (sub-02): group is n/a — msynth's group level knows HC and MS"),
    (PARTICIPANTS.replace("\t35\t", "\t350\t"), SESSIONS,
     "participants.tsv line 3 (sub-02): age is '350' — age must be a number of years, 0–120, or n/a"),
    (PARTICIPANTS.replace("\t40\t", "\tforty\t"), SESSIONS,
     "participants.tsv line 2 (sub-01): age is 'forty' — age must be a number"),
    (PARTICIPANTS, SESSIONS.replace("4.5", "4.3"),
     "sub-01_sessions.tsv line 2 (ses-1): edss is '4.3' — not in steps of 0.5; EDSS is 0–10 in steps of 0.5, "
     "or n/a"),
    (PARTICIPANTS, SESSIONS.replace("4.5", "10.5"),
     "sub-01_sessions.tsv line 2 (ses-1): edss is '10.5' — outside 0–10"),
    (PARTICIPANTS, SESSIONS.replace("n/a", "4,5"),
     "sub-01_sessions.tsv line 3 (ses-2): edss is '4,5' — not a number"),
])
def test_bad_value_is_one_line_naming_file_row_value_and_rule(tmp_path, participants, sessions, expected):
    problems = check_clinical_tables(_dataset(tmp_path, participants, sessions))
    assert len(problems) == 1
    assert problems[0].startswith(str(tmp_path))
    assert expected in problems[0]


def test_only_the_requested_participants_are_checked(tmp_path):
    root = _dataset(tmp_path, PARTICIPANTS.replace("\t35\t", "\t350\t"), SESSIONS.replace("4.5", "4.3"))
    assert check_clinical_tables(root, ["02"]) != []
    assert len(check_clinical_tables(root, ["01"])) == 1  # the EDSS of sub-01
    assert check_clinical_tables(root, ["03"]) == []


@pytest.mark.parametrize(("value", "cause"), [
    ("0", None), ("9.5", None), ("10", None), (" 3.0 ", None), (float("nan"), None),
    ("-0.5", "outside 0–10"), ("inf", "not a number"), ("2.25", "not in steps of 0.5"), ("mild", "not a number"),
])
def test_edss_scale(value, cause):
    assert edss_problem(value) == cause


def test_group_level_stops_on_a_malformed_table(tmp_path):
    root = _dataset(tmp_path / "bids")
    (root / "sub-01" / "sub-01_sessions.tsv").write_text("session_id\tedss\nses-1\t4.5\t1\n")
    inputs = collect_group_inputs(root, tmp_path / "out")
    assert inputs.participants == [] and len(inputs.problems) == 1
    assert "sub-01_sessions.tsv line 2 has 3 cells but the header has 2" in inputs.problems[0]
    (root / "participants.tsv").unlink()
    assert "participants.tsv does not exist" in collect_group_inputs(root, tmp_path / "out").problems[0]


def _participant_outputs(out: Path, label: str, session: str) -> None:
    """Empty files standing for the maps the group level requires (it only looks for them here)."""
    from msynth.utils.group_inputs import REQUIRED, SESSION_FILES

    for key in REQUIRED:
        datatype, name = SESSION_FILES[key]
        path = out / f"sub-{label}" / f"ses-{session}" / datatype / f"sub-{label}_ses-{session}_{name}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


@pytest.mark.parametrize(("edss", "problem"), [
    ("4.5", None),
    ("4.3", "sub-01: EDSS of ses-1 in sub-01_sessions.tsv is '4.3', not in steps of 0.5 (line 2; EDSS is 0–10"),
    ("n/a", "sub-01: EDSS of ses-1 in sub-01_sessions.tsv is n/a (line 2); the EDSS regression needs the baseline"),
])
def test_group_level_notes_bad_values_and_needs_the_baseline_edss(tmp_path, edss, problem):
    participants = PARTICIPANTS.replace("\t35\tmale", "\t350\tfemme")
    root = _dataset(tmp_path / "bids", participants, SESSIONS.replace("4.5", edss))
    for label in ("01", "02"):
        (root / f"sub-{label}" / "ses-1").mkdir()
        _participant_outputs(tmp_path / "out", label, "1")
    inputs = collect_group_inputs(root, tmp_path / "out")
    assert [line.split(": ", 1)[1] for line in inputs.notes if "participants.tsv" in line] == [
        "sex is 'femme' — BIDS allows M/F/O, male/female/other (any case) or n/a",
        "age is '350' — age must be a number of years, 0–120, or n/a"]
    edss_problems = [line for line in inputs.problems if "EDSS" in line]
    assert len(edss_problems) == (problem is not None)
    assert problem is None or edss_problems[0].startswith(problem)
    control = next(p for p in inputs.participants if p.label == "02")
    assert control.group == "HC" and np.isnan(control.age)
