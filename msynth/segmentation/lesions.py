"""White-matter lesion masks in space-T1w: checks of given masks, automatic detection, and per-lesion statistics.

Two sources (the sidecar records which):

* **Given** masks (``--lesion-masks``) are checked by :func:`check_lesion_mask` against the image they were drawn on,
  then brought into space-T1w through the preprocessing transforms, either with nearest-neighbour interpolation or
  with linear interpolation followed by :func:`binarize_resampled` (threshold 0.5, which keeps the lesion volume
  unbiased when the grids differ in voxel size).
* **Automatic** masks (:func:`detect_lesions`) from a FLAIR in space-T1w and the T1w tissue probabilities: FLAIR
  hyperintensity outliers relative to the tissue classes, grown into the hyperintense neighbourhood, in the spirit
  of the lesion growth algorithm LST-LGA (Schmidt et al., NeuroImage 2012;59:3774-3783). Its parameters live in
  ``msynth/segmentation/data/lesion_detection.json``.

Lesions are the connected components of a mask with 26-connectivity (voxels touching by a face, an edge or a
corner belong to one lesion), the convention of FSL ``cluster`` and of most lesion-count studies; 6-connectivity is
available.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from importlib import resources
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from msynth.preprocessing._io import output_path, write_like
from msynth.preprocessing.checks import InputImageError, check_image

LOGGER = logging.getLogger("msynth.segmentation")

PathOrStr = str | PathLike[str]

#: Largest distance (mm) between where the mask's and the reference's affines put the field-of-view corners.
AFFINE_TOLERANCE_MM = 0.1
#: Columns of :func:`lesion_statistics`.
STATISTICS_COLUMNS = ("lesion", "n_voxels", "volume_mm3", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm")
PARAMETERS_FILE = "lesion_detection.json"


def _label(path: PathOrStr) -> str:
    """Message prefix from the BIDS entities of a file name: ``"sub-01 ses-02: lesion mask"``."""
    entities = re.findall(r"(?:^|_)((?:sub|ses)-[a-zA-Z0-9]+)", Path(path).name)
    return f"{' '.join(entities)}: lesion mask" if entities else "lesion mask"


def check_lesion_mask(mask_file: PathOrStr, reference_file: PathOrStr) -> None:
    """Check a given lesion mask against the image it was drawn on.

    Checks, in order: the file can be read and is one finite 3-D volume
    (:func:`~msynth.preprocessing.checks.check_image`); its shape and its affine equal the reference's
    (field-of-view corners within :data:`AFFINE_TOLERANCE_MM`); it holds only 0 and 1. An empty mask is valid (a
    healthy control's) and only logged as a warning, in case the wrong file was given.

    Parameters
    ----------
    mask_file
        The ``*_label-lesion_mask.nii.gz`` from the ``--lesion-masks`` dataset.
    reference_file
        The session image the mask was drawn on (e.g. the raw FLAIR).

    Raises
    ------
    InputImageError
        Naming the mask, the cause and the remedy.
    """
    label = _label(mask_file)
    mask_path = Path(mask_file)
    img = check_image(mask_path, label=label)
    ref = nib.load(reference_file)
    ref_shape = tuple(int(s) for s in ref.shape[:3])
    if tuple(img.shape) != ref_shape:
        raise InputImageError(
            label, mask_path,
            f"has shape {tuple(img.shape)} but {Path(reference_file).name}, the image it was drawn on, has shape "
            f"{ref_shape}", "give the mask on the grid of the image it was drawn on (same shape and header)",
        )
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in ref_shape], indexing="ij")).reshape(3, -1)
    corners = np.vstack([corners, np.ones(corners.shape[1])])
    gap = float(np.linalg.norm(((img.affine - ref.affine) @ corners)[:3], axis=0).max())
    if gap > AFFINE_TOLERANCE_MM:
        raise InputImageError(
            label, mask_path,
            f"is placed {gap:.2f} mm away from {Path(reference_file).name}, the image it was drawn on (their "
            "affines differ)", "save the mask with the header (qform/sform) of the image it was drawn on",
        )
    data = np.asanyarray(img.dataobj)
    values = np.unique(data)  # after the header's scaling: a 0/1 mask stored with a slope is still 0/1
    if not np.all(np.isin(values, (0, 1))):
        shown = ", ".join(f"{v:g}" for v in values[:5]) + (", …" if values.size > 5 else "")
        raise InputImageError(
            label, mask_path, f"is not binary: it holds {values.size} distinct values ({shown}); msynth expects "
            "0 (background) and 1 (lesion)",
            "threshold a probability map, or merge the labels of a label map, and save 0/1",
        )
    if not np.any(data):
        LOGGER.warning("%s: lesion mask %s is empty (no lesion voxel): the session is treated as lesion-free, as a "
                       "healthy control's; if it has lesions, check the file, or remove it to let msynth detect "
                       "lesions automatically", label, mask_path)


def binarize_resampled(mask_file: PathOrStr, *, newpath: PathOrStr, threshold: float = 0.5) -> Path:
    """Binarise a linearly resampled lesion mask: voxels ≥ ``threshold`` become 1 (uint8).

    Parameters
    ----------
    mask_file
        A 0/1 mask resampled with linear interpolation (values in [0, 1]).
    newpath
        Output directory.
    threshold
        0.5 keeps the volume of a mask resampled onto a grid of a different voxel size about unchanged.

    Returns
    -------
    pathlib.Path
        ``<mask stem>_thresholded.nii.gz``.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    img = nib.load(mask_file)
    data = (np.asanyarray(img.dataobj) >= threshold).astype(np.uint8)
    return write_like(data, img, output_path(mask_file, newpath, "thresholded"))


def load_parameters(parameters: Mapping[str, object] | PathOrStr | None = None) -> dict:
    """Parameters of :func:`detect_lesions`: the package's JSON file, updated by ``parameters``.

    Parameters
    ----------
    parameters
        ``None`` (the shipped values), a mapping of the keys to change, or a JSON file holding them.

    Returns
    -------
    dict
    """
    shipped = json.loads(resources.files("msynth.segmentation").joinpath("data", PARAMETERS_FILE).read_text())
    if parameters is None:
        return shipped
    update = json.loads(Path(parameters).read_text()) if isinstance(parameters, (str, PathLike)) else parameters
    unknown = set(update) - set(shipped)
    if unknown:
        raise ValueError(f"unknown lesion-detection parameters {sorted(unknown)}; known: {sorted(shipped)}")
    return {**shipped, **update}


def _robust_stats(values: np.ndarray) -> tuple[float, float]:
    """Median and 1.4826 × median absolute deviation (the SD of a Gaussian), with a floor of 1e-6 of the median."""
    median = float(np.median(values))
    spread = float(1.4826 * np.median(np.abs(values - median)))
    return median, max(spread, 1e-6 * abs(median), 1e-12)


def lesion_belief(
    flair: np.ndarray,
    brain: np.ndarray,
    gm: np.ndarray,
    wm: np.ndarray,
    *,
    weights: tuple[np.ndarray, np.ndarray] | None = None,
    min_probability: float = 0.9,
    min_voxels: int = 100,
) -> tuple[np.ndarray, dict]:
    """FLAIR hyperintensity relative to the tissue a voxel belongs to, in units of that tissue's FLAIR spread.

    The FLAIR intensity distribution of each class is summarised robustly (median ``m_k``, 1.4826 × MAD ``s_k``)
    over brain voxels whose probability is at least ``min_probability`` (0.5 when fewer than ``min_voxels`` reach
    it); lesions inside those voxels barely move the median. The belief is the tissue-weighted z-score

    ``b = (w_GM (F - m_GM) / s_GM + w_WM (F - m_WM) / s_WM) / (w_GM + w_WM)``,

    with the weights ``w`` = the probabilities ``gm``, ``wm`` unless ``weights`` are given. A white-matter voxel is
    judged against white matter and a grey-matter voxel against grey matter, which is brighter than white matter on
    FLAIR, so that grey matter is not an outlier — as in the lesion belief maps of LST-LGA.

    Parameters
    ----------
    flair, brain
        FLAIR intensities (0: no coverage) and boolean brain mask on one grid.
    gm, wm
        Tissue probabilities from the T1w, which select the reference voxels of each class.
    weights
        ``(w_GM, w_WM)`` for the belief, e.g. the mean of posterior and template prior; default ``(gm, wm)``.
    min_probability, min_voxels
        Reference-voxel selection (see above).

    Returns
    -------
    belief : numpy.ndarray
        Float32, 0 where ``p_GM + p_WM`` is 0 or outside the brain.
    stats : dict
        ``{"GM": [median, spread], "WM": [median, spread]}`` of the FLAIR.
    """
    covered = brain & (flair > 0)
    stats = {}
    z = {}
    for name, prob in (("GM", gm), ("WM", wm)):
        reference = covered & (prob >= min_probability)
        if np.count_nonzero(reference) < min_voxels:
            reference = covered & (prob >= 0.5)
        if np.count_nonzero(reference) < 10:
            raise ValueError(f"lesion detection: fewer than 10 {name} voxels covered by the FLAIR; check the tissue "
                             "probabilities and the FLAIR → T1w transform")
        median, spread = _robust_stats(flair[reference])
        stats[name] = [median, spread]
        z[name] = (flair - median) / spread
    w_gm, w_wm = weights if weights is not None else (gm, wm)
    weight = w_gm + w_wm
    with np.errstate(invalid="ignore", divide="ignore"):
        belief = np.where(weight > 0, (w_gm * z["GM"] + w_wm * z["WM"]) / weight, 0.0)
    belief[~covered] = 0.0
    return belief.astype(np.float32), stats


def grow_lesions(
    belief: np.ndarray,
    candidate: np.ndarray,
    *,
    seeds: np.ndarray,
    growth_threshold: float,
    connectivity: int = 26,
) -> np.ndarray:
    """Region growing from ``seeds`` through connected candidates with ``belief ≥ growth_threshold``.

    Growing from every seed into neighbouring candidates above the growth threshold until no voxel is added is the
    same as keeping the connected components of ``seeds | (candidate & belief ≥ growth_threshold)`` that contain a
    seed (hysteresis thresholding), which this computes in one labelling.
    """
    grow = seeds | (candidate & (belief >= growth_threshold))
    labels, count = ndimage.label(grow, structure=_structure(connectivity))
    if count == 0:
        return np.zeros(belief.shape, dtype=bool)
    keep = np.zeros(count + 1, dtype=bool)
    keep[np.unique(labels[seeds])] = True
    keep[0] = False
    return keep[labels]


def remove_small(mask: np.ndarray, voxel_volume_mm3: float, min_volume_mm3: float, connectivity: int = 26
                 ) -> np.ndarray:
    """Drop connected components smaller than ``min_volume_mm3``."""
    labels, count = ndimage.label(mask, structure=_structure(connectivity))
    if count == 0:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel(), minlength=count + 1) * voxel_volume_mm3
    keep = sizes >= min_volume_mm3
    keep[0] = False
    return keep[labels]


