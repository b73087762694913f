"""CF-SAGAN attention maps (thesis 003 §4.2.2): received attention on the input grid, over the inference windows.

The generators are tiny (2-4 feature maps, 32³ inputs) with weights set so that β is known: key weights 0 give
uniform attention (the map is 1 everywhere), a bright voxel seen through an identity stem with a positive query
concentrates the attention on the pooled position that holds it (the map peaks on its block).
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
import torch

from msynth.models.card import (ModelCard, NetworkSpec, Normalisation, OptimizerSpec, Stage, TrainingRecord,
                                channels_of, hash_subject, write_card)
from msynth.models.inference import StageChain
from msynth.models.networks import FlexibleSelfAttention3D, build_network
from msynth.models.saliency import attention_layers, attention_maps, received_attention, write_attention_maps

torch.set_num_threads(1)

SHAPE = (32, 32, 32)


def _generator(in_channels: int = 2, **arguments) -> torch.nn.Module:
    """A tiny CF-SAGAN generator without normalisation or dropout, seeded."""
    torch.manual_seed(0)
    options = {"features": 2, "blocks": 2, "attention_level": 1, "norm": None, "dropout": 0.0, **arguments}
    return build_network("cf-sagan-generator", {"in_channels": in_channels, **options}).eval()


def _uniform(network: torch.nn.Module) -> torch.nn.Module:
    """Key weights 0 in every attention layer: every logit is 0, β = 1/L; γ = 1 so the layers change the features."""
    with torch.no_grad():
        for layer in network.modules():
            if isinstance(layer, FlexibleSelfAttention3D):
                layer.key.weight.zero_()
                layer.key.bias.zero_()
                layer.gamma.fill_(1.0)
    return network


def _inputs(channels: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(channels, *SHAPE)).astype(np.float32)


@pytest.mark.parametrize(("attention_level", "pool_size", "window", "overlap"), [
    (0, 2, 32, 0.5),  # full-resolution features, 2³ blocks, one window
    (1, 2, 32, 0.5),  # half-resolution features: 4³ blocks
    (1, 4, 32, 0.5),  # 8³ blocks
    (1, 2, 16, 0.5),  # 27 overlapping windows: their average is still 1
    (1, 2, 24, 0.25),  # windows of 16 (the size multiple rounds 24 down), other overlap
])
def test_uniform_attention_gives_one_everywhere(attention_level, pool_size, window, overlap):
    network = _uniform(_generator(attention_level=attention_level, pool_size=pool_size))
    maps = attention_maps(network, _inputs(), stage_names=["synthesis"], window=window, overlap=overlap)
    assert list(maps) == ["SynthesisEncoder", "SynthesisDecoder"]
    for values in maps.values():
        assert values.shape == SHAPE and values.dtype == np.float32
        np.testing.assert_allclose(values, 1.0, atol=1e-6)


@pytest.mark.parametrize(("window", "peak"), [(32, 4096), (16, None)])
def test_concentrated_attention_peaks_on_the_attended_block(window, peak):
    """One bright voxel; the stem copies the input to every feature map and the query is a positive constant, so the
    logit f(x_i)ᵀg(x_j) is large only at the pooled position holding the voxel: the encoder's map peaks on its 2³
    block (``peak``: L = 16³ when one window covers the volume and all the attention goes there)."""
    network = _generator(in_channels=1, features=4, attention_level=0, pool_size=2)
    with torch.no_grad():
        stem = network.stem[0]
        stem.weight.zero_()
        stem.bias.zero_()
        stem.weight[:, 0, 1, 1, 1] = 1.0  # every feature map = the input (LeakyReLU keeps it, being ≥ 0)
        attention = network.encoder_attention
        attention.key.weight.fill_(1.0)  # f(x_i) = Σ_c x_ci: 4 at the bright position, 0 elsewhere
        attention.query.weight.zero_()
        attention.query.bias.fill_(10.0)  # g(x_j) = 10 for every query j
    bright = (21, 6, 13)
    x = np.zeros((1, *SHAPE), np.float32)
    x[(0, *bright)] = 1.0
    values = attention_maps(network, x, stage_names=["synthesis"], window=window)["SynthesisEncoder"]
    argmax = np.unravel_index(np.argmax(values), SHAPE)
    assert tuple(int(a) // 2 for a in argmax) == tuple(b // 2 for b in bright)
    if peak is not None:  # one window: the whole block gets the position's value (blended windows weigh voxels)
        block = tuple(slice(b // 2 * 2, b // 2 * 2 + 2) for b in bright)
        assert np.all(values[block] == values.max()) and values.max() == pytest.approx(peak, rel=1e-4)
        assert values.mean() == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize(("window", "overlap"), [(32, 0.5), (48, 0.25), (96, 0.0)])
def test_one_window_equals_a_whole_volume_pass(window, overlap):
    """A window that covers the volume (larger ones are clipped to it) gives the received attention of one forward
    pass over the whole volume, whose mean is 1 (the rows of β sum to 1)."""
    network = _generator()
    x = _inputs(seed=1)
    maps = attention_maps(network, x, stage_names=["synthesis"], window=window, overlap=overlap)
    with torch.no_grad():
        network(torch.from_numpy(x)[None])
    for label, layer in attention_layers(network, ["synthesis"]).items():
        direct = received_attention(layer, SHAPE)[0, 0].numpy()
        np.testing.assert_allclose(maps[label], direct, rtol=1e-5, atol=1e-6)
        assert maps[label].mean() == pytest.approx(1.0, rel=1e-5) and maps[label].std() > 0.01


def test_labels_name_stage_and_layer():
    chain = StageChain([_generator(), _generator(3)])
    assert list(attention_layers(chain, ["sketcher", "refiner-2"])) == [
        "SketcherEncoder", "SketcherDecoder", "Refiner2Encoder", "Refiner2Decoder"]
    assert attention_layers(build_network("unet", {"in_channels": 2}), ["synthesis"]) == {}
    assert attention_maps(build_network("fcn", {"in_channels": 2}), _inputs(), stage_names=["synthesis"]) == {}
    with pytest.raises(ValueError, match=r"stage_names must name each of the model's 2 stage\(s\), got \['a'\]"):
        attention_layers(chain, ["a"])


def test_received_attention_needs_a_forward_pass():
    with pytest.raises(ValueError, match="run the network forward first"):
        received_attention(FlexibleSelfAttention3D(8), SHAPE)


# ----------------------------------------------------------------------------------------------------------------
# from a model folder: masked files, one per layer of each stage
# ----------------------------------------------------------------------------------------------------------------
def _model(folder: Path, architecture: str, arguments: dict, uniform_sketcher: bool = False) -> Path:
    """A Sketcher-Refiner DVR card over MTR + DWI with freshly initialised stages."""
    stats = {"MTR": Normalisation(40.0, 8.0), "FA": Normalisation(0.3, 0.15), "RD": Normalisation(6e-4, 2e-4),
             "AD": Normalisation(1.2e-3, 3e-4), "DVR": Normalisation(1.2, 0.3)}
    n_inputs = len(channels_of(("MTR", "DWI")))
    stages = tuple(Stage(name=name, network=NetworkSpec(architecture, {**arguments, "in_channels": channels}),
                         loss="l1", optimizer=OptimizerSpec("adam", 1e-4), weights=f"{name}.pt")
                   for name, channels in (("sketcher", n_inputs), ("refiner", n_inputs + 1)))
    card = ModelCard(
        name=folder.name, target="DVR", inputs=("MTR", "DWI"), voxel_size_mm=None, normalisation=stats,
        intensity_normalisation="image", stages=stages,
        training=TrainingRecord(
            subjects=(hash_subject("01", "salt"),), salt_fingerprint="0" * 64, n_sessions=1, data_source="test",
            data_license="CC0", data_citation="", command="test", seed=0, epochs=1, patch_size=16,
            early_stopping={"strip_length": 5, "strips": 3}),
    )
    write_card(card, folder)
    torch.manual_seed(0)
    for index, stage in enumerate(card.stages):
        network = build_network(architecture, stage.network.arguments)
        torch.save((_uniform(network) if uniform_sketcher and index == 0 else network).state_dict(),
                   folder / stage.weights)
    return folder


def _session(folder: Path) -> tuple[dict[str, Path], Path, np.ndarray]:
    """Random MTR, FA, RD and AD images and a ball-shaped brain mask on a 32³ grid."""
    folder.mkdir(parents=True)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    rng = np.random.default_rng(3)
    images = {}
    for key, (mean, sd) in {"MTR": (40, 8), "FA": (0.3, 0.1), "RD": (6e-4, 1e-4), "AD": (1e-3, 2e-4)}.items():
        images[key] = folder / f"{key}.nii.gz"
        nb.Nifti1Image(rng.normal(mean, sd, SHAPE).astype(np.float32), affine).to_filename(images[key])
    grid = np.indices(SHAPE) - 15.5
    brain = (grid**2).sum(axis=0) < 12**2
    nb.Nifti1Image(brain.astype(np.uint8), affine).to_filename(folder / "brain.nii.gz")
    return images, folder / "brain.nii.gz", brain


def test_write_attention_maps_one_per_layer_of_each_stage(tmp_path):
    model = _model(tmp_path / "cfsagan", "cf-sagan-generator",
                   {"features": 2, "blocks": 2, "attention_level": 1, "norm": None, "dropout": 0.0},
                   uniform_sketcher=True)
    images, mask, brain = _session(tmp_path / "session")
    written = write_attention_maps(model, images, mask, newpath=tmp_path / "maps", device="cpu")
    assert list(written) == ["SketcherEncoder", "SketcherDecoder", "RefinerEncoder", "RefinerDecoder"]
    for label, path in written.items():
        assert path == tmp_path / "maps" / f"attention_{label}.nii.gz"
        img = nb.load(path)
        values = np.asarray(img.dataobj)
        assert img.shape == SHAPE and np.allclose(img.affine, nb.load(mask).affine) and values.dtype == np.float32
        assert not values[~brain].any() and (values[brain] > 0).all()
        if label.startswith("Sketcher"):  # uniform attention
            np.testing.assert_allclose(values[brain], 1.0, atol=1e-6)


def test_no_attention_layers_no_maps_no_log(tmp_path, caplog):
    model = _model(tmp_path / "cnn2", "cnn2", {"features": 2, "kernel_size": 3})
    images, mask, _ = _session(tmp_path / "session")
    with caplog.at_level(logging.DEBUG, logger="msynth"):
        assert write_attention_maps(model, images, mask, newpath=tmp_path / "maps", device="cpu") == {}
    assert not (tmp_path / "maps").exists() and not [r for r in caplog.records if "attention" in r.getMessage()]
