"""The import graph of ``xmppd/`` has no cycle, and the layers below ``Server`` do not
import it (docs/architecture.md). Imports under ``if TYPE_CHECKING:`` count too: a
cycle there is a cycle in the design, even if Python never runs it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "xmppd"

NOT_IMPORTING_SERVER = ("xmppd/stream/", "xmppd/transports/", "xmppd/router.py", "xmppd/host.py")
NOT_IMPORTING_SERVER_FILES = ("xmppd/modules.py", "xmppd/module.py", "xmppd/core.py")


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str, modules: set[str]) -> str | None:
    """The module of ``xmppd`` that importing ``name`` loads (its longest known prefix)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module → the ``xmppd`` modules it imports (``from xmppd import hooks`` is an
    import of ``xmppd.hooks``; the package face ``xmppd`` itself is left out)."""
    files = {_module_name(p, package.parent): p for p in package.rglob("*.py")}
    modules = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                if not target.startswith("xmppd"):
                    continue
                resolved = _resolve(target, modules)
                if resolved is not None and resolved not in (name, "xmppd"):
                    edges.add(resolved)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path ``a -> b -> ... -> a``, or ``None``."""
    state: dict[str, int] = {}
    trail: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        trail.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*trail[trail.index(nxt) :], nxt]
            if state.get(nxt) is None and (found := visit(nxt)) is not None:
                return found
        trail.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if state.get(node) is None and (found := visit(node)) is not None:
            return found
    return None


def test_xmppd_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_lower_layers_do_not_import_the_server() -> None:
    offenders = []
    for name, edges in import_graph().items():
        path = name.replace(".", "/")
        below = path.startswith(NOT_IMPORTING_SERVER) or any(
            f"{path}.py" == f or f"{path}/" == f for f in NOT_IMPORTING_SERVER
        )
        below = below or f"{path}.py" in NOT_IMPORTING_SERVER_FILES
        if below and "xmppd.server" in edges:
            offenders.append(name)
    assert not offenders, f"these import xmppd.server: {offenders}"


def test_cycle_finder_finds_a_cycle_and_resolves_from_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "xmppd"
    (pkg / "stream").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "stream" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from xmppd import b\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from xmppd.stream.c import C\n"
    )
    (pkg / "stream" / "c.py").write_text("import xmppd.a\n")
    graph = import_graph(pkg)
    assert graph["xmppd.a"] == {"xmppd.b"}
    assert graph["xmppd.b"] == {"xmppd.stream.c"}
    assert find_cycle(graph) == ["xmppd.a", "xmppd.b", "xmppd.stream.c", "xmppd.a"]
