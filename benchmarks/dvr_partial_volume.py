"""What limits the demyelinated-voxel Dice of the acquired PET's DVR on the phantom, and does a PVC reach the bound?

Issue 16. The group level classifies a lesion voxel as demyelinated when its DVR is below the healthy controls'
mean - 1 SD of its distance-to-CSF ring (:mod:`msynth.analysis.myelin`). On the acquired PET that Dice is far below
the truth's. This benchmark takes the participant level's registration, segmentation, lesion masks and template
reference region out of the question and asks what is left: noise (the PET's Poisson-like noise, through the Logan
fit) or resolution (the PET's PSF, its voxel and the resampling onto the T1w grid: partial volume), and whether a
partial-volume correction (PVC) brings the Dice back. Every variant is one DVR map per session on its T1w grid:

- ``truth``: the phantom's DVR (T1w-voxel average); ``truth+noise``: truth + (Logan of the acquired PET - Logan of
  its noise-free twin), the Logan's noise alone; ``truth_blur_eff``: truth blurred by the effective kernel (below);
- ``logan(noisy)``, ``logan(clean)``: msynth's own Logan DVR (:func:`msynth.preprocessing.pet.reference_region_mask`
  of the truth's cerebellar-GM reference moved to the PET grid, :func:`~msynth.preprocessing.pet.logan_dvr_image`
  inside the true PET-grid brain mask) of the acquired PET and of its noise-free twin, resampled onto the T1w grid
  (linear) with the phantom's TRUE PET -> T1w transform;
- PVC of the acquired Logan map on the T1w grid (:func:`rbv_hard`, :func:`rbv_fractional`, and the participant
  level's :func:`msynth.preprocessing.pvc.gtm_van_cittert` with 1-10 Van Cittert iterations), Gaussian kernel of
  the **effective** FWHM a pipeline can compute from what it knows: the PET PSF, the PET voxel (box, d^2/12), the
  linear resampling onto the T1w grid (mean kernel variance d^2/6), less the T1w voxel that the truth already holds
  (:func:`msynth.preprocessing.pvc.effective_fwhm`); ``eff`` from each session's true PSF, ``nominal`` from one PSF
  for every session (the midpoint of the phantom's range), as a user who knows the scanner's resolution would;
- sensitivity (``--sensitivity``): the kernel 15 % narrower or wider, the PSF alone, a 1 mm registration error.

Classification with the group level's functions (:func:`~msynth.analysis.myelin.distance_rings` of
:func:`~msynth.segmentation.regions.distance_to_csf`, :func:`~msynth.analysis.myelin.control_reference`,
:func:`~msynth.analysis.myelin.demyelinated_voxels`, :func:`~msynth.analysis.myelin.myelin_indices`,
:func:`~msynth.analysis.metrics.dice`); each variant has its own control reference (its own controls' maps). The
TRUTH folder's tissue probabilities, brain and lesion masks are used throughout: the Dice excludes the lesion-mask
disagreement that ``benchmarks/group_phantom.py``'s Dice includes. Dice per patient session on its own T1w grid
against the truth's ``desc-demyelinated_mask``; % demyelinated at baseline against the truth table's
``pct_demyelinated_ses01``; biases are mean(map - truth) in the patients' NAWM and lesions and the controls' WM.

Stages (default: all, in this order; an output that exists is reused, and said so):

``cohort``
    Per cohort in ``--cohorts`` (:data:`COHORTS`): :func:`msynth.phantom.cohort.generate_cohort` twice with the
    same seed, into ``<scratch>/<name>/noisy`` and ``clean`` (each with its ``-truth`` folder). The phantom has no
    switch for the PET noise, so the ``clean`` twin is generated with :func:`msynth.phantom.pet.add_noise` replaced
    by the identity (:func:`_phantom_patches`). The random streams are per subject and session and the PET noise is
    drawn last but for the rater's mask, so the twins differ only in the PET noise (and that mask, not used here).
    The PSF FWHM the phantom draws per session is not written anywhere: it is recorded from
    ``msynth.phantom.session.write_pet``'s arguments into ``<kind>-psf.json``. The 1 mm cohort skips the MR, MTR and
    DWI series (unused here; they cost most of its time).
``dvr``
    The Logan DVR maps above, in ``<scratch>/<name>/derived/{noisy,clean}/<sub>_<ses>_dvr_T1w.nii.gz``.
``measure``
    Every variant, per session -> ``<scratch>/<name>/dvr_partial_volume_sessions.tsv``.
``report``
    Medians over patients -> ``benchmarks/results/dvr_partial_volume.md`` and ``.tsv``.

Run (results in ``benchmarks/results/dvr_partial_volume.md``)::

    OMP_NUM_THREADS=1 ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1 .venv/bin/python benchmarks/dvr_partial_volume.py \\
        --scratch /work/bench/dvr_pv [--cohorts 2mm 1mm] [--stage cohort dvr measure report]

References: Thomas et al. 2011, EJNMMI 38:1104 (region-based voxel-wise correction, RBV, with the geometric transfer
matrix of Rousset et al. 1998, JNM 39:904); Van Cittert 1931, Z. Phys. 69:298 (iterative deconvolution), as applied
to PET PVC by Tohka and Reilhac 2008, NeuroImage 39:1570.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import nibabel as nib
import numpy as np
import pandas as pd
from lesions import markdown_table  # benchmarks/lesions.py
from scipy import ndimage

from msynth.analysis import myelin
from msynth.analysis.metrics import dice
from msynth.phantom import pet as phantom_pet
from msynth.phantom import session as phantom_session
from msynth.phantom.cohort import generate_cohort
from msynth.preprocessing.pet import logan_dvr_image, reference_region_mask
from msynth.preprocessing.pvc import (
    blur,
    effective_fwhm,
    fractional_gtm,
    gtm_van_cittert,
    sigma_voxels,
    tissue_fractions,
)
from msynth.preprocessing.registration import apply_transform, invert
from msynth.segmentation.regions import distance_to_csf

RESULTS = Path(__file__).resolve().parent / "results"
STAGES = ("cohort", "dvr", "measure", "report")
KINDS = ("noisy", "clean")
SESSIONS_TSV = "dvr_partial_volume_sessions.tsv"
DEEP_RING = 12  # the capped ring (>= 12 mm from CSF): the controls' deep-WM statistics


@dataclass(frozen=True)
class CohortSpec:
    """One phantom cohort and the variants measured on it."""

    voxel_size: float
    n_controls: int
    n_patients: int
    seed: int
    pet_only: bool  # skip the MR, MTR and DWI series (not read here)
    vc_iterations: tuple[int, ...]  # Van Cittert iterations of gtm_van_cittert on the acquired PET
    sensitivity: bool  # kernel +-15 %, PSF-only kernel, 1 mm registration error


#: The phantom draws each session's PSF FWHM from U(2.5, 4.0) mm; a user knows one nominal value: the midpoint.
NOMINAL_PSF_FWHM_MM = 3.25
ITERATIONS = (1, 2, 3, 5, 10)

COHORTS = {
    "2mm": CohortSpec(voxel_size=2.0, n_controls=4, n_patients=6, seed=11, pet_only=False, vc_iterations=ITERATIONS,
                      sensitivity=True),
    "1mm": CohortSpec(voxel_size=1.0, n_controls=3, n_patients=2, seed=11, pet_only=True, vc_iterations=ITERATIONS,
                      sensitivity=False),
}

LABELS = {
    "truth": "truth DVR (T1w grid)",
    "truth+noise": "truth + Logan noise only (truth + noisy − noise-free Logan)",
    "truth_blur_eff": "truth blurred by the effective FWHM",
    "logan(clean)": "Logan, noise-free PET, true transform",
    "logan(noisy)": "Logan, acquired PET, true transform",
    "rbv_eff(noisy)": "RBV hard regions, eff",
    "rbvfrac_eff(noisy)": "RBV fractional, eff",
    "rbvfrac+vc10_eff(clean)": "fractional GTM + VC10, eff, noise-free PET",
    "rbvfrac+vc10_eff*0.85(noisy)": "fractional GTM + VC10, kernel eff × 0.85",
    "rbvfrac+vc10_eff*1.15(noisy)": "fractional GTM + VC10, kernel eff × 1.15",
    "rbvfrac+vc10_psf(noisy)": "fractional GTM + VC10, kernel = PSF only",
    "logan_shift1mm(noisy)": "Logan shifted 1 mm (registration error), no PVC",
    "rbvfrac+vc10_eff_shift1mm(noisy)": "fractional GTM + VC10, eff, on the 1 mm-shifted map",
}
for _n in ITERATIONS:
    LABELS[f"rbvfrac+vc{_n}_eff(noisy)"] = f"fractional GTM + VC{_n}, eff"
    LABELS[f"rbvfrac+vc{_n}_nominal(noisy)"] = (f"fractional GTM + VC{_n}, eff from the nominal PSF "
                                               f"{NOMINAL_PSF_FWHM_MM} mm (the participant level's --pet-psf-fwhm)")


# --- cohort ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _phantom_patches(*, noise: bool, pet_only: bool, psf: dict[str, float]) -> Iterator[None]:
    """Patch the phantom while a cohort is generated (in this process: ``n_procs=1``).

    ``noise=False`` replaces :func:`msynth.phantom.pet.add_noise` by the identity (the phantom has no parameter
    for it); the session's PSF FWHM is recorded into ``psf`` (``sub-X_ses-Y`` -> mm); ``pet_only`` skips the MR,
    MTR and DWI series.
    """
    write_pet = phantom_session.write_pet

    def recording_write_pet(paths, state, placement, session, rng):
        psf[f"sub-{paths.subject}_ses-{paths.session}"] = float(session.psf_fwhm_mm)
        return write_pet(paths, state, placement, session, rng)

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(phantom_session, "write_pet", recording_write_pet))
        if not noise:
            stack.enter_context(mock.patch.object(phantom_pet, "add_noise", lambda frames, *args, **kwargs: frames))
        if pet_only:
            for name, value in (("write_mr", None), ("write_mtr", None), ("write_dwi", {})):
                stack.enter_context(mock.patch.object(phantom_session, name, lambda *a, _v=value, **k: _v))
        yield


def stage_cohort(folder: Path, spec: CohortSpec) -> None:
    """The noisy cohort and its noise-free twin, with their PSF tables, unless already there."""
    for kind in KINDS:
        psf_json = folder / f"{kind}-psf.json"
        if psf_json.exists():
            print(f"{folder.name} {kind}: cohort found ({psf_json}), not regenerated", flush=True)
            continue
        psf: dict[str, float] = {}
        start = time.perf_counter()
        with _phantom_patches(noise=kind == "noisy", pet_only=spec.pet_only, psf=psf):
            generate_cohort(folder / kind, n_controls=spec.n_controls, n_patients=spec.n_patients,
                            voxel_size=spec.voxel_size, seed=spec.seed, overwrite=True, n_procs=1)
        psf_json.write_text(json.dumps(psf, indent=1))
        print(f"{folder.name} {kind}: generated in {time.perf_counter() - start:.0f} s", flush=True)


# --- Logan DVR with the true transform ------------------------------------------------------------------------


def logan_on_t1w(pet: Path, truth_pet: Path, out: Path) -> Path:
    """msynth's Logan DVR of ``pet`` on its T1w grid, via the true reference region, brain mask and transform.

    ``truth_pet`` is the session's truth ``pet`` folder. The truth's T1w-grid reference probability is moved to
    the PET grid (inverse true transform, linear), thresholded and eroded by :func:`reference_region_mask`; the DVR
    (:func:`logan_dvr_image`, inside the true PET-grid brain mask) goes back with the true transform (linear).
    """
    prefix = pet.name.removesuffix("_trc-PIB_pet.nii.gz")
    target = out / f"{prefix}_dvr_T1w.nii.gz"
    if target.exists():
        return target
    xfm = truth_pet / f"{prefix}_from-PET_to-T1w_mode-image_xfm.mat"
    pet_brain = truth_pet / f"{prefix}_trc-PIB_space-PET_desc-brain_mask.nii.gz"
    t1w_reference = truth_pet / f"{prefix}_trc-PIB_space-T1w_desc-reference_mask.nii.gz"
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        to_pet = invert(xfm, out_xfm=Path(tmp) / f"{prefix}_from-T1w_to-PET_xfm.mat")
        probability = apply_transform(t1w_reference, pet_brain, to_pet, newpath=tmp, suffix="refprob")
        reference = reference_region_mask(probability, newpath=tmp)
        dvr_pet = logan_dvr_image(pet, pet.with_name(pet.name.replace(".nii.gz", ".json")), reference, newpath=tmp,
                                  brain_mask=pet_brain)
        apply_transform(dvr_pet, t1w_reference, xfm, newpath=tmp).replace(target)
    return target


def stage_dvr(folder: Path) -> None:
    """Logan DVR of every session of both twins, unless already there."""
    for kind in KINDS:
        out = folder / "derived" / kind
        out.mkdir(parents=True, exist_ok=True)
        for pet in sorted((folder / kind).glob("sub-*/ses-*/pet/*_trc-PIB_pet.nii.gz")):
            sub, ses = pet.parts[-4:-2]
            if (out / f"{sub}_{ses}_dvr_T1w.nii.gz").exists():
                continue
            start = time.perf_counter()
            logan_on_t1w(pet, folder / "noisy-truth" / sub / ses / "pet", out)
            print(f"{folder.name} {kind} {sub} {ses}: Logan {time.perf_counter() - start:.1f} s", flush=True)


# --- partial-volume correction (pure functions) ---------------------------------------------------------------


def _region_ratio(synthetic: np.ndarray, blurred_synthetic: np.ndarray) -> np.ndarray:
    """``synthetic / blurred_synthetic`` where the denominator is not ~0, else 1."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.abs(blurred_synthetic) > 1e-3, synthetic / blurred_synthetic, 1.0)


