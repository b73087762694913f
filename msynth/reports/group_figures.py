"""Figures of the group report: myelin-change indices, Bland-Altman agreement, EDSS, demyelination overlays.

Each function takes the group TSVs as read (``msynth/reports/group.py`` reads them) and returns a
:class:`matplotlib.figure.Figure`; none recomputes a statistic: biases, limits of agreement, slopes, β and p come from
``bland_altman.tsv`` and ``edss_regression.tsv``. The layouts follow the seed thesis (paper 003): Fig. 3.7
(Bland-Altman of mean DVR per ROI), Fig. 4.4 (B) (demyelinated voxels from true and predicted PET on the T1w, with its
colours), Fig. 4.5 (the indices from true and predicted PET) and Table 4.3 (EDSS regression).

Volumes are ``X Y Z`` arrays in RAS+ orientation (:func:`nibabel.as_closest_canonical`); the axial slices are the
last axis, shown in neurological convention (the patient's left on the left).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from msynth.analysis.myelin import ACQUIRED, ACQUIRED_PVC, ACQUIRED_SOURCES
from msynth.reports.html import format_value

__all__ = [
    "INDEX_LABELS", "bland_altman_figure", "demyelination_overlay_figure", "edss_figure",
    "format_p_value", "index_boxplot_figure", "lesion_slices", "overlay_labels", "source_colours",
]

#: Index columns of ``myelin_indices.tsv`` (thesis §4.2.5) and how the report names them; all in percent.
INDEX_LABELS: dict[str, str] = {
    "pct_demyelinated_t0": "% demyelinated, t0",
    "pct_demyelinated_t1": "% demyelinated, t1",
    "global_index": "global index (t1 - t0)",
    "dynamic_demyelination": "dynamic demyelination",
    "dynamic_remyelination": "dynamic remyelination",
}
#: What each index is a percentage of (its y axis).
INDEX_UNITS: dict[str, str] = {
    "pct_demyelinated_t0": "% of the lesion load at t0",
    "pct_demyelinated_t1": "% of the lesion load at t0",
    "global_index": "percentage points",
    "dynamic_demyelination": "% of the voxels normal at t0",
    "dynamic_remyelination": "% of the voxels demyelinated at t0",
}

#: Overlay classes of :func:`overlay_labels` (codes 1-4) with the colours of thesis Fig. 4.4 (B), except that lesion
#: voxels demyelinated in neither map are green, not white, which would vanish on the bright white matter of a T1w.
_OVERLAY_CLASSES: tuple[tuple[str, str], ...] = (
    ("lesion, not demyelinated", "#20c040"),
    ("demyelinated: acquired PET only", "#2060ff"),
    ("demyelinated: synthetic PET only", "#ff2020"),
    ("demyelinated: both", "#ffe000"),
)
_MODEL_COLOURS = ("tab:blue", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:cyan", "tab:olive")


def source_colours(sources: Iterable[str]) -> dict[str, str]:
    """One colour per DVR source, ``acquired`` first (orange, as the ground truth of thesis Fig. 4.4), then the
    models in their order of first appearance.

    Examples
    --------
    >>> source_colours(["cfsagan", "acquired", "cfsagan", "unet"])
    {'acquired': 'tab:orange', 'cfsagan': 'tab:blue', 'unet': 'tab:green'}
    >>> source_colours(["acquired-pvc", "acquired"])
    {'acquired': 'tab:orange', 'acquired-pvc': 'tab:red'}
    """
    unique = list(dict.fromkeys(sources))
    models = [source for source in unique if source not in ACQUIRED_SOURCES]
    if len(models) > len(_MODEL_COLOURS):
        raise ValueError(f"sources: at most {len(_MODEL_COLOURS)} synthesis models can be told apart, got {models}")
    colours = {source: colour for source, colour in ((ACQUIRED, "tab:orange"), (ACQUIRED_PVC, "tab:red"))
               if source in unique}
    colours.update(zip(models, _MODEL_COLOURS))
    return colours


def format_p_value(p: float) -> str:
    """A p-value as the seed's Table 4.3 prints it (three decimals, ``*`` when p < 0.05), ``<0.001`` below that.

    Examples
    --------
    >>> format_p_value(0.0213), format_p_value(0.578), format_p_value(2e-5), format_p_value(float("nan"))
    ('0.021*', '0.578', '<0.001*', 'n/a')
    """
    if not np.isfinite(p):
        return format_value(p)
    text = "<0.001" if p < 0.001 else format_value(p, ".3f")
    return text + ("*" if p < 0.05 else "")


def _panel_grid(n_panels: int, *, n_columns: int, panel_size: tuple[float, float]) -> tuple[Figure, list[Axes]]:
    """A figure of ``n_panels`` axes, ``n_columns`` per row; unused cells of the last row are hidden."""
    n_columns = max(1, min(n_columns, n_panels))
    n_rows = -(-n_panels // n_columns)
    figure = Figure(figsize=(panel_size[0] * n_columns, panel_size[1] * n_rows), layout="constrained")
    axes = list(figure.subplots(n_rows, n_columns, squeeze=False).ravel())
    for unused in axes[n_panels:]:
        unused.set_visible(False)
    return figure, axes[:n_panels]


def _empty_panel(axes: Axes, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, color="0.4")
    axes.set_xticks([])
    axes.set_yticks([])


def index_boxplot_figure(indices: pd.DataFrame, colours: Mapping[str, str],
                         index_columns: Sequence[str] = tuple(INDEX_LABELS)) -> Figure:
    """Box plots of each myelin-change index, one box per DVR source, patients' values joined across sources.

    The paired lines show, patient by patient, how far the index from synthetic PET is from the index from acquired
    PET (thesis Fig. 4.5). An index that is ``n/a`` for every patient (a cohort with one session) says so.

    Parameters
    ----------
    indices : pandas.DataFrame
        ``myelin_indices.tsv``: ``participant_id``, ``source`` and the ``index_columns`` (percent).
    colours : mapping
        Source → colour (:func:`source_colours`); its order is the order of the boxes.
    index_columns : sequence of str
        The columns to plot, one panel each.
    """
    figure, panels = _panel_grid(len(index_columns), n_columns=3, panel_size=(3.7, 3.1))
    for axes, column in zip(panels, index_columns):
        axes.set_title(INDEX_LABELS.get(column, column), fontsize=10)
        by_source = {source: indices.loc[indices["source"] == source].set_index("participant_id")[column].dropna()
                     for source in colours}
        present = [source for source, values in by_source.items() if len(values)]
        if not present:
            _empty_panel(axes, f"{column}: n/a for every patient")
            continue
        positions = np.arange(1, len(present) + 1)
        boxes = axes.boxplot([by_source[source].to_numpy() for source in present], positions=positions,
                             widths=0.5, patch_artist=True, showfliers=False)
        for box, source in zip(boxes["boxes"], present):
            box.set(facecolor=colours[source], alpha=0.35)
        for participant in dict.fromkeys(pid for source in present for pid in by_source[source].index):
            values = [by_source[source].get(participant, np.nan) for source in present]
            axes.plot(positions, values, color="0.6", linewidth=0.7, zorder=1)
        for position, source in zip(positions, present):
            axes.scatter(np.full(len(by_source[source]), position), by_source[source], s=16, zorder=3,
                         color=colours[source], edgecolors="black", linewidths=0.3)
        axes.set_xticks(positions, present, fontsize=8)
        axes.set_ylabel(INDEX_UNITS.get(column, "%"), fontsize=8)
    return figure


def bland_altman_figure(points: pd.DataFrame, limits: pd.DataFrame, colour: str) -> Figure:
    """Bland-Altman plots of one synthetic source against acquired PET, one panel per quantity (thesis Fig. 3.7).

    Each point is a row of ``points`` (a participant and session for a regional mean DVR, a patient for an index):
    x = mean of the acquired and synthetic values, y = synthetic − acquired (the sign of ``bias`` in
    ``bland_altman.tsv``). The bias and the limits of agreement are drawn from ``limits``, not refitted.

    Parameters
    ----------
    points : pandas.DataFrame
        This source's rows of ``bland_altman_points.tsv``: ``participant_id``, ``quantity``, ``acquired``,
        ``synthetic``.
    limits : pandas.DataFrame
        This source's rows of ``bland_altman.tsv``: ``quantity``, ``n``, ``bias``, ``sd``, ``lower``, ``upper``.
    colour : str
        The source's colour.
    """
    quantities = list(dict.fromkeys([*limits["quantity"], *points["quantity"]]))
    figure, panels = _panel_grid(len(quantities), n_columns=4, panel_size=(2.9, 2.7))
    for axes, quantity in zip(panels, quantities):
        rows = points.loc[points["quantity"] == quantity].dropna(subset=["acquired", "synthetic"])
        axes.set_title(quantity, fontsize=9)
        if rows.empty:
            _empty_panel(axes, "no patient value")
            continue
        axes.scatter((rows["acquired"] + rows["synthetic"]) / 2, rows["synthetic"] - rows["acquired"], s=14,
                     color=colour, edgecolors="black", linewidths=0.3, zorder=3)
        axes.axhline(0, color="0.75", linewidth=0.8)
        for row in limits.loc[limits["quantity"] == quantity].itertuples():
            lines = ((row.bias, "-", "bias", "bottom"), (row.lower, "--", "lower", "bottom"),
                     (row.upper, "--", "upper", "top"))
            for value, style, name, side in lines:
                if np.isfinite(value):
                    axes.axhline(value, color="black", linestyle=style, linewidth=0.9)
                    axes.text(0.99, value, f"{name} {format_value(value, '.4g')}", ha="right", va=side,
                              fontsize=7, transform=axes.get_yaxis_transform())
        axes.set_xlabel("mean of acquired and synthetic", fontsize=8)
        axes.set_ylabel("synthetic - acquired", fontsize=8)
        axes.tick_params(labelsize=7)
    return figure


def edss_figure(indices: pd.DataFrame, cohort: pd.DataFrame, regression: pd.DataFrame,
                colours: Mapping[str, str]) -> Figure:
    """Baseline EDSS against each regressed index, per source, with the fitted line (thesis §4.3.6, Table 4.3).

    The line has the slope ``coef`` of ``edss_regression.tsv`` and passes through the means of the index and of
    EDSS over the patients with every model variable: an OLS fit passes through the means, so this is the model's
    prediction with age, sex and T2 lesion load held at their means. The legend quotes β (standardized) and p.

    Parameters
    ----------
    indices : pandas.DataFrame
        ``myelin_indices.tsv``.
    cohort : pandas.DataFrame
        ``cohort.tsv``: ``participant_id``, ``edss_t0`` and the covariates ``age``, ``sex``, ``t2_lesion_load_mm3``.
    regression : pandas.DataFrame
        ``edss_regression.tsv``: ``source``, ``index``, ``n``, ``coef``, ``se``, ``t``, ``p``, ``beta_std``.
    colours : mapping
        Source → colour.
    """
    covariates = [column for column in ("age", "sex", "t2_lesion_load_mm3") if column in cohort.columns]
    merged = indices.merge(cohort, on="participant_id", how="inner")
    index_names = list(dict.fromkeys(regression["index"]))
    figure, panels = _panel_grid(len(index_names), n_columns=3, panel_size=(3.7, 3.2))
    for axes, index in zip(panels, index_names):
        axes.set_title(INDEX_LABELS.get(index, index), fontsize=10)
        for source, colour in colours.items():
            rows = merged.loc[merged["source"] == source].dropna(subset=[index, "edss_t0", *covariates])
            if rows.empty:
                continue
            label = source
            for fit in regression.loc[(regression["source"] == source) & (regression["index"] == index)].itertuples():
                label += f": beta = {format_value(fit.beta_std, '.2f')}, p = {format_p_value(fit.p)}"
                if np.isfinite(fit.coef):
                    x = np.array([rows[index].min(), rows[index].max()])
                    axes.plot(x, rows["edss_t0"].mean() + fit.coef * (x - rows[index].mean()), color=colour)
            axes.scatter(rows[index], rows["edss_t0"], s=16, color=colour, edgecolors="black", linewidths=0.3,
                         label=label)
        if not axes.collections:
            _empty_panel(axes, "no patient with this index and EDSS")
            continue
        axes.set_xlabel("%")
        axes.set_ylabel("EDSS at baseline")
        axes.legend(fontsize=7, loc="best")
    return figure


def lesion_slices(lesion: np.ndarray, n_slices: int) -> list[int]:
    """Axial slices (last axis) spread through the lesion load: where the cumulative lesion-voxel count crosses
    ``(i + 0.5) / n_slices`` of the total, so each slice shows lesions and large lesions get more slices.

    Returns fewer than ``n_slices`` slices when lesions span fewer, none when the mask is empty.

    Examples
    --------
    >>> lesion = np.zeros((2, 2, 5), bool)
    >>> lesion[0, :, 1] = True      # 2 voxels in slice 1
    >>> lesion[:, :, 3] = True      # 4 voxels in slice 3
    >>> lesion_slices(lesion, 2), lesion_slices(lesion, 5)
    ([1, 3], [1, 3])
    """
    if n_slices < 1:
        raise ValueError(f"n_slices must be at least 1, got {n_slices}")
    cumulative = np.cumsum(np.asarray(lesion, bool).sum(axis=(0, 1)))
    if cumulative[-1] == 0:
        return []
    targets = (np.arange(n_slices) + 0.5) / n_slices * cumulative[-1]
    return sorted({int(z) for z in np.searchsorted(cumulative, targets)})


def overlay_labels(lesion: np.ndarray, acquired: np.ndarray, synthetic: np.ndarray | None = None) -> np.ndarray:
    """Voxel classes of the demyelination overlay, as in thesis Fig. 4.4 (B).

    0 background, 1 lesion voxel demyelinated in neither map, 2 demyelinated from acquired PET only, 3 from
    synthetic PET only, 4 from both. Without a synthetic map, demyelinated voxels are class 2.

    Examples
    --------
    >>> overlay_labels(np.array([1, 1, 1, 1, 0]), np.array([0, 1, 0, 1, 0]), np.array([0, 0, 1, 1, 0]))
    array([1, 2, 3, 4, 0], dtype=uint8)
    """
    lesion, acquired = np.asarray(lesion, bool), np.asarray(acquired, bool)
    synthetic = np.zeros_like(acquired) if synthetic is None else np.asarray(synthetic, bool)
    if not lesion.shape == acquired.shape == synthetic.shape:
        raise ValueError(f"lesion {lesion.shape}, acquired {acquired.shape} and synthetic {synthetic.shape} masks "
                         "must have one shape")
    labels = np.zeros(lesion.shape, np.uint8)
    labels[lesion] = 1
    labels[acquired & ~synthetic] = 2
    labels[synthetic & ~acquired] = 3
    labels[acquired & synthetic] = 4
    return labels


def _crop_box(volume: np.ndarray, margin: int = 1) -> tuple[slice, slice]:
    """In-plane bounding box of the non-zero voxels of ``volume``, with ``margin`` voxels around it."""
    boxes = []
    for axis in (0, 1):
        nonzero = np.flatnonzero(np.any(volume != 0, axis=tuple(a for a in range(volume.ndim) if a != axis)))
        if nonzero.size == 0:
            boxes.append(slice(None))
        else:
            boxes.append(slice(max(nonzero[0] - margin, 0), nonzero[-1] + margin + 1))
    return boxes[0], boxes[1]


def demyelination_overlay_figure(t1w: np.ndarray, labels: np.ndarray, slices: Sequence[int], *, title: str,
                                 with_synthetic: bool, voxel_size: tuple[float, float] = (1.0, 1.0)) -> Figure:
    """Axial slices of the T1w with the classes of :func:`overlay_labels` in the colours of thesis Fig. 4.4 (B).

    Parameters
    ----------
    t1w : numpy.ndarray
        The baseline T1w, ``X Y Z``, RAS+.
    labels : numpy.ndarray
        :func:`overlay_labels` on the same grid.
    slices : sequence of int
        Indices along the last (axial) axis, e.g. :func:`lesion_slices`.
    title : str
        Figure title (participant, session, Dice).
    with_synthetic : bool
        Whether a synthetic map was overlaid; without one the legend names only acquired-PET demyelination.
    voxel_size : tuple of float
        In-plane voxel size (x, y) in mm, for the aspect ratio.
    """
    if t1w.shape != labels.shape:
        raise ValueError(f"t1w shape {t1w.shape} does not match the labels shape {labels.shape}")
    if not slices:
        raise ValueError("slices is empty: pass at least one axial slice")
    rows, columns = _crop_box(t1w)
    brain = t1w[t1w > 0]
    low, high = np.percentile(brain, [1, 99.5]) if brain.size else (0.0, 1.0)
    colours = np.zeros((len(_OVERLAY_CLASSES) + 1, 4))
    for code, (_, hex_colour) in enumerate(_OVERLAY_CLASSES, start=1):
        colours[code] = [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)] + [1.0]
    figure = Figure(figsize=(2.7 * len(slices), 3.3), layout="constrained")
    for axes, z in zip(figure.subplots(1, len(slices), squeeze=False).ravel(), slices):
        axes.imshow(t1w[rows, columns, z].T, cmap="gray", vmin=low, vmax=high, origin="lower",
                    interpolation="nearest", aspect=voxel_size[1] / voxel_size[0])
        axes.imshow(colours[labels[rows, columns, z].T], origin="lower", interpolation="nearest",
                    aspect=voxel_size[1] / voxel_size[0])
        axes.set_title(f"axial slice {z}", fontsize=9)
        axes.set_axis_off()
    acquired_only = ("demyelinated: acquired PET", _OVERLAY_CLASSES[1][1])
    shown = _OVERLAY_CLASSES if with_synthetic else (_OVERLAY_CLASSES[0], acquired_only)
    figure.legend(handles=[Patch(facecolor=colour, edgecolor="0.3", label=name) for name, colour in shown],
                  loc="outside lower center", ncols=len(shown) if len(slices) > 3 else 2, fontsize=8, frameon=False)
    figure.suptitle(title, fontsize=10)
    return figure
