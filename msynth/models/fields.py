"""Dataclass-driven validation of JSON records: model cards (:mod:`msynth.models.card`) and training settings.

A :class:`Record` is a frozen dataclass whose field annotations say what each field takes: :func:`parse` turns JSON
(or already typed values) into those types, nested dataclasses included, and :meth:`Record._check` adds what a type
cannot say. A problem raises a :class:`FieldError` naming the field by its dotted path (``'training.cv[0].mse'``).
No hand-written schema repeats the dataclasses.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, Literal

__all__ = ["FieldError", "Record", "parse"]


class FieldError(ValueError):
    """A field of a record failed validation.

    Parameters
    ----------
    name
        Dotted path of the field (``'training.cv[0].mse'``).
    problem
        What is wrong, e.g. ``'must be a positive number, got -1.0'``.
    """

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"field {name!r} {problem}")
        self.name = name
        self.problem = problem

    def under(self, parent: str) -> FieldError:
        """The same error for the field seen from ``parent`` (``'std'`` under ``'normalisation.T2w'``)."""
        if not parent:
            return self
        return FieldError(parent + (self.name if self.name.startswith("[") else f".{self.name}"), self.problem)


def _join(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


def parse(hint: Any, value: Any, name: str = "") -> Any:
    """``value`` (JSON or already typed) as the type ``hint`` says, or a :class:`FieldError` naming ``name``.

    Dataclasses come from JSON objects (missing and unknown keys are errors), tuples from lists, ``float`` accepts
    integers; ``Literal`` values must be one of its choices, ``X | None`` accepts ``null``.

    >>> parse(tuple[int, ...], [1, 2])
    (1, 2)
    >>> parse(Literal['sgd', 'adam'], 'rmsprop', 'optimizer.name')
    Traceback (most recent call last):
    ...
    msynth.models.fields.FieldError: field 'optimizer.name' must be one of sgd, adam, got 'rmsprop'
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return _parse_dataclass(hint, value, name)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = (a for a in args if a is not type(None))
        return parse(inner, value, name)
    if origin is Literal:
        if value not in args:
            raise FieldError(name, f"must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise FieldError(name, f"must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(parse(args[0], item, f"{name}[{i}]") for i, item in enumerate(value))
        if len(value) != len(args):
            raise FieldError(name, f"must be a list of {len(args)} values, got {value!r}")
        return tuple(parse(a, item, f"{name}[{i}]") for i, (a, item) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise FieldError(name, f"must be a JSON object, got {value!r}")
        return {k: parse(args[1], v, _join(name, k)) for k, v in value.items()}
    return _parse_scalar(hint, value, name)


def _parse_scalar(hint: type, value: Any, name: str) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise FieldError(name, f"must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise FieldError(name, f"must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FieldError(name, f"must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise FieldError(name, f"must be a string, got {value!r}")
        return value
    raise TypeError(f"record fields cannot be of type {hint!r}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _parse_dataclass(cls: type, value: Any, name: str) -> Any:
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise FieldError(name or "record", f"must be a JSON object, got {type(value).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise FieldError(_join(name, unknown[0]), "is not a known field")
    for key, spec in known.items():
        if key not in value and spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise FieldError(_join(name, key), "is missing")
    try:
        return cls(**value)
    except FieldError as err:
        raise err.under(name) from None


class Record:
    """Base of validated dataclasses: fields are parsed by their annotations, then :meth:`_check` runs.

    Subclasses are frozen dataclasses; a problem raises :class:`FieldError` naming the field relative to the
    record (:func:`parse` adds the path above it).
    """

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            object.__setattr__(self, spec.name, parse(_hints(type(self))[spec.name], getattr(self, spec.name),
                                                      spec.name))
        self._check()

    def _check(self) -> None:
        """Constraints the annotations cannot express (none by default)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))
