"""Benchmark of the participant preprocessing (issue 4): accuracy against truth, wall time and peak memory.

Part 1, phantom: one msynth-phantom patient (seed 11) at ``--voxel-size`` (default 1 mm, the papers' protocols), its
first session processed by ``msynth … participant --nprocs 1`` with Nipype's resource monitor on. Reports the brain-
mask Dice, the mean displacement over the brain between estimated and true transforms of every modality, FA/RD/AD/MD
in white matter (WM probability > 0.9, lesions excluded) against the noise-free tensor maps, the Logan DVR in the same
white matter against the noise-free DVR, and the wall time and peak memory of every node.

Part 2, real scans (skipped when ../shared/data/open_ms_data is absent): study1 and study2 of
``longitudinal/raw/patient01`` (T1W, T2W, FLAIR with skull, thick slices) as a BIDS view; the T2W → FLAIR transform
obtained through the pipeline (both registered to the T1W) is compared with the dataset's own
``studyN_T2W_intrastudy_to_FLAIR.txt`` over the FLAIR brain, and a PNG overlay shows the brain mask.

Run (about 30–40 minutes on a 2-core machine at 1 mm)::

    .venv/bin/python benchmarks/preprocessing.py --voxel-size 1 --scratch /tmp/msynth-bench

Results: ``benchmarks/results/preprocessing_<voxel>mm.md`` and ``…_nodes.tsv``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
from nipype import config as nipype_config

from msynth.cli import run as cli
from msynth.phantom.cohort import generate_cohort
from msynth.preprocessing.registration import compose, invert, mean_displacement_mm, read_affine

RESULTS = Path(__file__).parent / "results"
OPEN_MS = Path(__file__).resolve().parents[2] / "shared" / "data" / "open_ms_data"
REGISTERED = {"T2w": "anat", "PDw": "anat", "FLAIR": "anat", "T1SE": "anat", "DIR": "anat", "MTR": "anat",
              "DWI": "dwi", "PET": "pet"}


def run_msynth(bids: Path, out: Path, work: Path, extra: list[str]) -> float:
    """Run the participant level in this process with Nipype's resource monitor; return the wall time."""
    nipype_config.enable_resource_monitor()
    start = time.perf_counter()
    code = cli.main([str(bids), str(out), "participant", "-w", str(work), "--nprocs", "1", *extra])
    if code != 0:
        raise SystemExit(f"msynth failed with exit code {code}; see {out}/logs")
    return time.perf_counter() - start


def node_table(work: Path) -> pd.DataFrame:
    """Wall time and peak memory of every executed node, from Nipype's result files."""
    from nipype.utils.filemanip import loadpkl

    rows = []
    for result_file in sorted(work.rglob("result_*.pklz")):
        runtime = getattr(loadpkl(result_file), "runtime", None)
        if runtime is None:
            continue
        node = result_file.parent.relative_to(work).as_posix().split("/", 2)[-1]
        rows.append({"node": node, "seconds": round(getattr(runtime, "duration", np.nan), 2),
                     "peak_memory_gb": round(getattr(runtime, "mem_peak_gb", np.nan) or np.nan, 3)})
    return pd.DataFrame(rows).sort_values("seconds", ascending=False)


