"""XEP-0198 acknowledgements never overtake the deliveries they count: the server's
``<a h/>`` to a sender is written after the copy of the sender's message for a live
recipient reaches the recipient's connection. Otherwise a crash (``kill -9``) between
the two writes loses a message its sender was told the server had handled
(``tests/faults/test_restart_reconnect.py`` caught it under load).

The order of the server's writes is read at the connection's ``write`` (plaintext,
before TLS) of a server in the test's process, on real sockets. The sender's stream
has output queued before its message is routed (the answer to a ping sent in the same
packet), the case where its flush came first."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import pytest

from tests.support.inprocess import inprocess_server
from tests.support.server import XmppdServer
from tests.support.xmlclient import XmlClient
from xmppd.jid import JID
from xmppd.transports import tcp

SM = "urn:xmpp:sm:3"
PASSWORD = "ack-order-secret"
ROUNDS = 20


@asynccontextmanager
async def sender_and_recipient(tmp_path: Path) -> AsyncIterator[tuple[XmlClient, XmlClient]]:
    """A server in this process; a sender with stream management and a recipient."""
    async with inprocess_server(tmp_path) as srv:
        a, b = f"alice@{srv.domain}", f"bob@{srv.domain}"
        for jid in (a, b):
            await srv.server.register_user(JID.parse(jid), PASSWORD)
        server = cast(XmppdServer, srv)
        sender = await XmlClient.login(server, a, PASSWORD, resource="desk")
        recipient = await XmlClient.login(server, b, PASSWORD, resource="phone")
        try:
            sender.send(f"<enable xmlns='{SM}'/>")
            await sender.expect(lambda el: el.tag == f"{{{SM}}}enabled")
            yield sender, recipient
        finally:
            await sender.close()
            await recipient.close()


async def test_the_ack_is_written_after_the_recipients_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[bytes] = []
    original = tcp.C2SConnection.write

    def recording(self: tcp.C2SConnection, data: bytes) -> None:
        writes.append(data)
        original(self, data)

    monkeypatch.setattr(tcp.C2SConnection, "write", recording)
    async with sender_and_recipient(tmp_path) as (sender, recipient):
        overtaken = []
        for n in range(1, ROUNDS + 1):
            writes.clear()
            sender.send(
                f"<iq type='get' id='ping{n}'><ping xmlns='urn:xmpp:ping'/></iq>"
                f"<message to='{recipient.jid}' type='chat' id='m{n}'>"
                f"<body>round-{n}</body></message><r xmlns='{SM}'/>"
            )
            await sender.expect(
                lambda el, n=n: el.tag == f"{{{SM}}}a" and el.get("h") == str(2 * n)
            )
            await recipient.expect(
                lambda el, n=n: el.tag == "{jabber:client}message" and el.get("id") == f"m{n}"
            )
            copy = next(i for i, w in enumerate(writes) if f"round-{n}<".encode() in w)
            ack = next(i for i, w in enumerate(writes) if b'<a xmlns="urn:xmpp:sm:3"' in w)
            if ack < copy:
                overtaken.append(n)
        assert overtaken == [], f"the ack was written first in rounds {overtaken}"


async def test_an_ack_request_right_before_the_stream_end_is_answered(tmp_path: Path) -> None:
    """A client that asks ``<r/>`` and ends its stream in the same packet still learns
    what the server handled before the server closes."""
    async with sender_and_recipient(tmp_path) as (sender, recipient):
        sender.send(
            f"<message to='{recipient.jid}' type='chat' id='last'><body>bye</body></message>"
            f"<r xmlns='{SM}'/></stream:stream>"
        )
        assert await sender.wait_closed() is None
        answers = sender.pending(lambda el: el.tag == f"{{{SM}}}a")
        assert [el.get("h") for el in answers] == ["1"]
        await recipient.expect(
            lambda el: el.tag == "{jabber:client}message" and el.get("id") == "last"
        )
