"""The group level on a full phantom cohort, against the phantom's truth.

Usage (the participant level takes about an hour of both cores at 2 mm)::

    OMP_NUM_THREADS=1 ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1 \\
        .venv/bin/python benchmarks/group_phantom.py --scratch /tmp/group2 [--cohort small] [--stage STAGE ...]

``--cohort small`` (4 controls, 6 patients, seed 11: the 2 mm cohort of ``benchmarks/dvr_partial_volume.py``) takes
about a third of the time; its results go to ``group_phantom_small.md``.

Stages (default: all, in this order; a stage whose output exists is not redone):

``phantom``
    ``generate_cohort(n_controls=10, n_patients=18, voxel_size=2, seed=2027)`` (the thesis cohort's size).
``participant``
    ``msynth … participant`` in two processes (half the participants each, one core each), with the phantom's
    expert-like lesion masks (``--lesion-masks``) and without T2w, PDw, T1SE and DIR (``--bids-filter-file``: the
    group level does not use them; FLAIR stays, the lesion masks are drawn on it), and with the partial-volume
    correction of the DVR for a nominal PSF of 3.25 mm (``--pet-psf-fwhm``; the phantom draws each session's PSF
    from 2.5-4 mm and writes it nowhere, as a scanner's exact resolution is rarely known).
``group``
    ``msynth … group`` on those outputs, and on the truth laid out as participant-level outputs
    (:func:`msynth.phantom.truth_derivatives.write_truth_derivatives`).
``compare``
    Every index, demyelinated-voxel Dice and EDSS beta against the truth → ``benchmarks/results/group_phantom.md``
    and ``.tsv``.

Three comparisons, each per patient then summarised by the median over patients:

* **acquired vs truth** (and **acquired-pvc vs truth**): indices from the Logan DVR of the acquired PET (and from
  its partial-volume-corrected version), the group level on the participant level's outputs, against the truth
  table (noise-free DVR classified on the phantom's native grid);
* **truth maps vs truth table**: indices from the noise-free DVR on each session's T1w grid (the group level on the
  truth maps) against the truth table. This isolates what computing on each subject's own T1w grid, instead of the
  native grid, does to the indices (the thesis registers to MNI instead: another resampling of the same kind);
* demyelinated-voxel **Dice** of the group level's masks against the truth's masks on each session's T1w grid.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from lesions import markdown_table  # benchmarks/lesions.py

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = ROOT / "benchmarks" / "results"
COHORTS = {"full": {"n_controls": 10, "n_patients": 18, "voxel_size": 2.0, "seed": 2027},
           "small": {"n_controls": 4, "n_patients": 6, "voxel_size": 2.0, "seed": 11}}
#: The PET resolution given to the participant level: the midpoint of the phantom's PSF range (2.5-4 mm FWHM).
NOMINAL_PSF_FWHM_MM = 3.25
SKIPPED_KEYS = {key: {"acquisition": "excluded"} for key in ("T2w", "PDw", "T1SE", "DIR")}
TRUTH_COLUMNS = {"pct_demyelinated_t0": "pct_demyelinated_ses01", "pct_demyelinated_t1": "pct_demyelinated_ses02",
                 "global_index": "global_change", "dynamic_demyelination": "dynamic_demyelination",
                 "dynamic_remyelination": "dynamic_remyelination"}
STAGES = ("phantom", "participant", "group", "compare")


def _run_all(commands: list[list[str]], logs: list[Path]) -> dict[str, float]:
    """Run commands in parallel (each to its log); wall time and the children's peak resident memory."""
    start = time.perf_counter()
    processes = []
    for argv, log in zip(commands, logs):
        print("$", shlex.join(argv), flush=True)
        handle = log.open("a")
        handle.write("$ " + shlex.join(argv) + "\n")
        handle.flush()
        processes.append((subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT), handle))
    codes = [process.wait() for process, _ in processes]
    for _, handle in processes:
        handle.close()
    wall = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    print(f"  exit codes {codes}, {wall:.0f} s", flush=True)
    if any(codes):
        raise SystemExit(f"a command failed; see {', '.join(map(str, logs))}")
    return {"wall_s": wall, "peak_rss_gb": peak_gb}


