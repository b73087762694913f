"""``msynth-train dvr``: DVR training data, grid patches and augmentation, folds that spread the controls, a tiny
adversarial training, and the command end to end — on a 4 mm phantom cohort laid out as participant-level outputs
by :func:`msynth.phantom.truth_derivatives.write_truth_derivatives` (one control, two patients)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
import torch

from msynth.cli import train as train_cli
from msynth.models import losses
from msynth.models.card import channels_of, read_card
from msynth.models.data import compute_normalisation, find_examples, load_volume, subject_groups
from msynth.models.inference import StageChain, load_model, synthesize
from msynth.models.training import Batch, TrainingConfig, assign_folds, build_step, train_model
from msynth.models.training.methods import DVR_METHODS, dvr_stage_configs
from msynth.models.training.patches import grid_patch_corners, random_transform, rotate_axial, scale_patch

torch.set_num_threads(1)
KEYS = ["MTR", "DWI"]


@pytest.fixture(scope="module")
def dvr_derivatives(tmp_path_factory) -> Path:
    """The phantom's truth as participant-level outputs: MTR, DTI maps, Logan DVR, brain, lesion and NAWM masks."""
    from msynth.phantom.cohort import generate_cohort
    from msynth.phantom.truth_derivatives import write_truth_derivatives

    root = tmp_path_factory.mktemp("dvr")
    cohort = generate_cohort(root / "bids", n_controls=1, n_patients=2, voxel_size=4.0, seed=5)
    return write_truth_derivatives(cohort.bids_dir, cohort.truth_dir, root / "out")


def test_baseline_sessions_with_region_labels(dvr_derivatives):
    examples = find_examples(dvr_derivatives, KEYS, "PET", roi=True, sessions="baseline")
    assert [e.label for e in examples] == ["sub-HC01 ses-01", "sub-MS01 ses-01", "sub-MS02 ses-01"]
    assert len(find_examples(dvr_derivatives, KEYS, "PET")) == 5  # the patients' follow-ups too
    example = examples[1]
    volume = load_volume(example)
    assert volume.channels == ("MTR", "FA", "RD", "AD", "DVR")
    lesion, nawm = (np.asarray(nb.load(example.roi_masks[k]).dataobj) > 0 for k in ("lesion", "NAWM"))
    np.testing.assert_array_equal(volume.roi == losses.LESION, lesion)
    np.testing.assert_array_equal(volume.roi == losses.NAWM, nawm & ~lesion)
    assert lesion.any() and (volume.roi == losses.OTHER).sum() == (~lesion & ~nawm).sum()
    # the MTR moved onto the T1w grid by the true transform: higher in white matter than in grey matter
    wm = nb.load(example.mask.with_name(example.mask.name.replace("desc-brain_mask", "label-WM_probseg"))).get_fdata()
    mtr = volume.take(["MTR"])[0]
    assert mtr[volume.mask & (wm > 0.9)].mean() > mtr[volume.mask & (wm < 0.1)].mean()
    cached = load_volume(example, cache_dir=dvr_derivatives.parent / "cache")
    again = load_volume(example, cache_dir=dvr_derivatives.parent / "cache")
    np.testing.assert_array_equal(again.roi, volume.roi)
    np.testing.assert_array_equal(np.asarray(cached.data), volume.data)
    assert subject_groups(dvr_derivatives, ["HC01", "MS01"]) == {"HC01": "HC", "MS01": "MS"}


def test_folds_spread_the_controls():
    subjects = [f"HC{i:02d}" for i in range(4)] + [f"MS{i:02d}" for i in range(6)]
    groups = {s: s[:2] for s in subjects}
    folds = assign_folds(subjects, 3, seed=0, groups=groups)
    assert sorted(s for fold in folds for s in fold) == subjects
    assert sorted(sum(s.startswith("HC") for s in fold) for fold in folds) == [1, 1, 2]  # thesis: 3, 3 and 4 of 10
    assert sorted(len(fold) for fold in folds) == [3, 3, 4]


