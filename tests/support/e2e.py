"""Shared steps of the end-to-end scenarios: fresh accounts, clients that are really
online, roster views as the server reports them, and the end-of-module health check."""

from __future__ import annotations

import asyncio
import itertools
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from slixmpp.exceptions import IqError
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support.clients import CLUSTER_SETTLE, ClientTarget, Slix, register_account
from tests.support.server import SESSION_REGISTRY, XmppdServer

PASSWORD = "e2e-secret"
ROSTER = "jabber:iq:roster"
STANZA_ERRORS = "urn:ietf:params:xml:ns:xmpp-stanzas"
ALL_PLUGINS = ("xep_0030", "xep_0199", "xep_0092", "xep_0202", "xep_0012")

_names = itertools.count()


async def new_account(server: XmppdServer, prefix: str = "u", password: str = PASSWORD) -> str:
    """Register a fresh account; its bare JID."""
    name = f"{prefix}{next(_names)}"
    await register_account(server, name, password)
    return f"{name}@{server.domain}"


def manual_subscriptions(client: Slix) -> Slix:
    """Stop slixmpp from answering subscription requests by itself."""
    client.xmpp.auto_authorize = None
    client.xmpp.auto_subscribe = False
    return client


async def online(
    server: ClientTarget,
    jid: str,
    password: str = PASSWORD,
    *,
    resource: str | None = None,
    priority: int | None = None,
    status: str | None = None,
    fetch_roster: bool = True,
    plugins: tuple[str, ...] = ALL_PLUGINS,
) -> Slix:
    """A slixmpp client that fetched its roster and whose initial presence the server has
    processed (the server reflected it back, RFC 6121 §4.2.2)."""
    address = f"{jid}/{resource}" if resource else jid
    client = manual_subscriptions(
        Slix(
            server,
            address,
            password,
            plugins=plugins,
            initial_presence=False,
            fetch_roster=fetch_roster,
        )
    )
    await client.start()
    client.xmpp.send_presence(ppriority=priority, pstatus=status)
    await take(client.presences, lambda p: p["from"] == client.xmpp.boundjid)
    if SESSION_REGISTRY == "cluster":
        await asyncio.sleep(CLUSTER_SETTLE)  # the other nodes learn of it
    return client


async def take(
    queue: asyncio.Queue[Any], predicate: Callable[[Any], bool], timeout: float = 10
) -> Any:
    """The first queued item matching ``predicate``; the others stay queued, in order."""
    skipped: list[Any] = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                item = await queue.get()
                if predicate(item):
                    return item
                skipped.append(item)
    finally:
        rest = [queue.get_nowait() for _ in range(queue.qsize())]
        for item in skipped + rest:
            queue.put_nowait(item)


def queued(
    queue: asyncio.Queue[Any], predicate: Callable[[Any], bool] = lambda _: True
) -> list[Any]:
    """What is waiting in ``queue`` (left in place) that matches ``predicate``."""
    items = [queue.get_nowait() for _ in range(queue.qsize())]
    for item in items:
        queue.put_nowait(item)
    return [item for item in items if predicate(item)]


async def barrier(sender: Slix, receiver: Slix) -> None:
    """Wait until everything ``sender`` sent so far has reached ``receiver``.

    The server handles one stream's stanzas in order and delivers them in order, so
    once this marker message arrives, any earlier stanza from ``sender`` to
    ``receiver`` has arrived too: what is not there by then was never sent.
    """
    marker = f"barrier-{next(_names)}"
    sender.xmpp.send_message(mto=receiver.xmpp.boundjid, mbody=marker, mtype="chat")
    await take(receiver.messages, lambda m: m["body"] == marker)


async def settle(*clients: Slix) -> None:
    """Let everything in flight between ``clients`` arrive (a barrier each way), then
    forget what they received so far: the next phase of a test starts clean."""
    for sender in clients:
        for receiver in clients:
            if sender is not receiver:
                await barrier(sender, receiver)
    for client in clients:
        for queue in (client.messages, client.presences, client.roster_pushes):
            while not queue.empty():
                queue.get_nowait()


def presence(kind: str, sender: Any) -> Callable[[Any], bool]:
    """Matches a presence of ``kind`` ("available", "unavailable", "subscribe"...) from
    ``sender`` (a JID or string; a bare JID matches only a bare 'from')."""
    expected = None if kind == "available" else kind

    def match(p: Any) -> bool:
        return p.xml.get("type") == expected and str(p["from"]) == str(sender)

    return match


async def subscribe(user: Slix, contact: Slix) -> None:
    """``user`` asks for ``contact``'s presence and ``contact`` approves (RFC 6121 §3.1);
    returns once ``user`` has received ``contact``'s current presence."""
    user_bare, contact_bare = user.xmpp.boundjid.bare, contact.xmpp.boundjid.bare
    user.xmpp.send_presence(pto=contact_bare, ptype="subscribe")
    await take(contact.presences, presence("subscribe", user_bare))
    contact.xmpp.send_presence(pto=user_bare, ptype="subscribed")
    await take(user.presences, presence("subscribed", contact_bare))
    await take(user.presences, presence("available", contact.xmpp.boundjid))


