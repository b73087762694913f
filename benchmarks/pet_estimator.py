"""Benchmark of the Logan DVR estimators on a phantom session: noise bias and partial volume, separated.

One msynth-phantom patient (seed 11) is generated twice at ``--voxel-size``: as written by ``msynth-phantom`` and
with the PET noise switched off (everything else identical). On the first session, DVR is fitted on the native PET
grid with the phantom's TRUE cerebellar grey-matter reference region and brought onto the T1w grid with the TRUE
transform, so the only differences from the noise-free truth are the estimator, the noise, and the scanner's
partial-volume blur. Reported: relative error of the mean DVR in white matter (WM probability > 0.9, lesions
excluded), in the same white matter eroded by 3 voxels, and in grey matter (GM probability > 0.9).

Run (about 15 minutes on a 2-core machine at 1 mm)::

    .venv/bin/python benchmarks/pet_estimator.py --voxel-size 1 --scratch /tmp/msynth-pet-estimator

Result: ``benchmarks/results/pet_estimator_<voxel>mm.md``.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path
from unittest import mock

import nibabel as nb
import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from msynth.phantom import pet as phantom_pet
from msynth.phantom.cohort import generate_cohort
from msynth.preprocessing.pet import frame_times, logan_reference_dvr
from msynth.preprocessing.registration import apply_transform, invert

STEM = "sub-MS01_ses-01"
SESSION = Path("sub-MS01") / "ses-01"
RESULTS = Path(__file__).resolve().parent / "results"


def _load(path: Path) -> np.ndarray:
    return np.asanyarray(nb.load(path).dataobj)


def estimator_errors(bids_dir: Path, truth_dir: Path, work: Path) -> dict[str, float]:
    """Relative error of the mean DVR per region for each estimator, on one generated session."""
    work.mkdir(parents=True, exist_ok=True)
    pet_file = bids_dir / SESSION / "pet" / f"{STEM}_trc-PIB_pet.nii.gz"
    pet_img = nb.load(pet_file)
    data = np.asanyarray(pet_img.dataobj).astype(np.float64)
    t_mid, _ = frame_times(pet_file.with_name(f"{STEM}_trc-PIB_pet.json"), data.shape[3])
    pet_to_t1w = truth_dir / SESSION / "pet" / f"{STEM}_from-PET_to-T1w_mode-image_xfm.mat"
    t1w_to_pet = invert(pet_to_t1w, out_xfm=work / "t1w_to_pet.mat")
    frame = work / "frame.nii.gz"
    nb.Nifti1Image(data[..., -1].astype(np.float32), pet_img.affine).to_filename(frame)
    reference_t1w = truth_dir / SESSION / "pet" / f"{STEM}_trc-PIB_space-T1w_desc-reference_mask.nii.gz"
    reference = _load(apply_transform(reference_t1w, frame, t1w_to_pet, newpath=work)) > 0.5
    brain = _load(truth_dir / SESSION / "pet" / f"{STEM}_trc-PIB_space-PET_desc-brain_mask.nii.gz") > 0

    anat = truth_dir / SESSION / "anat"
    wm = (_load(anat / f"{STEM}_space-T1w_label-WM_probseg.nii.gz") > 0.9)
    wm &= _load(anat / f"{STEM}_space-T1w_label-lesion_mask.nii.gz") == 0
    regions = {"WM": wm, "WM eroded 3 voxels": ndi.binary_erosion(wm, iterations=3),
               "GM": _load(anat / f"{STEM}_space-T1w_label-GM_probseg.nii.gz") > 0.9}
    truth = _load(truth_dir / SESSION / "pet" / f"{STEM}_trc-PIB_space-T1w_meas-DVR_mimap.nii.gz")
    t1w_grid = anat / f"{STEM}_space-T1w_desc-brain_mask.nii.gz"

    errors = {}
    for estimator in ("graphical", "multilinear"):
        dvr = np.zeros(brain.shape, np.float32)
        dvr[brain] = np.nan_to_num(logan_reference_dvr(data[brain], data[reference].mean(axis=0), t_mid,
                                                       estimator=estimator))
        native = work / f"dvr_{estimator}.nii.gz"
        nb.Nifti1Image(dvr, pet_img.affine).to_filename(native)
        in_t1w = _load(apply_transform(native, t1w_grid, pet_to_t1w, newpath=work / estimator))
        for region, mask in regions.items():
            errors[f"{estimator}, {region}"] = float(in_t1w[mask].mean() / truth[mask].mean() - 1)
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voxel-size", type=float, default=1.0)
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/msynth-pet-estimator"))
    args = parser.parse_args(argv)
    rows = []
    for noise in ("with noise", "noise-free"):
        out = args.scratch / noise.replace(" ", "_") / "bids"
        if noise == "noise-free":
            with mock.patch.object(phantom_pet, "add_noise", lambda frames, *_args, **_kwargs: frames):
                cohort = generate_cohort(out, n_controls=0, n_patients=1, voxel_size=args.voxel_size, seed=11,
                                         overwrite=True, n_procs=1)
        else:
            cohort = generate_cohort(out, n_controls=0, n_patients=1, voxel_size=args.voxel_size, seed=11,
                                     overwrite=True, n_procs=1)
        for name, error in estimator_errors(cohort.bids_dir, cohort.truth_dir, out.parent / "work").items():
            estimator, region = name.split(", ")
            rows.append({"PET": noise, "estimator": estimator, "region": region, "relative_error": round(error, 4)})
    table = pd.DataFrame(rows).pivot_table(index=["PET", "estimator"], columns="region", values="relative_error")
    RESULTS.mkdir(exist_ok=True)
    report = RESULTS / f"pet_estimator_{args.voxel_size:g}mm.md"
    report.write_text(
        f"# Logan DVR estimators on a phantom session at {args.voxel_size:g} mm\n\n"
        f"Command: `.venv/bin/python benchmarks/pet_estimator.py --voxel-size {args.voxel_size:g}`\n"
        f"Machine: {platform.machine()}, CPython {platform.python_version()}.\n\n"
        "Relative error of the mean DVR against the noise-free truth (true reference region, true transform):\n\n"
        f"```\n{table.to_string()}\n```\n"
    )
    print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
