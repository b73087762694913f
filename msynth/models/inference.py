"""Running a trained model: device choice, loading, sliding-window prediction and whole-image synthesis.

A model's stages run in order (:class:`StageChain`): the first takes the input channels, each later one the inputs
and the previous stage's prediction, as the Refiner of thesis 003 §3.2.1 takes the MRI and the Sketcher's DVR.

Prediction follows MONAI's :func:`~monai.inferers.sliding_window_inference` with Gaussian blending: windows run on
the compute device, the stitched volume lives on the CPU. Each window is predicted from a larger block of context
(the window plus a *halo* of voxels on each side, clipped at the volume's border) and cropped back, so that a
window's values do not depend on where the window was cut. For a fully convolutional network whose receptive
radius fits in the halo (:func:`receptive_halo`) the stitched output equals a single forward pass over the whole
volume; for a U-Net the halo is a generous approximation.
"""

from __future__ import annotations

import logging
import math
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import NamedTuple, TypeVar

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from msynth.models.card import CARD_NAME, TARGETS, ModelCard, channels_of, read_card
from msynth.models.data import normalise

__all__ = ["LoadedModel", "StageChain", "load_model", "load_model_and_inputs", "on_cpu_after_out_of_memory",
           "predict_volume", "read_inputs", "receptive_halo", "select_device", "synthesize", "write_map"]

LOGGER = logging.getLogger("msynth.models")
T = TypeVar("T")


def select_device(requested: str = "auto") -> torch.device:
    """The torch device for ``--device``.

    Parameters
    ----------
    requested
        ``'auto'`` (CUDA when available, else CPU), ``'cpu'``, or ``'cuda'``/``'cuda:N'`` (CPU with a warning when
        CUDA is not available).

    Returns
    -------
    torch.device
    """
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cpu":
        return torch.device("cpu")
    if requested.startswith("cuda"):
        if torch.cuda.is_available():
            return torch.device(requested)
        warnings.warn(f"--device {requested} requested but CUDA is not available "
                      f"(torch {torch.__version__}); running on the CPU", RuntimeWarning, stacklevel=2)
        return torch.device("cpu")
    raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {requested!r}")


def on_cpu_after_out_of_memory(task: Callable[[torch.device], T], device: torch.device | str, message: str) -> T:
    """Run ``task(device)``; after a CUDA out-of-memory error, warn once with ``message`` and run ``task`` on the CPU.

    The GPU's cache is emptied first, so that the memory the failed attempt held goes back to the other processes.
    An out-of-memory error on the CPU is raised as it is.
    """
    device = torch.device(device)
    try:
        return task(device)
    except torch.OutOfMemoryError:
        if device.type != "cuda":
            raise
        torch.cuda.empty_cache()
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        return task(torch.device("cpu"))


