"""The flexible self-attention layer of CF-SAGAN (thesis 003 §4.2.2, Fig. 4.1, eqs. 4.1–4.3).

Tensor layout: ``N C D H W``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from msynth.models.networks._blocks import check_int, check_spatial, he_init

__all__ = ["FlexibleSelfAttention3D"]


class FlexibleSelfAttention3D(nn.Module):
    """Self-attention over a max-pooled 3-D feature map, added back to the input with a learned scale γ.

    After Zhang et al.'s SAGAN (2018), made "flexible" for large 3-D volumes (thesis 003 §4.2.2): the ``C`` feature
    maps ``x`` are max-pooled by ``pool_size`` (p) in each axis, giving ``L`` positions; three 1×1×1 convolutions
    give the key ``f(x)``, query ``g(x)`` and value ``h(x)``, each with ``C̄ = max(1, C // reduction)`` channels
    (C/8 in the thesis). The attention map

        β[j, i] = softmax_i( f(x_i)ᵀ g(x_j) )                      (eq. 4.1)

    says how much position ``i`` contributes when position ``j`` is synthesised; the output at ``j`` is

        o_j = Σ_i β[j, i] h(x_i)                                    (eq. 4.2)

    projected back to ``C`` channels by a 1×1×1 convolution, up-sampled by p (nearest neighbour, the "UpPooling"
    of Fig. 4.1) to the input's size, and added to the input:

        y = γ o + x                                                 (eq. 4.3)

    γ starts at 0, so the layer is the identity at initialisation and the network "first relies on the cues in the
    local regions and then gradually learns to assign more weight to the regions that are further away" (§4.2.2).
    Pooling shrinks the attention map (``L × L`` per sample) by p⁶ — p³ positions on each side — which is what
    lets the layer run on 3-D volumes ("reduces the size of the attention map by the cubic of the pool size").

    The last attention map is kept, detached, in :attr:`attention_map` (``N L L``, rows ``j``, columns ``i``,
    positions in C order over the pooled grid :attr:`attention_grid`), so that a saliency map can be drawn.

    Parameters
    ----------
    channels : int
        Feature maps ``C`` of the input (and of the output).
    pool_size : int, optional
        Max-pooling factor p per axis (1: no pooling). The thesis does not give its value. The default 2 is the
        smallest pooling that makes the layer "flexible"; with the CF-SAGAN defaults the layer sees 16³ feature
        maps, pooled to 8³ = 512 positions: a 512 × 512 map (1 MiB per sample in float32) instead of the
        4096 × 4096 map (64 MiB, and as much again for its gradient) without pooling, while each pooled position
        still covers only 2³ feature-map voxels.
    reduction : int, optional
        Channel reduction of the key, query and value (thesis: 8).

    Raises
    ------
    ValueError
        If an argument is out of range (the message names it), or, in :meth:`forward`, if the input is not
        ``N channels D H W`` with each spatial size divisible by ``pool_size``.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> layer = FlexibleSelfAttention3D(16, pool_size=2)
    >>> x = torch.randn(2, 16, 4, 6, 8)
    >>> torch.equal(layer(x), x)  # γ = 0 at initialisation
    True
    >>> layer.attention_map.shape  # (N, L, L) with L = 2 * 3 * 4 pooled positions
    torch.Size([2, 24, 24])
    """

    def __init__(self, channels: int, *, pool_size: int = 2, reduction: int = 8) -> None:
        super().__init__()
        check_int("channels", channels, 1)
        check_int("pool_size", pool_size, 1)
        check_int("reduction", reduction, 1)
        self.channels = channels
        self.pool_size = pool_size
        inner = max(1, channels // reduction)
        self.key = nn.Conv3d(channels, inner, 1)  # f
        self.query = nn.Conv3d(channels, inner, 1)  # g
        self.value = nn.Conv3d(channels, inner, 1)  # h
        self.project = nn.Conv3d(inner, channels, 1)  # back from C̄ to C channels
        for conv in (self.key, self.query, self.value, self.project):
            he_init(conv, None, 0.0)
        #: γ of eq. 4.3, learned, 0 at initialisation
        self.gamma = nn.Parameter(torch.zeros(1))
        #: β of the last forward pass, ``N L L`` (detached), or None before the first pass
        self.attention_map: torch.Tensor | None = None
        #: the pooled grid ``(D / p, H / p, W / p)`` on which :attr:`attention_map`'s positions lie
        self.attention_grid: tuple[int, int, int] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``y = γ o + x`` (eq. 4.3), same shape as ``x`` (``N channels D H W``); store β."""
        check_spatial(x, self.channels, self.pool_size, "FlexibleSelfAttention3D")
        pooled = functional.max_pool3d(x, self.pool_size) if self.pool_size > 1 else x
        batch, _, *grid = pooled.shape
        key = self.key(pooled).flatten(2)  # N C̄ L
        query = self.query(pooled).flatten(2)
        value = self.value(pooled).flatten(2)
        beta = torch.softmax(torch.bmm(query.transpose(1, 2), key), dim=-1)  # N L(j) L(i), eq. 4.1
        self.attention_map = beta.detach()
        self.attention_grid = (grid[0], grid[1], grid[2])
        attended = torch.bmm(value, beta.transpose(1, 2))  # N C̄ L(j): o_j = Σ_i β[j, i] h_i, eq. 4.2
        output = self.project(attended.reshape(batch, -1, *grid))
        if self.pool_size > 1:
            output = functional.interpolate(output, scale_factor=self.pool_size, mode="nearest")
        return self.gamma * output + x
