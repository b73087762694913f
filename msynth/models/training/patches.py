"""Training patches: random brain-centred cubes or a 50 %-overlap grid, their normalised blocks, and augmentation
(mirroring; the rotations and scalings of thesis 003 §4.3.1).

Paper 001 trains on whole volumes, one per step. msynth trains on random cubic patches (``N C D H W`` blocks with
``N = 1``) whose centre is a random brain voxel: for the FCN, whose receptive field is 7³ voxels, a patch gives the
same per-voxel gradients as the whole volume except within 3 voxels of its border; patches bound memory and time per
step whatever the image size, skip the background, and are what the U-Net and GAN models of thesis 003 ch. 4 train on
(64³ patches). The CF-SAGAN of thesis 003 ch. 4 cuts each image into "50 % overlapped 64 × 64 × 64 patches"
(:func:`grid_patch_corners`) and augments them by rotations of 90, 180 and 270° and scalings by 0.75 and 1.25
(:func:`random_transform`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from msynth.models.card import Normalisation
from msynth.models.data import Volume, normalise_array

__all__ = ["SCALES", "Batch", "extract_patch", "grid_patch_corners", "patch_size", "random_flip",
           "random_transform", "rotate_axial", "sample_patch_corners", "scale_patch"]

#: Scalings of thesis 003 §4.3.1's augmentation ("scaling up by 1.25 and scaling down by 0.75").
SCALES = (0.75, 1.25)


@dataclass(frozen=True)
class Batch:
    """One training step's tensors, layout ``N C D H W``.

    Attributes
    ----------
    inputs
        z-scored input channels.
    target
        z-scored target channels.
    roi
        ``N 1 D H W`` integer region labels (:mod:`msynth.models.losses`: other, NAWM, lesion) for the ROI-weighted
        losses of thesis 003 (eqs. 3.5 and 4.4), or ``None`` when the volumes carry none.
    """

    inputs: torch.Tensor
    target: torch.Tensor
    roi: torch.Tensor | None = None

    def to(self, device: torch.device) -> Batch:
        """The same batch on ``device``."""
        roi = None if self.roi is None else self.roi.to(device)
        return Batch(self.inputs.to(device), self.target.to(device), roi)


def sample_patch_corners(mask: np.ndarray, n: int, size: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Corners of ``n`` patches of ``size`` centred on random brain voxels, shifted to lie inside the volume.

    Returns
    -------
    numpy.ndarray
        ``(n, 3)`` int corner indices.
    """
    brain = np.flatnonzero(mask)
    centres = np.stack(np.unravel_index(brain[rng.integers(0, brain.size, n)], mask.shape), axis=1)
    size = np.asarray(size)
    corners = centres - size // 2
    return np.clip(corners, 0, np.asarray(mask.shape) - size)


