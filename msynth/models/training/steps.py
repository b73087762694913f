"""Training steps: what one optimiser update does, supervised (paper 001, thesis 003 baselines) or adversarial
(the conditional GANs of thesis 003).

A step object owns its networks and optimisers; :func:`msynth.models.training.loop.train_model` calls it once per
patch (:class:`~msynth.models.training.patches.Batch`, tensors ``N C D H W``), checkpoints its ``state_dict``, and
validates and keeps its ``network`` (the network that predicts). Supervised losses take ``(prediction, target, roi)``:
``roi`` holds the integer region labels of :mod:`msynth.models.losses` (other, NAWM, lesion) or is ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from msynth.models import losses
from msynth.models.card import LossName, OptimizerSpec, Stage
from msynth.models.networks import build_network
from msynth.models.networks._blocks import check_int
from msynth.models.training.patches import Batch

__all__ = [
    "AdversarialLoss", "AdversarialStep", "SupervisedLoss", "SupervisedStep", "TrainingStep", "build_step",
    "make_optimizer", "supervised_loss",
]

#: ``loss(prediction, target, roi)``: a scalar tensor.
SupervisedLoss = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


class AdversarialLoss(Protocol):
    """``adversarial_loss(logits, real, *, smoothing)``, as :func:`msynth.models.losses.adversarial_loss`."""

    def __call__(self, logits: torch.Tensor, real: bool, *, smoothing: bool) -> torch.Tensor: ...


class TrainingStep(Protocol):
    """What the training loop needs from a step: the predicting ``network``, the spatial ``multiple`` every
    network of the step accepts, and the methods below."""

    network: nn.Module
    multiple: int

    def __call__(self, batch: Batch) -> float: ...

    def train(self) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


def make_optimizer(spec: OptimizerSpec, parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """The torch optimiser a card's :class:`~msynth.models.card.OptimizerSpec` describes."""
    if spec.name == "adam":
        return torch.optim.Adam(parameters, lr=spec.lr, betas=spec.betas)
    return torch.optim.SGD(parameters, lr=spec.lr, momentum=spec.momentum)


def _multiple(network: nn.Module) -> int:
    return int(getattr(network, "multiple", 1))


def _mse(prediction: torch.Tensor, target: torch.Tensor, roi: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error over the patch (paper 001 eq. 1); ``roi`` is not used."""
    return F.mse_loss(prediction, target)


def _needs_roi(name: str, roi: torch.Tensor | None) -> torch.Tensor:
    if roi is None:
        raise ValueError(f"loss {name!r} weights lesion, NAWM and other voxels: the training volumes need ROI "
                         "labels (msynth.models.data.Volume.roi)")
    return roi


def supervised_loss(name: LossName) -> SupervisedLoss:
    """The loss a card's stage names, as ``loss(prediction, target, roi)``.

    ``'mse'``: paper 001 eq. 1; ``'l1'``: mean absolute error (thesis 003 eq. 3.4); ``'wl1'``: the mean over
    lesion, NAWM and other voxels of each region's mean absolute error (eq. 3.5); ``'nwl1'``: the normalised weighted
    L1 (eq. 4.4), from :mod:`msynth.models.losses`.
    """
    if name == "mse":
        return _mse
    if name == "l1":
        return lambda prediction, target, roi: losses.l1_loss(prediction, target)
    if name == "wl1":
        return lambda prediction, target, roi: losses.weighted_l1_loss(prediction, target, _needs_roi(name, roi))
    if name == "nwl1":
        return lambda prediction, target, roi: losses.normalized_weighted_l1_loss(prediction, target,
                                                                                  _needs_roi(name, roi))
    raise ValueError(f"loss must be one of mse, l1, wl1, nwl1, got {name!r}")


class SupervisedStep:
    """One optimiser update of a network on a supervised loss.

    Parameters
    ----------
    network
        Maps ``N C_in D H W`` inputs to ``N C_out D H W`` predictions.
    loss
        ``loss(prediction, target, roi)`` (:func:`supervised_loss`).
    optimizer
        Over the network's parameters.
    """

    def __init__(self, network: nn.Module, loss: SupervisedLoss, optimizer: torch.optim.Optimizer) -> None:
        self.network = network
        self.loss = loss
        self.optimizer = optimizer
        self.multiple = _multiple(network)

    def train(self) -> None:
        """Put the network in training mode (dropout, batch statistics)."""
        self.network.train()

    def __call__(self, batch: Batch) -> float:
        """Update the network on ``batch``; returns the loss before the update."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(self.network(batch.inputs), batch.target, batch.roi)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def state_dict(self) -> dict[str, Any]:
        """Network and optimiser state, for checkpoints."""
        return {"network": self.network.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])


