"""Inference: sliding windows equal a direct forward pass, synthesis, model choice, device fallback, P3S maps."""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
import torch

from msynth.models import inference
from msynth.models.card import (
    WEIGHTS_NAME, ModelCard, NetworkSpec, Normalisation, OptimizerSpec, Stage, TrainingRecord, channels_of,
    hash_subject, write_card,
)
from msynth.models.inference import StageChain, predict_volume, receptive_halo, select_device, synthesize
from msynth.models.selection import choose_model, shipped_models
from msynth.models.networks import FCN3D, UNet3D, build_network
from msynth.models.saliency import p3s_maps, write_p3s_maps

torch.set_num_threads(1)


def _fcn_stage(name: str, in_channels: int, weights: str = WEIGHTS_NAME) -> Stage:
    return Stage(name=name, loss="mse", optimizer=OptimizerSpec("sgd", 5e-4), weights=weights,
                 network=NetworkSpec("fcn", {"in_channels": in_channels, "out_channels": 1, "filters": 4,
                                             "hidden_layers": 2}))


def make_card(inputs: tuple[str, ...], name: str, scope: str = "image", stages: int = 1,
              data_source: str = "test") -> ModelCard:
    """A valid FLAIR card of ``stages`` 4-feature FCNs over ``inputs`` (later ones also take the prediction)."""
    stats = {c: Normalisation(100.0 + 50 * i, 10.0 + i) for i, c in enumerate(channels_of((*inputs, "FLAIR")))}
    n_inputs = len(channels_of(inputs))
    chain = [_fcn_stage("synthesis", n_inputs)]
    chain += [_fcn_stage(f"refiner{k}", n_inputs + 1, f"refiner{k}.pt") for k in range(1, stages)]
    return ModelCard(
        name=name, target="FLAIR", inputs=inputs, voxel_size_mm=None, normalisation=stats,
        intensity_normalisation=scope, stages=tuple(chain),
        training=TrainingRecord(
            subjects=(hash_subject("01", "salt"),), salt_fingerprint="0" * 64, n_sessions=1, data_source=data_source,
            data_license="CC0", data_citation="", command="test", seed=0, epochs=1, patch_size=16,
            early_stopping={"strip_length": 5, "strips": 3}),
    )


def _volume(shape=(23, 19, 14), channels=3, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(channels, *shape)).astype(np.float32)


@pytest.mark.parametrize(("window", "overlap", "hidden_layers"), [(8, 0.5, 2), (10, 0.25, 2), (12, 0.5, 3),
                                                                   (64, 0.5, 2)])
def test_sliding_windows_equal_the_direct_forward_pass(window, overlap, hidden_layers):
    torch.manual_seed(0)
    net = FCN3D(3, filters=6, hidden_layers=hidden_layers).eval()
    x = _volume()
    with torch.no_grad():
        direct = net(torch.from_numpy(x)[None])[0].numpy()
    windowed = predict_volume(net, x, window=window, overlap=overlap)
    assert windowed.shape == direct.shape == (1, 23, 19, 14)
    np.testing.assert_allclose(windowed, direct, atol=1e-5, rtol=0)


def test_without_halo_window_seams_differ():
    torch.manual_seed(0)
    net = FCN3D(3, filters=6).eval()
    x = _volume()
    with torch.no_grad():
        direct = net(torch.from_numpy(x)[None])[0].numpy()
    assert np.abs(predict_volume(net, x, window=8, halo=0) - direct).max() > 1e-3


def test_unet_windows_keep_any_shape():
    torch.manual_seed(0)
    net = UNet3D(3, features=4, levels=3).eval()
    out = predict_volume(net, _volume((21, 18, 13)), window=16)
    assert out.shape == (1, 21, 18, 13) and np.isfinite(out).all()


def test_a_sketchers_prediction_is_reproducible_and_leaves_the_callers_random_state():
    torch.manual_seed(0)
    sketcher = UNet3D(2, 1, features=4, levels=2, noise_channels=1)  # draws its input z at every forward pass
    x = np.random.default_rng(0).normal(size=(2, 12, 12, 12)).astype(np.float32)
    state = torch.random.get_rng_state()
    first, second = (predict_volume(sketcher, x, window=8) for _ in range(2))
    assert np.array_equal(first, second)
    assert torch.equal(torch.random.get_rng_state(), state)
    other = predict_volume(sketcher, x, window=8, seed=1)
    assert not np.allclose(other, first)  # the seed does reach z
    torch.manual_seed(5)
    unseeded = predict_volume(sketcher, x, window=8, seed=None)  # the caller's generator
    assert not torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(5)
    assert np.array_equal(predict_volume(sketcher, x, window=8, seed=None), unseeded)


