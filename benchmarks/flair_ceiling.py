"""How high can any FLAIR synthesis score against an acquired phantom FLAIR? (issue 6's SSIM target)

The phantom's FLAIR is a 3-D acquisition (1 mm isotropic at ``--voxel-size 1``) with Rician noise (SNR 20). It used
to be paper 001's 2-D acquisition (0.9 × 0.9 × 3 mm, so 12 mm slices at 4 mm), whose voxels, brought onto the T1w
grid, mix the anatomy of a whole slab that starts where nothing in the other images tells; ``--flair-2d`` brings
that geometry back for the duration of the run. Two references bound what a synthetic FLAIR can reach inside the
brain, each scored as ``tests/test_shipped_models.py`` scores the shipped model (same fresh patient, seed 9001; image
moved with the true transform, N4 inside the true brain mask; SSIM after matching brain mean and SD), on two grids:
the T1w grid (``space-T1w``, where the participant level writes the synthetic FLAIR) and the model's grid (the
isotropic ``--voxel-size`` grid on the T1w field of view, where the synthesis node predicts and the test scores):

1. the **noise-free** FLAIR of the same acquisition: the ceiling set by the noise alone;
2. a noise-free FLAIR whose voxel grid is **shifted** along its third axis (the slice axis of the 2-D FLAIR) by a
   fraction of a voxel: a perfect predictor of the anatomy that does not know where the FLAIR's voxels sit.

The phantom has no switch for either, so this script swaps the FLAIR protocol's SNR and wraps the session
placement for the duration of one cohort generation (the same seed draws the same anatomy, pose and bias).

With ``--derivatives`` (participant-level outputs of a training cohort, e.g. the phantom patients of
``benchmarks/train_shipped_models.py --stage phantom``), it also trains FCN variants (``--variants
FEATURESxDEPTHxPATCHES``: filters, layers, patches per session and epoch; Adam 1e-3, 32³ patches, <= 30 epochs,
early stopping on 2 of the subjects) and scores them on the same fresh 4 mm session: does capacity or training move
the synthetic FLAIR towards the ceiling?

Run (about 1 minute per voxel size and shift; 2–10 minutes per variant on 2 CPU cores)::

    .venv/bin/python benchmarks/flair_ceiling.py --voxel-size 4 2 --shift 0.125 0.25 0.375 0.5 \
        [--flair-2d] [--derivatives OUTPUT_DIR --variants 32x3x4 32x3x16 64x3x8 32x5x8]

Results: ``benchmarks/results/flair_ceiling.md`` (the tables are printed; the Markdown report is written from them).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from msynth.analysis.metrics import match_statistics, ssim
from msynth.phantom import cohort as cohort_module
from msynth.phantom import mri
from msynth.phantom.aligned import align_session
from msynth.phantom.cohort import generate_cohort
from msynth.phantom.geometry import Grid

SEED = 9001
#: Paper 001's 2-D FLAIR, the phantom's until it became 3-D: voxel and field of view (mm) at ``--voxel-size 1``.
FLAIR_2D_GRID_MM = ((0.9, 0.9, 3.0), (187.2, 230.4, 150.0))


@contextmanager
def former_2d_flair() -> Iterator[None]:
    """Within the block the phantom acquires its FLAIR with paper 001's 2-D geometry (the contrast stays)."""
    grid = cohort_module.GRIDS_MM["FLAIR"]
    cohort_module.GRIDS_MM["FLAIR"] = FLAIR_2D_GRID_MM
    try:
        yield
    finally:
        cohort_module.GRIDS_MM["FLAIR"] = grid


@contextmanager
def flair_acquisition(*, noise_free: bool, slab_shift: float) -> Iterator[None]:
    """Within the block, the phantom's FLAIR has no noise and/or a grid moved by ``slab_shift`` voxels (3rd axis)."""
    protocol, place_session = mri.PROTOCOLS["FLAIR"], cohort_module.place_session

    def shifted_placement(*args, **kwargs):
        placement = place_session(*args, **kwargs)
        grid = placement.grids["FLAIR"]
        affine = grid.affine.copy()
        affine[:3, 3] += slab_shift * affine[:3, 2]  # the third column is one voxel along the slice axis
        placement.grids["FLAIR"] = Grid(grid.shape, affine)
        return placement

    if noise_free:
        mri.PROTOCOLS["FLAIR"] = dataclasses.replace(protocol, snr=1e6)
    if slab_shift:
        cohort_module.place_session = shifted_placement
    try:
        yield
    finally:
        mri.PROTOCOLS["FLAIR"], cohort_module.place_session = protocol, place_session


