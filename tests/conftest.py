"""Fixtures: a real xmppd process per test module, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import XmppdServer, running_server


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[XmppdServer]:
    """xmppd with the default test modules, once per storage backend."""
    tmp: Path = tmp_path_factory.mktemp(f"xmppd-{request.param}")
    with running_server(tmp, backend=request.param) as srv:
        yield srv


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    """xmppd on SQLite only, for tests that exercise no storage."""
    with running_server(tmp_path_factory.mktemp("xmppd-sqlite")) as srv:
        yield srv
