"""modules/ and hooks/ import only xmppd.api (CONVENTIONS.md §2), and each imports alone,
under the names they are installed as (``xmppd_modules``, ``xmppd_hooks``: never the
generic ``modules`` and ``hooks``)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from xmppd.packages import HOOKS_PACKAGE, MODULES_PACKAGE

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


PYTHON_FILES = sorted(
    p
    for d in ("xmppd", "modules", "hooks", "tests", "bench")
    for p in (ROOT / d).rglob("*.py")
    if "node_modules" not in p.parts
)
INSTALLED_AS = {"modules": MODULES_PACKAGE, "hooks": HOOKS_PACKAGE}


def test_nothing_imports_the_folders_under_their_generic_names() -> None:
    """The repository root is on ``sys.path`` in tests, so ``import modules`` would work
    here and fail in an installed server."""
    found = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in PYTHON_FILES
        for name in _imported_modules(path)
        if name.partition(".")[0] in INSTALLED_AS
    ]
    assert not found, found


def installed_name(path: Path) -> str:
    """The import name of a file of modules/ or hooks/ (``xmppd_modules.mod_muc.room``)."""
    folder, *rest = path.relative_to(ROOT).with_suffix("").parts
    return ".".join((INSTALLED_AS[folder], *rest))


@pytest.mark.parametrize("path", EXTENSION_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_extension_imports_in_a_fresh_interpreter(path: Path, tmp_path: Path) -> None:
    # cwd elsewhere: the repository root is not on sys.path, the installed names are used
    result = subprocess.run(
        [sys.executable, "-c", f"import {installed_name(path)}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
