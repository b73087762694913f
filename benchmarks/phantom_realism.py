"""Does the phantom look like real MS scans? The same contrast statistics on real and phantom images.

One function, :func:`contrast_statistics`, measures every scan, real or phantom, given its T1w, T2w and FLAIR on
one grid and four masks (brain, lesion, WM, GM): per modality the ratio of means lesion / NAWM and GM / WM and the
coefficient of variation (SD / mean) of the lesion, NAWM, GM and WM intensities; the lesion volume distribution
(connected components, 26-connectivity); and the intensity histogram inside the brain, intensities divided by the
NAWM median. NAWM is the WM outside the lesions dilated by 2 voxels (the 6-connected cross applied twice); WM and
GM exclude the lesion voxels. Only the masks' origin differs:

- **real** (:func:`real_regions`): WM and GM are the top and middle classes of a 3-class k-means of the T1w inside
  the brain (fitted on 200 000 voxels drawn at random, seed 0; CSF < GM < WM by centroid), each eroded by one voxel.
  Scans: open_ms_data (Lesjak et al. 2018, CC-BY) cross-sectional patients 07 and 19 in MNI space (skull-stripped,
  brain = T1w > 0, expert lesion masks) and the longitudinal patients 01 (studies 1 and 2), 03 (study 2) and
  04 (study 1) as msynth's participant level wrote them (``--real-derivatives``: space-T1w images, brain mask and
  the *automatic* lesion mask, since these patients have no expert mask);
- **phantom** (:func:`phantom_statistics`): a cohort of ``--patients`` patients per ``--voxel-sizes`` from
  :func:`msynth.phantom.cohort.generate_cohort`, each session brought onto its T1w grid with the true transforms
  and N4 in the true brain (:func:`msynth.phantom.aligned.align_session`); WM and GM are the truth probability maps
  above 0.9 or, with ``--phantom-regions kmeans``, the real scans' k-means classes (which tells how much of a GM/WM
  difference is the region definition); the lesion mask is the truth. ``--no-phantom-n4`` measures the phantom
  images without N4 (the acquired intensities moved by the true transforms: what the bias correction changes).

The summary compares, for each ratio, the phantom median with the real median: within 20 % when
``|(p - 1) / (r - 1) - 1| <= 0.2`` (the contrast, ratio - 1, is off by at most a fifth).

Time on the 2-core development machine beside a training run (results/phantom_realism_before.md): the six real
scans 16 s; two phantom patients 648 s at 1 mm and 84 s at 2 mm (generation, moving and N4), so the defaults
(2 patients at 1 and 2 mm, one process) take about 12 minutes; ``--reuse-phantom`` skips the generation. Run::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/phantom_realism.py --scratch /work/bench/realism \\
        --real-derivatives /work/bench/real/derivatives [--label before]

While calibrating the phantom, the real statistics come from the cache that a full or ``--real-only`` run leaves
in ``--scratch``::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/phantom_realism.py --scratch /work/bench/realism --phantom-only \\
        --voxel-sizes 1 --patients 1

Results: ``benchmarks/results/phantom_realism[_LABEL].md``, ``.tsv`` (every number) and ``.png`` (brain histograms;
one axial slice per modality, a real scan above the phantom ones), with the command at the top of the report.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage
from sklearn.cluster import KMeans

from msynth.phantom.aligned import align_session
from msynth.phantom.cohort import CohortResult, generate_cohort

RESULTS = Path(__file__).parent / "results"
OPEN_MS = Path(__file__).resolve().parents[2] / "shared" / "data" / "open_ms_data"
MODALITIES = ("T1w", "T2w", "FLAIR")
#: modality → file prefix of open_ms_data's cross-sectional MNI images
MNI_PREFIX = {"T1w": "T1", "T2w": "T2", "FLAIR": "FLAIR"}
MNI_STEM = "_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
MNI_LESIONS = "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz"
MNI_PATIENTS = ("07", "19")
#: (subject, session) of the longitudinal patients in ``--real-derivatives`` (patient01 study1/2, 03 study2, 04 study1)
DERIVATIVE_SESSIONS = (("L01", "1"), ("L01", "2"), ("L03", "2"), ("L04", "1"))
#: normalised-intensity histogram bins (intensity / NAWM median)
BINS = np.linspace(0.0, 3.0, 61)
#: column → table heading (the issue's four ratios first)
RATIOS = {"FLAIR_lesion_nawm": "FLAIR lesion / NAWM", "T2w_lesion_nawm": "T2w lesion / NAWM",
          "T1w_lesion_nawm": "T1w lesion / NAWM", "T1w_gm_wm": "T1w GM / WM",
          "T2w_gm_wm": "T2w GM / WM", "FLAIR_gm_wm": "FLAIR GM / WM"}
LESION_COLUMNS = ("lesion_count", "lesion_total_ml", "lesion_q1_ml", "lesion_median_ml", "lesion_q3_ml")
WITHIN = 0.2
TISSUE_PROBABILITY = 0.9
KMEANS_SAMPLE = 200_000


@dataclass(frozen=True)
class ContrastStatistics:
    """What :func:`contrast_statistics` measures.

    Attributes
    ----------
    values
        Scalars: ``{modality}_lesion_nawm``, ``{modality}_gm_wm`` (ratios of means), ``{modality}_cv_{region}``
        (SD / mean; region lesion, nawm, gm, wm), :data:`LESION_COLUMNS` (mL) and voxel counts ``n_{region}``.
    histograms
        Modality → share of the brain voxels in each of the :data:`BINS` (intensity / NAWM median).
    nawm_median
        Modality → NAWM median intensity (the histograms' unit).
    """

    values: dict[str, float]
    histograms: dict[str, np.ndarray]
    nawm_median: dict[str, float]


def lesion_distribution(lesion: np.ndarray, voxel_volume_ml: float) -> dict[str, float]:
    """Count, total volume and quartiles of the component volumes (mL) of ``lesion`` (26-connected components)."""
    labels, count = ndimage.label(lesion, structure=np.ones((3, 3, 3), bool))
    volumes = np.bincount(labels.ravel())[1:] * voxel_volume_ml
    q1, median, q3 = np.percentile(volumes, [25, 50, 75]) if count else (np.nan,) * 3
    return {"lesion_count": count, "lesion_total_ml": float(volumes.sum()), "lesion_q1_ml": float(q1),
            "lesion_median_ml": float(median), "lesion_q3_ml": float(q3)}


def contrast_statistics(images: dict[str, np.ndarray], brain: np.ndarray, lesion: np.ndarray, wm: np.ndarray,
                        gm: np.ndarray, voxel_volume_ml: float) -> ContrastStatistics:
    """Contrast, homogeneity, lesion volumes and brain histogram of one scan (all arrays on one grid).

    Parameters
    ----------
    images
        Modality (:data:`MODALITIES`) → intensities.
    brain, lesion, wm, gm
        Boolean masks; lesion, WM and GM are restricted to the brain, WM and GM exclude the lesion.
    voxel_volume_ml
        Volume of one voxel.

    Returns
    -------
    ContrastStatistics
        NAWM is the WM outside the lesion dilated by 2 voxels (6-connected cross, twice).
    """
    lesion = lesion & brain
    regions = {"lesion": lesion, "nawm": wm & brain & ~ndimage.binary_dilation(lesion, iterations=2),
               "gm": gm & brain & ~lesion, "wm": wm & brain & ~lesion}
    values: dict[str, float] = {f"n_{name}": int(mask.sum()) for name, mask in regions.items()}
    histograms, medians = {}, {}
    for key, image in images.items():
        means = {name: float(image[mask].mean()) if mask.any() else np.nan for name, mask in regions.items()}
        values[f"{key}_lesion_nawm"] = means["lesion"] / means["nawm"]
        values[f"{key}_gm_wm"] = means["gm"] / means["wm"]
        for name, mask in regions.items():
            values[f"{key}_cv_{name}"] = float(image[mask].std()) / means[name] if mask.any() else np.nan
        medians[key] = float(np.median(image[regions["nawm"]]))
        histograms[key] = np.histogram(image[brain] / medians[key], BINS)[0] / brain.sum()
    return ContrastStatistics({**values, **lesion_distribution(lesion, voxel_volume_ml)}, histograms, medians)


@dataclass(frozen=True)
class Scan:
    """One scan ready to measure: images and masks on one grid.

    Attributes
    ----------
    row
        Identification columns: ``source`` (real / phantom), ``scan``, ``voxel_size_mm`` (largest side),
        ``lesion_mask`` (expert, automatic, truth).
    images, brain, lesion, wm, gm, affine
        As :func:`contrast_statistics` takes them; the grid's affine (for the figure's axial slice).
    """

    row: dict[str, str | float]
    images: dict[str, np.ndarray]
    brain: np.ndarray
    lesion: np.ndarray
    wm: np.ndarray
    gm: np.ndarray
    affine: np.ndarray


@dataclass(frozen=True)
class Measurement:
    """One measured scan: its table row, brain histograms, a normalised axial slice per modality and its aspect."""

    row: dict[str, str | float]
    histograms: dict[str, np.ndarray]
    slices: dict[str, np.ndarray]
    aspect: float


def axial_slices(scan: Scan, medians: dict[str, float]) -> tuple[dict[str, np.ndarray], float]:
    """Per modality an axial slice (RAS-reoriented, divided by the NAWM median), and its voxels' height / width.

    The slice is the one with the most lesion voxels between 40 and 70 % of the brain's height (its middle if none).
    """
    orientation = nib.orientations.io_orientation(scan.affine)

    def ras(volume: np.ndarray) -> np.ndarray:
        return nib.orientations.apply_orientation(volume, orientation)

    low, high = np.percentile(np.flatnonzero(ras(scan.brain).any(axis=(0, 1))), [40, 70]).astype(int)
    per_slice = ras(scan.lesion).sum(axis=(0, 1))[low:high + 1]
    z = low + int(np.argmax(per_slice)) if per_slice.any() else (low + high) // 2
    zooms = np.empty(3)
    zooms[orientation[:, 0].astype(int)] = nib.affines.voxel_sizes(scan.affine)
    slices = {key: (ras(image * scan.brain)[:, :, z] / medians[key]).astype(np.float32)
              for key, image in scan.images.items()}
    return slices, float(zooms[1] / zooms[0])


def measure(scan: Scan) -> Measurement:
    """:func:`contrast_statistics` of ``scan`` with its identification, and its figure slices."""
    zooms = nib.affines.voxel_sizes(scan.affine)
    stats = contrast_statistics(scan.images, scan.brain, scan.lesion, scan.wm, scan.gm, float(np.prod(zooms)) / 1000)
    row = {**scan.row, **stats.values}
    print({key: round(row[key], 3) if isinstance(row[key], float) else row[key] for key in [*scan.row, *RATIOS]},
          flush=True)
    return Measurement(row, stats.histograms, *axial_slices(scan, stats.nawm_median))


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Float64 data and affine of a NIfTI file."""
    image = nib.load(path)
    return np.asarray(image.dataobj, dtype=np.float64), image.affine


