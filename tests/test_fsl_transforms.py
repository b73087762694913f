"""FLIRT copies of the ANTs transforms: resampled with fslpy, they give what ANTsPy gives with the ANTs transform."""

from __future__ import annotations

import json
from pathlib import Path

import ants
import nibabel as nb
import numpy as np
import pytest
from fsl.data.image import Image
from fsl.utils.image.resample import resampleToReference
from nilearn.datasets import load_mni152_template
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from msynth.preprocessing.fsl_transforms import ants_to_flirt, flirt_to_world, write_flirt_copy
from msynth.preprocessing.registration import write_affine

#: T1w → source point map planted in the test (LPS mm): rotations about the three axes and a shift.
ROTATION_DEG = (8.0, -6.0, 12.0)
SHIFT_MM = (6.0, -4.0, 5.0)
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Columns (2 mm) cut off the template's right side, so that the reference grid's centre is 12 mm off the midline.
CROP_X = 12


def _planted() -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_euler("xyz", ROTATION_DEG, degrees=True).as_matrix()
    matrix[:3, 3] = SHIFT_MM
    return matrix


def _fsl_from_voxel(image: nb.Nifti1Image) -> np.ndarray:
    """FSL scaled-voxel coordinates of voxel indices, written out from FLIRT's definition (not with fslpy):
    indices times the voxel sizes, x mirrored when the affine's determinant is positive (neurological storage)."""
    zooms = np.asarray(image.header.get_zooms()[:3], dtype=float)
    scale = np.diag([*zooms, 1.0])
    if np.linalg.det(image.affine[:3, :3]) > 0:
        scale[0, 0], scale[0, 3] = -zooms[0], (image.shape[0] - 1) * zooms[0]
    return scale


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """A 2 mm MNI T1w reference (RAS, positive determinant) and the same head moved by the planted transform on an
    oblique, anisotropic 2.5 × 3 × 3.5 mm source grid stored left to right (negative determinant)."""
    root = tmp_path_factory.mktemp("fsl")
    template = load_mni152_template(resolution=2)
    # cropped off-centre so that mirroring about the grid's centre moves the head (the template is symmetric)
    reference = template.slicer[CROP_X:]
    reference = nb.Nifti1Image(np.asarray(reference.dataobj, dtype=np.float32), reference.affine)
    nb.save(reference, root / "t1w.nii.gz")

    axes = Rotation.from_euler("xz", (15.0, -20.0), degrees=True).as_matrix() @ np.diag([-2.5, 3.0, 3.5])
    shape = (80, 78, 58)
    source_affine = np.eye(4)
    source_affine[:3, :3] = axes
    source_affine[:3, 3] = -axes @ (np.asarray(shape) - 1) / 2 + [2.0, -18.0, 10.0]
    # source voxel → source world → T1w world (inverse of the planted map, in RAS) → T1w voxel: trilinear sampling
    t1w_to_source_ras = _LPS @ _planted() @ _LPS
    to_reference_voxel = np.linalg.inv(reference.affine) @ np.linalg.inv(t1w_to_source_ras) @ source_affine
    grid = np.indices(shape).reshape(3, -1)
    coords = to_reference_voxel[:3, :3] @ grid + to_reference_voxel[:3, 3:]
    data = ndi.map_coordinates(reference.get_fdata(), coords, order=1, cval=0.0).reshape(shape)
    nb.save(nb.Nifti1Image(data.astype(np.float32), source_affine), root / "source.nii.gz")
    return {"source": root / "source.nii.gz", "reference": root / "t1w.nii.gz",
            "ants_xfm": write_affine(_planted(), root / "from-source_to-T1w_mode-image_xfm.mat"), "root": root}


@pytest.fixture(scope="module")
def ants_resampled(images) -> np.ndarray:
    """The source on the T1w grid through the ANTs transform, by ANTsPy."""
    return ants.apply_transforms(
        fixed=ants.image_read(str(images["reference"])), moving=ants.image_read(str(images["source"])),
        transformlist=[str(images["ants_xfm"])], interpolator="linear", defaultvalue=0,
    ).numpy()


def _fslpy_resampled(images: dict[str, Path], matrix: np.ndarray) -> np.ndarray:
    """The source on the T1w grid through a FLIRT matrix, by fslpy (its FLIRT reading and its resampler)."""
    world = flirt_to_world(matrix, images["source"], images["reference"])
    data, _ = resampleToReference(Image(str(images["source"])), Image(str(images["reference"])), matrix=world,
                                  order=1, smooth=False)
    return data


def _agreement(a: np.ndarray, b: np.ndarray, inside: np.ndarray) -> tuple[float, float]:
    """Correlation, and mean absolute difference as a fraction of the mean of ``b``, over ``inside``."""
    return float(np.corrcoef(a[inside], b[inside])[0, 1]), float(np.abs(a - b)[inside].mean() / b[inside].mean())


def _agrees(correlation: float, relative_difference: float) -> bool:
    return correlation > 0.99 and relative_difference < 0.02


