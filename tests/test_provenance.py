"""Provenance of the outputs: the device used, portable names of the files used, versions, and table identifiers."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pandas as pd
import pytest

import msynth
from msynth.analysis.group_tables import DICTIONARIES, group_tables
from msynth.pipelines.masks import init_masks_wf
from msynth.utils.derivatives import dataset_links, lesion_mask_uri, table_ids, write_dataset_description
from msynth.utils.lesion_masks import GivenLesionMask
from msynth.utils.provenance import OUT_OF_MEMORY_WARNING, cpu_fallbacks, model_reference, with_ids

SUB, SES = "MS01", "01"
STEM = f"sub-{SUB}_ses-{SES}"
WEIGHTS = Path(msynth.__file__).resolve().parent / "models" / "weights"


def _strings(value: object) -> Iterator[str]:
    """Every string of a JSON document."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


def _torch_device() -> str:
    """The device ``--device auto`` resolves to here, asked in a child process (this one must not import torch)."""
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True, check=True)
    return "cuda" if probe.stdout.strip() == "True" else "cpu"


def _sidecar(out: Path, datatype: str, name: str) -> dict:
    return json.loads((out / f"sub-{SUB}" / f"ses-{SES}" / datatype / f"{STEM}_{name}.json").read_text())


def test_synthesis_sidecars_record_the_device_used_model_and_versions(phantom_participants):
    _, out, _ = phantom_participants
    device = _torch_device()
    for datatype, name, model in (("anat", "space-T1w_desc-synth_FLAIR", "flair-fcn-phantom"),
                                  ("pet", "trc-PIB_space-T1w_desc-synth_meas-DVR_mimap", "dvr-refiner-cgan-phantom")):
        sidecar = _sidecar(out, datatype, name)
        assert sidecar["Inference"]["Device"] == device and sidecar["Inference"]["RequestedDevice"] == "auto"
        assert sidecar["Inference"]["OutOfMemoryFallback"] is False
        assert sidecar["Model"]["Folder"] == f"msynth/models/weights/{model}"
        weights = {name: hashlib.sha256((WEIGHTS / model / name).read_bytes()).hexdigest()
                   for name in sidecar["Model"]["WeightsSHA256"]}
        assert weights == sidecar["Model"]["WeightsSHA256"] and len(weights) == len(sidecar["Model"]["Stages"])
        assert sidecar["Software"] == {"msynth": msynth.__version__, "torch": version("torch"),
                                       "MONAI": version("monai")}


def test_no_sidecar_holds_an_absolute_path(phantom_participants):
    cohort, out, _ = phantom_participants
    sidecars = sorted(out.glob("sub-*/**/*.json"))
    assert len(sidecars) > 40
    for sidecar in sidecars:
        for text in _strings(json.loads(sidecar.read_text())):
            assert not text.startswith("/") and str(out) not in text and str(cohort.bids_dir) not in text, sidecar


def test_every_table_starts_with_its_participant_and_session(phantom_participants):
    _, out, _ = phantom_participants
    tables = sorted(out.glob("sub-*/**/*.tsv"))
    assert {path.name.split("_", 2)[2] for path in tables} == {
        "space-T1w_label-lesion_stats.tsv", "space-T1w_desc-synthFLAIR_metrics.tsv",
        "trc-PIB_space-T1w_desc-synthDVR_metrics.tsv"}
    assert len(tables) == 6  # two participants
    for path in tables:
        table = pd.read_csv(path, sep="\t", dtype=str)
        subject, session = path.name.split("_")[:2]
        assert list(table.columns[:2]) == ["participant_id", "session_id"] and len(table) >= 1
        assert set(table["participant_id"]) == {subject} and set(table["session_id"]) == {session}
        dictionary = json.loads(path.with_suffix(".json").read_text())
        assert set(table.columns) <= set(dictionary), path.name


def test_dataset_description_names_the_software_and_the_raw_dataset(phantom_participants):
    cohort, out, _ = phantom_participants
    description = json.loads((out / "dataset_description.json").read_text())
    assert [(entry["Name"], entry["Version"]) for entry in description["GeneratedBy"]] == [
        ("msynth", msynth.__version__), ("ANTsPy", version("antspyx")), ("torch", version("torch"))]
    assert description["DatasetLinks"] == {"raw": cohort.bids_dir.resolve().as_uri()}


@pytest.fixture(scope="module")
def given_mask(phantom_participants) -> GivenLesionMask:
    """The phantom's FLAIR lesion mask of sub-MS01 ses-01 (in the raw dataset's derivatives/)."""
    cohort = phantom_participants[0]
    anat = cohort.bids_dir / f"sub-{SUB}" / f"ses-{SES}" / "anat"
    mask = cohort.lesion_dir / f"sub-{SUB}" / f"ses-{SES}" / "anat" / f"{STEM}_space-FLAIR_label-lesion_mask.nii.gz"
    return GivenLesionMask(mask=mask, drawn_on="FLAIR", image=anat / f"{STEM}_FLAIR.nii.gz")


def _mask_sources(bids_dir: Path, given: GivenLesionMask, tmp_path: Path) -> list[str]:
    t1w = bids_dir / f"sub-{SUB}" / f"ses-{SES}" / "anat" / f"{STEM}_T1w.nii.gz"
    workflow = init_masks_wf(t1w=t1w, bids_dir=bids_dir, output_dir=tmp_path, lesion_source="given", given=given)
    return workflow.get_node("ds_lesion_mask").inputs.metadata["Sources"]


