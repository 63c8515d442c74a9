"""Every module that keeps tables deletes an account's rows (``user_removed``) and puts
them in its data export (``user_export``): docs/data.md promises both."""

from __future__ import annotations

import pkgutil
from pathlib import Path

import pytest

import xmppd_modules
from xmppd import hooks
from xmppd.modules import import_module

DATA = Path(__file__).parents[2] / "docs" / "data.md"
WITH_TABLES = sorted(
    name
    for info in pkgutil.iter_modules(xmppd_modules.__path__)
    if info.name.startswith("mod_") and import_module(name := info.name[4:]).tables
)


def test_there_are_modules_with_tables() -> None:
    assert {"roster", "mam", "http_upload", "muc"} <= set(WITH_TABLES)


@pytest.mark.parametrize("name", WITH_TABLES)
def test_module_with_tables_deletes_and_exports_user_data(name: str) -> None:
    module = import_module(name)
    hooked = {reg.hook for reg in module.hook_handlers}
    assert hooks.USER_REMOVED in hooked, f"mod_{name} keeps tables but ignores user_removed"
    assert hooks.USER_EXPORT in hooked, f"mod_{name} keeps tables but not in exports"


@pytest.mark.parametrize("name", WITH_TABLES)
def test_every_table_is_in_data_md(name: str) -> None:
    text = DATA.read_text()
    for table in import_module(name).tables:
        assert f"`{table.name}`" in text, f"{table.name} is missing from docs/data.md"
