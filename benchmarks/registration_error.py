"""Co-registration error of a participant-level output against a phantom cohort's true transforms.

For every session of ``--derivatives`` that the phantom's truth folder (``bids-truth``) covers, and every modality
with a ``from-<key>_to-T1w_mode-image_xfm.mat``, the mean displacement over the true brain mask between msynth's
transform and the true one (:func:`msynth.preprocessing.registration.mean_displacement_mm`). Prints one row per
session and modality and a summary per modality (median, max); ``--tsv`` also writes the rows, and ``--baseline`` (a
TSV written earlier, e.g. by another msynth version) adds that run's summary and how many sessions this one beats.

Run on the 2 mm training cohort of ``benchmarks/train_shipped_models.py``::

    PYTHONPATH=. .venv/bin/python benchmarks/registration_error.py \\
        --derivatives /tmp/msynth-shipped/phantom/derivatives --truth /tmp/msynth-shipped/phantom/bids-truth
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from msynth.preprocessing.registration import mean_displacement_mm

KEYS = ("T2w", "PDw", "FLAIR", "T1SE", "DIR", "MTR", "DWI", "PET")


def displacement_table(derivatives: Path, truth: Path) -> pd.DataFrame:
    """One row per (subject, session, key) found in both folders: ``displacement_mm``."""
    rows = []
    for mask in sorted(truth.glob("sub-*/ses-*/anat/*_space-T1w_desc-brain_mask.nii.gz")):
        subject, session = mask.parts[-4], mask.parts[-3]
        label = f"{subject}_{session}"
        for key in KEYS:
            pattern = f"{subject}/{session}/*/{label}_from-{key}_to-T1w_*xfm.mat"
            true_xfm, estimated = (next(iter(sorted(root.glob(pattern))), None) for root in (truth, derivatives))
            if true_xfm is None or estimated is None:
                continue
            rows.append({"subject": subject, "session": session, "key": key,
                         "displacement_mm": mean_displacement_mm(estimated, true_xfm, mask)})
    if not rows:
        raise SystemExit(f"no session of {derivatives} has a transform that {truth} also holds")
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--derivatives", type=Path, required=True, help="msynth participant-level output folder")
    parser.add_argument("--truth", type=Path, required=True, help="the phantom's bids-truth folder")
    parser.add_argument("--tsv", type=Path, default=None, help="also write the per-session rows here")
    parser.add_argument("--baseline", type=Path, default=None, help="a --tsv of an earlier run to compare with")
    args = parser.parse_args(argv)
    table = displacement_table(args.derivatives, args.truth)
    if args.tsv is not None:
        table.to_csv(args.tsv, sep="\t", index=False, float_format="%.4f")
    summary = table.groupby("key", sort=False)["displacement_mm"].agg(["count", "median", "max"])
    if args.baseline is not None:
        baseline = pd.read_csv(args.baseline, sep="\t")
        paired = table.merge(baseline, on=["subject", "session", "key"], suffixes=("", "_baseline"))
        paired["lower"] = paired["displacement_mm"] < paired["displacement_mm_baseline"]
        summary = summary.join(paired.groupby("key").agg(
            baseline_median=("displacement_mm_baseline", "median"), baseline_max=("displacement_mm_baseline", "max"),
            lower_than_baseline=("lower", "sum")))
    print(summary.round(3).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
