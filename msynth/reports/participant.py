"""The participant report: ``OUTPUT_DIR/sub-<L>.html`` and its figures in ``OUTPUT_DIR/sub-<L>/figures/``.

One page per participant, as fMRIPrep, sMRIPrep and MRIQC write, for visual quality control: per session, the brain
mask on the T1w, the tissue probabilities with the lesion and NAWM masks, each co-registration as a before/after
flicker, synthetic against acquired FLAIR and DVR with their difference, FA and DVR mosaics, saliency maps, the lesion
table and the synthesis metrics; then the model cards used, the errors and skipped stages with their reasons, and the
methods. Every section is built from the finished derivatives in ``OUTPUT_DIR`` (and, for the "before" of a
co-registration, from the raw dataset that ``dataset_description.json`` links as ``raw``), so ``--reports-only`` can
rebuild it without running anything; a section whose data are absent says why in one line.

The page shell and tables are :mod:`msynth.reports.html`'s (nireports' assembler was not used: its template loads
jQuery and Bootstrap from CDNs, so the page would lose its layout offline, and it wants a YAML spec and a pybids index
of the figures for what is a fixed list here). Figures are files beside the page, referred to by relative paths, as
in fMRIPrep, so the flickers stay SVG layers a browser animates. No torch, no network.
"""

from __future__ import annotations

import html
import json
import logging
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import nibabel as nb
import numpy as np
import pandas as pd

from msynth.reports import participant_figures as figures
from msynth.reports.html import html_page, html_table, paragraphs_html, read_tsv
from msynth.utils.derivatives import atomic_target, atomic_write_text, derivative_path

__all__ = ["COREGISTERED", "REFERENCES", "build_participant_report", "log_messages", "methods_references",
           "workflow_methods"]

LOGGER = logging.getLogger("msynth.reports")

#: Images registered to the T1w, in report order: key → (datatype, acq entity, suffix of the space-T1w output or
#: None when there is none, raw file glob relative to the session folder).
COREGISTERED: dict[str, tuple[str, str, str | None, str]] = {
    "T2w": ("anat", "", "T2w", "anat/*_T2w.nii*"),
    "PDw": ("anat", "", "PDw", "anat/*_PDw.nii*"),
    "FLAIR": ("anat", "", "FLAIR", "anat/*_FLAIR.nii*"),
    "T1SE": ("anat", "SE", "T1w", "anat/*_acq-SE_*T1w.nii*"),
    "DIR": ("anat", "DIR", "T2w", "anat/*_acq-DIR_*T2w.nii*"),
    "MTR": ("anat", "", "MTRmap", "anat/*_MTRmap.nii*"),
    "DWI": ("dwi", "", None, "dwi/*_dwi.nii*"),
    "PET": ("pet", "", None, "pet/*_pet.nii*"),
}
#: What the flicker of a key shows (the DWI and the PET have no space-T1w image of their own: their raw b=0 mean and
#: frame mean are resampled through the published transform).
_MOVING = {"DWI": "mean b=0 image", "PET": "mean PET image"}

#: References cited by the methods text, each with the pattern of the text that cites it.
REFERENCES: tuple[tuple[str, str], ...] = (
    (r"\bdeepbet\b", "Fisch L, Zumdick S, Barkhau C, et al. deepbet: Fast brain extraction of T1-weighted MRI using "
                     "Convolutional Neural Networks. Computers in Biology and Medicine 2024;179:108845."),
    (r"\bN4\b", "Tustison NJ, Avants BB, Cook PA, et al. N4ITK: improved N3 bias correction. IEEE Transactions on "
                "Medical Imaging 2010;29(6):1310-1320."),
    (r"\bANTs\b|ANTsPy", "Avants BB, Tustison NJ, Song G, et al. A reproducible evaluation of ANTs similarity metric "
                         "performance in brain image registration. NeuroImage 2011;54(3):2033-2044."),
    (r"\bAtropos\b", "Avants BB, Tustison NJ, Wu J, Cook PA, Gee JC. An open source multivariate framework for "
                     "n-tissue segmentation with evaluation on public data. Neuroinformatics 2011;9(4):381-400."),
    (r"MNI152", "Fonov V, Evans AC, Botteron K, et al. Unbiased average age-appropriate atlases for pediatric "
                "studies. NeuroImage 2011;54(1):313-327."),
    (r"\bdipy\b", "Garyfallidis E, Brett M, Amirbekian B, et al. Dipy, a library for the analysis of diffusion MRI "
                  "data. Frontiers in Neuroinformatics 2014;8:8."),
    (r"\bLogan\b", "Logan J, Fowler JS, Volkow ND, et al. Distribution volume ratios without blood sampling from "
                   "graphical analysis of PET data. Journal of Cerebral Blood Flow and Metabolism 1996;16(5):834-840."),
    (r"Schmidt et al|LST-LGA", "Schmidt P, Gaser C, Arsic M, et al. An automated tool for detection of "
                               "FLAIR-hyperintense white-matter lesions in multiple sclerosis. NeuroImage "
                               "2012;59(4):3774-3783."),
    (r"FLAIR image was synthesised|synthetic FLAIR",
     "Wei W, Poirion E, Bodini B, et al. Fluid-attenuated inversion recovery MRI synthesis from multisequence MRI "
     "using three-dimensional fully convolutional networks for multiple sclerosis. Journal of Medical Imaging "
     "2019;6(1):014005."),
    (r"(?i)sketcher|refiner|DVR map was synthesised|synthetic DVR",
     "Wei W, Poirion E, Bodini B, et al. Predicting PET-derived myelin content from multisequence MRI for individual "
     "longitudinal analysis in multiple sclerosis. NeuroImage 2020;223:117308."),
    (r"\bMONAI\b", "Cardoso MJ, Li W, Brown R, et al. MONAI: An open-source framework for deep learning in "
                   "healthcare. arXiv 2022:2211.02701."),
    (r"\bSSIM\b", "Wang Z, Bovik AC, Sheikh HR, Simoncelli EP. Image quality assessment: from error visibility to "
                  "structural similarity. IEEE Transactions on Image Processing 2004;13(4):600-612."),
    (r"Bland-Altman", "Bland JM, Altman DG. Statistical methods for assessing agreement between two methods of "
                      "clinical measurement. The Lancet 1986;1(8476):307-310."),
    (r"\bDice\b", "Dice LR. Measures of the amount of ecologic association between species. Ecology "
                  "1945;26(3):297-302."),
    (r"\bNipype\b", "Gorgolewski K, Burns CD, Madison C, et al. Nipype: a flexible, lightweight and extensible "
                    "neuroimaging data processing framework in Python. Frontiers in Neuroinformatics 2011;5:13."),
)
_NIPYPE = ("Results included in this report come from msynth, a Nipype workflow (Gorgolewski et al. 2011) run once "
           "per participant; the text below is generated from each workflow's description.")