def test_matrix_follows_flirts_definition(images):
    """The copy maps source FSL coordinates to reference FSL coordinates, as written out from FLIRT's definition."""
    source, reference = nb.load(images["source"]), nb.load(images["reference"])
    t1w_to_source_ras = _LPS @ _planted() @ _LPS
    expected = (_fsl_from_voxel(reference) @ np.linalg.inv(reference.affine) @ np.linalg.inv(t1w_to_source_ras)
                @ source.affine @ np.linalg.inv(_fsl_from_voxel(source)))
    matrix = ants_to_flirt(images["ants_xfm"], images["source"], images["reference"])
    np.testing.assert_allclose(matrix, expected, atol=1e-4)  # float32 headers
    written = np.loadtxt(write_flirt_copy(images["ants_xfm"], images["source"], images["reference"],
                                          newpath=images["root"]))
    np.testing.assert_allclose(written, matrix, atol=1e-9)


def test_fslpy_resampling_matches_ants(images, ants_resampled):
    """fslpy through the FLIRT copy and ANTsPy through the ANTs transform give the same image (measured r = 1 − 3e-13,
    mean difference 1e-7 of the mean); the inverse matrix (r = 0.20) and one that ignores FSL's x mirror of the
    reference (r = 0.19) fail the same check."""
    reference = nb.load(images["reference"]).get_fdata()
    inside = (ants_resampled > 0) & (reference > 0.1 * reference.max())
    matrix = ants_to_flirt(images["ants_xfm"], images["source"], images["reference"])
    good = _agreement(_fslpy_resampled(images, matrix), ants_resampled, inside)
    assert _agrees(*good), good
    # and it is the head put back on the T1w grid (r = 0.93 against the untouched reference: the source's coarser,
    # oblique voxels blur it)
    assert _agreement(ants_resampled, reference, inside)[0] > 0.9

    inverse = _agreement(_fslpy_resampled(images, np.linalg.inv(matrix)), ants_resampled, inside)
    assert not _agrees(*inverse), inverse
    source, reference_img = nb.load(images["source"]), nb.load(images["reference"])
    unmirrored = (np.diag([*reference_img.header.get_zooms()[:3], 1.0]) @ np.linalg.inv(reference_img.affine)
                  @ np.linalg.inv(_LPS @ _planted() @ _LPS) @ source.affine
                  @ np.linalg.inv(np.diag([*source.header.get_zooms()[:3], 1.0])))
    unmirrored = _agreement(_fslpy_resampled(images, unmirrored), ants_resampled, inside)
    assert not _agrees(*unmirrored), unmirrored


#: The transforms to the T1w that the participant level writes for each session of a phantom patient.
PHANTOM_KEYS = {"T2w", "PDw", "FLAIR", "T1SE", "DIR", "MTR", "DWI", "PET"}


def test_every_coregistration_has_its_flirt_copy(phantom_participants):
    """Each ANTs ``from-<key>_to-T1w`` transform of the participant level has a FLIRT copy with a sidecar naming its
    images; the template's transform has none (its source is no image of the dataset). Through the MTR's copy (the
    one image registered without N4), fslpy puts the raw MTR map where msynth's space-T1w MTR map is."""
    cohort, out, _ = phantom_participants
    ants_xfms = [p for p in sorted(out.glob("sub-*/ses-*/*/*_mode-image_xfm.mat")) if "from-MNI152" not in p.name]
    keys = {p.name.split("_from-")[1].split("_")[0] for p in ants_xfms if "/sub-MS01/" in p.as_posix()}
    assert keys == PHANTOM_KEYS
    for ants_xfm in ants_xfms:
        copy = ants_xfm.with_name(ants_xfm.name.replace("_mode-image_xfm", "_mode-image_desc-flirt_xfm"))
        assert copy.is_file() and np.loadtxt(copy).shape == (4, 4), f"no FLIRT copy of {ants_xfm.name}"
        sidecar = json.loads(copy.with_suffix(".json").read_text())
        assert sidecar["Software"]["Name"] == "fslpy" and sidecar["Software"]["Version"]
        for field in ("Source", "Reference"):
            assert (cohort.bids_dir / sidecar[field].removeprefix("bids:raw:")).is_file(), sidecar[field]
        assert sidecar["Sources"][0] == f"bids::{ants_xfm.relative_to(out).as_posix()}"
        assert sidecar["Reference"].endswith("_T1w.nii.gz") and "acq-" not in sidecar["Reference"]

    anat = out / "sub-MS01" / "ses-01" / "anat"
    copy = anat / "sub-MS01_ses-01_from-MTR_to-T1w_mode-image_desc-flirt_xfm.mat"
    sidecar = json.loads(copy.with_suffix(".json").read_text())
    source, reference = (cohort.bids_dir / sidecar[field].removeprefix("bids:raw:")
                         for field in ("Source", "Reference"))
    world = flirt_to_world(np.loadtxt(copy), source, reference)
    data, _ = resampleToReference(Image(str(source)), Image(str(reference)), matrix=world, order=1, smooth=False)
    msynth_mtr = nb.load(anat / "sub-MS01_ses-01_space-T1w_desc-preproc_MTRmap.nii.gz").get_fdata()
    # ANTs interpolates up to half a voxel beyond the outer voxel centres, fslpy (scipy) stops at them: compare where
    # both have values (99.4 % of msynth's voxels; there r = 1 − 3e-12, measured)
    inside = (msynth_mtr > 0) & (data != 0)
    assert inside.sum() > 0.98 * (msynth_mtr > 0).sum()
    assert _agrees(*_agreement(data, msynth_mtr, inside))
