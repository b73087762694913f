"""``--bids-database-dir``: pybids' index of the input dataset, built once and loaded by the runs after it.

The first run indexes ``BIDS_DIR`` (:func:`msynth.utils.bids.open_layout`) and saves the index in ``DIR``;
later runs, e.g. the tasks of a SLURM array, load it instead of walking and parsing the dataset again. Two runs that
find ``DIR`` empty at once do not both build it: the first takes a lock (``DIR/.msynth-index.lock``, ``flock``) and
the other waits, then loads; the index is written to a temporary folder in ``DIR`` and renamed into place, so that a
run never loads a half-written index (nor where the file system has no ``flock``, where both then build).

An index says nothing of the files added or changed after it was built. Beside it, ``DIR/msynth_index.json`` holds
a fingerprint (names, sizes and modification times of the files) of the dataset's top-level files and of each
participant's folder; a run recomputes those of its own participants (a few ``stat`` calls, no file read) and
refuses an index they no longer match, or one of another dataset or pybids version: delete ``DIR`` to rebuild it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import bids
from bids import BIDSLayout

from msynth.utils.bids import open_layout
from msynth.utils.errors import UsageError

__all__ = ["FINGERPRINT_FILE", "INDEX_FILE", "dataset_fingerprints", "open_indexed_layout"]

LOGGER = logging.getLogger("msynth.bids")

#: pybids' index file in its ``database_path``.
INDEX_FILE = "layout_index.sqlite"
#: What the index was built from: dataset, pybids version, time, and the fingerprints.
FINGERPRINT_FILE = "msynth_index.json"
_LOCK_FILE = ".msynth-index.lock"
#: The fingerprint key of the dataset's top-level files (``dataset_description.json``, inherited sidecars).
_TOP_LEVEL = "top-level files"


def open_indexed_layout(bids_dir: Path, database_dir: Path, participants: list[str]) -> BIDSLayout:
    """The pybids layout of ``bids_dir`` (derivatives excluded), loaded from ``database_dir`` or built into it.

    Parameters
    ----------
    bids_dir
        The input dataset, absolute (its symbolic link loops already refused).
    database_dir
        ``--bids-database-dir``, absolute.
    participants
        The run's participant labels: their folders must be as they were when the index was built.

    Raises
    ------
    UsageError
        The index is stale (a participant's files or the top-level files changed since it was built) or belongs to
        another dataset or pybids version, or pybids cannot read the dataset or the index.
    """
    if not (database_dir / INDEX_FILE).is_file():
        database_dir.mkdir(parents=True, exist_ok=True)
        with _locked(database_dir):
            if not (database_dir / INDEX_FILE).is_file():
                return _build(bids_dir, database_dir)
    _check_fresh(bids_dir, database_dir, participants)
    try:
        layout = BIDSLayout(str(bids_dir), validate=False, derivatives=False, database_path=str(database_dir))
    except Exception as err:  # noqa: BLE001 - sqlite, SQLAlchemy and pybids errors alike: a damaged index
        raise UsageError(f"--bids-database-dir {database_dir}: the index cannot be read ({type(err).__name__}: "
                         f"{err}) — delete the folder to rebuild it") from None
    LOGGER.info("pybids index of %s loaded from %s", bids_dir, database_dir)
    return layout


def dataset_fingerprints(bids_dir: Path, participants: list[str] | None = None) -> dict[str, str]:
    """A digest of the names, sizes and modification times of the top-level files and of each participant's files.

    Parameters
    ----------
    bids_dir
        The dataset.
    participants
        Labels whose folders to fingerprint; None: every ``sub-*`` folder.
    """
    if participants is None:
        participants = sorted(p.name.removeprefix("sub-") for p in bids_dir.glob("sub-*") if p.is_dir())
    top = sorted(entry.path for entry in os.scandir(bids_dir) if entry.is_file())
    fingerprints = {_TOP_LEVEL: _digest(bids_dir, top)}
    for label in participants:
        paths = [os.path.join(root, name) for root, _dirs, files in os.walk(bids_dir / f"sub-{label}")
                 for name in files]
        fingerprints[f"sub-{label}"] = _digest(bids_dir, sorted(paths))
    return fingerprints


def _digest(bids_dir: Path, paths: list[str]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:  # a broken link (an annexed file not fetched)
            stat = os.lstat(path)
        digest.update(f"{os.path.relpath(path, bids_dir)}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(database_dir: Path) -> Iterator[None]:
    """Hold ``DIR/.msynth-index.lock`` (waiting for another process's build); no lock where ``flock`` fails."""
    with open(database_dir / _LOCK_FILE, "a") as handle:
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                LOGGER.info("--bids-database-dir %s: another process is indexing the dataset; waiting for it",
                            database_dir)
                fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as err:  # Lustre without -o flock: both build, the renames keep the index whole
            LOGGER.debug("no lock on %s (%s): building without it", database_dir / _LOCK_FILE, err)
        yield


def _build(bids_dir: Path, database_dir: Path) -> BIDSLayout:
    """Index the dataset, and save the index and its fingerprints in ``database_dir`` (renamed into place)."""
    fingerprints = dataset_fingerprints(bids_dir)  # before indexing: a file changed meanwhile makes the index stale
    layout = open_layout(bids_dir)
    record = {"BIDSDir": str(bids_dir), "PyBIDS": bids.__version__,
              "Built": datetime.now(timezone.utc).isoformat(timespec="seconds"), "Fingerprints": fingerprints}
    building = Path(tempfile.mkdtemp(prefix=".building-", dir=database_dir))
    try:
        layout.save(str(building), replace_connection=False)
        (building / FINGERPRINT_FILE).write_text(json.dumps(record, indent=2) + "\n")
        os.replace(building / FINGERPRINT_FILE, database_dir / FINGERPRINT_FILE)
        os.replace(building / INDEX_FILE, database_dir / INDEX_FILE)  # last: its presence means a whole index
    finally:
        shutil.rmtree(building, ignore_errors=True)
    LOGGER.info("pybids index of %s built and saved in %s (%d participants)", bids_dir, database_dir,
                len(fingerprints) - 1)
    return layout


def _check_fresh(bids_dir: Path, database_dir: Path, participants: list[str]) -> None:
    """Raise UsageError unless the index in ``database_dir`` was built from ``bids_dir`` as it is now."""
    where = f"--bids-database-dir {database_dir}"
    rebuild = "delete the folder to index the dataset again, or pass another one"
    try:
        record = json.loads((database_dir / FINGERPRINT_FILE).read_text())
        built, source, version, known = (record["Built"], record["BIDSDir"], record["PyBIDS"],
                                         record["Fingerprints"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"{where} holds an index msynth did not build (no readable {FINGERPRINT_FILE}) — "
                         f"{rebuild}") from None
    if source != str(bids_dir):
        raise UsageError(f"{where} indexes {source}, not {bids_dir} — {rebuild}")
    if version != bids.__version__:
        raise UsageError(f"{where} was built by pybids {version}, this is pybids {bids.__version__} — {rebuild}")
    current = dataset_fingerprints(bids_dir, participants)
    changed = [name for name, digest in current.items() if known.get(name) != digest]
    if changed:
        raise UsageError(f"{where} indexes {bids_dir} as it was at {built}; since then {', '.join(changed)} changed "
                         f"(a file added, removed or modified) — {rebuild}")