#: Heading of the reference list that :func:`workflow_methods` appends (the report renders it as a list).
REFERENCES_HEADING = "References"


# --------------------------------------------------------------------------------------------------- methods text
def _descriptions(workflow) -> Iterator[str]:
    """Each ``__desc__`` (then ``__postdesc__``) of ``workflow`` and its sub-workflows, in execution order.

    As niworkflows' ``LiterateWorkflow.visit_desc``: the sub-workflows of a workflow are visited in topological order.
    """
    from nipype.pipeline import engine as pe
    from nipype.pipeline.engine.utils import topological_sort

    if getattr(workflow, "__desc__", None):
        yield " ".join(str(workflow.__desc__).split())
    nodes, _ = topological_sort(workflow._graph)  # noqa: SLF001 - Nipype exposes no public graph accessor
    for node in nodes:
        if isinstance(node, pe.Workflow):
            yield from _descriptions(node)
    if getattr(workflow, "__postdesc__", None):
        yield " ".join(str(workflow.__postdesc__).split())


def methods_references(text: str) -> list[str]:
    """The entries of :data:`REFERENCES` that ``text`` cites, in the order of the table, each once.

    >>> methods_references("Bias was corrected with N4 and ANTs.")[0][:12]
    'Tustison NJ,'
    """
    seen: list[str] = []
    for pattern, reference in REFERENCES:
        if re.search(pattern, text) and reference not in seen:
            seen.append(reference)
    return seen


def workflow_methods(workflow) -> str:
    """Methods paragraph(s): every (sub)workflow's ``__desc__`` (and ``__postdesc__``), in order, de-duplicated
    (one per kind of workflow, not one per session), then the references they cite.

    Parameters
    ----------
    workflow : nipype.pipeline.engine.Workflow
        The participant's workflow (:func:`msynth.pipelines.participant.init_participant_wf`), built or run.

    Returns
    -------
    str
        Paragraphs separated by blank lines: an opening sentence, one paragraph per distinct description, then
        ``References`` and one numbered reference per paragraph.
    """
    unique: list[str] = []
    for text in _descriptions(workflow):
        if text not in unique:
            unique.append(text)
    references = methods_references(" ".join([_NIPYPE, *unique]))
    blocks = [_NIPYPE, *unique]
    if references:
        blocks += [REFERENCES_HEADING, *(f"[{number}] {reference}" for number, reference in enumerate(references, 1))]
    return "\n\n".join(blocks)


# ------------------------------------------------------------------------------------------- locating derivatives
@dataclass(frozen=True)
class _Session:
    """Where one session's derivatives are (``session`` None: a dataset without sessions)."""

    output_dir: Path
    label: str
    session: str | None

    @property
    def name(self) -> str:
        return f"sub-{self.label}" + (f" ses-{self.session}" if self.session else "")

    @property
    def prefix(self) -> str:
        return f"sub-{self.label}" + (f"_ses-{self.session}" if self.session else "")

    @property
    def anchor(self) -> str:
        return f"ses-{self.session}" if self.session else "session"

    def path(self, datatype: str, suffix: str, extension: str = ".nii.gz", **entities: str) -> Path:
        """The derivative of these entities (``space`` defaults to T1w; pass ``space=''`` for none)."""
        entities = {"sub": self.label, "ses": self.session or "", "space": "T1w", **entities}
        return self.output_dir / derivative_path(entities, datatype, suffix, extension)

    def tsv(self, datatype: str, suffix: str, **entities: str) -> Path:
        return self.path(datatype, suffix, ".tsv", **entities)

    @property
    def folder(self) -> Path:
        return self.output_dir / f"sub-{self.label}" / (f"ses-{self.session}" if self.session else "")


def _sessions(output_dir: Path, label: str) -> list[_Session]:
    """The sessions of ``sub-<label>`` that have derivatives, in label order; one without label when unsessioned."""
    subject = output_dir / f"sub-{label}"
    sessions = sorted(folder.name[4:] for folder in subject.glob("ses-*") if folder.is_dir())
    if sessions:
        return [_Session(output_dir, label, session) for session in sessions]
    has_data = any((subject / datatype).is_dir() for datatype in ("anat", "dwi", "pet"))
    return [_Session(output_dir, label, None)] if has_data else []


