"""CF-SAGAN: the conditional flexible self-attention GAN of thesis 003 ch. 4 (§4.2.2, §4.2.6, Fig. 4.2).

Tensor layout: ``N C D H W``. The generator is a residual encoder-decoder with long (U-Net) skip connections and a
:class:`~msynth.models.networks.attention.FlexibleSelfAttention3D` layer in its encoder and in its decoder; the
discriminator is the conditional patch discriminator of ch. 3 whose downsamplings are ResDown blocks, with a
flexible self-attention layer.

Fig. 4.2, which draws the ResDown and ResUp blocks, is not in the text we have; the blocks below follow the text
(3×3×3 kernels, strided convolutions to downsample and strided deconvolutions to upsample, "short connection"
residuals, long skip connections, LeakyReLU 0.2, 50 % dropout, §4.2.6 and §4.3.1) and the ch. 3 generator's unit
(convolution → LeakyReLU → batch normalisation → dropout, §3.2.4).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from msynth.models.networks._blocks import (Norm, check_bool, check_int, check_spatial, check_unit_options, conv_unit,
                                            he_init, make_activation, up_block, with_noise)
from msynth.models.networks.attention import FlexibleSelfAttention3D
from msynth.models.networks.patchgan import ConditionalPatchDiscriminator

__all__ = ["CFSAGANDiscriminator", "CFSAGANGenerator"]


class _ResDown(nn.Module):
    """ResDown block: [3×3×3 stride-2 unit → 3×3×3 unit] + a 1×1×1 stride-2 convolution shortcut; halves the size."""

    def __init__(self, in_channels: int, out_channels: int, options: dict[str, Any]) -> None:
        super().__init__()
        self.body = nn.Sequential(*conv_unit(in_channels, out_channels, stride=2, **options),
                                  *conv_unit(out_channels, out_channels, stride=1, **options))
        self.shortcut = nn.Conv3d(in_channels, out_channels, 1, stride=2)
        he_init(self.shortcut, None, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class _ResUp(nn.Module):
    """ResUp block: a stride-2 deconvolution, concatenation with the encoder's skip, two 3×3×3 units, plus the
    up-sampled input as the residual shortcut; doubles the size."""

    def __init__(self, in_channels: int, out_channels: int, options: dict[str, Any]) -> None:
        super().__init__()
        self.up = up_block(in_channels, out_channels)
        self.body = nn.Sequential(*conv_unit(2 * out_channels, out_channels, stride=1, **options),
                                  *conv_unit(out_channels, out_channels, stride=1, **options))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        upsampled = self.up(x)
        return self.body(torch.cat([upsampled, skip], dim=1)) + upsampled


def _check_attention(blocks: int, attention_level: int, highest_level: int) -> None:
    """Raise ``ValueError`` unless ``blocks`` is 1 to 6 and ``attention_level`` is 0 to ``highest_level``."""
    check_int("blocks", blocks, 1, 6)
    check_int("attention_level", attention_level, 0, highest_level)


class CFSAGANGenerator(nn.Module):
    """The CF-SAGAN generator (thesis 003 §4.2.6, Fig. 4.2): residual encoder-decoder with flexible self-attention.

    Encoder: a 3×3×3 convolution unit to ``features`` maps, then ``blocks`` ResDown blocks (thesis: four), the
    feature maps doubling at each ("starts from 16 and doubles after each convolutional layer or ResDown block");
    decoder: ``blocks`` ResUp blocks back to full resolution and a 3×3×3 convolution to ``out_channels``. Every
    encoder level is passed to the decoder level of the same size by a long skip connection (concatenation, "can
    also be regarded as U-Net"); each ResDown / ResUp block has a short (residual) connection. A convolution unit
    is convolution → LeakyReLU → normalisation → dropout, as in the ch. 3 generator.

    One flexible self-attention layer (:class:`FlexibleSelfAttention3D`) sits in the encoder and one in the decoder
    ("four ResDown blocks and a flexible self-attention unit between", "four ResUp blocks with a flexible
    self-attention in between"), at the same level ``attention_level`` (number of ResDown blocks before the
    encoder's attention; the decoder's follows the ResUp block that returns to that size). The thesis does not say
    between which blocks; the default 2 puts both in the middle, on 16³ feature maps for its 64³ training patches:
    a quarter of the image size, as the 32² maps of 128² images on which Zhang et al. (SAGAN, 2018) found attention
    more useful than on smaller maps, and where pooling by 2 leaves 8³ = 512 attended positions.

    The noise input z (``noise_channels``) is as in :class:`~msynth.models.networks.unet.UNet3D`; ch. 4 does not
    mention it (default 0).

    Parameters
    ----------
    in_channels : int
        Input images stacked as channels (4 MRI maps for the Sketcher, 5 with the sketch for the Refiner).
    out_channels : int, optional
        Predicted images (1: the DVR).
    features : int, optional
        Feature maps after the first convolution (thesis: 16).
    blocks : int, optional
        ResDown blocks, and ResUp blocks, 1 to 6 (thesis: 4).
    attention_level : int, optional
        ResDown blocks before the encoder's attention layer, 0 to ``blocks - 1`` (see above; default 2).
    pool_size : int, optional
        Pooling factor p of both attention layers (see :class:`FlexibleSelfAttention3D`; default 2).
    negative_slope : float, optional
        LeakyReLU slope (thesis: 0.2).
    norm : {None, 'batch', 'instance'}, optional
        Normalisation after each LeakyReLU (default batch, as the ch. 3 generators).
    dropout : float, optional
        Dropout after each unit, in [0, 1) (thesis: 0.5).
    output_activation : bool, optional
        LeakyReLU on the output convolution, as the ch. 3 generators (DVR is not in [0, 1]); default True.
    noise_channels : int, optional
        Channels of N(0, 1) noise z appended to the inputs; default 0.

    Raises
    ------
    ValueError
        If an argument is out of range (the message names it), or, in :meth:`forward`, if the input is not
        ``N in_channels D H W`` with each spatial size divisible by :attr:`multiple`.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> net = CFSAGANGenerator(4, features=2).eval()
    >>> net.multiple
    16
    >>> net(torch.zeros(1, 4, 16, 32, 16)).shape
    torch.Size([1, 1, 16, 32, 16])
    """

    def __init__(self, in_channels: int, out_channels: int = 1, *, features: int = 16, blocks: int = 4,
                 attention_level: int = 2, pool_size: int = 2, negative_slope: float = 0.2,
                 norm: Norm | None = "batch", dropout: float = 0.5, output_activation: bool = True,
                 noise_channels: int = 0) -> None:
        super().__init__()
        check_int("in_channels", in_channels, 1)
        check_int("out_channels", out_channels, 1)
        check_int("features", features, 1)
        _check_attention(blocks, attention_level, blocks - 1)
        check_int("pool_size", pool_size, 1)
        check_unit_options(negative_slope=negative_slope, norm=norm, dropout=dropout)
        check_bool("output_activation", output_activation)
        check_int("noise_channels", noise_channels, 0)
        self.in_channels = in_channels
        self.noise_channels = noise_channels
        self.attention_level = attention_level
        #: spatial sizes the generator accepts are multiples of this (the blocks' and the attention pooling's)
        self.multiple = math.lcm(2**blocks, 2**attention_level * pool_size)
        #: constructor arguments, as a model card stores them (see :func:`build_network`)
        self.arguments: dict[str, Any] = dict(
            in_channels=in_channels, out_channels=out_channels, features=features, blocks=blocks,
            attention_level=attention_level, pool_size=pool_size, negative_slope=float(negative_slope), norm=norm,
            dropout=float(dropout), output_activation=output_activation, noise_channels=noise_channels)
        options: dict[str, Any] = dict(activation="leaky_relu", negative_slope=float(negative_slope), norm=norm,
                                       dropout=float(dropout))

        widths = [features * 2**level for level in range(blocks + 1)]
        self.stem = nn.Sequential(*conv_unit(in_channels + noise_channels, features, stride=1, **options))
        self.downs = nn.ModuleList(_ResDown(widths[level], widths[level + 1], options) for level in range(blocks))
        self.ups = nn.ModuleList(_ResUp(widths[level + 1], widths[level], options)
                                 for level in reversed(range(blocks)))
        self.encoder_attention = FlexibleSelfAttention3D(widths[attention_level], pool_size=pool_size)
        self.decoder_attention = FlexibleSelfAttention3D(widths[attention_level], pool_size=pool_size)
        output = nn.Conv3d(features, out_channels, 3, padding=1)
        he_init(output, "leaky_relu" if output_activation else None, float(negative_slope))
        self.head = (nn.Sequential(output, make_activation("leaky_relu", float(negative_slope)))
                     if output_activation else output)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Predict ``N out_channels D H W`` from ``x`` of shape ``N in_channels D H W``.

        ``noise`` fixes z (see :class:`~msynth.models.networks.unet.UNet3D`). The attention maps of the last pass
        are in ``encoder_attention.attention_map`` and ``decoder_attention.attention_map``.
        """
        check_spatial(x, self.in_channels, self.multiple, "CFSAGANGenerator")
        x = self.stem(with_noise(x, self.noise_channels, noise))
        skips = []  # encoder output at levels 0 .. blocks - 1
        for level, down in enumerate(self.downs):
            if level == self.attention_level:
                x = self.encoder_attention(x)
            skips.append(x)
            x = down(x)
        for level, up in zip(reversed(range(len(skips))), self.ups):
            x = up(x, skips[level])
            if level == self.attention_level:
                x = self.decoder_attention(x)
        return self.head(x)


class CFSAGANDiscriminator(ConditionalPatchDiscriminator):
    """The CF-SAGAN discriminator (thesis 003 §4.2.6, Fig. 4.2): a patch discriminator with ResDown blocks and
    flexible self-attention.

    "We adopted the 3D PatchDiscriminator from the work of [Wei, 2019b]" (:class:`~msynth.models.networks.patchgan.
    PatchDiscriminator3D`): the condition and the judged image are concatenated, cut into non-overlapping
    ``patch_size``³ patches and each patch gets one logit. Within a patch: a 3×3×3 convolution unit to ``features``
    maps, then ``blocks`` ResDown blocks ("each downsampling operation is realized by a ResDown block"; their
    outputs feed no long connection, which "are not used in the discriminators"), the maps doubling at each, with a
    flexible self-attention layer after ``attention_level`` of them ("to capture complicated long-range
    constraints"), and a fully-connected layer to the logit.

    Parameters
    ----------
    in_channels : int
        Channels of the condition (4 MRI maps; 5 with the sketch for the Refiner).
    image_channels : int, optional
        Channels of the judged image (1: the DVR).
    patch_size : int, optional
        Edge of the non-overlapping patches, divisible by ``2**blocks`` (default 32, as
        :class:`~msynth.models.networks.patchgan.PatchDiscriminator3D`, where the choice is justified; a 64³ training
        patch of ch. 4 holds 8 of them).
    features : int, optional
        Feature maps of the first convolution (default 32, as the ch. 3 discriminator).
    blocks : int, optional
        ResDown blocks, 1 to 6 (default 3: a 32³ patch ends as 4³ maps).
    attention_level : int, optional
        ResDown blocks before the attention layer, 0 to ``blocks``. The default 1 puts it on 16³ maps pooled by
        ``pool_size`` 2 to 8³ positions, as in the generator.
    pool_size : int, optional
        Pooling factor p of the attention layer (default 2); ``patch_size / 2**attention_level`` must be divisible
        by it.
    negative_slope : float, optional
        LeakyReLU slope (thesis: 0.2).
    norm : {None, 'batch', 'instance'}, optional
        Normalisation after each LeakyReLU (default batch).
    dropout : float, optional
        Dropout after each unit, in [0, 1) (the thesis gives dropout for the generator only; default 0).

    Raises
    ------
    ValueError
        If an argument is out of range (the message names it), or, in :meth:`forward`, if the inputs are not
        ``N C D H W`` on one grid with each spatial size divisible by ``patch_size``.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> net = CFSAGANDiscriminator(4, patch_size=16, features=4, blocks=2).eval()
    >>> net(torch.zeros(1, 4, 32, 16, 16), torch.zeros(1, 1, 32, 16, 16)).shape
    torch.Size([1, 1, 2, 1, 1])
    """

    def __init__(self, in_channels: int, image_channels: int = 1, *, patch_size: int = 32, features: int = 32,
                 blocks: int = 3, attention_level: int = 1, pool_size: int = 2, negative_slope: float = 0.2,
                 norm: Norm | None = "batch", dropout: float = 0.0) -> None:
        _check_attention(blocks, attention_level, blocks)
        super().__init__(in_channels, image_channels, patch_size=patch_size, blocks=blocks)
        check_int("features", features, 1)
        check_int("pool_size", pool_size, 1)
        if (patch_size // 2**attention_level) % pool_size:
            raise ValueError(f"pool_size must divide the attention layer's size patch_size / 2**attention_level = "
                             f"{patch_size // 2**attention_level}, got {pool_size}")
        check_unit_options(negative_slope=negative_slope, norm=norm, dropout=dropout)
        #: constructor arguments, as a model card stores them (see :func:`build_network`)
        self.arguments: dict[str, Any] = dict(
            in_channels=in_channels, image_channels=image_channels, patch_size=patch_size, features=features,
            blocks=blocks, attention_level=attention_level, pool_size=pool_size,
            negative_slope=float(negative_slope), norm=norm, dropout=float(dropout))
        options: dict[str, Any] = dict(activation="leaky_relu", negative_slope=float(negative_slope), norm=norm,
                                       dropout=float(dropout))
        widths = [features * 2**level for level in range(blocks + 1)]
        layers: list[nn.Module] = conv_unit(in_channels + image_channels, features, stride=1, **options)
        for level in range(blocks):
            if level == attention_level:
                layers.append(FlexibleSelfAttention3D(widths[level], pool_size=pool_size))
            layers.append(_ResDown(widths[level], widths[level + 1], options))
        if attention_level == blocks:
            layers.append(FlexibleSelfAttention3D(widths[blocks], pool_size=pool_size))
        self.trunk = nn.Sequential(*layers)
        self._build_head(widths[blocks])
