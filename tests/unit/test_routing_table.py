"""The router's table of destinations: one destination per domain, filter_packet once,
the default route for every other domain, bounces routed back as error stanzas."""

from __future__ import annotations

import pytest

from xmppd import hooks
from xmppd.events import DROP, EventBus
from xmppd.jid import JID
from xmppd.router import DomainTaken, Router
from xmppd.sessions import Session
from xmppd.stanza import Element, element


class Inbox:
    """A destination that keeps what it is given."""

    def __init__(self) -> None:
        self.got: list[tuple[str, JID, JID]] = []
        self.stanzas: list[Element] = []

    async def deliver(self, stanza: Element, to: JID, from_: JID, origin: Session | None) -> None:
        self.got.append((stanza.tag, to, from_))
        self.stanzas.append(stanza)


def message(to: str, frm: str = "alice@example.org/a", type: str = "chat") -> Element:
    return element("message", {"to": to, "from": frm, "type": type})


async def test_each_domain_goes_to_its_own_destination() -> None:
    router = Router(EventBus("global"))
    host, service = Inbox(), Inbox()
    router.add("example.org", host)
    router.add("pubsub.example.org", service)
    await router.route(message("bob@example.org"), None)
    await router.route(message("pubsub.example.org"), None)
    assert [to for _, to, _ in host.got] == [JID.parse("bob@example.org")]
    assert [to for _, to, _ in service.got] == [JID.parse("pubsub.example.org")]


async def test_a_domain_is_served_once_and_only_its_owner_removes_it() -> None:
    router = Router(EventBus("global"))
    first, second = Inbox(), Inbox()
    router.add("pubsub.example.org", first)
    with pytest.raises(DomainTaken):
        router.add("pubsub.example.org", second)
    router.remove("pubsub.example.org", second)
    assert router.destination("pubsub.example.org") is first
    router.remove("pubsub.example.org", first)
    assert "pubsub.example.org" not in router


async def test_unknown_domain_bounces_remote_server_not_found_to_the_sender() -> None:
    router = Router(EventBus("global"))
    home = Inbox()
    router.add("example.org", home)
    await router.route(message("carol@elsewhere.net"), None)
    assert home.got == [
        ("message", JID.parse("alice@example.org/a"), JID.parse("carol@elsewhere.net"))
    ]
    bounce = home.stanzas[0]
    assert bounce.get("type") == "error"
    assert (
        bounce.find("error/{urn:ietf:params:xml:ns:xmpp-stanzas}remote-server-not-found")
        is not None
    )


async def test_an_error_to_an_unknown_domain_is_not_answered() -> None:
    router = Router(EventBus("global"))
    home = Inbox()
    router.add("example.org", home)
    await router.route(message("carol@elsewhere.net", type="error"), None)
    assert home.got == []


async def test_default_route_is_replaceable() -> None:
    router = Router(EventBus("global"))
    remote = Inbox()
    router.default = remote
    await router.route(message("carol@elsewhere.net"), None)
    assert remote.got == [
        ("message", JID.parse("carol@elsewhere.net"), JID.parse("alice@example.org/a"))
    ]


async def test_filter_packet_runs_once_and_can_drop() -> None:
    bus = EventBus("global")
    router = Router(bus)
    home = Inbox()
    router.add("example.org", home)
    seen: list[str] = []

    async def spam_filter(stanza: Element, info: hooks.RouteInfo) -> Element | object:
        seen.append(stanza.get("to", ""))
        return DROP if stanza.get("to", "").startswith("spam") else stanza

    bus.add(hooks.FILTER_PACKET, spam_filter)
    await router.route(message("bob@example.org"), None)
    await router.route(message("spam@example.org"), None)
    assert seen == ["bob@example.org", "spam@example.org"]
    assert [to for _, to, _ in home.got] == [JID.parse("bob@example.org")]
    await router.dispatch(
        message("bob@example.org"), JID.parse("bob@example.org"), JID.parse("x@y"), None
    )
    assert len(seen) == 2  # dispatch: already filtered (e.g. by another cluster node)
    assert len(home.got) == 2


class Sessions(Inbox):
    """A local host with live sessions: takes fan-out copies with their bytes."""

    def __init__(self, live: set[str]) -> None:
        super().__init__()
        self.live = live
        self.bytes: dict[str, bytes] = {}

    async def deliver_prepared(
        self, stanza: Element, to: JID, from_: JID, origin: Session | None, data: bytes
    ) -> bool:
        if str(to) not in self.live:
            return False
        self.bytes[str(to)] = data
        return True


async def test_fanout_routes_each_copy_and_serialises_once() -> None:
    """Each copy is a routed stanza (filter_packet sees its ``to`` and may drop or
    replace it); unchanged copies for live local sessions are the template's bytes
    with ``to`` spliced in; the rest is delivered the ordinary way."""
    bus = EventBus("global")
    router = Router(bus)
    home, remote = Sessions({"a@example.org/1", "b@example.org/2&"}), Inbox()
    router.add("example.org", home)
    router.default = remote
    seen: list[str] = []

    async def filter_packet(stanza: Element, route: object) -> Element | object:
        seen.append(stanza.get("to") or "")
        if stanza.get("to") == "drop@example.org/x":
            return DROP
        if stanza.get("to") == "c@example.org/3":
            changed = element("message", dict(stanza.attrib))
            changed.set("id", "rewritten")
            return changed
        return stanza

    bus.add(hooks.FILTER_PACKET, filter_packet)
    template = element("message", {"from": "room@conference.example.org/n", "type": "groupchat"})
    body = element("body", text="hi & <bye>")
    template.append(body)
    recipients = ["a@example.org/1", "b@example.org/2&", "c@example.org/3", "drop@example.org/x"]
    recipients += ["gone@example.org/4", "d@elsewhere.net/5"]
    await router.fanout(template, [JID.parse(r) for r in recipients])
    assert seen == recipients
    assert home.bytes == {
        "a@example.org/1": b'<message from="room@conference.example.org/n" type="groupchat"'
        b' to="a@example.org/1"><body>hi &amp; &lt;bye&gt;</body></message>',
        "b@example.org/2&": b'<message from="room@conference.example.org/n" type="groupchat"'
        b' to="b@example.org/2&amp;"><body>hi &amp; &lt;bye&gt;</body></message>',
    }
    assert [(s.get("to"), s.get("id")) for s in home.stanzas] == [
        ("c@example.org/3", "rewritten"),
        ("gone@example.org/4", None),
    ]
    assert [s.get("to") for s in remote.stanzas] == ["d@elsewhere.net/5"]
    assert template.get("to") is None
    assert router.routed["message"] == len(recipients)
