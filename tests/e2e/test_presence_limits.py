"""Memory bounds on presence: what an inactive (CSI) session holds is capped in bytes,
inbound subscription requests waiting for an answer are capped per account (and their
status text cut), the roster's ``max_items`` holds for items that presence creates
(outbound subscribe, approval, pre-approval), and directed-presence targets are capped
per session. Anyone may send presence to a user's bare JID; a component here plays the
remote server that makes up sender JIDs."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest

from tests.support.component import RawComponent, ctag
from tests.support.e2e import PASSWORD, new_account
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, running_server
from tests.support.xmlclient import Element, XmlClient, attrs, error_condition, tag, text

CSI = "urn:xmpp:csi:0"
ROSTER = "jabber:iq:roster"
PING = "<ping xmlns='urn:xmpp:ping'/>"
COMPONENT = "made-up.localhost"
SECRET = "made-up-secret"

MAX_HELD_BYTES = 4096
MAX_PENDING = 3
MAX_STATUS = 16
MAX_ITEMS = 3
MAX_DIRECTED = 3

_ids = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    modules = {
        **DEFAULT_TEST_MODULES,
        "roster": {"max_items": MAX_ITEMS},
        "presence": {
            "max_directed": MAX_DIRECTED,
            "max_pending_subscriptions": MAX_PENDING,
            "max_subscription_status": MAX_STATUS,
        },
        "csi": {"max_held_bytes": MAX_HELD_BYTES},
    }
    with running_server(
        tmp_path_factory.mktemp("presence-limits"),
        modules=modules,
        components={COMPONENT: SECRET},
    ) as srv:
        yield srv
        assert srv.process.poll() is None, "xmppd exited"
        log = srv.log_text()
        assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]


def is_presence(ptype: str | None = None, sender: str | None = None) -> Callable[[Element], bool]:
    def match(el: Element) -> bool:
        return (
            el.tag == tag("presence")
            and el.get("type") == ptype
            and (sender is None or el.get("from") == sender)
        )

    return match


def refused(stanza_id: str) -> Callable[[Element], bool]:
    """The error answering the presence with this id (the server's own errors to a
    client carry no ``from``)."""
    return lambda el: (
        el.tag == tag("presence") and el.get("id") == stanza_id and (el.get("type") == "error")
    )


async def ping(client: XmlClient) -> None:
    """A barrier: the server has handled everything the client sent before it."""
    assert (await client.iq("get", PING, to=client.domain)).get("type") == "result"


async def component_ping(component: RawComponent) -> None:
    """A barrier for the component's stream."""
    ping_id = f"cp{next(_ids)}"
    component.send(
        f"<iq{attrs(type='get', id=ping_id, to='localhost', **{'from': COMPONENT})}>{PING}</iq>"
    )
    await component.expect(lambda el: el.tag == ctag("iq") and el.get("id") == ping_id)


def subscribe_from(component: RawComponent, sender: str, to: str, status: str) -> None:
    """A subscription request to ``to`` from ``sender``, a JID the component makes up."""
    component.send(
        f"<presence{attrs(type='subscribe', to=to, **{'from': sender})}>"
        f"<status>{status}</status></presence>"
    )


async def online(server: XmppdServer, jid: str) -> XmlClient:
    """A raw client that sent initial presence and saw it reflected."""
    client = await XmlClient.login(server, jid, PASSWORD, resource="r")
    client.send("<presence/>")
    await client.expect(is_presence(sender=client.jid))
    return client


async def roster_size(client: XmlClient) -> int:
    result = await client.iq("get", f"<query xmlns='{ROSTER}'/>", to=None)
    query = result.find(f"{{{ROSTER}}}query")
    assert query is not None, result
    return len(query.findall(f"{{{ROSTER}}}item"))


async def test_an_inactive_session_flushes_what_it_holds_past_the_byte_cap(
    server: XmppdServer,
) -> None:
    user = await new_account(server, "csib")
    phone = await online(server, user)
    component = await RawComponent.authenticated(server, COMPONENT, SECRET)
    try:
        phone.send(f"<inactive xmlns='{CSI}'/>")
        await ping(phone)
        # Three senders (coalescing keeps one presence per sender), 1.5 KB each: the
        # third passes the 4 KiB cap, long before the count limit (500).
        senders = [f"s{i}@{COMPONENT}/x" for i in range(3)]
        for i, sender in enumerate(senders):
            status = text(f"{i}:" + "x" * 1500)
            component.send(
                f"<presence{attrs(to=user, **{'from': sender})}><status>{status}</status>"
                "</presence>"
            )
        for sender in senders:  # delivered while the phone is still inactive
            await phone.expect(is_presence(sender=sender))
    finally:
        await component.close()
        await phone.close()


