"""Which model a session uses: the shipped models, ``--model`` names and folders, and the choice per session.

Torch-free, so that the command line can check ``--model`` before any heavy import.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from os import PathLike
from pathlib import Path

from msynth.models.card import CARD_NAME, read_card

#: Folder of the models shipped with msynth (one sub-folder per model, each with a card and weights).
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def shipped_models() -> list[Path]:
    """Model folders shipped under ``msynth/models/weights/`` (each holding a card), sorted by name."""
    if not WEIGHTS_DIR.is_dir():
        return []
    return sorted(p for p in WEIGHTS_DIR.iterdir() if (p / CARD_NAME).is_file())


def target_models(target: str, models: Sequence[str | PathLike[str]]) -> list[Path]:
    """The model folders that predict ``target`` (a key of :data:`msynth.models.card.TARGETS`).

    Parameters
    ----------
    target
        ``'FLAIR'`` or ``'DVR'``.
    models
        The ``--model`` folders; none given: the shipped models. ``--model`` may name models of several targets:
        each synthesis keeps its own, and a target none of them predicts is not synthesised.
    """
    return [Path(model) for model in models or shipped_models() if read_card(model).target == target]


def choose_model(available: Iterable[str | PathLike[str]], present_keys: Iterable[str]) -> Path | None:
    """The model to use for a session: all its inputs present, the most inputs first, then models trained on real
    scans before those trained on synthetic data (a card whose ``data_source`` says "synthetic", as the phantom
    models' do), then by name.

    Parameters
    ----------
    available
        Model folders (e.g. :func:`shipped_models` plus ``--model`` folders).
    present_keys
        Modality keys the session has.

    Returns
    -------
    pathlib.Path or None
        ``None`` when no model's inputs are all present.
    """
    present = set(present_keys)
    candidates = []
    for model_dir in available:
        card = read_card(model_dir)
        if set(card.inputs) <= present:
            synthetic = "synthetic" in card.training.data_source.lower()
            candidates.append((-len(card.inputs), synthetic, card.name, str(model_dir), Path(model_dir)))
    if not candidates:
        return None
    return min(candidates)[-1]


def resolve_model(name_or_dir: str) -> Path:
    """A ``--model`` value as a model folder: a shipped model's name, or a folder holding a model card.

    Raises
    ------
    ValueError
        Naming the value, the shipped models, and what a model folder holds.
    """
    folder = Path(name_or_dir).expanduser()
    if (folder / CARD_NAME).is_file():
        return folder.resolve()
    shipped = {path.name: path for path in shipped_models()}
    if name_or_dir in shipped:
        return shipped[name_or_dir]
    raise ValueError(f"--model {name_or_dir}: neither a shipped model ({', '.join(shipped) or 'none'}) nor a folder "
                     f"with a {CARD_NAME} (msynth-train writes one)")
