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
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np

from msynth.models.card import MODALITY_KEYS, Normalisation, channels_of

__all__ = [
    "CHANNEL_FILES", "Example", "Volume", "array_statistics", "compute_normalisation", "find_examples",
    "load_volume", "normalise", "normalise_array", "session_statistics", "subjects_of",
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
    """

    subject: str
    session: str | None
    images: dict[str, Path]
    mask: Path

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
    """

    subject: str
    session: str | None
    channels: tuple[str, ...]
    data: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    roi: np.ndarray | None = None

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

    Returns
    -------
    list of Example
        Sorted by subject and session. Sessions missing a file are skipped; the reason (the missing files) is logged.

    Raises
    ------
    FileNotFoundError
        If ``derivatives_dir`` is not a folder, or holds no ``sub-*`` folder.
    ValueError
        For an unknown modality key.
    """
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
        missing = [p.name for p in (*images.values(), mask) if not p.is_file()]
        if missing:
            LOGGER.info("%s: skipped for training — missing %s", label, ", ".join(missing))
            continue
        examples.append(Example(subject, session, images, mask))
    LOGGER.info("%d session(s) of %d subject(s) in %s have %s → %s", len(examples),
                len(subjects_of(examples)), derivatives_dir, "+".join(inputs), output)
    return examples


def subjects_of(items: Iterable[Example | Volume]) -> list[str]:
    """Sorted distinct subject labels."""
    return sorted({item.subject for item in items})


def _grid_images(example: Example, voxel_size: float | None) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Arrays of every channel and the mask on the mask's grid, resampled to ``voxel_size`` when given."""
    from msynth.preprocessing.resample import Grid, resample_to_grid, target_grid

    mask_img = nib.load(example.mask)
    grid = target_grid(mask_img, voxel_size) if voxel_size is not None else Grid.of(mask_img)
    reference = Grid.of(mask_img)
    same = voxel_size is None
    arrays = {}
    for channel, path in example.images.items():
        img = nib.load(path)
        if len(img.shape) != 3:
            raise ValueError(f"{path}: expected a 3-D image, got shape {img.shape}")
        if Grid.of(img).shape != reference.shape or not np.allclose(img.affine, reference.affine, atol=1e-3):
            raise ValueError(f"{path}: not on the grid of {example.mask.name} (space-T1w) — shape {img.shape} vs "
                             f"{reference.shape}; rerun the participant level")
        if same:
            arrays[channel] = np.asarray(img.dataobj, dtype=np.float32)
        else:
            arrays[channel] = np.asarray(resample_to_grid(img, grid, interpolation="linear").dataobj,
                                         dtype=np.float32)
    if same:
        mask = np.asarray(mask_img.dataobj) > 0
    else:
        mask = np.asarray(resample_to_grid(mask_img, grid, interpolation="mask").dataobj) > 0
    return arrays, mask, grid.affine


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
        Channels in the order of ``example.images``; non-finite values are set to 0.
    """
    channels = tuple(example.images)
    if cache_dir is not None:
        key = hashlib.sha256(repr((
            [(str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in (*example.images.values(), example.mask)],
            voxel_size,
        )).encode()).hexdigest()[:16]
        stem = Path(cache_dir) / (f"sub-{example.subject}" + (f"_ses-{example.session}" if example.session else "")
                                  + f"_{key}")
        files = [stem.with_name(stem.name + suffix) for suffix in ("_data.npy", "_mask.npy", "_affine.npy")]
        if not all(f.is_file() for f in files):
            stem.parent.mkdir(parents=True, exist_ok=True)
            volume = load_volume(example, voxel_size=voxel_size)
            for f, array in zip(files, (volume.data, volume.mask, volume.affine)):
                tmp = f.with_name(f"{f.name}.{os.getpid()}.part.npy")  # parallel folds may write at once
                np.save(tmp, array)
                tmp.replace(f)
        data, mask, affine = (np.load(f, mmap_mode="r") for f in files)
        return Volume(example.subject, example.session, channels, data, np.asarray(mask), np.asarray(affine))
    arrays, mask, affine = _grid_images(example, voxel_size)
    data = np.stack([np.nan_to_num(arrays[c], nan=0.0, posinf=0.0, neginf=0.0) for c in channels])
    if not mask.any():
        raise ValueError(f"{example.mask}: the brain mask is empty")
    return Volume(example.subject, example.session, channels, data.astype(np.float32), mask, affine)


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
