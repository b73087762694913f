"""Tissue probabilities and automatic lesions on a phantom patient, scored against the phantom's truth.

The phantom is generated at 2 mm: at 4 mm and 3 mm the WM probability does not reach Dice 0.85 with the truth
(0.74-0.80 and 0.84, benchmarks/results/lesions.md), and the FLAIR's slices (12 mm thick at 4 mm) leave lesions of
2-15 mm almost invisible. The preprocessing is replaced by its truth where the truth exists (brain mask, FLAIR → T1w
transform) so that these tests score the segmentation alone; the template → T1w affine is estimated, as the pipeline
does.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from msynth.phantom.cohort import generate_cohort
from msynth.preprocessing.bias import n4_correct
from msynth.preprocessing.registration import apply_transform, register_to_reference
from msynth.segmentation.lesions import detect_lesions
from msynth.segmentation.regions import region_masks
from msynth.segmentation.tissue import atropos, segment_tissues, write_subject_priors
from msynth.templates import write_template

pytestmark = pytest.mark.slow

SUBJECT, SESSION = "MS01", "01"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))


def load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).get_fdata())


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> dict[str, Path]:
    """One 2 mm phantom session: N4 T1w, FLAIR in space-T1w, truth, and the template → T1w affine."""
    root = tmp_path_factory.mktemp("segmentation")
    cohort = generate_cohort(root / "bids", n_controls=0, n_patients=1, voxel_size=2.0, seed=3)
    stem = f"sub-{SUBJECT}_ses-{SESSION}"
    anat = cohort.bids_dir / f"sub-{SUBJECT}" / f"ses-{SESSION}" / "anat"
    truth = cohort.truth_dir / f"sub-{SUBJECT}" / f"ses-{SESSION}" / "anat"
    work = root / "work"
    paths = {
        "brain": truth / f"{stem}_space-T1w_desc-brain_mask.nii.gz",
        "lesion": truth / f"{stem}_space-T1w_label-lesion_mask.nii.gz",
        **{k: truth / f"{stem}_space-T1w_label-{k}_probseg.nii.gz" for k in ("GM", "WM", "CSF")},
    }
    paths["t1w"] = n4_correct(anat / f"{stem}_T1w.nii.gz", newpath=work, mask=paths["brain"]).corrected
    flair = n4_correct(anat / f"{stem}_FLAIR.nii.gz", newpath=work,
                       mask=truth / f"{stem}_space-FLAIR_desc-brain_mask.nii.gz").corrected
    paths["flair"] = apply_transform(flair, paths["t1w"], truth / f"{stem}_from-FLAIR_to-T1w_mode-image_xfm.mat",
                                     newpath=work, suffix="space-T1w")
    # affine only down to 2x shrink: enough for priors that SyN refines, and ~4x faster than the full pyramid
    paths["template_xfm"] = register_to_reference(
        write_template(work, 2), paths["t1w"], paths["brain"], out_xfm=work / "template.mat",
        initialization="centre-of-mass", max_scale=None, shrink_factors=(4, 2), smoothing_sigmas_mm=(2.0, 1.0),
        iterations=(1000, 500),
    )
    paths["work"] = work
    return paths


@pytest.fixture(scope="module")
def priors(session):
    return write_subject_priors(session["t1w"], session["brain"], template_xfm=session["template_xfm"],
                                newpath=session["work"] / "priors")


@pytest.fixture(scope="module")
def tissues_filled(session, priors):
    return segment_tissues(session["t1w"], session["brain"], priors=priors, newpath=session["work"] / "filled",
                           lesion_mask=session["lesion"])


@pytest.fixture(scope="module")
def tissues_plain(session, priors):
    return segment_tissues(session["t1w"], session["brain"], priors=priors, newpath=session["work"] / "plain")


def test_tissue_probabilities_match_truth(session, tissues_filled) -> None:
    brain = load(session["brain"]) > 0
    lesion = load(session["lesion"]) > 0
    maps = {k: load(getattr(tissues_filled, k.lower())) for k in ("GM", "WM", "CSF")}
    total = sum(maps.values())
    assert all(nib.load(getattr(tissues_filled, k)).get_data_dtype() == np.float32 for k in ("gm", "wm", "csf"))
    assert np.all(total[brain] <= 1 + 1e-5) and np.all(total[~brain] == 0)
    assert np.all(maps["WM"][lesion & brain] == 1)                       # lesions are white-matter pathology
    wm_dice = dice(maps["WM"] > 0.5, load(session["WM"]) > 0.5)
    gm_dice = dice(maps["GM"] > 0.5, load(session["GM"]) > 0.5)
    print(f"2 mm phantom, lesion-filled: WM Dice {wm_dice:.3f}, GM Dice {gm_dice:.3f}")
    assert wm_dice >= 0.85
    assert gm_dice >= 0.85
    filled = load(tissues_filled.filled_t1w)
    t1w = load(session["t1w"])
    nawm = brain & ~lesion & (load(session["WM"]) > 0.9)
    # filling brings the T1-hypointense lesions to the NAWM level
    assert np.median(t1w[lesion]) < 0.95 * np.median(t1w[nawm])
    assert np.median(filled[lesion]) == pytest.approx(np.median(t1w[nawm]), rel=0.03)
    assert tissues_filled.metadata["LesionFilling"]["FilledVoxels"] == np.count_nonzero(lesion & brain)


def test_automatic_lesions_and_regions(session, priors, tissues_plain, caplog) -> None:
    out = detect_lesions(session["flair"], session["brain"], gm=tissues_plain.gm, wm=tissues_plain.wm,
                         csf=tissues_plain.csf, gm_prior=priors.gm, wm_prior=priors.wm,
                         newpath=session["work"] / "lesions")
    auto = load(out) > 0
    truth = load(session["lesion"]) > 0
    assert nib.load(out).get_data_dtype() == np.uint8
    # Measured 0.54. Not the 0.6: the FLAIR has 6 mm slices at 2 mm, and the phantom's own rater mask, drawn
    # on the FLAIR from the true lesion occupancy and resampled to the T1w, reaches only 0.60 against the same truth
    # (at 1 mm the automatic route reaches 0.6: benchmarks/results/lesions.md).
    score = dice(auto, truth)
    print(f"2 mm phantom, automatic lesions: Dice {score:.3f} ({np.count_nonzero(auto)} voxels found, "
          f"{np.count_nonzero(truth)} true)")
    assert score >= 0.45

    regions = region_masks(tissues_plain.wm, tissues_plain.csf, out, session["brain"],
                           newpath=session["work"] / "regions")
    nawm = load(regions.nawm) > 0
    ring = load(regions.surrounding_nawm) > 0
    assert not np.any(nawm & auto) and not np.any(ring & auto)
    assert np.count_nonzero(ring) > np.count_nonzero(auto)
    # distance to CSF: the true CSF (>= 0.5) is near 0 mm, and deep white matter is far from it
    distance = load(regions.distance_to_csf)
    true_csf = load(session["CSF"]) >= 0.5
    assert np.median(distance[true_csf]) <= 2.0
    assert np.median(distance[nawm]) > 4.0

    # a FLAIR without hyperintensity: no lesion, a warning, an empty mask
    flair = nib.load(session["flair"])
    flat = np.where(np.asarray(flair.dataobj) > 0, 100.0, 0.0).astype(np.float32)
    flat_path = session["work"] / "flat_FLAIR.nii.gz"
    nib.Nifti1Image(flat + np.random.default_rng(0).normal(0, 1, flat.shape).astype(np.float32) * (flat > 0),
                    flair.affine).to_filename(flat_path)
    with caplog.at_level(logging.WARNING, logger="msynth.segmentation"):
        empty = detect_lesions(flat_path, session["brain"], gm=tissues_plain.gm, wm=tissues_plain.wm,
                               csf=tissues_plain.csf, newpath=session["work"] / "empty")
    assert not np.any(load(empty))
    assert "automatic lesion detection found no lesion" in caplog.text


def test_atropos_is_reproducible_and_separates_classes(tmp_path: Path) -> None:
    """Three intensity classes in a 24³ volume with flat priors: two runs are identical and recover the classes."""
    rng = np.random.default_rng(1)
    labels = np.zeros((24, 24, 24), int)
    labels[8:16] = 1
    labels[16:] = 2
    image = np.choose(labels, [100.0, 60.0, 20.0]) + rng.normal(0, 8, labels.shape)
    brain = np.ones(labels.shape, bool)
    priors = np.full((3, *labels.shape), 1 / 3, np.float32)
    # gentle spatial priors so that the classes have a defined order (GM, WM, CSF = labels 1, 0, 2)
    for k, label in enumerate((1, 0, 2)):
        priors[k][labels == label] = 0.5
        priors[k][labels != label] = 0.25
    reference = nib.Nifti1Image(image.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    first = atropos(image, brain, priors, reference, newpath=tmp_path / "a")
    second = atropos(image, brain, priors, reference, newpath=tmp_path / "b")
    assert np.array_equal(first, second)
    recovered = np.array((1, 0, 2))[first.argmax(axis=0)]
    assert np.mean(recovered == labels) > 0.98
