"""How much grey/white-matter contrast does msynth's N4 take for bias? Phantom (truth known) and real raw T1w.

N4 (:func:`msynth.preprocessing.bias.n4_correct`, B-splines from 200 mm halved over 4 levels, 25 mm at the last)
models the image as tissue x a smooth field and sharpens the intensity histogram. Fitted over the whole brain, a
field at 25 mm can follow where grey matter lies (the cortical shell, the deep nuclei) and take part of the GM/WM
contrast for bias. Fitted in the white matter only, as antsAtroposN4 does with its tissue posteriors, the field sees
one tissue and cannot. This benchmark measures the T1w GM/WM ratio of means with the same regions before N4
(acquired, bias included), after N4 fitted in the brain (what msynth does) and after N4 fitted in the WM:

- **phantom**: ses-01 of each patient of a cohort from :func:`msynth.phantom.cohort.generate_cohort`; regions are the
  truth GM and WM probabilities > 0.9 on the T1w grid, the fit masks the true brain and the true WM probability > 0.5
  in it. The signal equation gives the contrast of pure tissue (``pure`` row), which a bias correction should keep;
- **real**: the longitudinal open_ms_data visits (Lesjak et al. 2016/2018, CC-BY) as msynth's participant level wrote
  them (``--real-derivatives``: its N4-corrected T1w on the raw T1w grid, brain mask, GM/WM probabilities > 0.9 as
  regions, WM > 0.5 as the WM fit mask) against the raw T1w from the BIDS view (``--real-bids``). The raw scan
  carries its own unknown bias, so its ratio is not the truth; the change between the two fits is the point.

The phantom cohort goes where ``benchmarks/phantom_realism.py`` puts its own (``phantom-1mm-seed3-n2`` in
``--scratch``), so one generation serves both. Run (results in ``benchmarks/results/n4_contrast.md``)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/n4_contrast.py --scratch /work/bench/realism \\
        --real-derivatives /work/bench/real/derivatives --real-bids /work/bench/real/bids
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from msynth.phantom import mri, tissue
from msynth.preprocessing.bias import n4_correct
from phantom_realism import DERIVATIVE_SESSIONS, phantom_cohort

RESULTS = Path(__file__).parent / "results"
PURE_TISSUE = 0.9
WM_FIT = 0.5


def gm_wm_ratio(image: np.ndarray, gm: np.ndarray, wm: np.ndarray) -> float:
    """Ratio of the mean intensity in ``gm`` to that in ``wm``."""
    return float(image[gm].mean() / image[wm].mean())


def n4_ratios(t1w: Path, brain: np.ndarray, wm_fit: np.ndarray, gm: np.ndarray, wm: np.ndarray,
              folder: Path) -> dict[str, float]:
    """GM/WM of ``t1w`` as acquired, after N4 fitted in ``brain`` and after N4 fitted in ``wm_fit``."""
    image = nib.load(t1w)
    ratios = {"acquired": gm_wm_ratio(np.asanyarray(image.dataobj, dtype=np.float64), gm, wm)}
    for label, fit in (("n4_brain", brain), ("n4_wm", wm_fit)):
        out = folder / label
        out.mkdir(parents=True, exist_ok=True)
        mask = out / "fit_mask.nii.gz"
        nib.save(nib.Nifti1Image(fit.astype(np.uint8), image.affine), mask)
        corrected = nib.load(n4_correct(t1w, newpath=out, mask=mask).corrected).get_fdata()
        ratios[label] = gm_wm_ratio(corrected, gm, wm)
    return ratios


def _mask(path: Path, threshold: float = 0.0) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj) > threshold


def phantom_rows(scratch: Path, n_patients: int, seed: int) -> list[dict]:
    """One row per phantom patient (ses-01, 1 mm), generated in ``scratch`` unless already there."""
    cohort = phantom_cohort(1.0, seed, n_patients, scratch / f"phantom-1mm-seed{seed}-n{n_patients}", reuse=True,
                            n_procs=1)
    bids, truth = cohort.bids_dir, cohort.truth_dir
    rows = []
    for number in range(1, n_patients + 1):
        subject, anat = f"MS{number:02d}", f"sub-MS{number:02d}/ses-01/anat"
        stem = truth / anat / f"sub-{subject}_ses-01_space-T1w_"
        gm, wm = (_mask(Path(f"{stem}label-{label}_probseg.nii.gz"), PURE_TISSUE) for label in ("GM", "WM"))
        brain = _mask(Path(f"{stem}desc-brain_mask.nii.gz"))
        wm_fit = brain & _mask(Path(f"{stem}label-WM_probseg.nii.gz"), WM_FIT)
        ratios = n4_ratios(bids / anat / f"sub-{subject}_ses-01_T1w.nii.gz", brain, wm_fit, gm, wm,
                           scratch / "n4" / subject)
        rows.append({"source": "phantom", "scan": f"{subject}-01", **ratios})
    return rows


def real_rows(derivatives: Path, bids: Path, scratch: Path) -> list[dict]:
    """One row per longitudinal visit found in ``derivatives``; a visit without its files is skipped, said why."""
    rows = []
    for subject, session in DERIVATIVE_SESSIONS:
        stem = derivatives / f"sub-{subject}" / f"ses-{session}" / "anat" / f"sub-{subject}_ses-{session}_space-T1w_"
        raw = bids / f"sub-{subject}" / f"ses-{session}" / "anat" / f"sub-{subject}_ses-{session}_T1w.nii.gz"
        needed = [raw, *(Path(f"{stem}{suffix}.nii.gz") for suffix in
                         ("desc-preproc_T1w", "desc-brain_mask", "label-GM_probseg", "label-WM_probseg"))]
        missing = [str(path) for path in needed if not path.exists()]
        if missing:
            print(f"skipping sub-{subject} ses-{session}: missing {', '.join(missing)}", flush=True)
            continue
        gm, wm = (_mask(Path(f"{stem}label-{label}_probseg.nii.gz"), PURE_TISSUE) for label in ("GM", "WM"))
        brain = _mask(Path(f"{stem}desc-brain_mask.nii.gz"))
        if nib.load(raw).shape[:3] != brain.shape:
            print(f"skipping sub-{subject} ses-{session}: raw T1w and outputs on different grids", flush=True)
            continue
        wm_fit = brain & _mask(Path(f"{stem}label-WM_probseg.nii.gz"), WM_FIT)
        ratios = n4_ratios(raw, brain, wm_fit, gm, wm, scratch / "n4" / f"{subject}-{session}")
        preproc = nib.load(f"{stem}desc-preproc_T1w.nii.gz").get_fdata()
        rows.append({"source": "real", "scan": f"{subject}-{session}", **ratios,
                     "participant_level": gm_wm_ratio(preproc, gm, wm)})
    return rows


def pure_row() -> dict:
    """The T1w GM/WM of pure nominal tissue from the phantom's signal equation."""
    gm, wm, t1w = tissue.NOMINAL["GM"], tissue.NOMINAL["WM"], mri.PROTOCOLS["T1w"].signal
    return {"source": "phantom", "scan": "pure tissue (signal equation)",
            "acquired": float(t1w(gm.pd, gm.t1_ms, gm.t2_ms) / t1w(wm.pd, wm.t1_ms, wm.t2_ms))}