def test_cuda_out_of_memory_falls_back_to_cpu(monkeypatch):
    real = inference._predict_windows

    def fake(model, x, *, sw_device, **kwargs):
        if sw_device.type == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, x, sw_device=sw_device, **kwargs)

    monkeypatch.setattr(inference, "_predict_windows", fake)
    torch.manual_seed(0)
    net = FCN3D(3, filters=4).eval()
    x = _volume()
    with pytest.warns(RuntimeWarning, match="predicting on the CPU instead"):
        out = predict_volume(net, x, window=12, device="cuda")
    np.testing.assert_allclose(out, predict_volume(net, x, window=12), atol=1e-6)


def test_select_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto") == torch.device("cpu")
    with pytest.warns(RuntimeWarning, match="CUDA is not available"):
        assert select_device("cuda") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto") == torch.device("cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert select_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu' or 'cuda"):
        select_device("tpu")


def _model_dir(root: Path, inputs: tuple[str, ...], name: str, scope: str = "image", stages: int = 1,
               data_source: str = "test") -> Path:
    card = make_card(inputs, name, scope, stages, data_source)
    torch.manual_seed(1)
    folder = root / name
    write_card(card, folder)
    for stage in card.stages:
        net = build_network(stage.network.architecture, stage.network.arguments)
        torch.save(net.state_dict(), folder / stage.weights)
    return folder


def test_choose_model_prefers_most_inputs_then_real_data_then_name(tmp_path):
    one = _model_dir(tmp_path, ("T1w",), "t1-only")
    two_b = _model_dir(tmp_path, ("T1w", "T2w"), "b-t1t2")
    two_a = _model_dir(tmp_path, ("T1w", "T2w"), "a-t1t2")
    five = _model_dir(tmp_path, ("T1w", "T2w", "PDw", "T1SE", "DIR"), "paper")
    available = [one, two_b, two_a, five]
    assert choose_model(available, {"T1w", "T2w", "PDw", "T1SE", "DIR", "MTR"}) == five
    assert choose_model(available, ["T1w", "T2w", "PDw"]) == two_a
    assert choose_model(available, ["T1w"]) == one
    assert choose_model(available, ["T2w", "PDw"]) is None
    assert choose_model([], ["T1w"]) is None
    # at equal inputs a model trained on real scans goes before one trained on the phantom, whatever the names
    phantom = _model_dir(tmp_path, ("T1w", "T2w"), "0-phantom-t1t2", data_source="msynth-phantom synthetic cohort")
    assert choose_model([phantom, two_b], ["T1w", "T2w"]) == two_b
    assert choose_model([phantom, one], ["T1w", "T2w"]) == phantom  # more inputs first
    assert all((p / "model_card.json").is_file() for p in shipped_models())


def _write_images(root: Path, keys: tuple[str, ...], shape=(18, 16, 12)) -> tuple[dict[str, Path], Path]:
    rng = np.random.default_rng(3)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    mask = np.zeros(shape, np.uint8)
    mask[3:-3, 3:-3, 2:-2] = 1
    root.mkdir(parents=True, exist_ok=True)
    nb.Nifti1Image(mask, affine).to_filename(root / "mask.nii.gz")
    images = {}
    for i, key in enumerate(keys):
        data = (300 * (i + 1) + 50 * rng.normal(size=shape)).astype(np.float32)
        images[key] = root / f"{key}.nii.gz"
        nb.Nifti1Image(data, affine).to_filename(images[key])
    return images, root / "mask.nii.gz"


@pytest.mark.parametrize("scope", ["cohort", "image"])
def test_synthesize_matches_a_direct_computation(tmp_path, scope):
    keys = ("T1w", "T2w", "PDw", "T1SE", "DIR")
    model_dir = _model_dir(tmp_path, keys, "paper", scope)
    images, mask_file = _write_images(tmp_path / "in", keys)
    out = synthesize(model_dir, {**images, "MTR": Path("unused")}, mask_file, newpath=tmp_path / "out",
                     device="cpu", window=8)
    card, net = inference.load_model(model_dir)
    mask = nb.load(mask_file).get_fdata() > 0
    raw = np.stack([nb.load(images[k]).get_fdata(dtype=np.float32) for k in keys])
    if scope == "image":
        mean = np.array([raw[i][mask].mean() for i in range(len(keys))])
        std = np.array([raw[i][mask].std() for i in range(len(keys))])
    else:
        mean = np.array([card.normalisation[k].mean for k in keys])
        std = np.array([card.normalisation[k].std for k in keys])
    x = ((raw - mean[:, None, None, None]) / std[:, None, None, None] * mask).astype(np.float32)
    with torch.no_grad():
        z = net(torch.from_numpy(x)[None])[0, 0].numpy()
    flair = card.normalisation["FLAIR"]
    expected = np.clip(z * flair.std + flair.mean, 0, None) * mask
    result = nb.load(out)
    assert result.get_data_dtype() == np.float32 and result.shape == mask.shape
    np.testing.assert_allclose(result.get_fdata(), expected, atol=1e-3, rtol=1e-5)
    assert not result.get_fdata()[~mask].any()


