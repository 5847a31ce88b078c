"""The fast subset, `pytest -m "not slow"` (docs/testing-layout.md), starts no real service, guest or Ansible run:
every test that does carries the `slow` marker, or a contributor's quick run would start Prometheus, container
runtimes or ansible-playbook after all. The test files are parsed, not imported or run:

- a file that imports tests/support/realcri.py or realruntime.py (real container runtimes and guests are all they
  do), or a helper that imports one of them, is slow as a whole;
- a test that starts Prometheus or node_exporter (tests/support/promstack.py's `start_prometheus`,
  `start_node_exporter`), renders the role or runs a playbook (tests/support/role_render.py's `render`,
  `ansible_playbook`), names ansible-playbook or ansible-galaxy, or runs `molecule` is slow: by itself, through a
  function, class or fixture of its file, through a fixture of tests/conftest.py, or through a helper under
  tests/support/ that does one of these.

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
WHOLE_FILE = frozenset({"tests.support.realcri", "tests.support.realruntime"})
# What starts a real service or an Ansible run, by the helper module that offers it.
STARTERS: Mapping[str, frozenset[str]] = {
    "tests.support.promstack": frozenset({"start_prometheus", "start_node_exporter"}),
    "tests.support.role_render": frozenset({"render", "ansible_playbook"}),
}
ANSIBLE_TOOLS = re.compile(r"\bansible-(?:playbook|galaxy)\b")

Function = Union[ast.FunctionDef, ast.AsyncFunctionDef]
Definition = Union[ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef]


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


def molecule_command(node: ast.AST) -> bool:
    """A command line that starts with molecule (a list or tuple), or a call asking for the tool by name."""
    if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
        first = node.elts[0]
        return isinstance(first, ast.Constant) and isinstance(first.value, str) and \
            (first.value == "molecule" or first.value.endswith("/molecule"))
    return isinstance(node, ast.Call) and bool(node.args) and isinstance(node.args[0], ast.Constant) \
        and node.args[0].value == "molecule"


def starters_in(tree: ast.Module, starters: Mapping[str, frozenset[str]]) -> tuple[set[str], dict[str, str]]:
    """(local names bound to a starter, local names bound to a module that offers starters)."""
    names: set[str] = set()
    modules: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                if alias.name in starters.get(node.module, ()):
                    names.add(alias.asname or alias.name)
                if f"{node.module}.{alias.name}" in starters:
                    modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in starters and alias.asname:
                    modules[alias.asname] = alias.name
    return names, modules


def reaching(tree: ast.Module, starters: Mapping[str, frozenset[str]], fixtures: frozenset[str] = frozenset(),
             own: frozenset[str] = frozenset()) -> tuple[set[str], Callable[[Definition], bool]]:
    """The module's top-level functions and classes that start a service or an Ansible run, and a predicate for any
    function or class of it (a test method among them). A name a function uses, a fixture it takes (by argument or
    usefixtures) and a class one of whose methods starts one all count; fixtures are the conftest fixtures that do,
    own the module's own starters (a helper module's functions that call them start one too)."""
    names, modules = starters_in(tree, starters)
    local = {node.name: node for node in tree.body
             if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}

    def uses(definition: Definition) -> tuple[bool, set[str]]:
        """(starts one itself, the names it uses and the fixtures it takes)."""
        docstrings = {id(node.body[0].value) for node in ast.walk(definition)
                      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body
                      and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        direct, used = False, set()
        for node in ast.walk(definition):
            if isinstance(node, ast.Name):
                direct |= node.id in names
                used.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in modules:
                direct |= node.attr in starters[modules[node.value.id]]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                direct |= bool(ANSIBLE_TOOLS.search(node.value))
                used.add(node.value)  # @pytest.mark.usefixtures("name")
            elif isinstance(node, ast.arg):
                used.add(node.arg)
            direct |= molecule_command(node)
        direct |= bool(used & fixtures - local.keys())
        return direct, used & local.keys() - {definition.name}

    edges = {name: uses(definition) for name, definition in local.items()}
    found = {name for name, (direct, _) in edges.items() if direct} | (own & local.keys())
    while True:
        more = {name for name, (_, calls) in edges.items() if name not in found and calls & found}
        if not more:
            break
        found |= more

    def reaches(definition: Definition) -> bool:
        direct, calls = uses(definition)
        return direct or bool(calls & found)

    return found, reaches


def support_starters(support: Path) -> tuple[frozenset[str], dict[str, frozenset[str]]]:
    """(the helpers that make a file slow as a whole, the starters by helper module): WHOLE_FILE and STARTERS, with
    every helper under support that imports a whole-file helper or has a function or class that reaches a starter."""
    trees = {f"tests.support.{path.stem}": ast.parse(path.read_text()) for path in sorted(support.glob("*.py"))}
    whole = set(WHOLE_FILE)
    starters = dict(STARTERS)
    while True:
        changed = False
        for name, tree in trees.items():
            if name not in whole and imported(tree) & whole:
                whole.add(name)
                changed = True
            found = frozenset(reaching(tree, starters, own=starters.get(name, frozenset()))[0]) | \
                starters.get(name, frozenset())
            if found != starters.get(name, frozenset()):
                starters[name] = found
                changed = True
        if not changed:
            return frozenset(whole), starters


def conftest_fixtures(path: Path, starters: Mapping[str, frozenset[str]]) -> frozenset[str]:
    """The fixtures of a conftest.py that start a service or an Ansible run (every test file may take them)."""
    return frozenset(reaching(ast.parse(path.read_text()), starters)[0])


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


def unmarked(source: str, whole: frozenset[str], starters: Mapping[str, frozenset[str]],
             fixtures: frozenset[str] = frozenset()) -> list[str]:
    """The tests of one test file that must be slow and are not, each with the reason."""
    tree = ast.parse(source)
    if marks_slow(tree.body):
        return []
    helpers = sorted(imported(tree) & whole)
    _, reaches = reaching(tree, starters, fixtures)
    return [f"{name}: " + (f"imports {helpers[0]}" if helpers else "starts a real service or an Ansible run")
            for name, function, slow in collected(tree) if not slow and (helpers or reaches(function))]


@pytest.fixture(scope="module")
def support() -> tuple[frozenset[str], dict[str, frozenset[str]]]:
    return support_starters(TESTS / "support")


def test_every_test_that_starts_a_real_service_is_slow(
        support: tuple[frozenset[str], dict[str, frozenset[str]]]) -> None:
    whole, starters = support
    fixtures = conftest_fixtures(TESTS / "conftest.py", starters)
    found = {path.name: unmarked(path.read_text(), whole, starters, fixtures)
             for path in sorted(TESTS.glob("test_*.py"))
             if path.name != Path(__file__).name}  # its made-up files are strings here
    missing = [f"tests/{name}::{test}" for name, tests in found.items() for test in tests]
    assert not missing, "mark these @pytest.mark.slow (or the file pytestmark = pytest.mark.slow):\n" + \
        "\n".join(missing)


def test_the_guard_sees_the_helpers_and_the_marks(support: tuple[frozenset[str], dict[str, frozenset[str]]]) -> None:
    """The rules on made-up files: a whole-file helper imported, Prometheus and molecule started, Ansible reached
    through a fixture, a helper function and a class; a module mark, a decorator and a class mark each satisfy
    them, and a test that only uses promstack's small helpers (a free port) needs none."""
    whole, starters = support
    assert whole >= WHOLE_FILE
    assert starters["tests.support.promstack"] >= STARTERS["tests.support.promstack"]
    real = "from tests.support import realcri\n\ndef test_a():\n    pass\n"
    assert unmarked(real, whole, starters) == ["test_a: imports tests.support.realcri"]
    assert unmarked("import pytest\npytestmark = [pytest.mark.slow]\n" + real, whole, starters) == []
    prometheus = (
        "from tests.support.promstack import free_port, start_prometheus\nfrom tests.support import promstack\n\n"
        "def test_port():\n    free_port()\n\n"
        "def test_prometheus(tmp_path):\n    start_prometheus(None, tmp_path, {})\n\n"
        "def test_by_module(tmp_path):\n    promstack.start_node_exporter(None, tmp_path)\n\n"
        "def test_molecule():\n    subprocess.run(['molecule', 'test'])\n"
    )
    reason = "starts a real service or an Ansible run"
    assert unmarked(prometheus, whole, starters) == [
        f"{name}: {reason}" for name in ("test_prometheus", "test_by_module", "test_molecule")]
    ansible = (
        "import pytest\nfrom tests.support.role_render import render\n\n"
        "@pytest.fixture\ndef rendered(tmp_path):\n    return render(tmp_path)\n\n"
        "@pytest.fixture\ndef unit(rendered):\n    return rendered['default']\n\n"
        "def helper():\n    '''Not ansible-playbook: a docstring only.'''\n    return ['ansible-galaxy', 'build']\n\n"
        "class Play:\n    def run(self):\n        helper()\n\n"
        "def test_by_fixture(unit):\n    pass\n\n"
        "@pytest.mark.usefixtures('rendered')\ndef test_by_usefixtures():\n    pass\n\n"
        "def test_by_helper():\n    helper()\n\n"
        "def test_by_class():\n    Play().run()\n\n"
        "def test_docstring_only():\n    '''as ansible-playbook renders it'''\n\n"
        "def test_by_conftest(started):\n    pass\n\n"
        "@pytest.mark.slow\ndef test_marked(unit):\n    pass\n\n"
        "@pytest.mark.slow\nclass TestMarked:\n    def test_in_class(self, unit):\n        pass\n\n"
        "class TestUnmarked:\n    def test_in_class(self, unit):\n        pass\n"
    )
    assert unmarked(ansible, whole, starters, fixtures=frozenset({"started"})) == [f"{name}: {reason}" for name in (
        "test_by_fixture", "test_by_usefixtures", "test_by_helper", "test_by_class", "test_by_conftest",
        "TestUnmarked::test_in_class")]