def test_given_lesion_mask_inside_the_dataset_is_named_in_it(phantom_participants, given_mask, tmp_path):
    bids_dir = phantom_participants[0].bids_dir
    folder = given_mask.mask.relative_to(bids_dir).parts[:2]
    assert folder[0] == "derivatives"
    assert _mask_sources(bids_dir, given_mask, tmp_path) == [
        f"bids:raw:sub-{SUB}/ses-{SES}/anat/{STEM}_T1w.nii.gz",
        f"bids:raw:derivatives/{folder[1]}/sub-{SUB}/ses-{SES}/anat/{given_mask.mask.name}",
        f"bids:raw:sub-{SUB}/ses-{SES}/anat/{STEM}_FLAIR.nii.gz",
    ]


def test_given_lesion_mask_outside_the_dataset_gets_its_own_link(phantom_participants, given_mask, tmp_path):
    bids_dir = phantom_participants[0].bids_dir
    masks = tmp_path / "masks"
    mask = masks / given_mask.mask.relative_to(given_mask.mask.parents[3])
    mask.parent.mkdir(parents=True)
    shutil.copyfile(given_mask.mask, mask)
    given = GivenLesionMask(mask=mask, drawn_on="FLAIR", image=given_mask.image)
    assert _mask_sources(bids_dir, given, tmp_path / "out")[1] == f"bids:lesions:sub-{SUB}/ses-{SES}/anat/{mask.name}"
    assert lesion_mask_uri(bids_dir, mask).startswith("bids:lesions:")
    assert dataset_links(bids_dir, masks) == {"raw": bids_dir.resolve().as_uri(), "lesions": masks.resolve().as_uri()}
    assert dataset_links(bids_dir, phantom_participants[0].lesion_dir) == {"raw": bids_dir.resolve().as_uri()}
    write_dataset_description(tmp_path / "out", bids_dir, masks)
    write_dataset_description(tmp_path / "out", bids_dir)  # a later run (the group level) keeps the link
    links = json.loads((tmp_path / "out" / "dataset_description.json").read_text())["DatasetLinks"]
    assert links == {"raw": bids_dir.resolve().as_uri(), "lesions": masks.resolve().as_uri()}


def test_model_reference_of_a_shipped_and_of_a_user_model(tmp_path):
    assert model_reference(WEIGHTS / "flair-fcn-phantom") == "msynth/models/weights/flair-fcn-phantom"
    assert model_reference(tmp_path / "my-model") == "my-model"


def test_cpu_fallbacks_are_recorded_and_still_warned():
    with pytest.warns(RuntimeWarning) as warned:
        with cpu_fallbacks() as fallbacks:
            warnings.warn(f"{OUT_OF_MEMORY_WARNING} with (96, 96, 96) windows; predicting on the CPU instead",
                          RuntimeWarning, stacklevel=1)
            warnings.warn("an unrelated warning", RuntimeWarning, stacklevel=1)
    assert fallbacks == [f"{OUT_OF_MEMORY_WARNING} with (96, 96, 96) windows; predicting on the CPU instead"]
    assert [str(w.message) for w in warned] == [fallbacks[0], "an unrelated warning"]
    with cpu_fallbacks() as none:
        pass
    assert none == []


def test_table_ids_without_sessions():
    ids = table_ids(Path("sub-02/anat/sub-02_T1w.nii.gz"))
    assert ids == {"participant_id": "sub-02"}
    table = with_ids(pd.DataFrame({"lesion": [1, 2]}), ids)
    assert table.columns.tolist() == ["participant_id", "lesion"] and table["participant_id"].tolist() == ["sub-02"] * 2


def test_bland_altman_points_name_the_session():
    """Per-session points carry ``ses-<S>``, per-patient indices ``n/a``, in the dictionary's column order."""
    rows = []
    for number, (acquired, synthetic) in enumerate(((1.0, 1.1), (1.2, 1.1), (0.9, 1.0)), start=1):
        participant = f"sub-MS0{number}"
        for source, dvr, pct in (("acquired", acquired, 10.0 * number), ("model", synthetic, 11.0 * number)):
            rows += [(participant, "01", source, "dvr_lesion_t0", dvr, ""),
                     (participant, "", source, "pct_demyelinated_t0", pct, "")]
        rows.append((participant, "01", "", "t2_lesion_load_mm3", 100.0 * number, ""))
    measures = pd.DataFrame(rows, columns=["participant_id", "session", "source", "quantity", "value", "note"])
    cohort = pd.DataFrame({"participant_id": [f"sub-MS0{n}" for n in (1, 2, 3)], "group": "MS", "age": [30, 40, 50],
                           "sex": ["F", "M", "F"], "edss_t0": [1.0, 2.0, 3.0], "n_sessions": 1})
    points = group_tables(measures, cohort)["bland_altman_points"]
    assert points.columns.tolist() == list(DICTIONARIES["bland_altman_points"])
    per_session = points[points["quantity"] == "dvr_lesion_t0"]
    assert per_session["session_id"].tolist() == ["ses-01"] * 3
    assert points.loc[points["quantity"] == "pct_demyelinated_t0", "session_id"].isna().all()
