"""Acknowledged is durable for hibernated sessions (issue 15, gap 3b).

Messages acknowledged (XEP-0198 ``<a/>``) to their sender and queued for a recipient
whose stream-management session hibernates are stored as offline messages while they
wait: after ``kill -9`` and a restart on the same database the recipient gets each
once at its next login; when it resumes instead, it gets them from the resumed queue
only, and once it acknowledges them they are not stored any more. Counted by message
id at the recipient's client.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.e2e import PASSWORD, new_account, user_rows
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, restart, running_server
from tests.support.xmlclient import Element, XmlClient, attrs, tag, text

SM = "urn:xmpp:sm:3"
PING = "<ping xmlns='urn:xmpp:ping'/>"
OFFLINE = "mod_offline__messages"
N = 40


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[XmppdServer]:
    with running_server(
        tmp_path,
        backend=request.param,
        modules={**DEFAULT_TEST_MODULES, "offline": {}},
        # Longer than the test: the session hibernates until the crash.
        extra="[c2s]\nresume_timeout = '5m'\n",
    ) as srv:
        yield srv


async def ping(client: XmlClient) -> None:
    reply = await client.iq("get", PING, to=client.domain)
    assert reply.get("type") == "result"


async def enable_sm(client: XmlClient, *, resume: bool) -> str:
    client.send(f"<enable xmlns='{SM}'{attrs(resume='true' if resume else None)}/>")
    enabled = await client.expect(lambda el: el.tag == f"{{{SM}}}enabled")
    return enabled.get("id") or ""


async def phone(server: XmppdServer, jid: str) -> tuple[XmlClient, str]:
    """Logged in, resumable stream management, available; and its SM id."""
    client = await XmlClient.login(server, jid, PASSWORD, resource="phone")
    sm_id = await enable_sm(client, resume=True)
    client.send("<presence/>")
    await client.expect(lambda el: el.tag == tag("presence") and el.get("from") == client.jid)
    return client, sm_id


async def hibernate(client: XmlClient, witness: XmlClient) -> None:
    """Cut the TCP connection without closing the stream; round trips on another
    stream let the server handle the end of the connection that came before them."""
    client.abort()
    await client.wait_closed()
    for _ in range(3):
        await ping(witness)


async def send_acknowledged(sender: XmlClient, to: str, prefix: str) -> list[str]:
    """N chat messages, then ``<r/>``: returns their ids once the server's ``<a/>``
    acknowledges all of them."""
    ids = [f"{prefix}-{i}" for i in range(N)]
    for msg_id in ids:
        sender.send(
            f"<message{attrs(to=to, type='chat', id=msg_id)}>"
            f"<body>{text('durable ' + msg_id)}</body></message>"
        )
    sender.send(f"<r xmlns='{SM}'/>")
    ack = await sender.expect(lambda el: el.tag == f"{{{SM}}}a")
    assert ack.get("h") == str(N)
    return ids


def is_chat(el: Element) -> bool:
    return el.tag == tag("message") and el.findtext(tag("body")) is not None


async def received_ids(client: XmlClient, expected: int) -> Counter[str]:
    """Ids of chat messages received: at least ``expected``, then whatever else
    arrived before a ping round trip (duplicates would be among them)."""
    got: Counter[str] = Counter()
    while sum(got.values()) < expected:
        got[(await client.expect(is_chat)).get("id") or ""] += 1
    await ping(client)
    for el in client.pending(is_chat):
        got[el.get("id") or ""] += 1
    return got


async def test_hibernated_queue_survives_kill_9(server: XmppdServer) -> None:
    recipient_jid = await new_account(server, "sleeper")
    sender_jid = await new_account(server, "talker")
    sender = await XmlClient.login(server, sender_jid, PASSWORD, resource="desk")
    recipient, _ = await phone(server, recipient_jid)
    try:
        await hibernate(recipient, sender)
        await enable_sm(sender, resume=False)
        ids = await send_acknowledged(sender, recipient_jid, "k")
        # Stored before they were acknowledged, not after.
        stored = await user_rows(server, recipient_jid.split("@")[0], [OFFLINE])
        assert stored == {OFFLINE: N}
    finally:
        await sender.close()
        await recipient.close()

    server.process.send_signal(signal.SIGKILL)
    assert server.process.wait(timeout=15) == -signal.SIGKILL
    restart(server)

    again = await XmlClient.login(server, recipient_jid, PASSWORD, resource="phone")
    try:
        again.send("<presence/>")
        got = await received_ids(again, N)
    finally:
        await again.close()
    lost = set(ids) - set(got)
    duplicated = {i: n for i, n in got.items() if n > 1}
    assert not lost, f"lost {len(lost)} of {N}: {sorted(lost)}"
    assert not duplicated, f"duplicated: {duplicated}"
    assert set(got) == set(ids)


async def test_resumed_session_gets_its_queue_once_and_storage_is_cleared(
    server: XmppdServer,
) -> None:
    recipient_jid = await new_account(server, "resumer")
    sender_jid = await new_account(server, "writer")
    sender = await XmlClient.login(server, sender_jid, PASSWORD, resource="desk")
    recipient, sm_id = await phone(server, recipient_jid)
    try:
        await hibernate(recipient, sender)
        await enable_sm(sender, resume=False)
        ids = await send_acknowledged(sender, recipient_jid, "r")
    finally:
        await sender.close()
        await recipient.close()

    # Resumed: the queue comes from the session, not from offline storage as well.
    resumed = await XmlClient.connect(server)
    try:
        await resumed.authenticate(recipient_jid.split("@")[0], PASSWORD)
        resumed.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='0'/>")
        await resumed.expect(lambda el: el.tag == f"{{{SM}}}resumed")
        got = await received_ids(resumed, N)
        assert got == Counter(ids)
        # Everything received since <enable/>: its own presence, the N messages and
        # the result of received_ids' ping.
        resumed.send(f"<a xmlns='{SM}' h='{N + 2}'/>")
        await ping(resumed)
    finally:
        await resumed.close()

    # Acknowledged: the stored copies are gone, the next login gets nothing again.
    later = await XmlClient.login(server, recipient_jid, PASSWORD, resource="tablet")
    try:
        later.send("<presence/>")
        await later.expect(lambda el: el.tag == tag("presence") and el.get("from") == later.jid)
        await ping(later)
        assert later.pending(is_chat) == []
    finally:
        await later.close()
    assert await user_rows(server, recipient_jid.split("@")[0], [OFFLINE]) == {OFFLINE: 0}
