"""BIDS-Derivatives bookkeeping: dataset description, .bidsignore, file names, whole-or-nothing writes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from bids.layout import parse_file_entities

import msynth

#: Entity order of derivative names; ``from/to/mode`` name transforms, ``model/param/meas`` parametric maps.
ENTITY_ORDER: tuple[str, ...] = (
    "sub", "ses", "acq", "ce", "trc", "rec", "dir", "run",
    "from", "to", "mode", "space", "res", "den", "label", "desc", "model", "param", "meas",
)
#: pybids entity names of the source file that a derivative keeps, as short BIDS keys.
_SOURCE_ENTITIES = {
    "subject": "sub", "session": "ses", "acquisition": "acq", "ceagent": "ce",
    "tracer": "trc", "reconstruction": "rec", "direction": "dir", "run": "run",
}

#: Names BIDS has not adopted yet (transforms, DTI and PET parametric maps) and the per-participant
#: crash-report folder of Nipype: the validator is told to leave them alone, nothing else.
BIDSIGNORE = """\
*_xfm.mat
*_dwimap.nii.gz
*_dwimap.json
*_mimap.nii.gz
*_mimap.json
*_desc-CSFdistance_map.nii.gz
*_desc-CSFdistance_map.json
*_label-lesion_stats.tsv
*_label-lesion_stats.json
*_desc-synthFLAIR_metrics.tsv
*_desc-synthFLAIR_metrics.json
*_desc-synthDVR_metrics.tsv
*_desc-synthDVR_metrics.json
*_saliency.nii.gz
*_saliency.json
*_desc-demyelinated_mask.nii.gz
*_desc-demyelinated_mask.json
*_desc-synthdemyelinated_mask.nii.gz
*_desc-synthdemyelinated_mask.json
group
sub-*/log
"""

DERIVATIVES_README = """\
msynth derivatives of {source}

Per participant and session (sub-<L>/ses-<S>/), in space-T1w (the voxel grid of the raw T1w):
brain mask, bias-corrected images, transforms to the T1w, tissue and lesion masks, DTI and PET maps,
and the synthetic FLAIR and [11C]PIB DVR maps, each with a JSON sidecar naming its sources and the
parameters used. logs/ holds each run's configuration and log; sub-<L>/log/ holds crash reports.
Stages whose inputs were missing are listed in the run's log with the reason they were skipped.
"""

BIDS_VERSION = "1.10.0"
CODE_URL = "https://github.com/msynth/msynth"


def source_entities(source_file: Path | str) -> dict[str, str]:
    """The entities of a raw file that its derivatives carry (subject, session, acq, trc, run …)."""
    parsed = parse_file_entities(str(source_file))
    return {short: str(parsed[name]) for name, short in _SOURCE_ENTITIES.items() if name in parsed}


def derivative_name(entities: dict[str, str], suffix: str, extension: str) -> str:
    """Build a BIDS file name from entities in the canonical order.

    >>> derivative_name({"space": "T1w", "sub": "01", "desc": "brain"}, "mask", ".nii.gz")
    'sub-01_space-T1w_desc-brain_mask.nii.gz'
    """
    unknown = set(entities) - set(ENTITY_ORDER)
    if unknown:
        raise ValueError(f"unknown entities {sorted(unknown)}; known: {ENTITY_ORDER}")
    parts = [f"{key}-{entities[key]}" for key in ENTITY_ORDER if entities.get(key)]
    return "_".join(parts + [suffix]) + extension


def derivative_path(entities: dict[str, str], datatype: str, suffix: str, extension: str) -> Path:
    """Relative path of a derivative: ``sub-<L>/[ses-<S>/]<datatype>/<name>``."""
    folder = Path(f"sub-{entities['sub']}")
    if entities.get("ses"):
        folder /= f"ses-{entities['ses']}"
    return folder / datatype / derivative_name(entities, suffix, extension)


def bids_uri(bids_dir: Path, path: Path, dataset_name: str = "raw") -> str:
    """A BIDS URI (``bids:raw:sub-01/anat/…``) for a file of a linked dataset."""
    return f"bids:{dataset_name}:{Path(path).relative_to(bids_dir).as_posix()}"


def write_dataset_description(output_dir: Path, bids_dir: Path) -> None:
    """Write the derivatives' ``dataset_description.json`` and ``.bidsignore`` (atomically)."""
    raw = _read_json(bids_dir / "dataset_description.json")
    source = {"URL": bids_dir.resolve().as_uri()}
    for key in ("DatasetDOI", "Version"):
        if key in raw:
            source["DOI" if key == "DatasetDOI" else "Version"] = raw[key]
    description = {
        "Name": f"msynth derivatives of {raw.get('Name', bids_dir.name)}",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "msynth", "Version": msynth.__version__, "CodeURL": CODE_URL}],
        "SourceDatasets": [source],
        "DatasetLinks": {"raw": bids_dir.resolve().as_uri()},
        "HowToAcknowledge": "Cite msynth and the methods listed in each file's sidecar.",
    }
    atomic_write_text(output_dir / "dataset_description.json", json.dumps(description, indent=2) + "\n")
    atomic_write_text(output_dir / ".bidsignore", BIDSIGNORE)
    atomic_write_text(output_dir / "README", DERIVATIVES_README.format(source=bids_dir.resolve()))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file so that readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_copy(source: Path, target: Path) -> None:
    """Copy a file into place through a temporary name in the target folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def publish_staged(staging_dir: Path, output_dir: Path) -> list[Path]:
    """Move every file of a finished participant from its staging folder into the derivatives.

    Staging lives inside ``output_dir``, so each move is an atomic rename on one file system; a
    participant whose workflow failed is never published and keeps its previous outputs.
    """
    published = []
    for source in sorted(p for p in staging_dir.rglob("*") if p.is_file()):
        target = output_dir / source.relative_to(staging_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        published.append(target)
    shutil.rmtree(staging_dir, ignore_errors=True)
    return published
