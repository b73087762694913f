"""Training examples from msynth participant outputs (a BIDS-Derivatives folder).

One example is one session: the preprocessed input images, the target image and the brain mask, all in space-T1w
(the voxel grid of the session's raw T1w, see DESIGN.md "Participant outputs"). Each image is read once, optionally
resampled to the model's voxel size with :mod:`msynth.preprocessing.resample`, and kept as a float32 array
(``.npy`` files memory-mapped from a cache folder when one is given, so that parallel folds share them and a cohort
does not have to fit in memory).

Intensities are z-scored per channel and set to 0 outside the brain, in one of two ways (:func:`normalise`):
``'cohort'`` uses the mean and standard deviation over all brain voxels of the training sessions (paper 001 §2.3 uses
all voxels; inside the brain the statistics do not depend on how much background the field of view holds);
``'image'`` uses each image's own brain statistics, which removes the scanner gain that differs from session to
session in uncalibrated MRI (up to a factor 2 between sessions of the 4 mm phantom).

For the ROI-weighted losses of thesis 003 (eqs. 3.5, 4.4) a session also carries region labels (:func:`roi_labels`:
lesion, NAWM, other) from the participant level's lesion and NAWM masks. The DVR models train on each subject's
baseline session only (``sessions='baseline'``), as the thesis trains on t0 and applies the fixed model to t1.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from msynth.models.card import MODALITY_KEYS, Normalisation, channels_of

__all__ = [
    "CHANNEL_FILES", "ROI_MASK_FILES", "Example", "Volume", "array_statistics", "compute_normalisation",
    "find_examples", "load_volume", "normalise", "normalise_array", "roi_labels", "session_statistics",
    "subject_groups", "subjects_of",
]

LOGGER = logging.getLogger("msynth.models")

#: Where each channel lives in a session folder: (datatype, name after ``sub-<L>[_ses-<S>]``).
CHANNEL_FILES: dict[str, tuple[str, str]] = {
    "T1w": ("anat", "space-T1w_desc-preproc_T1w.nii.gz"),
    "T2w": ("anat", "space-T1w_desc-preproc_T2w.nii.gz"),
    "PDw": ("anat", "space-T1w_desc-preproc_PDw.nii.gz"),
    "FLAIR": ("anat", "space-T1w_desc-preproc_FLAIR.nii.gz"),
    "T1SE": ("anat", "acq-SE_space-T1w_desc-preproc_T1w.nii.gz"),
    "DIR": ("anat", "acq-DIR_space-T1w_desc-preproc_T2w.nii.gz"),
    "MTR": ("anat", "space-T1w_desc-preproc_MTRmap.nii.gz"),
    "FA": ("dwi", "space-T1w_model-DTI_param-FA_dwimap.nii.gz"),
    "RD": ("dwi", "space-T1w_model-DTI_param-RD_dwimap.nii.gz"),
    "AD": ("dwi", "space-T1w_model-DTI_param-AD_dwimap.nii.gz"),
    "DVR": ("pet", "trc-PIB_space-T1w_model-Logan_meas-DVR_mimap.nii.gz"),
}
MASK_FILE = ("anat", "space-T1w_desc-brain_mask.nii.gz")
#: The masks the region labels of a session come from (:func:`roi_labels`), as the participant level names them.
ROI_MASK_FILES: dict[str, tuple[str, str]] = {
    "lesion": ("anat", "space-T1w_label-lesion_mask.nii.gz"),
    "NAWM": ("anat", "space-T1w_label-NAWM_mask.nii.gz"),
}


@dataclass(frozen=True)
class Example:
    """One session's files for training or evaluation.

    Attributes
    ----------
    subject, session
        Labels without prefixes (``session`` is ``None`` for datasets without sessions).
    images
        Channel name → file, for every input and output channel.
    mask
        The space-T1w brain mask.
    roi_masks
        ``'lesion'`` and ``'NAWM'`` → their space-T1w masks, for region labels (:data:`ROI_MASK_FILES`); empty:
        the session carries no labels.
    """

    subject: str
    session: str | None
    images: dict[str, Path]
    mask: Path
    roi_masks: dict[str, Path] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``sub-<L>[ ses-<S>]`` for messages."""
        return f"sub-{self.subject}" + (f" ses-{self.session}" if self.session else "")


