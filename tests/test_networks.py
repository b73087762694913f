"""Tests of msynth.models.networks: shapes, argument checks, initialisation, and a tiny overfit."""

from __future__ import annotations

import math

import pytest
import torch

from msynth.models.networks import ARCHITECTURES, FCN3D, UNet3D, build_network

torch.set_num_threads(1)

THESIS_GENERATOR = dict(features=4, levels=4, activation="leaky_relu", negative_slope=0.2, norm="batch",
                        dropout=0.5, downsample="conv", output_activation=True)


def _n_parameters(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(("cls", "args", "kwargs", "in_shape", "out_shape"), [
    (FCN3D, (5,), {}, (1, 5, 6, 7, 5), (1, 1, 6, 7, 5)),
    (FCN3D, (2, 3), dict(features=8, depth=2), (2, 2, 4, 4, 4), (2, 3, 4, 4, 4)),
    (FCN3D, (1,), dict(features=4, depth=6, kernel_size=5), (1, 1, 5, 3, 9), (1, 1, 5, 3, 9)),
    (FCN3D, (3,), dict(features=4, kernel_size=1), (1, 3, 2, 2, 2), (1, 1, 2, 2, 2)),
    (UNet3D, (5,), {}, (1, 5, 8, 12, 4), (1, 1, 8, 12, 4)),
    (UNet3D, (2, 2), dict(features=4, levels=2), (3, 2, 6, 2, 4), (3, 2, 6, 2, 4)),
    (UNet3D, (1,), dict(features=2, levels=5, norm="instance"), (1, 1, 16, 16, 32), (1, 1, 16, 16, 32)),
    (UNet3D, (4,), THESIS_GENERATOR, (2, 4, 8, 16, 8), (2, 1, 8, 16, 8)),
])
def test_output_shape(cls, args, kwargs, in_shape, out_shape):
    net = cls(*args, **kwargs).eval()
    with torch.no_grad():
        assert net(torch.randn(in_shape)).shape == out_shape


@pytest.mark.parametrize(("cls", "kwargs", "message"), [
    (FCN3D, dict(in_channels=0), "in_channels must be >= 1"),
    (FCN3D, dict(in_channels=2.0), "in_channels must be an integer"),
    (FCN3D, dict(in_channels=2, out_channels=0), "out_channels must be >= 1"),
    (FCN3D, dict(in_channels=2, features=0), "features must be >= 1"),
    (FCN3D, dict(in_channels=2, depth=1), "depth must be between 2 and 6, got 1"),
    (FCN3D, dict(in_channels=2, depth=7), "depth must be between 2 and 6, got 7"),
    (FCN3D, dict(in_channels=2, kernel_size=4), "kernel_size must be odd"),
    (FCN3D, dict(in_channels=2, kernel_size=0), "kernel_size must be >= 1"),
    (UNet3D, dict(in_channels=0), "in_channels must be >= 1"),
    (UNet3D, dict(in_channels=1, features=-2), "features must be >= 1"),
    (UNet3D, dict(in_channels=1, levels=1), "levels must be between 2 and 6"),
    (UNet3D, dict(in_channels=1, levels=True), "levels must be an integer"),
    (UNet3D, dict(in_channels=1, activation="gelu"), "activation must be one of 'relu', 'leaky_relu'"),
    (UNet3D, dict(in_channels=1, norm="group"), "norm must be one of None, 'batch', 'instance'"),
    (UNet3D, dict(in_channels=1, downsample="avgpool"), "downsample must be one of 'maxpool', 'conv'"),
    (UNet3D, dict(in_channels=1, dropout=1.0), r"dropout must be a probability in \[0, 1\)"),
    (UNet3D, dict(in_channels=1, negative_slope=-0.1), "negative_slope must be a non-negative number"),
    (UNet3D, dict(in_channels=1, output_activation="yes"), "output_activation must be True or False"),
])
def test_bad_arguments(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


@pytest.mark.parametrize(("net", "shape", "message"), [
    (UNet3D(1, features=2), (1, 1, 8, 6, 5), r"divisible by 4, got \(8, 6, 5\)"),
    (UNet3D(1, features=2, levels=4), (1, 1, 8, 8, 4), r"divisible by 8, got \(8, 8, 4\)"),
    (UNet3D(2, features=2), (1, 1, 8, 8, 8), "built for 2 input channel"),
    (FCN3D(3, features=2), (1, 2, 4, 4, 4), "built for 3 input channel"),
    (FCN3D(1, features=2), (1, 4, 4, 4), "expects a 5-D tensor N C D H W"),
])
def test_bad_input(net, shape, message):
    with pytest.raises(ValueError, match=message):
        net(torch.zeros(shape))


def test_parameter_counts_of_paper_configurations():
    # paper 001 §2.3 configurations with five inputs; numbers quoted in the docstrings
    assert _n_parameters(FCN3D(5)) == 121_089
    assert _n_parameters(UNet3D(5)) == 340_977
    # features only change widths: F=32 and F=96 FCNs of §3.1.1
    assert _n_parameters(FCN3D(5, features=32)) == 5 * 27 * 32 + 32 + 32 * 27 * 32 + 32 + 32 * 27 + 1


def test_thesis_generator_layers():
    net = UNet3D(4, **THESIS_GENERATOR)
    kinds = {type(m) for m in net.modules()}
    assert {torch.nn.LeakyReLU, torch.nn.BatchNorm3d, torch.nn.Dropout} <= kinds
    assert torch.nn.MaxPool3d not in kinds
    assert isinstance(net.head[-1], torch.nn.LeakyReLU)
    slopes = {m.negative_slope for m in net.modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.2}
    assert {m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)} == {0.5}


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_deterministic_under_seed(architecture):
    torch.manual_seed(3)
    first = build_network(architecture, {"in_channels": 2, "features": 4})
    torch.manual_seed(3)
    second = build_network(architecture, {"in_channels": 2, "features": 4})
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name


def test_he_initialisation():
    torch.manual_seed(0)
    net = FCN3D(5, features=64)
    hidden = net.layers[2]  # 64 -> 64 conv followed by ReLU
    fan_in = 64 * 27
    assert hidden.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)
    assert torch.count_nonzero(hidden.bias) == 0
    output = net.layers[-1]  # linear output: gain 1
    assert output.weight.std().item() == pytest.approx(math.sqrt(1 / fan_in), rel=0.15)


