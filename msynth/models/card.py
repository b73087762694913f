"""Model cards: what a trained synthesis model needs at inference time and what a reader needs to trust it.

A model directory holds ``model_card.json`` and one weights file per stage:

* ``model_card.json`` — a :class:`ModelCard`, modelled on the ``metadata.json`` of MONAI bundles: the **target** it
  predicts (:data:`TARGETS`: a FLAIR, paper 001; or a PIB DVR map, thesis 003), the ordered input modality keys, the
  voxel size the model works at, the z-score statistics of each input and of the target, its **stages** (one network
  for the FLAIR FCN; a Sketcher then a Refiner for the Sketcher-Refiner GANs of thesis 003 §3.2), each with its
  network (architecture name and constructor arguments), loss, optimiser and, for a GAN, its discriminator; how it
  was trained (subjects as salted SHA-256 hashes, data source, licence and citation, the exact command, seed,
  epochs, cross-validation metrics per fold) and the software versions;
* ``model.pt`` (and one more file per later stage) — a network's ``state_dict`` only, loadable with
  ``torch.load(..., weights_only=True)``.

Validation is driven by the dataclasses: every part of a card is a :class:`~msynth.models.fields.Record`, whose
field annotations say what JSON a field takes and whose ``_check`` adds the constraints a type cannot say (a positive
standard deviation, the canonical order of the inputs). A bad field raises a
:class:`~msynth.models.fields.FieldError` that names it (``'training.cv[0].mse'``); :func:`read_card` adds the
file. Version-1 cards (one network, a ``task`` and an
``output``, the optimiser in ``training``) are read as one-stage cards (:func:`upgrade_v1`).

This module does not import torch (the command line reads cards before any heavy import); whether an architecture
exists is checked when its network is built (:func:`msynth.models.inference.load_model`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import msynth
from msynth.models.fields import FieldError, Record, parse

__all__ = [
    "AUGMENTATIONS", "CARD_NAME", "CHANNELS", "LOSS_NAMES", "MODALITY_KEYS", "SCHEMA_VERSION", "TARGETS",
    "WEIGHTS_NAME", "AdversarialSpec", "FoldMetrics", "ModelCard", "NetworkSpec", "Normalisation", "OptimizerSpec",
    "Stage", "Target", "TrainingRecord", "channels_of", "hash_subject", "read_card", "software_versions",
    "upgrade_v1", "write_card",
]

#: Modality keys of the design contract, in their canonical order (inputs are stored in this order).
MODALITY_KEYS: tuple[str, ...] = ("T1w", "T2w", "PDw", "FLAIR", "T1SE", "DIR", "MTR", "DWI", "PET")
#: Image channels each modality key contributes to a network (one, except DWI: the thesis 003 DTI maps).
CHANNELS: dict[str, tuple[str, ...]] = {
    "T1w": ("T1w",), "T2w": ("T2w",), "PDw": ("PDw",), "FLAIR": ("FLAIR",), "T1SE": ("T1SE",), "DIR": ("DIR",),
    "MTR": ("MTR",), "DWI": ("FA", "RD", "AD"), "PET": ("DVR",),
}
#: Supervised losses a stage may train with: MSE (paper 001 eq. 1), L1, the ROI-weighted L1 of thesis 003 eq. 3.5
#: and its normalised form, eq. 4.4 (:mod:`msynth.models.training.steps`).
LOSS_NAMES: tuple[str, ...] = ("mse", "l1", "wl1", "nwl1")
#: Training-data augmentations a card may record.
AUGMENTATIONS: tuple[str, ...] = ("random_flips", "random_rotations", "random_scaling")
CARD_NAME = "model_card.json"
WEIGHTS_NAME = "model.pt"
SCHEMA_VERSION = 2

IntensityNormalisation = Literal["cohort", "image"]
OptimizerName = Literal["sgd", "adam"]
LossName = Literal["mse", "l1", "wl1", "nwl1"]
Augmentation = Literal["random_flips", "random_rotations", "random_scaling"]
TargetName = Literal["FLAIR", "DVR"]


@dataclass(frozen=True)
class Target:
    """An image a model predicts, and how the participant level names it (DESIGN.md "Participant outputs").

    Attributes
    ----------
    modality
        Modality key of the acquired image it stands for (``'FLAIR'``, ``'PET'``).
    channel
        Channel name of the predicted image (:data:`CHANNELS`: ``'FLAIR'``, ``'DVR'``).
    datatype, suffix, entities
        Derivative name: ``<datatype>/sub-<L>[_ses-<S>]_<entities>_<suffix>.nii.gz``.
    noun
        The image in a sentence of a methods section (``'FLAIR image'``).
    description
        Sidecar ``Description``.
    """

    modality: str
    channel: str
    datatype: str
    suffix: str
    entities: dict[str, str]
    noun: str
    description: str


#: What each target predicts and where its synthetic image goes.
TARGETS: dict[str, Target] = {
    "FLAIR": Target("FLAIR", "FLAIR", "anat", "FLAIR", {"space": "T1w", "desc": "synth"}, "FLAIR image",
                    "Synthetic FLAIR (msynth model), 0 outside the brain mask."),
    "DVR": Target("PET", "DVR", "pet", "mimap", {"trc": "PIB", "space": "T1w", "desc": "synth", "meas": "DVR"},
                  "[11C]PIB DVR map", "Synthetic [11C]PIB DVR map (msynth model), 0 outside the brain mask."),
}


def channels_of(keys: Iterable[str]) -> tuple[str, ...]:
    """The image channels of modality keys, in order.

    >>> channels_of(['T1w', 'DWI'])
    ('T1w', 'FA', 'RD', 'AD')
    """
    return tuple(channel for key in keys for channel in CHANNELS[key])


def hash_subject(subject: str, salt: str) -> str:
    """Salted SHA-256 of a subject label, as stored in a card (raw IDs never are).

    The label is taken without its ``sub-`` prefix, so ``'01'`` and ``'sub-01'`` hash alike. Whoever holds the salt
    can check whether a subject was in a model's training set; nobody else can recover the labels.

    >>> hash_subject('sub-01', 'pepper') == hash_subject('01', 'pepper')
    True
    >>> len(hash_subject('01', 'pepper'))
    64
    """
    label = subject.removeprefix("sub-")
    return hashlib.sha256(f"{salt}:{label}".encode()).hexdigest()


def software_versions() -> dict[str, str]:
    """msynth, torch, MONAI and Python versions of this process."""
    import monai
    import torch

    return {"msynth": msynth.__version__, "torch": torch.__version__, "monai": monai.__version__,
            "python": platform.python_version()}


def _positive(value: float, name: str, what: str = "a positive number") -> None:
    if not (math.isfinite(value) and value > 0):
        raise FieldError(name, f"must be {what}, got {value!r}")


def _at_least(value: int, name: str, low: int) -> None:
    if value < low:
        raise FieldError(name, f"must be an integer >= {low}, got {value!r}")


def _non_empty(value: str, name: str) -> None:
    if not value.strip():
        raise FieldError(name, f"must be a non-empty string, got {value!r}")


# ----------------------------------------------------------------------------------------------------------------
# the parts of a card
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Normalisation(Record):
    """z-score statistics of one image type: ``(x - mean) / std`` inside the brain, 0 outside.

    Attributes
    ----------
    mean, std
        Mean and standard deviation over all brain voxels of all training sessions.
    """

    mean: float
    std: float

    def _check(self) -> None:
        if not math.isfinite(self.mean):
            raise FieldError("mean", f"must be a finite number, got {self.mean!r}")
        _positive(self.std, "std")


@dataclass(frozen=True)
class NetworkSpec(Record):
    """A network: a key of :data:`msynth.models.networks.ARCHITECTURES` and its constructor's keyword arguments.

    In a card the arguments are complete (``in_channels`` and ``out_channels`` included); in a training
    configuration the channels are filled in from the data.
    """

    architecture: str
    arguments: dict[str, Any] = field(default_factory=dict)

    def _check(self) -> None:
        _non_empty(self.architecture, "architecture")


@dataclass(frozen=True)
class OptimizerSpec(Record):
    """An optimiser and its settings (batch size 1: one patch per step).

    Attributes
    ----------
    name
        ``'sgd'`` (paper 001: plain SGD, 5e-4) or ``'adam'`` (thesis 003: 1e-4 and 5e-5).
    lr
        Learning rate.
    momentum
        SGD momentum (paper 001: 0); unused by Adam.
    betas
        Adam's decay rates of the moment estimates (torch's and Keras's defaults, 0.9 and 0.999: the thesis gives
        none); unused by SGD.
    """

    name: OptimizerName
    lr: float
    momentum: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)

    def _check(self) -> None:
        _positive(self.lr, "lr")
        if not 0 <= self.momentum < 1:
            raise FieldError("momentum", f"must be in [0, 1), got {self.momentum!r}")
        if not all(0 <= beta < 1 for beta in self.betas):
            raise FieldError("betas", f"must be two numbers in [0, 1), got {list(self.betas)!r}")


@dataclass(frozen=True)
class AdversarialSpec(Record):
    """The adversarial half of a conditional GAN stage (thesis 003 §3.2.2, §4.2.3).

    The generator minimises ``adversarial + weight · supervised loss`` (eq. 3.6); the discriminator judges a real
    or generated target given the condition, the stage's inputs (``in_channels`` and ``image_channels`` of
    :class:`~msynth.models.networks.PatchDiscriminator3D`).

    Attributes
    ----------
    discriminator
        The discriminator network.
    optimizer
        The discriminator's optimiser.
    weight
        λ, the weight of the supervised loss in the generator's objective (eq. 3.6).
    d_steps_per_g_step
        Discriminator updates per generator update (thesis 003 §4.3.1: 2).
    label_smoothing
        One-sided label smoothing: real labels drawn from U(0.9, 1), fake ones from U(0, 0.1) (§4.3.1).
    """

    discriminator: NetworkSpec
    optimizer: OptimizerSpec
    weight: float
    d_steps_per_g_step: int = 2
    label_smoothing: bool = True

    def _check(self) -> None:
        _positive(self.weight, "weight")
        _at_least(self.d_steps_per_g_step, "d_steps_per_g_step", 1)


@dataclass(frozen=True)
class Stage(Record):
    """One trained network of a model: the FLAIR FCN, a Sketcher, a Refiner.

    Stage 0 takes the card's input channels; each later stage takes them followed by the previous stage's
    prediction (z-scored), as the Refiner takes the MRI and the Sketcher's DVR (thesis 003 §3.2.1).

    Attributes
    ----------
    name
        ``'synthesis'`` (a one-stage model), ``'sketcher'``, ``'refiner'``.
    network
        The network that predicts (the generator of a GAN), with its complete constructor arguments.
    loss
        The supervised loss (:data:`LOSS_NAMES`).
    optimizer
        The network's optimiser.
    weights
        File of the network's ``state_dict`` in the model folder.
    adversarial
        The discriminator, its optimiser and the balance of the losses for a GAN stage; ``None`` otherwise.
    """

    name: str
    network: NetworkSpec
    loss: LossName
    optimizer: OptimizerSpec
    weights: str = WEIGHTS_NAME
    adversarial: AdversarialSpec | None = None

    def _check(self) -> None:
        _non_empty(self.name, "name")
        if Path(self.weights).name != self.weights or not self.weights.endswith(".pt"):
            raise FieldError("weights", f"must be a .pt file name in the model folder, got {self.weights!r}")


@dataclass(frozen=True)
class FoldMetrics(Record):
    """Held-out performance of one cross-validation fold (inside the brain, in the target's units).

    Attributes
    ----------
    fold
        Fold index, from 0.
    n_train, n_test
        Subjects used to fit (training plus validation) and held out.
    mse, psnr, ssim
        Means over the held-out sessions (for a DVR model, PSNR is thesis 003 eq. 3.9: the peak is the acquired
        map's maximum in the brain).
    epochs
        Epoch whose weights were kept (lowest validation error); of the first stage for a multi-stage model.
    stage_epochs
        The kept epoch of every stage, in order, for a multi-stage model; empty for one stage.
    roi_discrepancy, roi_mae
        For models trained with region labels, per region (``'lesion'``, ``'NAWM'``, ``'other'``: brain voxels
        that are neither): the absolute difference of the mean predicted and acquired values (the "myelin content
        prediction discrepancy" of thesis 003 Table 3.2), and the mean absolute voxel error; means over the
        held-out sessions that have the region (NaN when none has). Empty otherwise.
    """

    fold: int
    n_train: int
    n_test: int
    mse: float
    psnr: float
    ssim: float
    epochs: int
    stage_epochs: tuple[int, ...] = ()
    roi_discrepancy: dict[str, float] = field(default_factory=dict)
    roi_mae: dict[str, float] = field(default_factory=dict)

    def _check(self) -> None:
        for name in ("fold", "n_train", "n_test", "epochs"):
            _at_least(getattr(self, name), name, 0)
        for index, epochs in enumerate(self.stage_epochs):
            _at_least(epochs, f"stage_epochs[{index}]", 0)


@dataclass(frozen=True)
class TrainingRecord(Record):
    """How a model was trained (the networks' settings are in its :class:`Stage` entries).

    Attributes
    ----------
    subjects
        Salted SHA-256 hashes of the training subjects (:func:`hash_subject`), sorted.
    salt_fingerprint
        SHA-256 of the salt, so its holder can tell which salt the hashes used (the salt is not stored).
    n_sessions
        Training sessions (examples) used by the final model.
    data_source, data_license, data_citation
        Where the training data came from, under which licence, and how to cite it.
    command
        The command line that trained the model.
    seed
        Seed of every random draw (initialisation, patches, folds).
    epochs
        Epochs the final model was trained for (its first stage, for a multi-stage model).
    patch_size
        Edge length of the cubic training patches (voxels).
    patch_sampling
        ``'random'`` (brain-centred patches) or ``'grid'`` (every patch of a grid with 50 % overlap).
    stage_epochs
        Epochs each stage of a multi-stage final model was trained for, in order; empty for one stage.
    early_stopping
        Strip length ``q`` and number of strips ``p`` of the stopping rule.
    batch_size
        Patches per optimiser step.
    augmentation
        Training-data augmentations (:data:`AUGMENTATIONS`); empty: none.
    cv
        One :class:`FoldMetrics` per cross-validation fold (empty when not cross-validated).
    """

    subjects: tuple[str, ...]
    salt_fingerprint: str
    n_sessions: int
    data_source: str
    data_license: str
    data_citation: str
    command: str
    seed: int
    epochs: int
    patch_size: int
    early_stopping: dict[str, int]
    batch_size: int = 1
    patch_sampling: Literal["random", "grid"] = "random"
    stage_epochs: tuple[int, ...] = ()
    augmentation: tuple[Augmentation, ...] = ()
    cv: tuple[FoldMetrics, ...] = ()

    def _check(self) -> None:
        if not self.subjects or not all(len(s) == 64 and all(c in "0123456789abcdef" for c in s)
                                        for s in self.subjects):
            raise FieldError("subjects", "must be a non-empty list of SHA-256 hex digests (never raw labels)")
        _non_empty(self.salt_fingerprint, "salt_fingerprint")
        _non_empty(self.command, "command")
        for name, low in (("n_sessions", 1), ("seed", 0), ("epochs", 1), ("patch_size", 1), ("batch_size", 1)):
            _at_least(getattr(self, name), name, low)
        missing = {"strip_length", "strips"} - set(self.early_stopping)
        if missing:
            raise FieldError(f"early_stopping.{sorted(missing)[0]}", "is missing")
        for key, value in self.early_stopping.items():
            _at_least(value, f"early_stopping.{key}", 1)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


@dataclass(frozen=True)
class ModelCard(Record):
    """Everything needed to run a trained model and to judge it (written as ``model_card.json``).

    Attributes
    ----------
    name
        Model name (shown in logs, chosen by ``--model``).
    target
        What the model predicts, a key of :data:`TARGETS` (``'FLAIR'``, ``'DVR'``).
    inputs
        Input modality keys, in the order of the network's channels (a subset of :data:`MODALITY_KEYS`).
    voxel_size_mm
        Isotropic voxel size the model was trained at, or ``None`` for the images' own grid.
    normalisation
        :class:`Normalisation` for every channel of the inputs and of the target (:data:`CHANNELS`: the key
        itself, except DWI → FA, RD, AD), over all brain voxels of the training sessions.
    intensity_normalisation
        How images are z-scored before the network: ``'cohort'`` with the ``normalisation`` statistics (paper 001
        §2.3), or ``'image'`` with each image's own brain statistics. In both cases a prediction is returned to
        intensities with the target's ``normalisation`` statistics.
    stages
        The networks, run in order (:class:`Stage`).
    training
        :class:`TrainingRecord`.
    versions
        Software versions at training time (:func:`software_versions`).
    created
        ISO 8601 UTC date and time of training.
    schema_version
        Version of this card format (:data:`SCHEMA_VERSION`).
    """

    name: str
    target: TargetName
    inputs: tuple[str, ...]
    voxel_size_mm: float | None
    normalisation: dict[str, Normalisation]
    intensity_normalisation: IntensityNormalisation
    stages: tuple[Stage, ...]
    training: TrainingRecord
    versions: dict[str, str] = field(default_factory=software_versions)
    created: str = field(default_factory=_now)
    schema_version: int = SCHEMA_VERSION

    @property
    def output(self) -> str:
        """Modality key of the acquired image the target stands for (``'FLAIR'``, ``'PET'``)."""
        return TARGETS[self.target].modality

    def _check(self) -> None:
        _non_empty(self.name, "name")
        self._check_inputs()
        if self.voxel_size_mm is not None:
            _positive(self.voxel_size_mm, "voxel_size_mm", "a positive number or null")
        expected = channels_of((*self.inputs, self.output))
        for channel in expected:
            if channel not in self.normalisation:
                raise FieldError(f"normalisation.{channel}", "is missing")
        extra = sorted(set(self.normalisation) - set(expected))
        if extra:
            raise FieldError(f"normalisation.{extra[0]}", "is not a channel of the inputs or the target")
        self._check_stages()
        for package in ("msynth", "torch", "python"):
            if package not in self.versions:
                raise FieldError(f"versions.{package}", "is missing")
        try:
            _dt.datetime.fromisoformat(self.created)
        except ValueError:
            raise FieldError("created", f"must be an ISO 8601 date, got {self.created!r}") from None
        if self.schema_version != SCHEMA_VERSION:
            raise FieldError("schema_version", f"must be {SCHEMA_VERSION} (this msynth's card format), "
                                                   f"got {self.schema_version!r}")

    def _check_inputs(self) -> None:
        if not self.inputs:
            raise FieldError("inputs", "must be a non-empty list of modality keys")
        for key in self.inputs:
            if key not in MODALITY_KEYS:
                raise FieldError("inputs", f"has unknown modality key {key!r}; known: {' '.join(MODALITY_KEYS)}")
        if len(set(self.inputs)) != len(self.inputs):
            raise FieldError("inputs", f"lists a key twice: {list(self.inputs)!r}")
        if list(self.inputs) != sorted(self.inputs, key=MODALITY_KEYS.index):
            raise FieldError("inputs", f"must follow the canonical order {' '.join(MODALITY_KEYS)}, "
                                           f"got {list(self.inputs)!r}")
        if self.output in self.inputs:
            raise FieldError("inputs", f"contains the target's modality key {self.output!r}")

    def _check_stages(self) -> None:
        if not self.stages:
            raise FieldError("stages", "must list at least one stage")
        for attribute, plural in (("name", "names"), ("weights", "weights files")):
            values = [getattr(stage, attribute) for stage in self.stages]
            if len(set(values)) != len(values):
                raise FieldError("stages", f"must have distinct {plural}, got {values!r}")
        n_inputs, n_target = len(channels_of(self.inputs)), len(channels_of([self.output]))
        for index, stage in enumerate(self.stages):
            expected = n_inputs if index == 0 else n_inputs + n_target
            arguments = stage.network.arguments
            if arguments.get("in_channels") != expected:
                raise FieldError(f"stages[{index}].network.arguments.in_channels",
                                     f"must equal the number of input channels ({expected}), "
                                     f"got {arguments.get('in_channels')!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "model card") -> ModelCard:
        """Build and validate a card from its JSON dictionary (version 1 or 2).

        Raises
        ------
        ValueError
            ``'<source>: field '<name>' …'`` for the first missing, unknown or invalid field.
        """
        try:
            version = data.get("schema_version", SCHEMA_VERSION) if isinstance(data, Mapping) else SCHEMA_VERSION
            if version not in (1, SCHEMA_VERSION):
                raise FieldError("schema_version", f"must be 1 or {SCHEMA_VERSION} (the card formats this msynth "
                                                       f"reads), got {version!r}")
            return parse(cls, upgrade_v1(data) if version == 1 else data)
        except FieldError as err:
            raise ValueError(f"{source}: {err}") from None


#: Version-1 tasks and the target each predicted.
_V1_TASKS = {"flair-synthesis": "FLAIR", "dvr-synthesis": "DVR"}


def upgrade_v1(data: Mapping[str, Any]) -> dict[str, Any]:
    """A version-1 card dictionary as a version-2 one: its single network becomes the stage ``'synthesis'``.

    Version 1 had ``task`` and ``output`` where version 2 has ``target``, ``architecture`` and
    ``architecture_arguments`` where it has ``stages``, and the optimiser (with the batch size) in ``training``.
    Version-1 models were trained with MSE (paper 001 eq. 1).

    Raises
    ------
    FieldError
        For a missing or inconsistent version-1 field.
    """
    card = dict(data)
    for key in ("task", "output", "architecture", "architecture_arguments", "training"):
        if key not in card:
            raise FieldError(key, "is missing")
    task = card.pop("task")
    if task not in _V1_TASKS:
        raise FieldError("task", f"must be one of {', '.join(_V1_TASKS)}, got {task!r}")
    target = _V1_TASKS[task]
    output = card.pop("output")
    if output != TARGETS[target].modality:
        raise FieldError("output", f"must be {TARGETS[target].modality!r} for task {task!r}, got {output!r}")
    training = dict(card["training"]) if isinstance(card["training"], Mapping) else card["training"]
    if not isinstance(training, dict) or not isinstance(training.get("optimizer"), Mapping):
        raise FieldError("training.optimizer", "must be a JSON object")
    optimizer = dict(training.pop("optimizer"))
    training["batch_size"] = optimizer.pop("batch_size", 1)
    stage = {"name": "synthesis", "loss": "mse", "optimizer": optimizer, "weights": WEIGHTS_NAME,
             "network": {"architecture": card.pop("architecture"), "arguments": card.pop("architecture_arguments")}}
    return {**card, "target": target, "stages": [stage], "training": training, "schema_version": SCHEMA_VERSION}


# ----------------------------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------------------------
def write_card(card: ModelCard, model_dir: str | PathLike[str]) -> Path:
    """Write ``model_dir/model_card.json`` (the folder is created); returns the path."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / CARD_NAME
    tmp = path.with_suffix(".json.part")
    tmp.write_text(json.dumps(card.to_dict(), indent=2, allow_nan=True) + "\n")
    tmp.replace(path)
    return path


def read_card(model_dir: str | PathLike[str]) -> ModelCard:
    """Read and validate ``model_dir/model_card.json``.

    Raises
    ------
    FileNotFoundError
        If the folder has no card.
    ValueError
        If the file is not JSON or a field is missing, unknown or invalid; the message names the file and the field.
    """
    path = Path(model_dir) / CARD_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no model card — is {model_dir} a msynth model folder?")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    return ModelCard.from_dict(data, source=str(path))