def test_grid_patches_cover_the_brain_with_half_overlap():
    mask = np.zeros((20, 12, 9), bool)
    mask[2:18, 3:9, 1:8] = True
    corners = grid_patch_corners(mask, (8, 8, 8))
    assert set(corners[:, 0]) == {0, 4, 8, 12} and set(corners[:, 1]) == {0, 4} and set(corners[:, 2]) == {0, 1}
    covered = np.zeros_like(mask)
    for corner in corners:
        covered[tuple(slice(c, c + 8) for c in corner)] = True
    assert covered[mask].all()


def test_rotations_and_scalings_keep_inputs_target_and_labels_aligned():
    rng = torch.Generator().manual_seed(0)
    x = torch.rand(1, 2, 8, 8, 8, generator=rng)
    roi = (x[:, :1] > 0.5).long() * losses.LESION
    batch = Batch(x, x[:, :1].clone(), roi)
    turned = rotate_axial(batch, 1)
    assert torch.equal(turned.inputs[0, 0, :, :, 3], torch.rot90(x[0, 0, :, :, 3]))
    assert torch.equal(rotate_axial(turned, 3).inputs, x)
    for factor in (0.75, 1.25):
        scaled = scale_patch(batch, factor)
        assert torch.equal(scaled.target, scaled.inputs[:, :1])
        assert set(torch.unique(scaled.roi).tolist()) <= {losses.OTHER, losses.LESION}
    assert torch.allclose(scale_patch(batch, 1.0).inputs, x, atol=1e-6)
    zoomed_out = scale_patch(batch, 0.75).inputs  # content shrinks: the border samples fall outside the patch
    assert zoomed_out[..., 0, :, :].abs().max() == 0 and zoomed_out[..., 4, 4, 4].abs().max() > 0
    kinds = {tuple(np.round(random_transform(batch, np.random.default_rng(s), rotations=True, scaling=True)
                            .inputs[0, 0, :, :, 3].flatten()[:9].tolist(), 5)) for s in range(40)}
    assert len(kinds) == 6  # identity, three rotations, two scalings


def test_method_table_follows_the_thesis():
    assert train_cli.DVR_METHODS == DVR_METHODS
    sketcher, refiner = dvr_stage_configs("refiner-cf-sagan")
    assert (sketcher.loss, sketcher.lr, refiner.loss, refiner.lr) == ("l1", 1e-4, "nwl1", 5e-5)
    assert sketcher.arguments["noise_channels"] == 1 and refiner.arguments["noise_channels"] == 0
    assert refiner.adversarial.d_steps_per_g_step == 2 and refiner.adversarial.label_smoothing
    assert (refiner.patch_sampling, refiner.augmentation) == ("grid", ("random_rotations", "random_scaling"))
    assert refiner.adversarial.optimizer.lr == 5e-5 and refiner.target_scope == "cohort"
    (cgan,) = dvr_stage_configs("cgan")
    assert cgan.adversarial.d_steps_per_g_step == 1 and cgan.patch_sampling == "random"
    assert len(dvr_stage_configs("refiner-cgan", refinements=2)) == 3
    assert len(dvr_stage_configs("refiner-cgan", refinements=0)) == 1
    with pytest.raises(ValueError, match="refinements must be 0, 1 or 2, got 3"):
        dvr_stage_configs("refiner-cgan", refinements=3)