async def befriend(a: Slix, b: Slix) -> None:
    """A mutual subscription ("both" on each side)."""
    await subscribe(a, b)
    await subscribe(b, a)


@dataclass(frozen=True)
class Item:
    """A roster item as the server reports it."""

    subscription: str
    ask: bool = False
    approved: bool = False
    name: str = ""
    groups: frozenset[str] = frozenset()


def parse_item(el: ET.Element) -> Item:
    return Item(
        subscription=el.get("subscription", "none"),
        ask=el.get("ask") == "subscribe",
        approved=el.get("approved") in ("true", "1"),
        name=el.get("name", ""),
        groups=frozenset(g.text or "" for g in el.findall(f"{{{ROSTER}}}group")),
    )


async def roster_of(client: Slix) -> dict[str, Item]:
    """The account's roster, fetched from the server now (not slixmpp's local copy)."""
    result = await client.xmpp.make_iq_get(queryxmlns=ROSTER).send(timeout=10)
    query = result.xml.find(f"{{{ROSTER}}}query")
    assert query is not None
    return {el.get("jid", ""): parse_item(el) for el in query.findall(f"{{{ROSTER}}}item")}


async def roster_push(client: Slix, contact: str, timeout: float = 10) -> Item:
    """The next roster push about ``contact`` received by ``client``."""

    def about(iq: Any) -> bool:
        if iq["type"] != "set":
            return False
        return iq.xml.find(f"{{{ROSTER}}}query/{{{ROSTER}}}item[@jid='{contact}']") is not None

    iq = await take(client.roster_pushes, about, timeout)
    return parse_item(iq.xml.find(f"{{{ROSTER}}}query/{{{ROSTER}}}item"))


async def iq_error(client: Slix, iq: Any) -> str:
    """Send ``iq`` and return the condition of the error it must get."""
    try:
        await iq.send(timeout=10)
    except IqError as err:
        return str(err.iq["error"]["condition"])
    raise AssertionError("expected an error reply, got a result")


def iq_with(client: Slix, type: str, payload: str, to: str | None = None) -> Any:
    """An IQ from ``client`` carrying ``payload`` (XML text)."""
    iq = client.xmpp.Iq()
    iq["type"] = type
    if to is not None:
        iq["to"] = to
    iq.xml.append(ET.fromstring(payload))
    return iq


async def assert_server_alive(server: XmppdServer) -> None:
    """A fresh pair of accounts can still log in and chat; nothing crashed in the server."""
    assert server.process.poll() is None, "xmppd exited"
    a = await new_account(server, "alive")
    b = await new_account(server, "alive")
    ca = await online(server, a)
    cb = await online(server, b)
    try:
        ca.xmpp.send_message(mto=b, mbody="still alive?", mtype="chat")
        got = await take(cb.messages, lambda m: m["body"] == "still alive?")
        assert got["from"] == ca.xmpp.boundjid
        cb.xmpp.send_message(mto=got["from"], mbody="yes", mtype="chat")
        back = await take(ca.messages, lambda m: m["body"] == "yes")
        assert back["from"] == cb.xmpp.boundjid
    finally:
        await ca.stop()
        await cb.stop()
    log = server.log_text()
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]


def check_server_survived(server: XmppdServer) -> None:
    """For a module-scoped fixture's teardown (no event loop is running there)."""
    asyncio.run(assert_server_alive(server))


async def until_equal(
    read: Callable[[], Awaitable[object]], expected: object, timeout: float = 20
) -> None:
    """Poll ``read()`` until it returns ``expected`` (state the server settles after it
    answered, such as an account's rows, deleted once its stream has closed)."""
    async with asyncio.timeout(timeout):
        while await read() != expected:  # noqa: ASYNC110 (polls the database)
            await asyncio.sleep(0.1)


async def user_rows(
    server: XmppdServer, username: str, tables: list[str] | None = None
) -> dict[str, int]:
    """Rows of ``username`` on the server's domain, per table: the ``tables`` named, or
    every table with ``host`` and ``username`` columns (read straight from the database)."""
    engine = create_async_engine(server.storage_url)
    counts: dict[str, int] = {}
    try:
        async with engine.connect() as conn:
            names = tables or await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
            meta = sa.MetaData()
            await conn.run_sync(lambda c: meta.reflect(c, only=names))
            for table in meta.sorted_tables:
                if "username" in table.c and "host" in table.c:
                    n = await conn.scalar(
                        sa.select(sa.func.count())
                        .select_from(table)
                        .where(table.c.username == username, table.c.host == server.domain)
                    )
                    counts[table.name] = int(n or 0)
    finally:
        await engine.dispose()
    return counts