def rbv_hard(image: np.ndarray, labels: np.ndarray, sigma_vox: tuple[float, ...]) -> np.ndarray:
    """Region-based voxel-wise correction with hard regions (Thomas et al. 2011).

    GTM (Rousset et al. 1998) region values ``t`` from the region means of ``image`` and the regions' mutual
    spill-over, then ``image * S / (G S)`` with ``S = sum_j t_j 1_j`` and ``G`` the blur. ``labels``: one integer
    region per voxel (empty labels are skipped).
    """
    masks = [labels == j for j in np.unique(labels)]
    blurred = [blur(m.astype(np.float32), sigma_vox) for m in masks]
    omega = np.array([[b[mi].mean() for b in blurred] for mi in masks])
    t = np.linalg.solve(omega, np.array([image[m].mean() for m in masks]))
    synthetic = sum(tj * m for tj, m in zip(t, masks))
    blurred_synthetic = sum(tj * b for tj, b in zip(t, blurred))
    return (image * _region_ratio(synthetic, blurred_synthetic)).astype(np.float32)


def rbv_fractional(image: np.ndarray, fractions: np.ndarray, blurred_fractions: np.ndarray) -> np.ndarray:
    """RBV (Thomas et al. 2011) with fractional regions: ``image * S / (G S)``, ``S = sum_j t_j p_j``.

    Unlike hard regions, a voxel keeps its mixture of tissues (the truth's DVR is a T1w-voxel average).
    """
    t = fractional_gtm(image, fractions, blurred_fractions)
    synthetic = np.tensordot(t, fractions, axes=1)
    blurred_synthetic = np.tensordot(t, blurred_fractions, axes=1)
    return (image * _region_ratio(synthetic, blurred_synthetic)).astype(np.float32)


