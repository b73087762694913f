"""Do repeats of the template → T1w registration agree, and do they land right from a rotated or shifted start?

The pipeline's MNI152NLin2009aSym → T1w affine (template moving; the subject's N4-corrected T1w fixed, masked by its
deepbet brain mask; the pipeline's pyramid for the T1w voxel size) is run ``--repeats`` times on identical inputs for
each candidate setting, each setting in its own process whose ITK thread count is fixed before ANTs starts:

- ``current``: 2 ITK threads, 25 % regular sampling, centre-of-mass start (the product before issue 17);
- ``1-thread``: the same with 1 ITK thread;
- ``full``: 2 ITK threads, every voxel sampled;
- ``multi-start``: 1 ITK thread, 25 % sampling, started from the best (by Mattes MI) of 7 coarse rigid registrations
  from the centres aligned (T1w brain mask → template intensities) and from that start rotated by ±20° about each
  axis (the product's ``initialization="multi-start"``).

Reported per setting: the largest pairwise and the largest distance from the element-wise median transform (mean
displacement over the brain mask, mm), the wall time per registration, and, from starts where the T1w header is
rotated or shifted by a known amount (the template must follow), the error against the transform expected. Each
registration is also scored by the QC of :mod:`msynth.preprocessing.registration_qc` (Dice of the template's brain
mask brought onto the T1w with the T1w brain mask).

Inputs: ``phantom`` (the 4 mm phantom T1w of ``generate_cohort(n_controls=0, n_patients=1, voxel_size=4, seed=3)``)
and ``real`` (open_ms_data's raw patient01/study1 T1W, 0.72×0.72×3 mm, Lesjak et al. 2018, CC-BY, where present).

With ``--qc`` it measures the QC thresholds instead: the QC score of each co-registration at its true transform (the
phantom's truth; open_ms_data's own transforms) and misplaced by a known shift or rotation, and of the template
transform of an earlier ``multi-start`` run in the same ``--work``, likewise misplaced.

Run (the exact commands of the results are in the results file)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/registration_repeats.py --work /tmp/repeats \\
        --tsv benchmarks/results/registration_repeats.tsv
    OMP_NUM_THREADS=1 ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1 .venv/bin/python benchmarks/registration_repeats.py \\
        --work /tmp/repeats --qc --tsv benchmarks/results/registration_repeats_qc.tsv

Results: ``benchmarks/results/registration_repeats.md``, ``.tsv`` and ``_qc.tsv``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

OPEN_MS_T1W = (Path(__file__).resolve().parents[2] / "shared" / "data" / "open_ms_data" / "longitudinal" / "raw"
               / "patient01" / "study1_T1W.nii.gz")
#: setting → (ITK threads, sampling rate, initialization)
SETTINGS = {
    "current": (2, 0.25, "centre-of-mass"),
    "1-thread": (1, 0.25, "centre-of-mass"),
    "full": (2, 1.0, "centre-of-mass"),
    "multi-start": (1, 0.25, "multi-start"),
}
#: start perturbation → (rotation axis (RAS), degrees, shift in mm along R, A, S)
PERTURBATIONS = {
    "shift-15mm": ((1, 0, 0), 0.0, (10.0, -8.0, 8.0)),
    "rot-15deg-x": ((1, 0, 0), 15.0, (0.0, 0.0, 0.0)),
    "rot-27deg-x": ((1, 0, 0), 27.0, (0.0, 0.0, 0.0)),
    "rot-27deg-z+shift": ((0, 0, 1), 27.0, (5.0, 5.0, 0.0)),
}
#: misplacement of a co-registered image → (rotation axis (RAS), degrees, shift in mm along R, A, S)
MISPLACEMENTS = {
    "shift-10mm": ((1, 0, 0), 0.0, (10.0, 0.0, 0.0)),
    "rot-10deg-x": ((1, 0, 0), 10.0, (0.0, 0.0, 0.0)),
    "rot-10deg-z": ((0, 0, 1), 10.0, (0.0, 0.0, 0.0)),
    "rot-27deg-x": ((1, 0, 0), 27.0, (0.0, 0.0, 0.0)),
}
#: misplacement of the template → T1w transform (same form)
TEMPLATE_MISPLACEMENTS = {
    "shift-10mm": ((1, 0, 0), 0.0, (10.0, 0.0, 0.0)),
    "shift-14mm": ((1, 0, 0), 0.0, (14.0, 0.0, 0.0)),
    "rot-10deg-x": ((1, 0, 0), 10.0, (0.0, 0.0, 0.0)),
    "rot-15deg-x": ((1, 0, 0), 15.0, (0.0, 0.0, 0.0)),
    "rot-27deg-x": ((1, 0, 0), 27.0, (0.0, 0.0, 0.0)),
}
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def rigid_ras(axis: tuple[float, ...], degrees: float, shift_mm: tuple[float, ...], centre: np.ndarray) -> np.ndarray:
    """4×4 RAS rotation by ``degrees`` about ``axis`` through ``centre``, then a shift."""
    axis_v = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    angle = np.deg2rad(degrees)
    cross = np.array([[0, -axis_v[2], axis_v[1]], [axis_v[2], 0, -axis_v[0]], [-axis_v[1], axis_v[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross
    out = np.eye(4)
    out[:3, :3] = rotation
    out[:3, 3] = centre - rotation @ centre + np.asarray(shift_mm)
    return out


def move_header(path: Path, ras: np.ndarray, out: Path) -> Path:
    """Copy of an image whose world coordinates are moved by ``ras`` (the voxels stay)."""
    img = nib.load(path)
    moved = nib.Nifti1Image(np.asanyarray(img.dataobj), ras @ img.affine, img.header)
    moved.set_qform(ras @ img.affine, code=1)
    moved.set_sform(ras @ img.affine, code=1)
    nib.save(moved, out)
    return out


def prepare(raw: Path, work: Path) -> dict[str, str]:
    """Brain mask (deepbet) and N4 of one T1w, the template, and the rotated/shifted copies of the T1w."""
    from msynth.preprocessing.bias import n4_correct
    from msynth.preprocessing.brain import extract_brain
    from msynth.templates import write_template

    work.mkdir(parents=True, exist_ok=True)
    brain = extract_brain(raw, newpath=work, device="cpu")
    t1w = n4_correct(raw, newpath=work, mask=brain.mask).corrected
    files = {"t1w": str(t1w), "mask": str(brain.mask), "template": str(write_template(work, 1))}
    mask_img = nib.load(brain.mask)
    centre = (mask_img.affine @ np.append(np.argwhere(np.asanyarray(mask_img.dataobj) > 0).mean(axis=0), 1))[:3]
    for name, (axis, degrees, shift) in PERTURBATIONS.items():
        ras = rigid_ras(axis, degrees, shift, centre)
        files[f"{name}:t1w"] = str(move_header(Path(t1w), ras, work / f"{name}_t1w.nii.gz"))
        files[f"{name}:mask"] = str(move_header(Path(brain.mask), ras, work / f"{name}_mask.nii.gz"))
        files[f"{name}:ras"] = json.dumps(ras.tolist())
    return files


def worker(setting: str, files: dict[str, str], repeats: int, work: Path) -> list[dict]:
    """All registrations of one setting, in this process (whose ITK thread count the parent fixed)."""
    from msynth.preprocessing.registration import mean_displacement_mm, pyramid_for, read_affine, register_to_reference
    from msynth.preprocessing.registration_qc import template_overlap

    _, sampling, initialization = SETTINGS[setting]
    pyramid = pyramid_for(min(nib.load(files["t1w"]).header.get_zooms()[:3]))
    out = work / setting
    rows, xfms = [], []
    runs = [("repeat", index, "t1w", "mask") for index in range(repeats)]
    runs += [(name, 0, f"{name}:t1w", f"{name}:mask") for name in PERTURBATIONS]
    for case, index, t1w, mask in runs:
        start = time.perf_counter()
        xfm = register_to_reference(files["template"], files[t1w], files[mask], out_xfm=out / f"{case}{index}.mat",
                                    max_scale=None, sampling_rate=sampling, initialization=initialization, **pyramid)
        seconds = time.perf_counter() - start
        dice = template_overlap(files["template"], files[t1w], files[mask], xfm)
        row = {"setting": setting, "case": case, "repeat": index, "seconds": round(seconds, 2), "dice": round(dice, 4)}
        if case == "repeat":
            xfms.append(read_affine(xfm))
        else:  # the template must follow the moved head: expected = first repeat's transform after undoing the move
            ras = np.asarray(json.loads(files[f"{case}:ras"]))
            expected = xfms[0] @ _LPS @ np.linalg.inv(ras) @ _LPS
            row["error_mm"] = round(mean_displacement_mm(expected, xfm, files[mask]), 3)
        rows.append(row)
    median = np.median(np.stack(xfms), axis=0)
    for row, xfm in zip(rows, xfms):
        row["from_median_mm"] = round(mean_displacement_mm(median, xfm, files["mask"]), 3)
    pairwise = [mean_displacement_mm(a, b, files["mask"]) for a, b in itertools.combinations(xfms, 2)]
    rows[0]["max_pairwise_mm"] = round(max(pairwise, default=0.0), 3)
    return rows


def qc_rows(fixed: str, mask: str, moving: dict[str, tuple[str, np.ndarray]], input_name: str) -> list[dict]:
    """Co-registration QC score (NMI) of each image at its true transform and misplaced by a known move."""
    from msynth.preprocessing.registration import write_affine
    from msynth.preprocessing.registration_qc import coregistration_nmi

    mask_img = nib.load(mask)
    centre = (mask_img.affine @ np.append(np.argwhere(np.asanyarray(mask_img.dataobj) > 0).mean(axis=0), 1))[:3]
    moves = {"true": np.eye(4),
             **{name: _LPS @ rigid_ras(*move, centre) @ _LPS for name, move in MISPLACEMENTS.items()}}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for key, (image, truth) in moving.items():
            for name, move in moves.items():
                xfm = write_affine(truth @ move, f"{tmp}/{key}_{name}.mat")
                rows.append({"input": input_name, "case": "qc", "image": key, "move": name,
                             "nmi": round(coregistration_nmi(image, fixed, mask, xfm), 4)})
    return rows


def template_qc_rows(files: dict[str, str], xfm: Path, input_name: str) -> list[dict]:
    """Template QC score (Dice) at a registration's transform and with it misplaced by a known move."""
    from msynth.preprocessing.registration import read_affine, write_affine
    from msynth.preprocessing.registration_qc import template_overlap

    mask_img = nib.load(files["mask"])
    centre = (mask_img.affine @ np.append(np.argwhere(np.asanyarray(mask_img.dataobj) > 0).mean(axis=0), 1))[:3]
    moves = {"true": np.eye(4), **{name: _LPS @ rigid_ras(*move, centre) @ _LPS
                                   for name, move in TEMPLATE_MISPLACEMENTS.items()}}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, move in moves.items():
            moved = write_affine(read_affine(xfm) @ move, f"{tmp}/{name}.mat")
            rows.append({"input": input_name, "case": "qc", "image": "template", "move": name,
                         "dice": round(template_overlap(files["template"], files["t1w"], files["mask"], moved), 4)})
    return rows