class StageChain(nn.Module):
    """A model's stages run in order: stage 0 on the inputs, each later stage on the inputs and the previous
    prediction concatenated along the channel axis (tensors ``N C D H W``).

    Parameters
    ----------
    stages
        The stages' networks; every network after the first takes ``C_in + C_out`` channels.
    """

    def __init__(self, stages: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(stages) < 2:
            raise ValueError(f"stages must hold at least two networks, got {len(stages)}")
        self.stages = nn.ModuleList(stages)
        #: spatial sizes the chain accepts are multiples of this (every stage's multiple)
        self.multiple = math.lcm(*(_multiple(stage) for stage in stages))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``N C_in D H W`` inputs → ``N C_out D H W`` prediction of the last stage.

        Each sketch passed on is set to 0 where every input is 0 (outside the brain: inputs are z-scored inside it
        and 0 outside), as in training, where the sketches are masked by the brain (``add_sketches``).
        """
        inside = (x != 0).any(dim=1, keepdim=True).to(x.dtype)
        prediction = self.stages[0](x)
        for stage in self.stages[1:]:
            prediction = stage(torch.cat([x, prediction * inside], dim=1))
        return prediction


def load_model(model_dir: str | PathLike[str], device: torch.device | str = "cpu") -> tuple[ModelCard, nn.Module]:
    """Read a model folder's card and weights.

    Parameters
    ----------
    model_dir
        Folder with ``model_card.json`` and each stage's weights (a ``state_dict``; ``model.pt`` for one stage).
    device
        Where the network's parameters go.

    Returns
    -------
    (ModelCard, torch.nn.Module)
        The network of a one-stage card, or the :class:`StageChain` of a multi-stage one, in evaluation mode.

    Raises
    ------
    ValueError
        Naming the card and the stage, for an architecture this msynth lacks or weights of another network.
    """
    from msynth.models.networks import build_network

    model_dir = Path(model_dir)
    card = read_card(model_dir)
    networks = []
    for index, stage in enumerate(card.stages):
        weights = model_dir / stage.weights
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: the weights of stage {stage.name!r} are missing")
        try:
            network = build_network(stage.network.architecture, stage.network.arguments)
        except ValueError as err:
            raise ValueError(f"{model_dir / CARD_NAME}: field 'stages[{index}].network' {err}") from None
        state = torch.load(weights, map_location="cpu", weights_only=True)
        try:
            network.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"{weights}: does not match the network of {model_dir / CARD_NAME} ({err})") from None
        networks.append(network)
    model = networks[0] if len(networks) == 1 else StageChain(networks)
    return card, model.to(device).eval()


def receptive_halo(model: nn.Module) -> int:
    """Voxels of context each side of a window needed for exact sliding-window prediction.

    For :class:`~msynth.models.networks.FCN3D` this is its receptive radius (exact). For a U-Net it is the
    receptive radius of the convolutions, ``4 * (2**levels - 1)`` (approximate: the pooling grid still depends
    on where a window starts). A :class:`StageChain`: the sum over its stages. Other modules: 8.
    """
    from msynth.models.networks import FCN3D, UNet3D

    if isinstance(model, StageChain):
        return sum(receptive_halo(stage) for stage in model.stages)
    if isinstance(model, FCN3D):
        return model.receptive_radius
    if isinstance(model, UNet3D):
        return 4 * (2**model.levels - 1)
    return 8


def _multiple(model: nn.Module) -> int:
    """Spatial sizes the network accepts are multiples of this."""
    return int(getattr(model, "multiple", 1))


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Zero-pad the spatial axes of ``N C X Y Z`` at their end to multiples; returns the original sizes too."""
    sizes = tuple(x.shape[2:])
    if multiple == 1:
        return x, sizes
    pad = []
    for size in reversed(sizes):
        pad += [0, (-size) % multiple]
    return (F.pad(x, pad) if any(pad) else x), sizes


def _window_size(window: int | Sequence[int], shape: Sequence[int], multiple: int) -> tuple[int, ...]:
    sizes = np.broadcast_to(np.asarray(window, dtype=int), (3,))
    if np.any(sizes < 1):
        raise ValueError(f"window must be positive, got {window}")
    return tuple(int(min(w, s)) // multiple * multiple or multiple for w, s in zip(sizes, shape))


def _predict_windows(
    model: nn.Module,
    x: torch.Tensor,
    *,
    window: tuple[int, ...],
    overlap: float,
    halo: int,
    sw_device: torch.device,
    progress: bool,
) -> torch.Tensor:
    """Sliding-window prediction of ``x`` (``1 C X Y Z`` on the CPU) stitched on the CPU."""
    from monai.inferers import sliding_window_inference

    multiple = _multiple(model)
    shape = x.shape[2:]

    def predictor(win: torch.Tensor, locations: list[list[slice]]) -> torch.Tensor:
        outputs = []
        for location in locations:
            spatial = location[2:]
            lo = [max(0, s.start - halo) for s in spatial]
            hi = [min(n, s.stop + halo) for s, n in zip(spatial, shape)]
            block = x[(slice(None), slice(None), *(slice(a, b) for a, b in zip(lo, hi)))].to(sw_device)
            block, sizes = _pad_to_multiple(block, multiple)
            out = model(block)[..., :sizes[0], :sizes[1], :sizes[2]]
            crop = tuple(slice(s.start - a, s.stop - a) for s, a in zip(spatial, lo))
            outputs.append(out[(slice(None), slice(None), *crop)])
        return torch.cat(outputs)

    model.to(sw_device)
    return sliding_window_inference(
        x, window, 1, predictor, overlap=overlap, mode="gaussian", sw_device=sw_device, device=torch.device("cpu"),
        progress=progress, with_coord=True,
    )


@torch.no_grad()
def predict_volume(
    model: nn.Module,
    data: np.ndarray,
    *,
    window: int | Sequence[int] = 96,
    overlap: float = 0.5,
    halo: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    seed: int | None = 0,
) -> np.ndarray:
    """Predict a whole volume window by window.

    Parameters
    ----------
    model
        Network taking ``N C D H W``; it is run in evaluation mode on ``device`` and left there (on the CPU after
        an out-of-memory fallback).
    data
        ``(C, X, Y, Z)`` normalised inputs.
    window
        Window edge in voxels (one value, or one per axis), clipped to the volume and rounded down to the
        network's size multiple.
    overlap
        Fraction of a window shared with its neighbour (MONAI's ``overlap``), in [0, 1).
    halo
        Context voxels each side of a window (default :func:`receptive_halo`).
    device
        Device the windows run on; on a CUDA out-of-memory error the prediction is redone on the CPU with a
        warning.
    progress
        Show MONAI's progress bar over windows.
    seed
        Seed of the noise a Sketcher draws as its input z (thesis 003 eq. 3.2), the only random part of a
        prediction: the same inputs give the same prediction on every run, and the caller's random state is left
        as it was. ``None`` draws from the caller's generator instead (the training loop, which seeds it itself).

    Returns
    -------
    numpy.ndarray
        ``(out_channels, X, Y, Z)`` float32.
    """
    device = torch.device(device)
    if seed is not None:
        cuda = device.type == "cuda" and torch.cuda.is_available()
        with torch.random.fork_rng(devices=[device.index or 0] if cuda else []):
            torch.manual_seed(seed)
            return predict_volume(model, data, window=window, overlap=overlap, halo=halo, device=device,
                                  progress=progress, seed=None)
    halo = receptive_halo(model) if halo is None else int(halo)
    x = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None]
    multiple = _multiple(model)
    x, sizes = _pad_to_multiple(x, multiple)
    size = _window_size(window, x.shape[2:], multiple)
    was_training = model.training
    model.eval()
    try:
        out = on_cpu_after_out_of_memory(
            lambda sw_device: _predict_windows(model, x, window=size, overlap=overlap, halo=halo, sw_device=sw_device,
                                               progress=progress),
            device,
            f"CUDA ran out of memory with {size} windows; predicting on the CPU instead "
            "(pass a smaller window, or --device cpu, to avoid this)",
        )
    finally:
        model.train(was_training)
    return out[0, :, :sizes[0], :sizes[1], :sizes[2]].numpy().astype(np.float32)


def read_inputs(card: ModelCard, images: Mapping[str, str | PathLike[str]], reference: nib.Nifti1Image) -> np.ndarray:
    """The raw ``(C, X, Y, Z)`` input channels of a model, in the card's order.

    ``images`` maps a modality key to its file, or — for a key with several channels (DWI: FA, RD, AD) — each
    channel name to its file; every image must be on the grid of ``reference``. Non-finite values become 0.
    """
    arrays, missing = [], []
    for key in card.inputs:
        for channel in channels_of([key]):
            path = images.get(channel, images.get(key) if len(channels_of([key])) == 1 else None)
            if path is None:
                missing.append(channel if channel != key else key)
                continue
            img = nib.load(path)
            if img.shape[:3] != reference.shape[:3] or not np.allclose(img.affine, reference.affine, atol=1e-3):
                raise ValueError(f"{path}: not on the model's grid (shape {img.shape} vs {reference.shape[:3]}); "
                                 "resample it onto the brain mask's grid first")
            arrays.append(np.nan_to_num(np.asarray(img.dataobj, dtype=np.float32)))
    if missing:
        raise ValueError(f"model {card.name} needs {' '.join(channels_of(card.inputs))}; missing {' '.join(missing)}")
    return np.stack(arrays)


class LoadedModel(NamedTuple):
    """A model folder's network on its device and a session's normalised inputs on the brain mask's grid."""

    card: ModelCard
    model: nn.Module
    device: torch.device
    mask_img: nib.Nifti1Image
    mask: np.ndarray
    inputs: np.ndarray


def load_model_and_inputs(
    model_dir: str | PathLike[str],
    images: Mapping[str, str | PathLike[str]],
    brain_mask: str | PathLike[str],
    device: str,
) -> LoadedModel:
    """Load a model (``device`` through :func:`select_device`) and normalise its inputs
    inside the brain as its card says, as :func:`synthesize` does."""
    torch_device = select_device(device)
    card, model = load_model(model_dir, torch_device)
    mask_img = nib.load(brain_mask)
    mask = np.asarray(mask_img.dataobj) > 0
    raw = read_inputs(card, images, mask_img)
    inputs = normalise(raw, mask, channels_of(card.inputs), card.normalisation, card.intensity_normalisation)
    return LoadedModel(card, model, torch_device, mask_img, mask, inputs)


def write_map(values: np.ndarray, mask_img: nib.Nifti1Image, path: Path) -> Path:
    """Write ``values`` (on the grid of ``mask_img``) as float32, 0 outside the mask."""
    header = mask_img.header.copy()
    header.set_data_dtype(np.float32)
    mask = np.asarray(mask_img.dataobj) > 0
    img = nib.Nifti1Image((values * mask).astype(np.float32), mask_img.affine, header)
    img.header.set_slope_inter(1, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.to_filename(path)
    return path


def synthesize(
    model_dir: str | PathLike[str],
    images: Mapping[str, str | PathLike[str]],
    brain_mask: str | PathLike[str],
    *,
    newpath: str | PathLike[str],
    device: str = "auto",
    window: int | Sequence[int] = 96,
    overlap: float = 0.5,
    out_name: str | None = None,
    progress: bool | None = None,
) -> Path:
    """Synthesise the card's target image from its input images.

    Each input channel is z-scored inside ``brain_mask`` as the card says (with the card's statistics, or the image's
    own; 0 outside), the network runs
    window by window (:func:`predict_volume`), the prediction is returned to the output's units with the card's
    output statistics, clipped at 0 and set to 0 outside the brain.

    Parameters
    ----------
    model_dir
        Model folder (card and weights).
    images
        Modality key → image file, for every input key of the card (others are ignored; DWI as FA, RD and AD
        channel names, see :func:`read_inputs`); all on the grid of ``brain_mask`` (space-T1w at the model's voxel
        size).
    brain_mask
        Brain mask on the same grid; its grid is the output's.
    newpath
        Output folder.
    device
        ``'auto'``, ``'cpu'`` or ``'cuda'`` (:func:`select_device`).
    window, overlap
        Sliding-window settings (:func:`predict_volume`).
    out_name
        Output file name (default ``<card name>_<target>.nii.gz``).
    progress
        Progress bar over windows (default: when stderr is a terminal).

    Returns
    -------
    pathlib.Path
        float32 image on the grid of ``brain_mask``.
    """
    loaded = load_model_and_inputs(model_dir, images, brain_mask, device)
    card = loaded.card
    LOGGER.info("model %s (%s → %s) on %s, %s windows", card.name, "+".join(card.inputs), card.target,
                loaded.device, window)
    show = sys.stderr.isatty() if progress is None else progress
    predicted = predict_volume(loaded.model, loaded.inputs, window=window, overlap=overlap, device=loaded.device,
                               progress=show)[0]
    stats = card.normalisation[TARGETS[card.target].channel]
    result = np.clip(predicted * stats.std + stats.mean, 0, None)
    return write_map(result, loaded.mask_img, Path(newpath) / (out_name or f"{card.name}_{card.target}.nii.gz"))
