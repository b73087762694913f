"""``msynth-train``: train and cross-validate synthesis models from participant-level outputs."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Report that training is not available yet (exit code 2)."""
    print(
        "msynth-train: not implemented yet — model training lands with the FLAIR synthesis issue.",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
