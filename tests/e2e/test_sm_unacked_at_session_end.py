"""XEP-0198: what a session never acknowledged is not lost when the session ends in
any other way than a resumption timeout (which the stream management tests cover): a
new login with the same resource, a clean stream close, the server's dead-peer ping
timeout, and a server restart. Each time the message arrives at the account's next
session (XEP-0198 §5: treated as sent to an unavailable resource: offline storage)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clients import Slix, register_account
from tests.support.rawstream import RawClient
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, restart, running_server

SM = "urn:xmpp:sm:3"
PASSWORD = "unacked-password"
_names = itertools.count()
MODULES = {**DEFAULT_TEST_MODULES, "offline": {}}


@pytest.fixture(scope="module")
def pinging_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    modules = {**MODULES, "ping": {"idle_interval": "2s", "timeout": "2s"}}
    with running_server(tmp_path_factory.mktemp("unacked"), modules=modules) as srv:
        yield srv


class _Recording(RawClient):
    """Keeps all it read: the message may come with the answer to the bind."""

    seen = b""

    async def read_until(self, pattern: str | bytes, timeout: float = 10) -> bytes:
        data = await super().read_until(pattern, timeout)
        self.seen += data
        return data


async def _users(server: XmppdServer) -> tuple[str, str]:
    n = next(_names)
    names = (f"unacked{n}", f"sender{n}")
    for name in names:
        await register_account(server, name, PASSWORD)
    return names


async def _phone_with_unacked(
    server: XmppdServer, name: str, sender: str, body: str, *, resume: bool = True
) -> RawClient:
    """``name`` on a raw stream with stream management (resumable unless ``resume`` is
    false), holding ``body`` from ``sender`` received and never acknowledged; the
    stream management id is in ``phone.sm_id``."""
    phone = await RawClient(server).connect()
    jid = await phone.login(name, PASSWORD, resource="phone")
    phone.send(f"<enable xmlns='{SM}' resume='{str(resume).lower()}'/><presence/>")
    enabled = await phone.read_until(b"<enabled[^>]*>")
    found = re.search(rb'id="([^"]+)"', enabled)
    phone.sm_id = found.group(1).decode() if found else ""  # type: ignore[attr-defined]
    async with Slix(server, f"{sender}@localhost", PASSWORD) as slix:
        slix.xmpp.send_message(mto=jid, mbody=body, mtype="chat")
        await phone.read_until(re.escape(body))
    return phone


async def _next_login_gets(server: XmppdServer, name: str, body: str, resource: str) -> None:
    later = _Recording(server)
    await later.connect()
    try:
        await later.login(name, PASSWORD, resource=resource)
        later.send("<presence/>")
        if body.encode() not in later.seen:
            await later.read_until(re.escape(body), timeout=20)
        later.send("<iq type='get' id='last'><ping xmlns='urn:xmpp:ping'/></iq>")
        await later.read_until("id=.last.")
        assert later.seen.count(body.encode()) == 1  # once
    finally:
        await later.close()


async def test_a_new_login_with_the_same_resource(pinging_server: XmppdServer) -> None:
    name, sender = await _users(pinging_server)
    phone = await _phone_with_unacked(pinging_server, name, sender, "before the conflict")
    try:
        # The app restarted and logs in afresh, same resource: the old session ends
        # with <conflict/>, and what it never acknowledged comes to the new one.
        await _next_login_gets(pinging_server, name, "before the conflict", "phone")
    finally:
        await phone.close()


async def test_a_clean_stream_close_without_acks(pinging_server: XmppdServer) -> None:
    name, sender = await _users(pinging_server)
    phone = await _phone_with_unacked(pinging_server, name, sender, "before the close")
    phone.send("</stream:stream>")
    try:
        await phone.read_to_close()
    finally:
        await phone.close()
    await _next_login_gets(pinging_server, name, "before the close", "laptop")


async def test_the_dead_peer_ping_timeout_without_resumption(
    pinging_server: XmppdServer,
) -> None:
    name, sender = await _users(pinging_server)
    phone = await _phone_with_unacked(
        pinging_server, name, sender, "before the silence", resume=False
    )
    try:
        # The phone answers nothing (no pong, no ack): the server's ping times out.
        assert b"connection-timeout" in await phone.read_to_close(timeout=30)
    finally:
        await phone.close()
    await _next_login_gets(pinging_server, name, "before the silence", "laptop")


async def test_the_dead_peer_ping_timeout_of_a_resumable_session(
    pinging_server: XmppdServer,
) -> None:
    """A resumable session whose client stops answering is treated as one whose
    connection dropped: it waits for a resumption, which brings what was never
    acknowledged (a phone that lost its network quietly resumes, not logs in anew)."""
    name, sender = await _users(pinging_server)
    phone = await _phone_with_unacked(pinging_server, name, sender, "before the quiet")
    try:
        closing = await phone.read_to_close(timeout=30)
        assert b"connection-timeout" not in closing  # no stream error: the session waits
    finally:
        await phone.close()
    resumed = _Recording(pinging_server)
    await resumed.connect()
    try:
        await resumed.starttls()
        await resumed.open_stream()
        token = base64.b64encode(f"\0{name}\0{PASSWORD}".encode()).decode()
        resumed.send(
            f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
        )
        await resumed.read_until(b"<success")
        await resumed.open_stream()
        resumed.send(f"<resume xmlns='{SM}' previd='{phone.sm_id}' h='0'/>")  # type: ignore[attr-defined]
        await resumed.read_until(b"before the quiet")
        assert b"<resumed" in resumed.seen
    finally:
        await resumed.close()


async def test_a_server_restart(tmp_path: Path) -> None:
    with running_server(tmp_path, modules=MODULES) as server:
        name, sender = await _users(server)
        phone = await _phone_with_unacked(server, name, sender, "before the restart")
        try:
            restart(server)  # SIGTERM: a clean shutdown, then the same server again
        finally:
            await phone.close()
        await _next_login_gets(server, name, "before the restart", "phone")


async def test_a_hibernated_session_holds_a_bounded_number_of_bytes(tmp_path: Path) -> None:
    """Others can send a waiting (hibernated) session as much as they like, and nothing
    is written while it waits: past ``max_unacked_bytes`` the session ends and what it
    held goes to offline storage, delivered at the next login."""
    extra = "[c2s]\nresume_timeout = '60s'\nmax_unacked_bytes = '64KiB'\n"
    with running_server(tmp_path, modules=MODULES, extra=extra) as server:
        name, sender = await _users(server)
        phone = await RawClient(server).connect()
        jid = await phone.login(name, PASSWORD, resource="phone")
        phone.send(f"<enable xmlns='{SM}' resume='true'/><presence/>")
        await phone.read_until(b"<enabled[^>]*>")
        assert phone.writer is not None
        phone.writer.transport.abort()  # hibernates
        chunk = "x" * 20_000
        async with Slix(server, f"{sender}@localhost", PASSWORD) as slix:
            for i in range(6):  # 120 KB for a session allowed 64 KiB
                slix.xmpp.send_message(mto=jid, mbody=f"big {i} {chunk}", mtype="chat")
            await slix.xmpp.plugin["xep_0199"].ping(jid="localhost", timeout=10)
        for _ in range(100):
            if "reason=resumption-timeout" in server.log_path.read_text():
                break
            await asyncio.sleep(0.1)
        assert "reason=resumption-timeout" in server.log_path.read_text()  # long before 60 s
        later = _Recording(server)
        await later.connect()
        try:
            await later.login(name, PASSWORD, resource="laptop")
            later.send("<presence/>")
            if b"big 5 " not in later.seen:
                await later.read_until("big 5 ", timeout=20)
            for i in range(6):
                assert later.seen.count(f"big {i} ".encode()) == 1
        finally:
            await later.close()
