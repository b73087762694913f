"""The group report: ``OUTPUT_DIR/group/report.html``, one self-contained file that a reader opens offline.

It shows the cohort, the myelin-change indices from acquired and synthetic PET, their agreement (Dice,
Bland-Altman), their relation to disability (EDSS regression), one demyelination overlay per patient, the methods with
their references, and the run's messages (thesis, paper 003, §3.3.5, §4.2.5, §4.3.4-4.3.6, Tables 4.2-4.3). Every
number is read from the group TSVs (``msynth/analysis`` computes them) and only formatted here; a missing file, a
missing synthetic source or an ``n/a`` becomes a sentence. Figures come from :mod:`msynth.reports.group_figures`.

The module imports matplotlib, pandas and nibabel only, never torch, so the main ``msynth`` process may build it.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd

from msynth.analysis.myelin import ACQUIRED, ACQUIRED_SOURCES
from msynth.reports.group_figures import (
    INDEX_LABELS, bland_altman_figure, demyelination_overlay_figure, edss_figure, format_p_value,
    index_boxplot_figure, lesion_slices, overlay_labels, source_colours,
)
from msynth.reports.html import NA, figure_html, format_value, html_page, html_table, paragraphs_html, read_tsv
from msynth.utils.derivatives import atomic_write_text, derivative_path

__all__ = ["GROUP_TABLES", "REFERENCES", "PatientOverlay", "write_group_report"]

#: The group TSVs the report reads from ``OUTPUT_DIR/group/`` (contracts: ../shared/DESIGN.md), by role.
GROUP_TABLES: dict[str, str] = {
    "cohort": "cohort.tsv",
    "indices": "myelin_indices.tsv",
    "agreement": "agreement.tsv",
    "bland_altman": "bland_altman.tsv",
    "bland_altman_points": "bland_altman_points.tsv",
    "regression": "edss_regression.tsv",
}

#: The methods the group level implements, as the seed thesis (paper 003) cites them.
REFERENCES: tuple[str, ...] = (
    "Wei W. PhD thesis on learning and predicting missing-modality-derived brain alterations in multiple sclerosis "
    "(paper 003, the seed of msynth): ch. 3 (Bland-Altman and Dice of true vs predicted PET), ch. 4 §4.2.5 (indices "
    "of myelin content change), §4.3.4-4.3.6 and Table 4.3 (clinical correlation).",
    "Wei W, Poirion E, Bodini B, et al. Predicting PET-derived myelin content from multisequence MRI for individual "
    "longitudinal analysis in multiple sclerosis. NeuroImage 2020;223:117308 (thesis ch. 4).",
    "Bodini B, Veronese M, Garcia-Lorenzo D, et al. Dynamic imaging of individual remyelination profiles in multiple "
    "sclerosis. Annals of Neurology 2016;79(5):726-738 (demyelinated voxels: DVR below the healthy-control mean - 1 SD "
    "at the same distance from CSF; dynamic demyelination and remyelination; EDSS regression).",
    "Logan J, Fowler JS, Volkow ND, et al. Distribution volume ratios without blood sampling from graphical analysis "
    "of PET data. Journal of Cerebral Blood Flow and Metabolism 1996;16(5):834-840 (DVR).",
    "Bland JM, Altman DG. Statistical methods for assessing agreement between two methods of clinical measurement. "
    "The Lancet 1986;1(8476):307-310.",
    "Dice LR. Measures of the amount of ecologic association between species. Ecology 1945;26(3):297-302.",
    "Kurtzke JF. Rating neurologic impairment in multiple sclerosis: an expanded disability status scale (EDSS). "
    "Neurology 1983;33(11):1444-1452.",
)

#: Number formats of the TSV columns in the report's tables (numbers are formatted, never recomputed).
_FORMATS: dict[str, str | Callable[[float], str]] = {
    "age": ".0f", "edss_t0": ".1f", "t2_lesion_load_mm3": ".0f", "n_sessions": "d", "lesion_voxels_t0": "d",
    "n": "d", "bias": ".4g", "sd": ".4g", "lower": ".4g", "upper": ".4g", "coef": ".3g", "se": ".3g", "t": ".2f",
    "beta_std": ".3f", "p": format_p_value, "p_ttest": format_p_value, "p_wilcoxon": format_p_value,
    **dict.fromkeys(INDEX_LABELS, ".1f"),
    **dict.fromkeys(["dice_t0", "dice_t1", "dice_dynamic_demyelination", "dice_dynamic_remyelination"], ".2f"),
}


@dataclass(frozen=True)
class PatientOverlay:
    """The baseline images of one patient that the report overlays, all on the session's ``space-T1w`` grid.

    Attributes
    ----------
    participant_id : str
        ``sub-<L>``, as in the group TSVs.
    session : str or None
        The baseline session label (without ``ses-``); None for a dataset without sessions.
    t1w, lesion_mask, acquired_mask : pathlib.Path
        ``anat/…_space-T1w_desc-preproc_T1w.nii.gz``, ``anat/…_space-T1w_label-lesion_mask.nii.gz`` and
        ``pet/…_trc-PIB_space-T1w_desc-demyelinated_mask.nii.gz`` (from the acquired DVR).
    synthetic_mask : pathlib.Path or None
        ``pet/…_trc-PIB_space-T1w_desc-synthdemyelinated_mask.nii.gz``; None when no synthetic DVR exists.
    synthetic_source : str or None
        The model that made the synthetic DVR (its ``source`` in ``agreement.tsv``), to quote its Dice.
    """

    participant_id: str
    session: str | None
    t1w: Path
    lesion_mask: Path
    acquired_mask: Path
    synthetic_mask: Path | None = None
    synthetic_source: str | None = None

    @classmethod
    def from_derivatives(cls, output_dir: Path, participant_label: str, session: str | None,
                         synthetic_source: str | None = None) -> PatientOverlay:
        """The overlay inputs of ``sub-<participant_label>`` by their BIDS-Derivatives names in ``output_dir``.

        The synthetic mask is None where the group level did not write one (no synthetic DVR).
        """
        entities = {"sub": participant_label, "ses": session or "", "space": "T1w"}
        pet = {**entities, "trc": "PIB"}
        synthetic = output_dir / derivative_path({**pet, "desc": "synthdemyelinated"}, "pet", "mask", ".nii.gz")
        return cls(
            participant_id=f"sub-{participant_label}",
            session=session,
            t1w=output_dir / derivative_path({**entities, "desc": "preproc"}, "anat", "T1w", ".nii.gz"),
            lesion_mask=output_dir / derivative_path({**entities, "label": "lesion"}, "anat", "mask", ".nii.gz"),
            acquired_mask=output_dir / derivative_path({**pet, "desc": "demyelinated"}, "pet", "mask", ".nii.gz"),
            synthetic_mask=synthetic if synthetic.exists() else None,
            synthetic_source=synthetic_source,
        )


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _missing(tables: Mapping[str, pd.DataFrame | None], *roles: str) -> str:
    """A note naming the group TSVs of ``roles`` that were not written, or '' when all were."""
    absent = [f"group/{GROUP_TABLES[role]}" for role in roles if tables[role] is None]
    return _note(f"{', '.join(absent)} not written: see the messages at the end.") if absent else ""


def _unusable(tables: Mapping[str, pd.DataFrame | None], role: str, why_empty: str) -> str:
    """A note when the TSV of ``role`` was not written or has no row (``why_empty`` says why); else ''."""
    if tables[role] is None:
        return _missing(tables, role)
    return _note(f"group/{GROUP_TABLES[role]} has no row: {why_empty}.") if tables[role].empty else ""


def _na_note(frame: pd.DataFrame, role: str) -> str:
    """A note pointing to the sidecar where the reasons are, when ``frame`` holds an ``n/a``; else ''."""
    if not frame.isna().any().any():
        return ""
    sidecar = GROUP_TABLES[role].replace(".tsv", ".json")
    return _note(f"n/a: not computable; the reasons are in group/{sidecar} and the messages at the end.")


def _cohort_section(tables: Mapping[str, pd.DataFrame | None]) -> str:
    if note := _unusable(tables, "cohort", "no participant"):
        return note
    cohort = tables["cohort"]
    counts = cohort["group"].value_counts() if "group" in cohort.columns else pd.Series(dtype=int)
    summary = ", ".join(f"{count} {html.escape(str(group))}" for group, count in counts.items())
    return f"<p>{len(cohort)} participants ({summary or 'groups unknown'}).</p>" + html_table(cohort, formats=_FORMATS)


def _indices_section(tables: Mapping[str, pd.DataFrame | None], colours: Mapping[str, str]) -> str:
    if note := _unusable(tables, "indices", "no patient had a demyelination map"):
        return note
    indices = tables["indices"]
    columns = [column for column in INDEX_LABELS if column in indices.columns]
    parts = [paragraphs_html(
        "Percent of the baseline lesion load (thesis §4.2.5): demyelinated voxels at t0 and t1, the global index "
        "(t1 - t0), dynamic demyelination (normal at t0, demyelinated at t1, over normal lesion voxels at t0) and "
        "dynamic remyelination (demyelinated at t0, normal at t1, over demyelinated voxels at t0).")]
    if not any(source not in ACQUIRED_SOURCES for source in colours):
        parts.append(_note("No synthetic DVR source: the indices come from acquired PET only."))
    parts.append(figure_html(index_boxplot_figure(indices, colours, columns),
                             "Myelin-change indices per DVR source; grey lines join one patient's values."))
    parts += [_na_note(indices, "indices"), html_table(indices, formats=_FORMATS, headers=INDEX_LABELS)]
    return "".join(parts)


def _agreement_section(tables: Mapping[str, pd.DataFrame | None], models: Sequence[str],
                       colours: Mapping[str, str]) -> str:
    if not models:
        return _note("No synthetic DVR source: there is nothing to compare acquired PET with (no Dice, no "
                     "Bland-Altman).")
    parts = [_missing(tables, "agreement", "bland_altman", "bland_altman_points")]
    if tables["agreement"] is not None:
        parts += ["<h3>Dice of demyelinated voxels, acquired vs synthetic PET</h3>",
                  _na_note(tables["agreement"], "agreement"), html_table(tables["agreement"], formats=_FORMATS)]
    limits, points = tables["bland_altman"], tables["bland_altman_points"]
    if limits is not None:
        parts += ["<h3>Bland-Altman: bias and 95 % limits of agreement (synthetic - acquired)</h3>",
                  _na_note(limits, "bland_altman"), html_table(limits, formats=_FORMATS)]
    if limits is None or points is None:
        return "".join(parts)
    for model in models:
        model_points, model_limits = points.loc[points["source"] == model], limits.loc[limits["source"] == model]
        if model_points.empty and model_limits.empty:
            parts.append(_note(f"{model}: no Bland-Altman quantity in group/bland_altman.tsv."))
            continue
        parts.append(figure_html(
            bland_altman_figure(model_points, model_limits, colours[model]),
            f"Bland-Altman plots, {model} vs acquired PET: one point per participant and session (mean DVR in a "
            "region) or per patient (index); solid line: bias, dashed: limits of agreement (group/bland_altman.tsv)."))
    return "".join(parts)


def _regression_section(tables: Mapping[str, pd.DataFrame | None], colours: Mapping[str, str]) -> str:
    if note := _unusable(tables, "regression", "no regression could be fitted (see the messages)"):
        return note
    regression = tables["regression"]
    parts = [
        paragraphs_html("Ordinary least squares per index and DVR source: baseline EDSS ~ index + age + sex + T2 "
                        "lesion load (thesis §4.3.6, Table 4.3). coef, se, t and p are the index's; beta_std is its "
                        "standardized coefficient (all variables z-scored). * p < 0.05."),
        _na_note(regression, "regression"),
        html_table(regression, formats=_FORMATS),
    ]
    if tables["indices"] is None or tables["cohort"] is None:
        parts.append(_missing(tables, "indices", "cohort"))
    else:
        parts.append(figure_html(
            edss_figure(tables["indices"], tables["cohort"], regression, colours),
            "Baseline EDSS against each index; the line has the OLS slope of the index with age, sex and T2 lesion "
            "load at their means."))
    return "".join(parts)


def _masks_on_grid(paths: Sequence[Path], t1w: nb.Nifti1Image, name: str) -> list[np.ndarray]:
    """The masks at ``paths`` as boolean RAS+ arrays, each checked to lie on the T1w's grid (shape and affine)."""
    masks = []
    for path in paths:
        image = nb.as_closest_canonical(nb.load(path))
        if image.shape != t1w.shape or not np.allclose(image.affine, t1w.affine, atol=1e-3):
            raise ValueError(f"{name}: {path.name} (shape {image.shape}) is not on the grid of the T1w (shape "
                             f"{t1w.shape}); the overlay needs every mask in space-T1w")
        masks.append(np.asarray(image.dataobj) > 0)
    return masks


