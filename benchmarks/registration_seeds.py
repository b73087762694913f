"""Does an affine registration depend on the metric's sampling seed? (ANTs Mattes MI, regular sampling)

``register_to_reference`` samples a fraction of the fixed voxels (25 % by default) on a regular grid jittered by a
seed; with several ITK threads the sum also changes in its last digits from run to run, which acts like a new seed.
A registration that lands in another basin for some seeds is therefore a registration that fails at random. Two
cases, each run for seed 42 (the default) and seeds 1..``--seeds``:

1. ``template``: the pipeline's MNI152NLin2009aSym → T1w affine (template moving; the subject's N4-corrected T1w
   fixed, masked by its deepbet brain mask; the pipeline's pyramid for the T1w voxel size), on real raw T1w scans of
   ``../shared/data/open_ms_data`` (Lesjak et al. 2018, CC-BY; its one raw patient has two visits). Reported: the
   mean displacement over the brain mask between each seed's transform and seed 42's.
2. ``head-to-mni``: the reference of ``tests/test_preprocessing_brain.py::test_deepbet_on_real_head``, pydeface's
   whole mean head at 3 mm (moving) to nilearn's skull-stripped MNI152 template (fixed, brain-masked), at 25 % and at
   100 % sampling. Reported: the volume of the MNI brain mask brought onto the head (a plausible brain is 1.2–1.4 L).

Run (about 25 s per template registration at 1 mm and 5 s per head registration on 2 CPU cores; 24 minutes)::

    .venv/bin/python benchmarks/registration_seeds.py --seeds 25 --tsv benchmarks/results/registration_seeds.tsv

Results: ``benchmarks/results/registration_seeds.md`` and ``.tsv``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydeface
from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

from msynth.preprocessing.bias import n4_correct
from msynth.preprocessing.brain import extract_brain
from msynth.preprocessing.registration import (
    apply_transform,
    invert,
    mean_displacement_mm,
    pyramid_for,
    register_to_reference,
)
from msynth.preprocessing.resample import resample_to_grid, target_grid
from msynth.templates import write_template

OPEN_MS_RAW = Path(__file__).resolve().parents[2] / "shared" / "data" / "open_ms_data" / "longitudinal" / "raw"
PYDEFACE_HEAD = Path(pydeface.__file__).parent / "data" / "mean_reg2mean.nii.gz"
DEFAULT_SEED = 42


def raw_t1w(scan: str) -> Path:
    """``PATIENT/STUDY`` (e.g. ``patient01/study1``) → that raw T1w of open_ms_data, which must exist."""
    path = OPEN_MS_RAW / f"{scan}_T1W.nii.gz"
    if not path.is_file():
        raise SystemExit(f"--scans {scan}: {path} is absent (the real MS data ../shared/data/open_ms_data is needed)")
    return path


def template_rows(raw: Path, seeds: list[int], work: Path) -> list[dict]:
    """Template → T1w affine of one raw T1w per seed; displacement (mm) from the default seed's transform."""
    brain = extract_brain(raw, newpath=work, device="cpu")
    t1w = n4_correct(raw, newpath=work, mask=brain.mask).corrected
    pyramid = pyramid_for(min(nib.load(t1w).header.get_zooms()[:3]))
    template = write_template(work, 1)
    scan, reference, rows = f"{raw.parent.name}/{raw.name.split('_')[0]}", None, []
    for seed in [DEFAULT_SEED, *seeds]:
        xfm = register_to_reference(template, t1w, brain.mask, out_xfm=work / f"seed{seed}.mat", max_scale=None,
                                    random_seed=seed, **pyramid)
        reference = reference or xfm  # the default seed's, the first
        rows.append({"case": "template", "scan": scan, "sampling": 0.25, "seed": seed,
                     "value": round(mean_displacement_mm(reference, xfm, brain.mask), 3)})
    return rows


def head_to_mni_rows(seeds: list[int], samplings: tuple[float, ...], work: Path) -> list[dict]:
    """The deepbet test's reference: MNI brain mask volume (L) on pydeface's head, per sampling rate and seed."""
    template, brain = load_mni152_template(resolution=3), load_mni152_brain_mask(resolution=3)
    work.mkdir(parents=True, exist_ok=True)
    fixed, fixed_mask, moving = work / "mni.nii.gz", work / "mni_mask.nii.gz", work / "head3.nii.gz"
    nib.Nifti1Image(template.get_fdata(dtype=np.float32), template.affine).to_filename(fixed)
    nib.Nifti1Image((brain.get_fdata() > 0).astype(np.uint8), brain.affine).to_filename(fixed_mask)
    head = nib.load(PYDEFACE_HEAD)
    resample_to_grid(head, target_grid(head, 3.0)).to_filename(moving)
    voxel_ml = float(np.prod(head.header.get_zooms()[:3])) / 1000
    rows = []
    for sampling in samplings:
        for seed in [DEFAULT_SEED, *seeds]:
            stem = work / f"head_{sampling:g}_{seed}"
            head_to_mni = register_to_reference(moving, fixed, fixed_mask, out_xfm=f"{stem}.mat", max_scale=None,
                                                random_seed=seed, sampling_rate=sampling)
            mni_to_head = invert(head_to_mni, out_xfm=f"{stem}_inverse.mat")
            mapped = nib.load(apply_transform(fixed_mask, PYDEFACE_HEAD, mni_to_head, newpath=stem)).get_fdata()
            rows.append({"case": "head-to-mni", "scan": "pydeface", "sampling": sampling, "seed": seed,
                         "value": round((mapped > 0.5).sum() * voxel_ml / 1000, 3)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=12, help="seeds 1..N besides the default 42 (default 12)")
    parser.add_argument("--scans", nargs="*", default=["patient01/study1", "patient01/study2"],
                        help="open_ms_data longitudinal raw T1w scans, PATIENT/STUDY, for the template case "
                             "(default: both visits of patient01; none: skip the case)")
    parser.add_argument("--head-samplings", nargs="*", type=float, default=[0.25, 1.0],
                        help="sampling rates for the head-to-mni case (none: skip it)")
    parser.add_argument("--tsv", type=Path, default=None, help="also write the per-seed rows here")
    args = parser.parse_args(argv)
    seeds = list(range(1, args.seeds + 1))
    scans, rows = [raw_t1w(scan) for scan in args.scans], []
    with tempfile.TemporaryDirectory() as tmp:
        for number, raw in enumerate(scans):
            rows += template_rows(raw, seeds, Path(tmp) / f"scan{number}")
        if args.head_samplings:
            rows += head_to_mni_rows(seeds, tuple(args.head_samplings), Path(tmp) / "head")
    table = pd.DataFrame(rows)
    if args.tsv:
        table.to_csv(args.tsv, sep="\t", index=False)
    summary = table.groupby(["case", "scan", "sampling"])["value"].describe()[["count", "min", "50%", "max"]]
    print("template: mm from seed 42's transform; head-to-mni: MNI brain mask volume on the head (L)")
    print(summary.to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
