"""BIDS query layer: which image of each modality a session has, after the filter file.

msynth reads the modalities of the DESIGN.md contract (``MODALITY_KEYS``). Each has a default
pybids query; ``--bids-filter-file`` overrides entities of any of them, in the fMRIPrep way:
``null`` means "the entity must be absent" and ``"*"`` means "any value".
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bids import BIDSLayout
from bids.layout import Query

from msynth.utils.errors import UsageError

if TYPE_CHECKING:
    from msynth.utils.lesion_masks import GivenLesionMask

LOGGER = logging.getLogger("msynth.bids")

#: Modality keys of the contract, in the order stages use them.
MODALITY_KEYS: tuple[str, ...] = ("T1w", "T2w", "PDw", "FLAIR", "T1SE", "DIR", "MTR", "DWI", "PET")

#: Default pybids query per modality key (DESIGN.md "Raw BIDS input").
DEFAULT_QUERIES: dict[str, dict[str, object]] = {
    "T1w": {"datatype": "anat", "suffix": "T1w"},
    "T2w": {"datatype": "anat", "suffix": "T2w"},
    "PDw": {"datatype": "anat", "suffix": "PDw"},
    "FLAIR": {"datatype": "anat", "suffix": "FLAIR"},
    "T1SE": {"datatype": "anat", "suffix": "T1w", "acquisition": "SE"},
    "DIR": {"datatype": "anat", "suffix": "T2w", "acquisition": "DIR"},
    "MTR": {"datatype": "anat", "suffix": "MTRmap"},
    "DWI": {"datatype": "dwi", "suffix": "dwi"},
    "PET": {"datatype": "pet", "suffix": "pet", "tracer": "PIB"},
}

#: A file a more specific query claims is not also the generic modality
#: (``acq-SE_T1w`` is a T1SE, not a second T1w; ``acq-DIR_T2w`` is a DIR, not a T2w).
CLAIMED_BY: dict[str, tuple[str, ...]] = {"T1w": ("T1SE",), "T2w": ("DIR",)}

IMAGE_EXTENSIONS = [".nii", ".nii.gz"]

#: Top-level folders pybids does not index (its default ignore list, and derivatives, indexed separately).
NOT_INDEXED = frozenset({"code", "derivatives", "models", "sourcedata", "stimuli"})

#: Entities that never tell two runs of one modality of one session apart in a filter file.
_FIXED_ENTITIES = frozenset({"subject", "session", "datatype", "suffix", "extension"})


@dataclass
class SessionData:
    """The raw files msynth found for one session (``session`` is None without sessions).

    ``metadata`` holds each file's BIDS sidecar content, with JSON inheritance applied;
    ``gradients`` the ``.bval`` and ``.bvec`` of the DWI series (None where absent);
    ``lesion_mask`` the mask given with ``--lesion-masks``, if any.
    """

    subject: str
    session: str | None
    files: dict[str, Path] = field(default_factory=dict)
    metadata: dict[str, dict[str, object]] = field(default_factory=dict)
    gradients: tuple[Path | None, Path | None] = (None, None)
    extra_runs: dict[str, list[Path]] = field(default_factory=dict)
    lesion_mask: GivenLesionMask | None = None

    @property
    def label(self) -> str:
        """Human prefix for logs and errors, e.g. ``sub-01 ses-02``."""
        return f"sub-{self.subject}" + (f" ses-{self.session}" if self.session else "")

    @property
    def missing(self) -> list[str]:
        """Modality keys with no file in this session."""
        return [key for key in MODALITY_KEYS if key not in self.files]


def load_filter_file(path: Path | None) -> dict[str, dict[str, object]]:
    """Read ``--bids-filter-file`` and merge it over the default queries.

    Raises
    ------
    UsageError
        The file is missing, is not valid JSON, is not an object of objects, or names a key
        that is not a modality key.
    """
    queries = {key: dict(query) for key, query in DEFAULT_QUERIES.items()}
    if path is None:
        return queries
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"BIDS filter file {path} does not exist — check the path given to --bids-filter-file")
    try:
        overrides = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UsageError(
            f"BIDS filter file {path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}) — fix the file"
        ) from None
    if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
        raise UsageError(
            f'BIDS filter file {path} must be a JSON object of objects, e.g. {{"T1w": {{"acquisition": "MPRAGE"}}}}'
        )
    unknown = sorted(set(overrides) - set(MODALITY_KEYS))
    if unknown:
        raise UsageError(
            f"BIDS filter file {path} names unknown modality key(s) {', '.join(unknown)} — "
            f"valid keys are {' '.join(MODALITY_KEYS)}"
        )
    for key, entities in overrides.items():
        queries[key].update({name: _to_query_value(value) for name, value in entities.items()})
    return queries


def _to_query_value(value: object) -> object:
    """Translate the filter file's JSON conventions into pybids query values."""
    if value is None:
        return Query.NONE
    if value == "*":
        return Query.ANY
    return value


