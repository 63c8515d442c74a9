"""``kill -9`` of a node in the middle of counted traffic with stream management:
senders and recipients on both nodes; the killed node's clients reconnect to the other
node (their sessions died with it, so they log in again). Every message the cluster
acknowledged to its sender (XEP-0198 ``<a h/>``) is delivered exactly once: live, or
from offline storage at the new login."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clients import register_account
from tests.support.cluster import ClusterNodes, running_cluster
from tests.support.rawstream import RawClient
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer

SM = "urn:xmpp:sm:3"
PW = "kill-pw"
PER_SENDER = 80


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterNodes]:
    with running_cluster(
        tmp_path,
        nodes=2,
        modules={**DEFAULT_TEST_MODULES, "offline": {}},
        extra="[c2s]\nresume_timeout = '60s'\n",
    ) as nodes:
        yield nodes


class CountingClient:
    """A raw client with stream management that counts: messages received (by body),
    and its own messages the server acknowledged."""

    def __init__(self, name: str, resource: str) -> None:
        self.name = name
        self.resource = resource
        self.received: Counter[str] = Counter()
        self.sent: list[str] = []
        self.acked_upto = 0
        """How many of our stanzas the server has handled (its ``h``)."""
        self._numbers: dict[str, int] = {}
        self._handled = 0
        self._client: RawClient | None = None
        self._reader: asyncio.Task[None] | None = None
        self.lost_connection = asyncio.Event()

    @property
    def jid(self) -> str:
        return f"{self.name}@localhost/{self.resource}"

    async def start(self, node: XmppdServer) -> None:
        client = RawClient(node)
        await client.connect()
        await client.login(self.name, PW, resource=self.resource)
        client.send(f"<enable xmlns='{SM}' resume='true'/>")
        await client.read_until(b"<enabled[^>]*>")
        self._client = client
        self._stanzas_out = 0
        self._handled = 0
        self.lost_connection = asyncio.Event()
        self._send_stanza("<presence/>")
        self._reader = asyncio.create_task(self._read())

    def _send_stanza(self, data: str) -> int:
        assert self._client is not None
        self._client.send(data)
        self._stanzas_out += 1
        return self._stanzas_out

    def send(self, to: str, body: str) -> None:
        number = self._send_stanza(f"<message type='chat' to='{to}'><body>{body}</body></message>")
        self.sent.append(body)
        self._numbers[body] = number
        assert self._client is not None
        self._client.send(f"<r xmlns='{SM}'/>")

    def acknowledged(self) -> list[str]:
        return [b for b in self.sent if self._numbers.get(b, 1 << 60) <= self.acked_upto]

    async def _read(self) -> None:
        client = self._client
        assert client is not None and client.reader is not None
        buffer = b""
        try:
            while chunk := await client.reader.read(65536):
                buffer += chunk
                while True:
                    match = re.search(
                        rb"<message[^>]*>.*?</message>|<presence[^>]*/>|<presence[^>]*>.*?"
                        rb"</presence>|<iq[^>]*/>|<iq[^>]*>.*?</iq>|<r [^>]*/>|<a [^>]*/>",
                        buffer,
                        re.S,
                    )
                    if match is None:
                        break
                    item, buffer = match.group(0), buffer[match.end() :]
                    if item.startswith(b"<r "):
                        client.send(f"<a xmlns='{SM}' h='{self._handled}'/>")
                    elif item.startswith(b"<a "):
                        h = re.search(rb"h=['\"](\d+)", item)
                        if h:
                            self.acked_upto = max(self.acked_upto, int(h.group(1)))
                    else:
                        self._handled += 1
                        body = re.search(rb"<body>([^<]+)</body>", item)
                        if body:
                            self.received[body.group(1).decode()] += 1
        except (ConnectionError, OSError):
            pass
        finally:
            self.lost_connection.set()

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._client is not None:
            await self._client.close()


@pytest.mark.timeout(150)
async def test_kill_9_loses_no_acknowledged_message(cluster: ClusterNodes) -> None:
    node1, node2 = cluster.nodes
    for name in ("s1", "s2", "r1", "r2"):
        await register_account(node2, name, PW)
    s1, s2 = CountingClient("s1", "out"), CountingClient("s2", "out")
    r1, r2 = CountingClient("r1", "in"), CountingClient("r2", "in")
    await s1.start(node1)
    await r1.start(node1)
    await s2.start(node2)
    await r2.start(node2)
    clients = (s1, s2, r1, r2)
    try:
        await asyncio.sleep(0.5)
        for i in range(PER_SENDER):
            for sender in (s1, s2):
                if sender.lost_connection.is_set():
                    continue
                for recipient in (r1, r2):
                    sender.send(recipient.jid, f"{sender.name}-{recipient.name}-{i}")
            if i == PER_SENDER // 2:
                node1.process.kill()
                node1.process.wait()
            await asyncio.sleep(0.02)
        # The killed node's clients notice and log in again on the other node.
        for client in (s1, r1):
            await asyncio.wait_for(client.lost_connection.wait(), 15)
            await client.stop()
        await asyncio.sleep(4)  # the survivor notices the death (node_timeout 3 s)
        await r1.start(node2)  # initial presence: offline messages come
        await s1.start(node2)
        for i in range(PER_SENDER, PER_SENDER + 10):  # traffic goes on
            for sender in (s1, s2):
                for recipient in (r1, r2):
                    sender.send(recipient.jid, f"{sender.name}-{recipient.name}-{i}")
        await asyncio.sleep(3)

        acknowledged = [b for s in (s1, s2) for b in s.acknowledged()]
        delivered: Counter[str] = r1.received + r2.received
        lost = [b for b in acknowledged if delivered[b] == 0]
        duplicated = [b for b, n in delivered.items() if n > 1]
        sent = len(s1.sent) + len(s2.sent)
        print(
            f"sent {sent}, acknowledged {len(acknowledged)}, delivered {len(delivered)}, "
            f"lost {len(lost)}, duplicated {len(duplicated)}"
        )
        assert len(acknowledged) > sent // 2, "the senders' acks did not come"
        assert lost == [], f"acknowledged but never delivered: {lost[:10]}"
        assert duplicated == [], f"delivered twice: {duplicated[:10]}"
    finally:
        for client in clients:
            await client.stop()