def _sidecar(path: Path) -> dict:
    """The JSON sidecar of a derivative, or {} when it is absent or unreadable."""
    sidecar = path.with_name(path.name.split(".")[0] + ".json")
    try:
        return json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return {}


def _raw_root(output_dir: Path) -> Path | None:
    """The raw dataset linked as ``raw`` in ``OUTPUT_DIR/dataset_description.json`` (None when absent or missing)."""
    try:
        links = json.loads((output_dir / "dataset_description.json").read_text()).get("DatasetLinks", {})
    except (OSError, ValueError):
        return None
    link = links.get("raw")
    if not link:
        return None
    parsed = urlparse(link)
    root = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(link)
    root = root if root.is_absolute() else output_dir / root
    return root if root.is_dir() else None


def _resolve(uri: str, raw_root: Path | None) -> Path | None:
    """The file of a ``bids:raw:<path>`` URI, when the raw dataset is reachable and holds it."""
    if raw_root is None or not uri.startswith("bids:raw:"):
        return None
    path = raw_root / uri[len("bids:raw:"):]
    return path if path.is_file() else None


# ------------------------------------------------------------------------------------------------------ html bits
def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _block(anchor: str, heading: str, body: str) -> str:
    """One sub-section of a session: an ``<h3>`` with ``anchor`` as its id (the test and readers find it by id)."""
    return f'<div class="block" id="{anchor}"><h3>{html.escape(heading)}</h3>\n{body}</div>'


def _figure(src: str, caption: str, *, flicker: bool = False) -> str:
    """A figure file beside the page by its relative path: an ``<object>`` for an SVG (its animation and hover
    work there, as in fMRIPrep), an ``<img>`` for a PNG."""
    escaped, text = html.escape(src), html.escape(caption)
    if src.endswith(".svg"):
        element = f'<object class="svg-reportlet" type="image/svg+xml" data="{escaped}">{text}</object>'
    else:
        element = f'<img src="{escaped}" alt="{text}">'
    hint = " Hover over the figure to flicker between before and after." if flicker else ""
    return f'<figure>{element}<figcaption>{text}{html.escape(hint)}</figcaption></figure>'


class _Figures:
    """Writes figure files under ``sub-<L>/figures/`` and returns their paths relative to the page."""

    def __init__(self, output_dir: Path, label: str):
        self.output_dir = output_dir
        self.folder = output_dir / f"sub-{label}" / "figures"  # made by the first figure: none, no folder
        self.written: list[Path] = []

    def svg(self, name: str, text: str) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{name}.svg"
        atomic_write_text(path, text, keep_identical=True)  # a rerun with nothing new rewrites no figure
        self.written.append(path)
        return path.relative_to(self.output_dir).as_posix()

    def png(self, name: str, draw: Callable[[Path], Path]) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{name}.png"
        with atomic_target(path, keep_identical=True) as tmp:
            draw(tmp)
        self.written.append(path)
        return path.relative_to(self.output_dir).as_posix()

    def remove_stale(self) -> None:
        """Remove figures of an earlier build that this one did not write (data since removed)."""
        if not self.folder.is_dir():
            return
        for path in self.folder.iterdir():
            if path.suffix in (".svg", ".png") and path not in self.written:
                path.unlink()


# --------------------------------------------------------------------------------------------- session sections
def _brain_mask_block(ses: _Session, out: _Figures) -> str:
    t1w, mask = ses.path("anat", "T1w", desc="preproc"), ses.path("anat", "mask", desc="brain")
    anchor = f"{ses.anchor}-brainmask"
    if not (t1w.exists() and mask.exists()):
        return _block(anchor, "Brain mask", _note(f"{ses.name}: no brain mask or preprocessed T1w in OUTPUT_DIR "
                                                  "(the anatomical stage did not finish; see the messages)."))
    svg = figures.contours_svg(nb.load(t1w), [(nb.load(mask), "r")], bbox=nb.load(mask), name=f"{ses.prefix}-brainmask")
    src = out.svg(f"{ses.prefix}_desc-brainmask", svg)
    return _block(anchor, "Brain mask", _figure(src, "Bias-corrected T1w with the brain mask's outline (red). The "
                                                     "outline should follow the brain's surface, with no skull, eye "
                                                     "or neck inside and no cortex outside."))


