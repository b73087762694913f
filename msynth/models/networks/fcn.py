"""Plain convolution stacks: the FLAIR 3-D FCN of paper 001 and the 2-layer CNN baseline of thesis 003.

Tensor layout: ``N C D H W``. Neither network pools, so the output lies on the input's voxel grid.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from msynth.models.networks._blocks import check_int, check_kernel_size, check_spatial, he_init

__all__ = ["FCN3D", "TwoLayerCNN3D"]


def _plain_conv_stack(in_channels: int, out_channels: int, *, features: int, hidden_layers: int, kernel_size: int,
                      output_kernel_size: int) -> nn.Sequential:
    """``hidden_layers`` × [``kernel_size``³ convolution to ``features`` maps → ReLU], then a linear output
    convolution. All convolutions have stride 1 and zero 'same' padding, so the spatial shape is kept.
    """
    layers: list[nn.Module] = []
    channels = in_channels
    for _ in range(hidden_layers):
        conv = nn.Conv3d(channels, features, kernel_size, padding=kernel_size // 2)
        he_init(conv, "relu", 0.0)
        layers += [conv, nn.ReLU()]
        channels = features
    output = nn.Conv3d(channels, out_channels, output_kernel_size, padding=output_kernel_size // 2)
    he_init(output, None, 0.0)
    layers.append(output)
    return nn.Sequential(*layers)


class FCN3D(nn.Module):
    """3-D fully convolutional network for FLAIR synthesis (Wei et al., paper 001 §2.1, §2.3, Table 1).

    ``hidden_layers`` convolutions (paper 001's L) of ``filters`` ``kernel_size``³ kernels each (F1 = F2 = F3 = F),
    each followed by ReLU (paper 001 eq. 2), then one linear ``kernel_size``³ convolution to ``out_channels``: the
    target FLAIR is z-scored (§2.3) and must be able to take negative values. Paper 001's default is L = 3 hidden
    layers of 64 filters ("the first layer extracts a 64-dimensional feature … the second and third layers apply the
    same convolution process"); its Table 1 parameter counts are those of this network with five inputs (see Notes).

    Every convolution uses stride 1 and zero 'same' padding (``kernel_size // 2`` voxels on each side), so the
    output has exactly the input's spatial shape. Paper 001 predicts a whole 208×256×40 FLAIR from inputs of that
    size with a network without pooling (§2.3), which is what 'same' padding gives; any spatial size is accepted.
    Each output voxel sees a cube of ``(hidden_layers + 1) * (kernel_size - 1) + 1`` voxels per side (9 by default);
    voxels beyond the volume's border count as 0, so windows used for tiled inference should overlap by at least
    that half-width.

    Parameters
    ----------
    in_channels : int
        Number of input images stacked as channels (paper 001: 5 — T1w, T2w, PD, T1SE, DIR).
    out_channels : int, optional
        Number of predicted images (1: FLAIR).
    filters : int, optional
        Filters F of every hidden layer (paper 001 §3.1.1 compares 32, 64 — the default — and 96).
    hidden_layers : int, optional
        Hidden layers L, 1 to 6 (paper 001 §3.1.2 compares 2, 3 — the default —, 4 and 6).
    kernel_size : int, optional
        Odd kernel edge length (paper 001: 3).

    Raises
    ------
    ValueError
        If an argument is out of range; the message names it.

    Notes
    -----
    With five inputs the network has 60,577, 231,745 and 513,505 parameters at F = 32, 64 and 96. Paper 001 Table 1
    reports 60.6 K, 213.7 K and 513.5 K: the first and last agree, and the middle one is 231.7 K with two digits
    swapped (the count is quadratic in F; no network of this description gives 213.7 K between the other two).

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> net = FCN3D(5)
    >>> net(torch.zeros(1, 5, 8, 10, 6)).shape
    torch.Size([1, 1, 8, 10, 6])
    >>> sum(p.numel() for p in FCN3D(5, filters=32).parameters())
    60577
    """

    def __init__(self, in_channels: int, out_channels: int = 1, *, filters: int = 64, hidden_layers: int = 3,
                 kernel_size: int = 3) -> None:
        super().__init__()
        check_int("in_channels", in_channels, 1)
        check_int("out_channels", out_channels, 1)
        check_int("filters", filters, 1)
        check_int("hidden_layers", hidden_layers, 1, 6)
        check_kernel_size(kernel_size)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.filters = filters
        self.hidden_layers = hidden_layers
        self.kernel_size = kernel_size
        #: constructor arguments, as a model card stores them (see :func:`build_network`)
        self.arguments: dict[str, Any] = dict(in_channels=in_channels, out_channels=out_channels, filters=filters,
                                              hidden_layers=hidden_layers, kernel_size=kernel_size)

        self.layers = _plain_conv_stack(in_channels, out_channels, features=filters, hidden_layers=hidden_layers,
                                        kernel_size=kernel_size, output_kernel_size=kernel_size)

    @property
    def receptive_radius(self) -> int:
        """Voxels on each side that one output voxel sees: ``(hidden_layers + 1) * (kernel_size // 2)``."""
        return (self.hidden_layers + 1) * (self.kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict ``N out_channels D H W`` from ``x`` of shape ``N in_channels D H W``."""
        check_spatial(x, self.in_channels, 1, "FCN3D")
        return self.layers(x)


class TwoLayerCNN3D(nn.Module):
    """The "2-layer DNN" baseline of thesis 003 §3.3.2 and Tables 3.1/4.1 (after Li et al., 2014).

    Two hidden 7×7×7 convolution layers with 64 feature maps each ("the number of feature maps in each layer is
    augmented to 64 instead of 10", §3.3.2), each followed by ReLU, then a linear 1×1×1 convolution that reads the
    ``out_channels`` images (the DVR) out of the 64 maps. Li et al. map a 15³ input patch to a 3³ output patch
    through two valid 7×7×7 convolutions, which leaves a voxel-wise (1×1×1) output layer; we keep that read-out and
    use 'same' padding so that whole volumes are predicted on their own grid, as the thesis does (it does not
    downsample the images, §3.3.2). The thesis trains it with the L1 loss (:func:`msynth.models.losses.l1_loss`).
    The thesis names no activation; ReLU between layers and a linear output (DVR and z-scored maps take any sign)
    are our choice, as for :class:`FCN3D`.

    Each output voxel sees a cube of ``2 * (kernel_size - 1) + 1`` voxels per side (13 by default).

    Parameters
    ----------
    in_channels : int
        Number of input images stacked as channels (thesis 003: 4 — MTR, FA, RD, AD).
    out_channels : int, optional
        Number of predicted images (1: the DVR map).
    features : int, optional
        Feature maps of each hidden layer (thesis: 64).
    kernel_size : int, optional
        Odd kernel edge length of the two hidden layers (thesis: 7).

    Raises
    ------
    ValueError
        If an argument is out of range; the message names it.

    Notes
    -----
    With the defaults and four inputs the network has 1,492,929 parameters
    (4·343·64 + 64 + 64·343·64 + 64 + 64 + 1).

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> net = TwoLayerCNN3D(4, features=8)
    >>> net(torch.zeros(1, 4, 9, 8, 7)).shape
    torch.Size([1, 1, 9, 8, 7])
    """

    def __init__(self, in_channels: int, out_channels: int = 1, *, features: int = 64, kernel_size: int = 7) -> None:
        super().__init__()
        check_int("in_channels", in_channels, 1)
        check_int("out_channels", out_channels, 1)
        check_int("features", features, 1)
        check_kernel_size(kernel_size)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        #: constructor arguments, as a model card stores them (see :func:`build_network`)
        self.arguments: dict[str, Any] = dict(in_channels=in_channels, out_channels=out_channels, features=features,
                                              kernel_size=kernel_size)
        self.layers = _plain_conv_stack(in_channels, out_channels, features=features, hidden_layers=2,
                                        kernel_size=kernel_size, output_kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict ``N out_channels D H W`` from ``x`` of shape ``N in_channels D H W`` (any spatial size)."""
        check_spatial(x, self.in_channels, 1, "TwoLayerCNN3D")
        return self.layers(x)
