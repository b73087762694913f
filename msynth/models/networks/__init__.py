"""Image-to-image networks for synthesis and the discriminators that train them adversarially.

Tensor layout everywhere is ``N C D H W`` (batch, channels, then the three spatial axes).

* :class:`FCN3D` (:mod:`.fcn`) — the FLAIR fully convolutional network of Wei et al. (paper 001 §2.1, §2.3).
* :class:`TwoLayerCNN3D` (:mod:`.fcn`) — the "2-layer DNN" baseline of thesis 003 (§3.3.2, Tables 3.1/4.1).
* :class:`UNet3D` (:mod:`.unet`) — the 3-D U-Net: the baseline of paper 001 and, through its keyword arguments,
  the Sketcher (with the noise input z) and Refiner generators of thesis 003 §3.2.4.
* :class:`PatchDiscriminator3D` (:mod:`.patchgan`) — the conditional 3-D discriminator on non-overlapping patches
  of the Sketcher and Refiner cGANs (thesis 003 §3.2.4).
* :class:`FlexibleSelfAttention3D` (:mod:`.attention`) — the flexible self-attention layer (thesis 003 §4.2.2).
* :class:`CFSAGANGenerator`, :class:`CFSAGANDiscriminator` (:mod:`.cfsagan`) — CF-SAGAN (thesis 003 §4.2.6).

Model cards store an architecture name from :data:`ARCHITECTURES` and the constructor's keyword arguments;
:func:`build_network` turns them back into a module. Every network exposes those arguments, defaults included, as
its ``arguments`` attribute. Initialisation is He-normal and draws only from torch's global generator, so two
networks built with the same arguments after the same ``torch.manual_seed`` are identical (see :mod:`._blocks`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from msynth.models.networks.attention import FlexibleSelfAttention3D
from msynth.models.networks.cfsagan import CFSAGANDiscriminator, CFSAGANGenerator
from msynth.models.networks.fcn import FCN3D, TwoLayerCNN3D
from msynth.models.networks.patchgan import PatchDiscriminator3D
from msynth.models.networks.unet import UNet3D

__all__ = ["ARCHITECTURES", "CFSAGANDiscriminator", "CFSAGANGenerator", "FCN3D", "FlexibleSelfAttention3D",
           "PatchDiscriminator3D", "TwoLayerCNN3D", "UNet3D", "build_network"]

#: architecture names as model cards store them
ARCHITECTURES: dict[str, type[nn.Module]] = {
    "fcn": FCN3D,
    "unet": UNet3D,
    "cnn2": TwoLayerCNN3D,
    "patch-discriminator": PatchDiscriminator3D,
    "cf-sagan-generator": CFSAGANGenerator,
    "cf-sagan-discriminator": CFSAGANDiscriminator,
}


def _fcn_arguments_of_old_cards(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """FCN arguments of cards written before msynth named them as paper 001 does.

    Those cards store ``features`` (now ``filters``) and ``depth``, which counted the output layer too
    (``hidden_layers = depth - 1``); the network and its weights are the same.
    """
    arguments = dict(arguments)
    if "features" in arguments:
        arguments["filters"] = arguments.pop("features")
    if "depth" in arguments:
        arguments["hidden_layers"] = arguments.pop("depth") - 1
    return arguments


def build_network(architecture: str, arguments: Mapping[str, Any]) -> nn.Module:
    """Instantiate a network from a model card's ``architecture`` name and constructor ``arguments``.

    Parameters
    ----------
    architecture : str
        A key of :data:`ARCHITECTURES`.
    arguments : Mapping[str, Any]
        Keyword arguments of the constructor, including ``in_channels``.

    Returns
    -------
    torch.nn.Module
        The freshly initialised network (load the card's weights into it afterwards). Its ``arguments`` attribute
        holds the full set of constructor arguments, defaults included, ready to be stored in a card.

    Raises
    ------
    ValueError
        For an unknown architecture (the message lists the known ones), an argument the constructor does not take,
        or an out-of-range value.

    Examples
    --------
    >>> build_network("fcn", {"in_channels": 2, "filters": 8}).filters
    8
    """
    if architecture == "fcn":
        arguments = _fcn_arguments_of_old_cards(arguments)
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    try:
        return ARCHITECTURES[architecture](**dict(arguments))
    except TypeError as error:  # a missing or unknown keyword
        raise ValueError(f"bad arguments for architecture {architecture!r} ({dict(arguments)!r}): {error}") from None