def shift_one_mm(image: np.ndarray, zooms: np.ndarray) -> np.ndarray:
    """``image`` moved by 1 mm along its first array axis (linear): a registration error."""
    return ndimage.shift(image, (1.0 / float(zooms[0]), 0, 0), order=1, mode="constant")


# --- measure --------------------------------------------------------------------------------------------------


def _load(path: Path) -> np.ndarray:
    return nib.load(path).get_fdata(dtype=np.float32)


class Session:
    """One session's truth (T1w grid), regions, rings and the two Logan maps."""

    def __init__(self, folder: Path, sub: str, ses: str, psf_fwhm_mm: float) -> None:
        prefix = f"{sub}_{ses}"
        anat, pet = (folder / "noisy-truth" / sub / ses / kind for kind in ("anat", "pet"))
        image = nib.load(anat / f"{prefix}_space-T1w_desc-brain_mask.nii.gz")
        self.key = (sub, ses)
        self.zooms = np.asarray(image.header.get_zooms()[:3], float)
        self.brain = np.asarray(image.dataobj) > 0
        gm, wm, csf = (np.clip(_load(anat / f"{prefix}_space-T1w_label-{k}_probseg.nii.gz"), 0, 1)
                       for k in ("GM", "WM", "CSF"))
        self.lesion = (_load(anat / f"{prefix}_space-T1w_label-lesion_mask.nii.gz") > 0.5) & self.brain
        self.demyelinated = _load(anat / f"{prefix}_space-T1w_desc-demyelinated_mask.nii.gz") > 0.5
        self.rings = myelin.distance_rings(distance_to_csf(csf, self.brain, tuple(self.zooms)))
        self.white_matter = (wm >= myelin.WM_PROBABILITY) & self.brain
        self.nawm = self.white_matter & ~self.lesion
        self.truth = _load(pet / f"{prefix}_trc-PIB_space-T1w_meas-DVR_mimap.nii.gz")
        self.logan = {kind: _load(folder / "derived" / kind / f"{prefix}_dvr_T1w.nii.gz") for kind in KINDS}
        raw_pet = folder / "noisy" / sub / ses / "pet" / f"{prefix}_trc-PIB_pet.nii.gz"
        self.psf_fwhm_mm = psf_fwhm_mm
        pet_zooms = np.asarray(nib.load(raw_pet).header.get_zooms()[:3])
        self.effective_fwhm_mm = effective_fwhm(psf_fwhm_mm, pet_zooms, self.zooms)
        self.nominal_fwhm_mm = effective_fwhm(NOMINAL_PSF_FWHM_MM, pet_zooms, self.zooms)
        # hard regions: 0 outside the brain, 1 lesion, then GM, WM, CSF by the largest probability
        tissue = np.argmax(np.stack([gm, wm, csf]), axis=0) + 2
        self.labels = np.where(self.brain, np.where(self.lesion, 1, tissue), 0).astype(np.int8)
        self.fractions = tissue_fractions(gm, wm, csf, self.brain, self.lesion)  # the participant level's regions

    def sigma(self, fwhm_mm: float) -> tuple[float, ...]:
        """Sigma in voxels of this T1w grid."""
        return sigma_voxels(fwhm_mm, self.zooms)

    def variants(self, spec: CohortSpec) -> dict[str, np.ndarray]:
        """Every DVR map of :data:`LABELS` that ``spec`` asks for."""
        eff = self.effective_fwhm_mm
        noisy, clean = self.logan["noisy"], self.logan["clean"]
        maps = {"truth": self.truth, "truth+noise": self.truth + (noisy - clean),
                "truth_blur_eff": blur(self.truth, self.sigma(eff)), "logan(clean)": clean, "logan(noisy)": noisy,
                "rbv_eff(noisy)": rbv_hard(noisy, self.labels, self.sigma(eff))}
        blurred = {eff: self._blurred_fractions(eff)}
        maps["rbvfrac_eff(noisy)"] = rbv_fractional(noisy, self.fractions, blurred[eff])
        maps["rbvfrac+vc10_eff(clean)"] = gtm_van_cittert(clean, self.fractions, blurred[eff], self.sigma(eff), 10)
        for n in spec.vc_iterations:
            maps[f"rbvfrac+vc{n}_eff(noisy)"] = gtm_van_cittert(noisy, self.fractions, blurred[eff],
                                                               self.sigma(eff), n)
            nominal = self.nominal_fwhm_mm
            maps[f"rbvfrac+vc{n}_nominal(noisy)"] = gtm_van_cittert(
                noisy, self.fractions, blurred.setdefault(nominal, self._blurred_fractions(nominal)),
                self.sigma(nominal), n)
        if spec.sensitivity:
            for name, fwhm in (("eff*0.85", 0.85 * eff), ("eff*1.15", 1.15 * eff), ("psf", self.psf_fwhm_mm)):
                maps[f"rbvfrac+vc10_{name}(noisy)"] = gtm_van_cittert(
                    noisy, self.fractions, self._blurred_fractions(fwhm), self.sigma(fwhm), 10)
            shifted = shift_one_mm(noisy, self.zooms)
            maps["logan_shift1mm(noisy)"] = shifted
            maps["rbvfrac+vc10_eff_shift1mm(noisy)"] = gtm_van_cittert(shifted, self.fractions, blurred[eff],
                                                                       self.sigma(eff), 10)
        return maps

    def _blurred_fractions(self, fwhm_mm: float) -> np.ndarray:
        return np.stack([blur(p, self.sigma(fwhm_mm)) for p in self.fractions])


