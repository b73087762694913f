"""Registration to T1w: recovery of known affine transforms, the transform convention, and the displacement metric."""

from __future__ import annotations

from pathlib import Path

import ants
import nibabel as nib
import numpy as np
import pytest
from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

from msynth.preprocessing.registration import (
    apply_transform,
    compose,
    invert,
    mean_displacement_mm,
    read_affine,
    register_to_reference,
    write_affine,
)
from msynth.preprocessing.resample import Grid, resample_to_grid, target_grid

from conftest import OPEN_MS_DATA as OPEN_MS
PATIENT = OPEN_MS / "longitudinal" / "raw" / "patient01"
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _rotation(degrees) -> np.ndarray:
    (cx, cy, cz), (sx, sy, sz) = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _affine(degrees, scales, translation) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = _rotation(degrees) @ np.diag(scales)
    out[:3, 3] = translation
    return out


@pytest.fixture(scope="module")
def t1w(tmp_path_factory) -> dict[str, Path]:
    """The MNI152 template (skull-stripped T1w) and its brain mask at 4 mm."""
    root = tmp_path_factory.mktemp("t1w")
    template = load_mni152_template(resolution=4)
    mask = load_mni152_brain_mask(resolution=4)
    nib.Nifti1Image(template.get_fdata().astype(np.float32), template.affine).to_filename(root / "T1w.nii.gz")
    nib.Nifti1Image((mask.get_fdata() > 0).astype(np.uint8), mask.affine).to_filename(root / "mask.nii.gz")
    return {"image": root / "T1w.nii.gz", "mask": root / "mask.nii.gz", "root": root}


def _make_moving(t1w: dict[str, Path], truth: np.ndarray, grid_affine: np.ndarray, shape, name: str) -> Path:
    """An image of the template seen through ``truth`` (T1w points → moving points) on its own grid."""
    root = t1w["root"]
    truth_file = write_affine(truth, root / f"{name}_truth.mat")
    inverse = invert(truth_file, out_xfm=root / f"{name}_truth_inv.mat")
    nib.Nifti1Image(np.zeros(shape, np.float32), grid_affine).to_filename(root / f"{name}_grid.nii.gz")
    return apply_transform(t1w["image"], root / f"{name}_grid.nii.gz", inverse, newpath=root, suffix=name)


def test_recovers_affine_on_oblique_anisotropic_grid(t1w):
    """Moving image on a 3×3×6 mm grid rotated 20°, moved by rotation + scaling + shift: error < half a voxel."""
    truth = _affine((6, -4, 8), (1.05, 0.97, 1.02), (6, -5, 4))
    grid = _affine((0, 0, -20), (3.0, 3.0, 6.0), (0, 0, 0))
    grid[:3, 3] = nib.load(t1w["image"]).affine[:3, 3] + [-5, -5, 0]
    moving = _make_moving(t1w, truth, grid, (70, 75, 32), "oblique")
    root = t1w["root"]

    estimate = register_to_reference(moving, t1w["image"], t1w["mask"], out_xfm=root / "from-oblique_to-T1w.mat")

    error = mean_displacement_mm(estimate, root / "oblique_truth.mat", t1w["mask"])
    start = mean_displacement_mm(np.eye(4), root / "oblique_truth.mat", t1w["mask"])
    assert error < 2.0, f"mean displacement {error:.2f} mm (start {start:.1f} mm)"
    # The other direction is far off: the file maps T1w points to moving points, as DESIGN.md fixes.
    assert mean_displacement_mm(estimate, root / "oblique_truth_inv.mat", t1w["mask"]) > start