def _tissues_block(ses: _Session, out: _Figures) -> str:
    """Two outline mosaics: the tissue probabilities (GM, WM, CSF), then the lesion and NAWM masks."""
    anchor = f"{ses.anchor}-tissues"
    heading = "Tissue probabilities, lesion and NAWM masks"
    t1w, mask = ses.path("anat", "T1w", desc="preproc"), ses.path("anat", "mask", desc="brain")
    if not (t1w.exists() and mask.exists()):
        return _block(anchor, heading, _note(f"{ses.name}: no preprocessed T1w or brain mask to draw on."))
    tissues = [(ses.path("anat", "probseg", label=label), colour, name) for label, colour, name in
               (("CSF", "#3b8bff", "CSF (blue)"), ("GM", "#2ca02c", "grey matter (green)"),
                ("WM", "#ff7f0e", "white matter (orange)"))]
    masks = [(ses.path("anat", "mask", label="NAWM"), "#e5e500", "NAWM (yellow)"),
             (ses.path("anat", "mask", label="lesion"), "#ff2020", "lesions (red)")]
    parts = []
    present = [layer for layer in tissues if layer[0].exists()]
    if present:
        svg = figures.contours_svg(nb.load(t1w), [(nb.load(path), colour) for path, colour, _ in present],
                                   bbox=nb.load(mask), name=f"{ses.prefix}-tissues")
        legend = ", ".join(name for _, _, name in present)
        parts.append(_figure(out.svg(f"{ses.prefix}_desc-tissues", svg), (
            f"Tissue probabilities outlined at 0.5 on the T1w: {legend}. The white-matter outline should follow the "
            "grey/white boundary and the grey-matter one the cortical ribbon.")))
    else:
        parts.append(_note(f"{ses.name}: no tissue probability map in OUTPUT_DIR (the masks stage did not finish; "
                           "see the messages)."))
    lesion = masks[1][0]
    if not lesion.exists():
        parts.append(_note(f"{ses.name}: no lesion mask (none given and no FLAIR, acquired or synthetic, to detect "
                           "lesions on), so no lesion or NAWM outline."))
        return _block(anchor, heading, "".join(parts))
    if not np.any(np.asarray(nb.load(lesion).dataobj)):
        source = _sidecar(lesion).get("LesionMaskSource", "")
        parts.append(_note(f"{ses.name}: the lesion mask{f' ({source})' if source else ''} is empty: no lesion "
                           "outline."))
    present = [layer for layer in masks if layer[0].exists()]
    svg = figures.contours_svg(nb.load(t1w), [(nb.load(path), colour) for path, colour, _ in present],
                               bbox=nb.load(mask), name=f"{ses.prefix}-lesions")
    source = _sidecar(lesion).get("LesionMaskSource", "")
    legend = ", ".join(name for _, _, name in present)
    parts.append(_figure(out.svg(f"{ses.prefix}_desc-lesions", svg), (
        f"Masks outlined on the T1w: {legend}; lesion mask {source or 'of unknown source'}. Lesions should cover "
        "the white-matter hyperintensities of the FLAIR; NAWM is the white matter outside them.")))
    return _block(anchor, heading, "".join(parts))


def _raw_present(ses: _Session, key: str, raw_root: Path | None) -> bool | None:
    """Whether the raw dataset holds an image of ``key`` for the session (None when the raw dataset is unreachable)."""
    if raw_root is None:
        return None
    folder = raw_root / f"sub-{ses.label}" / (f"ses-{ses.session}" if ses.session else "")
    files = [path for path in folder.glob(COREGISTERED[key][3])
             if key not in ("T2w",) or "_acq-DIR_" not in path.name]
    return bool(files)


def _mean_b0(dwi: Path) -> nb.Nifti1Image:
    """The mean of the b=0 volumes (b < 50 s/mm², by the ``.bval`` beside the DWI; the first volume without one)."""
    image = nb.load(dwi)
    bval = dwi.with_name(dwi.name.split(".")[0] + ".bval")
    data = np.asarray(image.dataobj, dtype=np.float32)
    if bval.is_file():
        b = np.asarray(bval.read_text().split(), dtype=float)
        volumes = np.flatnonzero(b < 50) if np.any(b < 50) else np.array([0])
    else:
        volumes = np.array([0])
    return nb.Nifti1Image(data[..., volumes].mean(axis=-1), image.affine)


def _mean_pet(pet: Path) -> nb.Nifti1Image:
    """The frame-duration-weighted mean of a dynamic PET (plain mean without ``FrameDuration`` in its sidecar)."""
    image = nb.load(pet)
    data = np.asarray(image.dataobj, dtype=np.float32)
    durations = _sidecar(pet).get("FrameDuration")
    if data.ndim == 3:
        return nb.Nifti1Image(data, image.affine)
    if durations and len(durations) == data.shape[-1]:
        weights = np.asarray(durations, dtype=float)
        mean = np.tensordot(data, weights / weights.sum(), axes=([-1], [0]))
    else:
        mean = data.mean(axis=-1)
    return nb.Nifti1Image(mean.astype(np.float32), image.affine)


def _moving_and_after(ses: _Session, key: str, raw_root: Path | None) -> tuple[Path | None, object, str]:
    """The raw image of ``key``, its "after" (image or path on the T1w grid, None when absent) and a reason when
    either is missing."""
    datatype, acq, suffix, _ = COREGISTERED[key]
    if suffix is not None:
        after = ses.path(datatype, suffix, acq=acq, desc="preproc")
        if not after.exists():
            return None, None, ""
        sources = _sidecar(after).get("Sources", [])
        raw = _resolve(sources[0], raw_root) if sources else None
        return raw, after, "" if raw else "the raw image is not reachable through OUTPUT_DIR's DatasetLinks 'raw'"
    xfm = ses.output_dir / derivative_path({"sub": ses.label, "ses": ses.session or "", "from": key, "to": "T1w",
                                            "mode": "image"}, datatype, "xfm", ".mat")
    if not xfm.exists():
        return None, None, ""
    anchor = (ses.path("dwi", "dwimap", model="DTI", param="FA") if key == "DWI" else
              ses.path("pet", "mimap", trc="PIB", model="Logan", meas="DVR"))
    sources = [uri for uri in _sidecar(anchor).get("Sources", []) if "_dwi." in uri or "_pet." in uri]
    raw = _resolve(sources[0], raw_root) if sources else None
    if raw is None:
        return None, None, (f"the raw {key} is not reachable through OUTPUT_DIR's DatasetLinks 'raw', so its "
                            f"{_MOVING[key]} cannot be drawn")
    from msynth.preprocessing.registration_qc import resample_onto

    moving = _mean_b0(raw) if key == "DWI" else _mean_pet(raw)
    t1w = ses.path("anat", "T1w", desc="preproc")
    after = nb.Nifti1Image(resample_onto(moving, t1w, xfm).astype(np.float32), nb.load(t1w).affine)
    return raw, (moving, after), ""


