"""BIDS-Derivatives bookkeeping: dataset description, .bidsignore, file names, whole-or-nothing writes."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import filecmp
import json
import logging
import os
import socket
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from bids.layout import parse_file_entities

from msynth.utils.provenance import generated_by

LOGGER = logging.getLogger("msynth.derivatives")

#: Hidden folder of OUTPUT_DIR where data sinks write before a run is published (same file system as the outputs).
STAGING_FOLDER = ".msynth-staging"

#: Entity order of derivative names; ``from/to/mode`` name transforms, ``model/param/meas`` parametric maps.
ENTITY_ORDER: tuple[str, ...] = (
    "sub", "ses", "acq", "ce", "trc", "rec", "dir", "run",
    "from", "to", "mode", "space", "res", "den", "label", "desc", "model", "param", "meas",
)
#: pybids entity names of the source file that a derivative keeps, as short BIDS keys.
_SOURCE_ENTITIES = {
    "subject": "sub", "session": "ses", "acquisition": "acq", "ceagent": "ce",
    "tracer": "trc", "reconstruction": "rec", "direction": "dir", "run": "run",
}

#: Names BIDS has not adopted yet (transforms, DTI and PET parametric maps) and the per-participant
#: crash-report folder of Nipype: the validator is told to leave them alone, nothing else.
BIDSIGNORE = """\
*_xfm.mat
*_xfm.json
*_dwimap.nii.gz
*_dwimap.json
*_mimap.nii.gz
*_mimap.json
*_desc-CSFdistance_map.nii.gz
*_desc-CSFdistance_map.json
*_label-lesion_stats.tsv
*_label-lesion_stats.json
*_desc-synthFLAIR_metrics.tsv
*_desc-synthFLAIR_metrics.json
*_desc-synthDVR_metrics.tsv
*_desc-synthDVR_metrics.json
*_saliency.nii.gz
*_saliency.json
*_desc-demyelinated_mask.nii.gz
*_desc-demyelinated_mask.json
*_desc-synthdemyelinated_mask.nii.gz
*_desc-synthdemyelinated_mask.json
*_desc-pvcdemyelinated_mask.nii.gz
*_desc-pvcdemyelinated_mask.json
group
sub-*/log
sub-*/figures
sub-*.html
"""

DERIVATIVES_README = """\
msynth derivatives of {source}

