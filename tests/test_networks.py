"""Tests of msynth.models.networks: shapes, argument checks, initialisation, attention, patches, a tiny overfit."""

from __future__ import annotations

import math

import pytest
import torch

from msynth.models.networks import (ARCHITECTURES, FCN3D, CFSAGANDiscriminator, CFSAGANGenerator,
                                    FlexibleSelfAttention3D, PatchDiscriminator3D, TwoLayerCNN3D, UNet3D,
                                    build_network)

torch.set_num_threads(1)

THESIS_GENERATOR = dict(features=4, levels=4, activation="leaky_relu", negative_slope=0.2, norm="batch",
                        dropout=0.5, downsample="conv", output_activation=True)
TINY_CF_SAGAN = dict(features=2, blocks=2, attention_level=1)


def _n_parameters(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(("cls", "args", "kwargs", "in_shape", "out_shape"), [
    (FCN3D, (5,), {}, (1, 5, 6, 7, 5), (1, 1, 6, 7, 5)),
    (FCN3D, (2, 3), dict(filters=8, hidden_layers=1), (2, 2, 4, 4, 4), (2, 3, 4, 4, 4)),
    (FCN3D, (1,), dict(filters=4, hidden_layers=6, kernel_size=5), (1, 1, 5, 3, 9), (1, 1, 5, 3, 9)),
    (FCN3D, (3,), dict(filters=4, kernel_size=1), (1, 3, 2, 2, 2), (1, 1, 2, 2, 2)),
    (UNet3D, (5,), {}, (1, 5, 8, 12, 4), (1, 1, 8, 12, 4)),
    (UNet3D, (2, 2), dict(features=4, levels=2), (3, 2, 6, 2, 4), (3, 2, 6, 2, 4)),
    (UNet3D, (1,), dict(features=2, levels=5, norm="instance"), (1, 1, 16, 16, 32), (1, 1, 16, 16, 32)),
    (UNet3D, (4,), THESIS_GENERATOR, (2, 4, 8, 16, 8), (2, 1, 8, 16, 8)),
    (UNet3D, (4,), {**THESIS_GENERATOR, "noise_channels": 1}, (2, 4, 8, 16, 8), (2, 1, 8, 16, 8)),  # Sketcher
    (UNet3D, (5,), {**THESIS_GENERATOR, "noise_channels": 0}, (1, 5, 16, 8, 8), (1, 1, 16, 8, 8)),  # Refiner
    (TwoLayerCNN3D, (4,), dict(features=4), (1, 4, 9, 8, 7), (1, 1, 9, 8, 7)),
    (TwoLayerCNN3D, (2, 2), dict(features=3, kernel_size=3), (2, 2, 3, 5, 4), (2, 2, 3, 5, 4)),
    (CFSAGANGenerator, (4,), dict(features=2), (1, 4, 16, 32, 16), (1, 1, 16, 32, 16)),
    (CFSAGANGenerator, (5, 2), TINY_CF_SAGAN, (2, 5, 8, 4, 12), (2, 2, 8, 4, 12)),
    (CFSAGANGenerator, (4,), dict(features=2, blocks=2, attention_level=0, pool_size=8), (1, 4, 8, 16, 8),
     (1, 1, 8, 16, 8)),
    (CFSAGANGenerator, (4,), dict(features=8, blocks=1, attention_level=0, pool_size=1, norm=None, dropout=0.0,
                                  output_activation=False, noise_channels=2), (1, 4, 2, 4, 6), (1, 1, 2, 4, 6)),
])
def test_output_shape(cls, args, kwargs, in_shape, out_shape):
    net = cls(*args, **kwargs).eval()
    with torch.no_grad():
        assert net(torch.randn(in_shape)).shape == out_shape


@pytest.mark.parametrize(("cls", "kwargs", "message"), [
    (FCN3D, dict(in_channels=0), "in_channels must be >= 1"),
    (FCN3D, dict(in_channels=2.0), "in_channels must be an integer"),
    (FCN3D, dict(in_channels=2, out_channels=0), "out_channels must be >= 1"),
    (FCN3D, dict(in_channels=2, filters=0), "filters must be >= 1"),
    (FCN3D, dict(in_channels=2, hidden_layers=0), "hidden_layers must be between 1 and 6, got 0"),
    (FCN3D, dict(in_channels=2, hidden_layers=7), "hidden_layers must be between 1 and 6, got 7"),
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
    (UNet3D, dict(in_channels=1, noise_channels=-1), "noise_channels must be >= 0"),
    (TwoLayerCNN3D, dict(in_channels=0), "in_channels must be >= 1"),
    (TwoLayerCNN3D, dict(in_channels=4, features=0), "features must be >= 1"),
    (TwoLayerCNN3D, dict(in_channels=4, kernel_size=6), "kernel_size must be odd"),
    (FlexibleSelfAttention3D, dict(channels=0), "channels must be >= 1"),
    (FlexibleSelfAttention3D, dict(channels=8, pool_size=0), "pool_size must be >= 1"),
    (FlexibleSelfAttention3D, dict(channels=8, reduction=0), "reduction must be >= 1"),
    (PatchDiscriminator3D, dict(in_channels=0), "in_channels must be >= 1"),
    (PatchDiscriminator3D, dict(in_channels=4, image_channels=0), "image_channels must be >= 1"),
    (PatchDiscriminator3D, dict(in_channels=4, patch_size=4), "patch_size must be >= 8"),
    (PatchDiscriminator3D, dict(in_channels=4, patch_size=12), r"patch_size must be divisible by 2\*\*blocks = 8"),
    (PatchDiscriminator3D, dict(in_channels=4, blocks=0), "blocks must be between 1 and 6"),
    (PatchDiscriminator3D, dict(in_channels=4, features=0), "features must be >= 1"),
    (PatchDiscriminator3D, dict(in_channels=4, negative_slope=-1), "negative_slope must be a non-negative number"),
    (PatchDiscriminator3D, dict(in_channels=4, norm="layer"), "norm must be one of None, 'batch', 'instance'"),
    (CFSAGANGenerator, dict(in_channels=0), "in_channels must be >= 1"),
    (CFSAGANGenerator, dict(in_channels=4, blocks=7), "blocks must be between 1 and 6"),
    (CFSAGANGenerator, dict(in_channels=4, attention_level=4), "attention_level must be between 0 and 3"),
    (CFSAGANGenerator, dict(in_channels=4, pool_size=0), "pool_size must be >= 1"),
    (CFSAGANGenerator, dict(in_channels=4, dropout=-0.1), r"dropout must be a probability in \[0, 1\)"),
    (CFSAGANGenerator, dict(in_channels=4, norm="group"), "norm must be one of"),
    (CFSAGANGenerator, dict(in_channels=4, output_activation=1), "output_activation must be True or False"),
    (CFSAGANGenerator, dict(in_channels=4, noise_channels=1.5), "noise_channels must be an integer"),
    (CFSAGANDiscriminator, dict(in_channels=4, attention_level=4), "attention_level must be between 0 and 3"),
    (CFSAGANDiscriminator, dict(in_channels=4, pool_size=3), "pool_size must divide the attention layer's size"),
    (CFSAGANDiscriminator, dict(in_channels=4, patch_size=20), r"patch_size must be divisible by 2\*\*blocks = 8"),
    (CFSAGANDiscriminator, dict(in_channels=4, dropout=1), r"dropout must be a probability in \[0, 1\)"),
])
def test_bad_arguments(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


@pytest.mark.parametrize(("net", "shape", "message"), [
    (UNet3D(1, features=2), (1, 1, 8, 6, 5), r"divisible by 4, got \(8, 6, 5\)"),
    (UNet3D(1, features=2, levels=4), (1, 1, 8, 8, 4), r"divisible by 8, got \(8, 8, 4\)"),
    (UNet3D(2, features=2), (1, 1, 8, 8, 8), "built for 2 input channel"),
    (FCN3D(3, filters=2), (1, 2, 4, 4, 4), "built for 3 input channel"),
    (FCN3D(1, filters=2), (1, 4, 4, 4), "expects a 5-D tensor N C D H W"),
    (TwoLayerCNN3D(4, features=2), (1, 3, 4, 4, 4), "built for 4 input channel"),
    (CFSAGANGenerator(4, features=2), (1, 4, 16, 8, 16), r"divisible by 16, got \(16, 8, 16\)"),
    (CFSAGANGenerator(4, features=2, blocks=2, attention_level=1, pool_size=3), (1, 4, 12, 12, 4),
     r"divisible by 12, got \(12, 12, 4\)"),
    (FlexibleSelfAttention3D(8, pool_size=2), (1, 8, 4, 3, 4), r"divisible by 2, got \(4, 3, 4\)"),
])
def test_bad_input(net, shape, message):
    with pytest.raises(ValueError, match=message):
        net(torch.zeros(shape))


def test_parameter_counts_of_paper_configurations():
    # paper 001 §2.3 configurations with five inputs; numbers quoted in the docstrings
    assert _n_parameters(UNet3D(5)) == 340_977


@pytest.mark.parametrize(("filters", "table_1", "count"), [
    (32, "60.6 K", 60_577),
    (64, "213.7 K", 231_745),  # the table swaps two digits of 231.7 K (FCN3D's Notes)
    (96, "513.5 K", 513_505),
])
def test_fcn_parameter_counts_of_paper_001_table_1(filters, table_1, count):
    net = FCN3D(5, filters=filters)  # five inputs, L = 3 hidden layers (paper 001's default)
    assert _n_parameters(net) == count
    if filters != 64:
        assert f"{round(count / 1000, 1)} K" == table_1
    # by hand: three hidden 3x3x3 layers of F filters, then a linear 3x3x3 output layer
    assert count == (5 * 27 * filters + filters) + 2 * (filters * 27 * filters + filters) + (filters * 27 + 1)


def test_fcn_cards_written_with_the_old_argument_names_still_load():
    old = build_network("fcn", {"in_channels": 5, "features": 32, "depth": 3, "out_channels": 1})
    assert (old.filters, old.hidden_layers) == (32, 2)  # 'depth' counted the output layer
    assert _n_parameters(old) == 5 * 27 * 32 + 32 + 32 * 27 * 32 + 32 + 32 * 27 + 1


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
    net = FCN3D(5, filters=64)
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
    ("fcn", {"in_channels": 5, "out_channels": 2, "filters": 8, "hidden_layers": 4, "kernel_size": 5}),
    ("unet", {"in_channels": 3, "features": 4, "levels": 2, "activation": "leaky_relu"}),
    ("unet", {"in_channels": 4, **THESIS_GENERATOR}),
    ("unet", {"in_channels": 4, **THESIS_GENERATOR, "noise_channels": 1}),
    ("cnn2", {"in_channels": 4, "features": 4}),
    ("patch-discriminator", {"in_channels": 5, "patch_size": 8, "features": 4, "blocks": 2, "norm": None}),
    ("cf-sagan-generator", {"in_channels": 4, **TINY_CF_SAGAN, "noise_channels": 1}),
    ("cf-sagan-discriminator", {"in_channels": 4, "patch_size": 16, "features": 2, "attention_level": 2}),
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
    ("resnet", {"in_channels": 1}, "unknown architecture 'resnet'; known: cf-sagan-discriminator, "
                                   "cf-sagan-generator, cnn2, fcn, patch-discriminator, unet"),
    ("fcn", {"in_channels": 1, "levels": 3}, "bad arguments for architecture 'fcn'.*levels"),
    ("unet", {}, "bad arguments for architecture 'unet'.*in_channels"),
    ("fcn", {"in_channels": 1, "hidden_layers": 9}, "hidden_layers must be between 1 and 6"),
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
    net = FCN3D(3, filters=16, hidden_layers=2)
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        optimiser.zero_grad()
        loss = torch.nn.functional.mse_loss(net(x), target)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


# --------------------------------------------------------------------------------------------------------------------
# thesis 003: parameter counts and layers
# --------------------------------------------------------------------------------------------------------------------
def test_parameter_counts_of_thesis_configurations():
    # 2-layer CNN (§3.3.2): two 7³ layers of 64 maps and a 1×1×1 read-out, four inputs
    assert _n_parameters(TwoLayerCNN3D(4)) == 4 * 343 * 64 + 64 + 64 * 343 * 64 + 64 + 64 + 1 == 1_492_929
    # patch discriminator with its defaults: 3 × [conv (weights + bias) + batch norm (2 per map)] + linear 8192 → 1
    convs = [(5, 32), (32, 64), (64, 128)]
    expected = sum(c_in * 27 * c_out + c_out + 2 * c_out for c_in, c_out in convs) + 128 * 4**3 + 1
    assert _n_parameters(PatchDiscriminator3D(4)) == expected == 289_665
    # attention on 16 maps: f, g, h 16 → 2 (weights + bias), projection 2 → 16, γ
    assert _n_parameters(FlexibleSelfAttention3D(16)) == 3 * (16 * 2 + 2) + (2 * 16 + 16) + 1 == 151
    # the Sketcher's noise channel z adds one input channel to the first 3×3×3 convolution of 32 filters
    assert (_n_parameters(UNet3D(4, **{**THESIS_GENERATOR, "features": 32, "noise_channels": 1}))
            - _n_parameters(UNet3D(4, **{**THESIS_GENERATOR, "features": 32})) == 27 * 32)


def test_cf_sagan_generator_layers():
    """§4.2.6 defaults: 16 maps doubling over 4 ResDown blocks, 4 ResUp blocks back, attention on C/8 channels."""
    net = CFSAGANGenerator(4)
    assert [block.body[0].out_channels for block in net.downs] == [32, 64, 128, 256]
    assert [block.up.out_channels for block in net.ups] == [128, 64, 32, 16]
    assert net.stem[0].out_channels == 16 and net.stem[0].kernel_size == (3, 3, 3)
    for attention in (net.encoder_attention, net.decoder_attention):
        assert attention.channels == 64 and attention.key.out_channels == 64 // 8 and attention.pool_size == 2
    assert {m.negative_slope for m in net.modules() if isinstance(m, torch.nn.LeakyReLU)} == {0.2}
    assert {m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)} == {0.5}
    assert isinstance(net.head[-1], torch.nn.LeakyReLU)
    assert net.multiple == 16


def test_patch_discriminator_layers():
    """§3.2.4: convolution → batch norm → LeakyReLU → downsampling, per block; one logit per patch."""
    net = PatchDiscriminator3D(4)
    kinds = [type(m) for m in net.trunk]
    assert kinds == [torch.nn.Conv3d, torch.nn.BatchNorm3d, torch.nn.LeakyReLU, torch.nn.MaxPool3d] * 3
    assert net.head.out_features == 1 and net.head.in_features == 128 * 4**3


# --------------------------------------------------------------------------------------------------------------------
# noise input z
# --------------------------------------------------------------------------------------------------------------------
def test_sketcher_noise_varies_output_and_can_be_fixed():
    torch.manual_seed(0)
    sketcher = UNet3D(4, features=4, levels=2, noise_channels=1).eval()
    refiner = UNet3D(4, features=4, levels=2).eval()
    x = torch.randn(1, 4, 4, 4, 4)
    z = torch.randn(1, 1, 4, 4, 4)
    with torch.no_grad():
        assert not torch.allclose(sketcher(x), sketcher(x))  # z drawn anew at every pass
        assert torch.equal(sketcher(x, z), sketcher(x, z))
        assert torch.equal(refiner(x), refiner(x))  # no z: deterministic in evaluation mode


@pytest.mark.parametrize(("net", "noise_shape", "message"), [
    (UNet3D(4, features=2, levels=2), (1, 1, 4, 4, 4), "noise was given to a network built with noise_channels=0"),
    (UNet3D(4, features=2, levels=2, noise_channels=2), (1, 1, 4, 4, 4),
     r"noise must have shape \(1, 2, 4, 4, 4\)"),
    (CFSAGANGenerator(4, features=2, blocks=1, attention_level=0, noise_channels=1), (2, 1, 4, 4, 4),
     r"noise must have shape \(1, 1, 4, 4, 4\)"),
])
def test_bad_noise(net, noise_shape, message):
    with pytest.raises(ValueError, match=message):
        net(torch.zeros(1, 4, 4, 4, 4), torch.zeros(noise_shape))


# --------------------------------------------------------------------------------------------------------------------
# flexible self-attention
# --------------------------------------------------------------------------------------------------------------------
def test_attention_is_identity_at_initialisation_and_keeps_its_map():
    torch.manual_seed(0)
    layer = FlexibleSelfAttention3D(16, pool_size=2)
    x = torch.randn(2, 16, 4, 6, 8)
    assert layer.gamma.item() == 0
    assert torch.equal(layer(x), x)
    assert layer.attention_map.shape == (2, 24, 24)  # L = 2 · 3 · 4 positions after pooling by 2
    assert layer.attention_grid == (2, 3, 4)
    torch.testing.assert_close(layer.attention_map.sum(dim=-1), torch.ones(2, 24))  # softmax over i, eq. 4.1


def test_attention_matches_equations_4_1_to_4_3():
    """With γ = 0.5, the layer equals eqs. 4.1–4.3 written as explicit sums over the pooled positions."""
    torch.manual_seed(1)
    layer = FlexibleSelfAttention3D(8, pool_size=2)  # C̄ = 1
    with torch.no_grad():
        layer.gamma.fill_(0.5)
    x = torch.randn(1, 8, 4, 2, 2)

    def conv(module, features):  # a 1×1×1 convolution is a matrix product plus bias
        return module.weight[:, :, 0, 0, 0] @ features + module.bias[:, None]

    with torch.no_grad():
        y = layer(x)
        pooled = torch.nn.functional.max_pool3d(x, 2)[0].reshape(8, -1)  # C × L, L = 2
        f, g, h = conv(layer.key, pooled), conv(layer.query, pooled), conv(layer.value, pooled)
        n = pooled.shape[1]
        beta = torch.tensor([[float(f[:, i] @ g[:, j]) for i in range(n)] for j in range(n)]).softmax(dim=1)
        o = torch.stack([sum(beta[j, i] * h[:, i] for i in range(n)) for j in range(n)], dim=1)
        projected = conv(layer.project, o)  # C × L
    expected = x.clone()
    expected[0, :, :2] += 0.5 * projected[:, 0, None, None, None]  # nearest up-sampling: position 0 covers D 0–1
    expected[0, :, 2:] += 0.5 * projected[:, 1, None, None, None]
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(layer.attention_map[0], beta)


def test_attention_gamma_learns_from_zero():
    """At γ = 0 only γ receives a gradient, so the layer can leave the identity."""
    torch.manual_seed(2)
    layer = FlexibleSelfAttention3D(8, pool_size=1)
    layer(torch.randn(1, 8, 2, 2, 2)).pow(2).sum().backward()
    assert layer.gamma.grad.abs().item() > 0
    assert torch.count_nonzero(layer.key.weight.grad) == 0


def test_cf_sagan_generator_exposes_attention_maps():
    torch.manual_seed(0)
    net = CFSAGANGenerator(4, features=2).eval()  # attention at level 2, pooled by 2
    with torch.no_grad():
        net(torch.randn(2, 4, 16, 32, 16))
    positions = (16 // 8) * (32 // 8) * (16 // 8)
    for attention in (net.encoder_attention, net.decoder_attention):
        assert attention.attention_map.shape == (2, positions, positions)


# --------------------------------------------------------------------------------------------------------------------
# discriminators
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("cls", "args", "kwargs", "spatial", "grid"), [
    (PatchDiscriminator3D, (4,), dict(patch_size=8, features=4, blocks=2), (16, 24, 8), (2, 3, 1)),
    (PatchDiscriminator3D, (5, 2), dict(patch_size=4, features=2, blocks=1, norm="instance"), (4, 8, 12), (1, 2, 3)),
    (CFSAGANDiscriminator, (4,), dict(patch_size=16, features=2, blocks=2), (32, 16, 16), (2, 1, 1)),
    (CFSAGANDiscriminator, (5,), dict(patch_size=8, features=2, blocks=3, attention_level=3, pool_size=1),
     (8, 16, 8), (1, 2, 1)),
])
def test_discriminator_output_shape(cls, args, kwargs, spatial, grid):
    net = cls(*args, **kwargs).eval()
    condition = torch.randn(2, net.in_channels, *spatial)
    image = torch.randn(2, net.image_channels, *spatial)
    with torch.no_grad():
        assert net(condition, image).shape == (2, 1, *grid)


@pytest.mark.parametrize("net", [
    PatchDiscriminator3D(2, patch_size=4, features=2, blocks=1),
    CFSAGANDiscriminator(2, patch_size=4, features=2, blocks=1, attention_level=0, pool_size=2),
])
def test_discriminator_patches_do_not_overlap(net):
    """Changing the image inside one patch changes that patch's logit only; the condition counts too."""
    torch.manual_seed(0)
    net.eval()
    condition, image = torch.randn(1, 2, 8, 4, 12), torch.randn(1, 1, 8, 4, 12)
    with torch.no_grad():
        before = net(condition, image)
        changed = image.clone()
        changed[..., 4:8, :, 8:12] += 1.0  # the patch at grid position (1, 0, 2)
        after = net(condition, changed)
        other_condition = net(condition + 1.0, image)
    differs = (after != before)[0, 0]
    assert differs[1, 0, 2] and differs.sum() == 1
    assert (other_condition != before).all()


@pytest.mark.parametrize(("condition_shape", "image_shape", "message"), [
    ((1, 4, 8, 8, 12), (1, 1, 8, 8, 12), r"divisible by 8, got \(8, 8, 12\)"),
    ((1, 3, 8, 8, 8), (1, 1, 8, 8, 8), "built for 4 input channel"),
    ((1, 4, 8, 8, 8), (1, 2, 8, 8, 8), r"image must have shape \(1, 1, 8, 8, 8\)"),
    ((1, 4, 8, 8, 8), (1, 1, 8, 8, 16), r"image must have shape \(1, 1, 8, 8, 8\)"),
    ((1, 4, 8, 8, 8), (2, 1, 8, 8, 8), r"image must have shape \(1, 1, 8, 8, 8\)"),
])
def test_discriminator_bad_input(condition_shape, image_shape, message):
    net = PatchDiscriminator3D(4, patch_size=8, features=2, blocks=2)
    with pytest.raises(ValueError, match=message):
        net(torch.zeros(condition_shape), torch.zeros(image_shape))