def real_regions(t1w: np.ndarray, brain: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """WM and GM of a real scan: the top and middle classes of a 3-class k-means of the T1w in the brain, eroded.

    The k-means (``n_init=10``) is fitted on :data:`KMEANS_SAMPLE` brain voxels drawn with ``seed`` and labels every
    brain voxel; classes are ordered by centroid (CSF < GM < WM on T1w); each mask is eroded by one voxel
    (6-connected cross).
    """
    values = t1w[brain].reshape(-1, 1)
    rng = np.random.default_rng(seed)
    sample = values[rng.choice(len(values), min(KMEANS_SAMPLE, len(values)), replace=False)]
    kmeans = KMeans(3, n_init=10, random_state=seed).fit(sample)
    rank = np.argsort(np.argsort(kmeans.cluster_centers_.ravel()))  # cluster → 0 CSF, 1 GM, 2 WM
    classes = np.full(t1w.shape, -1)
    classes[brain] = rank[kmeans.predict(values)]
    return ndimage.binary_erosion(classes == 2), ndimage.binary_erosion(classes == 1)


def real_scan(name: str, images: dict[str, Path], brain: np.ndarray | Path, lesion: Path, lesion_mask: str) -> Scan:
    """A real scan with :func:`real_regions`; ``brain`` is a mask file or, when an array, the brain already."""
    data = {key: load(path)[0] for key, path in images.items()}
    affine = load(images["T1w"])[1]
    brain_mask = brain if isinstance(brain, np.ndarray) else load(brain)[0] > 0
    wm, gm = real_regions(data["T1w"], brain_mask)
    voxel = float(max(nib.affines.voxel_sizes(affine)))
    return Scan({"source": "real", "scan": name, "voxel_size_mm": round(voxel, 2), "lesion_mask": lesion_mask,
                 "regions": "kmeans", "n4": "yes"},
                data, brain_mask, load(lesion)[0] > 0, wm, gm, affine)


def mni_patient(number: str) -> Scan:
    """open_ms_data's cross-sectional patient ``number`` in MNI space (brain = T1w > 0, expert lesion mask)."""
    folder = OPEN_MS / "cross_sectional" / "MNI" / f"patient{number}"
    images = {key: folder / f"{prefix}{MNI_STEM}" for key, prefix in MNI_PREFIX.items()}
    return real_scan(f"P{number}", images, load(images["T1w"])[0] > 0, folder / MNI_LESIONS, "expert")


def derivative_session(derivatives: Path, subject: str, session: str) -> Scan | None:
    """A longitudinal session from msynth's participant-level outputs (automatic lesion mask); None if incomplete."""
    anat = derivatives / f"sub-{subject}" / f"ses-{session}" / "anat"
    stem = anat / f"sub-{subject}_ses-{session}_space-T1w"
    images = {key: Path(f"{stem}_desc-preproc_{key}.nii.gz") for key in MODALITIES}
    brain, lesion = Path(f"{stem}_desc-brain_mask.nii.gz"), Path(f"{stem}_label-lesion_mask.nii.gz")
    missing = [path.name for path in [*images.values(), brain, lesion] if not path.exists()]
    if missing:
        reason = f"no folder {anat}" if not anat.is_dir() else f"missing {', '.join(missing)} in {anat}"
        print(f"skipping sub-{subject} ses-{session}: {reason}", flush=True)
        return None
    return real_scan(f"{subject}-{session}", images, brain, lesion, "automatic")


def real_measurements(derivatives: Path | None) -> list[Measurement]:
    """Every real scan: the two MNI patients, then the longitudinal sessions found in ``derivatives``."""
    scans = [mni_patient(number) for number in MNI_PATIENTS]
    measured = [measure(scan) for scan in scans]
    if derivatives is None:
        print("no --real-derivatives: the longitudinal patients are skipped", flush=True)
        return measured
    for subject, session in DERIVATIVE_SESSIONS:
        scan = derivative_session(derivatives, subject, session)
        if scan is not None:
            measured.append(measure(scan))
    return measured


def phantom_cohort(voxel_size: float, seed: int, n_patients: int, folder: Path, *, reuse: bool,
                   n_procs: int) -> CohortResult:
    """Generate the patient cohort in ``folder / "bids"`` (or, with ``reuse``, take the one already there)."""
    bids, truth = folder / "bids", folder / "bids-truth"
    if reuse and (bids / "participants.tsv").exists():
        print(f"reusing the phantom cohort in {bids}", flush=True)
        return CohortResult(bids, truth, bids / "derivatives" / "lesions",
                            pd.read_csv(truth / "participants.tsv", sep="\t"), {})
    start = time.perf_counter()
    cohort = generate_cohort(bids, n_controls=0, n_patients=n_patients, voxel_size=voxel_size, seed=seed,
                             overwrite=True, n_procs=n_procs)
    print(f"generated {n_patients} patient(s) at {voxel_size:g} mm in {time.perf_counter() - start:.0f} s", flush=True)
    return cohort


def phantom_scan(cohort: CohortResult, subject: str, session: str, folder: Path, voxel_size: float,
                 regions: str = "truth", n4: bool = True) -> Scan:
    """One phantom session on its T1w grid (true transforms, N4 in the true brain unless ``n4`` is false).

    WM and GM are the truth probabilities > 0.9 (``regions='truth'``) or, as on the real scans, the eroded k-means
    classes of the T1w (``'kmeans'``, :func:`real_regions`; lesion voxels removed).
    """
    aligned = align_session(cohort, subject, session, list(MODALITIES), newpath=folder / f"{subject}-{session}",
                            bias_correction=n4)
    truth = cohort.truth_dir / f"sub-{subject}" / f"ses-{session}" / "anat"
    gm_path = truth / f"sub-{subject}_ses-{session}_space-T1w_label-GM_probseg.nii.gz"
    images = {key: load(path)[0] for key, path in aligned.images.items()}
    brain, affine = load(aligned.brain_mask)
    brain, lesion = brain > 0, load(aligned.lesion_mask)[0] > 0
    if regions == "kmeans":
        wm, gm = (mask & ~lesion for mask in real_regions(images["T1w"], brain))
    else:
        wm, gm = load(aligned.wm_probseg)[0] > TISSUE_PROBABILITY, load(gm_path)[0] > TISSUE_PROBABILITY
    return Scan({"source": "phantom", "scan": f"{subject}-{session}", "voxel_size_mm": voxel_size,
                 "lesion_mask": "truth", "regions": regions, "n4": "yes" if n4 else "no"}, images, brain, lesion, wm,
                gm, affine)


def phantom_measurements(voxel_size: float, seed: int, n_patients: int, scratch: Path, *,
                         sessions: Sequence[str] = ("01",), reuse: bool = False, n_procs: int = 1,
                         regions: str = "truth", n4: bool = True) -> list[Measurement]:
    """Generate (or reuse) a cohort in ``scratch`` and measure ``sessions`` of each patient (WM/GM: ``regions``)."""
    folder = scratch / f"phantom-{voxel_size:g}mm-seed{seed}-n{n_patients}"
    cohort = phantom_cohort(voxel_size, seed, n_patients, folder, reuse=reuse, n_procs=n_procs)
    subjects = cohort.participants["participant_id"].str.removeprefix("sub-")
    return [measure(phantom_scan(cohort, subject, session, folder / ("aligned" if n4 else "aligned-no-n4"),
                                 voxel_size, regions, n4))
            for subject in subjects for session in sessions]


def phantom_statistics(voxel_size: float, seed: int, n_patients: int, scratch: Path, *,
                       sessions: Sequence[str] = ("01",), reuse: bool = False, n_procs: int = 1,
                       regions: str = "truth", n4: bool = True) -> pd.DataFrame:
    """The table rows of :func:`phantom_measurements` (one per patient session); read it with :func:`summary`."""
    measured = phantom_measurements(voxel_size, seed, n_patients, scratch, sessions=sessions, reuse=reuse,
                                    n_procs=n_procs, regions=regions, n4=n4)
    return pd.DataFrame([m.row for m in measured])


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per ratio of :data:`RATIOS`: the real median and, per phantom voxel size, the median and the 20 % check.

    ``within_20pct_{v}mm`` is ``|(p - 1) / (r - 1) - 1| <= 0.2`` with ``p`` the phantom and ``r`` the real median
    (empty where either is missing).
    """
    real = frame[frame["source"] == "real"]
    phantom = frame[frame["source"] == "phantom"]
    rows = []
    for column, name in RATIOS.items():
        r = real[column].median() if len(real) else np.nan
        row: dict[str, str | float] = {"contrast": name, "real_median": round(r, 3)}
        for voxel_size, group in phantom.groupby("voxel_size_mm"):
            p = group[column].median()
            row[f"phantom_{voxel_size:g}mm"] = round(p, 3)
            off = abs((p - 1) / (r - 1) - 1) if np.isfinite(r) else np.nan
            row[f"within_20pct_{voxel_size:g}mm"] = "" if np.isnan(off) else ("yes" if off <= WITHIN else "no")
        rows.append(row)
    return pd.DataFrame(rows)


def save_real(measured: list[Measurement], path: Path) -> None:
    """Cache the real measurements (rows, histograms, slices, aspects) in one ``.npz``."""
    arrays = {f"{kind}_{i}_{key}": array for i, m in enumerate(measured)
              for kind, maps in (("hist", m.histograms), ("slice", m.slices)) for key, array in maps.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, rows=json.dumps([m.row for m in measured]),
                        aspects=np.array([m.aspect for m in measured]), **arrays)


def load_real(path: Path) -> list[Measurement]:
    """The real measurements :func:`save_real` cached (none if there is no cache)."""
    if not path.exists():
        print(f"no real statistics cached in {path}: the report has the phantom only", flush=True)
        return []
    with np.load(path) as cache:
        rows = json.loads(str(cache["rows"]))
        return [Measurement(row, {key: cache[f"hist_{i}_{key}"] for key in MODALITIES},
                            {key: cache[f"slice_{i}_{key}"] for key in MODALITIES}, float(cache["aspects"][i]))
                for i, row in enumerate(rows)]


def figure(measured: list[Measurement], path: Path) -> None:
    """Brain histograms per modality (real in blues, phantom in reds), then one axial slice per source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = {}  # one slice row per real source and per phantom voxel size: the first scan of each
    for m in measured:
        shown.setdefault(f"{m.row['source']} {m.row['voxel_size_mm']:g} mm" if m.row["source"] == "phantom"
                         else "real", m)
    fig, axes = plt.subplots(1 + len(shown), len(MODALITIES), figsize=(4 * len(MODALITIES), 3.2 * (1 + len(shown))),
                             squeeze=False)
    centres = (BINS[:-1] + BINS[1:]) / 2
    real = [m for m in measured if m.row["source"] == "real"]
    phantom = [m for m in measured if m.row["source"] == "phantom"]
    for ax, key in zip(axes[0], MODALITIES):
        for group, cmap in ((real, plt.cm.Blues), (phantom, plt.cm.Reds)):
            for i, m in enumerate(group):
                ax.plot(centres, m.histograms[key], color=cmap(0.45 + 0.5 * i / max(1, len(group) - 1)), lw=1,
                        label=f"{m.row['source']} {m.row['scan']} ({m.row['voxel_size_mm']:g} mm)")
        ax.set(title=f"{key} in the brain", xlabel="intensity / NAWM median", ylabel="share of brain voxels")
    axes[0, -1].legend(fontsize=6)
    for row_axes, (name, m) in zip(axes[1:], shown.items()):
        for ax, key in zip(row_axes, MODALITIES):
            ax.imshow(m.slices[key].T, origin="lower", cmap="gray", vmin=0, vmax=2.5, aspect=m.aspect)
            ax.set_title(f"{name} {m.row['scan']}: {key}", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table (numbers to 3 decimals)."""
    frame = frame.map(lambda v: f"{v:.3f}".rstrip("0").rstrip(".") if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in frame.to_numpy())])


def report(frame: pd.DataFrame, command: str, notes: list[str]) -> str:
    """The Markdown report: provenance, summary, per-scan ratios, CVs and lesion volumes."""
    ids = [c for c in ("source", "scan", "voxel_size_mm", "lesion_mask", "regions", "n4") if c in frame]
    cvs = [f"{key}_cv_{region}" for key in MODALITIES for region in ("lesion", "nawm", "gm", "wm")]
    return "\n\n".join([
        "# Phantom realism: contrast statistics of real and phantom scans",
        f"Command: `{command}`\n\nDate: {datetime.datetime.now():%Y-%m-%d %H:%M}; machine: {platform.node()}, "
        f"{platform.platform()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
        f"Python {platform.python_version()}.",
        "Method: `benchmarks/phantom_realism.py` (module docstring). Real WM/GM: 3-class k-means of the T1w in the "
        "brain, eroded by one voxel; phantom WM/GM: truth probability > 0.9 on the T1w grid, or the same k-means "
        "(column `regions`, option `--phantom-regions`). NAWM: WM outside the "
        "lesions dilated by 2 voxels. Lesion masks: expert (open_ms_data MNI patients), automatic (msynth's "
        "participant level; the longitudinal patients have no expert mask), truth (phantom).",
        *notes,
        "## Summary (medians; within 20 %: |(phantom - 1) / (real - 1) - 1| <= 0.2)",
        markdown_table(summary(frame)),
        "## Ratios of means per scan",
        markdown_table(frame[ids + list(RATIOS)].rename(columns=RATIOS)),
        "## Coefficient of variation (SD / mean) per region",
        markdown_table(frame[ids + cvs]),
        "## Lesion volume distribution (26-connected components; mL)",
        markdown_table(frame[ids + list(LESION_COLUMNS)]),
    ]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scratch", type=Path, default=None,
                        help="phantom cohorts and the real-statistics cache (default: a temporary folder)")
    parser.add_argument("--real-derivatives", type=Path, default=None,
                        help="msynth participant-level outputs of the longitudinal open_ms_data patients")
    parser.add_argument("--voxel-sizes", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--patients", type=int, default=2, help="phantom patients per voxel size")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--sessions", nargs="+", default=["01"], help="phantom sessions measured per patient")
    parser.add_argument("--nprocs", type=int, default=1, help="phantom patients generated in parallel")
    parser.add_argument("--phantom-regions", choices=("truth", "kmeans"), default="truth",
                        help="phantom WM/GM: truth probability > 0.9 (default) or the real scans' T1w k-means")
    parser.add_argument("--phantom-n4", action=argparse.BooleanOptionalAction, default=True,
                        help="N4 on the phantom images, as the participant level (default); --no-phantom-n4 keeps "
                        "the acquired intensities (what N4 does to the contrasts)")
    parser.add_argument("--reuse-phantom", action="store_true",
                        help="measure the cohorts already in --scratch (stale once the phantom changes)")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--real-only", action="store_true", help="measure (and cache) the real scans only")
    only.add_argument("--phantom-only", action="store_true", help="take the real statistics from the cache")
    parser.add_argument("--label", default=None, help="results go to phantom_realism_LABEL.{md,tsv,png}")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the results files")
    args = parser.parse_args()
    command = "OMP_NUM_THREADS=1 .venv/bin/python " + shlex.join(sys.argv)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = args.scratch or Path(tmp)
        cache, notes = scratch / "real_statistics.npz", []
        if args.phantom_only:
            measured = load_real(cache)
            notes.append(f"Real statistics from the cache `{cache}`.")
        else:
            start = time.perf_counter()
            measured = real_measurements(args.real_derivatives)
            save_real(measured, cache)
            notes.append(f"Real scans measured in {time.perf_counter() - start:.0f} s.")
        if not args.real_only:
            for voxel_size in args.voxel_sizes:
                start = time.perf_counter()
                measured += phantom_measurements(voxel_size, args.seed, args.patients, scratch,
                                                 sessions=args.sessions, reuse=args.reuse_phantom,
                                                 n_procs=args.nprocs, regions=args.phantom_regions,
                                                 n4=args.phantom_n4)
                notes.append(f"Phantom at {voxel_size:g} mm ({args.patients} patient(s), seed {args.seed}, "
                             f"session(s) {' '.join(args.sessions)}): {time.perf_counter() - start:.0f} s "
                             "(generation and alignment).")
        frame = pd.DataFrame([m.row for m in measured])
        args.results.mkdir(parents=True, exist_ok=True)
        stem = args.results / ("phantom_realism" + (f"_{args.label}" if args.label else ""))
        frame.to_csv(stem.with_suffix(".tsv"), sep="\t", index=False, float_format="%.4g")
        stem.with_suffix(".md").write_text(report(frame, command, notes))
        figure(measured, stem.with_suffix(".png"))
        print(summary(frame).to_string(index=False))
        print(f"written: {stem}.{{md,tsv,png}}")


if __name__ == "__main__":
    main()
