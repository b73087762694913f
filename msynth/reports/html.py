"""Building blocks of HTML reports: embedded figures, formatted tables, a page shell.

A report must open from a cluster's scratch folder or an e-mail attachment, with no network: the style sheet is
inline and nothing is fetched. The group report is one self-contained file (figures are PNGs embedded as ``data:``
URIs); the participant reports (:mod:`msynth.reports.participant`) link their figure files in ``sub-<L>/figures/``
by relative paths, as fMRIPrep does, so that their SVG flickers stay animated. Figures are drawn on a
:class:`matplotlib.figure.Figure` with the Agg canvas (no pyplot, no display, no global backend state). This module
imports neither torch nor pyplot, so the main ``msynth`` process may use it.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Callable, Mapping, Sequence

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["NA", "figure_html", "format_value", "html_page", "html_table", "paragraphs_html", "read_tsv"]

#: How BIDS tabular files, and these reports, write a missing value.
NA = "n/a"

_STYLE = """
body { font-family: 'DejaVu Sans', Arial, sans-serif; max-width: 1150px; margin: 1em auto; padding: 0 1em;
       color: #222; background: #fff; line-height: 1.4; }
h1 { border-bottom: 3px solid #1f4e79; padding-bottom: 0.2em; color: #1f4e79; }
h2 { border-bottom: 1px solid #bbb; margin-top: 2em; color: #1f4e79; }
nav a { margin-right: 1em; color: #1f4e79; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
th { background: #e8eef5; white-space: normal; }
td.text, th.text { text-align: left; }
table.wrap td { white-space: normal; }
div.scroll { overflow-x: auto; }
tr:nth-child(even) td { background: #f7f9fb; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; }
p.note { color: #7a4b00; background: #fff6e0; border-left: 4px solid #e0a000; padding: 0.4em 0.8em; }
li.message { font-family: 'DejaVu Sans Mono', monospace; font-size: 0.9em; }
h3 { color: #1f4e79; margin-top: 1.4em; }
object.svg-reportlet { width: 100%; border: 1px solid #ddd; background: #000; }
p.path { font-family: 'DejaVu Sans Mono', monospace; font-size: 0.8em; color: #666; margin: 0.2em 0; }
"""


def read_tsv(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a BIDS TSV, with ``n/a`` (and only ``n/a`` or an empty cell) as a missing value.

    Labels such as ``NA`` or ``None`` stay strings, as BIDS intends.
    """
    return pd.read_csv(path, sep="\t", na_values=[NA], keep_default_na=False)


def format_value(value: object, spec: str = ".3g") -> str:
    """One table cell as text: ``n/a`` for a missing value, numbers with the format ``spec``, anything else as is.

    Parameters
    ----------
    value : object
        A cell of a DataFrame.
    spec : str
        A :func:`format` specification for numbers (``"d"`` rounds to an integer first, since TSVs read integer
        columns with a missing value as floats).

    Examples
    --------
    >>> format_value(-0.70312, ".3f"), format_value(float("nan")), format_value(12.0, "d"), format_value("MS")
    ('-0.703', 'n/a', '12', 'MS')
    """
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return NA
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if spec == "d":
        return str(round(value))
    return format(value, spec)


def html_table(frame: pd.DataFrame, *, formats: Mapping[str, str | Callable[[float], str]] | None = None,
               headers: Mapping[str, str] | None = None, wrap: bool = False) -> str:
    """An HTML ``<table>`` of ``frame``'s rows, each cell formatted by :func:`format_value` and escaped.

    Parameters
    ----------
    frame : pandas.DataFrame
        The rows to show, in order (the index is not shown).
    formats : mapping, optional
        Column name → format specification of :func:`format_value` (default ``.3g`` for numbers), or a function
        that formats the cell itself (a p-value with its significance mark).
    headers : mapping, optional
        Column name → header text (default: the column name, so a reader can find it in the TSV).
    wrap : bool
        Let long text cells wrap (a model card's data source) instead of keeping each cell on one line.
    """
    formats = formats or {}
    headers = headers or {}
    # Labels align left, numbers right (so that their decimals line up).
    align = {column: "" if pd.api.types.is_numeric_dtype(frame[column]) else ' class="text"'
             for column in frame.columns}
    head = "".join(f"<th{align[column]}>{html.escape(headers.get(column, column))}</th>" for column in frame.columns)
    rows = []
    for record in frame.itertuples(index=False):
        cells = (f"<td{align[column]}>{html.escape(_format_cell(value, formats.get(column, '.3g')))}</td>"
                 for column, value in zip(frame.columns, record))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    opening = '<table class="wrap">' if wrap else "<table>"
    return f"{opening}<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _format_cell(value: object, spec: str | Callable[[float], str]) -> str:
    return spec(value) if callable(spec) else format_value(value, spec)


def figure_html(figure: Figure, caption: str, *, dpi: int = 100) -> str:
    """``figure`` as a ``<figure>`` holding a base64 PNG ``data:`` URI, with an escaped caption.

    The PNG is rendered by the Agg canvas, so no display and no pyplot state are involved. The figure is saved at its
    own size (no tight bounding box, which would draw it twice): give it a layout engine (``layout="constrained"``).
    """
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{encoded}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def paragraphs_html(text: str) -> str:
    """Plain text as escaped ``<p>`` paragraphs, one per block separated by a blank line."""
    blocks = [" ".join(block.split()) for block in text.split("\n\n")]
    return "".join(f"<p>{html.escape(block)}</p>" for block in blocks if block)


def html_page(title: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """A complete HTML document: inline style, a navigation bar, then each ``(anchor, heading, body_html)``.

    ``body_html`` is inserted as is (callers escape their text); ``title`` and headings are escaped here. The page is
    ASCII (other characters become character references), so it reads the same whatever the file's encoding is taken
    to be.
    """
    nav = " ".join(f'<a href="#{anchor}">{html.escape(heading)}</a>' for anchor, heading, _ in sections)
    body = "\n".join(f'<section id="{anchor}"><h2>{html.escape(heading)}</h2>\n{content}</section>'
                     for anchor, heading, content in sections)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head>\n<body><h1>{html.escape(title)}</h1><nav>{nav}</nav>\n{body}\n"
            "</body></html>\n")
    return page.encode("ascii", "xmlcharrefreplace").decode("ascii")
