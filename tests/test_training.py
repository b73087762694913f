"""Training: the strip stopping rule, patches, steps (supervised and adversarial), folds, resume, and a tiny real run
on 4 mm phantom derivatives.

The phantom derivatives (two patients, session 01, the participant level at 4 mm) come from the session fixture
``phantom_participants`` of conftest.py.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from msynth.cli import train as train_cli
from msynth.models import losses
from msynth.models.card import AdversarialSpec, NetworkSpec, OptimizerSpec, channels_of, read_card
from msynth.models.data import Volume, compute_normalisation, find_examples, load_volume
from msynth.models.inference import synthesize
from msynth.models.networks import build_network
from msynth.models.training import (
    CHECKPOINT_NAME, AdversarialStep, Batch, EpochRecord, StripStopping, SupervisedStep, TrainingConfig,
    assign_folds, build_step, evaluate_volume, sample_patch_corners, strip_stop_epoch, supervised_loss, train_model,
)
from msynth.models.training.patches import extract_patch, random_flip

torch.set_num_threads(1)
INPUTS = ["T1w", "T2w", "PDw", "T1SE", "DIR"]


# ----------------------------------------------------------------------------------------------------------------
# the stopping rule (Prechelt's UP_p, paper 001: p = 3, q = 5)
# ----------------------------------------------------------------------------------------------------------------
def _curve(strip_ends: list[float], q: int = 5) -> list[float]:
    """Per-epoch errors through the given values at epochs 0, q, 2q, … (noise in between must not matter)."""
    epochs = np.arange(q * (len(strip_ends) - 1) + 1)
    errors = np.interp(epochs, epochs[::q], strip_ends)
    errors[epochs % q != 0] += 100.0  # off-strip epochs are never looked at
    return errors.tolist()


@pytest.mark.parametrize(("strip_ends", "strips", "expected"), [
    ([10, 5, 0, 5, 10, 15, 20], 3, 25),  # rises at 15, 20, 25
    ([10, 5, 0, 5, 10, 15, 20], 1, 15),
    ([10, 5, 0, 5, 10, 15, 20], 2, 20),
    ([10, 8, 6, 7, 5, 6, 7, 8, 9], 3, 35),  # the rise at 15 is interrupted at 20; rises at 25, 30, 35
    ([10, 9, 8, 7, 6, 5, 4, 3], 3, None),  # never rises
    ([10, 11, 12, 13], 3, 15),  # rises from the start: the untrained network counts as epoch 0
])
def test_strip_rule_on_hand_made_curves(strip_ends, strips, expected):
    errors = _curve(strip_ends)
    assert strip_stop_epoch(errors, strip_length=5, strips=strips) == expected
    stopping = StripStopping(5, strips)
    stopped = next((t for t, e in enumerate(errors) if stopping.update(t, e)), None)
    assert stopped == expected
    assert stopping.errors[stopping.best_epoch] == min(errors[: (stopped or len(errors) - 1) + 1])


def test_patch_corners_are_brain_centred_and_inside():
    mask = np.zeros((30, 20, 10), bool)
    mask[20:28, 2:6, 4:6] = True
    rng = np.random.default_rng(0)
    corners = sample_patch_corners(mask, 200, (8, 8, 8), rng)
    assert corners.shape == (200, 3)
    assert np.all(corners >= 0) and np.all(corners + 8 <= np.array(mask.shape))
    for corner in corners[:20]:
        region = tuple(slice(c, c + 8) for c in corner)
        assert mask[region].any()


def test_folds_are_over_subjects():
    subjects = [f"{i:02d}" for i in range(7)]
    folds = assign_folds(subjects, 3, seed=1)
    assert sorted(s for fold in folds for s in fold) == subjects
    assert sorted(len(f) for f in folds) == [2, 2, 3]
    assert folds == assign_folds(list(reversed(subjects)), 3, seed=1)
    with pytest.raises(ValueError, match="5-fold cross-validation needs at least 5 subjects, found 2; use --folds 2"):
        assign_folds(["a", "b"], 5, seed=1)


# ----------------------------------------------------------------------------------------------------------------
# resume
# ----------------------------------------------------------------------------------------------------------------
def _synthetic_volume(subject: str, seed: int) -> Volume:
    """A 20³ two-channel 'session' whose target is a fixed non-linear function of the inputs."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, 20)] * 3, indexing="ij"))
    mask = (grid**2).sum(0) < 0.8
    a = 100 + 30 * np.sin(3 * grid[0] + seed) + rng.normal(0, 3, mask.shape)
    b = 200 + 50 * grid[1] * grid[2] + rng.normal(0, 3, mask.shape)
    target = np.maximum(0, 2 * a - b + 300)
    data = np.stack([a, b, target]).astype(np.float32)
    return Volume(subject, None, ("T1w", "T2w", "FLAIR"), data, mask, np.eye(4))


