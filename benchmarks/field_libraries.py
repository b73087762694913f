"""msynth's hand-written grid resampling, derivative naming and patch sampling against the field's libraries.

Three comparisons (docs/design.md, "Field libraries and hand-written parts"; issue 19 item 4), one thread:

1. ``resampling``: :func:`msynth.preprocessing.resample.resample_to_grid` against ``nilearn.image.resample_img`` and
   ANTsPy's ``resample_image_to_target`` (linear), the 1 mm MNI152 template (plus 100, so that the field of view's
   border is not 0) onto the same field of view at 1.5 mm and onto an oblique 1.1 × 1.1 × 1.3 mm grid: best of 3
   wall times, voxels that differ, largest difference.
2. ``naming``: how many derivative names of a participant-level output folder pybids' ``build_path`` rebuilds with its
   bundled ``bids`` and ``derivatives`` path patterns (needs ``--derivatives``, e.g. the 4 mm phantom's outputs).
3. ``patches``: one epoch of 5 sessions × 8 random brain-centred 64³ patches of six 1 mm channels, z-scored:
   :mod:`msynth.models.training.patches` (memory-mapped volume, only the patch read) against MONAI's
   ``RandCropByPosNegLabeld`` (pos = 1, neg = 0: centres on brain voxels; whole volumes as tensors).

Run (about a minute)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/field_libraries.py --derivatives OUTPUT_DIR
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
from nilearn.datasets import load_mni152_template
from scipy.spatial.transform import Rotation

from msynth.preprocessing.resample import Grid, resample_to_grid, target_grid


def _best_of(run: Callable[[], np.ndarray], repeats: int = 3) -> tuple[np.ndarray, float]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - start)
    return out, min(times)


def resampling(scratch: Path) -> None:
    import ants
    from nilearn.image import resample_img

    template = load_mni152_template(resolution=1)
    img = nib.Nifti1Image(100 + 1000 * np.asarray(template.dataobj, dtype=np.float32), template.affine)
    nib.save(img, scratch / "mni1.nii.gz")
    oblique = img.affine.copy()
    oblique[:3, :3] = Rotation.from_euler("xz", (10, -15), degrees=True).as_matrix() @ np.diag([1.1, 1.1, 1.3])
    oblique[:3, 3] += [3.3, -2.1, 1.7]
    grids = {"1.5 mm, same field of view": target_grid(img, 1.5), "oblique 1.1x1.1x1.3 mm": Grid(img.shape, oblique)}
    for label, grid in grids.items():
        nib.save(nib.Nifti1Image(np.zeros(grid.shape, np.float32), grid.affine), scratch / "grid.nii.gz")
        ours, t_ours = _best_of(lambda: np.asarray(resample_to_grid(img, grid).dataobj))
        others = {
            "nilearn": _best_of(lambda: resample_img(img, target_affine=grid.affine, target_shape=grid.shape,
                                                     interpolation="linear", force_resample=True,
                                                     copy_header=True).get_fdata(dtype=np.float32)),
            "ANTsPy": _best_of(lambda: ants.resample_image_to_target(
                ants.image_read(str(scratch / "mni1.nii.gz")), ants.image_read(str(scratch / "grid.nii.gz")),
                interp_type="linear").numpy()),
        }
        for name, (out, seconds) in others.items():
            differ, both = ours != out, (ours != 0) & (out != 0)
            print(f"resampling {label}: ours {t_ours:.2f} s, {name} {seconds:.2f} s; {differ.sum()} of {differ.size} "
                  f"voxels differ, max |difference| {np.abs(ours - out).max():.3g}, where both have values "
                  f"{np.abs(ours - out)[both].max():.3g} (mean value {ours.mean():.0f})")


def naming(derivatives: Path) -> None:
    from bids.layout import parse_file_entities
    from bids.layout.models import Config
    from bids.layout.writing import build_path

    patterns = [p for name in ("bids", "derivatives") for p in (Config.load(name).default_path_patterns or [])]
    names = sorted(p.relative_to(derivatives) for p in derivatives.glob("sub-*/**/*")
                   if p.is_file() and "log" not in p.parts and "figures" not in p.parts)
    rebuilt = sum(build_path(parse_file_entities(str(name)), patterns, strict=False) == str(name) for name in names)
    print(f"naming: pybids' bundled patterns rebuild {rebuilt} of {len(names)} derivative names")


def patches(scratch: Path) -> None:
    import torch
    from monai.transforms import RandCropByPosNegLabeld

    from msynth.models.card import Normalisation
    from msynth.models.data import Volume
    from msynth.models.training.patches import extract_patch, sample_patch_corners

    torch.set_num_threads(1)
    t1 = np.asarray(load_mni152_template(resolution=1).dataobj, dtype=np.float32)
    mask = t1 > 0.2
    channels = ("T1w", "T2w", "PDw", "T1SE", "DIR", "FLAIR")
    data = np.lib.format.open_memmap(scratch / "volume.npy", mode="w+", dtype=np.float32,
                                     shape=(len(channels), *t1.shape))
    for index in range(len(channels)):
        data[index] = t1 * (index + 1)
    data.flush()
    data = np.load(scratch / "volume.npy", mmap_mode="r")
    stats = {c: Normalisation(mean=1.0, std=1.0) for c in channels}
    volumes = [Volume(subject=f"s{i}", session=None, channels=channels, data=data, mask=mask, affine=np.eye(4))
               for i in range(5)]
    size, per_session = (64, 64, 64), 8

    def ours() -> None:
        rng = np.random.default_rng(0)
        for volume in volumes:
            for corner in sample_patch_corners(volume.mask, per_session, size, rng):
                extract_patch(volume, corner, size, channels[:5], channels[5:], stats)

    crop = RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=size, pos=1, neg=0,
                                  num_samples=per_session)
    crop.set_random_state(0)

    def monai() -> None:
        for volume in volumes:
            for patch in crop({"image": torch.from_numpy(np.asarray(volume.data)),
                               "label": torch.from_numpy(volume.mask[None])}):
                inside = patch["label"][0].bool()
                torch.where(inside, (patch["image"][:5] - 1.0) / 1.0, 0.0)

    for name, run in (("msynth", ours), ("MONAI RandCropByPosNegLabeld", monai)):
        run()  # warm the page cache
        _, seconds = _best_of(lambda: run() or np.zeros(0))
        print(f"patches: {name} {seconds:.2f} s per epoch of {len(volumes) * per_session} patches")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--derivatives", type=Path, help="a participant-level output folder, for the naming test")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as scratch:
        resampling(Path(scratch))
        if args.derivatives:
            naming(args.derivatives)
        patches(Path(scratch))


if __name__ == "__main__":
    main()