def phantom_metrics(cohort, out: Path, subject: str, session: str) -> dict[str, float]:
    """Accuracy of one processed phantom session against its truth."""
    stem = f"sub-{subject}_ses-{session}"

    def path(root: Path, datatype: str, name: str) -> Path:
        return root / f"sub-{subject}" / f"ses-{session}" / datatype / f"{stem}_{name}"

    def data(root: Path, datatype: str, name: str) -> np.ndarray:
        return nb.load(path(root, datatype, name)).get_fdata()

    truth = cohort.truth_dir
    metrics = {}
    estimate = data(out, "anat", "space-T1w_desc-brain_mask.nii.gz") > 0
    brain = data(truth, "anat", "space-T1w_desc-brain_mask.nii.gz") > 0
    metrics["brain_mask_dice"] = 2 * (estimate & brain).sum() / (estimate.sum() + brain.sum())
    brain_img = nb.load(path(truth, "anat", "space-T1w_desc-brain_mask.nii.gz"))
    for key, datatype in REGISTERED.items():
        name = f"from-{key}_to-T1w_mode-image_xfm.mat"
        metrics[f"displacement_mm_{key}"] = mean_displacement_mm(
            read_affine(path(out, datatype, name)), read_affine(path(truth, datatype, name)), brain_img
        )
    wm = data(truth, "anat", "space-T1w_label-WM_probseg.nii.gz") > 0.9
    wm &= data(truth, "anat", "space-T1w_label-lesion_mask.nii.gz") == 0
    for param in ("FA", "RD", "AD", "MD"):
        name = f"space-T1w_model-DTI_param-{param}_dwimap.nii.gz"
        metrics[f"{param}_wm_relative_error"] = data(out, "dwi", name)[wm].mean() / data(truth, "dwi", name)[wm].mean() - 1
    dvr = data(out, "pet", "trc-PIB_space-T1w_model-Logan_meas-DVR_mimap.nii.gz")[wm]
    metrics["DVR_wm_relative_error"] = dvr.mean() / data(truth, "pet", "trc-PIB_space-T1w_meas-DVR_mimap.nii.gz")[wm].mean() - 1
    return {key: round(float(value), 4) for key, value in metrics.items()}


def real_data(scratch: Path) -> list[dict[str, object]]:
    """T2W → FLAIR through the pipeline against the dataset's own transforms, per visit of patient01."""
    raw = OPEN_MS / "longitudinal" / "raw" / "patient01"
    bids = scratch / "open_ms_bids"
    shutil.rmtree(bids, ignore_errors=True)
    (bids).mkdir(parents=True)
    (bids / "dataset_description.json").write_text(json.dumps(
        {"Name": "open_ms_data patient01 (Lesjak et al. 2016, CC-BY)", "BIDSVersion": "1.10.0",
         "Authors": ["Lesjak Z", "Spiclin Z"]}))
    (bids / "participants.tsv").write_text("participant_id\nsub-patient01\n")
    for study in ("study1", "study2"):
        anat = bids / "sub-patient01" / f"ses-{study}" / "anat"
        anat.mkdir(parents=True)
        for raw_name, suffix in (("T1W", "T1w"), ("T2W", "T2w"), ("FLAIR", "FLAIR")):
            (anat / f"sub-patient01_ses-{study}_{suffix}.nii.gz").symlink_to(raw / f"{study}_{raw_name}.nii.gz")
    out, work = scratch / "open_ms_out", scratch / "open_ms_work"
    seconds = run_msynth(bids, out, work, ["--skip-bids-validation"])
    rows = []
    for study in ("study1", "study2"):
        anat = out / "sub-patient01" / f"ses-{study}" / "anat"
        stem = f"sub-patient01_ses-{study}"
        # FLAIR points → T1w points → T2w points: the transform that resamples T2w onto the FLAIR.
        flair_to_t2w = compose(
            [invert(anat / f"{stem}_from-FLAIR_to-T1w_mode-image_xfm.mat", out_xfm=scratch / "inv.mat"),
             anat / f"{stem}_from-T2w_to-T1w_mode-image_xfm.mat"],
            out_xfm=scratch / f"{study}_t2w_to_flair.mat",
        )
        flair_brain = _brain_on_flair(anat, stem, raw / f"{study}_FLAIR.nii.gz", scratch)
        dataset = read_affine(raw / f"{study}_T2W_intrastudy_to_FLAIR.txt")
        rows.append({
            "visit": study,
            "t2w_to_flair_vs_dataset_mm": round(mean_displacement_mm(read_affine(flair_to_t2w), dataset, flair_brain), 3),
            "identity_vs_dataset_mm": round(mean_displacement_mm(np.eye(4), dataset, flair_brain), 3),
            "brain_volume_ml": round(float((nb.load(anat / f"{stem}_space-T1w_desc-brain_mask.nii.gz").get_fdata() > 0).sum()
                                           * np.prod(nb.load(anat / f"{stem}_space-T1w_desc-brain_mask.nii.gz").header.get_zooms()[:3]) / 1000), 1),
        })
        _overlay(anat / f"{stem}_space-T1w_desc-preproc_T1w.nii.gz", anat / f"{stem}_space-T1w_desc-brain_mask.nii.gz",
                 RESULTS / f"preprocessing_open_ms_{study}_brain_mask.png")
    for row in rows:
        row["participant_wall_time_s"] = round(seconds, 1)
    return rows


