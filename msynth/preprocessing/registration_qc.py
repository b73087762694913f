"""After-the-fact quality control of registrations: did the image land on the T1w?

An optimiser reports convergence whether it reached the right basin or a wrong one, so every registration is scored
again once it is done, on the T1w grid, by a measure that is high only where the anatomy lines up:

- the template → T1w registration by the Dice overlap of the template's brain (its non-zero voxels: the template is
  skull-stripped) brought onto the T1w with the subject's T1w brain mask (:func:`template_overlap`);
- the co-registrations to the T1w (T2w, PDw, FLAIR, T1SE, DIR, MTR, the DWI b0, the mean PET, a later T1w) by the
  normalised mutual information (Studholme et al. 1999) of the T1w and the resampled image inside the T1w brain mask
  (:func:`coregistration_nmi`): it is highest when the anatomy lines up, whatever the two contrasts.

The thresholds are measured (``benchmarks/results/registration_repeats.md``): on the 4 mm phantom and on real scans
(open_ms_data), each lies below every correct registration and above every registration misplaced by 10 mm or
rotated by 27° (and 10° on the real scans; on the phantom some contrasts still pass a 10° rotation).
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import ants
import nibabel as nib
import numpy as np

from msynth.analysis.metrics import dice

PathOrStr = str | PathLike[str]

#: Least Dice between the template brain brought onto the T1w and the T1w brain mask. Correct: 0.910 (phantom), 0.947
#: (real); 10–14 mm off or rotated 27°: 0.815–0.861.
TEMPLATE_MIN_DICE = 0.88
#: Least normalised mutual information (in [1, 2]) of the T1w and a co-registered image inside the T1w brain mask.
#: Correct: 1.031–1.096 (phantom: T2w, PDw, FLAIR, T1SE, DIR, MTR, DWI b=0, PET), 1.064–1.070 (real FLAIR, T2W);
#: 10 mm off or rotated 27°: 1.006–1.020.
COREGISTRATION_MIN_NMI = 1.025
#: Joint-histogram bins of the normalised mutual information.
NMI_BINS = 32


class RegistrationQCError(ValueError):
    """A registration scored below its QC threshold: the image did not land on the T1w."""


@dataclass(frozen=True)
class RegistrationQC:
    """The QC score of one registration.

    Attributes
    ----------
    metric
        What was measured (e.g. ``"Dice of brain masks"``).
    value, threshold
        The score and the least score that passes.
    """

    metric: str
    value: float
    threshold: float

    @property
    def passed(self) -> bool:
        """Whether the score reaches the threshold."""
        return self.value >= self.threshold

    def as_metadata(self) -> dict:
        """The sidecar's ``QC`` entry."""
        return {"Metric": self.metric, "Value": round(self.value, 4), "Threshold": self.threshold,
                "Passed": self.passed}

    def failure_message(self, moving: PathOrStr, fixed: PathOrStr) -> str:
        """What failed, with which files, and what to do."""
        return (f"registration QC failed: {Path(moving).name} → {Path(fixed).name}: {self.metric} {self.value:.3f} "
                f"is below the threshold {self.threshold:g}, so the image did not land on the T1w; check the "
                "image's orientation and header (qform/sform) against the T1w, or rerun with "
                "--continue-on-qc-failure to keep the result and flag it")


def resample_onto(moving: PathOrStr | nib.Nifti1Image, reference: PathOrStr, xfm: PathOrStr) -> np.ndarray:
    """An image (file or in memory) resampled linearly onto the reference grid through an affine (reference points →
    moving points), as an array in the reference's voxel order."""
    image = ants.from_nibabel_nifti(moving) if isinstance(moving, nib.Nifti1Image) else ants.image_read(str(moving))
    return ants.apply_transforms(
        fixed=ants.image_read(str(reference)), moving=image, transformlist=[str(xfm)], interpolator="linear",
        defaultvalue=0,
    ).numpy()


def normalised_mutual_information(a: np.ndarray, b: np.ndarray, *, bins: int = NMI_BINS) -> float:
    """Studholme's normalised mutual information ``(H(A) + H(B)) / H(A, B)`` of two samples.

    1 for independent intensities, 2 for one a function of the other; intensities are clipped to their 0.5–99.5th
    percentiles first, so a few hot voxels do not squeeze the histogram.

    >>> x = np.linspace(0, 1, 1000)
    >>> round(normalised_mutual_information(x, 1 - x), 3)
    2.0
    """
    def clipped(v: np.ndarray) -> np.ndarray:
        low, high = np.percentile(v, [0.5, 99.5])
        return np.clip(v, low, high)

    joint, _, _ = np.histogram2d(clipped(np.ravel(a)), clipped(np.ravel(b)), bins=bins)
    joint = joint / joint.sum()

    def entropy(p: np.ndarray) -> float:
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    return (entropy(joint.sum(axis=0)) + entropy(joint.sum(axis=1))) / entropy(joint)


def template_overlap(template: PathOrStr, t1w: PathOrStr, t1w_mask: PathOrStr, xfm: PathOrStr) -> float:
    """Dice of the (skull-stripped) template's brain brought onto the T1w with the T1w brain mask.

    Parameters
    ----------
    template
        Skull-stripped template image (its brain = its voxels above 0).
    t1w, t1w_mask
        The T1w reference and its brain mask (same grid).
    xfm
        The template → T1w transform (T1w points → template points).
    """
    template_img = nib.load(template)
    support = nib.Nifti1Image((np.asanyarray(template_img.dataobj) > 0).astype(np.float32), template_img.affine)
    return dice(resample_onto(support, t1w, xfm) >= 0.5, np.asanyarray(nib.load(t1w_mask).dataobj) > 0)


def coregistration_nmi(moving: PathOrStr, t1w: PathOrStr, t1w_mask: PathOrStr, xfm: PathOrStr) -> float:
    """Normalised mutual information of the T1w and an image resampled onto it, inside the T1w brain mask.

    Parameters
    ----------
    moving
        The co-registered image (any contrast).
    t1w, t1w_mask
        The T1w reference and its brain mask (same grid).
    xfm
        The moving → T1w transform (T1w points → moving points).
    """
    brain = np.asanyarray(nib.load(t1w_mask).dataobj) > 0
    resampled = resample_onto(moving, t1w, xfm)
    return normalised_mutual_information(np.asanyarray(nib.load(t1w).dataobj)[brain], resampled[brain])


def score_template(template: PathOrStr, t1w: PathOrStr, t1w_mask: PathOrStr, xfm: PathOrStr,
                   *, threshold: float = TEMPLATE_MIN_DICE) -> RegistrationQC:
    """QC of the template → T1w registration (:func:`template_overlap` against :data:`TEMPLATE_MIN_DICE`)."""
    return RegistrationQC("Dice of the template brain and the T1w brain mask",
                          template_overlap(template, t1w, t1w_mask, xfm), threshold)


def score_coregistration(moving: PathOrStr, t1w: PathOrStr, t1w_mask: PathOrStr, xfm: PathOrStr,
                         *, threshold: float = COREGISTRATION_MIN_NMI) -> RegistrationQC:
    """QC of a co-registration to the T1w (:func:`coregistration_nmi` against :data:`COREGISTRATION_MIN_NMI`)."""
    return RegistrationQC("normalised mutual information in the T1w brain mask",
                          coregistration_nmi(moving, t1w, t1w_mask, xfm), threshold)