def find_symlink_loops(bids_dir: Path) -> list[Path]:
    """Symbolic links of a dataset that lead back to themselves or to a folder above them.

    pybids follows symbolic links to folders, so a link to a folder above it (``sub-01/anat/loop -> ..``) makes it
    index the same files again under ever longer paths (41 matches for one T1w), and a link that leads back to
    itself cannot be opened. Hidden folders and the folders pybids does not index (:data:`NOT_INDEXED`) are not
    searched; broken links are left to the image checks, which name them when a query selects them.

    Parameters
    ----------
    bids_dir
        The raw dataset.

    Returns
    -------
    list of pathlib.Path
        The looping links, in walk order.
    """
    loops = []
    for folder, dirnames, filenames in os.walk(bids_dir):  # symbolic links to folders are listed, not entered
        top = Path(folder) == Path(bids_dir)
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and not (top and d in NOT_INDEXED)]
        for name in dirnames + filenames:
            link = Path(folder) / name
            if not link.is_symlink():
                continue
            try:
                target = link.resolve(strict=True)
            except FileNotFoundError:
                continue
            except (RuntimeError, OSError):  # a link leading back to itself: RuntimeError up to Python 3.12
                loops.append(link)
                continue
            parent = Path(folder).resolve()
            if target == parent or target in parent.parents:
                loops.append(link)
    return loops


def check_symlink_loops(bids_dir: Path) -> None:
    """Stop, on one line naming the links, when the dataset has symbolic link loops (:func:`find_symlink_loops`).

    Run before anything walks the dataset: the BIDS validator reports such a loop as 40 errors, pybids indexes it.

    Raises
    ------
    UsageError
    """
    loops = find_symlink_loops(bids_dir)
    if loops:
        raise UsageError(
            f"{bids_dir} has {len(loops)} symbolic link loop(s) (a link to itself or to a folder above it): "
            f"{', '.join(str(link) for link in loops)} — remove or fix the link(s)"
        )


def open_layout(bids_dir: Path) -> BIDSLayout:
    """Index the raw dataset (derivatives excluded) with pybids.

    Raises
    ------
    UsageError
        The dataset has a symbolic link loop (:func:`check_symlink_loops`), or pybids cannot read a file of the
        dataset (for example a sidecar that is not valid JSON).
    """
    check_symlink_loops(bids_dir)
    try:
        return BIDSLayout(str(bids_dir), validate=False, derivatives=False)
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot index {bids_dir} with pybids: {err} — run the BIDS validator and fix the file") from None


def collect_session(
    layout: BIDSLayout, subject: str, session: str | None, queries: dict[str, dict[str, object]]
) -> SessionData:
    """Find one file per modality for a session.

    When a query matches several files, the first in sorted order is used and a warning names them all
    (:func:`duplicate_message`), so a user knows to narrow the query with ``--bids-filter-file``.
    """
    data = SessionData(subject=subject, session=session)
    scope = {"subject": subject, "session": session if session else Query.NONE}
    matches = {key: _query(layout, key, {**query, **scope}) for key, query in queries.items()}
    for key, claimers in CLAIMED_BY.items():
        claimed = {path for claimer in claimers for path in matches[claimer]}
        matches[key] = [path for path in matches[key] if path not in claimed]
    for key in MODALITY_KEYS:
        found = matches[key]
        if not found:
            continue
        data.files[key] = found[0]
        data.metadata[key] = dict(layout.get_metadata(str(found[0])))
        if len(found) > 1:
            data.extra_runs[key] = found[1:]
            LOGGER.warning(duplicate_message(layout, data.label, key, found))
    if "DWI" in data.files:
        dwi = data.files["DWI"]
        data.gradients = (_companion(layout, dwi, ".bval"), _companion(layout, dwi, ".bvec"))
    return data


def duplicate_message(layout: BIDSLayout, label: str, key: str, found: list[Path]) -> str:
    """The warning for several files matching one modality: their names, the one used, the filter that picks it.

    The filter holds the entities in which some other file differs from the one used (``null`` where the one used
    has none), so that it selects exactly that file; another file is selected by its own values of them.

    Examples
    --------
    ``sub-01 ses-1: 2 T1w images match (sub-01_ses-1_T1w.nii.gz, sub-01_ses-1_acq-MPRAGE_T1w.nii.gz); using
    sub-01_ses-1_T1w.nii.gz, which --bids-filter-file selects with {"T1w": {"acquisition": null}} — write the
    values of another file to use it``
    """
    entities = [layout.parse_file_entities(str(path)) for path in found]
    used = entities[0]
    names = sorted(set().union(*entities) - _FIXED_ENTITIES)
    selector = {name: used.get(name) for name in names if any(e.get(name) != used.get(name) for e in entities[1:])}
    listing = f"{len(found)} {key} images match ({', '.join(path.name for path in found)}); using {found[0].name}"
    if not selector:
        return f"{label}: {listing} — they differ only in their extension: remove the others"
    return (f"{label}: {listing}, which --bids-filter-file selects with {json.dumps({key: selector})} — write the "
            "values of another file to use it")


def _companion(layout: BIDSLayout, dwi: Path, extension: str) -> Path | None:
    """The ``.bval``/``.bvec`` that applies to a DWI series (BIDS inheritance), or None."""
    found = layout.get_nearest(str(dwi), suffix="dwi", extension=extension, all_=True)
    return Path(found[0]) if found else None


def _query(layout: BIDSLayout, key: str, query: dict[str, object]) -> list[Path]:
    try:
        found = layout.get(return_type="file", extension=IMAGE_EXTENSIONS, **query)
    except ValueError as err:
        raise UsageError(f"the query for {key} is invalid ({err}) — check --bids-filter-file") from None
    return sorted(Path(path) for path in found)


def report_session(data: SessionData) -> str:
    """One log line saying what a session has and lacks."""
    found = ", ".join(f"{key}={path.name}" for key, path in data.files.items()) or "nothing"
    missing = " ".join(data.missing) or "none"
    return f"{data.label}: found {found}; missing: {missing}"
