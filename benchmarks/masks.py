"""Benchmark of the masks stage through the participant level (issue 5): both lesion routes against the phantom truth.

One msynth-phantom patient (seed 11, as ``benchmarks/preprocessing.py``) at ``--voxel-size``, first session, run
twice with one work folder: without a lesion mask (automatic route: lesions detected on the acquired FLAIR), then
with ``--lesion-masks`` pointing at the phantom's expert-like masks drawn on the FLAIR (given route; only the masks
are recomputed). Reported: WM probability ≥ 0.5 Dice against the truth, automatic lesion Dice against the true
lesions, the given mask in space-T1w against the same mask brought in through the TRUE FLAIR → T1w transform, NAWM
voxels inside lesions, and wall time and peak memory of every masks node. Reuses the phantom and work folder of
``benchmarks/preprocessing.py`` when they exist under ``--scratch``.

Run (about 20 minutes on a 2-core machine at 1 mm when the preprocessing benchmark ran first; 40 otherwise)::

    .venv/bin/python benchmarks/masks.py --voxel-size 1 --scratch /tmp/msynth-bench

Result: ``benchmarks/results/masks_<voxel>mm.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from preprocessing import RESULTS, node_table, run_msynth  # noqa: E402

from msynth.phantom.cohort import generate_cohort  # noqa: E402
from msynth.preprocessing.registration import apply_transform  # noqa: E402

SUBJECT, SESSION = "MS01", "01"
STEM = f"sub-{SUBJECT}_ses-{SESSION}"


def _mask(path: Path, threshold: float = 0.5) -> np.ndarray:
    return np.asanyarray(nb.load(path).dataobj) >= threshold


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def route_metrics(bids: Path, truth: Path, lesions: Path, out: Path, scratch: Path) -> dict[str, float]:
    """Accuracy of one run's masks against the truth."""
    anat = Path(f"sub-{SUBJECT}") / f"ses-{SESSION}" / "anat"
    estimated_lesions = _mask(out / anat / f"{STEM}_space-T1w_label-lesion_mask.nii.gz")
    nawm = _mask(out / anat / f"{STEM}_space-T1w_label-NAWM_mask.nii.gz")
    expert = lesions / anat / f"{STEM}_space-FLAIR_label-lesion_mask.nii.gz"
    expert_in_t1w = apply_transform(expert, bids / anat / f"{STEM}_T1w.nii.gz",
                                    truth / anat / f"{STEM}_from-FLAIR_to-T1w_mode-image_xfm.mat",
                                    newpath=scratch / "expert_in_t1w")
    return {
        "WM_dice": _dice(_mask(out / anat / f"{STEM}_space-T1w_label-WM_probseg.nii.gz"),
                         _mask(truth / anat / f"{STEM}_space-T1w_label-WM_probseg.nii.gz")),
        "lesion_dice_vs_truth": _dice(estimated_lesions,
                                      _mask(truth / anat / f"{STEM}_space-T1w_label-lesion_mask.nii.gz")),
        "lesion_dice_vs_expert_true_transform": _dice(estimated_lesions, _mask(expert_in_t1w)),
        "nawm_voxels_in_lesions": int((nawm & estimated_lesions).sum()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voxel-size", type=float, default=1.0)
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/msynth-bench"))
    args = parser.parse_args(argv)
    args.scratch.mkdir(parents=True, exist_ok=True)
    os.chdir(args.scratch)  # Nipype's resource monitor writes its .proc-* logs into the working directory
    bids = args.scratch / "phantom"
    if not (bids / "dataset_description.json").is_file():
        generate_cohort(bids, n_controls=0, n_patients=1, voxel_size=args.voxel_size, seed=11, overwrite=True)
    truth, work = args.scratch / "phantom-truth", args.scratch / "phantom_work"
    lesions = bids / "derivatives" / "lesions"
    rows, walls = {}, {}
    for route, extra in (("automatic", []), ("given", ["--lesion-masks", str(lesions)])):
        out = args.scratch / f"masks_{route}_out"
        start = time.perf_counter()
        run_msynth(bids, out, work, ["--session-label", SESSION, "--participant-label", SUBJECT, *extra])
        walls[route] = time.perf_counter() - start
        rows[route] = route_metrics(bids, truth, lesions, out, args.scratch / route)
    nodes = node_table(work)
    nodes = nodes[nodes["node"].str.contains("masks_wf")]
    tag = f"{args.voxel_size:g}mm"
    lines = [
        f"# Masks benchmark through the participant level, phantom at {tag}",
        "",
        f"Command: `.venv/bin/python benchmarks/masks.py --voxel-size {args.voxel_size:g}`",
        f"Machine: {platform.machine()}, CPython {platform.python_version()}, {os.cpu_count()} cores; `--nprocs 1`.",
        f"Wall time of each run (preprocessing cached): automatic {walls['automatic']:.0f} s, "
        f"given {walls['given']:.0f} s.",
        "",
        "| metric | automatic route | given route |",
        "| --- | --- | --- |",
        *[f"| {key} | {rows['automatic'][key]:.3f} | {rows['given'][key]:.3f} |" for key in rows["automatic"]],
        "",
        "Masks nodes (last run of each; seconds, peak memory in GB):",
        "",
        "```",
        nodes.to_string(index=False),
        "```",
        "",
    ]
    (RESULTS / f"masks_{tag}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
