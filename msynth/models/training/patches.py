"""Training patches: random brain-centred cubes, their normalised blocks, and mirror augmentation.

Paper 001 trains on whole volumes, one per step. msynth trains on random cubic patches (``N C D H W`` blocks with
``N = 1``) whose centre is a random brain voxel: for the FCN, whose receptive field is 7³ voxels, a patch gives the
same per-voxel gradients as the whole volume except within 3 voxels of its border; patches bound memory and time per
step whatever the image size, skip the background, and are what the U-Net and GAN models of thesis 003 ch. 4 train on
(64³ patches).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from msynth.models.card import Normalisation
from msynth.models.data import Volume, normalise_array

__all__ = ["Batch", "extract_patch", "patch_size", "random_flip", "sample_patch_corners"]


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

    Only the patch is read from a memory-mapped volume.
    """
    spatial = tuple(slice(int(c), int(c) + s) for c, s in zip(corner, size))
    block = np.asarray(volume.data[(slice(None), *spatial)])
    mask = volume.mask[spatial]
    block = block[[volume.channels.index(c) for c in (*inputs, *outputs)]]
    x = normalise_array(block[:len(inputs)], mask, inputs, normalisation)
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
