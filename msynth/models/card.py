"""Model cards: what a trained synthesis model needs at inference time and what a reader needs to trust it.

A model directory holds two files:

* ``model_card.json`` — a :class:`ModelCard`, modelled on the ``metadata.json`` of MONAI bundles: the task, the
  ordered input modality keys and the output key, the voxel size the model works at, the z-score statistics of each
  input and of the output, the network (architecture name and constructor arguments), how it was trained (subjects
  as salted SHA-256 hashes, data source, licence and citation, the exact command, seed, optimiser, epochs,
  cross-validation metrics per fold) and the software versions;
* ``model.pt`` — the network's ``state_dict`` only, loadable with ``torch.load(..., weights_only=True)``.

:func:`read_card` validates every field and raises a :class:`ValueError` that names the file and the field.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import platform
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import msynth

__all__ = [
    "CARD_NAME", "CHANNELS", "INTENSITY_NORMALISATIONS", "MODALITY_KEYS", "SCHEMA_VERSION", "TASKS", "WEIGHTS_NAME",
    "FoldMetrics", "ModelCard", "Normalisation", "TrainingRecord", "channels_of", "hash_subject", "read_card",
    "software_versions", "write_card",
]

#: Modality keys of the design contract, in their canonical order (inputs are stored in this order).
MODALITY_KEYS: tuple[str, ...] = ("T1w", "T2w", "PDw", "FLAIR", "T1SE", "DIR", "MTR", "DWI", "PET")
#: Image channels each modality key contributes to a network (one, except DWI: the thesis 003 DTI maps).
CHANNELS: dict[str, tuple[str, ...]] = {
    "T1w": ("T1w",), "T2w": ("T2w",), "PDw": ("PDw",), "FLAIR": ("FLAIR",), "T1SE": ("T1SE",), "DIR": ("DIR",),
    "MTR": ("MTR",), "DWI": ("FA", "RD", "AD"), "PET": ("DVR",),
}
#: Tasks a card may declare, with the output key each one predicts.
TASKS: dict[str, str] = {"flair-synthesis": "FLAIR", "dvr-synthesis": "PET"}
#: ``cohort``: z-score with statistics over all training sessions (paper 001); ``image``: each image by its own.
INTENSITY_NORMALISATIONS: tuple[str, ...] = ("cohort", "image")
CARD_NAME = "model_card.json"
WEIGHTS_NAME = "model.pt"
SCHEMA_VERSION = 1


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


@dataclass(frozen=True)
class Normalisation:
    """z-score statistics of one image type: ``(x - mean) / std`` inside the brain, 0 outside.

    Attributes
    ----------
    mean, std
        Mean and standard deviation over all brain voxels of all training sessions.
    """

    mean: float
    std: float


@dataclass(frozen=True)
class FoldMetrics:
    """Held-out performance of one cross-validation fold (inside the brain, in the output's units).

    Attributes
    ----------
    fold
        Fold index, from 0.
    n_train, n_test
        Subjects used to fit (training plus validation) and held out.
    mse, psnr, ssim
        Means over the held-out sessions.
    epochs
        Epoch whose weights were kept (lowest validation error).
    """

    fold: int
    n_train: int
    n_test: int
    mse: float
    psnr: float
    ssim: float
    epochs: int


@dataclass(frozen=True)
class TrainingRecord:
    """How a model was trained.

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
    optimizer
        Optimiser name and settings, e.g. ``{'name': 'sgd', 'lr': 5e-4, 'momentum': 0.0}``.
    epochs
        Epochs the final model was trained for.
    patch_size
        Edge length of the cubic training patches (voxels).
    early_stopping
        Strip length ``q`` and number of strips ``p`` of the stopping rule.
    augmentation
        Training-data augmentations (``'random_flips'``); empty: none (cards written before it existed have none).
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
    optimizer: dict[str, Any]
    epochs: int
    patch_size: int
    early_stopping: dict[str, int]
    augmentation: tuple[str, ...] = ()
    cv: tuple[FoldMetrics, ...] = ()


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to run a trained model and to judge it (written as ``model_card.json``).

    Attributes
    ----------
    name
        Model name (shown in logs, chosen by ``--model``).
    task
        A key of :data:`TASKS` (``'flair-synthesis'``).
    inputs
        Input modality keys, in the order of the network's channels (a subset of :data:`MODALITY_KEYS`).
    output
        Output modality key (``'FLAIR'``).
    voxel_size_mm
        Isotropic voxel size the model was trained at, or ``None`` for the images' own grid.
    normalisation
        :class:`Normalisation` for every channel of the inputs and of the output (:data:`CHANNELS`: the key
        itself, except DWI → FA, RD, AD and PET → DVR), over all brain voxels of the training sessions.
    intensity_normalisation
        How images are z-scored before the network (:data:`INTENSITY_NORMALISATIONS`): ``'cohort'`` with the
        ``normalisation`` statistics (paper 001 §2.3), or ``'image'`` with each image's own brain statistics. In both
        cases a prediction is returned to intensities with the output's ``normalisation`` statistics.
    architecture
        Key of :data:`msynth.models.networks.ARCHITECTURES`.
    architecture_arguments
        Constructor keyword arguments, including ``in_channels`` (the number of input channels).
    training
        :class:`TrainingRecord`.
    versions
        Software versions at training time (:func:`software_versions`).
    created
        ISO 8601 UTC date and time of training.
    schema_version
        Version of this card format.
    """

    name: str
    task: str
    inputs: tuple[str, ...]
    output: str
    voxel_size_mm: float | None
    normalisation: dict[str, Normalisation]
    intensity_normalisation: str
    architecture: str
    architecture_arguments: dict[str, Any]
    training: TrainingRecord
    versions: dict[str, str] = field(default_factory=software_versions)
    created: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat())
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _validate(self.to_dict(), "ModelCard")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "model card") -> ModelCard:
        """Build and validate a card from its JSON dictionary.

        Raises
        ------
        ValueError
            ``'<source>: field '<name>' …'`` for the first missing, unknown or invalid field.
        """
        _validate(data, source)
        training = dict(data["training"])
        training["cv"] = tuple(FoldMetrics(**fold) for fold in training.get("cv", []))
        training["subjects"] = tuple(training["subjects"])
        training["augmentation"] = tuple(training.get("augmentation", ()))
        return cls(
            name=data["name"], task=data["task"], inputs=tuple(data["inputs"]), output=data["output"],
            voxel_size_mm=None if data["voxel_size_mm"] is None else float(data["voxel_size_mm"]),
            normalisation={key: Normalisation(float(v["mean"]), float(v["std"]))
                           for key, v in data["normalisation"].items()},
            intensity_normalisation=data["intensity_normalisation"],
            architecture=data["architecture"], architecture_arguments=dict(data["architecture_arguments"]),
            training=TrainingRecord(**training), versions=dict(data["versions"]), created=data["created"],
            schema_version=int(data["schema_version"]),
        )


# ----------------------------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------------------------
_TOP_FIELDS = ("name", "task", "inputs", "output", "voxel_size_mm", "normalisation", "intensity_normalisation",
               "architecture",
               "architecture_arguments", "training", "versions", "created", "schema_version")
_TRAINING_REQUIRED = ("subjects", "salt_fingerprint", "n_sessions", "data_source", "data_license", "data_citation",
                      "command", "seed", "optimizer", "epochs", "patch_size", "early_stopping")
_TRAINING_OPTIONAL = ("augmentation", "cv")
AUGMENTATIONS = ("random_flips",)
_FOLD_FIELDS = ("fold", "n_train", "n_test", "mse", "psnr", "ssim", "epochs")


class _Bad(ValueError):
    """A field failed validation (carries the dotted field name)."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"field {name!r} {problem}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_keys(data: Any, required: Iterable[str], name: str, optional: Iterable[str] = ()) -> None:
    if not isinstance(data, Mapping):
        raise _Bad(name or "card", f"must be a JSON object, got {type(data).__name__}")
    required = tuple(required)
    for key in required:
        if key not in data:
            raise _Bad(f"{name}.{key}" if name else key, "is missing")
    unknown = sorted(set(data) - set(required) - set(optional))
    if unknown:
        raise _Bad(f"{name}.{unknown[0]}" if name else unknown[0], "is not a model-card field")


def _check_str(value: Any, name: str, *, empty: bool = False) -> None:
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise _Bad(name, f"must be a non-empty string, got {value!r}")


def _check_count(value: Any, name: str, low: int) -> None:
    if not _is_int(value) or value < low:
        raise _Bad(name, f"must be an integer >= {low}, got {value!r}")


def _validate(data: Mapping[str, Any], source: str) -> None:
    """Raise ``ValueError('<source>: field …')`` for the first problem in a card dictionary."""
    try:
        _validate_fields(data)
    except _Bad as err:
        raise ValueError(f"{source}: {err}") from None


def _validate_fields(data: Mapping[str, Any]) -> None:
    _check_keys(data, _TOP_FIELDS, "")
    if data["schema_version"] != SCHEMA_VERSION:
        raise _Bad("schema_version", f"must be {SCHEMA_VERSION} (this msynth's card format), "
                                     f"got {data['schema_version']!r}")
    _check_str(data["name"], "name")
    if data["task"] not in TASKS:
        raise _Bad("task", f"must be one of {', '.join(TASKS)}, got {data['task']!r}")
    inputs = data["inputs"]
    if not isinstance(inputs, (list, tuple)) or not inputs:
        raise _Bad("inputs", f"must be a non-empty list of modality keys, got {inputs!r}")
    for key in inputs:
        if key not in MODALITY_KEYS:
            raise _Bad("inputs", f"has unknown modality key {key!r}; known: {' '.join(MODALITY_KEYS)}")
    if len(set(inputs)) != len(inputs):
        raise _Bad("inputs", f"lists a key twice: {inputs!r}")
    if list(inputs) != sorted(inputs, key=MODALITY_KEYS.index):
        raise _Bad("inputs", f"must follow the canonical order {' '.join(MODALITY_KEYS)}, got {inputs!r}")
    if data["output"] != TASKS[data["task"]]:
        raise _Bad("output", f"must be {TASKS[data['task']]!r} for task {data['task']!r}, got {data['output']!r}")
    if data["output"] in inputs:
        raise _Bad("inputs", f"contains the output key {data['output']!r}")
    voxel = data["voxel_size_mm"]
    if voxel is not None and (not _is_number(voxel) or voxel <= 0):
        raise _Bad("voxel_size_mm", f"must be a positive number or null, got {voxel!r}")
    norm = data["normalisation"]
    _check_keys(norm, channels_of((*inputs, data["output"])), "normalisation")
    for key, stats in norm.items():
        _check_keys(stats, ("mean", "std"), f"normalisation.{key}")
        if not _is_number(stats["mean"]):
            raise _Bad(f"normalisation.{key}.mean", f"must be a finite number, got {stats['mean']!r}")
        if not _is_number(stats["std"]) or stats["std"] <= 0:
            raise _Bad(f"normalisation.{key}.std", f"must be a positive number, got {stats['std']!r}")
    if data["intensity_normalisation"] not in INTENSITY_NORMALISATIONS:
        raise _Bad("intensity_normalisation", f"must be one of {', '.join(INTENSITY_NORMALISATIONS)}, "
                                              f"got {data['intensity_normalisation']!r}")
    from msynth.models.networks import ARCHITECTURES

    if data["architecture"] not in ARCHITECTURES:
        raise _Bad("architecture", f"must be one of {', '.join(sorted(ARCHITECTURES))}, "
                                   f"got {data['architecture']!r}")
    arguments = data["architecture_arguments"]
    if not isinstance(arguments, Mapping):
        raise _Bad("architecture_arguments", "must be a JSON object")
    n_channels = len(channels_of(inputs))
    if arguments.get("in_channels") != n_channels:
        raise _Bad("architecture_arguments.in_channels",
                   f"must equal the number of input channels ({n_channels}), got {arguments.get('in_channels')!r}")
    _validate_training(data["training"])
    versions = data["versions"]
    if not isinstance(versions, Mapping) or not all(isinstance(v, str) for v in versions.values()):
        raise _Bad("versions", f"must map package names to version strings, got {versions!r}")
    for package in ("msynth", "torch", "python"):
        if package not in versions:
            raise _Bad(f"versions.{package}", "is missing")
    try:
        _dt.datetime.fromisoformat(data["created"])
    except (TypeError, ValueError):
        raise _Bad("created", f"must be an ISO 8601 date, got {data['created']!r}") from None


def _validate_training(training: Any) -> None:
    _check_keys(training, _TRAINING_REQUIRED, "training", optional=_TRAINING_OPTIONAL)
    subjects = training["subjects"]
    if (not isinstance(subjects, (list, tuple)) or not subjects
            or not all(isinstance(s, str) and len(s) == 64 and all(c in "0123456789abcdef" for c in s)
                       for s in subjects)):
        raise _Bad("training.subjects", "must be a non-empty list of SHA-256 hex digests (never raw labels)")
    _check_str(training["salt_fingerprint"], "training.salt_fingerprint")
    _check_count(training["n_sessions"], "training.n_sessions", 1)
    for key in ("data_source", "data_license", "data_citation"):
        _check_str(training[key], f"training.{key}", empty=True)
    _check_str(training["command"], "training.command")
    _check_count(training["seed"], "training.seed", 0)
    optimizer = training["optimizer"]
    if not isinstance(optimizer, Mapping) or optimizer.get("name") not in ("sgd", "adam"):
        raise _Bad("training.optimizer.name", f"must be 'sgd' or 'adam', got {optimizer!r}")
    if not _is_number(optimizer.get("lr")) or optimizer["lr"] <= 0:
        raise _Bad("training.optimizer.lr", f"must be a positive number, got {optimizer.get('lr')!r}")
    _check_count(training["epochs"], "training.epochs", 1)
    _check_count(training["patch_size"], "training.patch_size", 1)
    stopping = training["early_stopping"]
    _check_keys(stopping, ("strip_length", "strips"), "training.early_stopping")
    _check_count(stopping["strip_length"], "training.early_stopping.strip_length", 1)
    _check_count(stopping["strips"], "training.early_stopping.strips", 1)
    augmentation = training.get("augmentation", [])
    if not isinstance(augmentation, (list, tuple)) or not set(augmentation) <= set(AUGMENTATIONS):
        raise _Bad("training.augmentation", f"must be a list of {', '.join(AUGMENTATIONS)}, got {augmentation!r}")
    folds = training.get("cv", [])
    if not isinstance(folds, (list, tuple)):
        raise _Bad("training.cv", "must be a list of folds")
    for i, fold in enumerate(folds):
        _check_keys(fold, _FOLD_FIELDS, f"training.cv[{i}]")
        for key in ("fold", "n_train", "n_test", "epochs"):
            _check_count(fold[key], f"training.cv[{i}].{key}", 0)
        for key in ("mse", "psnr", "ssim"):
            if not isinstance(fold[key], (int, float)) or isinstance(fold[key], bool):
                raise _Bad(f"training.cv[{i}].{key}", f"must be a number, got {fold[key]!r}")


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
