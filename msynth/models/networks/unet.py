"""The 3-D U-Net: the baseline of paper 001 and the Sketcher / Refiner generators of thesis 003 (§3.2.4).

Tensor layout: ``N C D H W``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from msynth.models.networks._blocks import (Activation, Downsample, Norm, check_bool, check_choice, check_int,
                                            check_spatial, check_unit_options, conv_block, down_block, he_init,
                                            make_activation, up_block, with_noise)

__all__ = ["UNet3D"]


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
    counts resolutions including the bottleneck. The Sketcher adds ``noise_channels=1`` (below); the Refiner takes
    the MRI and the sketch (``in_channels=5``) and no noise.

    The noise input z of the Sketcher (thesis 003 eq. 3.2, §3.3.1: "we kept the noise vector z for the Sketcher and
    removed it from the Refiner") is given as ``noise_channels`` extra input channels of N(0, 1) noise, one value
    per voxel, drawn anew at every forward pass (in training and in inference, as the thesis keeps z to "provide
    some slight variation in the generated images") and concatenated to the inputs before the first convolution.
    We do not use dropout as the noise, as pix2pix does (Isola et al.): the thesis has dropout in both generators
    and still calls the Refiner deterministic, so z must be an input of its own. A voxel-wise noise volume, rather
    than a vector, keeps the network fully convolutional, so any volume or window size is accepted.

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
    noise_channels : int, optional
        Channels of Gaussian noise z appended to the inputs (thesis 003 Sketcher: 1); 0, the default, for none.
        ``in_channels`` counts the images only.

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
                 dropout: float = 0.0, downsample: Downsample = "maxpool", output_activation: bool = False,
                 noise_channels: int = 0) -> None:
        super().__init__()
        check_int("in_channels", in_channels, 1)
        check_int("out_channels", out_channels, 1)
        check_int("features", features, 1)
        check_int("levels", levels, 2, 6)
        check_choice("activation", activation, ("relu", "leaky_relu"))
        check_choice("downsample", downsample, ("maxpool", "conv"))
        check_unit_options(negative_slope=negative_slope, norm=norm, dropout=dropout)
        check_bool("output_activation", output_activation)
        check_int("noise_channels", noise_channels, 0)
        self.in_channels = in_channels
        self.noise_channels = noise_channels
        self.out_channels = out_channels
        self.levels = levels
        self.multiple = 2 ** (levels - 1)
        #: constructor arguments, as a model card stores them (see :func:`build_network`)
        self.arguments: dict[str, Any] = dict(
            in_channels=in_channels, out_channels=out_channels, features=features, levels=levels,
            activation=activation, negative_slope=float(negative_slope), norm=norm, dropout=float(dropout),
            downsample=downsample, output_activation=output_activation, noise_channels=noise_channels)
        options = dict(activation=activation, negative_slope=float(negative_slope), norm=norm,
                       dropout=float(dropout))

        widths = [features * 2**level for level in range(levels)]
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        channels = in_channels + noise_channels
        for width in widths[:-1]:
            self.encoders.append(conv_block(channels, width, **options))
            self.downs.append(down_block(width, downsample=downsample, **options))
            channels = width
        self.bottleneck = conv_block(channels, widths[-1], **options)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for deeper, width in zip(widths[:0:-1], widths[-2::-1]):
            self.ups.append(up_block(deeper, width))
            self.decoders.append(conv_block(2 * width, width, **options))
        head = nn.Conv3d(widths[0], out_channels, 1)
        he_init(head, activation if output_activation else None, float(negative_slope))
        self.head = (nn.Sequential(head, make_activation(activation, float(negative_slope))) if output_activation
                     else head)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Predict ``N out_channels D H W`` from ``x`` of shape ``N in_channels D H W``.

        ``noise`` (``N noise_channels D H W``) fixes z for a reproducible prediction; by default z is drawn from
        N(0, 1) with torch's global generator. Raises ``ValueError`` unless ``D``, ``H`` and ``W`` are divisible
        by ``2**(levels - 1)``, or if ``noise`` is given to a network without noise channels.
        """
        check_spatial(x, self.in_channels, self.multiple, f"UNet3D with levels={self.levels}")
        x = with_noise(x, self.noise_channels, noise)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck(x)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = decoder(torch.cat([up(x), skip], dim=1))
        return self.head(x)