def patient_row(session: Session, dvr: np.ndarray, reference: pd.DataFrame, truth_pct: float | None) -> dict:
    """Dice, % demyelinated (and its error at baseline) and biases of one patient session's map."""
    mask = myelin.demyelinated_voxels(dvr, session.lesion, session.rings, reference)
    pct = myelin.myelin_indices(session.lesion, mask, None)["pct_demyelinated_t0"]
    return {"dice": dice(mask, session.demyelinated), "pct_demyelinated": pct,
            "pct_error_t0": np.nan if truth_pct is None else pct - truth_pct,
            "nawm_bias": float((dvr - session.truth)[session.nawm].mean()),
            "lesion_bias": float((dvr - session.truth)[session.lesion].mean())}


def stage_measure(folder: Path, spec: CohortSpec) -> None:
    """Every variant of every session -> ``<folder>/dvr_partial_volume_sessions.tsv`` (patients, then controls)."""
    start = time.perf_counter()
    truth_table = pd.read_csv(folder / "noisy-truth" / "participants.tsv", sep="\t",
                              na_values=["n/a"]).set_index("participant_id")
    psf = json.loads((folder / "noisy-psf.json").read_text())
    controls = [(sub, "ses-01") for sub in truth_table.index[truth_table["group"] == "HC"]]
    patients = [(sub, ses) for sub in truth_table.index[truth_table["group"] == "MS"] for ses in ("ses-01", "ses-02")]
    samples: dict[str, list[pd.DataFrame]] = {}
    control_errors: dict[str, list[np.ndarray]] = {}
    fwhm = {}
    for sub, ses in controls:
        session = Session(folder, sub, ses, psf[f"{sub}_{ses}"])
        fwhm[f"{sub}_{ses}"] = session.effective_fwhm_mm
        for name, dvr in session.variants(spec).items():
            samples.setdefault(name, []).append(
                myelin.white_matter_samples(dvr, session.white_matter, session.rings))
            control_errors.setdefault(name, []).append((dvr - session.truth)[session.white_matter])
    references = {name: myelin.control_reference(tables) for name, tables in samples.items()}
    rows = []
    for sub, ses in patients:
        session = Session(folder, sub, ses, psf[f"{sub}_{ses}"])
        fwhm[f"{sub}_{ses}"] = session.effective_fwhm_mm
        truth_pct = float(truth_table.loc[sub, "pct_demyelinated_ses01"]) if ses == "ses-01" else None
        for name, dvr in session.variants(spec).items():
            rows.append({"cohort": folder.name, "variant": name, "participant_id": sub, "session": ses,
                         "psf_fwhm_mm": session.psf_fwhm_mm, "effective_fwhm_mm": session.effective_fwhm_mm,
                         **patient_row(session, dvr, references[name], truth_pct)})
        print(f"{folder.name} {sub} {ses}: {time.perf_counter() - start:.0f} s", flush=True)
    for name, reference in references.items():
        deep = reference.set_index("ring").loc[DEEP_RING]
        rows.append({"cohort": folder.name, "variant": name, "participant_id": "controls", "session": "ses-01",
                     "control_wm_bias": float(np.concatenate(control_errors[name]).mean()),
                     "deep_wm_mean": deep["mean"], "deep_wm_sd": deep["sd"], "deep_wm_threshold": deep["threshold"]})
    pd.DataFrame(rows).to_csv(folder / SESSIONS_TSV, sep="\t", index=False, na_rep="n/a")
    seconds = time.perf_counter() - start
    (folder / "dvr_partial_volume_timing.json").write_text(json.dumps(
        {"measure_s": seconds, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
         "effective_fwhm_mm": fwhm}, indent=1))
    print(f"{folder.name}: measured in {seconds:.0f} s", flush=True)


