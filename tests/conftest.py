"""Fixtures: a real xmppd process per test module, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import SESSION_REGISTRY, XmppdServer, running_server

# The second pass of the suite (a serialised session registry) runs on SQLite only:
# the registry does not touch storage.
BACKENDS = ["sqlite", "postgresql"] if SESSION_REGISTRY == "memory" else ["sqlite"]


@pytest.fixture(scope="module", params=BACKENDS)
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