def grid_patch_corners(mask: np.ndarray, size: Sequence[int], overlap: float = 0.5) -> np.ndarray:
    """Corners of the patches of a regular grid that hold brain voxels (thesis 003 §4.3.1: 50 % overlap).

    Along each axis the corners step by ``size · (1 − overlap)`` (at least 1) from 0, and a last patch ends at the
    volume's edge, so every voxel lies in a patch.

    Returns
    -------
    numpy.ndarray
        ``(n, 3)`` int corner indices, in C order.

    Examples
    --------
    >>> mask = np.zeros((10, 4, 4), bool)
    >>> mask[:6] = True
    >>> grid_patch_corners(mask, (4, 4, 4))[:, 0].tolist()  # 0, 2, 4, 6 along x; the patch at 6 has no brain
    [0, 2, 4]
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
    starts = []
    for extent, edge in zip(mask.shape, size):
        step = max(1, int(edge * (1 - overlap)))
        axis = list(range(0, extent - edge + 1, step))
        if axis[-1] != extent - edge:
            axis.append(extent - edge)
        starts.append(axis)
    corners = np.array(np.meshgrid(*starts, indexing="ij")).reshape(3, -1).T
    keep = [mask[tuple(slice(c, c + s) for c, s in zip(corner, size))].any() for corner in corners]
    return corners[np.asarray(keep, dtype=bool)]


def patch_size(volumes: Sequence[Volume], edge: int, multiple: int) -> tuple[int, int, int]:
    """The patch shape: ``edge`` clipped to the smallest volume and rounded down to the network's size multiple.

    Raises
    ------
    ValueError
        When a volume is smaller than ``multiple`` along an axis.
    """
    smallest = np.min([v.mask.shape for v in volumes], axis=0)
    size = np.minimum(edge, smallest) // multiple * multiple
    if np.any(size < 1):
        raise ValueError(f"volumes of shape {tuple(smallest)} are smaller than the network's size multiple "
                         f"{multiple}; use a smaller voxel size or network")
    return tuple(int(s) for s in size)


def extract_patch(volume: Volume, corner: np.ndarray, size: Sequence[int], inputs: Sequence[str],
                  outputs: Sequence[str], normalisation: Mapping[str, Normalisation]) -> Batch:
    """The z-scored input and target blocks (and ROI labels) of one patch, as a batch of one.

    Only the patch is read from a memory-mapped volume. A volume with a ``sketch`` (the previous stage's
    prediction) gives it as the last input channels, as a Refiner takes it.
    """
    spatial = tuple(slice(int(c), int(c) + s) for c, s in zip(corner, size))
    block = np.asarray(volume.data[(slice(None), *spatial)])
    mask = volume.mask[spatial]
    block = block[[volume.channels.index(c) for c in (*inputs, *outputs)]]
    x = normalise_array(block[:len(inputs)], mask, inputs, normalisation)
    if volume.sketch is not None:
        x = np.concatenate([x, volume.sketch[(slice(None), *spatial)]])
    y = normalise_array(block[len(inputs):], mask, outputs, normalisation)
    roi = None
    if volume.roi is not None:
        roi = torch.from_numpy(np.ascontiguousarray(volume.roi[spatial], dtype=np.int64))[None, None]
    return Batch(torch.from_numpy(np.ascontiguousarray(x))[None], torch.from_numpy(np.ascontiguousarray(y))[None],
                 roi)


def random_flip(batch: Batch, rng: np.random.Generator) -> Batch:
    """Mirror inputs, target and ROI together along each spatial axis with probability 1/2 (augmentation)."""
    axes = [axis + 2 for axis in range(3) if rng.random() < 0.5]  # batch and channel axes first
    if not axes:
        return batch
    roi = None if batch.roi is None else batch.roi.flip(axes)
    return Batch(batch.inputs.flip(axes), batch.target.flip(axes), roi)


def rotate_axial(batch: Batch, quarter_turns: int) -> Batch:
    """Rotate inputs, target and ROI together by ``quarter_turns`` × 90° in the axial plane (the first two spatial
    axes of ``N C D H W``, the x-y plane of a RAS-oriented image)."""
    def turn(tensor: torch.Tensor) -> torch.Tensor:
        return torch.rot90(tensor, quarter_turns, dims=(2, 3))

    return Batch(turn(batch.inputs), turn(batch.target), None if batch.roi is None else turn(batch.roi))


def scale_patch(batch: Batch, factor: float) -> Batch:
    """Scale a patch's content by ``factor`` about its centre, keeping its size, by resampling.

    Inputs and target are resampled trilinearly, ROI labels by nearest neighbour; where ``factor < 1`` samples
    fall outside the patch they are 0 (the z-scored value of the background) and OTHER.
    """
    if not factor > 0:
        raise ValueError(f"factor must be positive, got {factor!r}")
    shape = batch.inputs.shape
    theta = torch.zeros(shape[0], 3, 4, dtype=batch.inputs.dtype, device=batch.inputs.device)
    theta[:, 0, 0] = theta[:, 1, 1] = theta[:, 2, 2] = 1 / factor  # output point u samples the input at u / factor
    grid = F.affine_grid(theta, list(shape), align_corners=False)

    def resample(tensor: torch.Tensor, mode: str) -> torch.Tensor:
        return F.grid_sample(tensor, grid, mode=mode, padding_mode="zeros", align_corners=False)

    roi = None
    if batch.roi is not None:
        roi = resample(batch.roi.to(batch.inputs.dtype), "nearest").round().to(batch.roi.dtype)
    return Batch(resample(batch.inputs, "bilinear"), resample(batch.target, "bilinear"), roi)


def random_transform(batch: Batch, rng: np.random.Generator, *, rotations: bool, scaling: bool) -> Batch:
    """Thesis 003 §4.3.1's augmentation: the patch as it is, or one of its rotations by 90, 180 and 270° in the
    axial plane (``rotations``), or one of its scalings by 0.75 and 1.25 (``scaling``), with equal probability.

    The thesis adds these five variants of each patch to its training set; drawing one per patch and epoch shows
    the network the same variants, each with the same frequency, without multiplying an epoch's length by six.
    """
    choices: list[tuple[str, float]] = [("identity", 0)]
    if rotations:
        choices += [("rotate", k) for k in (1, 2, 3)]
    if scaling:
        choices += [("scale", s) for s in SCALES]
    if len(choices) == 1:
        return batch
    kind, value = choices[int(rng.integers(len(choices)))]
    if kind == "rotate":
        return rotate_axial(batch, int(value))
    if kind == "scale":
        return scale_patch(batch, value)
    return batch