def detect_lesions(
    flair: PathOrStr,
    brain_mask: PathOrStr,
    *,
    gm: PathOrStr,
    wm: PathOrStr,
    csf: PathOrStr,
    newpath: PathOrStr,
    gm_prior: PathOrStr | None = None,
    wm_prior: PathOrStr | None = None,
    parameters: Mapping[str, object] | PathOrStr | None = None,
) -> Path:
    """Automatic white-matter lesion mask from a FLAIR in space-T1w and the T1w tissue probabilities.

    1. Lesion belief (:func:`lesion_belief`): the FLAIR z-score against the tissue the voxel belongs to, whose
       GM and WM weights are the mean of the T1w posterior and the template prior (when the priors are given): MS
       lesions are T1-hypointense, so the posterior alone calls many of them grey matter and judges them against
       the brighter grey-matter FLAIR; the prior, blind to intensity, puts them back in the white matter.
    2. Candidates: brain voxels covered by the FLAIR whose parenchyma probability ``p_GM + p_WM`` is at least
       ``CandidateMinParenchyma`` (CSF and its partial volume, dark on FLAIR, are left out).
    3. Seeds: candidates with belief ≥ ``SeedThreshold``, brighter than grey matter by at least
       ``SeedMinGreyMatterZ`` grey-matter spreads (LST-LGA's criterion: lesions are FLAIR-hyperintense relative to
       grey matter, so grey structures inside the white matter — claustrum, deep sulci — do not seed), and at least
       ``SeedMinCortexDistanceVoxels`` voxels (Euclidean, in units of the mean voxel side) from the cortex, i.e.
       from voxels whose GM prior is at least ``CortexMinProbability``. The grey/white boundary is FLAIR-bright
       through partial volume with grey matter and would otherwise seed false lesions along the whole cortex; the
       template prior, unlike the T1w posterior, does not call T1-hypointense lesions grey matter.
    4. Growth: seeds extend into connected candidates with belief ≥ ``GrowthThreshold`` (:func:`grow_lesions`;
       LST-LGA also grows its initial lesion map into hyperintense neighbours), so lesions reach the cortex and the
       ventricles from a seed in the white matter.
    5. Lesions smaller than ``MinLesionVolumeMM3`` are removed.

    An empty result is logged as a warning and written as an empty mask.

    Parameters
    ----------
    flair
        FLAIR (acquired and bias-corrected, or synthetic) on the T1w grid; 0 where it has no coverage.
    brain_mask
        Brain mask on the T1w grid.
    gm, wm, csf
        Tissue probabilities on the T1w grid (:func:`msynth.segmentation.tissue.segment_tissues` run without a
        lesion mask); ``csf`` is only checked for its grid (the candidate rule uses GM + WM).
    newpath
        Output directory.
    gm_prior, wm_prior
        The template GM and WM priors on the T1w grid (``TissueResult.gm_prior``, ``.wm_prior``), for the weights
        of step 1 and the cortex of step 3; ``None`` falls back on the posteriors ``gm`` and ``wm`` (then
        T1-hypointense lesions that the T1w calls grey matter are found less well).
    parameters
        Changes to the shipped parameters (``msynth/segmentation/data/lesion_detection.json``): a mapping or a JSON
        file.

    Returns
    -------
    pathlib.Path
        ``<flair stem>_label-lesion_mask.nii.gz`` (uint8, 0/1).
    """
    params = load_parameters(parameters)
    ref = nib.load(flair)
    images = {"brain mask": brain_mask, "GM": gm, "WM": wm, "CSF": csf}
    if gm_prior is not None:
        images["GM prior"] = gm_prior
    if wm_prior is not None:
        images["WM prior"] = wm_prior
    arrays = {}
    for what, path in images.items():
        img = nib.load(path)
        if img.shape[:3] != ref.shape[:3] or not np.allclose(img.affine, ref.affine, atol=1e-3):
            raise ValueError(f"detect_lesions: the {what} is not on the grid of the FLAIR {Path(flair).name} "
                             f"(shape {img.shape[:3]} vs {ref.shape[:3]}, or another affine) (file: {path})")
        arrays[what] = np.asarray(img.get_fdata(), dtype=np.float32)
    if gm_prior is None or wm_prior is None:
        LOGGER.info("detect_lesions: no template priors given; tissue weights and cortex come from the T1w "
                    "posteriors alone")
    brain = arrays["brain mask"] > 0
    data = np.asarray(ref.get_fdata(), dtype=np.float32)
    weights = {
        name: 0.5 * (arrays[name] + arrays[f"{name} prior"]) if f"{name} prior" in arrays else arrays[name]
        for name in ("GM", "WM")
    }
    belief, stats = lesion_belief(
        data, brain, arrays["GM"], arrays["WM"], weights=(weights["GM"], weights["WM"]),
        min_probability=float(params["ReferenceTissueMinProbability"]),
        min_voxels=int(params["ReferenceTissueMinVoxels"]),
    )
    candidate = brain & (data > 0) & (arrays["GM"] + arrays["WM"] >= float(params["CandidateMinParenchyma"]))
    zooms = np.asarray(ref.header.get_zooms()[:3], dtype=float)
    cortex = arrays.get("GM prior", arrays["GM"]) >= float(params["CortexMinProbability"])
    if np.any(cortex):
        depth = ndimage.distance_transform_edt(~cortex, sampling=zooms / zooms.mean())
    else:
        depth = np.full(data.shape, np.inf)
    grey_z = (data - stats["GM"][0]) / stats["GM"][1]
    seeds = (candidate & (belief >= float(params["SeedThreshold"]))
             & (grey_z >= float(params["SeedMinGreyMatterZ"]))
             & (depth >= float(params["SeedMinCortexDistanceVoxels"])))
    connectivity = int(params["Connectivity"])
    lesions = grow_lesions(belief, candidate, seeds=seeds, growth_threshold=float(params["GrowthThreshold"]),
                           connectivity=connectivity)
    voxel_mm3 = float(np.prod(zooms))
    lesions = remove_small(lesions, voxel_mm3, float(params["MinLesionVolumeMM3"]), connectivity)
    n_voxels = int(np.count_nonzero(lesions))
    if n_voxels == 0:
        LOGGER.warning("%s: automatic lesion detection found no lesion (seed threshold %g; FLAIR white matter "
                       "median %.4g, spread %.3g); an empty lesion mask is written", Path(flair).name,
                       params["SeedThreshold"], *stats["WM"])
    else:
        LOGGER.info("%s: %d automatic lesion voxels (%.2f mL)", Path(flair).name, n_voxels,
                    n_voxels * voxel_mm3 / 1000.0)
    return write_like(lesions.astype(np.uint8), ref, output_path(flair, newpath, "label-lesion_mask"))


