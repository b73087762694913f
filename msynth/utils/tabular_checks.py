"""Checks of the raw dataset's clinical tables: ``participants.tsv`` and ``sub-<L>/sub-<L>_sessions.tsv``.

Two kinds of problem, each reported on one line naming the file, the line and row, the value and what is allowed:

- a **malformed table** (unreadable, rows of unequal length, no id column, a missing or repeated id) raises
  :class:`TableError` — the run stops before any work, at both levels: no row of such a table can be trusted;
- a **bad value** (sex, group, age, EDSS outside their vocabulary or range) is returned as a line for the log: the
  participant level does not use these values, and the group level reads such a value as ``n/a`` (the participant
  is left out of what needs it), except a patient's baseline EDSS, which the group level requires
  (:mod:`msynth.utils.group_inputs`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd

from msynth.utils.errors import UsageError

#: ``sex`` values BIDS lists for ``participants.tsv`` (compared case-insensitively); ``n/a`` is also allowed.
SEX_VALUES = ("m", "male", "f", "female", "o", "other")
#: ``group`` values of the group level: healthy controls and patients (DESIGN.md).
GROUP_VALUES = ("HC", "MS")
#: Plausible ages (years).
AGE_RANGE = (0.0, 120.0)
#: The Expanded Disability Status Scale (Kurtzke 1983): 0 to 10 in steps of 0.5.
EDSS_RANGE = (0.0, 10.0)
EDSS_STEP = 0.5


class TableError(UsageError):
    """A BIDS table cannot be read as a table; the message names the file, the line and what to fix."""


def read_tsv(path: Path) -> pd.DataFrame:
    """Read a BIDS TSV as text (``n/a`` and empty cells → NaN), its index the line number in the file.

    Blank lines are dropped but counted, so that a message can name the line a user sees in an editor (the header
    is line 1).

    Raises
    ------
    TableError
        The file is missing, empty, not UTF-8 text, or has a row with more or fewer cells than the header.
    """
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path} does not exist — add it (BIDS tab-separated values)")
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines(), delimiter="\t"))
    except UnicodeDecodeError as err:
        raise TableError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}) — save it as UTF-8") from None
    lines = [(number, row) for number, row in enumerate(rows, start=1) if any(cell.strip() for cell in row)]
    if not lines:
        raise TableError(f"{path} is empty — write a header line and one row per entry")
    (_, header), body = lines[0], lines[1:]
    for number, row in body:
        if len(row) != len(header):
            raise TableError(f"{path} line {number} has {len(row)} cells but the header has {len(header)} — "
                             "separate the columns by one tab each, and write n/a for a missing value")
    table = pd.DataFrame([row for _, row in body], columns=[c.strip() for c in header],
                         index=pd.Index([number for number, _ in body], name="line"), dtype=str)
    return table.apply(lambda column: column.str.strip()).replace({"n/a": math.nan, "": math.nan})


def check_ids(table: pd.DataFrame, path: Path, column: str, prefix: str) -> None:
    """Check a table's id column: present, filled on every line, ``<prefix>-<label>``, no id twice.

    Parameters
    ----------
    table
        As :func:`read_tsv` returns it.
    path
        The file, named in the message.
    column, prefix
        ``participant_id`` and ``sub``, or ``session_id`` and ``ses``.

    Raises
    ------
    TableError
        Naming the line and the id.
    """
    if column not in table.columns:
        raise TableError(f"{path} has no {column} column (columns: {', '.join(table.columns)}) — BIDS requires it "
                         "as the first column")
    for line, value in table[column].items():
        if not isinstance(value, str) or not value.startswith(f"{prefix}-") or len(value) == len(prefix) + 1:
            raise TableError(f"{path} line {line}: {column} is {_shown(value)}; it must be {prefix}-<label>")
    repeated = table[column][table[column].duplicated(keep=False)]
    if not repeated.empty:
        raise TableError(f"{path} lines {', '.join(str(n) for n in repeated.index)}: {column} "
                         f"{repeated.iloc[0]} is listed more than once — keep one row per {prefix}-<label>")


def sex_problem(value: object) -> str | None:
    """Why a ``sex`` value is not allowed, or None (``n/a`` is allowed)."""
    if _absent(value) or str(value).lower() in SEX_VALUES:
        return None
    return "BIDS allows M/F/O, male/female/other (any case) or n/a"


def group_problem(value: object) -> str | None:
    """Why a ``group`` value is not one of :data:`GROUP_VALUES`, or None."""
    if value in GROUP_VALUES:
        return None
    return f"msynth's group level knows {' and '.join(GROUP_VALUES)} (healthy control, multiple sclerosis)"


def age_problem(value: object) -> str | None:
    """Why an ``age`` value is not a number of years in :data:`AGE_RANGE`, or None (``n/a`` is allowed)."""
    if _absent(value):
        return None
    number = _number(value)
    if number is None or not AGE_RANGE[0] <= number <= AGE_RANGE[1]:
        return f"age must be a number of years, {AGE_RANGE[0]:g}–{AGE_RANGE[1]:g}, or n/a"
    return None


def edss_problem(value: object) -> str | None:
    """Why an ``edss`` value is not on the EDSS scale (0–10 in steps of 0.5), or None (``n/a`` is allowed).

    >>> edss_problem("4.5"), edss_problem("4.3"), edss_problem("12"), edss_problem("n/a")
    (None, 'not in steps of 0.5', 'outside 0–10', None)
    """
    if _absent(value):
        return None
    number = _number(value)
    if number is None:
        return "not a number"
    if not EDSS_RANGE[0] <= number <= EDSS_RANGE[1]:
        return f"outside {EDSS_RANGE[0]:g}–{EDSS_RANGE[1]:g}"
    if not float(number / EDSS_STEP).is_integer():
        return f"not in steps of {EDSS_STEP:g}"
    return None


def participants_problems(table: pd.DataFrame, path: Path) -> list[str]:
    """The bad ``sex``, ``group`` and ``age`` values of ``participants.tsv``, one line each (columns present only).

    Parameters
    ----------
    table
        As :func:`read_tsv` returns it, ids checked with :func:`check_ids`.
    path
        The file, named in the lines.
    """
    checks = {"sex": sex_problem, "group": group_problem, "age": age_problem}
    return _value_problems(table, path, "participant_id", checks)


def sessions_problems(table: pd.DataFrame, path: Path) -> list[str]:
    """The bad ``edss`` values of a ``sub-<L>_sessions.tsv``, one line each (see :func:`participants_problems`)."""
    return _value_problems(table, path, "session_id", {"edss": _edss_cause})


def check_clinical_tables(bids_dir: Path, labels: Iterable[str] | None = None) -> list[str]:
    """Check ``participants.tsv`` and the ``sub-<L>_sessions.tsv`` of each participant, before any work.

    Parameters
    ----------
    bids_dir
        The raw dataset. Tables that are absent are not checked (BIDS only recommends them; the group level says
        what it misses).
    labels
        Participants whose rows and sessions tables are checked (default: every row of ``participants.tsv``).

    Returns
    -------
    list of str
        The bad values (one line each, for the log).

    Raises
    ------
    TableError
        A malformed table.
    """
    problems: list[str] = []
    labels = None if labels is None else list(labels)
    participants = Path(bids_dir) / "participants.tsv"
    if participants.is_file():
        table = read_tsv(participants)
        check_ids(table, participants, "participant_id", "sub")
        listed = table["participant_id"].str.removeprefix("sub-")
        table = table if labels is None else table[listed.isin(labels)]
        labels = list(listed) if labels is None else labels
        problems += participants_problems(table, participants)
    for label in labels or []:
        sessions = Path(bids_dir) / f"sub-{label}" / f"sub-{label}_sessions.tsv"
        if sessions.is_file():
            table = read_tsv(sessions)
            check_ids(table, sessions, "session_id", "ses")
            problems += sessions_problems(table, sessions)
    return problems


def _value_problems(table: pd.DataFrame, path: Path, id_column: str,
                    checks: dict[str, Callable[[object], str | None]]) -> list[str]:
    """One line per bad cell: file, line, row id, column, value, what is allowed."""
    problems = []
    for column, check in checks.items():
        if column not in table.columns:
            continue
        for line, row_id, value in zip(table.index, table[id_column], table[column]):
            cause = check(value)
            if cause:
                problems.append(f"{path} line {line} ({row_id}): {column} is {_shown(value)} — {cause}")
    return problems


def _edss_cause(value: object) -> str | None:
    """:func:`edss_problem` phrased for a message that names the value."""
    cause = edss_problem(value)
    return f"{cause}; EDSS is 0–10 in steps of {EDSS_STEP:g}, or n/a" if cause else None


def _absent(value: object) -> bool:
    """Whether a cell is n/a: None, NaN (as :func:`read_tsv` reads it), empty or ``n/a``."""
    if isinstance(value, str):
        return value.strip() in ("", "n/a")
    return value is None or (isinstance(value, float) and math.isnan(value))


def _number(value: object) -> float | None:
    """The finite number a cell holds, or None."""
    try:
        number = float(str(value))
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _shown(value: object) -> str:
    """A cell for a message: ``'5,5'``, or ``n/a`` (empty cells read as n/a)."""
    return "n/a" if _absent(value) else repr(value)
