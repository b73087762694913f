"""Headless Debian chromium for the report tests: render a page to a PNG and read its pixels back."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")

#: Skips a test where chromium is absent, saying how to get it.
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="/usr/bin/chromium is absent: `make test` installs Debian's chromium when run as "
    "root with apt-get; without it the report is not rendered")


def screenshot(page: Path, folder: Path, *, width: int = 1200, height: int = 3000) -> np.ndarray:
    """``page`` rendered by headless chromium in a ``width`` × ``height`` window, as an RGB uint8 array.

    The screenshot and chromium's profile go in ``folder``; nothing reaches the network (background services off).
    """
    from matplotlib.image import imread

    shot = folder / f"{page.stem}.png"
    subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={folder / 'profile'}", f"--screenshot={shot}",
                    f"--window-size={width},{height}", page.resolve().as_uri()],
                   capture_output=True, timeout=120, check=True)
    return np.round(imread(shot)[..., :3] * 255).astype(np.uint8)