def report(frame: pd.DataFrame, command: str, seconds: float) -> str:
    """Markdown: command, machine, the table and the share of the contrast (1 - ratio) each fit keeps."""
    table = frame.copy()
    for fit in ("n4_brain", "n4_wm"):
        table[f"{fit}_kept"] = (1 - table[fit]) / (1 - table["acquired"])
    header = "| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns) + "\n"
    body = "".join("| " + " | ".join("" if pd.isna(v) else (f"{v:.3f}" if isinstance(v, float) else str(v))
                                     for v in row) + " |\n" for row in table.itertuples(index=False))
    load = os.getloadavg()[0]
    return (f"# T1w GM/WM contrast before and after N4\n\nCommand: `{command}`\n\n"
            f"Date: {datetime.datetime.now():%Y-%m-%d %H:%M}; {platform.platform()}, {os.cpu_count()} CPUs, load "
            f"average {load:.1f}; {seconds:.0f} s.\n\nMethod: `benchmarks/n4_contrast.py` (module docstring). "
            "Columns: GM/WM ratio of means acquired, after N4 fitted in the brain (msynth's participant level), "
            "after N4 fitted in the WM; `participant_level`: the participant level's own corrected T1w; "
            "`*_kept`: (1 - ratio after) / (1 - ratio acquired).\n\n" + header + body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scratch", type=Path, required=True)
    parser.add_argument("--patients", type=int, default=2, help="phantom patients (1 mm)")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--real-derivatives", type=Path, default=None, help="participant-level outputs of the "
                        "longitudinal open_ms_data visits (benchmarks/train_shipped_models.py --stage real)")
    parser.add_argument("--real-bids", type=Path, default=None, help="their raw BIDS view")
    parser.add_argument("--results", type=Path, default=RESULTS / "n4_contrast.md")
    args = parser.parse_args()
    start = time.perf_counter()
    rows = [pure_row(), *phantom_rows(args.scratch, args.patients, args.seed)]
    if args.real_derivatives and args.real_bids:
        rows += real_rows(args.real_derivatives, args.real_bids, args.scratch)
    else:
        print("no --real-derivatives/--real-bids: the real visits are skipped", flush=True)
    command = shlex.join(["OMP_NUM_THREADS=1", ".venv/bin/python", "benchmarks/n4_contrast.py", *sys.argv[1:]])
    text = report(pd.DataFrame(rows), command, time.perf_counter() - start)
    args.results.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
