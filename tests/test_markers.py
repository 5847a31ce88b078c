"""The fast subset, `pytest -m "not slow"` (docs/testing-layout.md), starts no real service, guest or Ansible run:
every test that does carries the `slow` marker, or a contributor's quick run would start Prometheus, container
runtimes or ansible-playbook after all. The test files are parsed, not imported or run:

- a file that imports a helper starting real services (tests/support/promstack.py, realcri.py, realruntime.py,
  or a helper that imports one of them) or that runs `molecule` is slow as a whole;
- a test that runs ansible-playbook or ansible-galaxy (tests/support/role_render.py's `render` and
  `ansible_playbook`, or the tool by name) is slow, whether it does so itself, through a helper function of its file
  or through a fixture of its file.

A test that is slow only by its duration is marked by hand (pyproject.toml says what the marker means); durations
are not asserted here.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Union

import pytest

from tests.conftest import REPO

TESTS = REPO / "tests"
SERVICE_HELPERS = frozenset({"tests.support.promstack", "tests.support.realcri", "tests.support.realruntime"})
ANSIBLE_HELPERS = frozenset({"render", "ansible_playbook"})  # tests.support.role_render's, which run ansible-playbook
ROLE_RENDER = "tests.support.role_render"
ANSIBLE_TOOLS = re.compile(r"\bansible-(?:playbook|galaxy)\b")

Function = Union[ast.FunctionDef, ast.AsyncFunctionDef]


def imported(tree: ast.AST) -> set[str]:
    """Every module name an import in the tree may name (from-imports give module.name too: a submodule)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def service_helpers(support: Path) -> frozenset[str]:
    """SERVICE_HELPERS and every helper under support that imports one of them, however indirectly."""
    trees = {f"tests.support.{path.stem}": imported(ast.parse(path.read_text())) for path in support.glob("*.py")}
    found = set(SERVICE_HELPERS)
    while True:
        more = {name for name, imports in trees.items() if name not in found and imports & found}
        if not more:
            return frozenset(found)
        found |= more


def is_slow_mark(node: ast.AST) -> bool:
    """pytest.mark.slow anywhere in node (a decorator, pytestmark's value or list)."""
    return any(isinstance(sub, ast.Attribute) and sub.attr == "slow" and isinstance(sub.value, ast.Attribute)
               and sub.value.attr == "mark" and isinstance(sub.value.value, ast.Name) and sub.value.value.id == "pytest"
               for sub in ast.walk(node))


def marks_slow(body: Iterable[ast.stmt]) -> bool:
    """A `pytestmark = ...` in this body (a module's or a class's) that holds pytest.mark.slow."""
    return any(isinstance(node, ast.Assign) and is_slow_mark(node.value)
               and any(isinstance(target, ast.Name) and target.id == "pytestmark" for target in node.targets)
               for node in body)


def runs_molecule(tree: ast.AST) -> bool:
    """A command line that starts with molecule (a list or tuple), or a test asking for the tool."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
            first = node.elts[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str) and \
                    (first.value == "molecule" or first.value.endswith("/molecule")):
                return True
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and node.args[0].value == "molecule":
            return True
    return False


def collected(tree: ast.Module) -> Iterable[tuple[str, Function, bool]]:
    """(name, function, marked slow by its class or itself) for every test function, in Test classes too."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            yield node.name, node, any(is_slow_mark(d) for d in node.decorator_list)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            by_class = any(is_slow_mark(d) for d in node.decorator_list) or marks_slow(node.body)
            for method in node.body:
                if isinstance(method, (ast.FunctionDef, ast.AsyncFunctionDef)) and method.name.startswith("test"):
                    yield f"{node.name}::{method.name}", method, \
                        by_class or any(is_slow_mark(d) for d in method.decorator_list)


def runs_ansible(tree: ast.Module) -> Callable[[Function], bool]:
    """Whether a function of the module (a test, a fixture, a helper) runs ansible-playbook or ansible-galaxy: by
    role_render's helpers or the tool's name (a docstring aside), or by a top-level function or a fixture of the
    module that does."""
    helpers = {alias.asname or alias.name for node in tree.body if isinstance(node, ast.ImportFrom)
               and node.module == ROLE_RENDER for alias in node.names if alias.name in ANSIBLE_HELPERS}
    functions = {node.name: node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}

    def uses(function: Function) -> tuple[bool, set[str]]:
        """(runs it itself, the module's functions and fixtures it names or takes)."""
        first = function.body[0]
        docstring = first.value if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) else None
        direct, names = False, set()
        for node in ast.walk(function):
            if isinstance(node, ast.Name):
                direct |= node.id in helpers
                names.add(node.id)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node is not docstring:
                direct |= bool(ANSIBLE_TOOLS.search(node.value))
                names.add(node.value)  # @pytest.mark.usefixtures("name")
        arguments = function.args
        names.update(arg.arg for arg in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs])
        return direct, (names & functions.keys()) - {function.name}

    edges = {name: uses(function) for name, function in functions.items()}
    found = {name for name, (direct, _) in edges.items() if direct}
    while True:
        more = {name for name, (_, calls) in edges.items() if name not in found and calls & found}
        if not more:
            break
        found |= more

    def reaches(function: Function) -> bool:
        direct, calls = uses(function)
        return direct or bool(calls & found)

    return reaches