def test_ants_fwdtransforms_map_fixed_points_to_moving_points(t1w):
    """``ants.registration(fixed=T1w, moving=key)['fwdtransforms']`` follows the same convention."""
    truth = _affine((0, 5, -5), (1, 1, 1), (4, 3, -6))
    moving = _make_moving(t1w, truth, nib.load(t1w["image"]).affine, nib.load(t1w["image"]).shape, "rigid")
    result = ants.registration(
        ants.image_read(str(t1w["image"])), ants.image_read(str(moving)), type_of_transform="Rigid",
        mask=ants.image_read(str(t1w["mask"])), outprefix=str(t1w["root"] / "antsreg_"),
    )
    assert mean_displacement_mm(result["fwdtransforms"][0], t1w["root"] / "rigid_truth.mat", t1w["mask"]) < 2.0


def test_mean_displacement_values(tmp_path):
    """0 for a transform with itself; 2 for a 2 mm shift, on an anisotropic, oblique mask grid."""
    grid = _affine((10, 20, 30), (0.5, 0.5, 4.0), (-20, 10, 5))
    shape = (20, 20, 6)
    mask = nib.Nifti1Image(np.ones(shape, np.uint8), grid)
    rotation = _affine((3, 2, 1), (1, 1, 1), (1, 2, 3))
    shift = rotation.copy()
    shift[:3, 3] += np.array([2.0, -1.0, 2.0]) * 2 / 3
    xfm = write_affine(rotation, tmp_path / "a.mat")
    assert mean_displacement_mm(xfm, xfm, mask) == pytest.approx(0, abs=1e-9)
    assert mean_displacement_mm(xfm, shift, mask) == pytest.approx(2.0, abs=1e-6)
    # against ITK's own point mapping, on the mask's voxel centres (in LPS)
    centres = (LPS @ grid @ np.vstack([np.indices(shape).reshape(3, -1), np.ones(np.prod(shape))]))[:3].T
    tx = ants.read_transform(str(xfm))
    mapped = np.array([tx.apply_to_point(tuple(p)) for p in centres[::50]])
    expected = np.linalg.norm(mapped - centres[::50], axis=1).mean()
    every_50th = np.zeros(np.prod(shape), np.uint8)
    every_50th[::50] = 1
    sub = nib.Nifti1Image(every_50th.reshape(shape), grid)
    assert mean_displacement_mm(xfm, np.eye(4), sub) == pytest.approx(expected, rel=1e-6)


def test_compose_and_invert(t1w, tmp_path):
    a = write_affine(_affine((5, 0, 0), (1, 1.1, 1), (3, 0, 0)), tmp_path / "a.mat")
    b = write_affine(_affine((0, -4, 7), (1, 1, 1), (0, 2, -1)), tmp_path / "b.mat")
    identity = compose([a, invert(a, out_xfm=tmp_path / "a_inv.mat")], out_xfm=tmp_path / "identity.mat")
    assert np.allclose(read_affine(identity), np.eye(4), atol=1e-6)  # ITK stores float32-exact parameters
    # compose follows ants.apply_transforms' transformlist order
    ab = compose([a, b], out_xfm=tmp_path / "ab.mat")
    chained = apply_transform(t1w["image"], t1w["image"], [a, b], newpath=tmp_path, suffix="chained")
    single = apply_transform(t1w["image"], t1w["image"], ab, newpath=tmp_path, suffix="single")
    assert np.allclose(nib.load(chained).get_fdata(), nib.load(single).get_fdata(), atol=1e-3)


def test_apply_identity_matches_nibabel_geometry(t1w, tmp_path):
    """ANTs (ITK, LPS) and nibabel (RAS) agree on where an oblique, anisotropic grid lies."""
    grid = _affine((12, -8, 25), (3.0, 3.5, 6.0), (-70, -90, -60))
    target = nib.Nifti1Image(np.zeros((50, 50, 25), np.float32), grid)
    target.to_filename(tmp_path / "grid.nii.gz")
    identity = write_affine(np.eye(4), tmp_path / "identity.mat")
    by_ants = nib.load(apply_transform(t1w["image"], tmp_path / "grid.nii.gz", identity, newpath=tmp_path))
    by_scipy = resample_to_grid(nib.load(t1w["image"]), Grid.of(target))
    assert np.allclose(by_ants.affine, grid)
    difference = np.abs(by_ants.get_fdata() - by_scipy.get_fdata())
    assert np.percentile(difference, 99) < 1e-3 * by_scipy.get_fdata().max()


