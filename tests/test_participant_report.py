"""The participant report on the 4 mm phantom's derivatives: sections for the data present, a reason for the data
absent, figure files that parse, a deterministic rebuild, the methods text, and a look in headless Chromium."""

from __future__ import annotations

import doctest
import html
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from lxml import etree
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe
from PIL import Image

from _browser import needs_chromium, screenshot
from msynth.reports import participant, participant_figures
from msynth.reports.participant import (
    COREGISTERED, build_participant_report, log_messages, methods_references, newest_participant_log,
    workflow_methods,
)

LABEL = "MS01"
FAILURE = "ses_01_wf.coregister_T2w_wf.register: a made-up failure for the test"
SKIPPED = [("02", "no T1w image, and every stage needs the T1w reference")]
#: The source attribute of each figure in the page (``<object data=…>`` for SVGs, ``<img src=…>`` for PNGs).
FIGURE_REF = re.compile(r'(?:data|src)="([^"]+\.(?:svg|png))"')


def _block(text: str, anchor: str) -> str:
    """The html of the sub-section ``anchor`` (up to the next one), its character references decoded."""
    match = re.search(rf'<div class="block" id="{re.escape(anchor)}">(.*?)(?=<div class="block"|</section>)', text,
                      re.S)
    assert match, f"no section {anchor} in the report"
    return html.unescape(match.group(1))


@pytest.fixture(scope="module")
def derivatives(phantom_participants, tmp_path_factory) -> Path:
    """A copy of the phantom's participant-level outputs (the report writes beside them; other tests read them)."""
    _, out, _ = phantom_participants
    copy = tmp_path_factory.mktemp("report") / "out"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("sub-*.html", "figures"))
    return copy


@pytest.fixture(scope="module")
def report(derivatives) -> tuple[Path, float]:
    start = time.perf_counter()
    page = build_participant_report(derivatives, LABEL, methods="Made-up methods.\n\nReferences\n\n[1] A ref.",
                                    failure=FAILURE, skipped=SKIPPED)
    return page, time.perf_counter() - start


def _session(derivatives: Path) -> tuple[str, Path]:
    folder = next((derivatives / f"sub-{LABEL}").glob("ses-*"))
    return folder.name, folder


def test_sections_follow_the_data(report, derivatives):
    page, seconds = report
    text = page.read_text()
    anchor, folder = _session(derivatives)
    print(f"participant report of sub-{LABEL} built in {seconds:.1f} s")
    assert page == derivatives / f"sub-{LABEL}.html"
    for section in ("summary", anchor, "models", "messages", "methods"):
        assert f'<section id="{section}">' in text, section
    for block in ("brainmask", "tissues"):
        assert "<object" in _block(text, f"{anchor}-{block}"), block
    for key, (datatype, acq, suffix, _) in COREGISTERED.items():
        prefix = f"sub-{LABEL}_{anchor}" + (f"_acq-{acq}" if acq else "")
        name = (f"{prefix}_space-T1w_desc-preproc_{suffix}.nii.gz" if suffix else
                f"{prefix}_from-{key}_to-T1w_mode-image_xfm.mat")
        present = (folder / datatype / name).exists()
        block = _block(text, f"{anchor}-coreg-{key}")
        assert ("foreground-svg" in _svg_of(block, derivatives)) == present, key
        assert ('class="note"' in block) != present, key
    pet = any(folder.glob("pet/*_model-Logan_meas-DVR_mimap.nii.gz"))
    synthetic_dvr = any(folder.glob("pet/*_desc-synth_meas-DVR_mimap.nii.gz"))
    assert ("<img" in _block(text, f"{anchor}-synth-DVR")) == (pet and synthetic_dvr)
    assert ("<img" in _block(text, f"{anchor}-synth-FLAIR")) == (
        any(folder.glob("anat/*_desc-preproc_FLAIR.nii.gz")) and any(folder.glob("anat/*_desc-synth_FLAIR.nii.gz")))
    maps = _block(text, f"{anchor}-maps")
    assert ("desc-FA.png" in maps) == any(folder.glob("dwi/*_param-FA_dwimap.nii.gz"))
    assert ("desc-DVR.png" in maps) == pet
    assert "no saliency map (they are written only when --saliency is given)" in _block(text, f"{anchor}-saliency")
    assert ("<table" in _block(text, f"{anchor}-lesions")) == any(folder.glob("anat/*_label-lesion_stats.tsv"))
    assert text.count("<table", text.index(f'id="{anchor}-metrics"'), text.index('id="models"')) == len(
        list(folder.glob("*/*_metrics.tsv")))


