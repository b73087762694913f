"""The bad-input corpus of issue 17: each row breaks a copy of a 4 mm phantom in one way, runs ``msynth``, and checks
the exit code, one message naming the file and the cause (no traceback), and that no input byte changed.

Rows fail before any heavy work, so the whole table runs in about half a minute. The registration cases of issue 17
are in tests/test_registration_qc.py (a failed registration names the image), the faults (a full disk, SIGKILL, two
processes) in tests/test_faults.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from msynth.cli import run as cli

SUBJECT, SESSION = "MS01", "01"


@dataclass(frozen=True)
class Case:
    """How to break the phantom, the command-line options, and what the user must read."""

    name: str
    breaks: Callable[[Path, Path], object]  # (bids copy, scratch folder) → options to add to the command, or None
    fragments: tuple[str, ...]  # each must appear in stderr
    code: int = 1
    validate: bool = False  # run the BIDS validator (off elsewhere: it would often be the first to object)
    options: tuple[str, ...] = field(default=())


def _session(bids: Path, datatype: str = "anat") -> Path:
    return bids / f"sub-{SUBJECT}" / f"ses-{SESSION}" / datatype


def _image(bids: Path, suffix: str, datatype: str = "anat") -> Path:
    return _session(bids, datatype) / f"sub-{SUBJECT}_ses-{SESSION}_{suffix}.nii.gz"


def _sidecar(bids: Path, suffix: str, datatype: str = "anat") -> Path:
    return _session(bids, datatype) / f"sub-{SUBJECT}_ses-{SESSION}_{suffix}.json"


def _rewrite(path: Path, data: Callable[[np.ndarray], np.ndarray] | None = None,
             affine: Callable[[np.ndarray], np.ndarray] | None = None,
             header: Callable[[nb.Nifti1Image], None] | None = None) -> None:
    """Replace a NIfTI image's voxels and/or affine (both codes kept), or edit its header in place."""
    img = nb.load(path)
    values = np.asarray(img.dataobj, dtype=np.float32)
    new = nb.Nifti1Image(values if data is None else data(values).astype(np.float32),
                         img.affine if affine is None else affine(img.affine), img.header)
    new.set_data_dtype(np.float32)  # the phantom stores int16: NaN and fractions need floats
    if header is not None:
        header(new)
    nb.save(new, path)


def _scaled(factors: tuple[float, float, float]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda affine: affine @ np.diag([*factors, 1.0])


def _rotated(degrees: float) -> Callable[[np.ndarray], np.ndarray]:
    """Rotate the image's world position about the z axis through the centre of the grid's origin voxel."""
    angle = np.deg2rad(degrees)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    return lambda affine: rotation @ affine


def _no_orientation(img: nb.Nifti1Image) -> None:
    img.set_qform(None, code=0)
    img.set_sform(None, code=0)


def _shifted_qform(img: nb.Nifti1Image) -> None:
    qform = img.affine.copy()
    qform[0, 3] += 10.0
    img.set_qform(qform, code=1)
    img.set_sform(img.affine, code=1)


def _write_table(path: Path, rows: list[list[object]]) -> None:
    path.write_text("\n".join(" ".join(str(v) for v in row) for row in rows) + "\n")


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta, indent=2))


def _bval(bids: Path) -> Path:
    return _session(bids, "dwi") / f"sub-{SUBJECT}_ses-{SESSION}_dwi.bval"


def _bvec(bids: Path) -> Path:
    return _session(bids, "dwi") / f"sub-{SUBJECT}_ses-{SESSION}_dwi.bvec"


def _edit_bval(bids: Path, edit: Callable[[np.ndarray], np.ndarray]) -> None:
    _write_table(_bval(bids), [edit(np.loadtxt(_bval(bids))).tolist()])


def _pet_json(bids: Path) -> Path:
    return _sidecar(bids, "trc-PIB_pet", "pet")


def _lesion_mask(bids: Path) -> Path:
    return (bids / "derivatives" / "lesions" / f"sub-{SUBJECT}" / f"ses-{SESSION}" / "anat"
            / f"sub-{SUBJECT}_ses-{SESSION}_space-FLAIR_label-lesion_mask.nii.gz")