def test_a_helper_that_wraps_a_service_helper_is_one(tmp_path: Path) -> None:
    """Helpers under tests/support/ that wrap a starter (through another one) start services too, and one that
    imports a whole-file helper makes its importers slow as a whole; one that imports only small helpers does not."""
    (tmp_path / "stack.py").write_text("from tests.support.promstack import start_prometheus\n\n"
                                       "def cluster(procs, work):\n    return start_prometheus(procs, work, {})\n")
    (tmp_path / "wrapped.py").write_text("from tests.support import stack\n\n"
                                         "class Clusters:\n    def start(self):\n        stack.cluster(None, None)\n")
    (tmp_path / "guest.py").write_text("from tests.support.realruntime import booted_guest\n")
    (tmp_path / "plain.py").write_text("from tests.support.promstack import free_port\n")
    (tmp_path / "promstack.py").write_text("def start_prometheus():\n    pass\n\n"
                                           "def two_servers():\n    start_prometheus()\n    start_prometheus()\n")
    whole, starters = support_starters(tmp_path)
    assert whole == WHOLE_FILE | {"tests.support.guest"}
    assert starters["tests.support.stack"] == {"cluster"}
    assert starters["tests.support.promstack"] == STARTERS["tests.support.promstack"] | {"two_servers"}
    assert starters["tests.support.wrapped"] == {"Clusters"}
    assert starters.get("tests.support.plain", frozenset()) == frozenset()
    tests = ("from tests.support.wrapped import Clusters\nfrom tests.support.plain import free_port\n\n"
             "def test_d():\n    Clusters().start()\n\ndef test_e():\n    free_port()\n")
    assert unmarked(tests, whole, starters) == ["test_d: starts a real service or an Ansible run"]
    assert unmarked("import tests.support.guest\n\ndef test_f():\n    pass\n", whole, starters) == \
        ["test_f: imports tests.support.guest"]


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
