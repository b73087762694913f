"""Early stopping by strips: Prechelt's UP_p criterion, as paper 001 §2.3 uses it (p = 3 strips of q = 5 epochs).

"Stop when the generalization error increased in p successive strips of length q" (paper 001, after Prechelt 1998,
"Early stopping — but when?"). The weights kept are those of the epoch with the lowest validation error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["StripStopping", "strip_stop_epoch", "up_holds"]


def up_holds(errors: Mapping[int, float], epoch: int, strip_length: int, strips: int) -> bool:
    """UP_p at ``epoch``: the validation error rose over each of the ``strips`` strips ending there.

    Parameters
    ----------
    errors
        Validation error per epoch (epoch 0: the untrained network).
    epoch
        The epoch to test; only strip ends (multiples of ``strip_length``) can stop.
    strip_length, strips
        ``q`` and ``p``.
    """
    if epoch % strip_length or epoch - strips * strip_length < 0:
        return False
    return all(errors[epoch - i * strip_length] > errors[epoch - (i + 1) * strip_length] for i in range(strips))


def strip_stop_epoch(errors: Sequence[float], strip_length: int = 5, strips: int = 3) -> int | None:
    """The epoch at which Prechelt's UP criterion stops training, or ``None``.

    UP_1 stops after the first end-of-strip epoch ``t`` with ``E(t) > E(t - q)``; UP_p stops after epoch ``t`` iff
    UP_(p-1) stops after ``t - q`` and ``E(t) > E(t - q)``; i.e. the error at the end of each of ``p`` successive
    strips of ``q`` epochs is higher than at the end of the strip before. Paper 001 uses p = 3, q = 5.

    Parameters
    ----------
    errors
        Validation error per epoch; ``errors[0]`` is the untrained network, ``errors[t]`` the error after epoch
        ``t``. Strip ends are the epochs divisible by ``strip_length``.
    strip_length, strips
        ``q`` and ``p``.

    Returns
    -------
    int or None

    Examples
    --------
    Falling for 10 epochs, then rising: the strip ends 10, 15, 20, 25 have errors 0, 5, 10, 15; UP3 needs rises at
    15, 20 and 25.

    >>> curve = [abs(10 - t) for t in range(40)]
    >>> strip_stop_epoch(curve)
    25
    >>> strip_stop_epoch(curve, strips=1)
    15
    """
    table = dict(enumerate(errors))
    return next((t for t in range(len(errors)) if up_holds(table, t, strip_length, strips)), None)


class StripStopping:
    """Incremental form of :func:`strip_stop_epoch` that also tracks the best epoch (checkpointable).

    Parameters
    ----------
    strip_length, strips
        ``q`` and ``p``.
    """

    def __init__(self, strip_length: int = 5, strips: int = 3) -> None:
        self.strip_length = strip_length
        self.strips = strips
        self.errors: dict[int, float] = {}
        self.best_epoch: int | None = None

    @property
    def reason(self) -> str:
        """How a stop by this rule is reported: ``'early stopping (UP3, q=5)'``."""
        return f"early stopping (UP{self.strips}, q={self.strip_length})"

    def update(self, epoch: int, error: float) -> bool:
        """Record the validation error after ``epoch``; ``True`` when training should stop now."""
        self.errors[epoch] = float(error)
        if self.best_epoch is None or error < self.errors[self.best_epoch]:
            self.best_epoch = epoch
        return self.stops_at(epoch)

    def stops_at(self, epoch: int) -> bool:
        """Whether the rule held at ``epoch`` (a resumed run that had already met it stops at once)."""
        return epoch in self.errors and up_holds(self.errors, epoch, self.strip_length, self.strips)

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state."""
        return {"errors": [[k, v] for k, v in sorted(self.errors.items())], "best_epoch": self.best_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.errors = {int(k): float(v) for k, v in state["errors"]}
        self.best_epoch = None if state["best_epoch"] is None else int(state["best_epoch"])
