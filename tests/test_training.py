"""Training: the strip stopping rule, patches, folds, resume, and a tiny real run on 4 mm phantom derivatives.

The phantom derivatives (two patients, session 01, the participant level at 4 mm) come from the session fixture
``phantom_participants`` of conftest.py.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
import torch

from msynth.cli import train as train_cli
from msynth.models.card import channels_of, read_card
from msynth.models.data import Volume, compute_normalisation, find_examples, load_volume
from msynth.models.inference import synthesize
from msynth.models.networks import build_network
from msynth.models.training import (
    CHECKPOINT_NAME, EpochRecord, StripStopping, TrainingConfig, assign_folds, evaluate_volume,
    sample_patch_corners, strip_stop_epoch, train_model,
)

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


def test_resume_after_interruption_gives_identical_weights(tmp_path, caplog):
    train = [_synthetic_volume("A", 0), _synthetic_volume("B", 1)]
    validation = [_synthetic_volume("C", 2)]
    stats = compute_normalisation(train, ("T1w", "T2w", "FLAIR"))
    config = TrainingConfig(arguments={"features": 4, "depth": 3}, momentum=0.9, lr=1e-3, max_epochs=12,
                            patch_size=12, patches_per_session=3, window=20, strip_length=5, strips=3, seed=7)
    options = dict(inputs=["T1w", "T2w"], outputs=["FLAIR"], normalisation=stats, config=config)
    whole = train_model(train, validation, out_dir=tmp_path / "whole", **options)

    class Interrupted(Exception):
        pass

    def crash_at_7(record: EpochRecord) -> None:
        if record.epoch == 7:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_model(train, validation, out_dir=tmp_path / "resumed", callback=crash_at_7, **options)
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
        config = TrainingConfig(arguments={"features": 4, "depth": 3}, optimizer="adam", lr=3e-3, max_epochs=10,
                                patch_size=12, patches_per_session=4, window=20, seed=7, random_flips=flips)
        return train_model(train, validation, inputs=["T1w", "T2w"], outputs=["FLAIR"], normalisation=stats,
                           config=config, out_dir=tmp_path / folder)

    flipped, again, plain = run("flipped", True), run("again", True), run("plain", False)
    errors = [r.validation_error for r in flipped.history]
    assert min(errors[1:]) < 0.3 * errors[0]
    for name, tensor in flipped.model.state_dict().items():
        assert torch.equal(tensor, again.model.state_dict()[name]), name
    assert not torch.equal(flipped.model.state_dict()["layers.0.weight"], plain.model.state_dict()["layers.0.weight"])
    with pytest.raises(ValueError, match="random_flips must be True or False"):
        TrainingConfig(random_flips="yes")


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
    config = TrainingConfig(arguments={"features": 8, "depth": 3}, optimizer="adam", lr=5e-3, max_epochs=10,
                            patch_size=16, patches_per_session=16, window=64, seed=42)
    normalisation = compute_normalisation(train, channels)
    result = train_model(train, validation, inputs=channels[:-1], outputs=["FLAIR"], normalisation=normalisation,
                         config=config, out_dir=tmp_path)
    # the loss on the whole training volume, untrained (same seed) and trained: epoch means of 16 random patches
    # are too noisy to compare
    torch.manual_seed(config.seed)
    untrained = build_network("fcn", {"features": 8, "depth": 3, "in_channels": len(channels) - 1, "out_channels": 1})

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
    """conftest's tiny_flair_model: msynth-train flair … --folds 2 --epochs 4 --features 8 --optimizer adam."""
    model_dir = tiny_flair_model
    card = read_card(model_dir)
    assert card == read_card(model_dir)
    assert card.inputs == tuple(INPUTS) and card.output == "FLAIR" and card.intensity_normalisation == "image"
    assert [f.fold for f in card.training.cv] == [0, 1]
    assert all(np.isfinite(f.mse) and 0 < f.ssim <= 1 for f in card.training.cv)
    assert card.training.command.startswith("msynth-train flair --derivatives ")
    assert card.training.optimizer == {"name": "adam", "lr": 5e-3, "batch_size": 1}
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


@pytest.mark.slow
def test_cli_errors_found_in_the_data(derivatives, tmp_path, capsys):
    argv = ["flair", "--derivatives", str(derivatives), "--out", str(tmp_path / "m"), "--folds", "5"]
    assert train_cli.main(argv) == 1
    assert "5-fold cross-validation needs at least 5 subjects, found 2" in capsys.readouterr().err
    assert train_cli.main([*argv[:-2], "--folds", "2", "--features", "0"]) == 1
    assert "features must be >= 1, got 0" in capsys.readouterr().err
