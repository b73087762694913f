"""Where the head and the fields of view sit in the scanner at one session.

The head has a pose (anatomical -> scanner) per session and moves a little between sequences; the PET is acquired
on another scanner, so its head position differs more.  Every field of view is centred on the brain; subjects
with ``oblique`` slabs get a tilt about the left-right axis (AC-PC planning) and a small yaw; subjects with
``flip_x`` store their arrays left-to-right reversed (LAS, as many DICOM converters write).  The transform from the
T1w image to image ``k`` is ``H_k inv(H_T1w)`` with ``H_k = M_k @ pose``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry import Grid, centred_grid, rigid, rotation_matrix

#: Brain centre in the anatomical frame (MNI mm).
BRAIN_CENTRE_MM = np.array([0.0, -18.0, 10.0])
#: Non-MR grids at ``--voxel-size 1``: voxel (mm) and field of view (mm).
DWI_GRID = ((2.0, 2.0, 2.0), (220.0, 220.0, 150.0))
PET_GRID = ((1.22, 1.22, 1.22), (166.0, 205.0, 176.0))
#: Head motion between sequences: rotation SD (degrees), translation SD (mm).
_MOTION = {"MR": (1.0, 1.0), "DWI": (1.5, 1.5), "PET": (4.0, 5.0)}


@dataclass(frozen=True)
class Placement:
    """Pose, per-sequence motion and grids of one session (4x4 RAS matrices)."""

    pose: np.ndarray
    motion: dict[str, np.ndarray]
    grids: dict[str, Grid]

    def head(self, key: str) -> np.ndarray:
        """Anatomical -> scanner mapping seen by sequence ``key``."""
        return self.motion[key] @ self.pose

    def to_anatomy(self, key: str) -> np.ndarray:
        """Scanner coordinates of image ``key`` -> anatomical coordinates."""
        return np.linalg.inv(self.head(key))

    def t1w_to(self, key: str) -> np.ndarray:
        """True transform: a point of T1w physical space -> the same anatomy in image ``key``'s physical space."""
        return self.head(key) @ np.linalg.inv(self.head("T1w"))


def _rigid_noise(rng: np.random.Generator, rot_deg: float, trans_mm: float, centre: np.ndarray) -> np.ndarray:
    """Small random rigid motion about ``centre`` (rotation and translation SDs)."""
    return rigid(np.deg2rad(rng.normal(0.0, rot_deg, 3)), rng.normal(0.0, trans_mm, 3), centre)


def place_session(
    rng: np.random.Generator,
    grids_mm: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]],
    *,
    voxel_scale: float,
    oblique: bool,
    flip_x: bool,
) -> Placement:
    """Draw the head pose, the per-sequence motion and the grids of one session.

    Parameters
    ----------
    rng
        The session's placement random stream.
    grids_mm
        Voxel size and field of view (mm) of every modality key at ``voxel_scale = 1``; ``"PET"`` and ``"DWI"`` are
        treated as their own scanner / readout, every other key as MR.
    voxel_scale
        ``--voxel-size``: multiplies every voxel size (fields of view stay).
    oblique, flip_x
        Tilted slabs / left-right reversed storage for this subject.

    Returns
    -------
    Placement
    """
    pose = rigid(np.deg2rad(rng.normal(0.0, [3.0, 3.0, 4.0])), rng.normal(0.0, 6.0, 3), BRAIN_CENTRE_MM)
    centre = pose[:3, :3] @ BRAIN_CENTRE_MM + pose[:3, 3]
    storage = np.diag([-1.0 if flip_x else 1.0, 1.0, 1.0])
    slab = rotation_matrix(np.deg2rad([rng.choice([-1, 1]) * rng.uniform(8, 20), 0.0, rng.normal(0, 3)])) \
        if oblique else np.eye(3)
    motion, grids = {}, {}
    for key, (voxel, fov) in grids_mm.items():
        kind = key if key in ("PET", "DWI") else "MR"
        motion[key] = np.eye(4) if key == "T1w" else _rigid_noise(rng, *_MOTION[kind], centre)
        tilt = np.eye(3) if kind == "PET" or not oblique else slab @ rotation_matrix(np.deg2rad(rng.normal(0, 1, 3)))
        grids[key] = centred_grid(centre + rng.normal(0.0, 2.0, 3), tilt @ storage,
                                  np.asarray(voxel) * voxel_scale, np.asarray(fov))
    return Placement(pose=pose, motion=motion, grids=grids)
