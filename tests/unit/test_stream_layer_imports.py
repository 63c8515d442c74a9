"""The stream layer stands on its own: nothing under xmppd/stream/ or xmppd/transports/
imports xmppd/server.py (not even for type checking), and transports know streams only
through xmppd.stream.transport, never a stream kind."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STREAM_LAYER = sorted(
    p for d in ("xmppd/stream", "xmppd/transports") for p in (ROOT / d).rglob("*.py")
)
STREAM_KINDS = ("xmppd.stream.c2s", "xmppd.stream.component")


def imported_modules(source: str) -> set[str]:
    """Every module an import statement names, anywhere in the file (``from xmppd
    import server`` counts as ``xmppd.server``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", STREAM_LAYER, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_stream_layer_never_imports_the_server(path: Path) -> None:
    names = imported_modules(path.read_text(encoding="utf-8"))
    assert "xmppd.server" not in names
    if path.parent.name == "transports":
        assert not names.intersection(STREAM_KINDS)


def test_the_check_sees_imports_under_type_checking() -> None:
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from xmppd import server\n"
    assert "xmppd.server" in imported_modules(source)
