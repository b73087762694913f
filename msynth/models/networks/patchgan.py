"""The conditional 3-D patch discriminator of the Sketcher and Refiner cGANs (thesis 003 §3.2.4, Fig. 3.3 B).

Tensor layout: ``N C D H W``. A discriminator takes the condition (the MRI channels, and for the Refiner the sketch)
and an image (the acquired or the generated DVR), cuts their concatenation into non-overlapping cubes and gives one
real-versus-generated logit per cube: ``N 1 D/P H/P W/P``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from msynth.models.networks._blocks import Norm, check_choice, check_int, check_slope, check_spatial, conv_unit, he_init

__all__ = ["PatchDiscriminator3D"]


def split_into_patches(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut ``x`` (``N C D H W``, sizes divisible by ``patch_size``) into non-overlapping cubes.

    Returns ``(N · nD · nH · nW) C P P P``, patches in C order over the grid of each sample, samples one after the
    other, so that a per-patch result reshaped to ``N nD nH nW`` lies on the patch grid.
    """
    batch, channels, depth, height, width = x.shape
    size = patch_size
    grid = (depth // size, height // size, width // size)
    patches = x.reshape(batch, channels, grid[0], size, grid[1], size, grid[2], size)
    return patches.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(-1, channels, size, size, size)


class ConditionalPatchDiscriminator(nn.Module):
    """Shared part of the patch discriminators: argument checks, patch cutting and the per-patch logit.

    Subclasses build :attr:`trunk`, which maps ``(in_channels + image_channels)`` channels on a ``patch_size``³ cube
    to ``trunk_channels`` maps on a ``(patch_size / 2**blocks)``³ cube, and call :meth:`_build_head`. The last layer
    is a fully-connected layer with one output, the logit of "real": the thesis's two-node fully-connected layer with
    a softmax (§3.2.4) gives P(real) = σ(b − a) for node values (a, b), so one logit ``b − a`` is the same model
    without its redundant half, and its binary cross-entropy with logits equals the two-class cross-entropy.
    """

    #: per-patch feature extractor, built by the subclass
    trunk: nn.Module
    #: fully-connected layer to the logit, built by :meth:`_build_head`
    head: nn.Linear

    def __init__(self, in_channels: int, image_channels: int, *, patch_size: int, blocks: int) -> None:
        super().__init__()
        check_int("in_channels", in_channels, 1)
        check_int("image_channels", image_channels, 1)
        check_int("blocks", blocks, 1, 6)
        check_int("patch_size", patch_size, 2**blocks)
        if patch_size % 2**blocks:
            raise ValueError(f"patch_size must be divisible by 2**blocks = {2**blocks}, got {patch_size}")
        self.in_channels = in_channels
        self.image_channels = image_channels
        self.patch_size = patch_size
        self.blocks = blocks
        #: spatial sizes the discriminator accepts are multiples of this
        self.multiple = patch_size

    def _build_head(self, trunk_channels: int) -> None:
        """The fully-connected layer from the trunk's flattened output to one logit (linear, gain-1 He init)."""
        self.head = nn.Linear(trunk_channels * (self.patch_size // 2**self.blocks) ** 3, 1)
        he_init(self.head, None, 0.0)

    def forward(self, condition: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Logits that each patch of ``image`` is real, given ``condition``.

        Parameters
        ----------
        condition : torch.Tensor
            ``N in_channels D H W``, each spatial size divisible by ``patch_size``.
        image : torch.Tensor
            ``N image_channels D H W``: the acquired or the generated image.

        Returns
        -------
        torch.Tensor
            ``N 1 D/P H/P W/P``: one logit per non-overlapping ``P``³ patch (``P = patch_size``).
        """
        name = type(self).__name__
        check_spatial(condition, self.in_channels, self.patch_size, name)
        if image.ndim != 5 or image.shape[1] != self.image_channels or image.shape[0] != condition.shape[0] \
                or image.shape[2:] != condition.shape[2:]:
            expected = (condition.shape[0], self.image_channels, *condition.shape[2:])
            raise ValueError(f"{name}: image must have shape {expected} (N image_channels D H W, on the condition's "
                             f"grid), got {tuple(image.shape)}")
        patches = split_into_patches(torch.cat([condition, image], dim=1), self.patch_size)
        logits = self.head(self.trunk(patches).flatten(1))
        grid = [size // self.patch_size for size in condition.shape[2:]]
        return logits.reshape(condition.shape[0], *grid).unsqueeze(1)


class PatchDiscriminator3D(ConditionalPatchDiscriminator):
    """Conditional 3-D patch discriminator on non-overlapping patches (thesis 003 §3.2.4, Fig. 3.3 B).

    The input — the condition (MRI channels; for the Refiner also the sketch) concatenated with the acquired or the
    generated image — "is firstly divided into patches with size l × w × h and then the 3D patch discriminator
    classifies all the patches separately". Each patch goes through ``blocks`` × [3×3×3 stride-1 convolution →
    batch normalisation → LeakyReLU → 2×2×2 max-pooling] ("a series of 3×3×3 stride 1 convolution layers followed
    by batch normalization, LeakyReLU and Downsampling"), feature maps starting at ``features`` and doubling per
    block, then a fully-connected layer to one logit (see :class:`ConditionalPatchDiscriminator`). The thesis sums
    the cross-entropy over the patches (:func:`msynth.models.losses.adversarial_loss`).

    Parameters
    ----------
    in_channels : int
        Channels of the condition (thesis: 4 MRI maps for the Sketcher's discriminator, 5 with the sketch for the
        Refiner's).
    image_channels : int, optional
        Channels of the judged image (1: the DVR).
    patch_size : int, optional
        Edge ``P`` of the non-overlapping cubic patches; divisible by ``2**blocks``. The thesis does not state it,
        but its count lets us recover it: overlapping patches "would be 1.2 million" on its 128×160×128 volumes
        against 35 thousand for pix2pix's 70×70 patches on 256×256 images, and pix2pix's count is the number of
        patch positions, (256 − 70 + 1)² = 34,969. The same count for P³ patches, (129 − P)² (161 − P), is
        1,213,761 for P = 32 (1.28 M for 30, 1.18 M for 33); 32 is also the power of two that tiles 128×160×128
        into 4 × 5 × 4 = 80 patches. Default 32.
    features : int, optional
        Feature maps of the first block (the thesis gives none; 32, as its generators).
    blocks : int, optional
        Convolution + pooling blocks, 1 to 6 (default 3: a 32³ patch ends as 4³ maps).
    negative_slope : float, optional
        Slope of the LeakyReLU (thesis: 0.2).
    norm : {None, 'batch', 'instance'}, optional
        Normalisation before each LeakyReLU (thesis: batch).

    Raises
    ------
    ValueError
        If an argument is out of range (the message names it), or, in :meth:`forward`, if the inputs are not
        ``N C D H W`` on one grid with each spatial size divisible by ``patch_size``.

    Notes
    -----
    With the defaults, four condition channels and one image channel the network has 289,665 parameters.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> net = PatchDiscriminator3D(4, patch_size=8, features=4, blocks=2)
    >>> net(torch.zeros(2, 4, 16, 24, 8), torch.zeros(2, 1, 16, 24, 8)).shape
    torch.Size([2, 1, 2, 3, 1])
    """

    def __init__(self, in_channels: int, image_channels: int = 1, *, patch_size: int = 32, features: int = 32,
                 blocks: int = 3, negative_slope: float = 0.2, norm: Norm | None = "batch") -> None:
        super().__init__(in_channels, image_channels, patch_size=patch_size, blocks=blocks)
        check_int("features", features, 1)
        check_slope(negative_slope)
        check_choice("norm", norm, (None, "batch", "instance"))
        #: constructor arguments, as a model card stores them (see :func:`build_network`)
        self.arguments: dict[str, Any] = dict(
            in_channels=in_channels, image_channels=image_channels, patch_size=patch_size, features=features,
            blocks=blocks, negative_slope=float(negative_slope), norm=norm)
        layers: list[nn.Module] = []
        channels = in_channels + image_channels
        for block in range(blocks):
            width = features * 2**block
            layers += conv_unit(channels, width, stride=1, activation="leaky_relu",
                                negative_slope=float(negative_slope), norm=norm, dropout=0.0, norm_first=True)
            layers.append(nn.MaxPool3d(2))
            channels = width
        self.trunk = nn.Sequential(*layers)
        self._build_head(channels)