def _overlay_title(patient: PatientOverlay, name: str, agreement: pd.DataFrame | None) -> str:
    """``name``, and the Dice at t0 of the synthetic source from ``agreement.tsv`` when there is one."""
    if patient.synthetic_mask is None:
        return f"{name}: acquired PET only"
    if agreement is None or patient.synthetic_source is None:
        return name
    dice = agreement.loc[(agreement["participant_id"] == patient.participant_id)
                         & (agreement["source"] == patient.synthetic_source), "dice_t0"]
    return (f"{name}: Dice t0 (acquired vs {patient.synthetic_source}) = "
            f"{format_value(dice.iloc[0], '.2f') if len(dice) else NA}")


def _overlay_html(patient: PatientOverlay, agreement: pd.DataFrame | None, n_slices: int) -> str:
    """One patient's overlay figure, or a sentence saying why there is none."""
    name = patient.participant_id + (f" ses-{patient.session}" if patient.session else "")
    inputs = {"T1w": patient.t1w, "lesion mask": patient.lesion_mask, "demyelinated mask": patient.acquired_mask,
              "synthetic demyelinated mask": patient.synthetic_mask}
    absent = [f"{role} {path.name}" for role, path in inputs.items() if path is not None and not path.exists()]
    if absent:
        return _note(f"{name}: no overlay, missing {', '.join(absent)}.")
    t1w = nb.as_closest_canonical(nb.load(patient.t1w))
    masks = _masks_on_grid([path for path in list(inputs.values())[1:] if path is not None], t1w, name)
    slices = lesion_slices(masks[0], n_slices)
    if not slices:
        return _note(f"{name}: no lesion voxel in {patient.lesion_mask.name}, so no demyelination to show.")
    title = _overlay_title(patient, name, agreement)
    figure = demyelination_overlay_figure(
        np.asarray(t1w.dataobj, dtype=np.float32), overlay_labels(*masks), slices, title=title,
        with_synthetic=patient.synthetic_mask is not None, voxel_size=tuple(t1w.header.get_zooms()[:2]))
    note = "" if patient.synthetic_mask else _note(f"{name}: no synthetic demyelination mask; acquired PET only.")
    return note + figure_html(figure, f"{title}. Demyelinated lesion voxels at baseline on the T1w.")