@dataclass
class Volume:
    """One session's images as arrays on the model's grid (raw intensities, not normalised).

    Attributes
    ----------
    subject, session
        As in :class:`Example`.
    channels
        Channel names, in the order of ``data``'s first axis.
    data
        ``(C, X, Y, Z)`` float32 (possibly a read-only memory map).
    mask
        ``(X, Y, Z)`` bool brain mask.
    affine
        Voxel-to-world affine of the grid.
    roi
        ``(X, Y, Z)`` integer region labels for the ROI-weighted losses of thesis 003 (the codes of
        :mod:`msynth.models.losses`: other, NAWM, lesion), or ``None``.
    sketch
        ``(C_out, X, Y, Z)`` float32 prediction of the model's previous stage, z-scored in the target's units and 0
        outside the brain, or ``None``. A Refiner trains on it: its input is the session's input channels followed
        by the sketch (thesis 003 §3.2.1; :class:`msynth.models.inference.StageChain` at inference).
    """

    subject: str
    session: str | None
    channels: tuple[str, ...]
    data: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    roi: np.ndarray | None = None
    sketch: np.ndarray | None = None

    @property
    def label(self) -> str:
        """``sub-<L>[ ses-<S>]`` for messages."""
        return f"sub-{self.subject}" + (f" ses-{self.session}" if self.session else "")

    def take(self, channels: Sequence[str]) -> np.ndarray:
        """The ``(len(channels), X, Y, Z)`` raw intensities of the named channels."""
        return np.stack([np.asarray(self.data[self.channels.index(c)]) for c in channels])


def _check_keys(keys: Iterable[str], what: str) -> None:
    for key in keys:
        if key not in MODALITY_KEYS:
            raise ValueError(f"unknown {what} modality key {key!r}; known: {' '.join(MODALITY_KEYS)}")


def _session_folders(derivatives_dir: Path) -> list[tuple[str, str | None, Path]]:
    """(subject, session, folder) of every session folder, sorted."""
    found = []
    for sub_dir in sorted(derivatives_dir.glob("sub-*")):
        if not sub_dir.is_dir():
            continue
        subject = sub_dir.name.removeprefix("sub-")
        sessions = sorted(p for p in sub_dir.glob("ses-*") if p.is_dir())
        if sessions:
            found += [(subject, ses.name.removeprefix("ses-"), ses) for ses in sessions]
        else:
            found.append((subject, None, sub_dir))
    return found