def phantom_qc(work: Path, files: dict[str, str]) -> list[dict]:
    """QC scores of the phantom's co-registrations (true transforms from its truth)."""
    from msynth.preprocessing.registration import read_affine

    anat = work / "bids" / "sub-MS01" / "ses-01" / "anat"
    truth = work / "truth" / "sub-MS01" / "ses-01" / "anat"
    names = {"T2w": "T2w", "PDw": "PDw", "FLAIR": "FLAIR", "T1SE": "acq-SE_T1w", "DIR": "acq-DIR_T2w",
             "MTR": "MTRmap"}
    moving = {key: (str(anat / f"sub-MS01_ses-01_{name}.nii.gz"),
                    read_affine(truth / f"sub-MS01_ses-01_from-{key}_to-T1w_mode-image_xfm.mat"))
              for key, name in names.items()}
    session = work / "bids" / "sub-MS01" / "ses-01"
    for key, path in (("DWI", session / "dwi" / "sub-MS01_ses-01_dwi.nii.gz"),
                      ("PET", session / "pet" / "sub-MS01_ses-01_trc-PIB_pet.nii.gz")):
        img = nib.load(path)  # DWI: its first volume (b = 0); PET: the mean over frames
        volume = np.asanyarray(img.dataobj)[..., 0] if key == "DWI" else np.asanyarray(img.dataobj).mean(axis=-1)
        nib.save(nib.Nifti1Image(volume.astype(np.float32), img.affine), work / f"{key}_mean.nii.gz")
        moving[key] = (str(work / f"{key}_mean.nii.gz"),
                       read_affine(truth.parent / key.lower()
                                   / f"sub-MS01_ses-01_from-{key}_to-T1w_mode-image_xfm.mat"))
    return qc_rows(files["t1w"], files["mask"], moving, "phantom")