def _svg_of(block: str, derivatives: Path) -> str:
    match = FIGURE_REF.search(block)
    return (derivatives / match.group(1)).read_text() if match and match.group(1).endswith(".svg") else ""


def test_models_messages_and_methods(report):
    text = report[0].read_text()
    models = text[text.index('id="models"'):text.index('id="messages"')]
    assert "flair-fcn-phantom" in models and "model_card.json" in models and "training data" in models
    messages = text[text.index('id="messages"'):text.index('id="methods"')]
    assert f"sub-{LABEL} FAILED: {FAILURE}" in messages
    assert f"sub-{LABEL} ses-02 SKIPPED: {SKIPPED[0][1]}" in messages
    assert "From the newest run log, logs/msynth-" in messages
    assert "Made-up methods." in text and "<li>A ref.</li>" in text


def test_figures_are_relative_files_that_parse(report, derivatives):
    text = report[0].read_text()
    sources = FIGURE_REF.findall(text)
    assert len(sources) >= 10
    for source in sources:
        assert not re.match(r"^(/|[a-z]+:)", source), source
        assert source.startswith(f"sub-{LABEL}/figures/"), source
        path = derivatives / source
        if path.suffix == ".svg":
            root = etree.parse(str(path)).getroot()
            assert root.tag == "{http://www.w3.org/2000/svg}svg", source
        else:
            with Image.open(path) as image:
                image.verify()
    written = {path.relative_to(derivatives).as_posix() for path in (derivatives / f"sub-{LABEL}/figures").iterdir()}
    assert written == set(sources)
    assert "http" not in text.replace("http://www.w3.org", "") and "<script" not in text


def test_rebuild_is_identical(report, derivatives):
    page = report[0]
    before = {path: path.read_bytes() for path in [page, *(derivatives / f"sub-{LABEL}/figures").iterdir()]}
    again = build_participant_report(derivatives, LABEL, methods="Made-up methods.\n\nReferences\n\n[1] A ref.",
                                     failure=FAILURE, skipped=SKIPPED)
    after = {path: path.read_bytes() for path in [again, *(derivatives / f"sub-{LABEL}/figures").iterdir()]}
    assert after.keys() == before.keys()
    assert [path.name for path in after if after[path] != before[path]] == []


