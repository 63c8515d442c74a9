"""Acknowledged is durable across a database outage for offline messages and room
archives too (issue 15, gap 3): the test's own PostgreSQL is stopped for OUTAGE seconds
during counted traffic.

Offline messages: the recipient has no session; the sender (XEP-0198) keeps sending
while the database is down. Storing waits and is retried (the ``mod_offline`` health
part says why), so acknowledgements stop rather than lose; once the database is back
every message is acknowledged, and the recipient's next login gets each exactly once.

Room archive: a persistent room archives every groupchat message before sending it to
its occupants; during the outage the messages wait, afterwards each is delivered and
archived exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from pathlib import Path
from typing import cast

import pytest
import sqlalchemy as sa
from lxml import etree
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support.inprocess import InProcessServer, inprocess_server
from tests.support.muc import join, submit_config
from tests.support.pgcluster import PrivatePostgres, private_postgres
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer
from tests.support.xmlclient import XmlClient, attrs, tag, text
from xmppd.health import PartStatus
from xmppd.jid import JID

SM = "urn:xmpp:sm:3"
PASSWORD = "outage-secret"
OUTAGE = 10.0
BURST = 10

pytestmark = pytest.mark.timeout(240)


def part(srv: InProcessServer, name: str) -> PartStatus:
    return srv.server.health.snapshot().part(name, srv.domain)


async def rows(url: str, sql: str, **params: str) -> Counter[str]:
    """Message ids of the stanzas ``sql`` selects, straight from the database."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(sa.text(sql), params)
            return Counter(etree.fromstring(r.stanza.encode()).get("id") or "" for r in result)
    finally:
        await engine.dispose()


class Sender:
    """A client with stream management; counts what it sent and what is acknowledged."""

    def __init__(self, client: XmlClient) -> None:
        self.client = client
        self.sent: list[str] = []
        self.acked = 0

    async def enable(self) -> None:
        self.client.send(f"<enable xmlns='{SM}'/>")
        await self.client.expect(lambda el: el.tag == f"{{{SM}}}enabled")

    def burst(self, to: str, prefix: str, mtype: str) -> None:
        for i in range(BURST):
            msg_id = f"{prefix}-{i}"
            self.client.send(
                f"<message{attrs(to=to, type=mtype, id=msg_id)}>"
                f"<body>{text('stored ' + msg_id)}</body></message>"
            )
            self.sent.append(msg_id)
        self.client.send(f"<r xmlns='{SM}'/>")

    async def wait_acked(self, timeout: float) -> None:
        """Until an ``<a/>`` covers everything sent (earlier ones are skipped)."""
        want = str(len(self.sent))
        ack = await self.client.expect(
            lambda el: el.tag == f"{{{SM}}}a" and el.get("h") == want, timeout=timeout
        )
        self.acked = int(ack.get("h") or 0)


async def outage(
    srv: InProcessServer, pg: PrivatePostgres, sender: Sender, to: str, mtype: str, health: str
) -> tuple[int, float]:
    """Stop the database, send a burst a second for OUTAGE seconds, start it again.
    Returns how many were sent while it was down and how long it was."""
    await asyncio.to_thread(pg.stop)
    loop = asyncio.get_running_loop()
    down_since = loop.time()
    before = len(sender.sent)
    n = 0
    saw_not_ready = False
    while loop.time() - down_since < OUTAGE:
        n += 1
        sender.burst(to, f"down{n}", mtype)
        await asyncio.sleep(1)
        saw_not_ready = saw_not_ready or not part(srv, health).ready
    status = part(srv, health)
    assert saw_not_ready, status
    assert sender.acked < len(sender.sent)  # nothing acknowledged that is not stored
    down = loop.time() - down_since
    await asyncio.to_thread(pg.start)
    return len(sender.sent) - before, down


