"""Building blocks shared by the networks: argument checks, He initialisation, convolution units, resampling.

Tensor layout everywhere is ``N C D H W`` (batch, channels, then the three spatial axes).

Weights are initialised with He (Kaiming) normal initialisation (He et al., 2015), ``fan_in`` mode, with the gain of
the activation that follows each convolution (ReLU, or leaky ReLU with its slope; gain 1 for a linear layer); biases
are zero and normalisation layers start as the identity (weight 1, bias 0). Initialisation draws only from torch's
global generator, so two networks built with the same arguments after the same ``torch.manual_seed`` are identical.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

Activation = Literal["relu", "leaky_relu"]
Norm = Literal["batch", "instance"]
Downsample = Literal["maxpool", "conv"]


# --------------------------------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------------------------------
def check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an int in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"{name} must be {bounds}, got {value}")


def check_kernel_size(kernel_size: Any) -> None:
    """Raise ``ValueError`` unless ``kernel_size`` is a positive odd int (symmetric 'same' padding)."""
    check_int("kernel_size", kernel_size, 1)
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd so that 'same' padding is symmetric, got {kernel_size}")


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")


def check_slope(negative_slope: Any) -> None:
    """Raise ``ValueError`` unless ``negative_slope`` (of a leaky ReLU) is a non-negative number."""
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)) or negative_slope < 0:
        raise ValueError(f"negative_slope must be a non-negative number, got {negative_slope!r}")


def check_dropout(dropout: Any) -> None:
    """Raise ``ValueError`` unless ``dropout`` is a probability in [0, 1)."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")


def check_unit_options(*, negative_slope: Any, norm: Any, dropout: Any) -> None:
    """Check the options of :func:`conv_unit`: LeakyReLU slope, normalisation and dropout probability."""
    check_slope(negative_slope)
    check_choice("norm", norm, (None, "batch", "instance"))
    check_dropout(dropout)


def check_bool(name: str, value: Any) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def check_spatial(x: torch.Tensor, in_channels: int, multiple: int, network: str) -> None:
    """Check that ``x`` is ``N C D H W`` with ``in_channels`` channels and spatial sizes divisible by ``multiple``."""
    if x.ndim != 5:
        raise ValueError(f"{network} expects a 5-D tensor N C D H W, got shape {tuple(x.shape)}")
    if x.shape[1] != in_channels:
        raise ValueError(f"{network} was built for {in_channels} input channel(s), got {x.shape[1]} "
                         f"(tensor shape {tuple(x.shape)})")
    if any(size % multiple for size in x.shape[2:]):
        raise ValueError(f"{network} needs spatial sizes divisible by {multiple}, got {tuple(x.shape[2:])}; "
                         f"pad or crop the volume (or use windows of a divisible size)")


# --------------------------------------------------------------------------------------------------------------------
# initialisation and activations
# --------------------------------------------------------------------------------------------------------------------
def he_init(layer: nn.Conv3d | nn.ConvTranspose3d | nn.Linear, activation: Activation | None,
            negative_slope: float) -> None:
    """He-normal weights for ``layer`` followed by ``activation`` (``None``: linear); zero bias."""
    if activation is None:
        nn.init.kaiming_normal_(layer.weight, a=1.0, mode="fan_in", nonlinearity="leaky_relu")  # gain 1
    elif activation == "leaky_relu":
        nn.init.kaiming_normal_(layer.weight, a=negative_slope, mode="fan_in", nonlinearity="leaky_relu")
    else:
        nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def make_activation(activation: Activation, negative_slope: float) -> nn.Module:
    """The activation module: ``nn.LeakyReLU(negative_slope)`` or ``nn.ReLU()``."""
    if activation == "leaky_relu":
        return nn.LeakyReLU(negative_slope)
    return nn.ReLU()


def _make_norm(norm: Norm | None, channels: int) -> list[nn.Module]:
    if norm == "batch":
        return [nn.BatchNorm3d(channels)]
    if norm == "instance":
        return [nn.InstanceNorm3d(channels, affine=True)]
    return []