def find_examples(
    derivatives_dir: str | PathLike[str],
    inputs: Sequence[str],
    output: str,
    *,
    subjects: Iterable[str] | None = None,
    roi: bool = False,
    sessions: Literal["all", "baseline"] = "all",
) -> list[Example]:
    """Sessions of a msynth output folder that have every input, the output and a brain mask.

    Parameters
    ----------
    derivatives_dir
        msynth participant-level ``OUTPUT_DIR``.
    inputs
        Input modality keys (e.g. ``['T1w', 'T2w', 'PDw', 'T1SE', 'DIR']``).
    output
        Output modality key (``'FLAIR'``).
    subjects
        Restrict to these subject labels (with or without ``sub-``).
    roi
        Also require the lesion and NAWM masks (:data:`ROI_MASK_FILES`), for region labels.
    sessions
        ``'all'``, or ``'baseline'``: only each subject's first session (in label order), as thesis 003 trains on
        the baseline (t0) sessions; a subject whose first session lacks a file is skipped, not replaced by a later
        session.

    Returns
    -------
    list of Example
        Sorted by subject and session. Sessions missing a file are skipped; the reason (the missing files) is logged.

    Raises
    ------
    FileNotFoundError
        If ``derivatives_dir`` is not a folder, or holds no ``sub-*`` folder.
    ValueError
        For an unknown modality key, or ``sessions`` of another value.
    """
    if sessions not in ("all", "baseline"):
        raise ValueError(f"sessions must be 'all' or 'baseline', got {sessions!r}")
    derivatives_dir = Path(derivatives_dir)
    _check_keys(inputs, "input")
    _check_keys([output], "output")
    if not derivatives_dir.is_dir():
        raise FileNotFoundError(f"{derivatives_dir}: no such folder (expected msynth participant-level outputs)")
    wanted = None if subjects is None else {s.removeprefix("sub-") for s in subjects}
    folders = _session_folders(derivatives_dir)
    if not folders:
        raise FileNotFoundError(f"{derivatives_dir}: no sub-* folders — run `msynth BIDS_DIR {derivatives_dir} "
                                "participant` first")
    if sessions == "baseline":
        folders = [item for k, item in enumerate(folders) if k == 0 or folders[k - 1][0] != item[0]]
    examples = []
    for subject, session, folder in folders:
        if wanted is not None and subject not in wanted:
            continue
        prefix = f"sub-{subject}" + (f"_ses-{session}" if session else "")
        label = f"sub-{subject}" + (f" ses-{session}" if session else "")
        images = {}
        for channel in channels_of([*inputs, output]):
            datatype, name = CHANNEL_FILES[channel]
            images[channel] = folder / datatype / f"{prefix}_{name}"
        mask = folder / MASK_FILE[0] / f"{prefix}_{MASK_FILE[1]}"
        roi_masks = {name: folder / datatype / f"{prefix}_{suffix}"
                     for name, (datatype, suffix) in ROI_MASK_FILES.items()} if roi else {}
        missing = [p.name for p in (*images.values(), mask, *roi_masks.values()) if not p.is_file()]
        if missing:
            LOGGER.info("%s: skipped for training — missing %s", label, ", ".join(missing))
            continue
        examples.append(Example(subject, session, images, mask, roi_masks))
    LOGGER.info("%d session(s) of %d subject(s) in %s have %s → %s", len(examples),
                len(subjects_of(examples)), derivatives_dir, "+".join(inputs), output)
    return examples


def subjects_of(items: Iterable[Example | Volume]) -> list[str]:
    """Sorted distinct subject labels."""
    return sorted({item.subject for item in items})


def subject_groups(derivatives_dir: str | PathLike[str], subjects: Iterable[str]) -> dict[str, str]:
    """Each subject's group (``'HC'``, ``'MS'``, …), for spreading controls over cross-validation folds.

    The ``group`` column of ``participants.tsv`` in ``derivatives_dir`` when it lists the subject (the
    participant level's outputs may carry a copy of the dataset's table); otherwise the label's prefix, ``HC`` or
    ``MS`` (the phantom's and many cohorts' convention: ``sub-HC01``); otherwise ``'n/a'``.

    >>> subject_groups('/nonexistent', ['HC01', 'MS07', '01'])
    {'HC01': 'HC', 'MS07': 'MS', '01': 'n/a'}
    """
    table = Path(derivatives_dir) / "participants.tsv"
    listed: dict[str, str] = {}
    if table.is_file():
        with table.open(newline="") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                if row.get("group") not in (None, "", "n/a"):
                    listed[row["participant_id"].removeprefix("sub-")] = row["group"]
    return {subject: listed.get(subject, next((g for g in ("HC", "MS") if subject.startswith(g)), "n/a"))
            for subject in subjects}


def roi_labels(lesion: np.ndarray, nawm: np.ndarray) -> np.ndarray:
    """Region labels of the ROI-weighted losses (codes of :mod:`msynth.models.losses`) from two masks.

    Lesion where ``lesion`` is set, NAWM where ``nawm`` is set outside the lesions, other elsewhere (grey matter,
    CSF, background): thesis 003 eq. 3.5's three regions.

    >>> roi_labels(np.array([1, 0, 0, 1]), np.array([1, 1, 0, 0])).tolist()
    [2, 1, 0, 2]
    """
    from msynth.models.losses import LESION, NAWM, OTHER  # torch: only where volumes are loaded for training

    lesion, nawm = np.asarray(lesion) > 0, np.asarray(nawm) > 0
    return np.where(lesion, LESION, np.where(nawm, NAWM, OTHER)).astype(np.int8)


