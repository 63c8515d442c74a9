"""Issue 16's acceptance: a server restart loses no acknowledged message.

200 clients (the bench's reconnecting client, :mod:`bench.storm_client`: STARTTLS,
SCRAM-SHA-1, XEP-0198 stream management with resumption, initial presence) are logged
in to a real xmppd on SQLite with offline storage; 100 pairs chat, every message
counted by id.  The server is restarted twice while they chat, first gracefully
(SIGTERM, then start) and then with ``kill -9``; every client notices the drop and
reconnects with jittered back-off.  Then every message the server acknowledged to its
sender (XEP-0198 ``<a/>``) must have reached its recipient exactly once: live, from
offline storage, or redelivered.  Messages never acknowledged are not resent (the
client does not resend them here), so a duplicate can only come from the server.

The same holds when every TCP connection is reset while the server runs and each client
logs in afresh (no resumption) to the resource its hibernated session still holds: the new
session replaces the hibernated one, whose queue must not be dropped.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from bench.storm_fleet import Fleet
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, restart, running_server

CLIENTS = 200
PASSWORD = "storm-secret"
RATE = 400.0  # chat messages per second, all pairs together


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    tmp_path = tmp_path_factory.mktemp("storm")
    with running_server(tmp_path, modules={**DEFAULT_TEST_MODULES, "offline": {}}) as srv:
        users = tmp_path / "users.txt"
        users.write_text("".join(f"s{i:03d}@{srv.domain} {PASSWORD}\n" for i in range(CLIENTS)))
        done = srv.cli("import-users", str(users))
        assert done.returncode == 0, done.stderr
        yield srv


def kill_and_start(server: XmppdServer) -> None:
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(timeout=15)
    restart(server)


async def storm(fleet: Fleet, server: XmppdServer, how: str) -> dict[str, Any]:
    """Chat, drop everybody by restarting the server ``how``, wait until everybody is
    back, chat on, then count."""
    fleet.chat_start(RATE)
    await asyncio.sleep(1.5)
    waiting = asyncio.create_task(
        fleet.storm(
            cut=False, concurrency=50, first=0.3, base=0.3, cap=2.0, timeout=20.0, limit=40.0
        )
    )
    await asyncio.sleep(0.05)
    await asyncio.to_thread(restart if how == "graceful" else kill_and_start, server)
    back = await waiting
    await asyncio.sleep(1.5)
    await fleet.chat_stop()
    quiet = await fleet.quiesce(timeout=10.0)
    counts = fleet.count()
    return {**back, **counts, **quiet}


async def scenario(server: XmppdServer) -> None:
    fleet = Fleet(0)
    users = [(i, f"s{i:03d}", f"s{i ^ 1:03d}@{server.domain}") for i in range(CLIENTS)]
    login = await fleet.login(
        "127.0.0.1",
        server.starttls_port,
        server.domain,
        users,
        PASSWORD,
        concurrency=50,
        timeout=30.0,
        mode="scram",
        resend=False,
    )
    assert login["ok"] == CLIENTS, login["errors"]
    try:
        for how in ("graceful", "kill -9"):
            result = await storm(fleet, server, how)
            summary = {k: v for k, v in result.items() if k != "durations"}
            print(how, summary)
            assert result["ok"] == CLIENTS, (how, summary)
            assert result["sent"] > 0 and result["acked"] > 0, (how, summary)
            assert result["lost"] == 0, (how, summary)
            assert result["duplicates"] == 0, (how, summary)
            assert result["error_stanzas"] == 0, (how, summary)
            # A new process has a new ticket key: the tickets every client offered are
            # refused and each does a full TLS handshake instead.
            assert result["tls_resumed"] == 0, (how, summary)
    finally:
        for session in fleet.sessions:
            session.cut()
        await asyncio.sleep(0.3)
        fleet.close()


@pytest.mark.timeout(150)
def test_restart_reconnect_loses_no_acknowledged_message(server: XmppdServer) -> None:
    asyncio.run(asyncio.wait_for(scenario(server), 150))


async def cut_scenario(server: XmppdServer, clients: int) -> dict[str, Any]:
    """Every TCP connection reset while the server runs; each client logs in afresh
    (no resumption) to the same resource its hibernated session holds."""
    fleet = Fleet(0)
    users = [(i, f"s{i:03d}", f"s{i ^ 1:03d}@{server.domain}") for i in range(clients)]
    await fleet.login(
        "127.0.0.1",
        server.starttls_port,
        server.domain,
        users,
        PASSWORD,
        concurrency=50,
        timeout=30.0,
        mode="scram",
        resend=False,
    )
    try:
        fleet.chat_start(RATE)
        await asyncio.sleep(1.0)
        back = await fleet.storm(
            cut=True, concurrency=50, first=0.3, base=0.3, cap=2.0, timeout=20.0, limit=40.0
        )
        await asyncio.sleep(1.0)
        await fleet.chat_stop()
        quiet = await fleet.quiesce(timeout=10.0)
        await asyncio.sleep(2.0)
        return {**back, **fleet.count(), **quiet}
    finally:
        for session in fleet.sessions:
            session.cut()
        await asyncio.sleep(0.3)
        fleet.close()


@pytest.mark.timeout(120)
def test_fresh_login_over_a_hibernated_session_loses_no_acknowledged_message(
    server: XmppdServer,
) -> None:
    result = asyncio.run(asyncio.wait_for(cut_scenario(server, CLIENTS), 100))
    summary = {k: v for k, v in result.items() if k != "durations"}
    print(summary)
    assert result["ok"] == CLIENTS, summary
    assert result["acked"] > 0, summary
    assert result["lost"] == 0, summary
    assert result["duplicates"] == 0, summary
    # The server kept running: every client resumed its TLS session with its ticket.
    assert result["tls_resumed"] == CLIENTS, summary