Per participant and session (sub-<L>/ses-<S>/), in space-T1w (the voxel grid of the raw T1w):
brain mask, bias-corrected images, transforms to the T1w, tissue and lesion masks, DTI and PET maps,
and the synthetic FLAIR and [11C]PIB DVR maps, each with a JSON sidecar naming its sources and the
parameters used. logs/ holds each run's configuration and log; sub-<L>/log/ holds crash reports.
Stages whose inputs were missing are listed in the run's log with the reason they were skipped.
"""

BIDS_VERSION = "1.10.0"
#: Name of the ``DatasetLinks`` entry of a ``--lesion-masks`` folder outside the raw dataset.
LESION_MASKS_LINK = "lesions"


def source_entities(source_file: Path | str) -> dict[str, str]:
    """The entities of a raw file that its derivatives carry (subject, session, acq, trc, run …)."""
    parsed = parse_file_entities(str(source_file))
    return {short: str(parsed[name]) for name, short in _SOURCE_ENTITIES.items() if name in parsed}


def derivative_name(entities: dict[str, str], suffix: str, extension: str) -> str:
    """Build a BIDS file name from entities in the canonical order.

    >>> derivative_name({"space": "T1w", "sub": "01", "desc": "brain"}, "mask", ".nii.gz")
    'sub-01_space-T1w_desc-brain_mask.nii.gz'
    """
    unknown = set(entities) - set(ENTITY_ORDER)
    if unknown:
        raise ValueError(f"unknown entities {sorted(unknown)}; known: {ENTITY_ORDER}")
    parts = [f"{key}-{entities[key]}" for key in ENTITY_ORDER if entities.get(key)]
    return "_".join(parts + [suffix]) + extension


def derivative_path(entities: dict[str, str], datatype: str, suffix: str, extension: str) -> Path:
    """Relative path of a derivative: ``sub-<L>/[ses-<S>/]<datatype>/<name>``."""
    folder = Path(f"sub-{entities['sub']}")
    if entities.get("ses"):
        folder /= f"ses-{entities['ses']}"
    return folder / datatype / derivative_name(entities, suffix, extension)


def bids_uri(bids_dir: Path, path: Path, dataset_name: str = "raw") -> str:
    """A BIDS URI (``bids:raw:sub-01/anat/…``) for a file of a linked dataset."""
    return f"bids:{dataset_name}:{Path(path).relative_to(bids_dir).as_posix()}"


def lesion_masks_root(mask: Path) -> Path:
    """The ``--lesion-masks`` folder of a given mask: the folder above its ``sub-<L>`` folder."""
    return next(folder.parent for folder in Path(mask).parents if folder.name.startswith("sub-"))


def lesion_mask_uri(bids_dir: Path, mask: Path) -> str:
    """The BIDS URI of a lesion mask given with ``--lesion-masks``: in the raw dataset's ``raw`` link when the folder
    lies inside it, else in its own ``lesions`` link (:func:`dataset_links`).

    >>> lesion_mask_uri(Path("/data/bids"), Path("/data/bids/derivatives/lesions/sub-01/anat/sub-01_mask.nii.gz"))
    'bids:raw:derivatives/lesions/sub-01/anat/sub-01_mask.nii.gz'
    >>> lesion_mask_uri(Path("/data/bids"), Path("/data/masks/sub-01/ses-1/anat/sub-01_ses-1_mask.nii.gz"))
    'bids:lesions:sub-01/ses-1/anat/sub-01_ses-1_mask.nii.gz'
    """
    if Path(mask).is_relative_to(bids_dir):
        return bids_uri(bids_dir, mask)
    return bids_uri(lesion_masks_root(mask), mask, LESION_MASKS_LINK)


def dataset_links(bids_dir: Path, lesion_masks: Path | None = None) -> dict[str, str]:
    """``DatasetLinks`` of the derivatives: the raw dataset, and a ``--lesion-masks`` folder outside it."""
    links = {"raw": bids_dir.resolve().as_uri()}
    if lesion_masks is not None and not lesion_masks.resolve().is_relative_to(bids_dir.resolve()):
        links[LESION_MASKS_LINK] = lesion_masks.resolve().as_uri()
    return links


def table_ids(source_file: Path) -> dict[str, str]:
    """``participant_id`` and, in a dataset with sessions, ``session_id`` of a raw file's session (a table's first
    columns).

    >>> table_ids(Path("sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz"))
    {'participant_id': 'sub-01', 'session_id': 'ses-2'}
    """
    entities = source_entities(source_file)
    ids = {"participant_id": f"sub-{entities['sub']}"}
    if "ses" in entities:
        ids["session_id"] = f"ses-{entities['ses']}"
    return ids


def write_dataset_description(output_dir: Path, bids_dir: Path, lesion_masks: Path | None = None) -> None:
    """Write the derivatives' ``dataset_description.json`` and ``.bidsignore`` (atomically).

    ``GeneratedBy`` names msynth and the versions of ANTsPy and torch that computed the images; ``DatasetLinks`` the
    raw dataset and ``lesion_masks`` (``--lesion-masks``) when it lies outside it, the datasets that the sidecars'
    BIDS URIs name. Links of an earlier run are kept (a later run without ``--lesion-masks``, or the group level,
    leaves the sidecars it did not write valid).
    """
    raw = _read_json(bids_dir / "dataset_description.json")
    source = {"URL": bids_dir.resolve().as_uri()}
    for key in ("DatasetDOI", "Version"):
        if key in raw:
            source["DOI" if key == "DatasetDOI" else "Version"] = raw[key]
    description = {
        "Name": f"msynth derivatives of {raw.get('Name', bids_dir.name)}",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": generated_by(),
        "SourceDatasets": [source],
        "DatasetLinks": {**_read_json(output_dir / "dataset_description.json").get("DatasetLinks", {}),
                         **dataset_links(bids_dir, lesion_masks)},
        "HowToAcknowledge": "Cite msynth and the methods listed in each file's sidecar.",
    }
    atomic_write_text(output_dir / "dataset_description.json", json.dumps(description, indent=2) + "\n")
    atomic_write_text(output_dir / ".bidsignore", BIDSIGNORE)
    atomic_write_text(output_dir / "README", DERIVATIVES_README.format(source=bids_dir.resolve()))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


#: Name prefix of the temporaries that :func:`atomic_target` renames into place; a leftover one (a killed process)
#: is removed by :func:`remove_temporaries`.
TMP_PREFIX = ".msynth-tmp-"
#: errno values of a link that the file system refuses (no hard links there): the file is copied instead.
_NO_HARD_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.ENOTSUP})


@contextlib.contextmanager
def atomic_target(path: Path, *, keep_identical: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; renamed onto ``path`` when the block ends, removed if it fails.
    With ``keep_identical``, an existing file with the same bytes is left untouched (its time stamp included), so
    that a rerun rewrites nothing.

    Readers see the old file or the new one, never half of one, and a failed write (a full disk) leaves nothing. The
    temporary's name is unique (several processes may write the same file: SLURM array tasks sharing OUTPUT_DIR
    write its dataset description) and ends like ``path`` (nibabel picks the format from it). An OSError that names no
    file (a full disk met by a compressed stream) is raised again naming ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{path.name}")
    try:
        yield tmp
        if keep_identical and path.is_file() and filecmp.cmp(tmp, path, shallow=False):
            tmp.unlink()
        else:
            os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        if error.filename is None:
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str, *, keep_identical: bool = False) -> None:
    """Write a text file through :func:`atomic_target`."""
    with atomic_target(path, keep_identical=keep_identical) as tmp:
        tmp.write_text(text)


def atomic_copy(source: Path, target: Path) -> None:
    """Copy a file into place through :func:`atomic_target`."""
    with atomic_target(target) as tmp:
        shutil.copyfile(source, tmp)


def remove_temporaries(folder: Path) -> list[Path]:
    """Remove the :func:`atomic_target` temporaries that a killed process left under ``folder``."""
    leftovers = sorted(folder.rglob(f"{TMP_PREFIX}*")) if folder.is_dir() else []
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


def publish_staged(staging_dir: Path, output_dir: Path) -> list[Path]:
    """Move every file of a finished run from its staging folder into the derivatives, then remove the folder.

    Staging lives inside ``output_dir``, so each move is an atomic rename on one file system; a run whose workflow
    failed is never published and keeps its previous outputs.
    """
    published = []
    for source in _staged_files(staging_dir):
        target = output_dir / source.relative_to(staging_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        published.append(target)
    shutil.rmtree(staging_dir, ignore_errors=True)
    return published


class Publication(NamedTuple):
    """The derivatives a :func:`link_staged` call wrote, and those already up to date."""

    written: list[Path]
    unchanged: list[Path]


def link_staged(staging_dir: Path, output_dir: Path) -> Publication:
    """Publish every file of a finished participant by hard link; the staging folder stays, as the sinks' cache.

    The data sinks' cached results point into the staging folder: kept, it lets a rerun with the same work directory
    run no node at all, and a rerun still restores an output the user deleted. Staging lives inside ``output_dir``,
    so a link costs no space and each one is renamed into place atomically; an output that already is the staged
    file (or has its bytes) is left untouched, mtime included. Where the file system has no hard links, files are
    copied.
    """
    written, unchanged = [], []
    for source in _staged_files(staging_dir):
        target = output_dir / source.relative_to(staging_dir)
        if target.is_file() and _same_bytes(source, target):
            unchanged.append(target)
            continue
        with atomic_target(target) as tmp:
            _link_or_copy(source, tmp)
        written.append(target)
    return Publication(written, unchanged)


def _staged_files(staging_dir: Path) -> list[Path]:
    return sorted(p for p in staging_dir.rglob("*") if p.is_file() and not p.name.startswith(TMP_PREFIX))


def _same_bytes(a: Path, b: Path) -> bool:
    return os.path.samefile(a, b) or filecmp.cmp(a, b, shallow=False)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError as error:
        if error.errno not in _NO_HARD_LINK:
            raise
        shutil.copyfile(source, target)


class StagingBusy(RuntimeError):
    """Another process holds the staging folder, and so the outputs, of a participant."""


class Staging:
    """The staging folder of one participant, held under a lock for the whole of its run (a context manager).

    ``OUTPUT_DIR/.msynth-staging/<name>.lock`` is locked with ``fcntl.flock``: a second process on the same
    participant (a resubmitted SLURM task) is refused with :class:`StagingBusy`, and the kernel releases the lock of
    a killed process. The lock file records the run holding it and the state of its folder ``<run id>_<name>``:
    ``running``, then ``published``. On entry, a folder left ``published`` is reused (the sinks' cache, see
    :func:`link_staged`); any other folder of the participant was left by a failed or killed run and is removed, as
    are the temporaries a killed publish left in ``OUTPUT_DIR/<name>``. On exit, a folder that was not published is
    removed: a run's partial files never outlive it.
    """

    def __init__(self, output_dir: Path, name: str, run_id: str) -> None:
        self.output_dir, self.name, self.run_id = output_dir, name, run_id
        self.root = output_dir / STAGING_FOLDER
        self.folder = self.root / f"{run_id}_{name}"
        self._lock_file = self.root / f"{name}.lock"
        self._handle = None
        self._published = False

    def __enter__(self) -> Staging:
        self.root.mkdir(parents=True, exist_ok=True)
        self._handle = open(self._lock_file, "a+")  # noqa: SIM115 - held until __exit__
        try:
            self._lock()
            previous = self._read_state()
            kept = previous.get("folder")
            if previous.get("state") == "published" and kept and (self.root / kept).is_dir():
                self.folder = self.root / kept
            for stale in sorted(self.root.glob(f"*_{self.name}")):
                if stale != self.folder:
                    LOGGER.warning("%s: removing %s, left by run %s, which did not finish", self.name, stale,
                                   previous.get("run_id", "?"))
                    shutil.rmtree(stale)
            leftovers = remove_temporaries(self.output_dir / self.name)
            if leftovers:
                LOGGER.warning("%s: removed %d temporary files left by an interrupted publish", self.name,
                               len(leftovers))
            self._write_state("running")
        except BaseException:
            self._handle.close()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        try:
            if not self._published:
                shutil.rmtree(self.folder, ignore_errors=True)
        finally:
            self._handle.close()  # releases the lock

    def publish(self) -> Publication:
        """Link the staged files into the derivatives (:func:`link_staged`) and mark the folder published."""
        publication = link_staged(self.folder, self.output_dir)
        self._write_state("published")
        self._published = True
        return publication

    def _lock(self) -> None:
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read_state()
            raise StagingBusy(
                f"another msynth process (run {holder.get('run_id', '?')}, pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')}) is processing {self.name} into {self.output_dir}; left to it — wait for "
                "it to finish, or give each participant to one process"
            ) from None
        except OSError as error:  # some network file systems (Lustre without -o flock) have no flock
            LOGGER.warning("%s: %s cannot be locked (%s); msynth cannot tell whether another process works on %s — "
                           "give each participant to one process", self.name, self._lock_file, error.strerror,
                           self.name)

    def _read_state(self) -> dict[str, str]:
        self._handle.seek(0)
        try:
            state = json.loads(self._handle.read() or "{}")
        except json.JSONDecodeError:  # a write cut short by a kill
            return {}
        return state if isinstance(state, dict) else {}

    def _write_state(self, state: str) -> None:
        record = {"state": state, "folder": self.folder.name, "run_id": self.run_id, "pid": os.getpid(),
                  "host": socket.gethostname()}
        self._handle.truncate(0)
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()