def _symlink_loop(bids: Path) -> None:
    loop = _session(bids) / "loop"
    loop.symlink_to(loop.name)  # a link to itself


def _file(path: Path, text: str = "x") -> Path:
    path.write_text(text)
    return path


T1W, T2W, FLAIR, MTR = "T1w.nii.gz", "T2w.nii.gz", "FLAIR.nii.gz", "MTRmap.nii.gz"
DWI, PET_JSON = "dwi.nii.gz", "trc-PIB_pet.json"

CASES = [
    # --- the image cannot be read or holds no image
    Case("t1w-truncated", lambda b, s: _image(b, "T1w").write_bytes(_image(b, "T1w").read_bytes()[:3000]),
         (T1W, "cannot be read", "truncated or corrupt")),
    Case("t1w-empty-file", lambda b, s: _image(b, "T1w").write_bytes(b""), (T1W, "is empty (0 bytes)")),
    Case("t1w-not-nifti", lambda b, s: _image(b, "T1w").write_bytes(os.urandom(4096)), (T1W, "cannot be read")),
    Case("t1w-all-zero", lambda b, s: _rewrite(_image(b, "T1w"), data=np.zeros_like), (T1W, "is all zero")),
    Case("t1w-constant", lambda b, s: _rewrite(_image(b, "T1w"), data=lambda d: np.full_like(d, 500.0)),
         (T1W, "is constant (every voxel is 500)")),
    Case("t1w-nan", lambda b, s: _rewrite(_image(b, "T1w"), data=lambda d: np.where(d > d.mean(), np.nan, d)),
         (T1W, "NaN/Inf voxels")),
    Case("flair-all-zero", lambda b, s: _rewrite(_image(b, "FLAIR"), data=np.zeros_like), (FLAIR, "is all zero")),
    Case("mtr-constant", lambda b, s: _rewrite(_image(b, "MTRmap"), data=lambda d: np.full_like(d, 0.3)),
         (MTR, "is constant")),
    # --- geometry: voxel size, field of view, size, orientation, dimensions
    Case("t1w-100mm-voxels", lambda b, s: _rewrite(_image(b, "T1w"), affine=_scaled((25, 25, 25))),
         (T1W, "voxels of 100 × 100 × 110 mm", "0.1–12 mm")),
    Case("t1w-micrometre-voxels", lambda b, s: _rewrite(_image(b, "T1w"), affine=_scaled((0.01, 0.01, 0.01))),
         (T1W, "voxels of 0.04 × 0.04 × 0.044 mm")),
    Case("t1w-0.3x0.3x6mm", lambda b, s: _rewrite(_image(b, "T1w"), affine=_scaled((0.075, 0.075, 1.5))),
         (T1W, "field of view", "50–400 mm per axis")),
    Case("t2w-3x3x3-voxels", lambda b, s: _rewrite(_image(b, "T2w"), data=lambda d: d[:3, :3, :3]),
         (T2W, "field of view")),
    Case("t1w-field-of-view-800mm", lambda b, s: _rewrite(_image(b, "T1w"), data=lambda d: np.pad(d, 80)),
         (T1W, "field of view", "50–400 mm per axis")),
    Case("t2w-no-orientation", lambda b, s: _rewrite(_image(b, "T2w"), header=_no_orientation),
         (T2W, "has no orientation (qform_code and sform_code are 0)")),
    Case("flair-qform-sform-disagree", lambda b, s: _rewrite(_image(b, "FLAIR"), header=_shifted_qform),
         (FLAIR, "qform and sform that disagree by up to 10.00 mm")),
    Case("t1w-singular-affine", lambda b, s: _rewrite(_image(b, "T1w"), affine=_scaled((1, 1, 1e-6))),
         (T1W, "voxels of 4 × 4 × 4.4e-06 mm")),
    Case("t1w-two-volumes", lambda b, s: _rewrite(_image(b, "T1w"), data=lambda d: np.stack([d, d], axis=-1)),
         (T1W, "has 4 dimensions", "msynth expects one 3-D volume")),
    Case("t1w-one-slice", lambda b, s: _rewrite(_image(b, "T1w"), data=lambda d: d[:, :, d.shape[2] // 2]),
         (T1W, "has 2 dimensions (48, 60)")),
    # --- diffusion
    Case("dwi-negative-bvalue", lambda b, s: _edit_bval(b, lambda v: np.where(v > 50, -v, v)),
         ("dwi.bval", "negative b-value")),
    Case("dwi-bvalue-not-a-number", lambda b, s: _bval(b).write_text("0 1000 x 1000\n"),
         ("dwi.bval", ".bval is not a table of numbers")),
    Case("dwi-bvalue-count", lambda b, s: _edit_bval(b, lambda v: v[:-1]),
         ("dwi.bval", "b-values but the DWI has")),
    Case("dwi-bvec-transposed", lambda b, s: _write_table(_bvec(b), np.loadtxt(_bvec(b)).T.tolist()),
         ("dwi.bvec", "it looks transposed")),
    Case("dwi-bvec-not-unit", lambda b, s: _write_table(_bvec(b), (2 * np.loadtxt(_bvec(b))).tolist()),
         ("dwi.bvec", "not unit vectors")),
    Case("dwi-no-b0", lambda b, s: _edit_bval(b, lambda v: np.full_like(v, 1000.0)), ("dwi.bval", "no b=0 volume")),
    Case("dwi-bval-missing", lambda b, s: _bval(b).unlink(),
         ("has no .bval file", "(file: ", "sub-MS01_ses-01_dwi.bval)")),
    Case("dwi-one-volume", lambda b, s: _rewrite(_image(b, "dwi", "dwi"), data=lambda d: d[..., 0]),
         (DWI, "has 3 dimensions", "msynth expects a 4-D series")),
    # --- PET timing (the message names the sidecar)
    Case("pet-no-frame-times", lambda b, s: _edit_json(_pet_json(b), lambda m: m.pop("FrameTimesStart")),
         (PET_JSON, "sidecar has no FrameTimesStart")),
    Case("pet-frame-count", lambda b, s: _edit_json(_pet_json(b), lambda m: m.update(
        FrameTimesStart=m["FrameTimesStart"][:-1], FrameDuration=m["FrameDuration"][:-1])),
        (PET_JSON, "has 24 values but the PET series has 25 frames")),
    Case("pet-frames-out-of-order", lambda b, s: _edit_json(_pet_json(b), lambda m: m.update(
        FrameTimesStart=m["FrameTimesStart"][::-1])), (PET_JSON, "not strictly increasing")),
    Case("pet-zero-duration", lambda b, s: _edit_json(_pet_json(b), lambda m: m["FrameDuration"].__setitem__(3, 0)),
         (PET_JSON, "FrameDuration has values ≤ 0")),
    Case("pet-timing-not-numbers", lambda b, s: _edit_json(_pet_json(b), lambda m: m.update(FrameDuration="all")),
         (PET_JSON, "FrameDuration is not a list of finite numbers")),
    # --- a given lesion mask
    Case("lesion-mask-not-binary", lambda b, s: _rewrite(_lesion_mask(b), data=lambda d: 2 * d + 3 * (d == 0)),
         ("label-lesion_mask.nii.gz", "lesion mask is not binary"),
         options=("--lesion-masks", "{bids}/derivatives/lesions")),
    # --- the dataset and the command line
    Case("no-dataset-description", lambda b, s: (b / "dataset_description.json").unlink(),
         ("is not a BIDS dataset: it has no dataset_description.json",)),
    Case("dataset-description-not-json", lambda b, s: (b / "dataset_description.json").write_text("{"),
         ("JSON_INVALID (/dataset_description.json)",), validate=True),
    Case("t1w-sidecar-not-json", lambda b, s: _sidecar(b, "T1w").write_text("{\"RepetitionTime\": "),
         ("JSON_INVALID (/sub-MS01/ses-01/anat/sub-MS01_ses-01_T1w.json)",), validate=True),
    Case("unknown-participant", lambda b, s: ("--participant-label", "XX99"), ("participant label(s) XX99 not found",)),
    Case("unknown-session", lambda b, s: ("--session-label", "99"), ("session label(s) 99 not found",)),
    Case("filter-file-not-json", lambda b, s: ("--bids-filter-file", str(_file(s / "filter.json", "{T1w"))),
         ("filter.json", "is not valid JSON")),
    Case("filter-file-unknown-modality",
         lambda b, s: ("--bids-filter-file", str(_file(s / "filter.json", '{"T3w": {"suffix": "T3w"}}'))),
         ("filter.json", "unknown modality key(s) T3w")),
    Case("output-dir-is-a-file", lambda b, s: _file(s / "out"), ("output directory", "is a file, not a folder")),
    Case("work-dir-is-a-file", lambda b, s: _file(s / "work"), ("work directory", "is a file, not a folder")),
    Case("output-inside-input", lambda b, s: None, ("msynth never writes into its input",),
         options=("--output-dir-override", "{bids}/derivatives/msynth")),
    Case("symlink-loop", lambda b, s: _symlink_loop(b), ("symbolic link loop(s)", "anat/loop")),
    Case("participants-tsv-no-id-column",
         lambda b, s: _file(b / "participants.tsv", "subject\tage\tsex\tgroup\nsub-MS01\t27\tF\tMS\n"),
         ("participants.tsv has no participant_id column",)),
    Case("participants-tsv-ragged-row",
         lambda b, s: _file(b / "participants.tsv", "participant_id\tage\tsex\tgroup\nsub-MS01\t27\tF\n"),
         ("participants.tsv line 2 has 3 cells but the header has 4",)),
    Case("sessions-tsv-repeated-session",
         lambda b, s: _file(b / f"sub-{SUBJECT}" / f"sub-{SUBJECT}_sessions.tsv",
                            "session_id\tedss\nses-01\t4.5\nses-01\t5\n"),
         ("sub-MS01_sessions.tsv lines 2, 3: session_id ses-01 is listed more than once",)),
    Case("memory-budget", lambda b, s: ("--mem-gb", "0.5"), (T1W, "GiB of memory", "more than the 0.5 GiB allowed")),
    Case("t1w-missing", lambda b, s: (_image(b, "T1w").unlink(), _sidecar(b, "T1w").unlink()),
         ("no session with a T1w image",)),
]


def _snapshot(root: Path) -> dict[str, str]:
    """Content digest of every file under ``root`` (symlinks by their target)."""
    digests = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            digests[str(path)] = "-> " + os.readlink(path)
        elif path.is_file():
            digests[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


@pytest.fixture(scope="module")
def corpus_phantom(tmp_path_factory) -> Path:
    """One 4 mm phantom patient (seed 3) with every modality, session 01 only."""
    from msynth.phantom.cohort import generate_cohort

    root = tmp_path_factory.mktemp("corpus")
    cohort = generate_cohort(root / "bids", n_controls=0, n_patients=1, voxel_size=4.0, seed=3)
    for extra in cohort.bids_dir.glob(f"sub-{SUBJECT}/ses-0[2-9]"):
        shutil.rmtree(extra)
    return cohort.bids_dir


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_gives_one_clear_line(case: Case, corpus_phantom: Path, tmp_path: Path, capsys):
    bids = tmp_path / "bids"
    shutil.copytree(corpus_phantom, bids, symlinks=True)
    extra = case.breaks(bids, tmp_path)
    before = _snapshot(bids)
    output = tmp_path / "out"
    options = [option.format(bids=bids) for option in case.options]
    if options[:1] == ["--output-dir-override"]:
        output, options = Path(options[1]), options[2:]
    argv = [str(bids), str(output), "participant", "-w", str(tmp_path / "work"), "--nprocs", "1",
            *options, *(extra if isinstance(extra, tuple) and all(isinstance(e, str) for e in extra) else ())]
    if not case.validate:
        argv.append("--skip-bids-validation")

    code = cli.main(argv)
    err = capsys.readouterr().err

    assert code == case.code, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    for fragment in case.fragments:
        assert fragment in err, f"{fragment!r} not in:\n{err[-2000:]}"
    assert _snapshot(bids) == before, "the input dataset was written to"
    assert not list(output.rglob("*.nii.gz")) if output.is_dir() else True, "a failed participant published images"
