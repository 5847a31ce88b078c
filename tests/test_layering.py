"""The collector's import graph has no circle and no arrow back up the pipeline (docs/testing-layout.md, "Layers").

Every module under collector/ is parsed (not imported) and every import of a collector module is an arrow, those at
module level and those inside functions alike: a function's import runs on its first call, and a circle or a back
arrow that waits for a call is still one. LAYERS names each module's place, from the entry point down to the records;
a module may import its own layer or a lower one, never a higher one, and the arrows within a layer may not close a
circle. A new module fails the test until it is given a layer.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

from tests.conftest import REPO

ROOT = "collector"

# From the top (may import everything below it) to the bottom (imports no collector module). A name stands for the
# module and, when it is a package, every module in it: "collector.nvml" is collector/nvml.py or the package
# collector/nvml/, "collector.attribution" the attribution package. The root package (collector/__init__.py, the
# version) stands for itself only.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("collector.__main__",),  # the entry point: the interpreter's settings, then the command line
    ("collector.cli",),  # the command line
    ("collector.runner", "collector.check"),  # the two things a command does: runs (once or as a service), --check
    # what they use: one collection; systemd's notify and signals for the service; node_exporter's answers for --check
    ("collector.collection", "collector.systemd", "collector.check_node_exporter"),
    ("collector.state",),  # what one run leaves the next: the ledger, allocation history, container names
    ("collector.nvml", "collector.procfs", "collector.attribution"),  # the readers: NVML, /proc, who owns a process
    ("collector.accounting", "collector.metrics"),  # the ledger and the report made from it and the records
    ("collector.exposition", "collector.textfile"),  # the text format and the file it is written to
    ("collector.settings", "collector.redact", "collector.safeio", "collector.strictyaml"),  # tools every layer uses
    ("collector.model", ROOT),  # the records every stage passes on, and the version
)

Graph = Mapping[str, frozenset[tuple[str, int]]]  # module -> {(imported module, line)}


def module_name(path: Path, top: Path) -> str:
    parts = list(path.relative_to(top.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def known(name: str, modules: Iterable[str]) -> str | None:
    """The longest collector module that name is or is inside (an imported function's module)."""
    names = set(modules)
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in names:
            return candidate
    return None


def imports(tree: ast.AST, module: str, is_package: bool) -> Iterable[tuple[str, int]]:
    """(imported name, line) for every import in the tree, in functions too; from-imports give each name as a
    possible submodule (package.name) first."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base]) if base else ".".join(package)
            for alias in node.names:
                yield f"{base}.{alias.name}", node.lineno


def import_graph(top: Path) -> dict[str, frozenset[tuple[str, int]]]:
    """Every module under top (a package directory) -> the collector modules it imports, with the line."""
    paths = {module_name(path, top): path for path in sorted(top.rglob("*.py"))}
    graph: dict[str, frozenset[tuple[str, int]]] = {}
    for module, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        arrows = set()
        for name, line in imports(tree, module, path.name == "__init__.py"):
            target = known(name, paths)
            if target is not None and target != module:
                arrows.add((target, line))
        graph[module] = frozenset(arrows)
    return graph


def layer_of(module: str) -> int:
    places = [index for index, layer in enumerate(LAYERS) for name in layer
              if module == name or (name != ROOT and module.startswith(name + "."))]
    assert len(places) == 1, f"{module} needs exactly one place in LAYERS (test_layering.py), has {len(places)}"
    return places[0]


def back_arrows(graph: Graph) -> list[str]:
    return [f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)}), line {line}"
            for module, arrows in sorted(graph.items()) for target, line in sorted(arrows)
            if layer_of(target) < layer_of(module)]


def circle(graph: Graph) -> list[str]:
    """One import circle as the modules on it (the first back to the start), or [] when there is none."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(module: str) -> list[str]:
        path.append(module)
        on_path.add(module)
        for target, _ in sorted(graph.get(module, ())):
            if target in on_path:
                return [*path[path.index(target):], target]
            if target not in done:
                found = visit(target)
                if found:
                    return found
        path.pop()
        on_path.discard(module)
        done.add(module)
        return []

    for module in sorted(graph):
        if module not in done:
            found = visit(module)
            if found:
                return found
    return []


@pytest.fixture(scope="module")
def graph() -> dict[str, frozenset[tuple[str, int]]]:
    return import_graph(REPO / "collector")


def test_the_graph_is_read(graph: Graph) -> None:
    """The parse finds the arrows the pipeline is made of, a function's import among them (cli imports check only
    for --check), so an empty graph cannot pass the tests below."""
    targets = {module: {target for target, _ in arrows} for module, arrows in graph.items()}
    assert "collector.check" in targets["collector.cli"]
    assert "collector.cli" in targets["collector.__main__"]
    assert "collector.collection" in targets["collector.runner"]
    assert {"collector.accounting", "collector.procfs"} <= targets["collector.collection"]


def test_every_module_has_one_layer(graph: Graph) -> None:
    for module in graph:
        layer_of(module)


def test_no_import_circle(graph: Graph) -> None:
    found = circle(graph)
    assert not found, "import circle: " + " -> ".join(found)


def test_no_import_back_up_the_pipeline(graph: Graph) -> None:
    assert not back_arrows(graph), "\n".join(back_arrows(graph))


def test_the_checks_see_a_circle_and_a_back_arrow() -> None:
    """The two checks on made-up graphs: one with a back arrow (model importing cli), one with a circle within a
    layer (nvml and procfs importing each other), both through a function's import as the parse records them."""
    tree = ast.parse("def late():\n    from collector import cli\n")
    assert list(imports(tree, "collector.model", is_package=False)) == [("collector.cli", 2)]
    up = {"collector.model": frozenset({("collector.cli", 2)}), "collector.cli": frozenset()}
    assert back_arrows(up) == ["collector.model (layer 9) imports collector.cli (layer 1), line 2"]
    assert circle(up) == []
    loop = {"collector.nvml": frozenset({("collector.procfs", 1)}),
            "collector.procfs": frozenset({("collector.nvml", 5)})}
    assert back_arrows(loop) == []
    assert circle(loop) == ["collector.nvml", "collector.procfs", "collector.nvml"]


def test_relative_imports_and_packages_resolve(tmp_path: Path) -> None:
    """A package's own modules (collector.nvml as a package, say) importing each other relatively are arrows too, and
    take the package's layer."""
    package = tmp_path / "collector" / "nvml"
    package.mkdir(parents=True)
    (tmp_path / "collector" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("from .session import Session\n")
    (package / "session.py").write_text("from . import query\nfrom ..model import Device\n")
    (package / "query.py").write_text("")
    (tmp_path / "collector" / "model.py").write_text("")
    found = import_graph(tmp_path / "collector")
    assert found["collector.nvml"] == {("collector.nvml.session", 1)}
    assert found["collector.nvml.session"] == {("collector.nvml.query", 1), ("collector.model", 2)}
    assert layer_of("collector.nvml.session") == layer_of("collector.nvml")