async def test_pending_subscription_requests_are_capped_per_account(
    server: XmppdServer,
) -> None:
    user = await new_account(server, "pend")
    component = await RawComponent.authenticated(server, COMPONENT, SECRET)
    try:
        senders = [f"fan{i}@{COMPONENT}" for i in range(MAX_PENDING + 2)]
        for sender in senders:
            subscribe_from(component, sender, user, "long status " * 400)
        await component_ping(component)
    finally:
        await component.close()
    client = await online(server, user)
    try:
        await ping(client)  # the stored requests come with the initial presence
        requests = client.pending(is_presence("subscribe"))
        assert [r.get("from") for r in requests] == senders[:MAX_PENDING]
        for request in requests:
            status = request.findtext(tag("status"))
            assert status == ("long status " * 2)[:MAX_STATUS]
    finally:
        await client.close()


async def test_a_request_already_waiting_is_still_updated_when_full(
    server: XmppdServer,
) -> None:
    user = await new_account(server, "again")
    component = await RawComponent.authenticated(server, COMPONENT, SECRET)
    try:
        senders = [f"re{i}@{COMPONENT}" for i in range(MAX_PENDING)]
        for status in ("first", "second"):
            for sender in senders:
                subscribe_from(component, sender, user, status)
        await component_ping(component)
    finally:
        await component.close()
    client = await online(server, user)
    try:
        await ping(client)
        requests = client.pending(is_presence("subscribe"))
        assert [r.findtext(tag("status")) for r in requests] == ["second"] * MAX_PENDING
    finally:
        await client.close()


async def test_outbound_subscribe_respects_the_roster_limit(server: XmppdServer) -> None:
    client = await online(server, await new_account(server, "full"))
    try:
        for i in range(MAX_ITEMS):
            client.send(f"<presence{attrs(type='subscribe', to=f'nobody{i}@localhost')}/>")
        await ping(client)
        assert not client.pending(is_presence("error"))
        over = "nobody-more@localhost"
        client.send(f"<presence{attrs(type='subscribe', to=over, id='sub-over')}/>")
        error = await client.expect(refused("sub-over"))
        assert error_condition(error) == "not-allowed"
        # Pre-approval (RFC 6121 §3.4) would create an item too.
        client.send(f"<presence{attrs(type='subscribed', to=over, id='pre-over')}/>")
        error = await client.expect(refused("pre-over"))
        assert error_condition(error) == "not-allowed"
        assert await roster_size(client) == MAX_ITEMS
        # A contact already in the roster is still fine.
        client.send(f"<presence{attrs(type='subscribe', to='nobody0@localhost')}/>")
        await ping(client)
        assert not client.pending(is_presence("error"))
    finally:
        await client.close()


async def test_approving_a_request_respects_the_roster_limit(server: XmppdServer) -> None:
    user = await new_account(server, "appr")
    client = await online(server, user)
    component = await RawComponent.authenticated(server, COMPONENT, SECRET)
    try:
        for i in range(MAX_ITEMS):
            client.send(f"<presence{attrs(type='subscribe', to=f'other{i}@localhost')}/>")
        await ping(client)
        asker = f"asker@{COMPONENT}"
        component.send(f"<presence{attrs(type='subscribe', to=user, **{'from': asker})}/>")
        await client.expect(is_presence("subscribe", asker))
        client.send(f"<presence{attrs(type='subscribed', to=asker, id='approve')}/>")
        error = await client.expect(refused("approve"))
        assert error_condition(error) == "not-allowed"
        assert await roster_size(client) == MAX_ITEMS
    finally:
        await component.close()
        await client.close()


async def test_directed_presence_beyond_the_cap_is_refused(server: XmppdServer) -> None:
    client = await online(server, await new_account(server, "dir"))
    try:
        targets = [f"t{i}@localhost" for i in range(MAX_DIRECTED)]
        for target in targets:
            client.send(f"<presence{attrs(to=target)}/>")
        client.send(f"<presence{attrs(to=targets[0])}><show>away</show></presence>")
        await ping(client)
        assert not client.pending(is_presence("error"))
        over = "over@localhost"
        client.send(f"<presence{attrs(to=over, id='dir-over')}/>")
        error = await client.expect(refused("dir-over"))
        assert error_condition(error) == "resource-constraint"
        details = error.find(tag("error"))
        assert details is not None and details.get("type") == "wait"
        # Directed unavailable frees a place.
        client.send(f"<presence{attrs(type='unavailable', to=targets[0])}/>")
        client.send(f"<presence{attrs(to=over)}/>")
        await ping(client)
        assert not client.pending(is_presence("error"))
    finally:
        await client.close()


async def test_directed_targets_get_unavailable_when_the_session_ends(
    server: XmppdServer,
) -> None:
    client = await online(server, await new_account(server, "dend"))
    component = await RawComponent.authenticated(server, COMPONENT, SECRET)
    try:
        targets = [f"d{i}@{COMPONENT}" for i in range(MAX_DIRECTED)]
        for target in targets:
            client.send(f"<presence{attrs(to=target)}/>")
        for target in targets:
            await component.expect(
                lambda el, t=target: el.tag == ctag("presence") and el.get("to") == t
            )
        await client.close()
        for target in targets:
            gone = await component.expect(
                lambda el, t=target: el.tag == ctag("presence") and el.get("to") == t
            )
            assert gone.get("type") == "unavailable"
    finally:
        await component.close()
        await client.close()