# --- report ---------------------------------------------------------------------------------------------------


def summarise(sessions: pd.DataFrame) -> pd.DataFrame:
    """Per cohort and variant: medians over patient sessions (Dice) or patients (% at baseline), mean biases."""
    rows = []
    for (cohort, variant), table in sessions.groupby(["cohort", "variant"], sort=False):
        patients = table[table["participant_id"] != "controls"]
        controls = table[table["participant_id"] == "controls"].iloc[0]
        t0 = patients["pct_error_t0"].dropna()
        rows.append({"cohort": cohort, "variant": variant, "n_sessions": len(patients),
                     "dice_median": patients["dice"].median(), "dice_min": patients["dice"].min(),
                     "pct_t0_abs_err_median": t0.abs().median(), "pct_t0_err_median": t0.median(),
                     "nawm_bias": patients["nawm_bias"].mean(), "lesion_bias": patients["lesion_bias"].mean(),
                     "control_wm_bias": controls["control_wm_bias"], "deep_wm_sd": controls["deep_wm_sd"],
                     "deep_wm_threshold": controls["deep_wm_threshold"]})
    return pd.DataFrame(rows)


READING = "## Reading (written by hand after the run"
NOTES = """\
Columns: `dice_median`, `dice_min` over patient sessions (both sessions, each on its own T1w grid and lesion mask);
`pct_t0_*`: % demyelinated lesion voxels at baseline minus the truth table's, median of |error| and of the signed
error over patients; `nawm_bias`, `lesion_bias`: mean(map − truth DVR) in the patients' NAWM and lesions;
`control_wm_bias`: the same in the controls' WM (WM probability ≥ 0.5); `deep_wm_sd`, `deep_wm_threshold`: the
controls' reference in the capped ring (≥ 12 mm from CSF). Each variant is classified with its own control reference.
`eff`: the effective FWHM (PSF ⊕ PET voxel ⊕ resampling ⊖ T1w voxel); `VCn`: n Van Cittert iterations; every PVC
and sensitivity row is of the acquired (noisy) PET unless it says noise-free.

Caveats: the truth's tissue maps, brain and lesion masks and the true PET → T1w transform and reference region are
used throughout (no participant level): the Dice is that of the PET physics alone, not of the pipeline
(`benchmarks/group_phantom.py`'s 0.36 also counts registration, the template reference region and the lesion-mask
disagreement). Follow-up sessions are classified on their own grid and lesion mask, not through the group level's
follow-up registration; % demyelinated at baseline only. The PVC acts on the DVR map, not on the frames. One seed
(11); 6 patients at 2 mm, 2 at 1 mm (indicative only).
"""