def flair_on_grids(root: Path, voxel_size: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Generate the fresh patient; its FLAIR and brain mask on the T1w grid and on the model's grid.

    Both through the true transform and N4; the model's grid is the isotropic ``voxel_size`` grid on the T1w field
    of view that the synthesis node (and ``tests/test_shipped_models.py``) resamples to for a card of that voxel size.
    """
    cohort = generate_cohort(root / "bids", n_controls=0, n_patients=1, voxel_size=voxel_size, seed=SEED)
    grids = {}
    for grid, model_voxel in (("t1w_grid", None), ("model_grid", voxel_size)):
        session = align_session(cohort, "MS01", "01", ["FLAIR"], newpath=root / f"aligned-{grid}",
                                voxel_size=model_voxel)
        grids[grid] = (np.asarray(nib.load(session.images["FLAIR"]).dataobj, dtype=np.float64),
                       np.asarray(nib.load(session.brain_mask).dataobj) > 0)
    return grids


def ceilings(voxel_size: float, shifts: list[float], scratch: Path) -> pd.DataFrame:
    """SSIM against the acquired FLAIR of the noise-free FLAIR, unshifted and shifted, on both grids."""
    acquired = flair_on_grids(scratch / "acquired", voxel_size)
    rows = []
    for shift in [0.0, *shifts]:
        with flair_acquisition(noise_free=True, slab_shift=shift):
            clean = flair_on_grids(scratch / f"clean-{shift:g}", voxel_size)
        row = {"voxel_size_mm": voxel_size, "grid_shift_voxels": shift}
        for grid, (reference, brain) in acquired.items():
            reference = reference * brain
            row[f"ssim_{grid}"] = round(ssim(match_statistics(clean[grid][0], reference, brain), reference, brain), 3)
        rows.append(row)
        print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def fcn_variants(derivatives: Path, variants: list[str], scratch: Path) -> pd.DataFrame:
    """Train each FCN variant on ``derivatives`` and score it on the fresh 4 mm session (as the shipped model)."""
    from msynth.analysis.metrics import mse, ratio1
    from msynth.models.data import compute_normalisation, find_examples, load_volume
    from msynth.models.training import TrainingConfig, predict_session, split_validation, train_model

    inputs = ["T1w", "T2w", "PDw", "T1SE", "DIR"]
    cohort = generate_cohort(scratch / "fresh" / "bids", n_controls=0, n_patients=1, voxel_size=4.0, seed=SEED)
    session = align_session(cohort, "MS01", "01", [*inputs, "FLAIR"], newpath=scratch / "fresh" / "aligned")
    brain, lesion, nawm = session.truth_regions()
    acquired = session.acquired("FLAIR", brain)
    fresh = session.volume()

    volumes = [load_volume(example) for example in find_examples(derivatives, inputs, "FLAIR")]
    fit, validation = split_validation(volumes, seed=42)
    normalisation = compute_normalisation(fit, [*inputs, "FLAIR"])
    rows = []
    for variant in variants:
        features, depth, patches = (int(v) for v in variant.split("x"))
        # a variant's depth counts the output layer (msynth's name before paper 001's hidden layers L = depth - 1)
        config = TrainingConfig(arguments={"filters": features, "hidden_layers": depth - 1}, optimizer="adam", lr=1e-3,
                                max_epochs=30, patch_size=32, patches_per_session=patches)
        start = time.perf_counter()
        result = train_model(fit, validation, inputs=inputs, outputs=["FLAIR"], normalisation=normalisation,
                             config=config, out_dir=scratch / "variants" / variant, progress=False)
        seconds = time.perf_counter() - start
        predicted = predict_session(result.model, fresh, inputs=inputs, output="FLAIR", normalisation=normalisation,
                                    window=96, scope="image")
        rows.append({"variant": variant, "features": features, "depth": depth, "patches_per_session": patches,
                     "kept_epoch": result.best_epoch,
                     "best_validation_error": round(min(r.validation_error for r in result.history), 3),
                     "ssim": round(ssim(predicted, acquired, brain), 3), "mse": round(mse(predicted, acquired, brain)),
                     "ratio1": round(ratio1(predicted, lesion, nawm), 3),
                     "acquired_ratio1": round(ratio1(acquired, lesion, nawm), 3), "train_s": round(seconds)})
        print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--voxel-size", type=float, nargs="+", default=[4.0])
    parser.add_argument("--shift", type=float, nargs="+", default=[0.25, 0.5],
                        help="grid shifts along the FLAIR's third axis, in voxels (0 is always measured)")
    parser.add_argument("--flair-2d", action="store_true",
                        help="acquire the FLAIR with paper 001's 2-D geometry (the phantom's before it became 3-D)")
    parser.add_argument("--derivatives", type=Path, help="participant-level outputs to train FCN variants on")
    parser.add_argument("--variants", nargs="+", default=["32x3x4", "32x3x16", "64x3x8", "32x5x8"],
                        help="FEATURESxDEPTHxPATCHES of each FCN variant (with --derivatives)")
    parser.add_argument("--scratch", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, (former_2d_flair() if args.flair_2d else nullcontext()):
        scratch = args.scratch or Path(tmp)
        table = pd.concat([ceilings(v, args.shift, scratch / f"{v:g}mm") for v in args.voxel_size])
        print(table.to_string(index=False))
        if args.derivatives:
            print(fcn_variants(args.derivatives, args.variants, scratch / "fcn").to_string(index=False))


if __name__ == "__main__":
    main()
