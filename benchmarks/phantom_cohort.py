"""Benchmark of msynth-phantom: wall time of a cohort, and how hard the phantom is for a linear model.

Run (about 10 minutes on the 2-core development machine)::

    OMP_NUM_THREADS=1 ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1 \\
        .venv/bin/python benchmarks/phantom_cohort.py /tmp/phantom_bench --voxel-size 2

1. Generates a fresh cohort (10 controls, 18 patients by default) with ``msynth-phantom`` and times it.
2. Validates it with ``bids-validator-deno -r`` (errors and warnings counted).
3. Brings every acquisition of every patient session onto the session's T1w grid with the true transforms and
   measures the R^2 of voxel-wise ordinary least squares:
   * (MTR, FA, RD, AD) -> DVR inside the true lesion mask, for the noise-free DVR and for the Logan DVR of the
     acquired (noisy, blurred) PET; FA/RD/AD come from a log-linear tensor fit of the acquired DWI;
   * (T1w, T2w, PDw) -> FLAIR inside the true brain mask.
   Each is reported per session (median) and pooled over sessions after z-scoring each image (as paper 001).

Results go to ``benchmarks/results/phantom_cohort_<voxel-size>mm.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import ants
import nibabel as nib
import numpy as np
import pandas as pd

from msynth.cli.phantom import main as phantom_main
from msynth.phantom import dwi, pet

RESULTS = Path(__file__).parent / "results"


def _r2(features: np.ndarray, target: np.ndarray) -> float:
    """R^2 of ordinary least squares with intercept."""
    design = np.column_stack([np.ones(len(target)), features])
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    residual = target - design @ coef
    return float(1.0 - residual.var() / target.var())


def _zscore(values: np.ndarray) -> np.ndarray:
    """Columns standardized to zero mean and unit SD."""
    return (values - values.mean(axis=0)) / values.std(axis=0)


def _to_t1w(image: ants.ANTsImage, t1w: ants.ANTsImage, xfm: Path) -> np.ndarray:
    """Image resampled onto the T1w grid through a true transform."""
    return ants.apply_transforms(fixed=t1w, moving=image, transformlist=[str(xfm)]).numpy()


def _split_4d(path: Path) -> tuple[np.ndarray, ants.ANTsImage]:
    """4-D data and a 3-D ANTs header template of a 4-D NIfTI."""
    img = ants.image_read(str(path))
    data = img.numpy()
    frame = ants.from_numpy(data[..., 0], origin=img.origin[:3], spacing=img.spacing[:3],
                            direction=img.direction[:3, :3])
    return data, frame


def _like(data: np.ndarray, header: ants.ANTsImage) -> ants.ANTsImage:
    """ANTs image of ``data`` with the geometry of ``header``."""
    return ants.from_numpy(np.ascontiguousarray(data, dtype=np.float32), origin=header.origin,
                           spacing=header.spacing, direction=header.direction)


def tensor_maps(dwi_path: Path) -> dict[str, np.ndarray]:
    """FA, RD, AD (mm^2/s) of a log-linear tensor fit of an acquired series (bvec frame irrelevant to them)."""
    data, _ = _split_4d(dwi_path)
    bvals = np.loadtxt(dwi_path.with_suffix("").with_suffix(".bval"))
    bvecs = np.loadtxt(dwi_path.with_suffix("").with_suffix(".bvec")).T
    flat = np.log(np.maximum(data.reshape(-1, data.shape[-1]).astype(np.float64), 1.0)).T
    metrics = dwi.tensor_metrics(np.linalg.pinv(dwi.design_matrix(bvals, bvecs)) @ flat)
    return {k: metrics[k].reshape(data.shape[:3]) for k in ("FA", "RD", "AD")}


def logan_dvr(frames: np.ndarray, reference: np.ndarray, t_star_min: float = 35.0) -> np.ndarray:
    """Voxel-wise Logan reference DVR (Logan 1996) without k2' (late ratio absorbed in the intercept)."""
    duration = np.array(pet.FRAME_DURATIONS_S) / 60.0
    mid = np.array(pet.FRAME_STARTS_S) / 60.0 + duration / 2
    late = mid >= t_star_min
    tac = np.maximum(frames.reshape(-1, frames.shape[-1]), 1e-3)
    y = (np.cumsum(tac * duration, axis=1) / tac)[:, late]
    x = (np.cumsum(reference * duration) / tac)[:, late]
    xm, ym = x.mean(axis=1, keepdims=True), y.mean(axis=1, keepdims=True)
    slope = ((x - xm) * (y - ym)).sum(axis=1) / np.maximum(((x - xm) ** 2).sum(axis=1), 1e-12)
    return slope.reshape(frames.shape[:3])


