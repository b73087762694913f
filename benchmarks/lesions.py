"""Benchmark of the segmentation science (issue 5): tissue probabilities and automatic lesions against truth.

Part 1, phantom: ``msynth-phantom`` patients (seed 3) at each ``--voxel-size``; for the first session of each patient
the T1w is N4-corrected inside the true brain mask, the FLAIR is N4-corrected and brought into space-T1w through the
true FLAIR → T1w transform (so the numbers score the segmentation, not the preprocessing), and the MNI152 template is
registered to the T1w (affine, as the pipeline does). Then:

* ``segment_tissues`` without a lesion mask → ``detect_lesions`` (automatic route): GM/WM/CSF Dice at 0.5 and lesion
  Dice, lesion count and volume against the truth;
* ``segment_tissues`` with the phantom's rater mask (drawn on the FLAIR, brought to space-T1w by nearest neighbour;
  the given route): WM Dice, and the rater mask's own Dice against the truth — the ceiling that the FLAIR's slice
  thickness leaves for any FLAIR-based mask.

Part 2, real scans (skipped when ../shared/data/open_ms_data is absent): ``cross_sectional/MNI/patient07`` and
``patient19`` (Lesjak et al., Neuroinformatics 2018;16:51-63): T1 and FLAIR, skull-stripped, bias-corrected, in MNI
space at 1 mm. Brain mask = filled support of T1 and FLAIR; template affine registration; ``segment_tissues`` →
``detect_lesions``; lesion Dice, count and volume against the multi-rater consensus (``GOLD_STANDARD``).

Run (about 30 minutes on a 2-core machine for 4, 3, 2 and 1 mm, 5 of them generating the phantoms)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lesions.py --voxel-size 4 3 2 1 --scratch /tmp/msynth-lesions

Results: ``benchmarks/results/lesions.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")

from msynth.phantom.cohort import generate_cohort  # noqa: E402
from msynth.preprocessing._io import write_like  # noqa: E402
from msynth.preprocessing.bias import n4_correct  # noqa: E402
from msynth.preprocessing.registration import apply_transform, pyramid_for, register_to_reference  # noqa: E402
from msynth.segmentation.lesions import detect_lesions, lesion_statistics, lesion_summary  # noqa: E402
from msynth.segmentation.tissue import segment_tissues, write_subject_priors  # noqa: E402
from msynth.templates import write_template  # noqa: E402

RESULTS = Path(__file__).parent / "results"
OPEN_MS = Path(__file__).resolve().parents[2] / "shared" / "data" / "open_ms_data" / "cross_sectional" / "MNI"
REAL_PATIENTS = ("patient07", "patient19")
SEED = 3


def dice(a: np.ndarray, b: np.ndarray) -> float:
    denominator = np.count_nonzero(a) + np.count_nonzero(b)
    return float(2 * np.count_nonzero(a & b) / denominator) if denominator else float("nan")


def load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).get_fdata())


def timed(times: dict, key: str, func, *args, **kwargs):
    start = time.perf_counter()
    out = func(*args, **kwargs)
    times[key] = round(time.perf_counter() - start, 1)
    return out


def template_affine(t1w: Path, brain: Path, work: Path) -> Path:
    """The pipeline's template → T1w affine (rigid → affine, mutual information, brain-masked)."""
    out = work / "from-MNI152NLin2009aSym_to-T1w_mode-image_xfm.mat"
    if not out.exists():
        register_to_reference(write_template(work, 1), t1w, brain, out_xfm=out, initialization="centre-of-mass",
                              max_scale=None, **pyramid_for(min(nib.load(t1w).header.get_zooms()[:3])))
    return out


def lesion_row(auto: Path, truth: np.ndarray, truth_img: nib.Nifti1Image) -> dict:
    auto_mask = load(auto) > 0
    found = lesion_summary(lesion_statistics(auto))
    true = lesion_summary(lesion_statistics(nib.Nifti1Image(truth.astype(np.uint8), truth_img.affine)))
    return {
        "lesion_dice": dice(auto_mask, truth),
        "n_lesions_auto": found["n_lesions"], "n_lesions_truth": true["n_lesions"],
        "volume_ml_auto": round(found["total_volume_ml"], 3), "volume_ml_truth": round(true["total_volume_ml"], 3),
    }