# --------------------------------------------------------------------------------------------------------------------
# convolution units
# --------------------------------------------------------------------------------------------------------------------
def conv_unit(in_channels: int, out_channels: int, *, stride: int, activation: Activation, negative_slope: float,
              norm: Norm | None, dropout: float, norm_first: bool = False) -> list[nn.Module]:
    """One 3×3×3 convolution → activation → [normalisation] → [dropout].

    Normalisation and dropout come after the activation, as thesis 003 §3.2.4 states for the generators ("Batch
    normalization and dropout are applied after each LeakyReLU layer"). With ``norm_first`` the normalisation comes
    before the activation, as §3.2.4 describes the patch discriminator ("convolution layers followed by batch
    normalization, LeakyReLU"). The convolution keeps its bias.
    """
    conv = nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1)
    he_init(conv, activation, negative_slope)
    act = make_activation(activation, negative_slope)
    norms = _make_norm(norm, out_channels)
    unit: list[nn.Module] = [conv, *norms, act] if norm_first else [conv, act, *norms]
    if dropout > 0:
        unit.append(nn.Dropout(dropout))
    return unit


def conv_block(in_channels: int, out_channels: int, *, activation: Activation, negative_slope: float,
               norm: Norm | None, dropout: float) -> nn.Sequential:
    """Two 3×3×3 'same' convolutions (the body of every U-Net level and of the bottleneck)."""
    options = dict(activation=activation, negative_slope=negative_slope, norm=norm, dropout=dropout)
    return nn.Sequential(*conv_unit(in_channels, out_channels, stride=1, **options),
                         *conv_unit(out_channels, out_channels, stride=1, **options))


def down_block(channels: int, *, downsample: Downsample, activation: Activation, negative_slope: float,
               norm: Norm | None, dropout: float) -> nn.Sequential:
    """Halve each spatial size: 2×2×2 max-pooling (paper 001) or a stride-2 3×3×3 convolution (thesis 003)."""
    if downsample == "maxpool":
        return nn.Sequential(nn.MaxPool3d(2))
    return nn.Sequential(*conv_unit(channels, channels, stride=2, activation=activation,
                                    negative_slope=negative_slope, norm=norm, dropout=dropout))


def up_block(in_channels: int, out_channels: int) -> nn.ConvTranspose3d:
    """Double each spatial size with a 2×2×2 stride-2 transposed convolution (the 'deconvolution'); linear.

    Each output voxel receives exactly one kernel tap per input channel, so its fan-in is ``in_channels``; the
    weights are drawn from N(0, 1 / in_channels) (He initialisation with gain 1; torch's fan computation for
    transposed convolutions would count ``out_channels × 8`` instead).
    """
    deconv = nn.ConvTranspose3d(in_channels, out_channels, 2, stride=2)
    nn.init.normal_(deconv.weight, 0.0, in_channels**-0.5)
    nn.init.zeros_(deconv.bias)
    return deconv


def with_noise(x: torch.Tensor, noise_channels: int, noise: torch.Tensor | None) -> torch.Tensor:
    """Append the cGAN noise input z to ``x`` (``N C D H W``) as ``noise_channels`` extra channels.

    ``noise`` (``N noise_channels D H W``) is used when given — for reproducible inference — and otherwise drawn
    from N(0, 1) with torch's global generator on ``x``'s device. With ``noise_channels == 0`` ``x`` is returned
    unchanged and ``noise`` must be ``None``.
    """
    if noise_channels == 0:
        if noise is not None:
            raise ValueError("noise was given to a network built with noise_channels=0")
        return x
    expected = (x.shape[0], noise_channels, *x.shape[2:])
    if noise is None:
        noise = torch.randn(expected, device=x.device, dtype=x.dtype)
    elif tuple(noise.shape) != expected:
        raise ValueError(f"noise must have shape {expected} (N noise_channels D H W), got {tuple(noise.shape)}")
    return torch.cat([x, noise.to(device=x.device, dtype=x.dtype)], dim=1)