def real_qc(work: Path) -> list[dict]:
    """QC scores of open_ms_data patient01 visit 1: FLAIR and T2W onto the T1W through the dataset's transforms."""
    from msynth.preprocessing.brain import extract_brain
    from msynth.preprocessing.registration import read_affine

    raw = OPEN_MS_T1W.parent
    mask = extract_brain(OPEN_MS_T1W, newpath=work, device="cpu").mask
    t1w_to_flair = np.linalg.inv(read_affine(raw / "study1_T1W_intrastudy_to_FLAIR.txt"))  # T1W points → FLAIR points
    moving = {"FLAIR": (str(raw / "study1_FLAIR.nii.gz"), t1w_to_flair),
              "T2W": (str(raw / "study1_T2W.nii.gz"),
                      read_affine(raw / "study1_T2W_intrastudy_to_FLAIR.txt") @ t1w_to_flair)}
    return qc_rows(str(OPEN_MS_T1W), str(mask), moving, "real")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--tsv", type=Path)
    parser.add_argument("--inputs", nargs="+", default=["phantom", "real"], choices=["phantom", "real"])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--qc", action="store_true", help="only the co-registration QC scores")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        files = json.loads((args.work / "files.json").read_text())
        rows = worker(args.worker, files, args.repeats, args.work)
        (args.work / f"{args.worker}.json").write_text(json.dumps(rows))
        return
    rows = []
    for name in args.inputs:
        work = args.work / name
        if name == "phantom":
            from msynth.phantom.cohort import generate_cohort

            bids = work / "bids"
            if not bids.is_dir():
                generate_cohort(bids, work / "truth", n_controls=0, n_patients=1, voxel_size=4.0, seed=3)
            raw = bids / "sub-MS01" / "ses-01" / "anat" / "sub-MS01_ses-01_T1w.nii.gz"
        elif OPEN_MS_T1W.is_file():
            raw = OPEN_MS_T1W
        else:
            print(f"{OPEN_MS_T1W} absent: no real input", file=sys.stderr)
            continue
        files_json = work / "files.json"
        if not files_json.is_file():
            files_json.write_text(json.dumps(prepare(raw, work / "prep")))
        if args.qc:
            files = json.loads(files_json.read_text())
            rows += phantom_qc(work, files) if name == "phantom" else real_qc(work / "prep")
            if (work / "multi-start" / "repeat0.mat").is_file():  # the template registration of the repeats run
                rows += template_qc_rows(files, work / "multi-start" / "repeat0.mat", name)
            continue
        for setting in args.settings:
            env = {**os.environ, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(SETTINGS[setting][0])}
            subprocess.run([sys.executable, __file__, "--work", str(work), "--repeats", str(args.repeats),
                            "--worker", setting], env=env, check=True)
            rows += [{"input": name, **row} for row in json.loads((work / f"{setting}.json").read_text())]
    table = pd.DataFrame(rows)
    if args.qc:
        for value in ("nmi", "dice"):
            if value in table:
                print(table.pivot_table(index=["input", "image"], columns="move", values=value,
                                        sort=False).to_string())
        if args.tsv:
            table.to_csv(args.tsv, sep="\t", index=False, na_rep="n/a")
        return
    if args.tsv:
        table.to_csv(args.tsv, sep="\t", index=False, na_rep="n/a")
    repeats = table[table["case"] == "repeat"].groupby(["input", "setting"], sort=False)
    summary = pd.DataFrame({
        "max_pairwise_mm": repeats["max_pairwise_mm"].max(),
        "max_from_median_mm": repeats["from_median_mm"].max(),
        "s_per_reg": repeats["seconds"].median(),
        "min_dice": repeats["dice"].min(),
    })
    moved = table[table["case"] != "repeat"].pivot_table(index=["input", "setting"], columns="case",
                                                         values="error_mm", sort=False)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(summary.join(moved).to_string())
        print(table[table["case"] != "repeat"].pivot_table(index=["input", "setting"], columns="case",
                                                             values="dice", sort=False).to_string())


if __name__ == "__main__":
    main()