def phantom_patient(cohort, subject: str, work: Path) -> dict:
    """Score one phantom patient's first session (see the module docstring)."""
    times: dict[str, float] = {}
    stem = f"sub-{subject}_ses-01"
    anat = cohort.bids_dir / f"sub-{subject}" / "ses-01" / "anat"
    truth = cohort.truth_dir / f"sub-{subject}" / "ses-01" / "anat"
    brain = truth / f"{stem}_space-T1w_desc-brain_mask.nii.gz"
    t1w = n4_correct(anat / f"{stem}_T1w.nii.gz", newpath=work, mask=brain).corrected
    flair = n4_correct(anat / f"{stem}_FLAIR.nii.gz", newpath=work,
                       mask=truth / f"{stem}_space-FLAIR_desc-brain_mask.nii.gz").corrected
    xfm = truth / f"{stem}_from-FLAIR_to-T1w_mode-image_xfm.mat"
    flair_t1w = apply_transform(flair, t1w, xfm, newpath=work, suffix="space-T1w")
    template_xfm = timed(times, "template_registration_s", template_affine, t1w, brain, work)
    priors = timed(times, "tissue_priors_s", write_subject_priors, t1w, brain, template_xfm=template_xfm,
                   newpath=work / "priors")
    plain = timed(times, "segment_tissues_s", segment_tissues, t1w, brain, priors=priors, newpath=work / "plain")
    auto = timed(times, "detect_lesions_s", detect_lesions, flair_t1w, brain, gm=plain.gm, wm=plain.wm,
                 csf=plain.csf, gm_prior=priors.gm, wm_prior=priors.wm,
                 newpath=work / "auto")
    rater = apply_transform(cohort.lesion_dir / f"sub-{subject}" / "ses-01" / "anat"
                            / f"{stem}_space-FLAIR_label-lesion_mask.nii.gz", t1w, xfm, newpath=work,
                            interpolation="nearestNeighbor", suffix="space-T1w")
    given = timed(times, "segment_tissues_filled_s", segment_tissues, t1w, brain, priors=priors,
                  newpath=work / "given", lesion_mask=rater)
    truth_img = nib.load(truth / f"{stem}_space-T1w_label-lesion_mask.nii.gz")
    true_lesion = np.asarray(truth_img.dataobj) > 0
    row = {"subject": subject}
    for label in ("GM", "WM", "CSF"):
        true_map = load(truth / f"{stem}_space-T1w_label-{label}_probseg.nii.gz") > 0.5
        row[f"{label}_dice"] = dice(load(getattr(plain, label.lower())) > 0.5, true_map)
    row["WM_dice_filled_rater"] = dice(load(given.wm) > 0.5,
                                       load(truth / f"{stem}_space-T1w_label-WM_probseg.nii.gz") > 0.5)
    row.update(lesion_row(auto, true_lesion, truth_img))
    row["rater_mask_dice"] = dice(load(rater) > 0, true_lesion)
    return {**row, **times}


def real_patient(patient: str, work: Path) -> dict:
    """Score the automatic lesions of one open_ms_data MNI patient against the consensus mask."""
    times: dict[str, float] = {}
    source = OPEN_MS / patient
    t1w = source / "T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
    flair = source / "FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
    gold = source / "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz"
    work.mkdir(parents=True, exist_ok=True)
    t1_img = nib.load(t1w)
    support = (np.asarray(t1_img.dataobj) > 0) & (load(flair) > 0)
    brain = write_like(ndimage.binary_fill_holes(support).astype(np.uint8), t1_img, work / "brain_mask.nii.gz")
    template_xfm = timed(times, "template_registration_s", template_affine, t1w, brain, work)
    priors = timed(times, "tissue_priors_s", write_subject_priors, t1w, brain, template_xfm=template_xfm,
                   newpath=work / "priors")
    plain = timed(times, "segment_tissues_s", segment_tissues, t1w, brain, priors=priors, newpath=work / "plain")
    # the FLAIR's interpolation undershoot (negative values) is clipped: 0 means "no coverage" to detect_lesions
    flair_img = nib.load(flair)
    flair_pos = write_like(np.clip(load(flair), 0, None).astype(np.float32), flair_img, work / "FLAIR.nii.gz")
    auto = timed(times, "detect_lesions_s", detect_lesions, flair_pos, brain, gm=plain.gm, wm=plain.wm,
                 csf=plain.csf, gm_prior=priors.gm, wm_prior=priors.wm,
                 newpath=work / "auto")
    gold_img = nib.load(gold)
    row = {"subject": patient, **lesion_row(auto, np.asarray(gold_img.dataobj) > 0, gold_img)}
    return {**row, **times}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--voxel-size", type=float, nargs="+", default=[4.0, 3.0, 2.0, 1.0])
    parser.add_argument("--patients", type=int, default=2, help="phantom patients per voxel size")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/msynth-lesions"))
    parser.add_argument("--skip-real", action="store_true")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = []
    for voxel_size in args.voxel_size:
        folder = args.scratch / f"phantom_{voxel_size:g}mm"
        t0 = time.perf_counter()
        if (folder / "bids" / "participants.tsv").exists():
            cohort = _existing_cohort(folder)
            generation = float("nan")
        else:
            cohort = generate_cohort(folder / "bids", n_controls=0, n_patients=args.patients,
                                     voxel_size=voxel_size, seed=SEED, overwrite=True)
            generation = round(time.perf_counter() - t0, 1)
        for subject in sorted(cohort.participants["participant_id"].str.removeprefix("sub-")):
            row = phantom_patient(cohort, subject, folder / "work" / subject)
            rows.append({"data": f"phantom {voxel_size:g} mm", **row, "generation_s": generation})
            print(rows[-1], flush=True)
    if not args.skip_real and OPEN_MS.is_dir():
        for patient in REAL_PATIENTS:
            rows.append({"data": "open_ms_data MNI 1 mm", **real_patient(patient, args.scratch / patient)})
            print(rows[-1], flush=True)
    wall = time.perf_counter() - start
    peak_gb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024 ** 2
    table = pd.DataFrame(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = " ".join(["OMP_NUM_THREADS=1", ".venv/bin/python", "benchmarks/lesions.py",
                        *[shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])]])
    write_report(table, command=command, wall_s=wall, peak_gb=peak_gb)
    return 0


