"""Figure of one phantom session for ``docs/phantom.md``: every acquisition and the main truth maps on the T1w grid.

Run (the docs figure: one patient at the papers' resolution, about 5 minutes)::

    .venv/bin/msynth-phantom /tmp/phantom_fig --n-controls 0 --n-patients 1 --voxel-size 1 --seed 1 --nprocs 1
    .venv/bin/python benchmarks/phantom_figure.py /tmp/phantom_fig MS01 01 docs/figures/phantom_sub-MS01_ses-01.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import ants
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend first)

#: (title, datatype, BIDS name after the session, transform key or None for the T1w itself, 4-D reduction).
PANELS = [
    ("T1w (SPGR)", "anat", "T1w", None),
    ("T2w (SE)", "anat", "T2w", "T2w"),
    ("PDw (SE)", "anat", "PDw", "PDw"),
    ("FLAIR", "anat", "FLAIR", "FLAIR"),
    ("T1 spin echo", "anat", "acq-SE_T1w", "T1SE"),
    ("DIR", "anat", "acq-DIR_T2w", "DIR"),
    ("MTR (%)", "anat", "MTRmap", "MTR"),
    ("DWI b = 0", "dwi", "dwi", "DWI"),
    ("DWI b = 1000", "dwi", "dwi", "DWI"),
    ("PET 0-3 min", "pet", "trc-PIB_pet", "PET"),
    ("PET 50-90 min", "pet", "trc-PIB_pet", "PET"),
]
TRUTH = [("true DVR", "pet", "trc-PIB_space-T1w_meas-DVR_mimap"),
         ("true FA", "dwi", "space-T1w_model-DTI_param-FA_dwimap"),
         ("true RD", "dwi", "space-T1w_model-DTI_param-RD_dwimap")]


def _volume(path: Path, title: str) -> ants.ANTsImage:
    """A 3-D image: the image itself, or the frames/volumes the panel shows, averaged."""
    img = ants.image_read(str(path))
    if img.dimension == 3:
        return img
    data = img.numpy()
    pick = {"DWI b = 0": data[..., :1], "DWI b = 1000": data[..., 1:], "PET 0-3 min": data[..., :6],
            "PET 50-90 min": data[..., -8:]}[title]
    return ants.from_numpy(pick.mean(axis=-1).astype(np.float32), origin=img.origin[:3], spacing=img.spacing[:3],
                           direction=img.direction[:3, :3])


def main() -> None:
    """Resample every panel to the session's T1w grid and draw one axial slice through the most lesion."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("subject")
    parser.add_argument("session")
    parser.add_argument("output", type=Path)
    args = parser.parse_args()
    b = f"sub-{args.subject}_ses-{args.session}"
    raw = args.dataset / f"sub-{args.subject}" / f"ses-{args.session}"
    truth = args.dataset.parent / f"{args.dataset.name}-truth" / f"sub-{args.subject}" / f"ses-{args.session}"
    t1w = ants.image_read(str(raw / "anat" / f"{b}_T1w.nii.gz"))
    images = []
    for title, datatype, name, key in PANELS:
        img = _volume(raw / datatype / f"{b}_{name}.nii.gz", title)
        if key is not None:
            xfm = truth / datatype / f"{b}_from-{key}_to-T1w_mode-image_xfm.mat"
            img = ants.apply_transforms(fixed=t1w, moving=img, transformlist=[str(xfm)])
        images.append((title, img.numpy()))
    for title, datatype, name in TRUTH:
        images.append((title, ants.image_read(str(truth / datatype / f"{b}_{name}.nii.gz")).numpy()))
    lesion = ants.image_read(str(truth / "anat" / f"{b}_space-T1w_label-lesion_mask.nii.gz")).numpy() > 0
    demyelinated = ants.image_read(str(truth / "anat" / f"{b}_space-T1w_desc-demyelinated_mask.nii.gz")).numpy() > 0
    z = int(np.argmax(lesion.sum(axis=(0, 1))))
    fig, axes = plt.subplots(2, 8, figsize=(24, 7), facecolor="black")
    for ax, (title, data) in zip(axes.ravel(), images):
        section = np.rot90(data[:, :, z])
        ax.imshow(section, cmap="gray", vmin=0, vmax=np.percentile(section, 99.5))
        ax.set_title(title, color="white")
    ax = axes.ravel()[len(images)]
    ax.imshow(np.rot90(images[3][1][:, :, z]), cmap="gray", vmin=0, vmax=np.percentile(images[3][1][:, :, z], 99.5))
    overlay = np.zeros((*lesion.shape[:2], 4))
    overlay[lesion[:, :, z]] = (1.0, 0.8, 0.0, 0.7)
    overlay[demyelinated[:, :, z]] = (1.0, 0.0, 0.0, 0.9)
    ax.imshow(np.rot90(overlay))
    ax.set_title("lesions (yellow), demyelinated (red)", color="white")
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(f"msynth-phantom {b}: acquisitions and truth on the T1w grid (axial slice {z})", color="white")
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=60, facecolor="black")


if __name__ == "__main__":
    main()
