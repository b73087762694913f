"""Figures of the participant report, drawn from images already on the session's T1w grid.

Contours and before/after flickers are SVGs in the NiPreps look (fMRIPrep, sMRIPrep, MRIQC): black mosaics of seven
cuts along three axes, and for a co-registration two layers stacked by nireports'
:func:`~nireports.reportlets.utils.compose_view` machinery, the top one ("after") fading in and out of the bottom one
("before") while the mouse is over it. The panels themselves are not drawn with nireports' ``plot_registration`` /
nilearn's ``plot_anat``: measured here on the 4 mm phantom, that took 7 s per view at its 300 dpi and 0.5-1 s per view
at 100 dpi (a session has 54), against about 0.05 s with the cuts placed side by side in one array on one axes.
Maps (FA, DVR, differences, saliency) are PNG mosaics. Every figure is drawn on a :class:`matplotlib.figure.Figure`
with an explicit canvas (no pyplot state).

SVGs are deterministic (:func:`stable_svg`, ``svg.hashsalt``, no date), so that rebuilding a report from the same
derivatives writes the same files. Nothing here imports torch or templateflow (nireports imports templateflow only
for surface plots, never used here).
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib as mpl
import nibabel as nb
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["axial_slices", "comparison_png", "contours_svg", "flicker_svg", "header_resample", "mosaic_png",
           "overlay_png", "stable_svg", "view_figure"]

#: Resolution of the images embedded in the SVG panels.
SVG_DPI = 100
#: Cuts per view in the SVG mosaics, as in fMRIPrep's reports.
N_CUTS = 7
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_DATE = re.compile(r"<dc:date>[^<]*</dc:date>")


def stable_svg(svg: str, salt: str) -> str:
    """``svg`` with each random UUID replaced by a hash of ``salt`` and its rank, and the creation date removed."""
    found: dict[str, str] = {}

    def replace(match: re.Match[str]) -> str:
        key = match.group(0)
        if key not in found:
            digest = hashlib.sha1(f"{salt}:{len(found)}".encode()).hexdigest()
            found[key] = f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"
        return found[key]

    return _DATE.sub("", _UUID.sub(replace, svg))


def header_resample(image: nb.Nifti1Image, reference: nb.Nifti1Image) -> nb.Nifti1Image:
    """``image`` (its first volume if 4-D) resampled linearly onto ``reference``'s grid through the headers only.

    This is the "before" of a co-registration: where the scanner coordinates alone put the image on the T1w.
    """
    from nibabel.processing import resample_from_to

    data = np.asarray(image.dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = data[..., 0]
    first = nb.Nifti1Image(data, image.affine)
    return resample_from_to(first, (reference.shape[:3], reference.affine), order=1, cval=0.0)


def _views(image: nb.Nifti1Image, *, cuts: tuple[tuple[slice, ...], dict[str, list[int]]], name: str,
           label: str | None,
           contours: Sequence[tuple[nb.Nifti1Image, str]], limits: tuple[float, float] | None) -> list:
    """One SVG per view (axial, coronal, sagittal) of ``image`` with ``contours`` (image, colour) at level 0.5.

    nireports' look (``plot_registration``: black mosaics of :data:`N_CUTS` cuts, a title on the first) without its
    cost: nilearn's ``plot_anat`` builds a figure with an axes per cut and took 0.5-1 s per view at 4 mm here (54
    views a session), whereas the cuts are placed side by side in one array and drawn on a single axes.
    """
    from nireports._vendored.svgutils.transform import fromstring

    box, cuts = cuts
    data = _canonical(image)[box]
    outlines = [(_canonical(contour)[box], colour) for contour, colour in contours]
    zooms = nb.as_closest_canonical(image).header.get_zooms()[:3]
    vmin, vmax = limits if limits is not None else _robust_limits(data)
    views = []
    for index, mode in enumerate(("z", "x", "y")):
        figure = view_figure(data, outlines, axis={"x": 0, "y": 1, "z": 2}[mode], indices=cuts[mode], zooms=zooms,
                             limits=(vmin, vmax), label=label if index == 0 else None)
        views.append(fromstring(_svg_text(figure, f"{name}-{mode}")))
    return views


def view_figure(data: np.ndarray, outlines: Sequence[tuple[np.ndarray, str]], *, axis: int, indices: Sequence[int],
                zooms: Sequence[float], limits: tuple[float, float], label: str | None = None,
                width: float = 11.0) -> Figure:
    """One row of a mosaic: the slices ``indices`` along ``axis`` of a RAS+ array in grey, side by side on one
    axes, each outline (array, colour) drawn at level 0.5, the voxel aspect kept (``zooms`` in mm).

    The figure is as wide as ``width`` inches and as high as the row's aspect needs, black, with no margin.
    """
    row = _row(data, axis, indices)
    # pixel height / width of the shown plane: (y, x) axial, (z, x) coronal, (z, y) sagittal
    plane = [zooms[a] for a in range(3) if a != axis]
    aspect = plane[1] / plane[0]
    figure = Figure(figsize=(width, width * row.shape[0] * aspect / row.shape[1]), facecolor="black")
    axes = figure.add_axes((0, 0, 1, 1))
    axes.imshow(row, cmap="gray", vmin=limits[0], vmax=limits[1], aspect=aspect, interpolation="nearest")
    for outline, colour in outlines:
        mask_row = _row(outline, axis, indices)
        if mask_row.min() < 0.5 < mask_row.max():
            # no ``origin``: row i at y = i, exactly where imshow (origin 'upper') puts it; origin='upper' flips it
            axes.contour(mask_row, levels=[0.5], colors=[colour], linewidths=0.8)
    axes.set_axis_off()
    if label:
        axes.text(0.005, 0.97, label, color="white", fontsize=11, va="top", transform=axes.transAxes,
                  bbox={"facecolor": "black", "alpha": 0.6, "edgecolor": "none"})
    return figure


def _row(data: np.ndarray, axis: int, indices: Sequence[int]) -> np.ndarray:
    """The slices ``indices`` along ``axis`` of a RAS+ array, side by side, each superior (or anterior) up and the
    subject's left on the viewer's left (the neurological convention of nilearn's mosaics)."""
    gap = np.zeros((data.shape[2] if axis != 2 else data.shape[1], 1), dtype=np.float32)
    pieces = []
    for i in indices:
        pieces += [np.rot90(np.take(data, i, axis=axis)).astype(np.float32), gap]
    return np.concatenate(pieces[:-1], axis=1)


def _svg_text(figure: Figure, name: str) -> str:
    """A figure as SVG text without width and height (it scales to its container), its ids salted by ``name``."""
    buffer = io.StringIO()
    with mpl.rc_context({"svg.hashsalt": name}):
        figure.savefig(buffer, format="svg", dpi=SVG_DPI, metadata={"Date": None}, facecolor="black")
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg "):]
    svg = re.sub(r' (height|width)="[0-9.]+[a-z]*"', "", svg, count=2)
    return svg.replace('id="figure_1"', f'id="{name}"', 1)


def _robust_limits(data: np.ndarray) -> tuple[float, float]:
    """Display limits: the 2nd and 98th percentiles of the non-zero voxels (0 and 1 when there is none)."""
    values = data[np.isfinite(data) & (data != 0)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, [2, 98])
    return float(low), float(high if high > low else low + 1)


def _compose(background: list, foreground: list, salt: str) -> str:
    """Stack the views, with ``foreground`` as a second layer that fades in and out on hover (nireports)."""
    from tempfile import TemporaryDirectory

    from nireports.reportlets.utils import compose_view

    with TemporaryDirectory() as folder:
        svg = Path(compose_view(background, foreground, out_file=Path(folder) / "view.svg")).read_text()
    return stable_svg(svg, salt)


def _cuts(mask: nb.Nifti1Image) -> tuple[tuple[slice, ...], dict[str, list[int]]]:
    """The box of the RAS+ grid around the mask (with a margin of 5 % of each side, at least 2 voxels), and
    :data:`N_CUTS` voxel indices per axis inside that box, spread over the mask's extent.

    Cropping to the mask keeps the brain large in each cut whatever the field of view (nilearn's mosaics do not).
    """
    brain = _canonical(mask) > 0
    if not brain.any():
        brain = np.ones_like(brain)
    box = []
    for axis in range(3):
        occupied = np.flatnonzero(np.moveaxis(brain, axis, 0).reshape(brain.shape[axis], -1).any(axis=1))
        margin = max(2, int(0.05 * brain.shape[axis]))
        box.append(slice(max(0, occupied[0] - margin), min(brain.shape[axis], occupied[-1] + 1 + margin)))
    cropped = brain[tuple(box)]
    cuts = {mode: axial_slices(np.moveaxis(cropped, axis, -1), N_CUTS) for mode, axis in (("x", 0), ("y", 1), ("z", 2))}
    return tuple(box), cuts


def contours_svg(image: nb.Nifti1Image, contours: Sequence[tuple[nb.Nifti1Image, str]], *, bbox: nb.Nifti1Image,
                 name: str, label: str | None = None) -> str:
    """An SVG mosaic (axial, coronal, sagittal) of ``image`` with each (mask or probability, colour) as its 0.5 contour.

    The cuts span ``bbox`` (the brain mask), as in sMRIPrep's brain-mask and segmentation reportlets.
    """
    views = _views(image, cuts=_cuts(bbox), name=name, label=label, contours=contours, limits=None)
    return _compose(views, [], name)


def flicker_svg(before: nb.Nifti1Image, after: nb.Nifti1Image, *, contour: nb.Nifti1Image, bbox: nb.Nifti1Image,
                name: str, labels: tuple[str, str] = ("before", "after")) -> str:
    """A two-layer SVG (fMRIPrep's registration reportlet): ``after`` over ``before``, fading while hovered.

    Both are on the T1w grid and share their cuts and the ``contour`` drawn from the T1w (white matter), so that
    misalignment shows as the image moving against a fixed line; each has its own display limits.
    """
    cuts = _cuts(bbox)
    background = _views(before, cuts=cuts, name=f"{name}-before", label=labels[0], contours=[(contour, "r")],
                        limits=None)
    foreground = _views(after, cuts=cuts, name=f"{name}-after", label=labels[1], contours=[(contour, "r")],
                        limits=None)
    return _compose(background, foreground, name)


def axial_slices(mask: np.ndarray, n_slices: int) -> list[int]:
    """``n_slices`` axial (last-axis) indices spread evenly over the slices where ``mask`` has voxels.

    >>> axial_slices(np.pad(np.ones((2, 2, 5), bool), ((0, 0), (0, 0), (5, 0))), 3)
    [6, 7, 8]
    """
    if n_slices < 1:
        raise ValueError(f"n_slices must be at least 1, got {n_slices}")
    occupied = np.flatnonzero(np.asarray(mask).reshape(-1, mask.shape[-1]).any(axis=0))
    if occupied.size == 0:
        occupied = np.arange(mask.shape[-1])
    positions = np.linspace(occupied[0], occupied[-1], n_slices + 2)[1:-1]
    return sorted({int(round(p)) for p in positions})


def _png(figure: Figure, path: Path, dpi: int = 90) -> Path:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    path.write_bytes(buffer.getvalue())
    return path


def _canonical(image: nb.Nifti1Image) -> np.ndarray:
    """The image's data in RAS+ voxel order, so that every map is shown the same way whatever its header."""
    return np.asarray(nb.as_closest_canonical(image).dataobj, dtype=np.float32)


def _axial(axes, data: np.ndarray, index: int, **kwargs):
    """Draw axial slice ``index`` of a RAS+ array, anterior up and the subject's left on the viewer's left (the
    neurological convention of nilearn's mosaics, so the PNGs read like the SVGs)."""
    return axes.imshow(np.rot90(data[:, :, index]), interpolation="nearest", **kwargs)


def mosaic_png(image: nb.Nifti1Image, path: Path, *, mask: nb.Nifti1Image, title: str, cmap: str = "viridis",
               limits: tuple[float, float] | None = None, colorbar_label: str = "", n_slices: int = 7) -> Path:
    """A row of axial slices of a map (FA, DVR) through ``mask``, with a colour bar, written as PNG at ``path``."""
    data, brain = _canonical(image), _canonical(mask) > 0
    slices = axial_slices(brain, n_slices)
    vmin, vmax = limits if limits is not None else _robust_limits(np.where(brain, data, 0))
    figure = Figure(figsize=(1.6 * len(slices) + 1.0, 2.2), layout="constrained", facecolor="black")
    axes = figure.subplots(1, len(slices), squeeze=False)[0]
    shown = None
    for ax, index in zip(axes, slices):
        shown = _axial(ax, np.where(brain, data, np.nan), index, cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_facecolor("black")
        ax.set_axis_off()
        ax.set_title(f"z = {index}", color="white", fontsize=8)
    colorbar = figure.colorbar(shown, ax=list(axes), shrink=0.8, pad=0.01)
    colorbar.set_label(colorbar_label, color="white")
    colorbar.ax.tick_params(colors="white", labelsize=7)
    figure.suptitle(title, color="white", fontsize=10)
    return _png(figure, path)


def comparison_png(acquired: nb.Nifti1Image, synthetic: nb.Nifti1Image, path: Path, *, mask: nb.Nifti1Image,
                   name: str, standardise: bool = False, n_slices: int = 6) -> Path:
    """Acquired, synthetic and synthetic − acquired in three rows of axial slices through ``mask``, as PNG.

    Acquired and synthetic share their display limits (those of the acquired image), the difference is on a
    diverging scale symmetric about 0 (its 98th percentile of absolute values). ``standardise`` z-scores both images
    inside the mask first, for images without units (FLAIR), as the synthesis metrics do.
    """
    brain = _canonical(mask) > 0
    truth, model = np.where(brain, _canonical(acquired), np.nan), np.where(brain, _canonical(synthetic), np.nan)
    if standardise:
        truth, model = (_zscore(image, brain) for image in (truth, model))
    difference = model - truth
    slices = axial_slices(brain, n_slices)
    vmin, vmax = _robust_limits(np.nan_to_num(truth))
    spread = float(np.nanpercentile(np.abs(difference), 98)) if np.isfinite(difference).any() else 1.0
    spread = spread or 1.0
    rows = [(f"acquired {name}", truth, {"cmap": "gray", "vmin": vmin, "vmax": vmax}),
            (f"synthetic {name}", model, {"cmap": "gray", "vmin": vmin, "vmax": vmax}),
            ("synthetic - acquired", difference, {"cmap": "RdBu_r", "vmin": -spread, "vmax": spread})]
    figure = Figure(figsize=(1.5 * len(slices) + 1.4, 5.4), layout="constrained", facecolor="black")
    axes = figure.subplots(3, len(slices), squeeze=False)
    for row, (label, data, style) in zip(axes, rows):
        shown = None
        for column, (ax, index) in enumerate(zip(row, slices)):
            shown = _axial(ax, data, index, **style)
            ax.set_facecolor("black")
            ax.set_axis_off()
            if column == 0:
                ax.text(-0.05, 0.5, label, color="white", fontsize=8, rotation=90, ha="right", va="center",
                        transform=ax.transAxes)
        colorbar = figure.colorbar(shown, ax=list(row), shrink=0.85, pad=0.01)
        colorbar.ax.tick_params(colors="white", labelsize=7)
    return _png(figure, path)


def _zscore(image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    values = image[brain & np.isfinite(image)]
    if values.size == 0 or not values.std():
        return image
    return (image - values.mean()) / values.std()


def overlay_png(background: nb.Nifti1Image, overlay: nb.Nifti1Image, path: Path, *, mask: nb.Nifti1Image,
                title: str, n_slices: int = 7) -> Path:
    """A map (a saliency map) in colour over the T1w in grey, axial slices through ``mask``, as PNG.

    The map is shown where it exceeds its 50th percentile inside the mask, so the T1w shows through elsewhere.
    """
    brain = _canonical(mask) > 0
    anatomy, values = _canonical(background), _canonical(overlay)
    inside = values[brain & np.isfinite(values)]
    threshold = float(np.percentile(inside, 50)) if inside.size else 0.0
    top = float(np.percentile(inside, 99.5)) if inside.size else 1.0
    shown_values = np.where(brain & (values > threshold), values, np.nan)
    slices = axial_slices(brain, n_slices)
    low, high = _robust_limits(np.where(brain, anatomy, 0))
    figure = Figure(figsize=(1.6 * len(slices) + 1.0, 2.2), layout="constrained", facecolor="black")
    axes = figure.subplots(1, len(slices), squeeze=False)[0]
    shown = None
    for ax, index in zip(axes, slices):
        _axial(ax, anatomy, index, cmap="gray", vmin=low, vmax=high)
        shown = _axial(ax, shown_values, index, cmap="hot", vmin=threshold, vmax=max(top, threshold + 1e-6))
        ax.set_axis_off()
    colorbar = figure.colorbar(shown, ax=list(axes), shrink=0.8, pad=0.01)
    colorbar.ax.tick_params(colors="white", labelsize=7)
    figure.suptitle(title, color="white", fontsize=10)
    return _png(figure, path)