class AdversarialStep:
    """One generator update of a conditional GAN, after ``d_steps_per_g_step`` discriminator updates.

    Thesis 003 eq. 3.6: the generator G minimises ``L_adv(G) + weight · L_sup(G)``, the discriminator D maximises
    ``L_adv``; D judges a target given its condition, ``discriminator(inputs, target)`` (``N C_in D H W`` and
    ``N C_out D H W`` → per-patch logits, :class:`~msynth.models.networks.PatchDiscriminator3D`). §4.3.1 updates D
    twice per G update and smooths D's labels (real from U(0.9, 1), fake from U(0, 0.1)); G's adversarial term
    takes plain labels. Each discriminator update sees the batch's real target and a fresh prediction of G,
    detached. Label noise comes from torch's global generator, which the training loop reseeds every epoch.

    Parameters
    ----------
    generator, discriminator
        The two networks.
    supervised
        ``loss(prediction, target, roi)`` (:func:`supervised_loss`: L1, WL1 or NWL1 in the thesis).
    adversarial
        ``adversarial_loss(logits, real, *, smoothing)`` (:func:`msynth.models.losses.adversarial_loss`).
    generator_optimizer, discriminator_optimizer
        Over each network's parameters.
    weight
        λ of eq. 3.6, the weight of the supervised loss.
    d_steps_per_g_step
        Discriminator updates per generator update (thesis: 2).
    label_smoothing
        Smooth the discriminator's labels.
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module, *, supervised: SupervisedLoss,
                 adversarial: AdversarialLoss, generator_optimizer: torch.optim.Optimizer,
                 discriminator_optimizer: torch.optim.Optimizer, weight: float, d_steps_per_g_step: int = 2,
                 label_smoothing: bool = True) -> None:
        if not weight > 0:
            raise ValueError(f"weight must be positive, got {weight!r}")
        check_int("d_steps_per_g_step", d_steps_per_g_step, 1)
        self.network = generator
        self.discriminator = discriminator
        self.supervised = supervised
        self.adversarial = adversarial
        self.generator_optimizer = generator_optimizer
        self.discriminator_optimizer = discriminator_optimizer
        self.weight = float(weight)
        self.d_steps_per_g_step = d_steps_per_g_step
        self.label_smoothing = label_smoothing
        self.multiple = math.lcm(_multiple(generator), _multiple(discriminator))
        #: discriminator loss of the last update, for logs
        self.discriminator_loss = float("nan")

    def train(self) -> None:
        """Put both networks in training mode."""
        self.network.train()
        self.discriminator.train()

    def _discriminator_update(self, batch: Batch) -> float:
        with torch.no_grad():
            fake = self.network(batch.inputs)
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        loss = (self.adversarial(self.discriminator(batch.inputs, batch.target), True, smoothing=self.label_smoothing)
                + self.adversarial(self.discriminator(batch.inputs, fake), False, smoothing=self.label_smoothing))
        loss.backward()
        self.discriminator_optimizer.step()
        return float(loss.detach())

    def __call__(self, batch: Batch) -> float:
        """Update D ``d_steps_per_g_step`` times, then G once; returns G's supervised loss before its update."""
        for _ in range(self.d_steps_per_g_step):
            self.discriminator_loss = self._discriminator_update(batch)
        self.generator_optimizer.zero_grad(set_to_none=True)
        prediction = self.network(batch.inputs)
        supervised = self.supervised(prediction, batch.target, batch.roi)
        fooled = self.adversarial(self.discriminator(batch.inputs, prediction), True, smoothing=False)
        (fooled + self.weight * supervised).backward()
        self.generator_optimizer.step()  # D's gradients from this pass are cleared before its next update
        return float(supervised.detach())

    def state_dict(self) -> dict[str, Any]:
        """Both networks and optimisers, for checkpoints."""
        return {"network": self.network.state_dict(), "optimizer": self.generator_optimizer.state_dict(),
                "discriminator": self.discriminator.state_dict(),
                "discriminator_optimizer": self.discriminator_optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.network.load_state_dict(state["network"])
        self.generator_optimizer.load_state_dict(state["optimizer"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.discriminator_optimizer.load_state_dict(state["discriminator_optimizer"])


def build_step(stage: Stage, device: torch.device | str = "cpu") -> SupervisedStep | AdversarialStep:
    """The step that trains a card's :class:`~msynth.models.card.Stage`, its networks freshly initialised.

    Networks draw their initial weights from torch's global generator: seed it first for reproducible runs. The
    generator is built (and its optimiser made) before the discriminator.
    """
    network = build_network(stage.network.architecture, stage.network.arguments).to(device)
    optimizer = make_optimizer(stage.optimizer, network.parameters())
    loss = supervised_loss(stage.loss)
    if stage.adversarial is None:
        return SupervisedStep(network, loss, optimizer)
    spec = stage.adversarial
    discriminator = build_network(spec.discriminator.architecture, spec.discriminator.arguments).to(device)
    return AdversarialStep(network, discriminator, supervised=loss, adversarial=losses.adversarial_loss,
                           generator_optimizer=optimizer,
                           discriminator_optimizer=make_optimizer(spec.optimizer, discriminator.parameters()),
                           weight=spec.weight, d_steps_per_g_step=spec.d_steps_per_g_step,
                           label_smoothing=spec.label_smoothing)
