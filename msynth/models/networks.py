"""Image-to-image networks for synthesis: the FLAIR 3-D FCN and the 3-D U-Net.

Tensor layout everywhere is ``N C D H W`` (batch, channels, then the three spatial axes).

* :class:`FCN3D` is the fully convolutional network of Wei et al. (paper 001, §2.1 and §2.3; ISMRM abstract 000):
  a few 3×3×3 convolutions with ReLU between them, no pooling, the output on the input's voxel grid.
* :class:`UNet3D` is the 3-D U-Net, configured by default as the baseline of paper 001 §2.3 and, through its
  keyword arguments, as the generator of the Sketcher and Refiner cGANs of thesis 003 §3.2.4.

Model cards store an architecture name from :data:`ARCHITECTURES` and the constructor's keyword arguments;
:func:`build_network` turns them back into a module.

Weights are initialised with He (Kaiming) normal initialisation (He et al., 2015), ``fan_in`` mode, with the gain of
the activation that follows each convolution (ReLU, or leaky ReLU with its slope; gain 1 for the linear output layer);
biases are zero and normalisation layers start as the identity (weight 1, bias 0). Initialisation draws only from
torch's global generator, so two networks built with the same arguments after the same ``torch.manual_seed`` are
identical.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

__all__ = ["ARCHITECTURES", "FCN3D", "UNet3D", "build_network"]

Activation = Literal["relu", "leaky_relu"]
Norm = Literal["batch", "instance"]
Downsample = Literal["maxpool", "conv"]


# --------------------------------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------------------------------
def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an int in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"{name} must be {bounds}, got {value}")


def _check_kernel_size(kernel_size: Any) -> None:
    _check_int("kernel_size", kernel_size, 1)
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd so that 'same' padding is symmetric, got {kernel_size}")


def _check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")


def _check_spatial(x: torch.Tensor, in_channels: int, multiple: int, network: str) -> None:
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
# initialisation
# --------------------------------------------------------------------------------------------------------------------
def _he_init(conv: nn.Conv3d | nn.ConvTranspose3d, activation: Activation | None, negative_slope: float) -> None:
    """He-normal weights for ``conv`` followed by ``activation`` (``None``: linear); zero bias."""
    if activation is None:
        nn.init.kaiming_normal_(conv.weight, a=1.0, mode="fan_in", nonlinearity="leaky_relu")  # gain 1
    elif activation == "leaky_relu":
        nn.init.kaiming_normal_(conv.weight, a=negative_slope, mode="fan_in", nonlinearity="leaky_relu")
    else:
        nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _activation(activation: Activation, negative_slope: float) -> nn.Module:
    if activation == "leaky_relu":
        return nn.LeakyReLU(negative_slope)
    return nn.ReLU()


# --------------------------------------------------------------------------------------------------------------------
# FCN (paper 001)
# --------------------------------------------------------------------------------------------------------------------
class FCN3D(nn.Module):
    """3-D fully convolutional network for FLAIR synthesis (Wei et al., paper 001 §2.1, §2.3).

    ``depth`` convolutions with ``kernel_size``³ kernels: the first ``depth - 1`` have ``features`` filters and are
    followed by ReLU (paper 001 eq. 2); the last maps to ``out_channels`` and is linear, because the target FLAIR is
    z-scored (paper 001 §2.3) and must be able to take negative values.

    Every convolution uses stride 1 and zero 'same' padding (``kernel_size // 2`` voxels on each side), so the
    output has exactly the input's spatial shape. Paper 001 predicts a whole 208×256×40 FLAIR from inputs of that
    size with a network without pooling (§2.3), which is what 'same' padding gives; any spatial size is accepted.
    Each output voxel sees a cube of ``depth * (kernel_size - 1) + 1`` voxels per side (7 by default); voxels
    beyond the volume's border count as 0, so windows used for tiled inference should overlap by at least that
    half-width.

    Parameters
    ----------
    in_channels : int
        Number of input images stacked as channels (paper 001: 5 — T1w, T2w, PD, T1SE, DIR).
    out_channels : int, optional
        Number of predicted images (1: FLAIR).
    features : int, optional
        Filters per hidden layer (paper 001 §3.1.1 compares 32, 64 — the default — and 96).
    depth : int, optional
        Number of convolution layers, 2 to 6 (paper 001 §3.1.2 compares 2, 3 — the default —, 4 and 6).
    kernel_size : int, optional
        Odd kernel edge length (paper 001: 3).

    Raises
    ------
    ValueError
        If an argument is out of range; the message names it.

    Notes
    -----
    With the defaults and five inputs the network has 121,089 parameters. Paper 001 Table 1 reports 213.7 K for the
    same description, a figure the text does not let us reproduce; we follow the text.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> net = FCN3D(5)
    >>> net(torch.zeros(1, 5, 8, 10, 6)).shape
    torch.Size([1, 1, 8, 10, 6])
    """

    def __init__(self, in_channels: int, out_channels: int = 1, *, features: int = 64, depth: int = 3,
                 kernel_size: int = 3) -> None:
        super().__init__()
        _check_int("in_channels", in_channels, 1)
        _check_int("out_channels", out_channels, 1)
        _check_int("features", features, 1)
        _check_int("depth", depth, 2, 6)
        _check_kernel_size(kernel_size)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.features = features
        self.depth = depth
        self.kernel_size = kernel_size
        #: constructor arguments, as a model card stores them (see :func:`build_network`)
        self.arguments: dict[str, Any] = dict(in_channels=in_channels, out_channels=out_channels, features=features,
                                              depth=depth, kernel_size=kernel_size)

        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(depth - 1):
            conv = nn.Conv3d(channels, features, kernel_size, padding=kernel_size // 2)
            _he_init(conv, "relu", 0.0)
            layers += [conv, nn.ReLU()]
            channels = features
        output = nn.Conv3d(channels, out_channels, kernel_size, padding=kernel_size // 2)
        _he_init(output, None, 0.0)
        layers.append(output)
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict ``N out_channels D H W`` from ``x`` of shape ``N in_channels D H W``."""
        _check_spatial(x, self.in_channels, 1, "FCN3D")
        return self.layers(x)


# --------------------------------------------------------------------------------------------------------------------
# U-Net blocks
# --------------------------------------------------------------------------------------------------------------------
def _conv_unit(in_channels: int, out_channels: int, *, stride: int, activation: Activation, negative_slope: float,
               norm: Norm | None, dropout: float) -> list[nn.Module]:
    """One 3×3×3 convolution → activation → [normalisation] → [dropout].

    Normalisation and dropout come after the activation, as thesis 003 §3.2.4 states ("Batch normalization and
    dropout are applied after each LeakyReLU layer"). The convolution keeps its bias.
    """
    conv = nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1)
    _he_init(conv, activation, negative_slope)
    unit: list[nn.Module] = [conv, _activation(activation, negative_slope)]
    if norm == "batch":
        unit.append(nn.BatchNorm3d(out_channels))
    elif norm == "instance":
        unit.append(nn.InstanceNorm3d(out_channels, affine=True))
    if dropout > 0:
        unit.append(nn.Dropout(dropout))
    return unit


