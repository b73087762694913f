"""The DVR-synthesis methods of thesis 003 (Tables 3.1 and 4.1) as stage configurations for ``msynth-train dvr``.

Each method is one stage, or a Sketcher and ``refinements`` Refiners (:func:`dvr_stage_configs`):

======================  =====================================================================================
``cnn2``                the "2-layer DNN" baseline: two 7×7×7 convolutions, 64 maps, L1 (§3.3.2)
``unet``                the 3-D U-Net of Fig. 3.3 A, L1
``unet-wl1``            the same U-Net with the ROI-weighted L1 (eq. 3.5)
``cgan``                the single cGAN, i.e. the Sketcher: U-Net generator with the noise input z, patch
                        discriminator, adversarial loss + λ·L1 (eq. 3.6)
``refiner-cgan``        the Sketcher, then Refiner cGANs (U-Net without z on the MRI and the sketch, WL1)
``cf-sagan``            one CF-SAGAN (generator and discriminator of §4.2.6) with the normalised weighted L1
                        (eq. 4.4)
``refiner-cf-sagan``    a CF-SAGAN Sketcher (z, L1: "the L1 loss is used to regularize the model globally"), then
                        CF-SAGAN Refiners (NWL1)
======================  =====================================================================================

Settings the thesis gives: Adam with learning rates 1e-4 for the Sketcher and 5e-5 for the Refiner (§3.3.1 and
§4.3.1: "10−4, 5 × 10−5 as initial learning rates for the Sketcher and the Refiner respectively"; the one-stage
baselines take the Sketcher's), for the generator and the discriminator of each stage alike. The CF-SAGANs train
on every 64³ patch of a 50 %-overlap grid with rotations and scalings, their discriminator updated twice per
generator update on smoothed labels (§4.3.1); the ch. 3 cGANs keep their own settings ("All state-of-the-art methods
were kept the same architecture and parameter settings", §4.3.2): one discriminator update per generator update,
hard labels, random patches. Settings it omits, chosen here: λ = 100 (pix2pix, Isola et al. 2017, whose cGAN the
Sketcher extends to 3-D) and the discriminators' patch of 32³ voxels (:class:`~msynth.models.networks.
PatchDiscriminator3D`), or the training patch when it is smaller.

The DVR target is z-scored with the training cohort's mean and standard deviation (``target_normalisation=
'cohort'``), whatever the inputs' normalisation: DVR is quantitative — a ratio of distribution volumes to a reference
region, comparable across sessions and scanners — so its level is the information (a patient's lower DVR is
demyelination, and the group level's threshold is the controls' mean − 1 SD). Per-image z-scores would erase it and
need the acquired DVR to be undone; the fixed affine map keeps the network's target near unit scale and is inverted at
inference with the card's statistics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from msynth.models.card import AdversarialSpec, NetworkSpec, OptimizerSpec
from msynth.models.training.config import TrainingConfig

__all__ = ["ADVERSARIAL_WEIGHT", "DVR_METHODS", "REFINER_LR", "SKETCHER_LR", "dvr_stage_configs"]

#: ``msynth-train dvr --method`` choices, in the order of thesis 003 Tables 3.1 and 4.1.
DVR_METHODS = ("cnn2", "unet", "unet-wl1", "cgan", "refiner-cgan", "cf-sagan", "refiner-cf-sagan")
#: Adam learning rate of the Sketcher (and of the one-stage baselines) and of the Refiners (thesis 003 §3.3.1).
SKETCHER_LR, REFINER_LR = 1e-4, 5e-5
#: λ of eq. 3.6, the weight of the supervised term in a generator's objective (the thesis gives none; pix2pix's).
ADVERSARIAL_WEIGHT = 100.0
#: Edge of the discriminators' non-overlapping patches (see :class:`~msynth.models.networks.PatchDiscriminator3D`).
DISCRIMINATOR_PATCH = 32


def _unet(features: int | None, noise_channels: int) -> tuple[str, dict[str, Any]]:
    """The generator of Fig. 3.3 A: 32 maps doubling over 3 stride-2 downsamplings, BN, LeakyReLU 0.2, dropout 0.5."""
    return "unet", {"features": features or 32, "levels": 4, "activation": "leaky_relu", "negative_slope": 0.2,
                    "norm": "batch", "dropout": 0.5, "downsample": "conv", "output_activation": True,
                    "noise_channels": noise_channels}


def _cf_sagan(features: int | None, noise_channels: int) -> tuple[str, dict[str, Any]]:
    """The CF-SAGAN generator of §4.2.6 (16 maps doubling, 4 ResDown and 4 ResUp blocks, two attention layers)."""
    return "cf-sagan-generator", {"features": features or 16, "noise_channels": noise_channels}


def _stage(generator: tuple[str, dict[str, Any]], loss: str, lr: float, *, discriminator: str | None,
           features: int | None, patch_size: int, loop: Mapping[str, Any]) -> TrainingConfig:
    """One stage: the generator, its loss and Adam rate, and for a GAN its discriminator with the same rate."""
    adversarial = None
    chapter4 = discriminator == "cf-sagan-discriminator"
    if discriminator is not None:
        network = NetworkSpec(discriminator, {"patch_size": min(DISCRIMINATOR_PATCH, patch_size),
                                              "features": features or 32})
        adversarial = AdversarialSpec(network, OptimizerSpec("adam", lr), ADVERSARIAL_WEIGHT,
                                      d_steps_per_g_step=2 if chapter4 else 1, label_smoothing=chapter4)
    grid = {"patch_sampling": "grid", "random_rotations": True, "random_scaling": True} if chapter4 else {}
    return TrainingConfig(architecture=generator[0], arguments=generator[1], optimizer="adam", lr=lr, loss=loss,
                          adversarial=adversarial, patch_size=patch_size, target_normalisation="cohort",
                          **{**loop, **grid})


def dvr_stage_configs(method: str, *, refinements: int = 1, features: int | None = None, patch_size: int = 64,
                      loop: Mapping[str, Any] | None = None) -> list[TrainingConfig]:
    """The stage configurations of a DVR method: one, or a Sketcher and ``refinements`` Refiners.

    Parameters
    ----------
    method
        One of :data:`DVR_METHODS`.
    refinements
        Refiners after the Sketcher of the ``refiner-*`` methods, 0 to 2 (thesis 003 recommends 1); ignored by the
        one-stage methods.
    features
        Feature maps of the generators' first level and of the discriminators' first block (default: the thesis's
        32 for the U-Nets and discriminators, 64 for ``cnn2``, 16 for the CF-SAGAN generator).
    patch_size
        Edge of the training patches (the CF-SAGANs': 64, §4.3.1).
    loop
        Other :class:`~msynth.models.training.config.TrainingConfig` fields, shared by the stages (``max_epochs``,
        ``seed``, ``patches_per_session``, ``intensity_normalisation``, …).

    Raises
    ------
    ValueError
        For an unknown method or ``refinements`` outside 0–2.

    Examples
    --------
    >>> [(c.architecture, c.loss, c.lr) for c in dvr_stage_configs("refiner-cgan")]
    [('unet', 'l1', 0.0001), ('unet', 'wl1', 5e-05)]
    """
    if method not in DVR_METHODS:
        raise ValueError(f"method must be one of {', '.join(DVR_METHODS)}, got {method!r}")
    if refinements not in (0, 1, 2):
        raise ValueError(f"refinements must be 0, 1 or 2, got {refinements!r}")
    options = {"features": features, "patch_size": patch_size, "loop": dict(loop or {})}
    if method == "cnn2":
        return [_stage(("cnn2", {"features": features or 64, "kernel_size": 7}), "l1", SKETCHER_LR,
                       discriminator=None, **options)]
    if method in ("unet", "unet-wl1"):
        return [_stage(_unet(features, 0), "l1" if method == "unet" else "wl1", SKETCHER_LR, discriminator=None,
                       **options)]
    if method == "cf-sagan":
        return [_stage(_cf_sagan(features, 0), "nwl1", SKETCHER_LR, discriminator="cf-sagan-discriminator",
                       **options)]
    if method in ("cgan", "refiner-cgan"):
        sketcher = _stage(_unet(features, 1), "l1", SKETCHER_LR, discriminator="patch-discriminator", **options)
        refiner = _stage(_unet(features, 0), "wl1", REFINER_LR, discriminator="patch-discriminator", **options)
    else:
        sketcher = _stage(_cf_sagan(features, 1), "l1", SKETCHER_LR, discriminator="cf-sagan-discriminator",
                          **options)
        refiner = _stage(_cf_sagan(features, 0), "nwl1", REFINER_LR, discriminator="cf-sagan-discriminator",
                         **options)
    return [sketcher] + [refiner] * (refinements if method.startswith("refiner-") else 0)