def stage_phantom(scratch: Path, cohort: str) -> dict[str, float]:
    from msynth.phantom.cohort import generate_cohort

    start = time.perf_counter()
    generate_cohort(scratch / "bids", **COHORTS[cohort], overwrite=True, n_procs=2)
    return {"wall_s": time.perf_counter() - start}


def stage_participant(scratch: Path, cohort: str) -> dict[str, float]:
    bids, out = scratch / "bids", scratch / "derivatives"
    filters = scratch / "filter.json"
    filters.write_text(json.dumps(SKIPPED_KEYS))
    controls, patients = (sorted(p.name[4:] for p in bids.glob(f"sub-{group}*")) for group in ("HC", "MS"))
    halves = [controls[: len(controls) // 2] + patients[: len(patients) // 2],
              controls[len(controls) // 2:] + patients[len(patients) // 2:]]
    commands = [[str(BIN / "msynth"), str(bids), str(out), "participant", "--participant-label", *half,
                 "-w", str(scratch / f"work_{i}"), "--nprocs", "1", "--omp-nthreads", "1",
                 "--lesion-masks", str(bids / "derivatives" / "lesions"), "--bids-filter-file", str(filters),
                 "--pet-psf-fwhm", str(NOMINAL_PSF_FWHM_MM)]
                for i, half in enumerate(halves)]
    return _run_all(commands, [scratch / f"participant_{i}.log" for i in range(2)])


def stage_group(scratch: Path, cohort: str) -> dict[str, float]:
    from msynth.phantom.truth_derivatives import write_truth_derivatives

    bids = scratch / "bids"
    truth_maps = scratch / "truth-maps"
    if not truth_maps.exists():
        write_truth_derivatives(bids, scratch / "bids-truth", truth_maps)
    timings = {}
    for name, out in (("acquired", scratch / "derivatives"), ("truth_maps", truth_maps)):
        argv = [str(BIN / "msynth"), str(bids), str(out), "group", "-w", str(scratch / f"work_group_{name}"),
                "--nprocs", "2", "--omp-nthreads", "1"]
        result = _run_all([argv], [scratch / f"group_{name}.log"])
        timings.update({f"{name}_{key}": value for key, value in result.items()})
    return timings


def _indices(out: Path, source: str = "acquired") -> pd.DataFrame:
    table = pd.read_csv(out / "group" / "myelin_indices.tsv", sep="\t", na_values=["n/a"])
    return table[table["source"] == source].set_index("participant_id")


def _mask_dice(out: Path, truth_dir: Path, desc: str = "demyelinated") -> pd.DataFrame:
    from msynth.analysis.metrics import dice

    rows = []
    for mask in sorted(out.glob(f"sub-MS*/ses-*/pet/*_trc-PIB_space-T1w_desc-{desc}_mask.nii.gz")):
        session_dir = mask.parent.parent.relative_to(out)
        truth = truth_dir / session_dir / "anat" / mask.name.replace(f"_trc-PIB_space-T1w_desc-{desc}_",
                                                                     "_space-T1w_desc-demyelinated_")
        rows.append({"participant_id": session_dir.parts[0], "session": session_dir.parts[1],
                     "dice": dice(np.asanyarray(nib.load(mask).dataobj) > 0,
                                  np.asanyarray(nib.load(truth).dataobj) > 0)})
    return pd.DataFrame(rows)


def node_times(work_dir: Path) -> dict[str, float]:
    """Seconds per kind of group-level node (its name without the participant/session/source), from Nipype's
    per-node reports."""
    totals: dict[str, float] = {}
    for report in sorted(work_dir.glob("msynth_wf/group_wf/*/_report/report.rst")):
        match = re.search(r"\* duration : ([0-9.]+)", report.read_text())
        if match:
            kind = re.split(r"_(?:sub_|HC|MS|acquired)", report.parent.parent.name)[0]
            totals[kind] = totals.get(kind, 0.0) + float(match.group(1))
    return totals


def wm_threshold_sensitivity(out: Path, truth_dir: Path, thresholds: tuple[float, ...], *,
                             blur_fwhm_mm: float = 0.0) -> pd.DataFrame:
    """Baseline % demyelinated and demyelinated-voxel Dice against the truth when the controls' white matter is
    WM probability >= each threshold (the group level uses :data:`msynth.analysis.myelin.WM_PROBABILITY`).

    ``blur_fwhm_mm`` > 0 first smooths every DVR map with an isotropic Gaussian of that FWHM: applied to the
    noise-free truth maps, it shows what the PET's resolution alone does to the classification.
    """
    from scipy import ndimage

    from msynth.analysis import myelin
    from msynth.analysis.metrics import dice

    def baseline_maps(label: str) -> tuple[np.ndarray, ...]:
        session = sorted((out / label).glob("ses-*"))[0]
        prefix = f"{label}_{session.name}"
        names = ("pet/{p}_trc-PIB_space-T1w_model-Logan_meas-DVR_mimap", "anat/{p}_space-T1w_label-WM_probseg",
                 "anat/{p}_space-T1w_desc-CSFdistance_map", "anat/{p}_space-T1w_label-lesion_mask")
        images = [nib.load(session / f"{name.format(p=prefix)}.nii.gz") for name in names]
        arrays = [image.get_fdata() for image in images]
        if blur_fwhm_mm > 0:
            sigma = blur_fwhm_mm / (2 * np.sqrt(2 * np.log(2))) / np.asarray(images[0].header.get_zooms()[:3])
            arrays[0] = ndimage.gaussian_filter(arrays[0], sigma)
        truth_mask = truth_dir / label / session.name / "anat" / f"{prefix}_space-T1w_desc-demyelinated_mask.nii.gz"
        return (*arrays, nib.load(truth_mask).get_fdata() > 0.5)

    truth = pd.read_csv(truth_dir / "participants.tsv", sep="\t", na_values=["n/a"]).set_index("participant_id")
    controls = [baseline_maps(label) for label in truth.index[truth["group"] == "HC"]]
    patients = {label: baseline_maps(label) for label in truth.index[truth["group"] == "MS"]}
    rows = []
    for threshold in thresholds:
        reference = myelin.control_reference([
            myelin.white_matter_samples(dvr, wm >= threshold, myelin.distance_rings(distance))
            for dvr, wm, distance, _, _ in controls])
        errors, dices = [], []
        for label, (dvr, _, distance, lesion, truth_mask) in patients.items():
            mask = myelin.demyelinated_voxels(dvr, lesion > 0.5, myelin.distance_rings(distance), reference)
            errors.append(myelin.myelin_indices(lesion > 0.5, mask, None)["pct_demyelinated_t0"]
                          - truth.loc[label, "pct_demyelinated_ses01"])
            dices.append(dice(mask, truth_mask))
        rows.append({"wm_probability": threshold, "blur_fwhm_mm": blur_fwhm_mm,
                     "median_error_pct_t0": float(np.median(errors)),
                     "median_abs_error_pct_t0": float(np.median(np.abs(errors))),
                     "median_dice": float(np.median(dices))})
    return pd.DataFrame(rows)


def stage_compare(scratch: Path, timings: dict[str, dict[str, float]], cohort: str) -> None:
    from msynth.analysis import statistics

    truth_dir = scratch / "bids-truth"
    truth = pd.read_csv(truth_dir / "participants.tsv", sep="\t", na_values=["n/a"]).set_index("participant_id")
    planted = json.loads((truth_dir / "regression.json").read_text())["StandardizedBeta"]["dynamic_remyelination"]
    patients = truth[truth["group"] == "MS"]
    truth_data = patients.assign(sex_female=(patients["sex"] == "F").astype(float),
                                 t2_lesion_load_mm3=patients["t2_lesion_load"]).reset_index()
    rows = []
    runs = (("acquired", "acquired", "demyelinated", scratch / "derivatives"),
            ("acquired-pvc", "acquired-pvc", "pvcdemyelinated", scratch / "derivatives"),
            ("truth_maps", "acquired", "demyelinated", scratch / "truth-maps"))
    for name, source, desc, out in runs:
        indices = _indices(out, source)
        if indices.empty:
            print(f"{name}: no {source} source in {out}/group; skipped", flush=True)
            continue
        for index, column in TRUTH_COLUMNS.items():
            error = (indices[index] - patients.loc[indices.index, column]).abs()
            rows.append({"comparison": f"{name} vs truth table", "quantity": index, "n": int(error.notna().sum()),
                         "median_abs_error": error.median(), "max_abs_error": error.max()})
        dices = _mask_dice(out, truth_dir, desc)
        rows.append({"comparison": f"{name} vs truth masks", "quantity": "demyelinated Dice",
                     "n": len(dices), "median_abs_error": np.nan, "max_abs_error": np.nan,
                     "median": dices["dice"].median(), "min": dices["dice"].min()})
        regression = pd.read_csv(out / "group" / "edss_regression.tsv", sep="\t", na_values=["n/a"])
        beta = regression.set_index(["source", "index"]).loc[(source, "dynamic_remyelination"), "beta_std"]
        rows.append({"comparison": f"{name} EDSS beta", "quantity": "dynamic_remyelination beta_std",
                     "n": len(indices), "median": beta, "planted": planted})
    on_truth = statistics.edss_regression(truth_data, "dynamic_remyelination")["beta_std"]
    rows.append({"comparison": "truth table EDSS beta", "quantity": "dynamic_remyelination beta_std",
                 "n": len(truth_data), "median": on_truth, "planted": planted})
    for name in ("acquired", "truth_maps"):
        nodes = node_times(scratch / f"work_group_{name}")
        timings[f"group nodes ({name}), summed seconds"] = nodes
    table = pd.DataFrame(rows)
    sensitivity = pd.concat([
        *[wm_threshold_sensitivity(out, truth_dir, (0.5, 0.7, 0.8, 0.9)).assign(maps=name)
          for name, out in (("acquired", scratch / "derivatives"), ("truth_maps", scratch / "truth-maps"))],
        wm_threshold_sensitivity(scratch / "truth-maps", truth_dir, (0.5,), blur_fwhm_mm=4.0).assign(
            maps="truth_maps blurred")])
    RESULTS.mkdir(exist_ok=True)
    stem = "group_phantom" if cohort == "full" else f"group_phantom_{cohort}"
    table.to_csv(RESULTS / f"{stem}.tsv", sep="\t", index=False, na_rep="n/a")
    command = "OMP_NUM_THREADS=1 ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1 .venv/bin/python benchmarks/group_phantom.py " \
              f"--scratch {scratch}" + ("" if cohort == "full" else f" --cohort {cohort}")
    spec = ", ".join(f"{k}={v}" for k, v in COHORTS[cohort].items())
    lines = [
        f"# Group level on the 2 mm phantom cohort (`benchmarks/group_phantom.py`, {cohort})", "",
        f"Command: `{command}`; cohort `generate_cohort({spec})`; participant level with "
        f"`--pet-psf-fwhm {NOMINAL_PSF_FWHM_MM}`. "
        f"Machine: {platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, no GPU.", "",
        markdown_table(table), "",
        "Sensitivity of the baseline classification to the controls' white-matter definition (the group level uses "
        "WM probability >= 0.5; pct_demyelinated_t0 error and Dice against the truth, median over patients):", "",
        markdown_table(sensitivity[["maps", "wm_probability", "blur_fwhm_mm", "median_error_pct_t0",
                                    "median_abs_error_pct_t0", "median_dice"]]), "",
        "`truth_maps blurred`: the noise-free truth DVR smoothed by a 4 mm FWHM Gaussian (about the phantom PET's "
        "2.5-4 mm PSF combined with its 2.44 mm voxels at this scale) before classification: what the PET's "
        "resolution alone does.", "",
        "Timings (wall seconds; peak resident memory of the stage's child processes, GB):", "",
        *[f"- {stage}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float | int) else f"{k}: {v}"
                                    for k, v in values.items()) for stage, values in timings.items()],
    ]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scratch", type=Path, required=True, help="working folder (cohort, outputs, logs)")
    parser.add_argument("--stage", nargs="+", choices=STAGES, default=list(STAGES), help="stages to run")
    parser.add_argument("--cohort", choices=sorted(COHORTS), default="full", help="cohort size (default: full)")
    args = parser.parse_args(argv)
    scratch = args.scratch.resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    timings_file = scratch / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    runners = {"phantom": stage_phantom, "participant": stage_participant, "group": stage_group}
    for stage in args.stage:
        if stage == "compare":
            stage_compare(scratch, timings, args.cohort)
            continue
        timings[stage] = runners[stage](scratch, args.cohort)
        timings_file.write_text(json.dumps(timings, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