def session_features(bids: Path, truth: Path, subject: str, session: str) -> dict[str, np.ndarray]:
    """Every measured map of one session on its T1w grid, with the truth masks and DVR."""
    b = f"sub-{subject}_ses-{session}"
    raw, tru = bids / f"sub-{subject}" / f"ses-{session}", truth / f"sub-{subject}" / f"ses-{session}"
    t1w = ants.image_read(str(raw / "anat" / f"{b}_T1w.nii.gz"))
    out = {"T1w": t1w.numpy()}
    for key, name in (("T2w", "T2w"), ("PDw", "PDw"), ("FLAIR", "FLAIR"), ("MTR", "MTRmap")):
        out[key] = _to_t1w(ants.image_read(str(raw / "anat" / f"{b}_{name}.nii.gz")), t1w,
                           tru / "anat" / f"{b}_from-{key}_to-T1w_mode-image_xfm.mat")
    dwi_path = raw / "dwi" / f"{b}_dwi.nii.gz"
    _, dwi_header = _split_4d(dwi_path)
    for key, values in tensor_maps(dwi_path).items():
        out[key] = _to_t1w(_like(values, dwi_header), t1w, tru / "dwi" / f"{b}_from-DWI_to-T1w_mode-image_xfm.mat")
    frames, pet_header = _split_4d(raw / "pet" / f"{b}_trc-PIB_pet.nii.gz")
    xfm = tru / "pet" / f"{b}_from-PET_to-T1w_mode-image_xfm.mat"
    frames_t1w = np.stack([_to_t1w(_like(frames[..., f], pet_header), t1w, xfm) for f in range(frames.shape[-1])],
                          axis=-1)
    reference = nib.load(tru / "pet" / f"{b}_trc-PIB_space-T1w_desc-reference_mask.nii.gz").get_fdata() > 0
    out["DVR_logan"] = logan_dvr(frames_t1w, frames_t1w[reference].mean(axis=0))
    out["DVR_true"] = nib.load(tru / "pet" / f"{b}_trc-PIB_space-T1w_meas-DVR_mimap.nii.gz").get_fdata()
    out["lesion"] = nib.load(tru / "anat" / f"{b}_space-T1w_label-lesion_mask.nii.gz").get_fdata() > 0
    out["brain"] = nib.load(tru / "anat" / f"{b}_space-T1w_desc-brain_mask.nii.gz").get_fdata() > 0
    return out


def difficulty(bids: Path, truth: Path) -> dict:
    """R^2 of the two linear baselines, per session (median) and pooled (z-scored per image)."""
    participants = pd.read_csv(truth / "participants.tsv", sep="\t")
    tasks = {"MTR+FA+RD+AD->DVR_true in lesions": (["MTR", "FA", "RD", "AD"], "DVR_true", "lesion"),
             "MTR+FA+RD+AD->DVR_logan in lesions": (["MTR", "FA", "RD", "AD"], "DVR_logan", "lesion"),
             "T1w+T2w+PDw->FLAIR in brain": (["T1w", "T2w", "PDw"], "FLAIR", "brain")}
    per_session: dict[str, list[float]] = {t: [] for t in tasks}
    pooled: dict[str, list[np.ndarray]] = {t: [] for t in tasks}
    for pid in participants.loc[participants["group"] == "MS", "participant_id"]:
        subject = pid.removeprefix("sub-")
        for session in ("01", "02"):
            maps = session_features(bids, truth, subject, session)
            for task, (inputs, target, region) in tasks.items():
                mask = maps[region]
                if mask.sum() < 10:
                    continue
                table = np.column_stack([maps[k][mask] for k in inputs + [target]])
                per_session[task].append(_r2(table[:, :-1], table[:, -1]))
                pooled[task].append(_zscore(table))
    out = {}
    for task in tasks:
        table = np.vstack(pooled[task])
        out[task] = {"pooled_r2": round(_r2(table[:, :-1], table[:, -1]), 3),
                     "median_session_r2": round(float(np.median(per_session[task])), 3),
                     "sessions": len(per_session[task]), "voxels": int(table.shape[0])}
    return out


def validate(bids: Path) -> dict:
    """Error and warning counts of ``bids-validator-deno -r`` (raw dataset and derivatives)."""
    validator = Path(sys.executable).with_name("bids-validator-deno")
    report = json.loads(subprocess.run([str(validator), "-r", "--format", "json", str(bids)], capture_output=True,
                                       text=True, check=False).stdout)
    datasets = [report, *report.get("derivativesSummary", {}).values()]
    issues = [i for d in datasets for i in d["issues"]["issues"]]
    return {"errors": sum(i["severity"] == "error" for i in issues),
            "warnings": sum(i["severity"] == "warning" for i in issues)}


def main() -> None:
    """Generate, time, validate and measure; print and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--voxel-size", type=float, default=2.0)
    parser.add_argument("--n-controls", type=int, default=10)
    parser.add_argument("--n-patients", type=int, default=18)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()
    load_before = os.getloadavg()
    start = time.perf_counter()
    code = phantom_main([str(args.output_dir), "--n-controls", str(args.n_controls), "--n-patients",
                         str(args.n_patients), "--voxel-size", str(args.voxel_size), "--seed", str(args.seed),
                         "--overwrite"])
    wall = time.perf_counter() - start
    if code:
        raise SystemExit(code)
    truth = args.output_dir.parent / f"{args.output_dir.name}-truth"
    results = {
        "command": " ".join(sys.argv),
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "load_average_1_5_15min_before": [round(x, 2) for x in load_before],
        "load_average_1_5_15min_after": [round(x, 2) for x in os.getloadavg()],
        "voxel_size": args.voxel_size, "n_controls": args.n_controls, "n_patients": args.n_patients,
        "seed": args.seed, "nprocs": len(os.sched_getaffinity(0)), "generation_wall_s": round(wall, 1),
        "validator": validate(args.output_dir),
        "r2": difficulty(args.output_dir, truth),
    }
    print(json.dumps(results, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"phantom_cohort_{args.voxel_size:g}mm.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
