"""Acknowledged is archived, exactly once, across a database outage (issue 15, gap 3a).

The test starts its own PostgreSQL (never the shared one), runs a server on it in this
process (to read its health registry as an operator would), and stops the database
during counted chat traffic, each burst acknowledged to the sender (XEP-0198 ``<a/>``).
While the database is down the archive reports not ready, with the reason; once it is
back, every acknowledged message is in both archives exactly once (counted by message
id), and the archive is ready again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from pathlib import Path
from typing import cast

import sqlalchemy as sa
from lxml import etree
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support.inprocess import InProcessServer, inprocess_server
from tests.support.pgcluster import PrivatePostgres, private_postgres
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer
from tests.support.xmlclient import Element, XmlClient, attrs, tag, text
from xmppd.health import PartStatus
from xmppd.jid import JID

SM = "urn:xmpp:sm:3"
MAM = "urn:xmpp:mam:2"
RSM = "http://jabber.org/protocol/rsm"
PASSWORD = "outage-secret"
BURST = 25
OUTAGE = 3.0
MAX_BURSTS = 100


class Chat:
    """A sender with stream management and a recipient; counts what is acknowledged."""

    def __init__(self, sender: XmlClient, recipient: XmlClient, to: str) -> None:
        self.sender, self.recipient, self.to = sender, recipient, to
        self.acked: list[str] = []
        self._sent = 0

    async def burst(self, prefix: str) -> None:
        """BURST messages, then ``<r/>``; they count once the server's ``<a/>`` covers them."""
        ids = [f"{prefix}-{i}" for i in range(BURST)]
        for msg_id in ids:
            self.sender.send(
                f"<message{attrs(to=self.to, type='chat', id=msg_id)}>"
                f"<body>{text('archived ' + msg_id)}</body></message>"
            )
        self._sent += BURST
        self.sender.send(f"<r xmlns='{SM}'/>")
        ack = await self.sender.expect(lambda el: el.tag == f"{{{SM}}}a", timeout=30)
        assert ack.get("h") == str(self._sent)
        self.acked += ids


def mam_part(srv: InProcessServer) -> PartStatus:
    return srv.server.health.snapshot().part("mod_mam", srv.domain)


async def archived_ids(url: str, domain: str, username: str, *, outgoing: bool) -> Counter[str]:
    """Message ids in ``username``'s archive, read straight from the database."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                sa.text(
                    "SELECT stanza FROM mod_mam__archive "
                    "WHERE host = :host AND username = :user AND outgoing = :out"
                ),
                {"host": domain, "user": username, "out": outgoing},
            )
            return Counter(etree.fromstring(r.stanza.encode()).get("id") or "" for r in rows)
    finally:
        await engine.dispose()


async def flushed(client: XmlClient) -> None:
    """A MAM query: the server writes every queued archive row before answering it.
    Its pooled connections may still be those of the stopped database: those fail once."""
    query = f"<query xmlns='{MAM}'><set xmlns='{RSM}'><max>1</max></set></query>"
    for _ in range(5):
        reply = await client.iq("set", query, to=None, timeout=60)
        if reply.get("type") == "result":
            return
    raise AssertionError(f"MAM query failed: {etree.tostring(reply)!r}")


async def test_archive_survives_a_database_outage_exactly_once(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        pg = cast(PrivatePostgres, await asyncio.to_thread(stack.enter_context, private_postgres()))
        modules = {**DEFAULT_TEST_MODULES, "mam": {}}
        try:
            async with inprocess_server(tmp_path, modules=modules, storage_url=pg.url) as srv:
                await run_outage(srv, pg)
        finally:
            await asyncio.to_thread(stack.close)


async def run_outage(srv: InProcessServer, pg: PrivatePostgres) -> None:
    a, b = f"alice@{srv.domain}", f"bob@{srv.domain}"
    for jid in (a, b):
        await srv.server.register_user(JID.parse(jid), PASSWORD)
    server = cast(XmppdServer, srv)
    sender = await XmlClient.login(server, a, PASSWORD, resource="desk")
    recipient = await XmlClient.login(server, b, PASSWORD, resource="phone")
    try:
        sender.send(f"<enable xmlns='{SM}'/>")
        await sender.expect(lambda el: el.tag == f"{{{SM}}}enabled")
        chat = Chat(sender, recipient, recipient.jid)
        await chat.burst("before")
        assert mam_part(srv).ready

        await asyncio.to_thread(pg.stop)
        bursts = 0
        while mam_part(srv).ready:  # until the writer has tried and failed
            bursts += 1
            assert bursts <= 40, "the archive never reported the outage"
            await chat.burst(f"down{bursts}")
        part = mam_part(srv)
        assert part.reason.startswith("cannot write the archive: "), part.reason
        # Traffic goes on for OUTAGE seconds, each burst acknowledged while nothing can
        # be written; after MAX_BURSTS (two rows a message: well below the writer's
        # bound, where acknowledgements would stop) only pings.
        loop = asyncio.get_running_loop()
        down_since = loop.time()
        while loop.time() - down_since < OUTAGE:
            if bursts < MAX_BURSTS:
                bursts += 1
                await chat.burst(f"down{bursts}")
            else:
                reply = await recipient.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to=srv.domain)
                assert reply.get("type") == "result"
        assert not mam_part(srv).ready
        during = len(chat.acked) - BURST
        outage = loop.time() - down_since

        await asyncio.to_thread(pg.start)
        await chat.burst("after")
        await flushed(recipient)
        assert mam_part(srv).ready, mam_part(srv)

        # Delivered live, each once.
        last = chat.acked[-1]
        await recipient.expect(lambda el: el.get("id") == last, timeout=30)
        delivered = Counter(
            el.get("id") or ""
            for el in recipient.pending(
                lambda el: el.tag == tag("message") and el.find(tag("body")) is not None
            )
        )
        delivered[last] += 1
        expected = Counter(chat.acked)
        assert delivered == expected
    finally:
        await sender.close()
        await recipient.close()
    for user, outgoing in (("bob", False), ("alice", True)):
        stored = await archived_ids(srv.storage_url, srv.domain, user, outgoing=outgoing)
        lost = set(expected) - set(stored)
        duplicated = {k: n for k, n in stored.items() if n > 1}
        assert not lost, f"{user}: lost {len(lost)} of {len(expected)}"
        assert not duplicated, f"{user}: duplicated {duplicated}"
        assert stored == expected
    print(
        f"\narchive outage of {outage:.1f} s: sent/acked/delivered {len(expected)}, "
        f"{during} of them while down; archived once each for both users"
    )


__all__ = ["Element"]
