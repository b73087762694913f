"""Provenance of msynth's outputs: software versions, portable names of the files used, and table identifiers.

Sidecars never hold an absolute path, so that a derivatives folder stays true when it is moved or shared:

- a file of the raw dataset is ``bids:raw:<path in the dataset>`` (``DatasetLinks.raw`` of dataset_description.json);
- a lesion mask given with ``--lesion-masks`` is ``bids:raw:<path>`` when that folder lies inside the raw dataset
  (``derivatives/…``), else ``bids:lesions:<path under the --lesion-masks folder>`` (``DatasetLinks.lesions``;
  :func:`msynth.utils.derivatives.lesion_mask_uri`);
- a model folder is ``msynth/models/weights/<name>`` for a shipped model (relative to the folder holding the installed
  ``msynth`` package), else the folder's own name; its weights are identified by their SHA-256 in both cases.

Versions are read from the installed distributions' metadata (:mod:`importlib.metadata`): the main process never
imports torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from collections.abc import Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd

import msynth

#: Display name → distribution name of the libraries whose version a sidecar may record (msynth is always recorded).
DISTRIBUTIONS = {"ANTsPy": "antspyx", "torch": "torch", "MONAI": "monai"}
#: Where msynth and each of them is developed (the ``CodeURL`` of dataset_description.json's ``GeneratedBy``).
CODE_URLS = {"msynth": "https://github.com/msynth/msynth", "ANTsPy": "https://github.com/ANTsX/ANTsPy",
             "torch": "https://github.com/pytorch/pytorch", "MONAI": "https://github.com/Project-MONAI/MONAI"}
#: The folder holding the installed ``msynth`` package: shipped model folders are named relative to it.
PACKAGE_PARENT = Path(msynth.__file__).resolve().parent.parent
#: How :func:`msynth.models.inference.on_cpu_after_out_of_memory`'s callers begin the warning of a CPU fallback.
OUT_OF_MEMORY_WARNING = "CUDA ran out of memory"
#: Data dictionary of the identifier columns that begin every per-participant table.
ID_DICTIONARY = {
    "participant_id": {"Description": "Participant (sub-<label>), as in participants.tsv"},
    "session_id": {"Description": "Session (ses-<label>), as in sub-<label>_sessions.tsv"},
}


def software_versions(*names: str) -> dict[str, str]:
    """msynth's version and those of the named libraries (keys of :data:`DISTRIBUTIONS`), ``n/a`` when absent.

    >>> list(software_versions("torch"))
    ['msynth', 'torch']
    """
    return {"msynth": msynth.__version__, **{name: _installed_version(DISTRIBUTIONS[name]) for name in names}}


def _installed_version(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "n/a"


def generated_by() -> list[dict[str, str]]:
    """``GeneratedBy`` of dataset_description.json: msynth, then ANTsPy and torch, which compute its images."""
    return [{"Name": name, "Version": number, "CodeURL": CODE_URLS[name]}
            for name, number in software_versions("ANTsPy", "torch").items()]


def model_reference(model_dir: Path) -> str:
    """A model folder's portable name: relative to :data:`PACKAGE_PARENT` when shipped, else the folder's name.

    >>> model_reference(PACKAGE_PARENT / "msynth" / "models" / "weights" / "flair-fcn-phantom")
    'msynth/models/weights/flair-fcn-phantom'
    >>> model_reference(Path("/home/me/models/my-flair"))
    'my-flair'
    """
    folder = Path(model_dir).resolve()
    return folder.relative_to(PACKAGE_PARENT).as_posix() if folder.is_relative_to(PACKAGE_PARENT) else folder.name


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def cpu_fallbacks() -> Iterator[list[str]]:
    """Collect, into the yielded list, the CUDA out-of-memory fallbacks to the CPU warned of inside the block.

    Every warning of the block is issued again when it ends, so that it still reaches the log.
    """
    fallbacks: list[str] = []
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield fallbacks
        fallbacks += [str(w.message) for w in caught
                      if issubclass(w.category, RuntimeWarning) and str(w.message).startswith(OUT_OF_MEMORY_WARNING)]
    finally:
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def id_dictionary(ids: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """The data dictionary of the identifier columns ``ids`` (:data:`ID_DICTIONARY`)."""
    return {column: ID_DICTIONARY[column] for column in ids}


def with_ids(table: pd.DataFrame, ids: Mapping[str, str]) -> pd.DataFrame:
    """``table`` with the identifier columns ``ids`` first, the same value in every row.

    >>> with_ids(pd.DataFrame({"volume": [1.0, 2.0]}), {"participant_id": "sub-01"}).columns.tolist()
    ['participant_id', 'volume']
    """
    return table.assign(**ids)[[*ids, *(column for column in table.columns if column not in ids)]]