def test_nearest_keeps_labels(t1w, tmp_path):
    mask = apply_transform(t1w["mask"], t1w["image"], write_affine(_affine((5, 5, 5), (1, 1, 1), (2, 2, 2)),
                                                                   tmp_path / "r.mat"),
                           newpath=tmp_path, interpolation="nearestNeighbor")
    img = nib.load(mask)
    assert img.get_data_dtype() == np.uint8 and set(np.unique(img.get_fdata())) <= {0, 1}


@pytest.mark.realdata
@pytest.mark.skipif(not PATIENT.is_dir(), reason="real MS data ../shared/data/open_ms_data (Lesjak et al. 2018, CC-BY) is absent")
def test_dataset_transforms_map_flair_points_to_t2w_points(tmp_path):
    """``study2_T2W_intrastudy_to_FLAIR.txt`` maps FLAIR points to T2W points (it resamples T2W onto the FLAIR).

    T2W (0.51×0.51×4 mm) and FLAIR (0.72×0.72×4 mm, oblique), both reduced to 1.5 mm in-plane, are registered here;
    the dataset's transform agrees with the estimate as written, not inverted.
    """
    images = {}
    for key in ("FLAIR", "T2W"):
        img = nib.load(PATIENT / f"study2_{key}.nii.gz")
        images[key] = tmp_path / f"{key}.nii.gz"
        resample_to_grid(img, target_grid(img, (1.5, 1.5, 4.0))).to_filename(images[key])
    flair = nib.load(images["FLAIR"])
    head = flair.get_fdata() > 0.1 * np.percentile(flair.get_fdata(), 98)
    nib.Nifti1Image(head.astype(np.uint8), flair.affine).to_filename(tmp_path / "head.nii.gz")

    estimate = register_to_reference(images["T2W"], images["FLAIR"], tmp_path / "head.nii.gz",
                                     out_xfm=tmp_path / "from-T2W_to-FLAIR.mat")

    dataset = PATIENT / "study2_T2W_intrastudy_to_FLAIR.txt"
    as_written = mean_displacement_mm(estimate, dataset, tmp_path / "head.nii.gz")
    inverted = mean_displacement_mm(estimate, np.linalg.inv(read_affine(dataset)), tmp_path / "head.nii.gz")
    assert as_written < 0.6 and inverted > 2 * as_written, (as_written, inverted)


@pytest.mark.realdata
@pytest.mark.skipif(not PATIENT.is_dir(), reason="real MS data ../shared/data/open_ms_data (Lesjak et al. 2018, CC-BY) is absent")
def test_read_affine_matches_itk_on_dataset_transform():
    path = PATIENT / "study1_FLAIR_to_common_space.txt"
    tx = ants.read_transform(str(path), precision="double")
    points = np.random.default_rng(0).uniform(-80, 80, (10, 3))
    expected = np.array([tx.apply_to_point(tuple(p)) for p in points])
    got = (read_affine(path) @ np.vstack([points.T, np.ones(10)]))[:3].T
    assert np.allclose(got, expected, atol=1e-6)


def test_implausible_scale_is_reported(t1w, caplog):
    """An intra-subject affine that scales by 25 % is logged as suspect."""
    truth = _affine((0, 0, 0), (1.25, 1.25, 1.25), (0, 0, 0))
    moving = _make_moving(t1w, truth, nib.load(t1w["image"]).affine, nib.load(t1w["image"]).shape, "scaled")
    with caplog.at_level("WARNING", logger="msynth.preprocessing"):
        register_to_reference(moving, t1w["image"], t1w["mask"], out_xfm=t1w["root"] / "scaled.mat")
    assert "implausible for one subject" in caplog.text