def _existing_cohort(folder: Path):
    """A previously generated cohort in ``folder`` (reruns skip the generation)."""
    from msynth.phantom.cohort import CohortResult

    bids = folder / "bids"
    participants = pd.read_csv(bids / "participants.tsv", sep="\t")
    return CohortResult(bids_dir=bids, truth_dir=folder / "bids-truth", lesion_dir=bids / "derivatives" / "lesions",
                        participants=participants, regression={})


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub-markdown table (floats with 3 decimals)."""
    def cell(value) -> str:
        if isinstance(value, float):
            return "n/a" if np.isnan(value) else f"{value:.3f}"
        return str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + " --- |" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def write_report(table: pd.DataFrame, *, command: str, wall_s: float, peak_gb: float) -> Path:
    """Write ``benchmarks/results/lesions.md``."""
    metrics = [c for c in ("GM_dice", "WM_dice", "CSF_dice", "WM_dice_filled_rater", "lesion_dice",
                           "rater_mask_dice", "n_lesions_auto", "n_lesions_truth", "volume_ml_auto",
                           "volume_ml_truth", "template_registration_s", "tissue_priors_s", "segment_tissues_s",
                           "detect_lesions_s",
                           "segment_tissues_filled_s", "generation_s") if c in table]
    shown = table[["data", "subject", *metrics]].copy()
    lines = [
        "# Segmentation benchmark: tissue probabilities and automatic lesions (issue 5)",
        "",
        f"Command: `{command}`",
        f"Machine: {platform.machine()}, CPython {platform.python_version()}, {os.cpu_count()} cores, one ITK thread.",
        f"Wall time {wall_s / 60:.1f} min; peak resident memory {peak_gb:.2f} GB.",
        "",
        "Dice of GM/WM/CSF: probability > 0.5 against the truth probability > 0.5 (space-T1w); `WM_dice` from the "
        "run without a lesion mask (automatic route), `WM_dice_filled_rater` from the run filled with the "
        "phantom's rater mask (given route). `lesion_dice`: automatic mask against the true lesion mask (phantom) "
        "or the multi-rater consensus (real). `rater_mask_dice`: the phantom's simulated rater mask, drawn on the "
        "FLAIR and resampled to the T1w, against the same truth — the ceiling left by the FLAIR slice thickness "
        "(phantom FLAIR slices are 3 mm × voxel size). Times in seconds.",
        "",
        markdown_table(shown),
        "",
        "Real data: Lesjak Ž, Galimzianova A, Koren A, Lukin M, Pernuš F, Likar B, Špiclin Ž. A Novel Public MR Image "
        "Dataset of Multiple Sclerosis Patients With Lesion Segmentations Based on Multi-rater Consensus. "
        "Neuroinformatics 2018;16:51-63, doi:10.1007/s12021-017-9348-7 (CC-BY; read from ../shared/data, not "
        "copied).",
        "",
        "",
    ]
    out = RESULTS / "lesions.md"
    out.write_text("\n".join(lines))
    return out


if __name__ == "__main__":
    sys.exit(main())