class Interrupted(Exception):
    """A training run killed mid-way."""


def _crash_after(epoch: int) -> Callable[[EpochRecord], None]:
    """A training callback that interrupts the run after ``epoch``."""
    def crash(record: EpochRecord) -> None:
        if record.epoch == epoch:
            raise Interrupted

    return crash


def test_resume_after_interruption_gives_identical_weights(tmp_path, caplog):
    train = [_synthetic_volume("A", 0), _synthetic_volume("B", 1)]
    validation = [_synthetic_volume("C", 2)]
    stats = compute_normalisation(train, ("T1w", "T2w", "FLAIR"))
    config = TrainingConfig(arguments={"filters": 4, "hidden_layers": 2}, momentum=0.9, lr=1e-3, max_epochs=12,
                            patch_size=12, patches_per_session=3, window=20, strip_length=5, strips=3, seed=7)
    options = dict(inputs=["T1w", "T2w"], outputs=["FLAIR"], normalisation=stats, config=config)
    whole = train_model(train, validation, out_dir=tmp_path / "whole", **options)

    with pytest.raises(Interrupted):
        train_model(train, validation, out_dir=tmp_path / "resumed", callback=_crash_after(7), **options)
    assert torch.load(tmp_path / "resumed" / CHECKPOINT_NAME, weights_only=True)["epoch"] == 5
    resumed = train_model(train, validation, out_dir=tmp_path / "resumed", **options)
    np.testing.assert_array_equal([list(r.__dict__.values()) for r in resumed.history],
                                  [list(r.__dict__.values()) for r in whole.history])  # NaN == NaN here
    assert resumed.best_epoch == whole.best_epoch
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name

    # a finished run continues when only max_epochs grows (7 is no strip end: its last epoch is checkpointed too)
    shorter = TrainingConfig(**{**config.to_dict(), "max_epochs": 7})
    train_model(train, validation, out_dir=tmp_path / "extended", **{**options, "config": shorter})
    with caplog.at_level(logging.INFO, logger="msynth.models"):
        extended = train_model(train, validation, out_dir=tmp_path / "extended", **options)
    assert "resuming after epoch 7" in caplog.text
    assert [r.validation_error for r in extended.history[1:]] == [r.validation_error for r in whole.history[1:]]
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, extended.model.state_dict()[name]), name


def test_random_flips_keep_inputs_and_target_aligned(tmp_path):
    """Mirrored patches still teach the map (a misaligned target would not), reproducibly, and they do mirror."""
    train = [_synthetic_volume("A", 0), _synthetic_volume("B", 1)]
    validation = [_synthetic_volume("C", 2)]
    stats = compute_normalisation(train, ("T1w", "T2w", "FLAIR"))

    def run(folder: str, flips: bool):
        config = TrainingConfig(arguments={"filters": 4, "hidden_layers": 2}, optimizer="adam", lr=3e-3, max_epochs=10,
                                patch_size=12, patches_per_session=4, window=20, seed=7, random_flips=flips)
        return train_model(train, validation, inputs=["T1w", "T2w"], outputs=["FLAIR"], normalisation=stats,
                           config=config, out_dir=tmp_path / folder)

    flipped, again, plain = run("flipped", True), run("again", True), run("plain", False)
    errors = [r.validation_error for r in flipped.history]
    assert min(errors[1:]) < 0.3 * errors[0]
    for name, tensor in flipped.model.state_dict().items():
        assert torch.equal(tensor, again.model.state_dict()[name]), name
    assert not torch.equal(flipped.model.state_dict()["layers.0.weight"], plain.model.state_dict()["layers.0.weight"])


