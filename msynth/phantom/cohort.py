"""The cohort: participants, their sessions, the healthy-control reference, the indices and the EDSS model.

Random streams are keyed by (seed, group, participant index, purpose) so that one participant's anatomy does not
change when the number of others does, and a run is byte-identical for a given seed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import clinical, pet
from .anatomy import Anatomy, load_atlas, subject_anatomy
from .bids_writer import (
    PARTICIPANTS_JSON, derivative_dataset_files, raw_dataset_files, truth_dataset_files, write_json,
    write_tsv,
)
from .lesions import LesionState, follow_up, place_lesions
from .mri import MT_PROTOCOL, PROTOCOLS
from .placement import DWI_GRID, PET_GRID, place_session
from .session import PETSession, SessionPaths, simulate_session
from .tissue import TissueState, healthy_fields, subject_scales, tissue_state

LOGGER = logging.getLogger("msynth.phantom")
GRIDS_MM = {**{k: (p.voxel_mm, p.fov_mm) for k, p in PROTOCOLS.items()},
            "MTR": (MT_PROTOCOL.voxel_mm, MT_PROTOCOL.fov_mm), "DWI": DWI_GRID, "PET": PET_GRID}
TRUTH_COLUMNS = {
    "n_lesions": {"Description": "Number of planted lesions"},
    "t2_lesion_load": {"Description": "Baseline lesion volume", "Units": "mm^3"},
    "pct_demyelinated_ses01": {"Description": "Demyelinated lesion voxels at ses-01 over baseline lesion voxels",
                               "Units": "percent"},
    "pct_demyelinated_ses02": {"Description": "Demyelinated lesion voxels at ses-02 over baseline lesion voxels",
                               "Units": "percent"},
    "global_change": {"Description": "pct_demyelinated_ses02 - pct_demyelinated_ses01", "Units": "percent"},
    "dynamic_demyelination": {"Description": "Normally myelinated lesion voxels at ses-01 demyelinated at ses-02",
                              "Units": "percent"},
    "dynamic_remyelination": {"Description": "Demyelinated lesion voxels at ses-01 normally myelinated at ses-02",
                              "Units": "percent"},
    "remyelination_rate": {"Description": "Planted share of demyelinated voxels set to remyelinate"},
    "demyelination_rate": {"Description": "Planted share of other lesion voxels set to demyelinate"},
    "edss": {"Description": "EDSS at ses-01 (planted model, regression.json)"},
}


@dataclass(frozen=True)
class CohortResult:
    """What :func:`generate_cohort` wrote.

    Attributes
    ----------
    bids_dir, truth_dir, lesion_dir
        The raw BIDS dataset, the truth folder beside it, and the lesion-mask derivatives inside it.
    participants
        The truth table (one row per participant: demographics, lesion load, true indices, EDSS).
    regression
        The planted EDSS model (as in ``regression.json``).
    """

    bids_dir: Path
    truth_dir: Path
    lesion_dir: Path
    participants: pd.DataFrame
    regression: dict


def stream(seed: int, *keys: str | int) -> np.random.Generator:
    """Independent random generator for ``keys`` under ``seed`` (stable across Python runs)."""
    key = tuple(zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def anatomical_spacing(voxel_size: float) -> float:
    """Spacing (mm) of the native anatomy: the voxel-size factor, kept within 1-3 mm.

    Finer than the acquisitions at ``--voxel-size 2`` and above, so partial volume is modelled; never below 1 mm,
    the resolution of the MNI maps.
    """
    return float(np.clip(voxel_size, 1.0, 3.0))


#: Peak memory of one simulating process at 1 mm anatomy (GiB, measured) and its fixed part; it scales with the
#: number of native voxels.
_GIB_AT_1MM, _GIB_FIXED = 4.5, 0.4


def default_n_procs(voxel_size: float) -> int:
    """Processes that fit the available CPUs and the memory available now (at least one)."""
    cpus = len(os.sched_getaffinity(0))
    per_process = _GIB_AT_1MM / anatomical_spacing(voxel_size) ** 3 + _GIB_FIXED
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    return max(1, min(cpus, int(available // per_process)))


def participant_labels(group: str, count: int) -> list[str]:
    """``HC01, HC02, ...`` (at least two digits)."""
    width = max(2, len(str(count)))
    return [f"{group}{i:0{width}d}" for i in range(1, count + 1)]


def _is_phantom(folder: Path) -> bool:
    """Whether ``folder`` holds an msynth-phantom dataset or truth (its dataset_description says so)."""
    try:
        desc = json.loads((folder / "dataset_description.json").read_text())
        return desc["GeneratedBy"][0]["Name"] == "msynth-phantom"
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return False


def check_arguments(
    output_dir: Path | str,
    truth_dir: Path | str | None,
    n_controls: int,
    n_patients: int,
    voxel_size: float,
    overwrite: bool,
) -> tuple[Path, Path]:
    """Validate the generator's arguments; return the resolved dataset and truth folders.

    Raises
    ------
    ValueError
        With a one-line message naming the argument, the value and what to do.
    """
    for flag, count in (("--n-controls", n_controls), ("--n-patients", n_patients)):
        if count < 0:
            raise ValueError(f"{flag} must be >= 0, got {count}")
    if n_controls + n_patients == 0:
        raise ValueError("--n-controls and --n-patients are both 0: nothing to generate")
    if not np.isfinite(voxel_size) or voxel_size <= 0:
        raise ValueError(f"--voxel-size must be > 0 mm, got {voxel_size:g}")
    out = Path(output_dir).expanduser().resolve()
    truth = Path(truth_dir).expanduser().resolve() if truth_dir is not None else out.parent / f"{out.name}-truth"
    if truth == out or out in truth.parents:
        raise ValueError(f"--truth-dir {truth} is inside OUTPUT_DIR {out}; the truth must sit beside the dataset")
    if truth in out.parents:
        raise ValueError(f"OUTPUT_DIR {out} is inside --truth-dir {truth}; the truth must sit beside the dataset")
    for flag, folder in (("OUTPUT_DIR", out), ("--truth-dir", truth)):
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{flag} {folder} exists and is not a directory")
        if folder.is_dir() and any(folder.iterdir()):
            if not overwrite:
                raise ValueError(f"{flag} {folder} exists and is not empty; pass --overwrite to replace it")
            if not _is_phantom(folder):
                raise ValueError(f"{flag} {folder} is not an msynth-phantom folder; refusing to overwrite it")
    return out, truth


@dataclass(frozen=True)
class _Participant:
    """One participant: label, group (HC/MS), index within the group, age, sex."""
    label: str
    group: str
    index: int
    age: int
    sex: str


@dataclass(frozen=True)
class _Scanner:
    """Per-subject acquisition traits: slab tilt, array storage, tracer VT scale and K1 scale."""

    oblique: bool
    flip_x: bool
    v0: float
    k1_scale: float


class _Cohort:
    """Simulates participants one at a time and keeps what the cohort-level truth needs."""

    def __init__(self, out: Path, truth: Path, seed: int, voxel_size: float) -> None:
        """Output folders, seed and voxel-size factor; builds (or reuses) the atlas."""
        self.out, self.truth, self.seed, self.voxel_size = out, truth, seed, voxel_size
        self.lesions = out / "derivatives" / "lesions"
        self.atlas = load_atlas(anatomical_spacing(voxel_size))

    def anatomy(self, p: _Participant) -> Anatomy:
        """Native anatomy; ventricles grow with age and in patients."""
        growth = 0.01 * (p.age - 30) + (0.08 if p.group == "MS" else 0.0)
        rng = stream(self.seed, p.group, p.index, "anatomy")
        return subject_anatomy(self.atlas, rng, ventricle_growth=growth + rng.normal(0.0, 0.04))

    def state(self, p: _Participant, anatomy: Anatomy, lesions: LesionState) -> TissueState:
        """Tissue compartments of one session (healthy fields and scales are per subject)."""
        rng = stream(self.seed, p.group, p.index, "tissue")
        return tissue_state(anatomy, lesions, *healthy_fields(anatomy, rng), subject_scales(rng))

    def scanner(self, p: _Participant) -> _Scanner:
        """Per-subject acquisition traits (the same at both sessions)."""
        rng = stream(self.seed, p.group, p.index, "scanner")
        return _Scanner(oblique=bool(rng.random() < 0.35), flip_x=bool(rng.random() < 0.5),
                        v0=2.0 * float(np.exp(rng.normal(0.0, 0.1))), k1_scale=float(np.exp(rng.normal(0.0, 0.1))))

    def write_session(self, p: _Participant, session: int, state: TissueState, dvr: np.ndarray,
                      demyelinated: np.ndarray) -> None:
        """Place the head, administer the tracer and write one session (raw, truth, expert mask)."""
        scanner = self.scanner(p)
        rng = stream(self.seed, p.group, p.index, "session", session)
        placement = place_session(rng, GRIDS_MM, voxel_scale=self.voxel_size, oblique=scanner.oblique,
                                  flip_x=scanner.flip_x)
        injected = float(rng.normal(pet.MEAN_INJECTED_MBQ, 34.0))
        pet_session = PETSession(injected, pet.sample_plasma_input(rng, injected), scanner.v0, scanner.k1_scale,
                                 float(rng.uniform(2.5, 4.0)))
        paths = SessionPaths(self.out, self.truth, self.lesions, p.label, f"{session:02d}")
        simulate_session(paths, state, placement, pet_session, rng, dvr=dvr, demyelinated=demyelinated)

    def native_dvr(self, p: _Participant, state: TissueState) -> np.ndarray:
        """Noise-free native DVR of one session."""
        return pet.true_dvr(state, self.scanner(p).v0)

    def control(self, p: _Participant, *, write: bool = True) -> tuple[dict, clinical.ControlReference]:
        """Simulate (and write) a control; return its table row and its white-matter DVR reference."""
        anatomy = self.anatomy(p)
        state = self.state(p, anatomy, LesionState.empty(anatomy.grid.shape))
        dvr = self.native_dvr(p, state)
        fr = anatomy.fractions
        reference = clinical.ControlReference()
        reference.add(dvr, fr["WM"] >= 0.5, clinical.csf_rings(fr["CSF"] + fr["XCSF"], anatomy.grid.zooms))
        if write:
            self.write_session(p, 1, state, dvr, np.zeros(anatomy.grid.shape, bool))
        return {"participant_id": f"sub-{p.label}", "group": p.group, "age": p.age, "sex": p.sex}, reference

    def patient(self, p: _Participant, threshold: np.ndarray) -> dict:
        """Simulate and write a patient's two sessions; return its truth-table row (without EDSS)."""
        anatomy = self.anatomy(p)
        clin = stream(self.seed, p.group, p.index, "clinical")
        remyel, demyel = float(clin.beta(2.0, 2.5)), float(clin.beta(1.3, 6.0))
        baseline, n_lesions = place_lesions(anatomy, stream(self.seed, p.group, p.index, "lesions"))
        later = follow_up(baseline, stream(self.seed, p.group, p.index, "follow-up"),
                          remyelination_rate=remyel, demyelination_rate=demyel)
        fr = anatomy.fractions
        rings = clinical.csf_rings(fr["CSF"] + fr["XCSF"], anatomy.grid.zooms)
        occupancy = fr["WM"] * baseline.fraction  # lesional share of each voxel (the same at both sessions)
        lesion = occupancy >= 0.5
        masks = []
        for session, lesions in enumerate((baseline, later), start=1):
            state = self.state(p, anatomy, lesions)
            dvr = self.native_dvr(p, state)
            masks.append(clinical.demyelinated(dvr, lesion, rings, threshold))
            self.write_session(p, session, state, dvr, masks[-1])
        return {"participant_id": f"sub-{p.label}", "group": p.group, "age": p.age, "sex": p.sex,
                "n_lesions": n_lesions, "t2_lesion_load": float(occupancy.sum() * np.prod(anatomy.grid.zooms)),
                **clinical.myelin_indices(lesion, masks[0], masks[1]),
                "remyelination_rate": remyel, "demyelination_rate": demyel}


