"""XEP-0199 server-to-client pings: a server with short ping settings cuts off a client
that does not answer, with a connection-timeout stream error, and keeps those that do."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from tests.support.e2e import PASSWORD, check_server_survived, new_account, online
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, running_server
from tests.support.xmlclient import XmlClient


@pytest.fixture(scope="module")
def pinging_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    modules = {**DEFAULT_TEST_MODULES, "ping": {"idle_interval": "2s", "timeout": "2s"}}
    with running_server(tmp_path_factory.mktemp("xmppd-ping"), modules=modules) as srv:
        yield srv
        check_server_survived(srv)


async def test_a_client_that_does_not_answer_pings_is_disconnected(
    pinging_server: XmppdServer,
) -> None:
    silent = await XmlClient.login(
        pinging_server, await new_account(pinging_server, "silent"), PASSWORD, answer_pings=False
    )
    polite = await XmlClient.login(
        pinging_server, await new_account(pinging_server, "polite"), PASSWORD, answer_pings=True
    )
    slix = await online(pinging_server, await new_account(pinging_server, "slix"))
    try:
        assert await silent.wait_closed(timeout=30) == "connection-timeout"
        assert silent.pings_received >= 1
        # A client that answers is pinged again and again (a new round each time it has
        # been idle for long enough), and stays connected.
        await polite.wait_pings(2, timeout=30)
        assert polite.is_connected
        pong = await polite.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to=pinging_server.domain)
        assert pong.get("type") == "result"
        assert await slix.xmpp.plugin["xep_0199"].ping(jid=pinging_server.domain, timeout=10) >= 0
    finally:
        await silent.close()
        await polite.close()
        await slix.stop()


async def test_clients_that_fell_idle_together_are_pinged_one_after_another(
    pinging_server: XmppdServer,
) -> None:
    """Sessions whose last input came at the same moment (a restart brings everyone
    back at once) are not all pinged at the same moment: their pings are spread over
    the sweep's period (2 s here), so a server of thousands does not wake them all in
    one burst."""
    clients = [
        await XmlClient.login(
            pinging_server, await new_account(pinging_server, f"herd{i}"), PASSWORD
        )
        for i in range(16)
    ]
    try:
        for client in clients:
            client.send(" ")  # the same last activity for all
        together = time.monotonic()
        deadline = together + 30
        while not all(any(t > together for t in c.ping_times) for c in clients):
            assert time.monotonic() < deadline, "not every client was pinged"
            await asyncio.sleep(0.1)
        firsts = sorted(min(t for t in c.ping_times if t > together) for c in clients)
        assert firsts[-1] - firsts[0] >= 0.8, firsts
        assert all(c.is_connected for c in clients)
    finally:
        for client in clients:
            await client.close()