def test_tiny_adversarial_training_lowers_the_generator_l1(dvr_derivatives, tmp_path):
    """A small Sketcher cGAN on one patient's baseline session: L1 falls; two D updates per G update."""
    examples = find_examples(dvr_derivatives, KEYS, "PET", roi=True, sessions="baseline")
    train = [load_volume(e) for e in examples if e.subject == "MS01"]
    channels = channels_of([*KEYS, "PET"])
    (config,) = dvr_stage_configs("cgan", features=4, patch_size=16,
                                  loop={"max_epochs": 6, "patches_per_session": 8, "seed": 1})
    config = TrainingConfig(**{**config.to_dict(), "lr": 2e-3, "adversarial": {
        **config.to_dict()["adversarial"], "d_steps_per_g_step": 2, "label_smoothing": True}})
    torch.manual_seed(config.seed)
    step = build_step(config.stage("sketcher", in_channels=4, out_channels=1, weights="sketcher.pt"))
    result = train_model(train, [], inputs=channels[:-1], outputs=channels[-1:], step=step, config=config,
                         normalisation=compute_normalisation(train, channels), out_dir=tmp_path)
    l1 = [r.train_loss for r in result.history[1:]]
    assert np.mean(l1[-2:]) < 0.7 * np.mean(l1[:2])
    steps = {name: {float(s["step"]) for s in optimizer.state_dict()["state"].values()}
             for name, optimizer in (("G", step.generator_optimizer), ("D", step.discriminator_optimizer))}
    assert steps == {"G": {48.0}, "D": {96.0}}  # 6 epochs × 8 patches


@pytest.mark.parametrize(("method", "stages"), [("unet-wl1", ["synthesis"]), ("refiner-cgan", ["sketcher", "refiner"])])
def test_cli_trains_a_dvr_model(dvr_derivatives, tmp_path, method, stages):
    model_dir = tmp_path / method
    argv = ["dvr", "--derivatives", str(dvr_derivatives), "--out", str(model_dir), "--method", method,
            "--folds", "2", "--epochs", "2", "--patch-size", "16", "--features", "4", "--patches-per-session", "4",
            "--device", "cpu", "--subject-salt", "s", "--data-source", "msynth phantom, seed 5"]
    assert train_cli.main(argv) == 0
    card = read_card(model_dir)
    assert card.target == "DVR" and card.inputs == ("MTR", "DWI") and card.name == f"dvr-{method}_MTR-DWI"
    assert [s.name for s in card.stages] == stages
    assert card.training.command.startswith(f"msynth-train dvr --derivatives {dvr_derivatives}")
    assert [s.network.arguments["in_channels"] for s in card.stages] == [4, 5][:len(stages)]
    assert [s.optimizer.lr for s in card.stages] == [1e-4, 5e-5][:len(stages)]
    assert card.training.n_sessions == 3 and len(card.training.cv) == 2
    for fold in card.training.cv:
        assert np.isfinite(fold.mse) and np.isfinite(fold.psnr) and set(fold.roi_discrepancy) == {
            "other", "NAWM", "lesion"}
        assert len(fold.stage_epochs) == (len(stages) if len(stages) > 1 else 0)
    # the HC is held out in one fold, and each fold holds one patient: every fold measures a lesion
    assert all(np.isfinite(f.roi_discrepancy["lesion"]) for f in card.training.cv)
    loaded, model = load_model(model_dir)
    assert isinstance(model, StageChain) == (len(stages) > 1)
    example = find_examples(dvr_derivatives, KEYS, "PET", subjects=["MS02"])[1]  # the follow-up session
    images = {c: example.images[c] for c in channels_of(KEYS)}
    out = synthesize(model_dir, images, example.mask, newpath=tmp_path / "synth", device="cpu", window=32)
    synthetic, mask = nb.load(out), nb.load(example.mask)
    assert synthetic.shape == mask.shape and np.allclose(synthetic.affine, mask.affine)
    values = synthetic.get_fdata()
    assert values.min() >= 0 and not values[mask.get_fdata() == 0].any()


def test_cli_dvr_errors(dvr_derivatives, tmp_path, capsys):
    argv = ["dvr", "--derivatives", str(dvr_derivatives), "--out", str(tmp_path / "m"), "--method", "unet"]
    assert train_cli.main([*argv, "--inputs", "MTR", "FA"]) == 1
    assert "FA, RD and AD are the DTI maps of one input (DWI); pass all three" in capsys.readouterr().err
    assert train_cli.main([*argv, "--folds", "5"]) == 1
    assert "5-fold cross-validation needs at least 5 subjects, found 3" in capsys.readouterr().err