def test_synthesize_names_missing_inputs(tmp_path):
    model_dir = _model_dir(tmp_path, ("T1w", "T2w"), "t1t2")
    images, mask_file = _write_images(tmp_path / "in", ("T1w",))
    with pytest.raises(ValueError, match="needs T1w T2w; missing T2w"):
        synthesize(model_dir, images, mask_file, newpath=tmp_path / "out", device="cpu")


def test_p3s_maps_equal_whole_volume_autograd():
    """Paper 001 eq. 3: |d ||target - prediction||² / d input|, computed window by window."""
    torch.manual_seed(0)
    net = FCN3D(3, filters=6).eval()
    x = _volume((20, 17, 13))
    target = np.random.default_rng(5).normal(size=(20, 17, 13)).astype(np.float32)
    mask = np.random.default_rng(6).random((20, 17, 13)) > 0.3
    maps = p3s_maps(net, x, target, mask=mask, window=8)
    xt = torch.from_numpy(x)[None].requires_grad_(True)
    loss = (torch.square(torch.from_numpy(target) - net(xt)[0, 0]) * torch.from_numpy(mask)).sum()
    (grad,) = torch.autograd.grad(loss, xt)
    assert maps.shape == (3, 20, 17, 13) and maps.min() >= 0
    np.testing.assert_allclose(maps, grad[0].abs().numpy(), atol=1e-5, rtol=1e-5)
    sensitivity = p3s_maps(net, x, None, window=8)
    (grad,) = torch.autograd.grad(net(xt).sum(), xt)
    np.testing.assert_allclose(sensitivity, grad[0].abs().numpy(), atol=1e-5, rtol=1e-5)


def test_write_p3s_maps_one_per_input(tmp_path):
    keys = ("T1w", "T2w")
    model_dir = _model_dir(tmp_path, keys, "t1t2")
    images, mask_file = _write_images(tmp_path / "in", (*keys, "FLAIR"))
    written = write_p3s_maps(model_dir, images, mask_file, newpath=tmp_path / "p3s", target=images["FLAIR"],
                             device="cpu", window=8)
    assert list(written) == list(keys) == list(channels_of(keys))
    mask = nb.load(mask_file).get_fdata() > 0
    for path in written.values():
        values = nb.load(path).get_fdata()
        assert values.shape == mask.shape and values[mask].max() > 0 and not values[~mask].any()


def test_multi_channel_inputs_are_read_per_channel(tmp_path):
    """DWI contributes FA, RD and AD (thesis 003 inputs); single-channel keys may be given by key."""
    card = make_card(("T1w", "DWI"), "t1-dti")
    assert card.stages[0].network.arguments["in_channels"] == 4
    images, mask_file = _write_images(tmp_path / "in", ("T1w", "FA", "RD", "AD"))
    raw = inference.read_inputs(card, images, nb.load(mask_file))
    assert raw.shape == (4, 18, 16, 12)
    np.testing.assert_array_equal(raw[2], nb.load(images["RD"]).get_fdata(dtype=np.float32))
    with pytest.raises(ValueError, match="needs T1w FA RD AD; missing RD"):
        inference.read_inputs(card, {k: v for k, v in images.items() if k != "RD"}, nb.load(mask_file))


def test_stages_run_in_order_on_the_inputs_and_the_previous_prediction(tmp_path):
    """A two-stage model (a Sketcher then a Refiner, thesis 003 §3.2.1) synthesises refiner(x, sketcher(x)), the
    sketch set to 0 outside the brain as in training."""
    keys = ("T1w", "T2w")
    model_dir = _model_dir(tmp_path, keys, "two-stage", "cohort", stages=2)
    card, chain = inference.load_model(model_dir)
    assert isinstance(chain, StageChain) and len(chain.stages) == 2 and not chain.training
    sketcher, refiner = chain.stages
    assert receptive_halo(chain) == 6 and chain.multiple == 1
    images, mask_file = _write_images(tmp_path / "in", keys)
    out = synthesize(model_dir, images, mask_file, newpath=tmp_path / "out", device="cpu", window=8)
    mask = nb.load(mask_file).get_fdata() > 0
    raw = np.stack([nb.load(images[k]).get_fdata(dtype=np.float32) for k in keys])
    mean = np.array([card.normalisation[k].mean for k in keys])[:, None, None, None]
    std = np.array([card.normalisation[k].std for k in keys])[:, None, None, None]
    x = torch.from_numpy(((raw - mean) / std * mask).astype(np.float32))[None]
    with torch.no_grad():
        inside = torch.from_numpy(mask.astype(np.float32))[None, None]
        z = refiner(torch.cat([x, sketcher(x) * inside], dim=1))[0, 0].numpy()
    flair = card.normalisation["FLAIR"]
    np.testing.assert_allclose(nb.load(out).get_fdata(), np.clip(z * flair.std + flair.mean, 0, None) * mask,
                               atol=1e-3, rtol=1e-5)
    with pytest.raises(ValueError, match="stages must hold at least two networks, got 1"):
        StageChain([sketcher])
