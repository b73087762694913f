"""A phantom session brought onto its T1w grid with the true transforms: model inputs without the participant level.

Tests and benchmarks of the synthesis models need a session's images co-registered and bias-corrected, but running
the participant level for that takes minutes. Here each MR image goes through the phantom's *true* transform to the
T1w grid and N4 inside the true brain mask, so what is measured is the model, not the preprocessing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from msynth.models.data import Volume

from .cohort import CohortResult
from .mri import PROTOCOLS


@dataclass(frozen=True)
class AlignedSession:
    """Images of one session on its T1w grid (modality key → file) and the truth masks on that grid."""

    subject: str
    session: str
    images: dict[str, Path]
    brain_mask: Path
    lesion_mask: Path
    wm_probseg: Path

    def volume(self) -> Volume:
        """The images as a :class:`msynth.models.data.Volume` (channels in the order of ``images``)."""
        mask = nib.load(self.brain_mask)
        data = np.stack([np.asarray(nib.load(path).dataobj, dtype=np.float32) for path in self.images.values()])
        return Volume(self.subject, self.session, tuple(self.images), data, np.asarray(mask.dataobj) > 0,
                      mask.affine)

    def truth_regions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Brain, lesion (inside the brain) and NAWM (:func:`msynth.segmentation.regions.nawm_mask`) from the truth."""
        from msynth.segmentation.regions import nawm_mask

        brain = np.asarray(nib.load(self.brain_mask).dataobj) > 0
        lesion = (np.asarray(nib.load(self.lesion_mask).dataobj) > 0) & brain
        return brain, lesion, nawm_mask(np.asarray(nib.load(self.wm_probseg).dataobj), lesion, brain)

    def acquired(self, key: str, brain: np.ndarray) -> np.ndarray:
        """The image of ``key`` (float64), 0 outside ``brain``."""
        return np.asarray(nib.load(self.images[key]).dataobj, dtype=np.float64) * brain


def align_session(cohort: CohortResult, subject: str, session: str, keys: Sequence[str], *,
                  newpath: str | Path, voxel_size: float | None = None,
                  bias_correction: bool = True) -> AlignedSession:
    """Move ``keys`` (MR modality keys of :data:`msynth.phantom.mri.PROTOCOLS`) of one session onto its T1w grid.

    Parameters
    ----------
    cohort
        From :func:`msynth.phantom.cohort.generate_cohort`.
    subject, session
        Labels without ``sub-`` / ``ses-``.
    keys
        Modalities to bring (``"T1w"`` is only bias-corrected).
    newpath
        Output directory.
    voxel_size
        Isotropic voxel size (mm) of a model's grid on the T1w field of view (as the synthesis node resamples for a
        card's ``voxel_size_mm``); images and truth masks are then resampled onto it. ``None``: the T1w grid.
    bias_correction
        N4 inside the true brain mask (default, as the participant level); ``False`` keeps the acquired intensities
        with their bias field (to tell what N4 does to the contrasts).

    Returns
    -------
    AlignedSession
    """
    from msynth.preprocessing.bias import n4_correct
    from msynth.preprocessing.registration import apply_transform
    from msynth.preprocessing.resample import to_target_space

    newpath = Path(newpath)
    label = f"sub-{subject}_ses-{session}"
    anat = cohort.bids_dir / f"sub-{subject}" / f"ses-{session}" / "anat"
    truth = cohort.truth_dir / f"sub-{subject}" / f"ses-{session}" / "anat"
    brain = truth / f"{label}_space-T1w_desc-brain_mask.nii.gz"
    t1w = anat / f"{label}_T1w.nii.gz"
    images = {}
    for key in keys:
        raw = anat / f"{label}_{PROTOCOLS[key].name}.nii.gz"
        if key != "T1w":
            raw = apply_transform(raw, t1w, truth / f"{label}_from-{key}_to-T1w_mode-image_xfm.mat",
                                  newpath=newpath, suffix="t1w")
        images[key] = Path(n4_correct(raw, newpath=newpath, mask=brain).corrected) if bias_correction else Path(raw)
    lesion = truth / f"{label}_space-T1w_label-lesion_mask.nii.gz"
    wm = truth / f"{label}_space-T1w_label-WM_probseg.nii.gz"
    if voxel_size is not None:
        def to_model_grid(path: Path, interpolation: Literal["linear", "nearest"] = "linear") -> Path:
            return to_target_space(path, t1w, newpath=newpath, voxel_size=voxel_size, interpolation=interpolation)

        images = {key: to_model_grid(path) for key, path in images.items()}
        brain, lesion, wm = to_model_grid(brain, "nearest"), to_model_grid(lesion, "nearest"), to_model_grid(wm)
    return AlignedSession(subject, session, images, brain, lesion, wm)