def _coregistration_block(ses: _Session, key: str, out: _Figures, raw_root: Path | None) -> str:
    anchor, heading = f"{ses.anchor}-coreg-{key}", f"Co-registration: {key} to T1w"
    t1w, mask = ses.path("anat", "T1w", desc="preproc"), ses.path("anat", "mask", desc="brain")
    wm = ses.path("anat", "probseg", label="WM")
    contour = wm if wm.exists() else mask
    raw, after, reason = _moving_and_after(ses, key, raw_root)
    if after is None:
        present = _raw_present(ses, key, raw_root)
        if reason:
            text = f"{ses.name}: no {key} flicker: {reason}."
        elif present is False:
            text = f"{ses.name}: no {key} image in this session, so nothing to register."
        elif present:
            text = (f"{ses.name}: the raw dataset has a {key} image but OUTPUT_DIR has no {key} registered to the T1w "
                    "(its stage was skipped or failed; see the messages).")
        else:
            text = f"{ses.name}: no {key} registered to the T1w in OUTPUT_DIR (no {key} image, or its stage failed)."
        return _block(anchor, heading, _note(text))
    if not (t1w.exists() and mask.exists()):
        return _block(anchor, heading, _note(f"{ses.name}: no preprocessed T1w or brain mask to draw on."))
    reference = nb.load(t1w)
    if isinstance(after, tuple):
        moving, after_image = after
        before = figures.header_resample(moving, reference)
        what = f"the {_MOVING[key]} (from {raw.name})"
    elif raw is None:
        return _block(anchor, heading, _note(f"{ses.name}: no {key} flicker: {reason}.") + _figure(
            out.svg(f"{ses.prefix}_desc-coreg{key}", figures.contours_svg(
                nb.load(after), [(nb.load(contour), "r")], bbox=nb.load(mask), name=f"{ses.prefix}-coreg{key}")),
            f"{key} on the T1w grid after registration, with the T1w's white-matter outline (red)."))
    else:
        before, after_image, what = figures.header_resample(nb.load(raw), reference), nb.load(after), f"the {key}"
    svg = figures.flicker_svg(before, after_image, contour=nb.load(contour), bbox=nb.load(mask),
                              name=f"{ses.prefix}-coreg{key}", labels=(f"{key} before", f"{key} after"))
    src = out.svg(f"{ses.prefix}_desc-coreg{key}", svg)
    outline = "white-matter" if contour == wm else "brain-mask"
    caption = (f"Before: {what} placed on the T1w grid by its header only. After: resampled through the registration. "
               f"Red: the T1w's {outline} outline; after registration the anatomy should sit on it.")
    return _block(anchor, heading, _figure(src, caption, flicker=True))


def _comparison_block(ses: _Session, target: str, out: _Figures) -> str:
    """Synthetic against acquired FLAIR or DVR with their difference; or the one that exists, and why."""
    anchor, heading = f"{ses.anchor}-synth-{target}", f"Synthetic and acquired {target}"
    if target == "FLAIR":
        acquired = ses.path("anat", "FLAIR", desc="preproc")
        synthetic = ses.path("anat", "FLAIR", desc="synth")
    else:
        acquired = ses.path("pet", "mimap", trc="PIB", model="Logan", meas="DVR")
        synthetic = ses.path("pet", "mimap", trc="PIB", desc="synth", meas="DVR")
    mask = ses.path("anat", "mask", desc="brain")
    if not mask.exists():
        return _block(anchor, heading, _note(f"{ses.name}: no brain mask to draw on."))
    source = "PET" if target == "DVR" else "FLAIR image"
    if acquired.exists() and synthetic.exists():
        model = _sidecar(synthetic).get("Model", {}).get("Name", "the model")
        src = out.png(f"{ses.prefix}_desc-synth{target}", lambda path: figures.comparison_png(
            nb.load(acquired), nb.load(synthetic), path, mask=nb.load(mask), name=target, standardise=target == "FLAIR"))
        units = ("both z-scored in the brain, as the metrics compare them, since FLAIR intensities have no unit"
                 if target == "FLAIR" else "in DVR units, on one scale")
        return _block(anchor, heading, _figure(src, (
            f"Rows: acquired {target}, synthetic {target} ({model}), synthetic - acquired ({units}; red: synthetic "
            "higher, blue: lower). Structure in the difference (lesions, a tissue boundary) is what the model "
            "misses.")))
    if synthetic.exists():
        model = _sidecar(synthetic).get("Model", {}).get("Name", "the model")
        src = out.png(f"{ses.prefix}_desc-synth{target}", lambda path: figures.mosaic_png(
            nb.load(synthetic), path, mask=nb.load(mask), title=f"{ses.name}: synthetic {target} ({model})",
            cmap="gray" if target == "FLAIR" else "magma", colorbar_label=target))
        return _block(anchor, heading, _note(f"{ses.name}: no acquired {source}, so the synthetic {target} is shown "
                                             "alone (no difference image).") + _figure(src, (
            f"Synthetic {target} ({model}) on the T1w grid. Lesions should be bright and the CSF dark.")
            if target == "FLAIR" else f"Synthetic {target} ({model}) on the T1w grid."))
    if acquired.exists():
        return _block(anchor, heading, _note(f"{ses.name}: no synthetic {target} (no {target} model could run on this "
                                             "session's inputs; see the messages), so no comparison."))
    return _block(anchor, heading, _note(f"{ses.name}: neither an acquired nor a synthetic {target}."))