def _participants(seed: int, n_controls: int, n_patients: int) -> list[_Participant]:
    """Controls then patients, with labels, per-group indices and thesis-like demographics."""
    people = []
    for group, count in (("HC", n_controls), ("MS", n_patients)):
        ages_sexes = clinical.demographics(stream(seed, group, "demographics"), group, count)
        for i, (label, (age, sex)) in enumerate(zip(participant_labels(group, count), ages_sexes), start=1):
            people.append(_Participant(label, group, i, age, sex))
    return people


_VIRTUAL_CONTROL = _Participant("HC00", "HC", 0, 30, "F")
#: The cohort simulator seen by worker processes (set before they fork).
_ACTIVE: _Cohort | None = None


def _control_job(job: tuple[_Participant, bool]) -> tuple[dict, clinical.ControlReference]:
    """Worker task: simulate one control (``job = (participant, write)``)."""
    assert _ACTIVE is not None
    return _ACTIVE.control(job[0], write=job[1])


def _patient_job(job: tuple[_Participant, np.ndarray]) -> dict:
    """Worker task: simulate one patient (``job = (participant, control DVR threshold)``)."""
    assert _ACTIVE is not None
    return _ACTIVE.patient(*job)


@contextlib.contextmanager
def _workers(cohort: _Cohort, n_procs: int, n_jobs: int) -> Iterator[Callable[[Callable, list], list]]:
    """A ``map`` over participants: in this process, or in forked workers that share the atlas."""
    global _ACTIVE
    _ACTIVE = cohort
    try:
        if n_procs <= 1 or n_jobs <= 1:
            yield lambda fn, jobs: [fn(job) for job in jobs]
        else:
            with multiprocessing.get_context("fork").Pool(min(n_procs, n_jobs)) as pool:
                yield lambda fn, jobs: pool.map(fn, jobs, chunksize=1)
    finally:
        _ACTIVE = None