def _methods_section(methods: str) -> str:
    text = paragraphs_html(methods) if methods.strip() else _note("No methods text was provided.")
    references = "".join(f"<li>{html.escape(reference)}</li>" for reference in REFERENCES)
    return f"{text}<h3>References</h3><ol>{references}</ol>"


def _messages_section(messages: Sequence[str]) -> str:
    if not messages:
        return "<p>No message: every stage of the group level ran.</p>"
    return "<ul>" + "".join(f'<li class="message">{html.escape(message)}</li>' for message in messages) + "</ul>"


def write_group_report(group_dir: Path, *, overlays: Sequence[PatientOverlay] = (), methods: str = "",
                       messages: Sequence[str] = (), out_file: Path | None = None, n_slices: int = 4,
                       title: str = "msynth group report") -> Path:
    """Write the self-contained HTML group report from the group TSVs in ``group_dir``.

    Sections: cohort (``cohort.tsv``); myelin-change indices with box plots per DVR source (``myelin_indices.tsv``,
    thesis §4.2.5, Fig. 4.5); agreement of synthetic with acquired PET, Dice and Bland-Altman plots per quantity
    (``agreement.tsv``, ``bland_altman.tsv``, ``bland_altman_points.tsv``; §4.3.4-4.3.5, Fig. 3.7); the EDSS
    regression table and EDSS against each index with its fitted line (``edss_regression.tsv``; §4.3.6, Table 4.3);
    one demyelination overlay per patient (Fig. 4.4 B); the methods with references; the messages. Figures are
    base64 PNGs inside the file; nothing refers to the network or another file.

    Parameters
    ----------
    group_dir : pathlib.Path
        ``OUTPUT_DIR/group``, holding the TSVs of :data:`GROUP_TABLES`; any may be absent (a sentence says so).
    overlays : sequence of PatientOverlay
        One per patient to show, in order (:meth:`PatientOverlay.from_derivatives` builds them).
    methods : str
        The methods text (paragraphs separated by blank lines); :data:`REFERENCES` follow it.
    messages : sequence of str
        The run's messages (what was missing, each ``n/a`` and why), shown as they are.
    out_file : pathlib.Path, optional
        Where to write (default ``group_dir / "report.html"``); written atomically.
    n_slices : int
        Axial slices per overlay, spread through the lesions.
    title : str
        The page title.

    Returns
    -------
    pathlib.Path
        The written report.
    """
    if n_slices < 1:
        raise ValueError(f"n_slices must be at least 1, got {n_slices}")
    tables = {role: read_tsv(group_dir / name) if (group_dir / name).exists() else None
              for role, name in GROUP_TABLES.items()}
    sources = [source for role in ("indices", "agreement", "bland_altman", "regression") if tables[role] is not None
               for source in tables[role]["source"]]
    colours = source_colours([ACQUIRED, *sources])
    models = [source for source in colours if source not in ACQUIRED_SOURCES]
    overlay_html = "".join(_overlay_html(patient, tables["agreement"], n_slices) for patient in overlays)
    sections = [
        ("cohort", "Cohort", _cohort_section(tables)),
        ("indices", "Myelin-change indices", _indices_section(tables, colours)),
        ("agreement", "Agreement of synthetic with acquired PET", _agreement_section(tables, models, colours)),
        ("edss", "EDSS regression", _regression_section(tables, colours)),
        ("overlays", "Demyelinated voxels at baseline",
         overlay_html or _note("No patient overlay was requested.")),
        ("methods", "Methods", _methods_section(methods)),
        ("messages", "Messages", _messages_section(messages)),
    ]
    out_file = out_file or group_dir / "report.html"
    atomic_write_text(out_file, html_page(title, sections))
    return out_file
