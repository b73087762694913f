"""The shipped phantom FLAIR models on every patient of a fresh phantom cohort, beside each patient's noise ceiling.

Issue 6 asks that, "on a fresh phantom cohort", the shipped 5-input model reach SSIM >= 0.90 inside the brain and a
synthetic Ratio 1 of at least 0.85 of the acquired one. ``tests/test_shipped_models.py`` checks one fresh patient;
this script scores all patients of a fresh cohort (seed 9001, the test's seed, so its first patient is the test's
patient; the training cohort is seed 2026) the same way:

* inputs moved onto the T1w grid with the phantom's true transforms, N4 inside the true brain mask, resampled to
  the model's grid (:func:`msynth.phantom.aligned.align_session`); regions from the truth;
* per model (``benchmarks/train_shipped_models.py``'s ``score_on_session``): SSIM and MSE of the prediction
  de-normalised with the acquired FLAIR's brain mean and SD (as the cross-validation), Ratio 1 of the prediction,
  of the ``synthesize`` file and of the acquired FLAIR, and the share of the acquired lesion contrast
  (Ratio 1 - 1) that each synthetic image keeps;
* per patient, the **noise ceiling**: the SSIM of the noise-free FLAIR of the same acquisition (same seed: same
  anatomy, pose and bias; ``benchmarks/flair_ceiling.py``) against the acquired one, the score of a synthesis that
  knew the anatomy exactly. ``of_ceiling`` is a model's SSIM over it.

Run (about 40 s per patient for the ceiling and the alignment, then a few seconds per model and patient)::

    .venv/bin/python benchmarks/flair_fresh_cohort.py --patients 6 --scratch /tmp/fresh-cohort \\
        [--models MODEL_DIR ...] [--tsv benchmarks/results/flair_fresh_cohort.tsv]

Results: ``benchmarks/results/flair_fresh_cohort.md``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from flair_ceiling import flair_acquisition
from msynth.analysis.metrics import match_statistics, ssim
from msynth.phantom.aligned import AlignedSession, align_session
from msynth.phantom.cohort import generate_cohort
from train_shipped_models import FRESH_SEED, WEIGHTS, score_on_session

KEYS = ["T1w", "T2w", "PDw", "T1SE", "DIR", "FLAIR"]


def noise_ceilings(n_patients: int, voxel_size: float,
                   scratch: Path) -> tuple[dict[str, float], list[AlignedSession]]:
    """Per patient label, the noise-free FLAIR's SSIM against the acquired one; and the aligned acquired sessions."""
    acquired = generate_cohort(scratch / "acquired" / "bids", n_controls=0, n_patients=n_patients,
                               voxel_size=voxel_size, seed=FRESH_SEED, overwrite=True)
    with flair_acquisition(noise_free=True, slab_shift=0.0):
        clean = generate_cohort(scratch / "noise-free" / "bids", n_controls=0, n_patients=n_patients,
                                voxel_size=voxel_size, seed=FRESH_SEED, overwrite=True)
    ceilings, sessions = {}, []
    for k in range(1, n_patients + 1):
        label = f"MS{k:02d}"
        session = align_session(acquired, label, "01", KEYS, newpath=scratch / "acquired" / "aligned" / label,
                                voxel_size=voxel_size)
        reference = align_session(clean, label, "01", ["FLAIR"], newpath=scratch / "noise-free" / "aligned" / label,
                                  voxel_size=voxel_size)
        brain, _, _ = session.truth_regions()
        truth = session.acquired("FLAIR", brain)
        noise_free = np.asarray(nib.load(reference.images["FLAIR"]).dataobj, dtype=np.float64)
        ceilings[label] = ssim(match_statistics(noise_free, truth, brain), truth, brain)
        sessions.append(session)
        print(f"{label}: noise ceiling {ceilings[label]:.4f}", flush=True)
    return ceilings, sessions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=6, help="patients of the fresh cohort (default 6)")
    parser.add_argument("--models", nargs="+", type=Path, default=[WEIGHTS / "flair-fcn-phantom"],
                        metavar="MODEL_DIR", help="model folders (default: the shipped 5-input phantom model)")
    parser.add_argument("--voxel-size", type=float, default=2.0, help="the cohort's --voxel-size (default 2)")
    parser.add_argument("--scratch", type=Path, default=None,
                        help="keep the cohorts and aligned sessions here (default: a temporary folder)")
    parser.add_argument("--tsv", type=Path, default=None, help="also write the per-patient table here")
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = args.scratch or Path(tmp)
        ceilings, sessions = noise_ceilings(args.patients, args.voxel_size, scratch)
        rows = []
        for session in sessions:
            for model_dir in args.models:
                row = {"participant": session.subject,
                       **score_on_session(model_dir, session, scratch / "synth" / session.subject / model_dir.name)}
                contrast = row["ratio1_acquired"] - 1
                row["contrast_kept_prediction"] = round((row["ratio1_prediction"] - 1) / contrast, 2)
                row["contrast_kept_file"] = round((row["ratio1_file"] - 1) / contrast, 2)
                row["noise_ceiling"] = round(ceilings[session.subject], 3)
                row["of_ceiling"] = round(row["ssim"] / row["noise_ceiling"], 3)
                rows.append(row)
                print(row, flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    numbers = ["ssim", "noise_ceiling", "of_ceiling", "mse", "ratio1_acquired", "ratio1_prediction", "ratio1_file",
               "contrast_kept_prediction", "contrast_kept_file"]
    print(table.groupby("model")[numbers].agg(["mean", "min", "max"]).round(3).T.to_string())
    if args.tsv:
        table.to_csv(args.tsv, sep="\t", index=False)
    print(f"{time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
