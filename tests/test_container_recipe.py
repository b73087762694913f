"""The container recipes install what setup.cfg asks for: a lock that is current, read by the Dockerfile and the
Apptainer definition. No image is built here (containers/README.md says how, and what it measured)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
CONTAINERS = ROOT / "containers"


def _lock_module():
    spec = importlib.util.spec_from_file_location("msynth_container_lock", CONTAINERS / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOCK = _lock_module()


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for number, line in enumerate((CONTAINERS / "requirements.lock").read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line.strip())
        assert match, f"requirements.lock line {number} is not `name==version`: {line!r}"
        name = canonicalize_name(match[1])
        assert name not in pins, f"requirements.lock pins {name} twice"
        pins[name] = match[2]
    return pins


def test_lock_pins_every_install_requires_within_its_range():
    pins = _pins()
    problems = []
    for requirement in LOCK.install_requires():
        name = canonicalize_name(requirement.name)
        if LOCK.is_variant_specific(name):
            continue
        if name not in pins:
            problems.append(f"{name} is not pinned")
        elif not requirement.specifier.contains(Version(pins[name]), prereleases=True):
            problems.append(f"{name}=={pins[name]} is outside setup.cfg's {requirement.specifier}")
    assert not problems, "containers/requirements.lock is out of date with setup.cfg — run `make lock`: " + "; ".join(
        problems
    )


def test_lock_leaves_torch_to_the_image_variant():
    assert not [name for name in _pins() if LOCK.is_variant_specific(name)]
    torch = next(r for r in LOCK.install_requires() if canonicalize_name(r.name) == "torch")
    assert torch.specifier.contains(LOCK.TORCH), f"lock.py's torch {LOCK.TORCH} is outside setup.cfg's {torch}"
    dockerfile = (CONTAINERS / "Dockerfile").read_text()
    assert f"ARG TORCH_VERSION={LOCK.TORCH}\n" in dockerfile


@pytest.mark.parametrize(
    ("recipe", "needle"),
    [
        ("Dockerfile", "COPY containers/requirements.lock /opt/msynth/requirements.lock"),
        ("Dockerfile", "-r /opt/msynth/requirements.lock"),
        ("Dockerfile", "--no-deps"),
        ("msynth.def", "/opt/msynth/requirements.lock"),
        ("msynth.def", "Bootstrap: docker-archive"),
    ],
)
def test_recipes_install_from_the_lock(recipe, needle):
    assert needle in (CONTAINERS / recipe).read_text()


def test_build_context_lets_the_lock_and_package_through():
    allowed = {line[1:] for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    assert {"containers/requirements.lock", "msynth", "setup.cfg", "pyproject.toml", "README.md"} <= allowed