@pytest.mark.parametrize(("changes", "message"), [
    ({"random_flips": "yes"}, "field 'random_flips' must be true or false, got 'yes'"),
    ({"optimizer": "rmsprop"}, "field 'optimizer' must be one of sgd, adam, got 'rmsprop'"),
    ({"lr": -1}, "field 'lr' must be a positive number, got -1.0"),
    ({"momentum": 1.0}, "field 'momentum' must be in [0, 1), got 1.0"),
    ({"loss": "huber"}, "field 'loss' must be one of mse, l1, wl1, nwl1, got 'huber'"),
    ({"patch_size": 0}, "field 'patch_size' must be a positive integer, got 0"),
    ({"seed": -3}, "field 'seed' must be a non-negative integer, got -3"),
    ({"adversarial": {"weight": 100.0}}, "field 'adversarial.discriminator' is missing"),
])
def test_config_names_the_bad_field(changes, message):
    with pytest.raises(ValueError) as err:
        TrainingConfig(**changes)
    assert str(err.value) == message


def test_config_describes_its_stage_for_the_card():
    discriminator = NetworkSpec("patch-discriminator", {"patch_size": 8})
    config = TrainingConfig(architecture="unet", arguments={"features": 32}, optimizer="adam", lr=1e-4,
                            loss="l1", adversarial=AdversarialSpec(discriminator, OptimizerSpec("adam", 5e-5), 100.0))
    assert TrainingConfig(**config.to_dict()) == config
    stage = config.stage("sketcher", in_channels=4, out_channels=1, weights="sketcher.pt")
    assert stage.network == NetworkSpec("unet", {"features": 32, "in_channels": 4, "out_channels": 1})
    assert stage.optimizer == OptimizerSpec("adam", 1e-4) and stage.loss == "l1"
    assert stage.adversarial.discriminator.arguments == {"patch_size": 8, "in_channels": 4, "image_channels": 1}
    assert stage.adversarial.d_steps_per_g_step == 2 and stage.adversarial.optimizer.lr == 5e-5


# ----------------------------------------------------------------------------------------------------------------
# patches and steps
# ----------------------------------------------------------------------------------------------------------------
def test_patches_carry_roi_labels_and_flip_with_them():
    volume = _synthetic_volume("A", 0)
    volume.roi = np.where(volume.mask, losses.NAWM, losses.OTHER)
    volume.roi[10:12, 3:5, 8:10] = losses.LESION
    stats = compute_normalisation([volume], ("T1w", "T2w", "FLAIR"))
    batch = extract_patch(volume, np.array([8, 2, 6]), (6, 5, 4), ["T1w", "T2w"], ["FLAIR"], stats)
    assert batch.inputs.shape == (1, 2, 6, 5, 4) and batch.target.shape == batch.roi.shape == (1, 1, 6, 5, 4)
    assert batch.roi.dtype == torch.int64 and int(batch.roi[0, 0, 2, 1, 2]) == losses.LESION
    np.testing.assert_array_equal(batch.roi[0, 0].numpy(), volume.roi[8:14, 2:7, 6:10])
    flipped = random_flip(batch, np.random.default_rng(1))  # draws 0.51, 0.95, 0.14: the last axis only
    assert torch.equal(flipped.inputs, batch.inputs.flip([4])) and torch.equal(flipped.roi, batch.roi.flip([4]))
    assert torch.equal(flipped.target, batch.target.flip([4]))


def _unit_network(weight: float) -> nn.Conv3d:
    conv = nn.Conv3d(1, 1, kernel_size=1, bias=False)
    nn.init.constant_(conv.weight, weight)
    return conv


def test_supervised_step_is_one_sgd_update_of_the_mse():
    """w = 2, x = 1, y = 3: MSE (2 - 3)² = 1, dMSE/dw = 2 (2 - 3) = -2, so SGD with lr 0.1 gives w = 2.2."""
    network = _unit_network(2.0)
    step = SupervisedStep(network, supervised_loss("mse"), torch.optim.SGD(network.parameters(), lr=0.1))
    batch = Batch(torch.ones(1, 1, 2, 2, 2), torch.full((1, 1, 2, 2, 2), 3.0))
    assert step(batch) == pytest.approx(1.0)
    assert float(network.weight.detach()) == pytest.approx(2.2)
    assert step(batch) == pytest.approx(0.8**2)
    restored = SupervisedStep(_unit_network(0.0), supervised_loss("mse"),
                              torch.optim.SGD(network.parameters(), lr=0.1))
    restored.load_state_dict(step.state_dict())
    assert float(restored.network.weight.detach()) == pytest.approx(2.36)


