"""The BIDS query layer: default queries, claimed files, filter-file overrides, reports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from msynth.utils.bids import collect_session, load_filter_file, open_layout, report_session
from msynth.utils.derivatives import derivative_name, derivative_path, source_entities
from msynth.utils.errors import UsageError

from conftest import write_tiny_bids


@pytest.fixture
def multimodal_bids(tmp_path: Path) -> Path:
    """sub-01 ses-1 with T1w (two acquisitions), T1SE, T2w, DIR and FLAIR, all copies of the T1w."""
    root = write_tiny_bids(tmp_path / "bids", {"01": ["1"]})
    anat = root / "sub-01" / "ses-1" / "anat"
    t1w = anat / "sub-01_ses-1_T1w.nii.gz"
    for name in ("acq-MPRAGE_T1w", "acq-SE_T1w", "T2w", "acq-DIR_T2w", "FLAIR"):
        shutil.copy(t1w, anat / f"sub-01_ses-1_{name}.nii.gz")
        (anat / f"sub-01_ses-1_{name}.json").write_text(json.dumps({"RepetitionTime": 3.0}))
    return root


def _names(files: dict[str, Path]) -> dict[str, str]:
    return {key: path.name for key, path in files.items()}


def test_default_queries_separate_t1se_and_dir(multimodal_bids):
    data = collect_session(open_layout(multimodal_bids), "01", "1", load_filter_file(None))
    assert _names(data.files) == {
        "T1w": "sub-01_ses-1_T1w.nii.gz",
        "T2w": "sub-01_ses-1_T2w.nii.gz",
        "FLAIR": "sub-01_ses-1_FLAIR.nii.gz",
        "T1SE": "sub-01_ses-1_acq-SE_T1w.nii.gz",
        "DIR": "sub-01_ses-1_acq-DIR_T2w.nii.gz",
    }
    assert [p.name for p in data.extra_runs["T1w"]] == ["sub-01_ses-1_acq-MPRAGE_T1w.nii.gz"]
    assert data.missing == ["PDw", "MTR", "DWI", "PET"]
    assert data.metadata["FLAIR"]["RepetitionTime"] == 3.0
    assert report_session(data).endswith("missing: PDw MTR DWI PET")


def test_filter_file_overrides_one_modality(multimodal_bids, tmp_path):
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"T1w": {"acquisition": "MPRAGE"}, "FLAIR": {"acquisition": None}}))
    data = collect_session(open_layout(multimodal_bids), "01", "1", load_filter_file(filters))
    assert data.files["T1w"].name == "sub-01_ses-1_acq-MPRAGE_T1w.nii.gz"
    assert "T1w" not in data.extra_runs
    assert data.files["FLAIR"].name == "sub-01_ses-1_FLAIR.nii.gz"


def test_filter_file_with_an_unknown_entity(multimodal_bids, tmp_path):
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"T2w": {"flavour": "dark"}}))
    with pytest.raises(UsageError, match=r"^the query for T2w is invalid .*flavour.* — check --bids-filter-file$"):
        collect_session(open_layout(multimodal_bids), "01", "1", load_filter_file(filters))


def test_filter_file_must_be_an_object_of_objects(tmp_path):
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"T1w": "MPRAGE"}))
    with pytest.raises(UsageError, match="must be a JSON object of objects"):
        load_filter_file(filters)


@pytest.mark.parametrize(
    ("entities", "datatype", "suffix", "expected"),
    [
        ({"sub": "01", "ses": "1", "space": "T1w", "desc": "brain"}, "anat", "mask",
         "sub-01/ses-1/anat/sub-01_ses-1_space-T1w_desc-brain_mask.nii.gz"),
        ({"sub": "01", "acq": "SE", "space": "T1w", "desc": "preproc"}, "anat", "T1w",
         "sub-01/anat/sub-01_acq-SE_space-T1w_desc-preproc_T1w.nii.gz"),
        ({"sub": "01", "ses": "2", "trc": "PIB", "space": "T1w", "model": "Logan", "meas": "DVR"}, "pet", "mimap",
         "sub-01/ses-2/pet/sub-01_ses-2_trc-PIB_space-T1w_model-Logan_meas-DVR_mimap.nii.gz"),
        ({"sub": "01", "ses": "1", "trc": "PIB", "space": "T1w", "desc": "synth", "meas": "DVR"}, "pet", "mimap",
         "sub-01/ses-1/pet/sub-01_ses-1_trc-PIB_space-T1w_desc-synth_meas-DVR_mimap.nii.gz"),
        ({"sub": "01", "ses": "1", "space": "T1w", "model": "DTI", "param": "FA"}, "dwi", "dwimap",
         "sub-01/ses-1/dwi/sub-01_ses-1_space-T1w_model-DTI_param-FA_dwimap.nii.gz"),
    ],
)
def test_derivative_names_follow_the_design_contract(entities, datatype, suffix, expected):
    assert derivative_path(entities, datatype, suffix, ".nii.gz").as_posix() == expected


def test_transform_name_and_source_entities():
    source = Path("/data/sub-07/ses-2/anat/sub-07_ses-2_acq-DIR_run-2_T2w.nii.gz")
    assert source_entities(source) == {"sub": "07", "ses": "2", "acq": "DIR", "run": "2"}
    assert derivative_name(
        {"sub": "07", "ses": "2", "from": "FLAIR", "to": "T1w", "mode": "image"}, "xfm", ".mat"
    ) == "sub-07_ses-2_from-FLAIR_to-T1w_mode-image_xfm.mat"
    with pytest.raises(ValueError, match="unknown entities"):
        derivative_name({"sub": "07", "colour": "red"}, "T1w", ".nii.gz")


def test_derivatives_keep_only_the_contract_entities_of_the_source(tmp_path):
    """A raw run-/rec- entity does not leak into DESIGN.md's names; acq/trc come from the contract."""
    import nibabel as nb
    import numpy as np

    from msynth.interfaces.bids import write_derivative

    image = tmp_path / "in.nii.gz"
    nb.save(nb.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), image)
    source = tmp_path / "sub-01_ses-1_trc-PIB_rec-ACDYN_run-1_pet.nii.gz"
    written = write_derivative(image, base_directory=tmp_path / "out", source_file=source, datatype="pet",
                               suffix="mimap", entities={"trc": "PIB", "space": "T1w", "model": "Logan", "meas": "DVR"},
                               metadata={})
    assert written.name == "sub-01_ses-1_trc-PIB_space-T1w_model-Logan_meas-DVR_mimap.nii.gz"
    assert json.loads(written.with_name(written.name.replace(".nii.gz", ".json")).read_text()) == {}