def _grid_images(example: Example, voxel_size: float | None) -> tuple[dict[str, np.ndarray], np.ndarray,
                                                                       np.ndarray, dict[str, np.ndarray]]:
    """Arrays of every channel, the brain mask and the ROI masks on the mask's grid, resampled to ``voxel_size``
    when given: ``(channels, mask, affine, roi_masks)``."""
    from msynth.preprocessing.resample import Grid, resample_to_grid, target_grid

    mask_img = nib.load(example.mask)
    reference = Grid.of(mask_img)
    grid = target_grid(mask_img, voxel_size) if voxel_size is not None else reference

    def read(path: Path, interpolation: str, dtype: type | None = None) -> np.ndarray:
        img = nib.load(path)
        if len(img.shape) != 3:
            raise ValueError(f"{path}: expected a 3-D image, got shape {img.shape}")
        if Grid.of(img).shape != reference.shape or not np.allclose(img.affine, reference.affine, atol=1e-3):
            raise ValueError(f"{path}: not on the grid of {example.mask.name} (space-T1w) — shape {img.shape} vs "
                             f"{reference.shape}; rerun the participant level")
        if voxel_size is not None:
            img = resample_to_grid(img, grid, interpolation=interpolation)
        return np.asarray(img.dataobj, dtype=dtype)

    arrays = {channel: read(path, "linear", np.float32) for channel, path in example.images.items()}
    roi_masks = {name: read(path, "mask") > 0 for name, path in example.roi_masks.items()}
    return arrays, read(example.mask, "mask") > 0, grid.affine, roi_masks