def _tiny_gan(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """A 2-channel → 1-channel generator and a conditional patch discriminator (4³ patches, one logit each)."""
    torch.manual_seed(seed)
    generator = nn.Sequential(nn.Conv3d(2, 8, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv3d(8, 1, 1))
    discriminator = build_network("patch-discriminator", {"in_channels": 2, "patch_size": 4, "features": 4,
                                                          "blocks": 1, "norm": None})
    return generator, discriminator


def _adversarial_step(generator: nn.Module, discriminator: nn.Module,
                      adversarial=losses.adversarial_loss) -> AdversarialStep:
    """Adam 1e-3 (a fast generator for a short test) / 5e-5 (the thesis's discriminator), λ = 100, L1."""
    return AdversarialStep(
        generator, discriminator, supervised=lambda p, t, roi: F.l1_loss(p, t), adversarial=adversarial,
        generator_optimizer=torch.optim.Adam(generator.parameters(), lr=1e-3),
        discriminator_optimizer=torch.optim.Adam(discriminator.parameters(), lr=5e-5), weight=100.0)


def test_adversarial_step_trains_the_discriminator_twice_per_generator_step():
    calls = []

    def spy(logits, real, *, smoothing):
        calls.append((real, smoothing, tuple(logits.shape)))
        return losses.adversarial_loss(logits, real, smoothing=smoothing)

    generator, discriminator = _tiny_gan()
    step = _adversarial_step(generator, discriminator, spy)
    rng = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 8, 8, 8, generator=rng)
    batch = Batch(x, (2 * x[:, :1] - x[:, 1:]).detach())
    l1 = [step(batch) for _ in range(3)]
    d_update, g_update = [(True, True), (False, True)], [(True, False)]  # (real, smoothing): D smooths, G does not
    assert [c[:2] for c in calls] == 3 * (2 * d_update + g_update)
    assert all(c[2] == (1, 1, 2, 2, 2) for c in calls)  # one logit per non-overlapping 4³ patch
    d_state = step.discriminator_optimizer.state_dict()["state"]
    g_state = step.generator_optimizer.state_dict()["state"]
    assert {float(s["step"]) for s in d_state.values()} == {6.0}
    assert {float(s["step"]) for s in g_state.values()} == {3.0}
    assert l1[0] == pytest.approx(float(F.l1_loss(_tiny_gan()[0](x), batch.target).detach()), rel=1e-6)
    with pytest.raises(ValueError, match="d_steps_per_g_step must be >= 1, got 0"):
        AdversarialStep(generator, discriminator, supervised=F.l1_loss, adversarial=spy, weight=1.0,
                        generator_optimizer=step.generator_optimizer,
                        discriminator_optimizer=step.discriminator_optimizer, d_steps_per_g_step=0)


def test_a_card_stage_builds_its_gan_step():
    """A Refiner stage (U-Net generator, patch discriminator, WL1, Adam): two D updates per G update, WL1 with ROIs."""
    discriminator = NetworkSpec("patch-discriminator", {"patch_size": 8, "features": 4, "blocks": 2})
    config = TrainingConfig(architecture="unet", arguments={"features": 4, "levels": 2}, optimizer="adam", lr=1e-4,
                            loss="wl1", adversarial=AdversarialSpec(discriminator, OptimizerSpec("adam", 5e-5), 10.0))
    torch.manual_seed(0)
    step = build_step(config.stage("refiner", in_channels=5, out_channels=1, weights="refiner.pt"))
    assert isinstance(step, AdversarialStep) and step.multiple == 8
    x = torch.randn(1, 5, 8, 8, 8)
    roi = torch.full((1, 1, 8, 8, 8), losses.NAWM)
    roi[..., :2] = losses.LESION
    roi[..., 6:] = losses.OTHER
    batch = Batch(x, x[:, :1].clone(), roi)
    with torch.no_grad():
        expected = float(losses.weighted_l1_loss(step.network.eval()(x), batch.target, roi))
    step.train()
    assert step(batch) == pytest.approx(expected, rel=1e-5)  # eval and train mode agree: no dropout, batch of one
    steps = {name: {float(s["step"]) for s in optimizer.state_dict()["state"].values()}
             for name, optimizer in (("G", step.generator_optimizer), ("D", step.discriminator_optimizer))}
    assert steps == {"G": {1.0}, "D": {2.0}}
    with pytest.raises(ValueError, match="loss 'wl1' weights lesion, NAWM and other voxels"):
        step(Batch(x, batch.target))


def test_adversarial_training_lowers_the_generator_l1_and_resumes_exactly(tmp_path):
    """Training a conditional GAN step: the L1 falls, and a run resumed from its checkpoint (both networks and
    optimisers) ends with the same weights as an uninterrupted one."""
    train = [_synthetic_volume("A", 0), _synthetic_volume("B", 1)]
    validation = [_synthetic_volume("C", 2)]
    stats = compute_normalisation(train, ("T1w", "T2w", "FLAIR"))
    config = TrainingConfig(max_epochs=6, patch_size=8, patches_per_session=4, window=20, strip_length=2, seed=3)
    options = dict(inputs=["T1w", "T2w"], outputs=["FLAIR"], normalisation=stats, config=config)
    whole = train_model(train, validation, step=_adversarial_step(*_tiny_gan()), out_dir=tmp_path / "whole",
                        **options)
    l1 = [r.train_loss for r in whole.history[1:]]
    assert l1[-1] < 0.6 * l1[0]
    errors = [r.validation_error for r in whole.history]
    assert min(errors) < 0.5 * errors[0]

    with pytest.raises(Interrupted):
        train_model(train, validation, step=_adversarial_step(*_tiny_gan()), out_dir=tmp_path / "resumed",
                    callback=_crash_after(5), **options)
    assert set(torch.load(tmp_path / "resumed" / CHECKPOINT_NAME, weights_only=True)["step"]) == {
        "network", "optimizer", "discriminator", "discriminator_optimizer"}
    resumed_step = _adversarial_step(*_tiny_gan(seed=1))  # other initial weights: the checkpoint replaces them
    resumed = train_model(train, validation, step=resumed_step, out_dir=tmp_path / "resumed", **options)
    assert [r.train_loss for r in resumed.history] == pytest.approx([r.train_loss for r in whole.history],
                                                                    nan_ok=True, abs=0)
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


# ----------------------------------------------------------------------------------------------------------------
# 4 mm phantom derivatives
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def derivatives(phantom_participants) -> Path:
    """msynth participant outputs of two 4 mm phantom patients (session 01)."""
    return phantom_participants[1]


@pytest.mark.slow
def test_sessions_missing_an_input_are_skipped_with_a_reason(derivatives, tmp_path, caplog):
    copy = tmp_path / "out"
    shutil.copytree(derivatives / "sub-MS01" / "ses-01", copy / "sub-MS01" / "ses-01")
    for dir_file in copy.glob("sub-MS01/ses-01/anat/*_acq-DIR_*"):
        dir_file.unlink()
    with caplog.at_level(logging.INFO, logger="msynth.models"):
        assert find_examples(copy, INPUTS, "FLAIR") == []
    assert "sub-MS01 ses-01: skipped for training — missing sub-MS01_ses-01_acq-DIR_space-T1w_desc-preproc_T2w" \
        in caplog.text
    assert len(find_examples(copy, ["T1w", "T2w"], "FLAIR")) == 1
    with pytest.raises(ValueError, match="unknown input modality key 'T3w'"):
        find_examples(copy, ["T3w"], "FLAIR")


@pytest.mark.slow
def test_tiny_training_on_phantom_learns(derivatives, tmp_path):
    examples = [e for e in find_examples(derivatives, INPUTS, "FLAIR") if e.session in (None, "01")]
    volumes = [load_volume(e, cache_dir=tmp_path / "cache") for e in examples]
    train = [v for v in volumes if v.subject == "MS01"]
    validation = [v for v in volumes if v.subject == "MS02"]
    channels = channels_of([*INPUTS, "FLAIR"])
    # Adam: within 10 tiny epochs SGD (the paper's optimiser) moves these 8-filter networks too little to tell
    config = TrainingConfig(arguments={"filters": 8, "hidden_layers": 2}, optimizer="adam", lr=5e-3, max_epochs=10,
                            patch_size=16, patches_per_session=16, window=64, seed=42)
    normalisation = compute_normalisation(train, channels)
    result = train_model(train, validation, inputs=channels[:-1], outputs=["FLAIR"], normalisation=normalisation,
                         config=config, out_dir=tmp_path)
    # the loss on the whole training volume, untrained (same seed) and trained: epoch means of 16 random patches
    # are too noisy to compare
    torch.manual_seed(config.seed)
    untrained = build_network("fcn", {"filters": 8, "hidden_layers": 2, "in_channels": len(channels) - 1,
                                      "out_channels": 1})

    def training_error(model: torch.nn.Module) -> float:
        return evaluate_volume(model.eval(), train[0], inputs=channels[:-1], output="FLAIR",
                               normalisation=normalisation, window=64, scope="image")["mse"]

    before, after = training_error(untrained), training_error(result.model)
    assert after < 0.5 * before  # measured 0.21-0.27 (the rate depends on the tests run before it)
    assert all(np.isfinite(r.train_loss) for r in result.history[1:])
    errors = [r.validation_error for r in result.history]
    assert min(errors) < 0.7 * errors[0]  # it generalises to the other subject
    assert result.best_epoch == int(np.argmin(errors))
    assert (tmp_path / CHECKPOINT_NAME).is_file()
    assert (tmp_path / "history.tsv").read_text().count("\n") == len(result.history) + 1


@pytest.mark.slow
def test_cli_cross_validates_writes_a_card_and_the_model_synthesises(derivatives, tiny_flair_model, tmp_path):
    """conftest's tiny_flair_model: msynth-train flair … --folds 2 --epochs 4 --features 8 --depth 2 --optimizer
    adam."""
    model_dir = tiny_flair_model
    card = read_card(model_dir)
    assert card == read_card(model_dir)
    assert card.inputs == tuple(INPUTS) and card.target == "FLAIR" and card.intensity_normalisation == "image"
    assert [f.fold for f in card.training.cv] == [0, 1]
    assert all(np.isfinite(f.mse) and 0 < f.ssim <= 1 for f in card.training.cv)
    assert card.training.command.startswith("msynth-train flair --derivatives ")
    (stage,) = card.stages
    assert stage.optimizer == OptimizerSpec("adam", 5e-3) and stage.loss == "mse" and card.training.batch_size == 1
    assert stage.network == NetworkSpec("fcn", {"filters": 8, "hidden_layers": 2, "in_channels": 5, "out_channels": 1})
    assert "MS01" not in (model_dir / "model_card.json").read_text()

    example = next(e for e in find_examples(derivatives, INPUTS, "FLAIR") if e.subject == "MS02")
    images = {key: example.images[key] for key in INPUTS}
    mask_file = example.mask
    out = synthesize(model_dir, images, mask_file, newpath=tmp_path / "synth", device="cpu", window=32)
    synthetic, mask_img = nb.load(out), nb.load(mask_file)
    assert synthetic.shape == mask_img.shape and np.allclose(synthetic.affine, mask_img.affine)
    values, mask = synthetic.get_fdata(), mask_img.get_fdata() > 0
    assert values.min() >= 0 and not values[~mask].any()
    flair = nb.load(example.images["FLAIR"]).get_fdata()
    assert np.corrcoef(values[mask], flair[mask])[0, 1] > 0.5


def test_cli_errors(tmp_path, capsys):
    assert train_cli.main(["flair", "--derivatives", str(tmp_path / "none"), "--out", str(tmp_path / "m")]) == 1
    assert "none: no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert train_cli.main(["flair", "--derivatives", str(tmp_path / "empty"), "--out", str(tmp_path / "m")]) == 1
    assert "no sub-* folders" in capsys.readouterr().err
    assert train_cli.main(["flair", "--derivatives", str(tmp_path), "--out", str(tmp_path / "m"), "--folds", "1"]) == 1
    assert "--folds must be 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        train_cli.main(["flair", "--derivatives", str(tmp_path), "--out", str(tmp_path / "m"), "--inputs", "T3w"])
    assert exit_.value.code == 2
    assert "invalid choice: 'T3w'" in capsys.readouterr().err
    for task in ("flair", "dvr --method cgan"):
        with pytest.raises(SystemExit) as exit_:
            train_cli.main([*task.split(), "--derivatives", str(tmp_path), "--out", str(tmp_path / "m"),
                            "--features", "0"])
        assert exit_.value.code == 2
        assert "argument --features: must be a positive integer, got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_errors_found_in_the_data(derivatives, tmp_path, capsys):
    argv = ["flair", "--derivatives", str(derivatives), "--out", str(tmp_path / "m"), "--folds", "5"]
    assert train_cli.main(argv) == 1
    assert "5-fold cross-validation needs at least 5 subjects, found 2" in capsys.readouterr().err
