"""Fixtures shared by the unit tests that use a real database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database on each backend: an SQLite file, or a PostgreSQL database
    created for the test and dropped after it."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/test.sqlite3"
    else:
        with postgres_database() as url:
            yield url