def test_omp_nthreads_is_capped_at_nprocs(tiny_bids, tmp_path):
    from msynth.cli.parser import build_parser
    from msynth.config import resolve_config

    argv = [str(tiny_bids), str(tmp_path / "out"), "participant", "--nprocs", "2", "--omp-nthreads", "4"]
    assert resolve_config(build_parser().parse_args(argv)).omp_nthreads == 2


def test_pet_frame_timing_is_checked_with_bids_inheritance(tmp_path):
    """Frame timing in a top-level sidecar counts; without it the participant fails with a clear message."""
    import nibabel as nb
    import numpy as np

    from msynth.preprocessing.checks import InputImageError
    from msynth.runner import check_inputs

    root = write_tiny_bids(tmp_path / "bids", {"01": ["1"]})
    folder = root / "sub-01" / "ses-1" / "pet"
    folder.mkdir()
    pet = folder / "sub-01_ses-1_trc-PIB_pet.nii.gz"
    t1w = nb.load(next(root.glob("sub-01/ses-1/anat/*_T1w.nii.gz")))  # a whole-brain field of view, varying values
    frames = np.random.default_rng(0).uniform(1, 2, t1w.shape + (3,)).astype(np.float32)
    nb.save(nb.Nifti1Image(frames, t1w.affine), pet)
    (folder / "sub-01_ses-1_trc-PIB_pet.json").write_text(json.dumps({"TracerName": "PIB"}))
    (root / "trc-PIB_pet.json").write_text(json.dumps({"FrameTimesStart": [0, 60, 120], "FrameDuration": [60] * 3}))
    check_inputs(collect_session(open_layout(root), "01", "1", load_filter_file(None)))

    (root / "trc-PIB_pet.json").unlink()
    with pytest.raises(InputImageError, match=r"^sub-01 ses-1: PET sidecar has no FrameTimesStart — .*_pet\.json\)$"):
        check_inputs(collect_session(open_layout(root), "01", "1", load_filter_file(None)))