def _maps_block(ses: _Session, out: _Figures) -> str:
    """FA and DVR mosaics (acquired and synthetic DVR on one scale)."""
    mask = ses.path("anat", "mask", desc="brain")
    parts = []
    fa = ses.path("dwi", "dwimap", model="DTI", param="FA")
    if fa.exists() and mask.exists():
        src = out.png(f"{ses.prefix}_desc-FA", lambda path: figures.mosaic_png(
            nb.load(fa), path, mask=nb.load(mask), title=f"{ses.name}: FA", cmap="viridis", limits=(0.0, 1.0),
            colorbar_label="FA"))
        parts.append(_figure(src, "Fractional anisotropy on the T1w grid (0-1). White-matter tracts should be bright "
                                  "and follow the anatomy; a misregistered DWI shows bright bands off the tracts."))
    else:
        parts.append(_note(f"{ses.name}: no FA map (no DWI in this session, or its stage failed)."))
    dvrs = [(ses.path("pet", "mimap", trc="PIB", model="Logan", meas="DVR"), "acquired DVR (Logan)", "DVR"),
            (ses.path("pet", "mimap", trc="PIB", desc="pvc", model="Logan", meas="DVR"),
             "acquired DVR corrected for partial volume", "DVRpvc"),
            (ses.path("pet", "mimap", trc="PIB", desc="synth", meas="DVR"), "synthetic DVR", "DVRsynth")]
    present = [(path, name, tag) for path, name, tag in dvrs if path.exists()]
    if present and mask.exists():
        brain = np.asarray(nb.as_closest_canonical(nb.load(mask)).dataobj) > 0
        values = np.concatenate([np.asarray(nb.as_closest_canonical(nb.load(path)).dataobj)[brain]
                                 for path, _, _ in present])
        limits = (float(np.percentile(values, 2)), float(np.percentile(values, 98)))
        for path, name, tag in present:
            src = out.png(f"{ses.prefix}_desc-{tag}", lambda png, path=path, name=name: figures.mosaic_png(
                nb.load(path), png, mask=nb.load(mask), title=f"{ses.name}: {name}", cmap="magma", limits=limits,
                colorbar_label="DVR"))
            parts.append(_figure(src, f"[11C]PIB {name} on the T1w grid (every DVR map on one scale). Myelin binds "
                                      "PIB: white matter high, grey matter and CSF low, demyelinated lesions low."))
    if not any(name.startswith("acquired") for _, name, _ in present):
        parts.append(_note(f"{ses.name}: no acquired DVR (no PET in this session, or the PET stage failed)."))
    if not any(name.startswith("synthetic") for _, name, _ in present):
        parts.append(_note(f"{ses.name}: no synthetic DVR (no DVR model could run on this session's inputs)."))
    return _block(f"{ses.anchor}-maps", "FA and DVR maps", "".join(parts))


def _saliency_block(ses: _Session, out: _Figures) -> str:
    anchor = f"{ses.anchor}-saliency"
    maps = sorted(ses.folder.glob("*/*_saliency.nii.gz"))
    t1w, mask = ses.path("anat", "T1w", desc="preproc"), ses.path("anat", "mask", desc="brain")
    if not maps:
        return _block(anchor, "Saliency maps", _note(f"{ses.name}: no saliency map (they are written only when "
                                                     "--saliency is given)."))
    if not (t1w.exists() and mask.exists()):
        return _block(anchor, "Saliency maps", _note(f"{ses.name}: no T1w or brain mask to draw the maps on."))
    parts = []
    for path in maps:
        desc = re.search(r"_desc-([A-Za-z0-9]+)_", path.name)
        tag = desc.group(1) if desc else path.name.split(".")[0]
        target = "DVR" if "/pet/" in path.as_posix() else "FLAIR"
        src = out.png(f"{ses.prefix}_desc-saliency{target}{tag}", lambda png, path=path, tag=tag: figures.overlay_png(
            nb.load(t1w), nb.load(path), png, mask=nb.load(mask), title=f"{ses.name}: {target} {tag}"))
        description = _sidecar(path).get("Description", "")
        parts.append(_figure(src, f"{target} model, {tag}: {description} Shown above its median in the brain."))
    return _block(anchor, "Saliency maps", "".join(parts))


def _table_block(anchor: str, heading: str, tables: Sequence[tuple[Path, str]], absent: str) -> str:
    parts = []
    for path, title in tables:
        if path.exists():
            frame = read_tsv(path)
            body = html_table(frame) if not frame.empty else _note(f"{path.name} has no row.")
            parts.append(f'<h4>{html.escape(title)}</h4><p class="path">{html.escape(path.name)}</p>'
                         f'<div class="scroll">{body}</div>')
        else:
            parts.append(_note(absent.format(title=title, name=path.name)))
    return _block(anchor, heading, "".join(parts))


def _lesion_table_block(ses: _Session) -> str:
    stats = ses.tsv("anat", "stats", label="lesion")
    if stats.exists():
        return _table_block(f"{ses.anchor}-lesions", "Lesion table", [(stats, "Lesions (one row per connected "
                                                                              "lesion)")], "")
    lesion = ses.path("anat", "mask", label="lesion")
    why = ("the lesion mask exists but no table was written" if lesion.exists() else
           "no lesion mask (none given and no FLAIR, acquired or synthetic)")
    return _block(f"{ses.anchor}-lesions", "Lesion table", _note(f"{ses.name}: no lesion table: {why}."))


def _metrics_block(ses: _Session) -> str:
    flair = ses.tsv("anat", "metrics", desc="synthFLAIR")
    dvr = ses.tsv("pet", "metrics", trc="PIB", desc="synthDVR")
    return _table_block(
        f"{ses.anchor}-metrics", "Synthesis metrics",
        [(flair, "Synthetic against acquired FLAIR"), (dvr, "Synthetic against acquired DVR, per region")],
        f"{ses.name}: no {{name}}: the metrics need both an acquired and a synthetic image ({{title}}).")


