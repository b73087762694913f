"""Model cards: round trip, validation messages that name the file and the field, weights-only loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from msynth.models.card import (
    CARD_NAME, WEIGHTS_NAME, FoldMetrics, ModelCard, Normalisation, TrainingRecord, channels_of, hash_subject,
    read_card, write_card,
)
from msynth.models.inference import load_model
from msynth.models.networks import build_network

torch.set_num_threads(1)
INPUTS = ("T1w", "T2w", "PDw", "T1SE", "DIR")
SALT = "test-salt"


def make_card(inputs: tuple[str, ...] = INPUTS, name: str = "flair-test", features: int = 4) -> ModelCard:
    """A valid card for a small FCN over ``inputs``."""
    stats = {channel: Normalisation(100.0 + i, 10.0 + i) for i, channel in enumerate(channels_of((*inputs, "FLAIR")))}
    return ModelCard(
        name=name, task="flair-synthesis", inputs=inputs, output="FLAIR", voxel_size_mm=1.0, normalisation=stats,
        intensity_normalisation="image", architecture="fcn",
        architecture_arguments={"in_channels": len(inputs), "out_channels": 1, "features": features, "depth": 3},
        training=TrainingRecord(
            subjects=tuple(sorted(hash_subject(s, SALT) for s in ("01", "02", "03"))), salt_fingerprint="ab" * 32,
            n_sessions=5, data_source="msynth phantom", data_license="CC0", data_citation="Wei et al. 2019",
            command="msynth-train flair --derivatives out --out model", seed=42,
            optimizer={"name": "sgd", "lr": 5e-4, "momentum": 0.0, "batch_size": 1}, epochs=12, patch_size=64,
            early_stopping={"strip_length": 5, "strips": 3}, augmentation=("random_flips",),
            cv=(FoldMetrics(0, 2, 1, 1234.5, 25.25, 0.8125, 10), FoldMetrics(1, 2, 1, 1500.0, 24.0, 0.75, 15)),
        ),
    )


def test_card_round_trip(tmp_path: Path) -> None:
    card = make_card()
    path = write_card(card, tmp_path / "model")
    assert path == tmp_path / "model" / CARD_NAME
    again = read_card(tmp_path / "model")
    assert again == card
    assert again.training.cv[1].ssim == 0.75
    assert again.training.augmentation == ("random_flips",)
    assert set(again.versions) >= {"msynth", "torch", "python"}


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
    ("task", KeyError, "field 'task' is missing"),
    ("task", "pet", "field 'task' must be one of"),
    ("inputs", ["T1w", "T3w"], "field 'inputs' has unknown modality key 'T3w'"),
    ("inputs", ["T2w", "T1w", "PDw", "T1SE", "DIR"], "field 'inputs' must follow the canonical order"),
    ("voxel_size_mm", 0, "field 'voxel_size_mm' must be a positive number or null"),
    ("architecture", "resnet", "field 'architecture' must be one of"),
    ("architecture_arguments.in_channels", 3, "field 'architecture_arguments.in_channels' must equal"),
    ("training.subjects", ["01", "02"], "field 'training.subjects' must be a non-empty list of SHA-256"),
    ("training.optimizer", {"name": "rmsprop", "lr": 1e-3}, "field 'training.optimizer.name'"),
    ("training.cv.0.mse", "low", "field 'training.cv[0].mse' must be a number"),
    ("training.augmentation", ["rotations"], "field 'training.augmentation' must be a list of random_flips"),
    ("training.early_stopping.strips", 0, "field 'training.early_stopping.strips' must be an integer >= 1"),
    ("created", "yesterday", "field 'created' must be an ISO 8601 date"),
    ("intensity_normalisation", "global", "field 'intensity_normalisation' must be one of cohort, image"),
    ("colour", "blue", "field 'colour' is not a model-card field"),
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


def test_not_json_and_missing_card(tmp_path: Path) -> None:
    (tmp_path / CARD_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_card(tmp_path)
    with pytest.raises(FileNotFoundError, match="no model card"):
        read_card(tmp_path / "elsewhere")


def test_constructor_validates() -> None:
    card = make_card()
    with pytest.raises(ValueError, match="field 'output' must be 'FLAIR'"):
        ModelCard(**{**card.__dict__, "output": "PET"})


def test_weights_are_a_state_dict_loaded_weights_only(tmp_path: Path) -> None:
    card = make_card()
    torch.manual_seed(0)
    net = build_network(card.architecture, card.architecture_arguments)
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
    torch.save(build_network("fcn", {"in_channels": 5, "features": 6}).state_dict(), tmp_path / WEIGHTS_NAME)
    write_card(card, tmp_path)
    with pytest.raises(ValueError, match="does not match the network"):
        load_model(tmp_path)