@pytest.mark.parametrize(("link", "target"), [
    ("sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz", "sub-01_ses-1_T2w.nii.gz"),  # a file link to itself
    ("sub-01/ses-1/anat/loop", ".."),  # a folder link to a folder above it: pybids found 41 T1w under loop/anat/…
    ("sub-01/ses-1/anat/a.nii.gz", "b.nii.gz"),  # two links to each other
])
def test_symlink_loop_is_one_line_naming_the_link(tmp_path, link, target):
    root = write_tiny_bids(tmp_path / "bids", {"01": ["1"]})
    (root / link).symlink_to(target)
    if target == "b.nii.gz":
        (root / link).with_name("b.nii.gz").symlink_to("a.nii.gz")
    with pytest.raises(UsageError, match=r"symbolic link loop\(s\) \(a link to itself or to a folder above it\): "
                                         rf"{root / link}\b.* — remove or fix the link\(s\)$") as raised:
        open_layout(root)
    assert "\n" not in str(raised.value)


def test_links_that_do_not_loop_are_indexed(tmp_path):
    """A link to a file or folder elsewhere is data (DataLad datasets are made of links); a broken one is named
    by the image check when a query selects it."""
    root = write_tiny_bids(tmp_path / "bids", {"01": ["1"]})
    anat = root / "sub-01" / "ses-1" / "anat"
    (tmp_path / "store").mkdir()
    (anat / "sub-01_ses-1_T1w.nii.gz").rename(tmp_path / "store" / "t1w.nii.gz")
    (anat / "sub-01_ses-1_T1w.nii.gz").symlink_to(tmp_path / "store" / "t1w.nii.gz")
    (anat / "sub-01_ses-1_FLAIR.nii.gz").symlink_to("nowhere.nii.gz")
    (root / "sourcedata").mkdir()
    (root / "sourcedata" / "loop").symlink_to("..")  # not indexed by pybids
    data = collect_session(open_layout(root), "01", "1", load_filter_file(None))
    assert sorted(data.files) == ["FLAIR", "T1w"]


@pytest.mark.parametrize(("names", "selector"), [
    (["acq-MPRAGE_T1w"], {"T1w": {"acquisition": None}}),
    (["run-1_T1w", "run-2_T1w"], {"T1w": {"run": 1}}),
])
def test_duplicate_matches_name_every_file_and_the_filter_that_picks_one(tmp_path, caplog, names, selector):
    root = write_tiny_bids(tmp_path / "bids", {"01": ["1"]})
    anat = root / "sub-01" / "ses-1" / "anat"
    if "run-1_T1w" in names:
        (anat / "sub-01_ses-1_T1w.nii.gz").rename(anat / "sub-01_ses-1_run-1_T1w.nii.gz")
        (anat / "sub-01_ses-1_T1w.json").unlink()
    for name in names[1:] if "run-1_T1w" in names else names:
        shutil.copy(next(anat.glob("*_T1w.nii.gz")), anat / f"sub-01_ses-1_{name}.nii.gz")
    found = sorted(anat.glob("*_T1w.nii.gz"))
    data = collect_session(open_layout(root), "01", "1", load_filter_file(None))
    message = json.dumps(selector)
    assert (f"sub-01 ses-1: 2 T1w images match ({found[0].name}, {found[1].name}); using {found[0].name}, which "
            f"--bids-filter-file selects with {message} — write the values of another file to use it") in caplog.text
    filters = tmp_path / "filters.json"
    filters.write_text(message)  # the filter the message gives does select that file, alone
    chosen = collect_session(open_layout(root), "01", "1", load_filter_file(filters))
    assert chosen.files["T1w"] == data.files["T1w"] == found[0] and "T1w" not in chosen.extra_runs
