"""Model cards: round trip, validation messages that name the file and the field, version-1 cards, weights-only
loading."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from msynth.models.card import (
    CARD_NAME, SCHEMA_VERSION, TARGETS, WEIGHTS_NAME, AdversarialSpec, FoldMetrics, ModelCard, NetworkSpec,
    Normalisation, OptimizerSpec, Stage, TrainingRecord, channels_of, hash_subject, read_card, write_card,
)
from msynth.models.fields import FieldError, parse
from msynth.models.inference import load_model
from msynth.models.networks import build_network
from msynth.models.selection import WEIGHTS_DIR
from msynth.utils.derivatives import derivative_path

torch.set_num_threads(1)
INPUTS = ("T1w", "T2w", "PDw", "T1SE", "DIR")
SALT = "test-salt"


def make_record() -> TrainingRecord:
    """A valid training record (three subjects, two folds)."""
    return TrainingRecord(
        subjects=tuple(sorted(hash_subject(s, SALT) for s in ("01", "02", "03"))), salt_fingerprint="ab" * 32,
        n_sessions=5, data_source="msynth phantom", data_license="CC0", data_citation="Wei et al. 2019",
        command="msynth-train flair --derivatives out --out model", seed=42, epochs=12, patch_size=64,
        early_stopping={"strip_length": 5, "strips": 3}, augmentation=("random_flips",),
        cv=(FoldMetrics(0, 2, 1, 1234.5, 25.25, 0.8125, 10), FoldMetrics(1, 2, 1, 1500.0, 24.0, 0.75, 15)),
    )


def make_card(inputs: tuple[str, ...] = INPUTS, name: str = "flair-test", features: int = 4) -> ModelCard:
    """A valid one-stage FLAIR card for a small FCN over ``inputs``."""
    stats = {channel: Normalisation(100.0 + i, 10.0 + i) for i, channel in enumerate(channels_of((*inputs, "FLAIR")))}
    stage = Stage(name="synthesis", loss="mse", optimizer=OptimizerSpec("sgd", 5e-4),
                  network=NetworkSpec("fcn", {"in_channels": len(inputs), "out_channels": 1, "filters": features,
                                              "hidden_layers": 2}))
    return ModelCard(name=name, target="FLAIR", inputs=inputs, voxel_size_mm=1.0, normalisation=stats,
                     intensity_normalisation="image", stages=(stage,), training=make_record())


def make_dvr_card() -> ModelCard:
    """A Sketcher-Refiner cGAN card: MTR and DTI → DVR (thesis 003 §3.2), the Refiner taking the sketch too."""
    inputs = ("MTR", "DWI")
    stats = {channel: Normalisation(1.0 + i, 0.5) for i, channel in enumerate(channels_of((*inputs, "PET")))}
    discriminator = NetworkSpec("patch-discriminator", {"in_channels": 5, "patch_size": 8})

    def stage(name: str, in_channels: int, lr: float, weights: str) -> Stage:
        return Stage(name=name, loss="wl1" if name == "refiner" else "l1", weights=weights,
                     optimizer=OptimizerSpec("adam", lr, betas=(0.5, 0.999)),
                     network=NetworkSpec("unet", {"in_channels": in_channels, "out_channels": 1, "features": 32}),
                     adversarial=AdversarialSpec(discriminator, OptimizerSpec("adam", 5e-5), weight=100.0))

    return ModelCard(name="dvr-test", target="DVR", inputs=inputs, voxel_size_mm=2.0, normalisation=stats,
                     intensity_normalisation="cohort", training=make_record(),
                     stages=(stage("sketcher", 4, 1e-4, "sketcher.pt"), stage("refiner", 5, 5e-5, "refiner.pt")))


@pytest.mark.parametrize("make", [make_card, make_dvr_card], ids=["flair", "dvr"])
def test_card_round_trip(tmp_path: Path, make) -> None:
    card = make()
    path = write_card(card, tmp_path / "model")
    assert path == tmp_path / "model" / CARD_NAME
    again = read_card(tmp_path / "model")
    assert again == card
    assert again.training.cv[1].ssim == 0.75
    assert again.training.augmentation == ("random_flips",)
    assert set(again.versions) >= {"msynth", "torch", "python"}
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION == 2


def test_dvr_card_describes_its_target_and_stages() -> None:
    card = make_dvr_card()
    assert card.output == "PET" and set(card.normalisation) == {"MTR", "FA", "RD", "AD", "DVR"}
    assert [stage.name for stage in card.stages] == ["sketcher", "refiner"]
    assert card.stages[1].adversarial.d_steps_per_g_step == 2 and card.stages[1].adversarial.label_smoothing
    assert card.stages[0].optimizer.betas == (0.5, 0.999)


def test_card_never_stores_raw_subject_labels(tmp_path: Path) -> None:
    write_card(make_card(), tmp_path)
    text = (tmp_path / CARD_NAME).read_text()
    assert hash_subject("sub-01", SALT) in text
    assert '"01"' not in text and "sub-01" not in text and SALT not in text


def _mutate(data: dict, dotted: str, value: object) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        data = data[int(part)] if isinstance(data, list) else data[part]
    if value is KeyError:
        del data[last]
    else:
        data[last] = value


@pytest.mark.parametrize(("field", "value", "message"), [
    ("normalisation.T2w.std", -1.0, "field 'normalisation.T2w.std' must be a positive number"),
    ("normalisation.FLAIR", KeyError, "field 'normalisation.FLAIR' is missing"),
    ("target", KeyError, "field 'target' is missing"),
    ("target", "pet", "field 'target' must be one of FLAIR, DVR, got 'pet'"),
    ("inputs", ["T1w", "T3w"], "field 'inputs' has unknown modality key 'T3w'"),
    ("inputs", ["T2w", "T1w", "PDw", "T1SE", "DIR"], "field 'inputs' must follow the canonical order"),
    ("inputs", "T1w", "field 'inputs' must be a list, got 'T1w'"),
    ("voxel_size_mm", 0, "field 'voxel_size_mm' must be a positive number or null"),
    ("stages", [], "field 'stages' must list at least one stage"),
    ("stages.0.network.architecture", 7, "field 'stages[0].network.architecture' must be a string, got 7"),
    ("stages.0.network.arguments.in_channels", 3, "field 'stages[0].network.arguments.in_channels' must equal the "
                                                  "number of input channels (5), got 3"),
    ("stages.0.loss", "huber", "field 'stages[0].loss' must be one of mse, l1, wl1, nwl1, got 'huber'"),
    ("stages.0.optimizer", {"name": "rmsprop", "lr": 1e-3}, "field 'stages[0].optimizer.name' must be one of sgd"),
    ("stages.0.optimizer.lr", 0, "field 'stages[0].optimizer.lr' must be a positive number, got 0.0"),
    ("stages.0.optimizer.betas", [0.9], "field 'stages[0].optimizer.betas' must be a list of 2 values"),
    ("stages.0.weights", "../model.pt", "field 'stages[0].weights' must be a .pt file name in the model folder"),
    ("stages.0.adversarial", {"weight": 1.0}, "field 'stages[0].adversarial.discriminator' is missing"),
    ("training.subjects", ["01", "02"], "field 'training.subjects' must be a non-empty list of SHA-256"),
    ("training.cv.0.mse", "low", "field 'training.cv[0].mse' must be a number, got 'low'"),
    ("training.augmentation", ["rotations"], "field 'training.augmentation[0]' must be one of random_flips"),
    ("training.early_stopping.strips", 0, "field 'training.early_stopping.strips' must be an integer >= 1"),
    ("training.optimizer", {"name": "sgd", "lr": 1e-3}, "field 'training.optimizer' is not a known field"),
    ("created", "yesterday", "field 'created' must be an ISO 8601 date"),
    ("intensity_normalisation", "global", "field 'intensity_normalisation' must be one of cohort, image"),
    ("schema_version", 3, "field 'schema_version' must be 1 or 2 (the card formats this msynth reads), got 3"),
    ("colour", "blue", "field 'colour' is not a known field"),
])
def test_bad_field_names_file_and_field(tmp_path: Path, field: str, value: object, message: str) -> None:
    write_card(make_card(), tmp_path)
    data = json.loads((tmp_path / CARD_NAME).read_text())
    _mutate(data, field, value)
    (tmp_path / CARD_NAME).write_text(json.dumps(data))
    with pytest.raises(ValueError) as err:
        read_card(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / CARD_NAME}: ")
    assert message in str(err.value)


def test_refiner_takes_the_inputs_and_the_sketch() -> None:
    card = make_dvr_card()
    sketcher, refiner = card.stages
    bad = Stage(name="refiner", loss="wl1", optimizer=refiner.optimizer, weights="refiner.pt",
                network=NetworkSpec("unet", {**refiner.network.arguments, "in_channels": 4}))
    with pytest.raises(FieldError, match=r"'stages\[1\].network.arguments.in_channels' must equal the number of "
                                             r"input channels \(5\), got 4"):
        ModelCard(**{**card.__dict__, "stages": (sketcher, bad)})
    with pytest.raises(FieldError, match="'stages' must have distinct weights files"):
        ModelCard(**{**card.__dict__, "stages": (sketcher, Stage(**{**refiner.__dict__, "weights": "sketcher.pt"}))})


def _version_1(card_dir: Path) -> dict:
    return json.loads((card_dir / CARD_NAME).read_text())


def test_version_1_cards_read_as_one_stage() -> None:
    """The shipped cards are version 1: their network becomes the stage 'synthesis', trained with MSE."""
    data = _version_1(WEIGHTS_DIR / "flair-fcn-phantom")
    assert data["schema_version"] == 1
    card = ModelCard.from_dict(data)
    (stage,) = card.stages
    assert card.target == "FLAIR" and card.output == "FLAIR" and card.inputs == INPUTS
    assert stage == Stage(name="synthesis", loss="mse", weights=WEIGHTS_NAME, optimizer=OptimizerSpec("adam", 1e-3),
                          network=NetworkSpec("fcn", {"features": 32, "depth": 3, "in_channels": 5,
                                                      "out_channels": 1}))  # read by build_network as named then
    assert card.training.batch_size == 1 and card.training.epochs == 82 and card.training.cv[4].epochs == 44
    assert card.schema_version == 2


@pytest.mark.parametrize(("field", "value", "message"), [
    ("task", "pet", "field 'task' must be one of flair-synthesis, dvr-synthesis, got 'pet'"),
    ("output", "PET", "field 'output' must be 'FLAIR' for task 'flair-synthesis', got 'PET'"),
    ("architecture_arguments", KeyError, "field 'architecture_arguments' is missing"),
    ("training.optimizer.name", "rmsprop", "field 'stages[0].optimizer.name' must be one of sgd, adam"),
])
def test_bad_version_1_fields(tmp_path: Path, field: str, value: object, message: str) -> None:
    data = _version_1(WEIGHTS_DIR / "flair-fcn-phantom")
    _mutate(data, field, value)
    (tmp_path / CARD_NAME).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=re.escape(message)):
        read_card(tmp_path)


def test_not_json_and_missing_card(tmp_path: Path) -> None:
    (tmp_path / CARD_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_card(tmp_path)
    with pytest.raises(FileNotFoundError, match="no model card"):
        read_card(tmp_path / "elsewhere")


def test_constructor_validates() -> None:
    card = make_card()
    with pytest.raises(ValueError, match="field 'target' must be one of FLAIR, DVR, got 'PET'"):
        ModelCard(**{**card.__dict__, "target": "PET"})
    with pytest.raises(ValueError, match="field 'std' must be a positive number, got 0.0"):
        Normalisation(1.0, 0)


@pytest.mark.parametrize(("hint", "value", "expected"), [
    (tuple[int, ...], [1, 2], (1, 2)),
    (float, 3, 3.0),
    (float | None, None, None),
    (dict[str, Normalisation], {"T1w": {"mean": 1, "std": 2}}, {"T1w": Normalisation(1.0, 2.0)}),
])
def test_parse_follows_the_annotations(hint, value, expected) -> None:
    assert parse(hint, value) == expected


@pytest.mark.parametrize(("hint", "value", "message"), [
    (int, True, "field 'x' must be an integer, got True"),
    (float, "1", "field 'x' must be a number, got '1'"),
    (bool, 1, "field 'x' must be true or false, got 1"),
    (tuple[float, float], [1.0], "field 'x' must be a list of 2 values, got [1.0]"),
    (dict[str, int], [1], "field 'x' must be a JSON object, got [1]"),
    (Normalisation, {"mean": 1.0, "std": 1.0, "median": 1.0}, "field 'x.median' is not a known field"),
])
def test_parse_names_the_field(hint, value, message) -> None:
    with pytest.raises(FieldError) as err:
        parse(hint, value, "x")
    assert str(err.value) == message


def test_weights_are_a_state_dict_loaded_weights_only(tmp_path: Path) -> None:
    card = make_card()
    torch.manual_seed(0)
    net = build_network(card.stages[0].network.architecture, card.stages[0].network.arguments)
    torch.save(net.state_dict(), tmp_path / WEIGHTS_NAME)
    write_card(card, tmp_path)
    loaded_card, loaded = load_model(tmp_path)
    assert loaded_card == card and not loaded.training
    for name, tensor in net.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name])
    state = torch.load(tmp_path / WEIGHTS_NAME, weights_only=True)
    assert set(state) == set(net.state_dict())


def test_weights_of_another_network_are_refused(tmp_path: Path) -> None:
    card = make_card()
    torch.save(build_network("fcn", {"in_channels": 5, "filters": 6}).state_dict(), tmp_path / WEIGHTS_NAME)
    write_card(card, tmp_path)
    with pytest.raises(ValueError, match="does not match the network"):
        load_model(tmp_path)


def test_unknown_architecture_is_refused_when_loading(tmp_path: Path) -> None:
    """Cards are read without torch; the architecture is checked when the network is built."""
    card = make_card()
    stage = Stage(**{**card.stages[0].__dict__, "network": NetworkSpec("resnet", card.stages[0].network.arguments)})
    write_card(ModelCard(**{**card.__dict__, "stages": (stage,)}), tmp_path)
    torch.save({}, tmp_path / WEIGHTS_NAME)
    with pytest.raises(ValueError, match=r"model_card.json: field 'stages\[0\].network' unknown architecture "
                                         "'resnet'; known: "):
        load_model(tmp_path)


@pytest.mark.parametrize(("target", "name"), [
    ("FLAIR", "sub-01/ses-1/anat/sub-01_ses-1_space-T1w_desc-synth_FLAIR.nii.gz"),
    ("DVR", "sub-01/ses-1/pet/sub-01_ses-1_trc-PIB_space-T1w_desc-synth_meas-DVR_mimap.nii.gz"),
])
def test_targets_name_their_outputs_as_the_design_contract(target: str, name: str) -> None:
    """DESIGN.md "Participant outputs": the synthetic FLAIR and the predicted DVR map."""
    spec = TARGETS[target]
    assert str(derivative_path({"sub": "01", "ses": "1", **spec.entities}, spec.datatype, spec.suffix,
                               ".nii.gz")) == name
