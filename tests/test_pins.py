"""constraints.txt pins what the suite ran with, and agrees with pyproject.toml's ranges.

The installed versions are the truth: a package upgraded in .venv without `make constraints`
fails here, since the pins would then describe a set nobody tested.
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")

ROOT = Path(__file__).resolve().parents[1]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins() -> tuple[dict[str, str], str | None]:
    pins, python = {}, None
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if m := re.match(r"# python (\d+\.\d+)", line):
            python = m.group(1)
        if not line.strip() or line.startswith("#"):
            continue
        name, _, pinned = line.partition("==")
        assert pinned, f"constraints.txt: {line!r} is not name==version"
        assert " " not in pinned, f"constraints.txt: {line!r} is not name==version"
        pins[canonical(name)] = pinned.strip()
    return pins, python


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return [Requirement(r) for r in reqs]


def test_every_requirement_is_pinned_inside_its_range() -> None:
    pins, _ = read_pins()
    for req in requirements():
        name = canonical(req.name)
        if name == "torch":
            assert name not in pins  # TORCH_SPEC in the Makefile chooses the build
            continue
        assert name in pins, f"{req.name} is required but not pinned: run `make constraints`"
        assert req.specifier.contains(Version(pins[name]), prereleases=True), \
            f"{req.name}=={pins[name]} in constraints.txt is outside pyproject.toml's {req}"


PINNED_PYTHON = read_pins()[1]
THIS_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


@pytest.mark.skipif(PINNED_PYTHON != THIS_PYTHON,
                    reason=f"constraints.txt is for Python {PINNED_PYTHON}; this is {THIS_PYTHON} (CONSTRAINTS=)")
def test_the_pins_are_what_is_installed() -> None:
    pins, _ = read_pins()
    drifted = []
    for name, pinned in pins.items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue  # pinned for an optional path (or another helper's package) not installed here
        if Version(installed) != Version(pinned):
            drifted.append(f"{name} {installed} (pinned {pinned})")
    assert not drifted, f"installed versions differ from constraints.txt: {drifted}; run `make constraints`"