def _session_section(ses: _Session, out: _Figures, raw_root: Path | None) -> str:
    blocks = [_brain_mask_block(ses, out), _tissues_block(ses, out)]
    blocks += [_coregistration_block(ses, key, out, raw_root) for key in COREGISTERED]
    blocks += [_comparison_block(ses, "FLAIR", out), _comparison_block(ses, "DVR", out), _maps_block(ses, out),
               _saliency_block(ses, out), _lesion_table_block(ses), _metrics_block(ses)]
    return "\n".join(blocks)


# ------------------------------------------------------------------------------------------ participant sections
def _models_used(sessions: Sequence[_Session]) -> dict[str, dict]:
    """Model name → its synthesis sidecar's ``Model`` record, for every synthetic image of the participant."""
    models: dict[str, dict] = {}
    for ses in sessions:
        for path in sorted(ses.folder.glob("*/*_desc-synth_*.nii.gz")):
            record = _sidecar(path).get("Model", {})
            if record.get("Name"):
                models.setdefault(record["Name"], record)
    return models


def _card_path(record: dict, output_dir: Path) -> Path | None:
    """The model card of a sidecar's ``Model``: in its ``Folder`` (absolute, or relative to OUTPUT_DIR), else among
    the shipped weights."""
    candidates = []
    if record.get("Folder"):
        folder = Path(str(record["Folder"]).removeprefix("file://"))
        candidates.append(folder if folder.is_absolute() else output_dir / folder)
    candidates.append(Path(__file__).resolve().parents[1] / "models" / "weights" / record.get("Name", ""))
    return next((folder / "model_card.json" for folder in candidates if (folder / "model_card.json").is_file()), None)


def _card_rows(card: dict) -> pd.DataFrame:
    """The fields of a model card a reader checks, as (field, value) rows."""
    training = card.get("training", {}) or {}
    folds = training.get("cv") or []
    scores = {metric: np.mean([fold[metric] for fold in folds if isinstance(fold.get(metric), int | float)])
              for metric in ("mse", "psnr", "ssim") if any(metric in fold for fold in folds)}
    stages = card.get("stages") or []
    architecture = card.get("architecture") or " -> ".join(
        f"{stage.get('name', '?')} ({(stage.get('network') or {}).get('architecture', '?')})" for stage in stages)
    output = card.get("output") or card.get("target")
    rows = [
        ("task", card.get("task") or (f"{output} synthesis" if output else None)),
        ("inputs", " + ".join(card.get("inputs", []))), ("output", output),
        ("architecture", architecture), ("voxel size (mm)", card.get("voxel_size_mm")),
        ("training data", training.get("data_source")), ("data licence", training.get("data_license")),
        ("training sessions", training.get("n_sessions")), ("epochs", training.get("epochs")),
        ("cross-validation", ", ".join(f"{metric} {value:.3g}" for metric, value in scores.items()) +
         (f" (mean of {len(folds)} folds)" if folds else "") if scores else None),
        ("created", card.get("created")), ("msynth version", (card.get("versions") or {}).get("msynth")),
    ]
    return pd.DataFrame([(name, "n/a" if value in (None, "") else str(value)) for name, value in rows],
                        columns=["field", "value"])


def _models_section(sessions: Sequence[_Session], output_dir: Path) -> str:
    models = _models_used(sessions)
    if not models:
        return _note("No synthetic image in OUTPUT_DIR, so no model was used.")
    parts = []
    for name, record in models.items():
        card_path = _card_path(record, output_dir)
        if card_path is None:
            parts.append(f"<h3>{html.escape(name)}</h3>" + _note(
                f"{name}: its model card was not found (Folder {record.get('Folder', 'n/a')} in the sidecar, nor "
                "among the shipped weights)."))
            continue
        try:
            card = json.loads(card_path.read_text())
        except (OSError, ValueError) as err:
            parts.append(f"<h3>{html.escape(name)}</h3>" + _note(f"{card_path}: unreadable model card ({err})."))
            continue
        parts.append(f"<h3>{html.escape(name)}</h3><p class=\"path\">{html.escape(str(card_path))}</p>"
                     + html_table(_card_rows(card), wrap=True))
    return "".join(parts)


#: A line of msynth's log file: ``2026-12-07 19:29:54,285 msynth.runner INFO: message``.
_LOG_LINE = re.compile(r"^(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)[,.]\d+ (?P<logger>\S+) (?P<level>[A-Z]+): "
                       r"(?P<message>.*)$")


def log_messages(log_file: Path, label: str) -> list[tuple[str, str]]:
    """``(level, message)`` of the participant's warnings, errors and skipped stages in one run log.

    The participant's block runs from its first line naming ``sub-<label>`` to its ``finished``/``failed`` line
    (participants run one after another); inside it, a line naming another participant is left out, and a line
    naming none (a node's message about one of its files) is kept. INFO lines are kept when they say that something
    was skipped.
    """
    own = re.compile(rf"\bsub-{re.escape(label)}(?![A-Za-z0-9])")
    other = re.compile(r"\bsub-[A-Za-z0-9]+")
    messages, inside = [], False
    for line in log_file.read_text(errors="replace").splitlines():
        match = _LOG_LINE.match(line)
        if not match:
            continue
        message, level = match["message"], match["level"]
        mine = bool(own.search(message))
        inside = inside or mine
        if not inside:
            continue
        if not mine and other.search(message):
            continue
        if level in ("WARNING", "ERROR", "CRITICAL") or (level == "INFO" and "skipped" in message):
            messages.append((level, message))
        if mine and match["logger"] == "msynth.runner" and re.search(rf"sub-{re.escape(label)} (finished|failed|not "
                                                                    r"processed)", message):
            break
    return list(dict.fromkeys(messages))


