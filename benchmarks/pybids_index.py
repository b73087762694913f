"""How long pybids takes to index a cohort-sized BIDS tree, and what ``--bids-database-dir`` saves per array task.

Issue 20: every array task of a cohort run opens the dataset with pybids before its participant starts. This writes
a BIDS tree of N subjects with msynth's modalities (two sessions each: T1w, T2w, FLAIR, MTR, DWI with its gradients,
dynamic PET with its sidecar; tiny 2×2×2 images: pybids reads names and sidecars, not voxels), then times

* ``open_layout``: what every task does without ``--bids-database-dir`` (:func:`msynth.utils.bids.open_layout`);
* the first task with ``--bids-database-dir``: index and save (:func:`msynth.utils.layout_index.open_indexed_layout`);
* every later task: load the saved index and check its own participant's fingerprint.

Run (results in ``benchmarks/results/pybids_index.md``)::

    .venv/bin/python benchmarks/pybids_index.py --scratch /tmp/pybids_index [--subjects 500]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
ANAT = ("T1w", "T2w", "FLAIR", "MTRmap")


def _image(path: Path, n_volumes: int = 1) -> None:
    shape = (2, 2, 2) if n_volumes == 1 else (2, 2, 2, n_volumes)
    nib.Nifti1Image(np.zeros(shape, np.int16), np.eye(4)).to_filename(path)


def write_tree(root: Path, n_subjects: int) -> int:
    """A BIDS dataset of ``n_subjects`` with two sessions each; returns the number of files written."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "index benchmark", "BIDSVersion": "1.10.0"}))
    (root / "participants.tsv").write_text("participant_id\tage\tsex\tgroup\n" + "".join(
        f"sub-{i:04d}\t40\tF\tMS\n" for i in range(n_subjects)))
    pet_sidecar = json.dumps({"FrameTimesStart": [0, 60], "FrameDuration": [60, 60], "TracerName": "PIB",
                              "Units": "Bq/mL"})
    files = 2
    for i in range(n_subjects):
        for session in ("01", "02"):
            prefix = f"sub-{i:04d}_ses-{session}"
            folder = root / f"sub-{i:04d}" / f"ses-{session}"
            for datatype in ("anat", "dwi", "pet"):
                (folder / datatype).mkdir(parents=True)
            for suffix in ANAT:
                _image(folder / "anat" / f"{prefix}_{suffix}.nii.gz")
                (folder / "anat" / f"{prefix}_{suffix}.json").write_text("{}")
            _image(folder / "dwi" / f"{prefix}_dwi.nii.gz", 3)
            (folder / "dwi" / f"{prefix}_dwi.bval").write_text("0 1000 1000\n")
            (folder / "dwi" / f"{prefix}_dwi.bvec").write_text("0 1 0\n0 0 1\n0 0 0\n")
            (folder / "dwi" / f"{prefix}_dwi.json").write_text("{}")
            _image(folder / "pet" / f"{prefix}_trc-PIB_pet.nii.gz", 2)
            (folder / "pet" / f"{prefix}_trc-PIB_pet.json").write_text(pet_sidecar)
            files += 2 * len(ANAT) + 4 + 2
    return files


def _timed(function, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> int:
    from msynth.utils.bids import open_layout
    from msynth.utils.layout_index import open_indexed_layout

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scratch", type=Path, required=True, help="folder for the tree and the index (emptied)")
    parser.add_argument("--subjects", type=int, default=500, help="subjects in the tree (default: 500)")
    parser.add_argument("--repeats", type=int, default=3, help="timed loads of the saved index (default: 3)")
    args = parser.parse_args(argv)
    shutil.rmtree(args.scratch, ignore_errors=True)
    bids_dir, database = args.scratch / "bids", args.scratch / "bidsdb"
    write_s, n_files = _timed(write_tree, bids_dir, args.subjects)
    index_s, layout = _timed(open_layout, bids_dir)
    n_indexed = len(layout.get())
    build_s, _ = _timed(open_indexed_layout, bids_dir, database, ["0000"])
    loads = [_timed(open_indexed_layout, bids_dir, database, [f"{i:04d}"])[0] for i in range(args.repeats)]
    size_mb = sum(f.stat().st_size for f in database.rglob("*") if f.is_file()) / 1e6
    rows = [("write the tree", write_s), ("`open_layout` (every task, without `--bids-database-dir`)", index_s),
            ("first task with `--bids-database-dir`: index and save", build_s),
            (f"later task: load the index and check its participant (median of {args.repeats})",
             statistics.median(loads))]
    command = f".venv/bin/python benchmarks/pybids_index.py --scratch {args.scratch} --subjects {args.subjects}"
    lines = [
        f"# pybids indexing of a {args.subjects}-subject tree (`benchmarks/pybids_index.py`)", "",
        f"Command: `{command}`. Date: {time.strftime('%Y-%m-%d %H:%M')}; {platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} CPUs, load average {os.getloadavg()[0]:.1f} at the end (the test suite "
        "ran beside it); local ext4 disk (a cluster's shared file system is slower on metadata).", "",
        f"Tree: {args.subjects} subjects × 2 sessions, {n_files} files ({n_indexed} indexed by pybids; T1w, T2w, "
        "FLAIR, MTR, DWI with bval/bvec, PET, sidecars); saved index "
        f"{size_mb:.1f} MB.", "",
        "| step | seconds |", "| --- | --- |",
        *[f"| {name} | {seconds:.2f} |" for name, seconds in rows], "",
        f"Per array task, `--bids-database-dir` replaces {index_s:.0f} s of indexing by "
        f"{statistics.median(loads):.2f} s; over {args.subjects} tasks that is "
        f"{args.subjects * (index_s - statistics.median(loads)) / 3600:.1f} CPU-hours.",
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pybids_index.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