def _conv_block(in_channels: int, out_channels: int, *, activation: Activation, negative_slope: float,
                norm: Norm | None, dropout: float) -> nn.Sequential:
    """Two 3×3×3 'same' convolutions (the body of every U-Net level and of the bottleneck)."""
    options = dict(activation=activation, negative_slope=negative_slope, norm=norm, dropout=dropout)
    return nn.Sequential(*_conv_unit(in_channels, out_channels, stride=1, **options),
                         *_conv_unit(out_channels, out_channels, stride=1, **options))


def _down_block(channels: int, *, downsample: Downsample, activation: Activation, negative_slope: float,
                norm: Norm | None, dropout: float) -> nn.Sequential:
    """Halve each spatial size: 2×2×2 max-pooling (paper 001) or a stride-2 3×3×3 convolution (thesis 003)."""
    if downsample == "maxpool":
        return nn.Sequential(nn.MaxPool3d(2))
    return nn.Sequential(*_conv_unit(channels, channels, stride=2, activation=activation,
                                     negative_slope=negative_slope, norm=norm, dropout=dropout))


def _up_block(in_channels: int, out_channels: int) -> nn.ConvTranspose3d:
    """Double each spatial size with a 2×2×2 stride-2 transposed convolution (the 'deconvolution'); linear.

    Each output voxel receives exactly one kernel tap per input channel, so its fan-in is ``in_channels``; the
    weights are drawn from N(0, 1 / in_channels) (He initialisation with gain 1; torch's fan computation for
    transposed convolutions would count ``out_channels × 8`` instead).
    """
    deconv = nn.ConvTranspose3d(in_channels, out_channels, 2, stride=2)
    nn.init.normal_(deconv.weight, 0.0, in_channels**-0.5)
    nn.init.zeros_(deconv.bias)
    return deconv