def _structure(connectivity: int) -> np.ndarray:
    """3-D neighbourhood for :func:`scipy.ndimage.label`: 6 (faces) or 26 (faces, edges, corners)."""
    if connectivity not in (6, 26):
        raise ValueError(f"connectivity must be 6 or 26, got {connectivity}")
    return ndimage.generate_binary_structure(3, 1 if connectivity == 6 else 3)


def lesion_statistics(lesion_mask: PathOrStr | nib.Nifti1Image, *, connectivity: int = 26) -> pd.DataFrame:
    """One row per lesion (connected component) of a lesion mask.

    Parameters
    ----------
    lesion_mask
        Binary mask (voxels > 0 are lesion), file or image.
    connectivity
        26 (default: face, edge or corner neighbours) or 6 (face neighbours only).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`STATISTICS_COLUMNS`: ``lesion`` (1 = largest, by decreasing volume; ties in scan order),
        ``n_voxels``, ``volume_mm3`` (voxels × voxel volume), and the centroid in scanner (RAS) millimetres. No rows
        for an empty mask.

    Examples
    --------
    >>> import nibabel as nib, numpy as np
    >>> mask = np.zeros((10, 10, 10), np.uint8); mask[1:3, 1:3, 1:3] = 1; mask[6, 6, 6] = 1
    >>> lesion_statistics(nib.Nifti1Image(mask, np.diag([2.0, 2.0, 2.0, 1.0])))[["lesion", "volume_mm3"]]
       lesion  volume_mm3
    0       1        64.0
    1       2         8.0
    """
    img = nib.load(lesion_mask) if isinstance(lesion_mask, (str, PathLike)) else lesion_mask
    mask = np.asanyarray(img.dataobj) > 0
    labels, count = ndimage.label(mask, structure=_structure(connectivity))
    if count == 0:
        return pd.DataFrame({c: pd.Series(dtype=float if "mm" in c else int) for c in STATISTICS_COLUMNS})
    index = np.arange(1, count + 1)
    n_voxels = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    centroids = np.asarray(ndimage.center_of_mass(mask, labels, index), dtype=float).reshape(count, 3)
    world = nib.affines.apply_affine(img.affine, centroids)
    voxel_mm3 = float(abs(np.linalg.det(img.affine[:3, :3])))
    order = np.argsort(-n_voxels, kind="stable")
    table = pd.DataFrame({
        "lesion": np.arange(1, count + 1),
        "n_voxels": n_voxels[order].astype(int),
        "volume_mm3": n_voxels[order] * voxel_mm3,
        "centroid_x_mm": world[order, 0],
        "centroid_y_mm": world[order, 1],
        "centroid_z_mm": world[order, 2],
    })
    return table


def lesion_summary(stats: pd.DataFrame) -> dict:
    """Session summary of :func:`lesion_statistics`: lesion count and total volume (the T2 lesion load).

    Returns
    -------
    dict
        ``{"n_lesions": int, "total_volume_mm3": float, "total_volume_ml": float}``.
    """
    total = float(stats["volume_mm3"].sum()) if len(stats) else 0.0
    return {"n_lesions": int(len(stats)), "total_volume_mm3": total, "total_volume_ml": total / 1000.0}
