"""The settings of one training run: everything that changes the weights, except the data."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from msynth.models.card import AdversarialSpec, LossName, NetworkSpec, OptimizerName, OptimizerSpec, Stage
from msynth.models.fields import FieldError, Record

__all__ = ["TrainingConfig"]


@dataclass(frozen=True)
class TrainingConfig(Record):
    """Settings of one training run (one stage: a network, its loss and optimiser, the loop's settings).

    Validated like a model card (:class:`~msynth.models.fields.Record`): a bad value raises a ``ValueError`` that
    names the field.

    Attributes
    ----------
    architecture
        Key of :data:`msynth.models.networks.ARCHITECTURES`.
    arguments
        Constructor arguments other than ``in_channels`` and ``out_channels`` (filled in from the data).
    optimizer
        ``'sgd'`` (paper 001) or ``'adam'`` (thesis 003).
    lr
        Learning rate (paper 001: 5e-4 with SGD).
    momentum
        SGD momentum (paper 001: plain SGD, 0).
    betas
        Adam's moment decay rates (torch's defaults).
    loss
        Supervised loss (:data:`~msynth.models.card.LOSS_NAMES`; paper 001: ``'mse'``). The ROI-weighted losses
        need volumes with ROI labels (:attr:`msynth.models.data.Volume.roi`).
    adversarial
        The discriminator side of a GAN stage, its network's arguments without ``in_channels`` and
        ``image_channels`` (the condition's and the target's channels, filled in from the data); ``None``:
        supervised training.
    max_epochs
        Upper bound on epochs.
    patch_size
        Edge of the cubic training patches, in voxels (clipped to the volume).
    patches_per_session
        Patches drawn from each training session per epoch (one optimiser step each).
    strip_length, strips
        ``q`` and ``p`` of the UP stopping rule (paper 001: 5 and 3).
    seed
        Seed of initialisation, patches and shuffling.
    intensity_normalisation
        ``'image'`` (default: each image z-scored by its own brain statistics) or ``'cohort'`` (statistics of the
        training set, as paper 001); see :func:`msynth.models.data.normalise`.
    target_normalisation
        How the target is z-scored, when not as the inputs (``None``). ``'cohort'`` keeps a quantitative target in
        its units up to the training set's fixed affine map (the DVR of thesis 003), which inference inverts with
        the card's statistics; ``'image'`` z-scores each target by its own brain statistics (an uncalibrated FLAIR).
    window
        Sliding-window edge for validation predictions.
    patch_sampling
        ``'random'``: ``patches_per_session`` patches centred on random brain voxels per session and epoch;
        ``'grid'``: every patch of a regular grid with 50 % overlap that holds brain voxels, each epoch in a new
        order (thesis 003 §4.3.1: "50 % overlapped 64 × 64 × 64 patches").
    random_flips
        Mirror each training patch (inputs and target together) along each axis with probability 1/2: an
        augmentation that paper 001 does not use, for small cohorts.
    random_rotations, random_scaling
        Thesis 003 §4.3.1's augmentation: each training patch is, with equal probability, left as it is, rotated
        by 90, 180 or 270° in the axial plane (``random_rotations``), or scaled by 0.75 or 1.25
        (``random_scaling``); see :func:`msynth.models.training.patches.random_transform`.
    """

    architecture: str = "fcn"
    arguments: dict[str, Any] = field(default_factory=lambda: {"filters": 64, "hidden_layers": 3})
    optimizer: OptimizerName = "sgd"
    lr: float = 5e-4
    momentum: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    loss: LossName = "mse"
    adversarial: AdversarialSpec | None = None
    max_epochs: int = 200
    patch_size: int = 64
    patches_per_session: int = 8
    strip_length: int = 5
    strips: int = 3
    seed: int = 42
    intensity_normalisation: Literal["cohort", "image"] = "image"
    target_normalisation: Literal["cohort", "image"] | None = None
    window: int = 96
    patch_sampling: Literal["random", "grid"] = "random"
    random_flips: bool = False
    random_rotations: bool = False
    random_scaling: bool = False

    def _check(self) -> None:
        self.optimizer_spec.name  # building the spec checks lr, momentum and betas, naming the field
        for name in ("max_epochs", "patch_size", "patches_per_session", "strip_length", "strips", "window"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be a positive integer, got {getattr(self, name)!r}")
        if self.seed < 0:
            raise FieldError("seed", f"must be a non-negative integer, got {self.seed!r}")

    @property
    def target_scope(self) -> Literal["cohort", "image"]:
        """How the target is z-scored: ``target_normalisation``, or as the inputs."""
        return self.target_normalisation or self.intensity_normalisation

    @property
    def augmentation(self) -> tuple[str, ...]:
        """The augmentations switched on, as a card records them (:data:`~msynth.models.card.AUGMENTATIONS`)."""
        return tuple(name for name in ("random_flips", "random_rotations", "random_scaling") if getattr(self, name))

    @property
    def optimizer_spec(self) -> OptimizerSpec:
        """The network's optimiser, as a card records it."""
        try:
            return OptimizerSpec(self.optimizer, self.lr, self.momentum, self.betas)
        except FieldError as err:
            raise FieldError({"name": "optimizer"}.get(err.name, err.name), err.problem) from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary; ``TrainingConfig(**config.to_dict()) == config``."""
        return asdict(self)

    def stage(self, name: str, *, in_channels: int, out_channels: int, weights: str) -> Stage:
        """The card's record of the stage this configuration trains, with the networks' channels filled in.

        Parameters
        ----------
        name
            Stage name (``'synthesis'``, ``'sketcher'``, ``'refiner'``).
        in_channels, out_channels
            Channels of the network's input and output.
        weights
            The stage's weights file in the model folder.
        """
        network = NetworkSpec(self.architecture, {**self.arguments, "in_channels": in_channels,
                                                  "out_channels": out_channels})
        adversarial = self.adversarial
        if adversarial is not None:
            arguments = {**adversarial.discriminator.arguments, "in_channels": in_channels,
                         "image_channels": out_channels}
            discriminator = NetworkSpec(adversarial.discriminator.architecture, arguments)
            adversarial = AdversarialSpec(discriminator, adversarial.optimizer, adversarial.weight,
                                          adversarial.d_steps_per_g_step, adversarial.label_smoothing)
        return Stage(name=name, network=network, loss=self.loss, optimizer=self.optimizer_spec, weights=weights,
                     adversarial=adversarial)