async def test_offline_messages_and_room_archive_survive_an_outage(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        pg = cast(PrivatePostgres, await asyncio.to_thread(stack.enter_context, private_postgres()))
        # The room's rate limit off: what waited for the database arrives at once.
        muc = {"messages_per_second": 1000, "message_burst": 1000}
        modules = {**DEFAULT_TEST_MODULES, "offline": {}, "muc": muc}
        try:
            async with inprocess_server(tmp_path, modules=modules, storage_url=pg.url) as srv:
                await offline_outage(srv, pg)
                await room_outage(srv, pg)
        finally:
            await asyncio.to_thread(stack.close)


async def offline_outage(srv: InProcessServer, pg: PrivatePostgres) -> None:
    a, b = f"alice@{srv.domain}", f"bob@{srv.domain}"
    for jid in (a, b):
        await srv.server.register_user(JID.parse(jid), PASSWORD)
    server = cast(XmppdServer, srv)
    sender = Sender(await XmlClient.login(server, a, PASSWORD, resource="desk"))
    try:
        await sender.enable()
        sender.burst(b, "before", "chat")
        await sender.wait_acked(30)
        assert part(srv, "mod_offline").ready
        during, down = await outage(srv, pg, sender, b, "chat", "mod_offline")
        sender.burst(b, "after", "chat")
        await sender.wait_acked(60)
        assert part(srv, "mod_offline").ready
    finally:
        await sender.client.close()
    stored = await rows(
        srv.storage_url,
        "SELECT stanza FROM mod_offline__messages WHERE host = :host AND username = 'bob'",
        host=srv.domain,
    )
    expected = Counter(sender.sent)
    assert stored == expected, f"lost {set(expected) - set(stored)}"

    recipient = await XmlClient.login(server, b, PASSWORD, resource="phone")
    try:
        recipient.send("<presence/>")
        last = sender.sent[-1]
        await recipient.expect(lambda el: el.get("id") == last, timeout=30)
        delivered = Counter(
            el.get("id") or ""
            for el in recipient.pending(
                lambda el: el.tag == tag("message") and el.find(tag("body")) is not None
            )
        )
        delivered[last] += 1
    finally:
        await recipient.close()
    lost = set(expected) - set(delivered)
    duplicated = {k: n for k, n in delivered.items() if n > 1}
    assert not lost and not duplicated, (lost, duplicated)
    assert delivered == expected
    print(
        f"\noffline, outage of {down:.1f} s: sent {len(sender.sent)}, acked {sender.acked}, "
        f"{during} sent while down, delivered at next login {sum(delivered.values())}, "
        f"lost {len(lost)}, duplicated {len(duplicated)}"
    )


async def room_outage(srv: InProcessServer, pg: PrivatePostgres) -> None:
    server = cast(XmppdServer, srv)
    room = f"durable@conference.{srv.domain}"
    o, m = f"owner@{srv.domain}", f"member@{srv.domain}"
    for jid in (o, m):
        await srv.server.register_user(JID.parse(jid), PASSWORD)
    owner = await XmlClient.login(server, o, PASSWORD, resource="r")
    member = await XmlClient.login(server, m, PASSWORD, resource="r")
    sender = Sender(owner)
    try:
        await join(owner, room, "owner")
        reply = await submit_config(owner, room, {"muc#roomconfig_persistentroom": "1"})
        assert reply.get("type") == "result", etree.tostring(reply)
        await join(member, room, "member")
        await sender.enable()
        sender.burst(room, "before", "groupchat")
        await sender.wait_acked(30)
        during, down = await outage(srv, pg, sender, room, "groupchat", "mod_muc.archive")
        sender.burst(room, "after", "groupchat")
        await sender.wait_acked(60)
        last = sender.sent[-1]
        try:
            await member.expect(lambda el: el.get("id") == last, timeout=30)
        except TimeoutError:
            got = [etree.tostring(el)[:300] for el in member.pending()]
            errs = [etree.tostring(el)[:300] for el in owner.pending()]
            raise AssertionError(f"member got {len(got)}: {got[-3:]}; owner: {errs[-3:]}") from None
        delivered = Counter(
            el.get("id") or ""
            for el in member.pending(
                lambda el: el.tag == tag("message") and el.find(tag("body")) is not None
            )
        )
        delivered[last] += 1
    finally:
        await owner.close()
        await member.close()
    expected = Counter(sender.sent)
    assert delivered == expected
    archived = await rows(
        srv.storage_url,
        "SELECT stanza FROM mod_muc__archive WHERE room = 'durable'",
    )
    lost = set(expected) - set(archived)
    duplicated = {k: n for k, n in archived.items() if n > 1}
    assert not lost and not duplicated, (lost, duplicated)
    print(
        f"room archive, outage of {down:.1f} s: sent {len(sender.sent)}, acked {sender.acked}, "
        f"{during} sent while down, delivered live {sum(delivered.values())}, archived "
        f"{sum(archived.values())}, lost {len(lost)}, duplicated {len(duplicated)}"
    )