class UNet3D(nn.Module):
    """3-D U-Net (Ronneberger et al., 2015; Çiçek et al., 2016) for image-to-image synthesis.

    ``levels`` resolution levels: ``levels - 1`` encoder levels, each two 3×3×3 convolutions followed by a
    downsampling, then a bottleneck of two convolutions, then ``levels - 1`` decoder levels, each a stride-2
    2×2×2 transposed convolution, concatenation with the encoder output of the same level (skip connection), and two
    3×3×3 convolutions; a final 1×1×1 convolution maps to ``out_channels``. Level ``l`` (0 at full resolution) has
    ``features * 2**l`` channels.

    The defaults are the baseline of paper 001 §2.3: two encoder blocks of two convolutions plus max-pooling, starting
    at 16 feature maps and doubling at each pooling, a bottleneck of two 64-wide convolutions, two decoder blocks
    (``features=16, levels=3``), ReLU and no normalisation. For five inputs this gives 340,977 parameters (paper 001
    §3.2 reports 375.6 K without enough detail to reproduce it).

    The Sketcher and Refiner generators of thesis 003 §3.2.4 (32 base feature maps; three repetitions of two
    convolutions and a stride-2 convolution; LeakyReLU with slope 0.2; batch normalisation and 50 % dropout after
    each LeakyReLU; a LeakyReLU as the last layer, §3.3.2) are
    ``UNet3D(4, 1, features=32, levels=4, activation="leaky_relu", negative_slope=0.2, norm="batch", dropout=0.5,
    downsample="conv", output_activation=True)``: "3 levels" in the thesis counts downsamplings, ``levels`` here
    counts resolutions including the bottleneck.

    Parameters
    ----------
    in_channels : int
        Number of input images stacked as channels.
    out_channels : int, optional
        Number of predicted images.
    features : int, optional
        Feature maps at the first (full-resolution) level.
    levels : int, optional
        Resolution levels including the bottleneck, 2 to 6. Spatial sizes must be divisible by ``2**(levels - 1)``.
    activation : {'relu', 'leaky_relu'}, optional
        Activation after every 3×3×3 convolution.
    negative_slope : float, optional
        Slope of the leaky ReLU for negative inputs (used only with ``activation='leaky_relu'``).
    norm : {None, 'batch', 'instance'}, optional
        Normalisation after each activation (None: none).
    dropout : float, optional
        Dropout probability after each activation (and normalisation), in [0, 1).
    downsample : {'maxpool', 'conv'}, optional
        2×2×2 max-pooling, or a stride-2 3×3×3 convolution block (same activation, norm and dropout).
    output_activation : bool, optional
        Apply ``activation`` to the output of the final 1×1×1 convolution (thesis 003 §3.3.2: a LeakyReLU
        as the last layer, since DVR is not in [0, 1]); default linear.

    Raises
    ------
    ValueError
        If an argument is out of range (the message names it), or, in :meth:`forward`, if the input is not
        ``N in_channels D H W`` with each spatial size divisible by ``2**(levels - 1)``.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> net = UNet3D(5)
    >>> net(torch.zeros(1, 5, 8, 12, 4)).shape
    torch.Size([1, 1, 8, 12, 4])
    """

    def __init__(self, in_channels: int, out_channels: int = 1, *, features: int = 16, levels: int = 3,
                 activation: Activation = "relu", negative_slope: float = 0.2, norm: Norm | None = None,
                 dropout: float = 0.0, downsample: Downsample = "maxpool", output_activation: bool = False) -> None:
        super().__init__()
        _check_int("in_channels", in_channels, 1)
        _check_int("out_channels", out_channels, 1)
        _check_int("features", features, 1)
        _check_int("levels", levels, 2, 6)
        _check_choice("activation", activation, ("relu", "leaky_relu"))
        _check_choice("norm", norm, (None, "batch", "instance"))
        _check_choice("downsample", downsample, ("maxpool", "conv"))
        if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)) or negative_slope < 0:
            raise ValueError(f"negative_slope must be a non-negative number, got {negative_slope!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        if not isinstance(output_activation, bool):
            raise ValueError(f"output_activation must be True or False, got {output_activation!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.levels = levels
        self.multiple = 2 ** (levels - 1)
        #: constructor arguments, as a model card stores them (see :func:`build_network`)
        self.arguments: dict[str, Any] = dict(
            in_channels=in_channels, out_channels=out_channels, features=features, levels=levels,
            activation=activation, negative_slope=float(negative_slope), norm=norm, dropout=float(dropout),
            downsample=downsample, output_activation=output_activation)
        options = dict(activation=activation, negative_slope=float(negative_slope), norm=norm,
                       dropout=float(dropout))

        widths = [features * 2**level for level in range(levels)]
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        channels = in_channels
        for width in widths[:-1]:
            self.encoders.append(_conv_block(channels, width, **options))
            self.downs.append(_down_block(width, downsample=downsample, **options))
            channels = width
        self.bottleneck = _conv_block(channels, widths[-1], **options)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for deeper, width in zip(widths[:0:-1], widths[-2::-1]):
            self.ups.append(_up_block(deeper, width))
            self.decoders.append(_conv_block(2 * width, width, **options))
        head = nn.Conv3d(widths[0], out_channels, 1)
        _he_init(head, activation if output_activation else None, float(negative_slope))
        self.head = (nn.Sequential(head, _activation(activation, float(negative_slope))) if output_activation
                     else head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict ``N out_channels D H W`` from ``x`` of shape ``N in_channels D H W``.

        Raises ``ValueError`` unless ``D``, ``H`` and ``W`` are divisible by ``2**(levels - 1)``.
        """
        _check_spatial(x, self.in_channels, self.multiple, f"UNet3D with levels={self.levels}")
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck(x)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = decoder(torch.cat([up(x), skip], dim=1))
        return self.head(x)


# --------------------------------------------------------------------------------------------------------------------
# registry used by model cards
# --------------------------------------------------------------------------------------------------------------------
ARCHITECTURES: dict[str, type[nn.Module]] = {"fcn": FCN3D, "unet": UNet3D}


def build_network(architecture: str, arguments: Mapping[str, Any]) -> nn.Module:
    """Instantiate a network from a model card's ``architecture`` name and constructor ``arguments``.

    Parameters
    ----------
    architecture : str
        A key of :data:`ARCHITECTURES` (``'fcn'`` or ``'unet'``).
    arguments : Mapping[str, Any]
        Keyword arguments of the constructor, including ``in_channels``.

    Returns
    -------
    torch.nn.Module
        The freshly initialised network (load the card's weights into it afterwards). Its ``arguments`` attribute
        holds the full set of constructor arguments, defaults included, ready to be stored in a card.

    Raises
    ------
    ValueError
        For an unknown architecture (the message lists the known ones), an argument the constructor does not take,
        or an out-of-range value.

    Examples
    --------
    >>> build_network("fcn", {"in_channels": 2, "features": 8}).features
    8
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    try:
        return ARCHITECTURES[architecture](**dict(arguments))
    except TypeError as error:  # a missing or unknown keyword
        raise ValueError(f"bad arguments for architecture {architecture!r} ({dict(arguments)!r}): {error}") from None