def unmarked(source: str, helpers: frozenset[str]) -> list[str]:
    """The tests of one test file that must be slow and are not, each with the reason."""
    tree = ast.parse(source)
    if marks_slow(tree.body):
        return []
    whole = sorted(imported(tree) & helpers)
    reason = f"imports {whole[0]}" if whole else "runs molecule" if runs_molecule(tree) else ""
    ansible = runs_ansible(tree)
    return [f"{name}: {reason or 'runs ansible-playbook or ansible-galaxy'}"
            for name, function, slow in collected(tree)
            if not slow and (reason or ansible(function))]


def test_every_test_that_starts_a_real_service_is_slow() -> None:
    helpers = service_helpers(TESTS / "support")
    found: Mapping[str, list[str]] = {path.name: unmarked(path.read_text(), helpers)
                                      for path in sorted(TESTS.glob("test_*.py"))
                                      if path.name != Path(__file__).name}  # its made-up files are strings here
    missing = [f"tests/{name}::{test}" for name, tests in found.items() for test in tests]
    assert not missing, "mark these @pytest.mark.slow (or the file pytestmark = pytest.mark.slow):\n" + \
        "\n".join(missing)


def test_the_guard_sees_the_helpers_and_the_marks() -> None:
    """The rules on made-up files: a helper imported, molecule started, ansible reached through a fixture and a
    helper function; a module mark, a decorator and a class mark each satisfy them."""
    helpers = service_helpers(TESTS / "support")
    assert helpers >= SERVICE_HELPERS
    prometheus = "from tests.support.promstack import start_prometheus\n\ndef test_a():\n    pass\n"
    assert unmarked(prometheus, helpers) == ["test_a: imports tests.support.promstack"]
    assert unmarked("import pytest\npytestmark = [pytest.mark.slow]\n" + prometheus, helpers) == []
    assert unmarked("from tests.support import realcri\n\ndef test_b():\n    pass\n", helpers) == \
        ["test_b: imports tests.support.realcri"]
    molecule = "import subprocess\n\ndef test_c():\n    subprocess.run(['molecule', 'test'])\n"
    assert unmarked(molecule, helpers) == ["test_c: runs molecule"]
    ansible = (
        "import pytest\nfrom tests.support.role_render import render\n\n"
        "@pytest.fixture\ndef rendered(tmp_path):\n    return render(tmp_path)\n\n"
        "@pytest.fixture\ndef unit(rendered):\n    return rendered['default']\n\n"
        "def helper():\n    '''Not ansible-playbook: a docstring only.'''\n    return ['ansible-galaxy', 'build']\n\n"
        "def test_by_fixture(unit):\n    pass\n\n"
        "@pytest.mark.usefixtures('rendered')\ndef test_by_usefixtures():\n    pass\n\n"
        "def test_by_helper():\n    helper()\n\n"
        "def test_docstring_only():\n    '''as ansible-playbook renders it'''\n\n"
        "@pytest.mark.slow\ndef test_marked(unit):\n    pass\n\n"
        "@pytest.mark.slow\nclass TestMarked:\n    def test_in_class(self, unit):\n        pass\n\n"
        "class TestUnmarked:\n    def test_in_class(self, unit):\n        pass\n"
    )
    assert unmarked(ansible, helpers) == [f"{name}: runs ansible-playbook or ansible-galaxy" for name in (
        "test_by_fixture", "test_by_usefixtures", "test_by_helper", "TestUnmarked::test_in_class")]


def test_a_helper_that_wraps_a_service_helper_is_one(tmp_path: Path) -> None:
    """A support module that imports promstack (through another one) starts services too."""
    (tmp_path / "stack.py").write_text("from tests.support.promstack import start_prometheus\n")
    (tmp_path / "wrapped.py").write_text("from tests.support import stack\n")
    (tmp_path / "plain.py").write_text("import json\n")
    helpers = service_helpers(tmp_path)
    assert helpers == SERVICE_HELPERS | {"tests.support.stack", "tests.support.wrapped"}
    assert unmarked("from tests.support.wrapped import x\n\ndef test_d():\n    pass\n", helpers) == \
        ["test_d: imports tests.support.wrapped"]


def test_ci_runs_the_slow_tests_too(pytestconfig: pytest.Config) -> None:
    """The marker only narrows a run on request: neither pytest's own options nor scripts/test.sh (what CI runs)
    select by marker, so CI runs every test."""
    assert any(line.startswith("slow:") for line in pytestconfig.getini("markers"))
    addopts = pytestconfig.getini("addopts")
    assert not [option for option in addopts if option == "-m" or option.startswith("-m")], addopts
    arguments = [line.split("-m pytest", 1)[1] for line in (REPO / "scripts" / "test.sh").read_text().splitlines()
                 if "-m pytest" in line and not line.lstrip().startswith("#")]
    assert arguments, "scripts/test.sh runs no python -m pytest"
    assert not [line for line in arguments if re.search(r"(^|\s)-m\b|slow", line)], arguments