def test_absent_inputs_become_reasons(derivatives, tmp_path):
    """Without the PET derivatives nor the acquired FLAIR, and with no raw dataset: a reason for each."""
    out = tmp_path / "out"
    shutil.copytree(derivatives, out, ignore=shutil.ignore_patterns("sub-*.html", "figures"))
    anchor, folder = _session(out)
    shutil.rmtree(folder / "pet")
    for path in folder.glob("anat/*_desc-preproc_FLAIR.*"):
        path.unlink()
    text = build_participant_report(out, LABEL).read_text()
    expected = {
        f"{anchor}-coreg-PET": "the raw dataset has a PET image but OUTPUT_DIR has no PET registered to the T1w",
        f"{anchor}-coreg-FLAIR": "the raw dataset has a FLAIR image but OUTPUT_DIR has no FLAIR registered",
        f"{anchor}-synth-FLAIR": "no acquired FLAIR image, so the synthetic FLAIR is shown alone",
        f"{anchor}-synth-DVR": "neither an acquired nor a synthetic DVR",
        f"{anchor}-maps": "no acquired DVR (no PET in this session, or the PET stage failed)",
    }
    for block, reason in expected.items():
        assert reason in _block(text, block), block
    assert "No methods text was provided" in text and "FAILED" not in text
    # the raw dataset gone: the flickers of the anatomical images say so, and show the result alone
    (out / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    text = build_participant_report(out, LABEL).read_text()
    assert "the raw image is not reachable through OUTPUT_DIR's DatasetLinks 'raw'" in _block(
        text, f"{anchor}-coreg-T2w")
    assert not list((out / f"sub-{LABEL}/figures").glob("*coregPET*"))


def test_missing_participant_says_so(tmp_path):
    text = build_participant_report(tmp_path, "X9", failure="no session with a T1w image").read_text()
    assert "No derivative of sub-X9 in OUTPUT_DIR" in text and "This participant failed: no session" in text
    assert not (tmp_path / "sub-X9").exists()


def test_workflow_methods_are_gathered_once_per_kind():
    def session(name: str) -> pe.Workflow:
        workflow = pe.Workflow(name=name)
        anat, coreg = pe.Workflow(name="anat_wf"), pe.Workflow(name="coregister_T2w_wf")
        anat.__desc__ = "The T1w was corrected with N4."
        coreg.__desc__ = "The T2w was registered with ANTs."
        coreg.__postdesc__ = "Registration quality was checked."
        for wf in (anat, coreg):
            wf.add_nodes([pe.Node(niu.IdentityInterface(fields=["x"]), name="inputnode")])
        workflow.connect([(anat, coreg, [("inputnode.x", "inputnode.x")])])
        return workflow

    top = pe.Workflow(name="sub_01_wf")
    top.add_nodes([session("ses_1_wf"), session("ses_2_wf")])
    text = workflow_methods(top)
    blocks = text.split("\n\n")
    assert blocks[1:4] == ["The T1w was corrected with N4.", "The T2w was registered with ANTs.",
                           "Registration quality was checked."]
    assert blocks[4] == "References"
    assert [block.split()[:2] for block in blocks[5:]] == [["[1]", "Tustison"], ["[2]", "Avants"],
                                                           ["[3]", "Gorgolewski"]]
    assert methods_references("no method at all") == []


def test_log_messages_of_one_participant(tmp_path):
    log = tmp_path / "msynth-run.log"
    log.write_text("\n".join([
        "2026-12-07 19:29:54,285 msynth.runner INFO: sub-01 ses-1: found T1w",
        "2026-12-07 19:29:54,300 msynth.workflow INFO: sub-01 ses-1: DVR synthesis skipped: no DVR model",
        "2026-12-07 19:29:55,000 msynth.segmentation WARNING: file.nii.gz: no lesion found",
        "2026-12-07 19:29:56,000 msynth.segmentation WARNING: sub-010 ses-1: not this participant",
        "2026-12-07 19:29:57,000 msynth.runner INFO: sub-01 finished: 3 files",
        "2026-12-07 19:29:58,000 msynth.segmentation WARNING: file2.nii.gz: the next participant's",
    ]) + "\n")
    assert log_messages(log, "01") == [
        ("INFO", "sub-01 ses-1: DVR synthesis skipped: no DVR model"), ("WARNING", "file.nii.gz: no lesion found")]


def test_doctests_and_no_torch():
    for module in (participant, participant_figures):
        assert doctest.testmod(module).failed == 0
    code = ("import sys, msynth.reports.participant; "
            "print('torch' in sys.modules, 'templateflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


@needs_chromium
def test_report_renders_in_headless_chromium(report, tmp_path):
    pixels = screenshot(report[0], tmp_path)
    assert pixels.shape == (3000, 1200, 3)
    dark = np.all(pixels < 30, axis=-1)  # the black mosaics of the SVG figures
    assert dark.mean() > 0.15, "the SVG figures were not drawn"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # images and outlines, not only text
    red = (pixels[..., 0] > 180) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)  # the brain-mask outline
    assert red.sum() > 100


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_outline_lies_on_the_image(axis):
    """A bright off-centre block and its mask: the red outline surrounds the bright pixels in every view."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    data = np.zeros((20, 24, 16), np.float32)
    data[2:8, 3:9, 10:14] = 1.0  # left, posterior, superior corner
    figure = participant_figures.view_figure(data, [(data, "#ff0000")], axis=axis, indices=[{0: 5, 1: 5, 2: 12}[axis]],
                                             zooms=(1.0, 1.0, 1.0), limits=(0.0, 1.0), width=4.0)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3].astype(int)
    white = np.argwhere(np.all(pixels > 200, axis=-1)).mean(axis=0)
    red = np.argwhere((pixels[..., 0] > 150) & (pixels[..., 1] < 100)).mean(axis=0)
    assert np.abs(white - red).max() < 0.08 * max(pixels.shape[:2]), (white, red)


def test_the_participant_level_writes_each_report(phantom_participants):
    """The run of the shared fixture (``msynth … participant``) ends each participant with its report, whose
    methods paragraph comes from the workflow that ran."""
    cohort, out, _ = phantom_participants
    labels = sorted(path.name[4:] for path in out.glob("sub-*") if path.is_dir())
    assert labels, "the fixture wrote no participant"
    log = max((out / "logs").glob("msynth-*.log"), key=lambda path: path.stat().st_mtime).read_text()
    for label in labels:
        text = (out / f"sub-{label}.html").read_text()
        methods = html.unescape(text.split('<section id="methods">', 1)[1])
        assert "N4" in methods and "Tustison" in methods, label
        assert f"sub-{label}: visual report {out / f'sub-{label}.html'}" in log


def test_reports_only_rebuilds_from_the_outputs_and_runs_nothing(phantom_participants, tmp_path, capsys):
    from msynth.cli import run as cli

    cohort, out, _ = phantom_participants
    copy, work = tmp_path / "out", tmp_path / "work"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("sub-*.html", "figures", ".msynth-staging"))
    argv = [str(cohort.bids_dir), str(copy), "participant", "-w", str(work), "--session-label", "01",
            "--participant-label", LABEL, "--reports-only", "--skip-bids-validation"]
    assert cli.main(argv) == 0
    text = (copy / f"sub-{LABEL}.html").read_text()
    assert "Tustison" in text and "FAILED" not in text
    assert len(list((copy / f"sub-{LABEL}" / "figures").glob("*.svg"))) >= 3
    assert not (work / "msynth_wf").exists(), "--reports-only ran a workflow"
    assert not (copy / ".msynth-staging").exists()
    # the group level has its own report, rebuilt by running it again
    assert cli.main([str(cohort.bids_dir), str(copy), "group", "--reports-only", "--skip-bids-validation"]) == 1
    assert "--reports-only rebuilds the participant reports" in capsys.readouterr().err


def test_messages_come_from_the_newest_participant_run(tmp_path):
    """A later group or --reports-only run has its own log, without the participant's messages: it is passed over."""
    logs = tmp_path / "logs"
    logs.mkdir()
    runs = [("20261207-100000_aaaa", {"analysis_level": "participant"}),
            ("20261207-110000_bbbb", {"analysis_level": "group"}),
            ("20261207-120000_cccc", {"analysis_level": "participant", "reports_only": True})]
    for run, settings in runs:
        (logs / f"msynth-{run}.log").write_text("")
        (logs / f"msynth-{run}_config.json").write_text(json.dumps(settings))
    assert newest_participant_log(tmp_path) == logs / "msynth-20261207-100000_aaaa.log"
    (logs / "msynth-20261207-130000_dddd.log").write_text("")  # no configuration: taken as a participant run
    assert newest_participant_log(tmp_path) == logs / "msynth-20261207-130000_dddd.log"