def _brain_on_flair(anat: Path, stem: str, flair: Path, scratch: Path) -> nb.Nifti1Image:
    """The T1w brain mask resampled onto the raw FLAIR grid (nearest neighbour)."""
    from msynth.preprocessing.registration import apply_transform

    inverse = invert(anat / f"{stem}_from-FLAIR_to-T1w_mode-image_xfm.mat", out_xfm=scratch / "t1w_from_flair.mat")
    return nb.load(apply_transform(anat / f"{stem}_space-T1w_desc-brain_mask.nii.gz", flair, inverse,
                                   newpath=scratch, interpolation="nearestNeighbor", suffix="on_flair"))


def _overlay(image: Path, mask: Path, png: Path) -> None:
    from nilearn import plotting

    display = plotting.plot_roi(str(mask), bg_img=str(image), alpha=0.35, display_mode="ortho", cmap="autumn",
                                title=png.stem)
    display.savefig(str(png), dpi=90)
    display.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxel-size", type=float, default=1.0)
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/msynth-bench"))
    parser.add_argument("--skip-real", action="store_true", help="skip the open_ms_data part")
    args = parser.parse_args(argv)
    args.scratch.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    os.chdir(args.scratch)  # Nipype's resource monitor writes its .proc-* logs into the working directory
    tag = f"{args.voxel_size:g}mm"

    start = time.perf_counter()
    cohort = generate_cohort(args.scratch / "phantom", n_controls=0, n_patients=1, voxel_size=args.voxel_size,
                             seed=11, overwrite=True)
    generation_s = time.perf_counter() - start
    out, work = args.scratch / "phantom_out", args.scratch / "phantom_work"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    wall = run_msynth(cohort.bids_dir, out, work, ["--session-label", "01"])
    metrics = phantom_metrics(cohort, out, "MS01", "01")
    nodes = node_table(work)
    nodes.to_csv(RESULTS / f"preprocessing_{tag}_nodes.tsv", sep="\t", index=False, na_rep="n/a")
    real = [] if args.skip_real or not OPEN_MS.is_dir() else real_data(args.scratch)

    lines = [
        f"# Preprocessing benchmark, phantom at {tag}",
        "",
        f"Command: `.venv/bin/python benchmarks/preprocessing.py --voxel-size {args.voxel_size:g}"
        f"{' --skip-real' if args.skip_real else ''}`",
        f"Machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} cores; `--nprocs 1`.",
        "",
        f"Phantom generation (1 patient, 2 sessions): {generation_s:.0f} s; participant level, one session: {wall:.0f} s.",
        "",
        "| metric | value |",
        "| --- | --- |",
        *[f"| {key} | {value} |" for key, value in metrics.items()],
        "",
        "Slowest nodes (all in `preprocessing_" + tag + "_nodes.tsv`):",
        "",
        "```",
        nodes.head(12).to_string(index=False),
        "```",
    ]
    if real:
        lines += ["", "## Real scans: open_ms_data longitudinal patient01 (Lesjak et al. 2016, CC-BY)", "",
                  "```", pd.DataFrame(real).to_string(index=False), "```",
                  "", "Brain-mask overlays: `preprocessing_open_ms_study1_brain_mask.png`, `…study2…`."]
    report = RESULTS / f"preprocessing_{tag}.md"
    report.write_text("\n".join(lines) + "\n")
    print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