def test_unet_keeps_signal_scale_at_initialisation():
    """He initialisation keeps the output variance of order one for unit-variance input (no explosion/vanishing)."""
    torch.manual_seed(0)
    net = UNet3D(2, features=8, levels=4).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 2, 16, 16, 16))
    assert 0.1 < out.std().item() < 10


@pytest.mark.parametrize(("architecture", "arguments"), [
    ("fcn", {"in_channels": 1}),
    ("fcn", {"in_channels": 5, "out_channels": 2, "features": 8, "depth": 4, "kernel_size": 5}),
    ("unet", {"in_channels": 3, "features": 4, "levels": 2, "activation": "leaky_relu"}),
    ("unet", {"in_channels": 4, **THESIS_GENERATOR}),
])
def test_build_network_round_trip(architecture, arguments):
    net = build_network(architecture, arguments)
    assert isinstance(net, ARCHITECTURES[architecture])
    assert net.arguments.items() >= arguments.items()
    torch.manual_seed(1)
    rebuilt = build_network(architecture, net.arguments)  # what a model card stores is enough to rebuild it
    assert rebuilt.arguments == net.arguments
    rebuilt.load_state_dict(net.state_dict())


@pytest.mark.parametrize(("architecture", "arguments", "message"), [
    ("resnet", {"in_channels": 1}, "unknown architecture 'resnet'; known: fcn, unet"),
    ("fcn", {"in_channels": 1, "levels": 3}, "bad arguments for architecture 'fcn'.*levels"),
    ("unet", {}, "bad arguments for architecture 'unet'.*in_channels"),
    ("fcn", {"in_channels": 1, "depth": 9}, "depth must be between 2 and 6"),
])
def test_build_network_errors(architecture, arguments, message):
    with pytest.raises(ValueError, match=message):
        build_network(architecture, arguments)


def test_fcn_learns_linear_combination_of_channels():
    """A small FCN fits target = 2 c0 − c1 + 0.5 c2 + 1 on a random volume: the loss drops more than 10-fold."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 10, 10, 10, generator=generator)
    target = 2 * x[:, :1] - x[:, 1:2] + 0.5 * x[:, 2:3] + 1
    torch.manual_seed(0)
    net = FCN3D(3, features=16, depth=3)
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        optimiser.zero_grad()
        loss = torch.nn.functional.mse_loss(net(x), target)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])
