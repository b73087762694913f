"""The phantom's physics on its own: signal equations, tissue contrasts, diffusion, PET kinetics, EDSS model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from msynth.phantom import dwi, mri, pet
from msynth.phantom.anatomy import load_atlas, subject_anatomy
from msynth.phantom.clinical import EDSS_BETAS, plant_edss
from msynth.phantom.cohort import stream
from msynth.phantom.lesions import follow_up, place_lesions
from msynth.phantom.tissue import NOMINAL, Compartment, healthy_fields, subject_scales, tissue_state


@pytest.fixture(scope="module")
def patient_state():
    """Native tissue state of one patient at 3 mm (baseline and follow-up)."""
    anatomy = subject_anatomy(load_atlas(3.0), stream(11, "anatomy"), ventricle_growth=0.1)
    baseline, _ = place_lesions(anatomy, stream(11, "lesions"))
    later = follow_up(baseline, stream(11, "follow-up"), remyelination_rate=0.5, demyelination_rate=0.2)
    states = []
    for lesions in (baseline, later):
        rng = stream(11, "tissue")
        states.append(tissue_state(anatomy, lesions, *healthy_fields(anatomy, rng), subject_scales(rng)))
    return states


def _pure(state, name: str, minimum: float = 0.9) -> np.ndarray:
    """Flat mask of the voxels made mostly of compartment ``name``."""
    return state.by_name(name).fraction >= minimum


def _medians(state, signal: np.ndarray) -> dict[str, float]:
    flat = signal.reshape(-1)[state.index]
    lesion = state.by_name("LES").fraction >= 0.6
    return {"GM": np.median(flat[_pure(state, "GM", 0.8)]), "WM": np.median(flat[_pure(state, "NAWM")]),
            "CSF": np.median(flat[_pure(state, "CSF")]), "LES": np.median(flat[lesion])}


def test_flair_and_dir_null_what_they_should() -> None:
    csf, wm = NOMINAL["CSF"].t1_ms, NOMINAL["WM"].t1_ms
    ti = mri.flair_inversion_time(9000.0, csf)
    assert abs(mri.longitudinal_after_inversions(np.float64(csf), tr=9000.0, inversion_times=(ti,))) < 1e-9
    tis = mri.dir_inversion_times(7500.0, csf, wm)
    for t1 in (csf, wm):
        assert abs(mri.longitudinal_after_inversions(np.float64(t1), tr=7500.0, inversion_times=tis)) < 1e-6


def test_tissue_contrast_order_on_the_truth(patient_state) -> None:
    """Noise-free native signals: FLAIR lesion > GM > WM > CSF; T1w WM > GM > CSF; DIR GM, lesion >> WM, CSF."""
    state = patient_state[0]
    med = {key: _medians(state, mri.native_signal(state, p.signal)) for key, p in mri.PROTOCOLS.items()}
    flair, t1w, dir_ = med["FLAIR"], med["T1w"], med["DIR"]
    assert flair["LES"] > flair["GM"] > flair["WM"] > flair["CSF"]
    assert t1w["WM"] > t1w["GM"] > t1w["CSF"]
    assert t1w["LES"] < t1w["WM"]
    assert med["T2w"]["CSF"] > med["T2w"]["LES"] > med["T2w"]["GM"] > med["T2w"]["WM"]
    assert min(dir_["GM"], dir_["LES"]) > 4 * max(dir_["WM"], dir_["CSF"])


def test_lesion_fields_vary_independently(patient_state) -> None:
    """Myelin is not a fixed function of edema or axonal loss inside lesions (the phantom's difficulty)."""
    les = patient_state[0].by_name("LES")
    inside = les.fraction > 0.5
    demyel = 1.0 - np.asarray(les.myelin)[inside]
    for other in (les.edema, les.axonal_loss):
        assert abs(np.corrcoef(demyel, np.asarray(other)[inside])[0, 1]) < 0.7


def test_follow_up_moves_myelin_both_ways(patient_state) -> None:
    before, after = (np.asarray(s.by_name("LES").myelin) for s in patient_state)
    inside = patient_state[0].by_name("LES").fraction > 0.5
    change = after[inside] - before[inside]
    assert (change > 0.2).mean() > 0.05 and (change < -0.2).mean() > 0.01


@pytest.mark.parametrize(("field", "metric"), [("myelin", "RD"), ("axonal_loss", "AD")])
def test_diffusivity_follows_myelin_and_axons(field: str, metric: str) -> None:
    """Noise-free tensor fit: RD falls as myelin rises (rises with demyelination); AD falls with axonal loss."""
    values = np.linspace(0.0, 1.0, 5)
    n = values.size
    base = {"myelin": np.ones(n), "axonal_loss": np.zeros(n)}
    base[field] = values
    comp = Compartment("NAWM", np.ones(n), 832.0, 80.0, 0.69, 45.0, myelin=base["myelin"],
                       axonal_loss=base["axonal_loss"])
    orient = np.zeros((6, n))
    orient[0] = 1.0  # fibres along x

    class _State:
        index = np.arange(n)
        compartments = (comp,)
        orientation = orient

    bvals, dirs = dwi.scheme()
    signal = dwi.NativeDWI(_State())
    logs = np.log(np.stack([signal(b, g) for b, g in zip(bvals, dirs)]))
    fitted = dwi.tensor_metrics(np.linalg.pinv(dwi.design_matrix(bvals, dirs)) @ logs)[metric]
    assert np.all(np.diff(fitted) < 0)


def _logan_reference(tac: np.ndarray, reference: np.ndarray, k2_ref: float, t_star_min: float = 35.0) -> np.ndarray:
    """Logan graphical analysis with a reference region (Logan 1996), k2' known; slope = DVR.  Rows are voxels."""
    duration = np.array(pet.FRAME_DURATIONS_S) / 60.0
    mid = np.array(pet.FRAME_STARTS_S) / 60.0 + duration / 2
    late = mid >= t_star_min
    y = np.cumsum(tac * duration, axis=1) / tac
    x = (np.cumsum(reference * duration) + reference / k2_ref) / tac
    x, y = x[:, late], y[:, late]
    xm, ym = x.mean(axis=1, keepdims=True), y.mean(axis=1, keepdims=True)
    return ((x - xm) * (y - ym)).sum(axis=1) / ((x - xm) ** 2).sum(axis=1)


def test_logan_gives_back_planted_dvr(patient_state) -> None:
    """Noise-free PET (no PSF): Logan reference DVR equals the planted DVR within 2 % in every brain voxel."""
    state = patient_state[1]
    v0, k1_scale = 2.1, 0.95
    plasma = pet.sample_plasma_input(np.random.default_rng(5), 350.0)
    basis = pet.temporal_basis(plasma)
    brain = state.anatomy.brain.reshape(-1)[state.index] > 0.5
    voxels = state.index[brain]
    tacs = pet.coefficients(state, basis, v0, k1_scale)[:, brain].T @ basis.components
    k1_ref = pet.K1["GM"] * k1_scale
    k2_ref = k1_ref / pet.reference_vt(v0)
    reference = k1_ref * basis.curves(np.array([k2_ref]))[0]
    planted = pet.true_dvr(state, v0).reshape(-1)[voxels]
    relative = np.abs(_logan_reference(tacs, reference, k2_ref) / planted - 1.0)
    assert relative.max() < 0.02
    lesion = state.by_name("LES").fraction[brain] > 0.5
    assert 1.5 < np.median(planted[state.by_name("NAWM").fraction[brain] > 0.9]) < 2.0
    assert 1.0 < np.median(planted[state.by_name("GM").fraction[brain] > 0.9]) < 1.2
    assert np.median(planted[lesion]) < np.median(planted[state.by_name("NAWM").fraction[brain] > 0.9])


def test_planted_edss_model_is_recovered_by_ols() -> None:
    """OLS on a thesis-sized table gives back the planted standardized betas (EDSS rounding only)."""
    rng = np.random.default_rng(3)
    patients = pd.DataFrame({"dynamic_remyelination": rng.uniform(0, 100, 18), "age": rng.normal(31, 6, 18),
                             "sex": rng.choice(["F", "M"], 18), "t2_lesion_load": rng.uniform(500, 20000, 18)})
    edss, model = plant_edss(patients, stream(1, "edss"))
    assert edss.between(0, 9.5).all() and ((edss * 2) % 1 == 0).all()
    z = pd.DataFrame({"dynamic_remyelination": patients["dynamic_remyelination"], "age": patients["age"],
                      "sex_female": (patients["sex"] == "F").astype(float),
                      "t2_lesion_load": patients["t2_lesion_load"]})
    z = (z - z.mean()) / z.std()
    fit = sm.OLS((edss - edss.mean()) / edss.std(), sm.add_constant(z)).fit()
    for name, beta in EDSS_BETAS.items():
        assert fit.params[name] == pytest.approx(beta, abs=0.05)
    assert model["StandardizedBeta"]["dynamic_remyelination"] == -0.70
