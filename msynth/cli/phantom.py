"""``msynth-phantom``: generate the synthetic MS cohort (BIDS dataset, lesion masks, and its truth beside it)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

PROG = "msynth-phantom"


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``msynth-phantom``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Generate a synthetic multiple sclerosis cohort with known truth as a BIDS dataset: T1w, T2w, "
        "PDw, FLAIR, T1 spin echo, DIR, MTR, DWI and dynamic [11C]PIB PET, expert-like lesion masks in "
        "OUTPUT_DIR/derivatives/lesions, and the ground truth in a folder beside the dataset.",
    )
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", type=Path, help="BIDS dataset to create")
    parser.add_argument("--truth-dir", type=Path, default=None, metavar="DIR",
                        help="truth folder (default: OUTPUT_DIR-truth, beside the dataset; never inside it)")
    parser.add_argument("--n-controls", type=int, default=10, metavar="N", help="healthy controls (default: 10)")
    parser.add_argument("--n-patients", type=int, default=18, metavar="N", help="MS patients (default: 18)")
    parser.add_argument("--voxel-size", type=float, default=1.0, metavar="MM",
                        help="factor on every acquisition voxel size; 1 = the papers' protocols, 4 = fast tests "
                        "(default: 1)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed; same seed, same bytes")
    parser.add_argument("--nprocs", type=int, default=None, metavar="N",
                        help="participants simulated in parallel (default: as many as the CPUs and the free memory "
                        "allow, about 5 GB each at --voxel-size 1); the output does not depend on it")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUTPUT_DIR and the truth folder if they hold an earlier phantom")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``msynth-phantom``; return the exit code (0 done, 1 bad arguments, 2 usage error)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    logging.captureWarnings(True)
    from msynth.phantom import check_arguments, default_n_procs, generate_cohort  # heavy: after parsing

    try:
        check_arguments(args.output_dir, args.truth_dir, args.n_controls, args.n_patients, args.voxel_size,
                        args.overwrite)
    except ValueError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    start = time.perf_counter()
    result = generate_cohort(args.output_dir, args.truth_dir, n_controls=args.n_controls,
                             n_patients=args.n_patients, voxel_size=args.voxel_size, seed=args.seed,
                             overwrite=args.overwrite,
                             n_procs=default_n_procs(args.voxel_size) if args.nprocs is None else max(args.nprocs, 1))
    print(f"{PROG}: wrote {result.bids_dir} (truth: {result.truth_dir}) in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