def load_volume(
    example: Example,
    *,
    voxel_size: float | None = None,
    cache_dir: str | PathLike[str] | None = None,
) -> Volume:
    """Read one session's images (every channel of ``example``) onto one grid.

    Parameters
    ----------
    example
        From :func:`find_examples`.
    voxel_size
        Isotropic voxel size in mm (the same field of view; :func:`msynth.preprocessing.resample.target_grid`), or
        ``None`` for the space-T1w grid itself.
    cache_dir
        Folder for ``.npy`` copies keyed by the files, their modification times and the voxel size; when given,
        arrays are memory-mapped read-only from it (and reused by later calls).

    Returns
    -------
    Volume
        Channels in the order of ``example.images``; non-finite values are set to 0. ``roi`` holds the region
        labels (:func:`roi_labels`) when the example has ROI masks.
    """
    channels = tuple(example.images)
    if cache_dir is not None:
        sources = (*example.images.values(), example.mask, *example.roi_masks.values())
        key = hashlib.sha256(repr((
            [(str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in sources], voxel_size,
        )).encode()).hexdigest()[:16]
        stem = Path(cache_dir) / (f"sub-{example.subject}" + (f"_ses-{example.session}" if example.session else "")
                                  + f"_{key}")
        suffixes = ("_data.npy", "_mask.npy", "_affine.npy") + (("_roi.npy",) if example.roi_masks else ())
        files = [stem.with_name(stem.name + suffix) for suffix in suffixes]
        if not all(f.is_file() for f in files):
            stem.parent.mkdir(parents=True, exist_ok=True)
            volume = load_volume(example, voxel_size=voxel_size)
            for f, array in zip(files, (volume.data, volume.mask, volume.affine, volume.roi)):
                tmp = f.with_name(f"{f.name}.{os.getpid()}.part.npy")  # parallel folds may write at once
                np.save(tmp, array)
                tmp.replace(f)
        data, mask, affine, *roi = (np.load(f, mmap_mode="r") for f in files)
        return Volume(example.subject, example.session, channels, data, np.asarray(mask), np.asarray(affine),
                      np.asarray(roi[0]) if roi else None)
    arrays, mask, affine, roi_masks = _grid_images(example, voxel_size)
    data = np.stack([np.nan_to_num(arrays[c], nan=0.0, posinf=0.0, neginf=0.0) for c in channels])
    if not mask.any():
        raise ValueError(f"{example.mask}: the brain mask is empty")
    roi = roi_labels(roi_masks["lesion"], roi_masks["NAWM"]) if roi_masks else None
    return Volume(example.subject, example.session, channels, data.astype(np.float32), mask, affine, roi)


def compute_normalisation(volumes: Sequence[Volume], channels: Sequence[str]) -> dict[str, Normalisation]:
    """Mean and standard deviation of each channel over all brain voxels of all ``volumes``.

    Sums are accumulated in float64, volume by volume. A channel that is constant inside the brain gets std 1
    (it then carries no information, and normalising it must not divide by zero).

    Returns
    -------
    dict
        Channel → :class:`~msynth.models.card.Normalisation`.
    """
    if not volumes:
        raise ValueError("no training volumes to compute normalisation statistics from")
    stats = {}
    for channel in channels:
        n = total = squares = 0.0
        for volume in volumes:
            values = np.asarray(volume.data[volume.channels.index(channel)])[volume.mask].astype(np.float64)
            n += values.size
            total += values.sum()
            squares += np.square(values).sum()
        mean = total / n
        std = float(np.sqrt(max(squares / n - mean**2, 0.0)))
        if not std > 1e-12 * max(1.0, abs(mean)):
            LOGGER.warning("channel %s is constant inside the brain (%g); its std is set to 1", channel, mean)
            std = 1.0
        stats[channel] = Normalisation(float(mean), std)
    return stats


def array_statistics(data: np.ndarray, mask: np.ndarray, channels: Sequence[str]) -> dict[str, Normalisation]:
    """Brain mean and standard deviation of each channel of one ``(C, X, Y, Z)`` array (std 1 if constant)."""
    stats = {}
    for channel, values in zip(channels, data):
        inside = np.asarray(values)[mask].astype(np.float64)
        if inside.size == 0:
            raise ValueError("the brain mask is empty")
        mean, std = float(inside.mean()), float(inside.std())
        stats[channel] = Normalisation(mean, std if std > 1e-12 * max(1.0, abs(mean)) else 1.0)
    return stats


def session_statistics(volume: Volume, channels: Sequence[str], normalisation: Mapping[str, Normalisation],
                       scope: str) -> Mapping[str, Normalisation]:
    """The statistics that z-score ``volume`` (:func:`normalise`): the cohort's, or its own (``scope='image'``)."""
    if scope == "image":
        return array_statistics(volume.take(channels), volume.mask, channels)
    return normalisation


def normalise(
    data: np.ndarray,
    mask: np.ndarray,
    channels: Sequence[str],
    stats: Mapping[str, Normalisation],
    scope: str = "cohort",
) -> np.ndarray:
    """z-score ``(C, X, Y, Z)`` intensities as a model card says (0 outside ``mask``).

    Parameters
    ----------
    scope
        ``'cohort'``: with ``stats`` (training-set statistics, paper 001 §2.3); ``'image'``: each channel with its own
        brain mean and standard deviation (robust to scanner gain differences between sessions; ``stats`` unused).
    """
    if scope == "image":
        stats = array_statistics(data, mask, channels)
    elif scope != "cohort":
        raise ValueError(f"scope must be 'cohort' or 'image', got {scope!r}")
    return normalise_array(data, mask, channels, stats)


def normalise_array(
    data: np.ndarray,
    mask: np.ndarray,
    channels: Sequence[str],
    stats: Mapping[str, Normalisation],
) -> np.ndarray:
    """z-score ``(C, …)`` raw intensities channel by channel and set voxels outside ``mask`` to 0 (float32)."""
    mean = np.array([stats[c].mean for c in channels], dtype=np.float32).reshape(-1, *([1] * mask.ndim))
    std = np.array([stats[c].std for c in channels], dtype=np.float32).reshape(-1, *([1] * mask.ndim))
    out = (np.asarray(data, dtype=np.float32) - mean) / std
    out *= mask[None]
    return out
