"""The health registry: pushed parts, pulled checks with a timeout, the overall status."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.server import free_port
from xmppd.health import Health, ModuleHealth
from xmppd.storage.database import Database


async def test_ready_only_when_every_part_is() -> None:
    health = Health()
    assert (await health.check()).ready  # nothing registered: nothing is wrong
    listeners = health.part("listeners", reason="not bound yet")
    report = await health.check()
    assert not report.ready
    assert report.part("listeners").reason == "not bound yet"
    listeners.set_ready()
    report = await health.check()
    assert report.ready and report.part("listeners").reason == ""
    listeners.set_not_ready("port 5222 closed")
    assert health.snapshot().part("listeners").reason == "port 5222 closed"
    assert health.part("listeners") is listeners  # asking again: the same part


async def test_pulled_checks_report_their_reason_exception_or_timeout() -> None:
    health = Health()
    never = asyncio.Event()

    async def fine() -> str | None:
        return None

    async def degraded() -> str | None:
        return "2 of 3 replicas"

    async def crashing() -> str | None:
        raise ConnectionRefusedError("refused")

    async def hanging() -> str | None:
        await never.wait()
        return None

    health.add_check("fine", fine)
    health.add_check("degraded", degraded)
    health.add_check("crashing", crashing)
    health.add_check("hanging", hanging, timeout=0.05)
    report = await health.check()
    assert not report.ready
    assert report.part("fine").ready
    assert report.part("degraded").reason == "2 of 3 replicas"
    assert report.part("crashing").reason == "ConnectionRefusedError: refused"
    assert report.part("hanging").reason == "no answer within 0.05s"
    assert [p.name for p in report.parts] == ["crashing", "degraded", "fine", "hanging"]


async def test_snapshot_does_not_run_the_checks() -> None:
    health = Health()
    runs = []

    async def counted() -> str | None:
        runs.append(1)
        return None

    health.add_check("db", counted)
    assert health.snapshot().part("db").reason == "not checked yet"
    assert runs == []
    await health.check()
    assert runs == [1]
    assert health.snapshot().part("db").ready
    assert runs == [1]


async def test_one_name_is_one_kind_and_parts_can_be_removed() -> None:
    health = Health()

    async def ok() -> str | None:
        return None

    health.add_check("db", ok)
    with pytest.raises(ValueError, match="another kind"):
        health.part("db")
    health.remove("db")
    health.part("db").set_ready()
    with pytest.raises(ValueError, match="another kind"):
        health.add_check("db", ok)


async def test_module_parts_are_named_after_the_module_and_carry_the_host() -> None:
    health = Health()
    a = ModuleHealth(health, "push", "a.example")
    b = ModuleHealth(health, "push", "b.example")
    a.part(reason="connecting").set_ready()
    b.part(reason="connecting")

    async def app_server() -> str | None:
        return "no answer from push.example"

    b.add_check(app_server, sub="app_server")
    report = await health.check()
    assert report.part("mod_push", "a.example").ready
    assert report.part("mod_push", "b.example").reason == "connecting"
    assert report.part("mod_push.app_server", "b.example").reason == "no answer from push.example"
    assert report.as_dict()["ready"] is False
    parts = report.as_dict()["parts"]
    assert isinstance(parts, list)
    assert {"name": "mod_push", "host": "a.example", "ready": True, "reason": ""}.items() <= parts[
        0
    ].items()


async def test_database_check_answers_or_says_why_not(tmp_path: Path) -> None:
    sqlite = Database(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}")
    try:
        assert await sqlite.health_check() is None
    finally:
        await sqlite.close()
    port = free_port()  # nothing listens there
    pg = Database(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/test")
    try:
        reason = await pg.health_check()
    finally:
        await pg.close()
    assert reason is not None
    assert reason.startswith("cannot connect: ") and str(port) in reason
