"""modules/ and hooks/ import only xmppd.api (CONVENTIONS.md §2), and each imports alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXTENSION_FILES = sorted(
    p for d in ("modules", "hooks") for p in (ROOT / d).rglob("*.py") if p.name != "__init__.py"
)


def _imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", EXTENSION_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_extension_imports_only_the_public_api(path: Path) -> None:
    private = [
        name
        for name in _imported_modules(path)
        if (name == "xmppd" or name.startswith("xmppd."))
        and not (name == "xmppd.api" or name.startswith("xmppd.api."))
    ]
    assert not private, f"{path.relative_to(ROOT)} imports private xmppd modules: {private}"


def test_boundary_check_catches_a_private_import(tmp_path: Path) -> None:
    bad = tmp_path / "mod_bad.py"
    bad.write_text("from xmppd.router import Router\nimport xmppd.server\n")
    assert _imported_modules(bad) == ["xmppd.router", "xmppd.server"]


@pytest.mark.parametrize("path", EXTENSION_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_extension_imports_in_a_fresh_interpreter(path: Path) -> None:
    dotted = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    result = subprocess.run(
        [sys.executable, "-c", f"import {dotted}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
