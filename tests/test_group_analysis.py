"""Group-level science without Nipype: control reference, demyelinated voxels, indices, agreement, EDSS regression.

The phantom's truth (``msynth/phantom/clinical.py``) is computed by its own code; these tests check that msynth's
analysis, written separately, gives the same numbers on the same arrays.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from msynth.analysis import myelin, statistics
from msynth.phantom import clinical


def _control(rng: np.random.Generator, shape=(20, 20, 20)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A control-like volume: CSF in a slab, DVR rising with the distance from it, noise."""
    csf = np.zeros(shape)
    csf[:, :, :3] = 1.0
    rings = clinical.csf_rings(csf, np.array([1.0, 1.0, 1.0]))
    dvr = 1.2 + 0.04 * rings + rng.normal(0, 0.1, shape)
    white_matter = rng.random(shape) < 0.7
    return dvr, white_matter, rings


def test_control_reference_matches_the_phantom_truth():
    rng = np.random.default_rng(0)
    truth = clinical.ControlReference()
    samples = []
    for _ in range(3):
        dvr, wm, rings = _control(rng)
        truth.add(dvr, wm, rings)
        samples.append(myelin.white_matter_samples(dvr, wm, rings))
    reference = myelin.control_reference(samples)
    np.testing.assert_allclose(reference["threshold"], truth.threshold(), rtol=0, atol=1e-10)
    assert reference["interpolated"].sum() == 0  # a 20-voxel slab fills rings 0..12
    assert reference["n_voxels"].sum() == sum(len(s) for s in samples)


def test_control_reference_by_hand_and_empty_rings():
    samples = [pd.DataFrame({"ring": [0, 0, 2, 2], "dvr": [1.0, 3.0, 2.0, 4.0]})]
    reference = myelin.control_reference(samples, ring_width_mm=1.0, max_distance_mm=3.0)
    # ring 0: mean 2, population SD 1 -> 1; ring 2: mean 3, SD 1 -> 2; ring 1 interpolated 1.5; ring 3 takes 2
    np.testing.assert_allclose(reference["threshold"], [1.0, 1.5, 2.0, 2.0])
    assert reference["interpolated"].tolist() == [False, True, False, True]
    assert reference["distance_to_mm"].iloc[-1] == np.inf


def test_indices_match_the_phantom_truth():
    rng = np.random.default_rng(1)
    truth = clinical.ControlReference()
    dvr, wm, rings = _control(rng)
    truth.add(dvr, wm, rings)
    reference = myelin.control_reference([myelin.white_matter_samples(dvr, wm, rings)])
    lesion = rng.random(dvr.shape) < 0.3
    dvr0 = dvr - rng.normal(0.1, 0.15, dvr.shape)
    dvr1 = dvr - rng.normal(0.05, 0.15, dvr.shape)
    masks = [myelin.demyelinated_voxels(d, lesion, rings, reference) for d in (dvr0, dvr1)]
    for ours, theirs in zip(masks, (clinical.demyelinated(d, lesion, rings, truth.threshold()) for d in (dvr0, dvr1))):
        np.testing.assert_array_equal(ours, theirs)
    expected = clinical.myelin_indices(lesion, *masks)
    ours = myelin.myelin_indices(lesion, *masks)
    assert ours["lesion_voxels_t0"] == lesion.sum()
    for name, theirs in [("pct_demyelinated_t0", "pct_demyelinated_ses01"), ("pct_demyelinated_t1",
                         "pct_demyelinated_ses02"), ("global_index", "global_change"),
                         ("dynamic_demyelination", "dynamic_demyelination"),
                         ("dynamic_remyelination", "dynamic_remyelination")]:
        assert ours[name] == pytest.approx(expected[theirs], abs=1e-12), name
    assert 5 < ours["dynamic_remyelination"] < 95 and 5 < ours["dynamic_demyelination"] < 95


def test_indices_by_hand_and_missing_follow_up():
    lesion = np.array([1, 1, 1, 1, 1, 0], bool)
    t0 = np.array([1, 1, 0, 0, 0, 1], bool)  # the last voxel is outside the lesion and does not count
    t1 = np.array([1, 0, 1, 1, 0, 0], bool)
    got = myelin.myelin_indices(lesion, t0, t1)
    assert got == pytest.approx({"lesion_voxels_t0": 5, "pct_demyelinated_t0": 40.0, "pct_demyelinated_t1": 60.0,
                                 "global_index": 20.0, "dynamic_demyelination": 200 / 3,
                                 "dynamic_remyelination": 50.0})
    single = myelin.myelin_indices(lesion, t0, None)
    assert single["pct_demyelinated_t0"] == 40.0 and np.isnan(single["dynamic_remyelination"])
    none_demyelinated = myelin.myelin_indices(lesion, np.zeros(6, bool), t1)
    assert np.isnan(none_demyelinated["dynamic_remyelination"])
    dynamic = myelin.dynamic_masks(lesion, t0, t1)
    assert dynamic["dynamic_demyelination"].tolist() == [0, 0, 1, 1, 0, 0]
    assert dynamic["dynamic_remyelination"].tolist() == [0, 1, 0, 0, 0, 0]


def test_bland_altman_by_hand():
    acquired = pd.Series([1.0, 2.0, 3.0, 4.0])
    synthetic = pd.Series([1.5, 2.0, 3.5, 4.2])
    got = statistics.bland_altman(acquired, synthetic)
    differences = np.array([0.5, 0.0, 0.5, 0.2])
    sd = differences.std(ddof=1)
    assert got["n"] == 4 and got["bias"] == pytest.approx(0.3)
    assert got["lower"] == pytest.approx(0.3 - 1.96 * sd) and got["upper"] == pytest.approx(0.3 + 1.96 * sd)
    assert got["t"] == pytest.approx(0.3 / (sd / 2))


def test_edss_regression_recovers_the_planted_betas():
    rng = np.random.default_rng(7)
    n = 18
    patients = pd.DataFrame({
        "participant_id": [f"sub-MS{i:02d}" for i in range(n)],
        "dynamic_remyelination": rng.uniform(0, 80, n), "age": rng.normal(31, 6, n).round(),
        "sex": rng.permutation(["F"] * 12 + ["M"] * 6), "t2_lesion_load": rng.uniform(1e3, 2e4, n),
    })
    edss, model = clinical.plant_edss(patients, rng)
    data = patients.assign(edss=edss, sex_female=(patients["sex"] == "F").astype(float),
                           t2_lesion_load_mm3=patients["t2_lesion_load"])
    got = statistics.edss_regression(data, "dynamic_remyelination")
    assert got["n"] == n
    # EDSS is rounded to half points: within 0.05 of the planted -0.70
    assert got["beta_std"] == pytest.approx(model["StandardizedBeta"]["dynamic_remyelination"], abs=0.05)
    assert got["coef"] == pytest.approx(model["Coefficient"]["dynamic_remyelination"], rel=0.1)
    assert got["p"] < 0.01
    # the same fit read at another term: age's planted +0.15
    age = statistics.edss_regression(data, "age", covariates=("dynamic_remyelination", "sex_female",
                                                                "t2_lesion_load_mm3"))
    assert age["beta_std"] == pytest.approx(model["StandardizedBeta"]["age"], abs=0.05)
