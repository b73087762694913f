"""Pulse-sequence-specific saliency (P3S) maps (paper 001 §2.2).

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
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import nn

from msynth.models.card import channels_of
from msynth.models.data import normalise

__all__ = ["p3s_maps", "write_p3s_maps"]

LOGGER = logging.getLogger("msynth.models")


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
    from msynth.models.inference import _multiple, _pad_to_multiple, receptive_halo

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
    from msynth.models.inference import load_model, read_inputs, select_device

    torch_device = select_device(device)
    card, model = load_model(model_dir, torch_device)
    mask_img = nib.load(brain_mask)
    mask = np.asarray(mask_img.dataobj) > 0
    in_channels = channels_of(card.inputs)
    raw = read_inputs(card, images, mask_img)
    x = normalise(raw, mask, in_channels, card.normalisation, card.intensity_normalisation)
    y = None
    if target is not None:
        out_channels = channels_of([card.output])
        y = normalise(np.asarray(nib.load(target).dataobj, dtype=np.float32)[None], mask, out_channels,
                      card.normalisation, card.intensity_normalisation)
    else:
        LOGGER.info("P3S maps of %s without an acquired %s: derivative of the prediction, not of its error",
                    card.name, card.output)
    maps = p3s_maps(model, x, y, mask=mask, window=window, device=torch_device)
    newpath = Path(newpath)
    newpath.mkdir(parents=True, exist_ok=True)
    written = {}
    for key, values in zip(in_channels, maps):
        header = mask_img.header.copy()
        header.set_data_dtype(np.float32)
        img = nib.Nifti1Image(values * mask, mask_img.affine, header)
        img.header.set_slope_inter(1, 0)
        written[key] = newpath / f"{prefix}_{key}.nii.gz"
        img.to_filename(written[key])
    return written