def stage_report(folders: list[Path], results: Path, command: str) -> None:
    """Summary tables (markdown and TSV) of the cohorts measured; a hand-written reading already there is kept."""
    sessions = pd.concat([pd.read_csv(folder / SESSIONS_TSV, sep="\t", na_values=["n/a"]) for folder in folders])
    summary = summarise(sessions)
    summary.to_csv(results.with_suffix(".tsv"), sep="\t", index=False, na_rep="n/a")
    timings = {folder.name: json.loads((folder / "dvr_partial_volume_timing.json").read_text()) for folder in folders}
    parts = ["# Demyelinated-voxel Dice of the acquired DVR: partial volume and PVC (issue 16)\n",
             f"Command: `{command}`\n",
             f"Date: {datetime.datetime.now():%Y-%m-%d %H:%M}; {platform.machine()}, {os.cpu_count()} CPUs, no GPU. "
             "Method: `benchmarks/dvr_partial_volume.py` (module docstring).\n"]
    for folder in folders:
        spec, timing = COHORTS[folder.name], timings[folder.name]
        table = summary[summary["cohort"] == folder.name].drop(columns="cohort")
        table.insert(0, "variant", table.pop("variant").map(lambda name: LABELS.get(name, name)))
        fwhm = np.array(list(timing["effective_fwhm_mm"].values()))
        parts.append(f"## {folder.name}: seed {spec.seed}, {spec.n_controls} controls, {spec.n_patients} patients "
                     f"({table['n_sessions'].iloc[0]} patient sessions); effective FWHM {fwhm.min():.1f}–"
                     f"{fwhm.max():.1f} mm; measure {timing['measure_s']:.0f} s, peak RSS "
                     f"{timing['peak_rss_gb']:.1f} GB\n\n{markdown_table(table.drop(columns='n_sessions'))}\n")
    parts.append(NOTES)
    if results.is_file() and READING in results.read_text():
        parts.append(READING + results.read_text().split(READING, 1)[1].rstrip("\n") + "\n")
    results.write_text("\n".join(parts))
    print("\n".join(parts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scratch", type=Path, required=True, help="one folder per cohort: <scratch>/<name>")
    parser.add_argument("--cohorts", nargs="+", choices=list(COHORTS), default=list(COHORTS))
    parser.add_argument("--stage", nargs="+", choices=STAGES, default=list(STAGES), help="stages to run")
    parser.add_argument("--results", type=Path, default=RESULTS / "dvr_partial_volume.md")
    args = parser.parse_args(argv)
    folders = [args.scratch / name for name in args.cohorts]
    for folder in folders:
        spec = COHORTS[folder.name]
        if "cohort" in args.stage:
            stage_cohort(folder, spec)
        if "dvr" in args.stage:
            stage_dvr(folder)
        if "measure" in args.stage:
            stage_measure(folder, spec)
    if "report" in args.stage:
        command = shlex.join(["OMP_NUM_THREADS=1", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1", ".venv/bin/python",
                              "benchmarks/dvr_partial_volume.py", *(sys.argv[1:] if argv is None else argv)])
        stage_report(folders, args.results, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
