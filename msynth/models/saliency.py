"""Saliency maps: pulse-sequence-specific saliency (P3S, paper 001 §2.2) and CF-SAGAN attention (thesis 003 §4.2.2).

P3S maps
--------
For subject ``i`` the P3S map of an input sequence is the absolute partial derivative of the squared prediction
error with respect to that input, computed by backpropagation (paper 001 eq. 3)::

    M_i = | d ||I_target - s(I_source)||² / d I_source |

one map per input channel, on the input grid. Where no target was acquired (the situation synthesis is for), the
error cannot be formed; :func:`p3s_maps` then differentiates the sum of the prediction instead (the sensitivity of
the synthetic image to each input, as in the class-saliency maps of Simonyan et al. that paper 001 adapts) and says
so in the log.

Gradients are computed window by window: the output space is cut into non-overlapping windows, each predicted from
its window plus a halo of context (:func:`msynth.models.inference.receptive_halo`) and back-propagated, and the
input gradients are summed. Because the loss is a sum over output voxels, the sum of the windows' gradients is the
gradient of the whole-volume loss — exactly for a fully convolutional network whose receptive radius fits in the
halo — while memory stays bounded by the window.

Attention maps
--------------
A CF-SAGAN attention layer (:class:`~msynth.models.networks.attention.FlexibleSelfAttention3D`) computes
``β[j, i] = softmax_i(f(x_i)ᵀ g(x_j))`` (thesis 003 eq. 4.1), "the extent to which the model attends to the ith
location when synthesizing the jth region". :func:`attention_maps` draws, for each attention layer of each stage,
the attention each location *receives*: ``L × mean_j β[j, i]`` over the layer's ``L`` pooled positions, on the
input grid and averaged over the inference windows (see :func:`received_attention`).
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import nn
from torch.nn import functional

from msynth.models.card import channels_of
from msynth.models.data import normalise
from msynth.models.inference import (StageChain, _multiple, _pad_to_multiple, load_model_and_inputs, predict_volume,
                                     receptive_halo, write_map)
from msynth.models.networks.attention import FlexibleSelfAttention3D

__all__ = ["ATTENTION_DESCRIPTION", "P3S_DESCRIPTION", "attention_layers", "attention_maps", "p3s_maps",
           "received_attention", "write_attention_maps", "write_p3s_maps"]

LOGGER = logging.getLogger("msynth.models")

#: sidecar ``Description`` of a P3S map
P3S_DESCRIPTION = "P3S saliency map of one input (paper 001 §2.2): |d(prediction error)/d(input)|, normalised inputs."
#: sidecar ``Description`` of an attention map, ``{label}`` the layer's (:func:`attention_layers`)
ATTENTION_DESCRIPTION = (
    "Attention received by each location in the CF-SAGAN attention layer {label} (stage, then layer; thesis 003 "
    "§4.2.2, eq. 4.1): L times the mean over the query positions j of beta[j, i], i the location's position on the "
    "layer's pooled grid of L positions (1: uniform attention; above 1: attended more than average), spread over the "
    "block of voxels each position covers, averaged over the overlapping inference windows (Gaussian weights), 0 "
    "outside the brain."
)


def p3s_maps(
    model: nn.Module,
    inputs: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor | None = None,
    *,
    mask: np.ndarray | None = None,
    window: int = 64,
    halo: int | None = None,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """P3S maps of every input channel.

    Parameters
    ----------
    model
        Network taking ``N C D H W``; evaluated in evaluation mode (its mode is restored).
    inputs
        ``(C, X, Y, Z)`` (or ``(1, C, X, Y, Z)``) normalised inputs.
    target
        ``(X, Y, Z)`` or ``(out_channels, X, Y, Z)`` normalised target: the paper's map. ``None``: derivative of the
        summed prediction.
    mask
        Only output voxels inside this mask enter the loss (default: all).
    window
        Edge of the output windows (voxels).
    halo
        Context each side (default :func:`~msynth.models.inference.receptive_halo`).
    device
        Where the network runs.

    Returns
    -------
    numpy.ndarray
        ``(C, X, Y, Z)`` float32, non-negative.
    """
    device = torch.device(device)
    x = torch.as_tensor(inputs, dtype=torch.float32).cpu()
    if x.ndim == 5:
        x = x[0]
    if x.ndim != 4:
        raise ValueError(f"inputs must be (C, X, Y, Z), got shape {tuple(x.shape)}")
    shape = tuple(x.shape[1:])
    if target is not None:
        y = torch.as_tensor(target, dtype=torch.float32).cpu()
        y = y[None] if y.ndim == 3 else y
        if tuple(y.shape[1:]) != shape:
            raise ValueError(f"target shape {tuple(y.shape)} does not match the inputs {tuple(x.shape)}")
    weight = torch.ones(shape) if mask is None else torch.as_tensor(np.asarray(mask) > 0, dtype=torch.float32)
    halo = receptive_halo(model) if halo is None else int(halo)
    multiple = _multiple(model)
    step = max(multiple, window // multiple * multiple)
    gradient = torch.zeros_like(x)
    was_training = model.training
    model.eval().to(device)
    try:
        for corner in itertools.product(*(range(0, n, step) for n in shape)):
            core = [slice(c, min(c + step, n)) for c, n in zip(corner, shape)]
            if not weight[tuple(core)].any():
                continue
            lo = [max(0, s.start - halo) for s in core]
            hi = [min(n, s.stop + halo) for s, n in zip(core, shape)]
            context = tuple(slice(a, b) for a, b in zip(lo, hi))
            block = x[(slice(None), *context)][None].to(device).requires_grad_(True)
            padded, sizes = _pad_to_multiple(block, multiple)
            predicted = model(padded)[..., :sizes[0], :sizes[1], :sizes[2]]
            inner = tuple(slice(s.start - a, s.stop - a) for s, a in zip(core, lo))
            predicted = predicted[(0, slice(None), *inner)]
            w = weight[tuple(core)].to(device)
            if target is None:
                loss = (predicted * w).sum()
            else:
                loss = (torch.square(y[(slice(None), *core)].to(device) - predicted) * w).sum()
            (grad,) = torch.autograd.grad(loss, block)
            gradient[(slice(None), *context)] += grad[0].cpu()
    finally:
        model.train(was_training)
    return gradient.abs().numpy().astype(np.float32)


def write_p3s_maps(
    model_dir: str | PathLike[str],
    images: Mapping[str, str | PathLike[str]],
    brain_mask: str | PathLike[str],
    *,
    newpath: str | PathLike[str],
    target: str | PathLike[str] | None = None,
    device: str = "auto",
    window: int = 64,
    prefix: str = "p3s",
) -> dict[str, Path]:
    """Compute and write one P3S map per input of a model (:func:`p3s_maps`).

    Parameters
    ----------
    model_dir
        Model folder (card and weights).
    images
        Modality key → image, for every input of the card (see :func:`~msynth.models.inference.read_inputs`), on
        the grid of ``brain_mask``.
    brain_mask
        Brain mask (inputs are normalised inside it; only brain voxels enter the loss).
    newpath
        Output folder.
    target
        The acquired output image (paper 001's map); ``None``: sensitivity of the prediction.
    device, window
        As in :func:`p3s_maps` (``device`` through :func:`~msynth.models.inference.select_device`).
    prefix
        File names are ``<prefix>_<channel>.nii.gz``.

    Returns
    -------
    dict
        Input channel (the modality key, or FA/RD/AD for DWI) → written map (float32, on the grid of
        ``brain_mask``; units: normalised output per normalised input).
    """
    loaded = load_model_and_inputs(model_dir, images, brain_mask, device)
    card = loaded.card
    y = None
    if target is not None:
        out_channels = channels_of([card.output])
        y = normalise(np.asarray(nib.load(target).dataobj, dtype=np.float32)[None], loaded.mask, out_channels,
                      card.normalisation, card.intensity_normalisation)
    else:
        LOGGER.info("P3S maps of %s without an acquired %s: derivative of the prediction, not of its error",
                    card.name, card.output)
    maps = p3s_maps(loaded.model, loaded.inputs, y, mask=loaded.mask, window=window, device=loaded.device)
    return {key: write_map(values, loaded.mask_img, Path(newpath) / f"{prefix}_{key}.nii.gz")
            for key, values in zip(channels_of(card.inputs), maps)}


def _camel_case(name: str) -> str:
    """An alphanumeric BIDS ``desc`` part: ``'refiner-2'`` → ``'Refiner2'``, ``'encoder_attention'`` → ``'Encoder'``
    (every layer named is an attention layer, so the word is dropped)."""
    return "".join(part.capitalize() for part in re.split(r"[^0-9A-Za-z]+", name) if part and part != "attention")


def attention_layers(model: nn.Module, stage_names: Sequence[str]) -> dict[str, FlexibleSelfAttention3D]:
    """The CF-SAGAN attention layers of a model's stages, by label.

    Parameters
    ----------
    model
        A stage's network, or the :class:`~msynth.models.inference.StageChain` of several.
    stage_names
        The card's name of each stage, in order.

    Returns
    -------
    dict
        ``<Stage><Layer>`` (alphanumeric CamelCase of the stage's name and of the layer's attribute without
        "attention", e.g. ``SketcherEncoder``, ``Refiner2Decoder``) → layer, stage by stage in the order the
        network holds them; empty for a model without attention layers (U-Net, FCN).

    Raises
    ------
    ValueError
        If ``stage_names`` does not name every stage.

    Examples
    --------
    >>> from msynth.models.networks import CFSAGANGenerator
    >>> list(attention_layers(CFSAGANGenerator(4, features=2), ["synthesis"]))
    ['SynthesisEncoder', 'SynthesisDecoder']
    """
    stages = list(model.stages) if isinstance(model, StageChain) else [model]
    if len(stage_names) != len(stages):
        raise ValueError(f"stage_names must name each of the model's {len(stages)} stage(s), got {list(stage_names)}")
    return {_camel_case(stage_name) + _camel_case(name): module
            for stage_name, stage in zip(stage_names, stages)
            for name, module in stage.named_modules() if isinstance(module, FlexibleSelfAttention3D)}


def received_attention(layer: FlexibleSelfAttention3D, shape: Sequence[int]) -> torch.Tensor:
    """The attention each location received in a layer's last forward pass, on the grid of the network's input.

    For the key position ``i`` of the layer's ``L`` pooled positions, with ``β[j, i]`` of thesis 003 §4.2.2 eq. 4.1
    (the layer's :attr:`~FlexibleSelfAttention3D.attention_map`, rows the queries ``j``)::

        A_i = L · (1/L) Σ_j β[j, i] = Σ_j β[j, i]

    the mean over the queries of the weight they give to ``i``, multiplied by ``L`` so that uniform attention
    (``β = 1/L``) is 1 whatever the layer's size: maps of layers and of windows with different ``L`` compare, and a
    value says how many times the average attention the location received. Each row of β sums to 1, so ``A`` has
    mean 1 over the positions.

    A pooled position is the maximum over a block of the network's input: the layer sees feature maps at
    ``1/2**k`` of the input's size, pooled by ``p``, so it covers ``2**k · p`` input voxels per axis. ``A_i`` is
    given to every voxel of that block (nearest-neighbour up-sampling by whole blocks, as the layer's own
    "UpPooling" returns ``o`` to the feature grid): the value belongs to the whole block — the max-pooling does not
    say which voxel of the block was attended — and block up-sampling keeps the mean of 1 and the values' range,
    where trilinear interpolation would spread a position's attention onto its neighbours' blocks.

    Parameters
    ----------
    layer
        An attention layer after a forward pass.
    shape
        Spatial size of the network's input, a multiple of the layer's :attr:`~FlexibleSelfAttention3D.
        attention_grid` (as :attr:`~msynth.models.networks.CFSAGANGenerator.multiple` makes it).

    Returns
    -------
    torch.Tensor
        ``N 1 D H W``, on the layer's device.

    Raises
    ------
    ValueError
        If the layer has not run yet.
    """
    if layer.attention_map is None or layer.attention_grid is None:
        raise ValueError("the attention layer has no attention map: run the network forward first")
    batch, positions, _ = layer.attention_map.shape
    received = layer.attention_map.sum(dim=1)  # N L: Σ_j β[j, i] = L · mean_j β[j, i]
    grid = received.reshape(batch, 1, *layer.attention_grid)
    return functional.interpolate(grid, size=tuple(int(n) for n in shape), mode="nearest")


class _ReceivedAttention(nn.Module):
    """A model whose output is the attention received in each of its attention layers (:func:`received_attention`),
    one channel per layer on the input's grid, so that
    :func:`~msynth.models.inference.predict_volume` stitches the maps as it stitches predictions.

    Parameters
    ----------
    model
        The network (or stage chain) holding ``layers``.
    layers
        Its attention layers, in the order of the output channels.
    """

    def __init__(self, model: nn.Module, layers: Sequence[FlexibleSelfAttention3D]) -> None:
        super().__init__()
        self.model = model
        self.layers = list(layers)  # modules of ``model``: a plain list does not register them twice
        #: spatial sizes the model accepts are multiples of this
        self.multiple = _multiple(model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``N C D H W`` inputs → ``N layers D H W`` received attention."""
        self.model(x)
        return torch.cat([received_attention(layer, x.shape[2:]) for layer in self.layers], dim=1)


def attention_maps(
    model: nn.Module,
    inputs: np.ndarray,
    *,
    stage_names: Sequence[str],
    window: int | Sequence[int] = 96,
    overlap: float = 0.5,
    device: torch.device | str = "cpu",
) -> dict[str, np.ndarray]:
    """Attention maps of every attention layer of a model, over the sliding windows of inference.

    Each window is run as :func:`~msynth.models.inference.predict_volume` runs it (the window plus the model's
    halo of context, padded to the model's size multiple) and gives, per layer, the attention its locations received
    among the window's (:func:`received_attention`); the windows' maps are stitched by
    :func:`~msynth.models.inference.predict_volume` itself, a Gaussian-weighted average where windows overlap (so
    that uniform attention is 1 everywhere). When one window covers the volume the map is that of a single pass,
    with mean 1 over the (padded) volume.

    Parameters
    ----------
    model
        Network or :class:`~msynth.models.inference.StageChain` taking ``N C D H W``.
    inputs
        ``(C, X, Y, Z)`` normalised inputs.
    stage_names
        The card's name of each stage (the labels, :func:`attention_layers`).
    window, overlap
        Sliding windows, as :func:`~msynth.models.inference.synthesize` runs them (the same defaults: the maps are
        those of the windows that predicted the synthetic image).
    device
        Where the windows run.

    Returns
    -------
    dict
        Label → ``(X, Y, Z)`` float32 map (:func:`attention_layers`); empty, with nothing run, for a model without
        attention layers.
    """
    layers = attention_layers(model, stage_names)
    if not layers:
        return {}
    received = _ReceivedAttention(model, list(layers.values())).train(model.training)  # predict_volume restores it
    maps = predict_volume(received, inputs, window=window, overlap=overlap, halo=receptive_halo(model), device=device)
    return dict(zip(layers, maps))


def write_attention_maps(
    model_dir: str | PathLike[str],
    images: Mapping[str, str | PathLike[str]],
    brain_mask: str | PathLike[str],
    *,
    newpath: str | PathLike[str],
    device: str = "auto",
    window: int | Sequence[int] = 96,
    overlap: float = 0.5,
    prefix: str = "attention",
) -> dict[str, Path]:
    """Compute and write the attention map of each attention layer of a model (:func:`attention_maps`).

    Parameters
    ----------
    model_dir
        Model folder (card and weights).
    images
        Modality key → image, for every input of the card (see :func:`~msynth.models.inference.read_inputs`), on
        the grid of ``brain_mask``.
    brain_mask
        Brain mask (inputs are normalised inside it; the maps are 0 outside it).
    newpath
        Output folder.
    device
        ``'auto'``, ``'cpu'`` or ``'cuda'`` (:func:`~msynth.models.inference.select_device`).
    window, overlap
        As in :func:`attention_maps`.
    prefix
        File names are ``<prefix>_<label>.nii.gz``.

    Returns
    -------
    dict
        Label (``SketcherEncoder`` …, :func:`attention_layers`) → written map (float32, on the grid of
        ``brain_mask``, 1 for uniform attention); empty for a model without attention layers.
    """
    loaded = load_model_and_inputs(model_dir, images, brain_mask, device)
    maps = attention_maps(loaded.model, loaded.inputs, stage_names=[stage.name for stage in loaded.card.stages],
                          window=window, overlap=overlap, device=loaded.device)
    if maps:
        LOGGER.info("attention maps of %s: %s", loaded.card.name, ", ".join(maps))
    return {label: write_map(values, loaded.mask_img, Path(newpath) / f"{prefix}_{label}.nii.gz")
            for label, values in maps.items()}