def generate_cohort(
    output_dir: Path | str,
    truth_dir: Path | str | None = None,
    *,
    n_controls: int = 10,
    n_patients: int = 18,
    voxel_size: float = 1.0,
    seed: int = 0,
    overwrite: bool = False,
    n_procs: int = 1,
) -> CohortResult:
    """Generate the synthetic MS cohort as a BIDS dataset, its lesion-mask derivatives and its truth.

    Parameters
    ----------
    output_dir
        The BIDS dataset to create.
    truth_dir
        Truth folder (default ``<output_dir>-truth``, beside the dataset; never inside it).
    n_controls, n_patients
        Healthy controls (one session) and patients (two sessions); the thesis cohort is 10 and 18.
    voxel_size
        Multiplies every acquisition voxel size (1: the papers' protocols; 4: a fast test cohort).
    seed
        Same seed, same bytes.
    overwrite
        Replace existing (msynth-phantom) folders.
    n_procs
        Participants simulated in parallel (processes); the output does not depend on it.

    Returns
    -------
    CohortResult
    """
    out, truth = check_arguments(output_dir, truth_dir, n_controls, n_patients, voxel_size, overwrite)
    for folder in (out, truth):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    # descriptions first: an interrupted run is still recognised (and replaced) by --overwrite
    raw_dataset_files(out, seed=seed, voxel_size=voxel_size, n_controls=n_controls, n_patients=n_patients)
    truth_dataset_files(truth, out)
    LOGGER.info("generating %d controls and %d patients at voxel size x%g (seed %d) in %s", n_controls, n_patients,
                voxel_size, seed, out)
    cohort = _Cohort(out, truth, seed, voxel_size)
    people = _participants(seed, n_controls, n_patients)
    controls = [p for p in people if p.group == "HC"]
    with _workers(cohort, n_procs, len(people)) as run:
        done = run(_control_job, [(p, True) for p in controls] or [(_VIRTUAL_CONTROL, False)])
        if not controls:
            LOGGER.warning("no healthy controls: an unwritten virtual control provides the DVR reference")
        reference = clinical.ControlReference()
        for _, share in done:  # in participant order: the sums are the same for any number of workers
            reference.merge(share)
        threshold = reference.threshold()
        patients = pd.DataFrame(run(_patient_job, [(p, threshold) for p in people if p.group == "MS"]))
    rows = [row for row, _ in done] if controls else []
    edss = {row["participant_id"]: [np.nan] for row in rows}
    regression: dict = {}
    if len(patients):
        patients["edss"], regression = clinical.plant_edss(patients, stream(seed, "edss"))
        follow = clinical.follow_up_edss(patients["edss"], stream(seed, "edss-follow-up"))
        edss.update({pid: [e0, e1] for pid, e0, e1 in zip(patients["participant_id"], patients["edss"], follow)})
    for pid, values in edss.items():
        sessions = pd.DataFrame({"session_id": [f"ses-{k:02d}" for k in range(1, len(values) + 1)], "edss": values})
        write_tsv(out / pid / f"{pid}_sessions.tsv", sessions)
    table = pd.concat([pd.DataFrame(rows), patients], ignore_index=True)
    write_tsv(out / "participants.tsv", table[["participant_id", "age", "sex", "group"]])
    derivative_dataset_files(cohort.lesions, title="msynth phantom expert lesion masks",
                             description="Lesion masks traced on each session's FLAIR by a simulated rater")
    write_tsv(truth / "participants.tsv", table)
    write_json(truth / "participants.json", {**PARTICIPANTS_JSON, **TRUTH_COLUMNS})
    write_json(truth / "regression.json", regression)
    LOGGER.info("cohort written: %s (truth: %s)", out, truth)
    return CohortResult(out, truth, cohort.lesions, table, regression)
