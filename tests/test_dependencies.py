"""The collector's runtime dependencies are declared once (pyproject.toml) and shipped as declared: the role's
constraints pin each of them and theirs for every Python the role supports, the Molecule wheelhouse downloads
each, and docs/dependencies.md says what each is for."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO

PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13")  # the role's hosts: Python 3.9 (RHEL 9) and newer
CONSTRAINTS = REPO / "roles/gpu_proc_collector/files/constraints.txt"


def runtime() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(line) for line in project["dependencies"]]


def installed_closure() -> set[str]:
    """The runtime dependencies and theirs, their extras aside, from the installed packages' metadata."""
    found: set[str] = set()
    todo = [r.name for r in runtime()]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        found.add(name)
        for line in importlib.metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return found


def pins(python: str) -> dict[str, str]:
    """The constraints as pip on that Python reads them: name -> pinned version."""
    environment = {"python_version": python, "python_full_version": f"{python}.0"}
    found: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            name = canonicalize_name(requirement.name)
            assert name not in found, f"{name} pinned twice for Python {python}"
            (spec,) = requirement.specifier
            assert spec.operator == "==", text
            found[name] = spec.version
    return found


@pytest.mark.parametrize("python", PYTHONS)
def test_every_runtime_dependency_and_theirs_is_pinned_within_its_floor(python: str) -> None:
    """Each pin within the floor pyproject.toml declares, and nothing pinned that a host does not install."""
    pinned = pins(python)
    for requirement in runtime():
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} is not pinned for Python {python}"
        assert requirement.specifier.contains(pinned[name]), (name, pinned[name], str(requirement.specifier))
    assert set(pinned) == installed_closure(), "constraints.txt pins exactly what a host installs"


def test_the_molecule_wheelhouse_downloads_every_runtime_dependency() -> None:
    plays = yaml.safe_load((REPO / "molecule/default/wheelhouse.yml").read_text())
    task = next(t for t in plays[0]["tasks"] if t["name"].startswith("Download the wheels"))
    downloaded = {canonicalize_name(arg) for arg in task["vars"]["download"] if not str(arg).startswith(("-", "{"))}
    assert {canonicalize_name(r.name) for r in runtime()} <= downloaded


def test_docs_dependencies_names_each_runtime_dependency() -> None:
    text = Path(REPO / "docs/dependencies.md").read_text().lower()
    for requirement in runtime():
        assert f"`{requirement.name.lower()}`" in text, requirement.name
    for name in installed_closure():
        assert f"`{name}`" in text, name