def newest_participant_log(output_dir: Path) -> Path | None:
    """The log of the newest run that ran the participant level: a group or ``--reports-only`` run, whose
    configuration (``msynth-<run>_config.json`` beside its log) says so, holds none of its messages."""
    for log in sorted((output_dir / "logs").glob("msynth-*.log"), reverse=True):
        settings = _sidecar(log.with_name(f"{log.stem}_config.json"))  # the JSON itself, or {}
        if settings.get("analysis_level", "participant") == "participant" and not settings.get("reports_only"):
            return log
    return None


def _messages_section(output_dir: Path, label: str, failure: str | None,
                      skipped: Sequence[tuple[str | None, str]]) -> str:
    parts = []
    if failure:
        parts.append(_note(f"sub-{label} FAILED: {failure}"))
    for session, reason in skipped:
        parts.append(_note(f"sub-{label}{f' ses-{session}' if session else ''} SKIPPED: {reason}"))
    crashes = sorted((output_dir / f"sub-{label}" / "log").glob("*/*.txt"))
    if crashes:
        parts.append("<p>Crash reports (newest run last):</p><ul>" + "".join(
            f'<li class="message">{html.escape(path.relative_to(output_dir).as_posix())}</li>' for path in crashes)
            + "</ul>")
    log_file = newest_participant_log(output_dir)
    if log_file is None:
        parts.append(_note("No run log in OUTPUT_DIR/logs, so the stages' warnings cannot be listed."))
    else:
        messages = log_messages(log_file, label)
        parts.append(f"<p>From the newest run log, logs/{html.escape(log_file.name)}: warnings, errors and skipped "
                     f"stages of sub-{html.escape(label)}.</p>")
        parts.append("<ul>" + "".join(f'<li class="message">{html.escape(level)}: {html.escape(message)}</li>'
                                      for level, message in messages) + "</ul>" if messages else
                     "<p>No warning, no error and no skipped stage was logged for this participant.</p>")
    return "".join(parts)


def _methods_section(methods: str) -> str:
    if not methods.strip():
        return _note("No methods text was provided (the report was rebuilt without the workflow; run the "
                     "participant level to get it).")
    head, _, tail = methods.partition(f"\n\n{REFERENCES_HEADING}\n\n")
    text = paragraphs_html(head)
    if tail:
        items = [re.sub(r"^\[\d+\]\s*", "", block.strip()) for block in tail.split("\n\n") if block.strip()]
        text += f"<h3>{REFERENCES_HEADING}</h3><ol>" + "".join(f"<li>{html.escape(item)}</li>" for item in items)
        text += "</ol>"
    return text


def _summary_section(label: str, sessions: Sequence[_Session], failure: str | None,
                     skipped: Sequence[tuple[str | None, str]]) -> str:
    names = ", ".join(f"ses-{ses.session}" for ses in sessions if ses.session) or (
        "one (no session level)" if sessions else "none")
    parts = [f"<p>Participant sub-{html.escape(label)}; sessions with derivatives: {html.escape(names)}.</p>"]
    if failure:
        parts.append(_note(f"This participant failed: {failure}. Sections below show what was written before, if "
                           "anything."))
    if skipped:
        parts.append(_note("Sessions left out: " + "; ".join(
            f"{f'ses-{session}' if session else 'the session'}: {reason}" for session, reason in skipped)))
    if not sessions:
        parts.append(_note(f"No derivative of sub-{label} in OUTPUT_DIR: there is nothing to show."))
    return "".join(parts)


def build_participant_report(output_dir: Path, label: str, *, methods: str = "", failure: str | None = None,
                             skipped: Sequence[tuple[str | None, str]] = ()) -> Path:
    """Write ``OUTPUT_DIR/sub-<label>.html`` and its figures in ``OUTPUT_DIR/sub-<label>/figures/``.

    Parameters
    ----------
    output_dir : pathlib.Path
        The derivatives folder of the participant level (``OUTPUT_DIR``).
    label : str
        The participant label, without ``sub-``.
    methods : str
        The methods text (:func:`workflow_methods`); the report says when there is none.
    failure : str, optional
        The participant's one-line failure reason, shown at the top and with the messages.
    skipped : sequence of (session, reason)
        The sessions left out and why.

    Returns
    -------
    pathlib.Path
        The written page (atomically; figures that an earlier build wrote and this one did not are removed).
    """
    output_dir = Path(output_dir)
    label = label.removeprefix("sub-")
    sessions = _sessions(output_dir, label)
    raw_root = _raw_root(output_dir)
    out = _Figures(output_dir, label)
    sections = [("summary", "Summary", _summary_section(label, sessions, failure, skipped))]
    for ses in sessions:
        heading = f"Session {ses.session}" if ses.session else "Session"
        sections.append((ses.anchor, heading, _session_section(ses, out, raw_root)))
    sections += [
        ("models", "Models used", _models_section(sessions, output_dir)),
        ("messages", "Errors and skipped stages", _messages_section(output_dir, label, failure, skipped)),
        ("methods", "Methods", _methods_section(methods)),
    ]
    out.remove_stale()
    if not out.written:
        shutil.rmtree(out.folder, ignore_errors=True)
    page = output_dir / f"sub-{label}.html"
    atomic_write_text(page, html_page(f"msynth: sub-{label}", sections), keep_identical=True)
    return page
