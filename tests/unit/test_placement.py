"""Placement of things on cluster nodes (xmppd/cluster/placement.py), over a table of
nodes: each stanza is handled where its key's owner is, forwarded there otherwise,
placed again on the remaining nodes when the owner's inbox is gone, and never moved to
a node ranked lower for its key (so views that differ cannot make a loop)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Coroutine
from typing import Any

from xmppd.cluster.membership import rendezvous_owner
from xmppd.cluster.placement import PlacedDestination, Placement, by_bare_jid, by_domain
from xmppd.jid import JID
from xmppd.sessions import Session
from xmppd.stanza import Element, element


class Inbox:
    def __init__(self) -> None:
        self.got: list[JID] = []

    async def deliver(self, stanza: Element, to: JID, from_: JID, origin: Session | None) -> None:
        self.got.append(to)


class Nodes:
    """Several nodes' views of one cluster, each with its own live set; a dispatch runs
    the target node's placed destination (as its inbox consumer would)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.views: dict[str, View] = {}
        self.inboxes: dict[str, Inbox] = {}
        self.placed: dict[str, PlacedDestination] = {}
        self.gone: set[str] = set()
        for name in names:
            view = self.views[name] = View(self, name, names)
            inbox = self.inboxes[name] = Inbox()
            self.placed[name] = PlacedDestination(inbox, view, by_bare_jid)
        self.hops: list[tuple[str, str]] = []


class View:
    def __init__(self, nodes: Nodes, name: str, live: tuple[str, ...]) -> None:
        self._nodes = nodes
        self.name = name
        self.live = tuple(sorted(live))
        self.listeners: list[Callable[[tuple[str, ...]], None]] = []

    def owner_of(self, key: str) -> str:
        return rendezvous_owner(key, self.live) or self.name

    def on_live_change(self, listener: Callable[[tuple[str, ...]], None]) -> None:
        self.listeners.append(listener)

    async def dispatch_on(self, node: str, stanza: Element, to: JID, from_: JID) -> bool:
        if node in self._nodes.gone:
            return False
        self._nodes.hops.append((self.name, node))
        await self._nodes.placed[node].deliver(stanza, to, from_, None)
        return True


def room_owned_by(node: str, among: tuple[str, ...]) -> JID:
    for i in itertools.count():
        room = f"r{i}@conference.example.org"
        if rendezvous_owner(room, among) == node:
            return JID.parse(room)
    raise AssertionError


SENDER = JID.parse("alice@example.org/a")


async def test_a_stanza_is_handled_on_its_owner_only() -> None:
    nodes = Nodes(("n1", "n2", "n3"))
    room = room_owned_by("n2", ("n1", "n2", "n3"))
    for name in ("n1", "n2", "n3"):
        await nodes.placed[name].deliver(element("message"), room, SENDER, None)
    assert nodes.inboxes["n2"].got == [room] * 3
    assert not nodes.inboxes["n1"].got and not nodes.inboxes["n3"].got
    service = JID.parse("conference.example.org")  # the service itself: where it arrives
    await nodes.placed["n1"].deliver(element("iq"), service, SENDER, None)
    assert nodes.inboxes["n1"].got == [service]


async def test_a_vanished_owner_is_replaced_by_the_next_one() -> None:
    nodes = Nodes(("n1", "n2", "n3"))
    room = room_owned_by("n3", ("n1", "n2", "n3"))
    successor = rendezvous_owner(str(room), ("n1", "n2"))
    assert successor is not None
    nodes.gone.add("n3")  # its inbox was deleted; n1's view has not noticed yet
    await nodes.placed["n1"].deliver(element("message"), room, SENDER, None)
    assert nodes.inboxes[successor].got == [room]
    assert nodes.placed["n1"].rescued == 1


async def test_differing_views_never_loop() -> None:
    """n1 already sees n3 (which joined), n2 does not yet: stanzas move up the ranking
    for their key and stop, whatever the views."""
    nodes = Nodes(("n1", "n2", "n3"))
    nodes.views["n2"].live = ("n1", "n2")
    for i in range(200):
        room = JID.parse(f"room{i}@conference.example.org")
        for start in ("n1", "n2", "n3"):
            nodes.hops.clear()
            async with asyncio.timeout(1):
                await nodes.placed[start].deliver(element("message"), room, SENDER, None)
            assert len(nodes.hops) <= 2
    assert sum(len(inbox.got) for inbox in nodes.inboxes.values()) == 600


async def test_listeners_run_after_a_change_and_can_be_removed() -> None:
    view = View(Nodes(("n1",)), "n1", ("n1",))
    tasks: list[asyncio.Task[None]] = []

    def start_task(coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        tasks.append(task)
        return task

    placement = Placement(view, start_task)
    calls: list[str] = []

    async def moved() -> None:
        calls.append("moved")

    remove = placement.on_change(moved)
    view.listeners[0](("n1", "n2"))
    await asyncio.gather(*tasks)
    remove()
    view.listeners[0](("n1",))
    await asyncio.gather(*tasks)
    assert calls == ["moved"]
    assert by_domain(JID.parse("x@b.example/r")) == "b.example"
    assert by_bare_jid(JID.parse("room@conference.example.org/nick")) == (
        "room@conference.example.org"
    )
