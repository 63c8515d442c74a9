"""``kill -9`` of a node in the middle of counted traffic with stream management:
senders and recipients on both nodes; the killed node's clients reconnect to the other
node (their sessions died with it, so they log in again). Every message the cluster
acknowledged to its sender (XEP-0198 ``<a h/>``) is delivered exactly once: live, or
from offline storage at the new login."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import time
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


async def authenticated(server: XmppdServer, name: str) -> RawClient:
    """A client authenticated as ``name`` and not bound (to resume)."""
    client = await RawClient(server).connect()
    await client.starttls()
    await client.open_stream()
    token = base64.b64encode(f"\0{name}\0{PW}".encode()).decode()
    client.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
    assert b"<success" in await client.read_until(b"<success|<failure")
    await client.open_stream()
    return client


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
        self.sm_id = ""
        self._out: list[str] = []
        """Our stanzas of this session, by number - 1 (sent again after a resume)."""
        self._acks: list[tuple[float, int]] = []
        """When we told the server which ``h``."""
        self._bodies_at: dict[str, int] = {}
        self.unacked_at_loss: set[str] = set()
        """Bodies received and not acknowledged when the connection was lost."""
        self.resumed_h: int | None = None

    @property
    def jid(self) -> str:
        return f"{self.name}@localhost/{self.resource}"

    async def start(self, node: XmppdServer) -> None:
        client = RawClient(node)
        await client.connect()
        await client.login(self.name, PW, resource=self.resource)
        client.send(f"<enable xmlns='{SM}' resume='true'/>")
        enabled = await client.read_until(b"<enabled[^>]*>")
        match = re.search(rb'id="([^"]+)"', enabled)
        self.sm_id = match.group(1).decode() if match else ""
        self._client = client
        self._stanzas_out = 0
        self._handled = 0
        self._acks = []
        self._out = []
        self.lost_connection = asyncio.Event()
        self._send_stanza("<presence/>")
        self._reader = asyncio.create_task(self._read(b""))

    async def resume(self, node: XmppdServer) -> bytes:
        """Resume the session on ``node``; send again what it did not handle. The
        ``<resumed/>`` or ``<failed/>`` answer."""
        await self.stop()
        client = await authenticated(node, self.name)
        client.send(f"<resume xmlns='{SM}' previd='{self.sm_id}' h='{self._handled}'/>")
        data = await client.read_until(rb"<resumed[^>]*>|</failed>|<failed[^>]*/>")
        match = re.search(rb"<resumed[^>]*>", data)
        if match is None:
            return bytes(data)
        h = re.search(rb"h=['\"](\d+)", match.group(0))
        assert h is not None
        self.resumed_h = int(h.group(1))
        self.acked_upto = max(self.acked_upto, self.resumed_h)
        self._client = client
        self.lost_connection = asyncio.Event()
        for stanza in self._out[self.resumed_h :]:  # the server did not handle these
            client.send(stanza)
        self._reader = asyncio.create_task(self._read(data[match.end() :]))
        return match.group(0)

    def _send_stanza(self, data: str) -> int:
        assert self._client is not None
        self._client.send(data)
        self._out.append(data)
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

    async def _read(self, buffer: bytes) -> None:
        client = self._client
        assert client is not None and client.reader is not None
        try:
            while True:
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
                        self._acks.append((time.monotonic(), self._handled))
                    elif item.startswith(b"<a "):
                        h = re.search(rb"h=['\"](\d+)", item)
                        if h:
                            self.acked_upto = max(self.acked_upto, int(h.group(1)))
                    else:
                        self._handled += 1
                        body = re.search(rb"<body>([^<]+)</body>", item)
                        if body:
                            self.received[body.group(1).decode()] += 1
                            self._bodies_at[body.group(1).decode()] = self._handled
                chunk = await client.reader.read(65536)
                if not chunk:
                    break
                buffer += chunk
        except (ConnectionError, OSError):
            pass
        finally:
            if not self.lost_connection.is_set():
                # An ack sent just before the node died may never have reached it.
                settled = time.monotonic() - 0.5
                acked = max((h for t, h in self._acks if t < settled), default=0)
                self.unacked_at_loss |= {b for b, n in self._bodies_at.items() if n > acked}
            self.lost_connection.set()

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._client is not None:
            await self._client.close()


@pytest.mark.timeout(150)
@pytest.mark.parametrize("away", [0.0, 7.0], ids=["at-once", "after-the-takeover"])
async def test_kill_9_clients_resume_on_the_survivor(cluster: ClusterNodes, away: float) -> None:
    """The killed node's clients resume on the other node, at once (before it knows
    the node died) or once it took their sessions over (hibernated there, messages
    queued for them meanwhile): nothing the cluster acknowledged is lost, nothing
    comes twice."""
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
        for client in (s1, r1):
            await asyncio.wait_for(client.lost_connection.wait(), 15)
        for i in range(PER_SENDER, PER_SENDER + 5):  # for the sessions away
            for recipient in (r1, r2):
                s2.send(recipient.jid, f"s2-{recipient.name}-away-{i}")
        await asyncio.sleep(away)
        for client in (s1, r1):
            before = client.acked_upto
            answer = await client.resume(node2)
            assert answer.startswith(b"<resumed"), answer
            assert client.resumed_h is not None and client.resumed_h >= before
            print(f"{client.name} resumed, h {client.resumed_h} (acked before: {before})")
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
        assert len(acknowledged) > sent * 9 // 10, "the senders' acks did not come"
        assert lost == [], f"acknowledged but never delivered: {lost[:10]}"
        assert duplicated == [], f"delivered twice: {duplicated[:10]}"
    finally:
        for client in clients:
            await client.stop()


@pytest.mark.timeout(150)
@pytest.mark.parametrize("after", [0.0, 4.0], ids=["at-once", "after-the-takeover"])
async def test_kill_9_loses_no_acknowledged_message(cluster: ClusterNodes, after: float) -> None:
    """The killed node's clients do not resume: they log in again, at once (the
    survivor finds their JIDs bound again) or once the survivor took their sessions
    over (the new login replaces the hibernated session)."""
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
        await asyncio.sleep(after)  # the survivor notices the death (node_timeout 3 s)
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
        # Received on the lost connection and not acknowledged (for sure) by then:
        # XEP-0198 delivers those again to a client that does not resume.
        again = r1.unacked_at_loss | r2.unacked_at_loss
        duplicated = [b for b, n in delivered.items() if n > 1 and b not in again]
        sent = len(s1.sent) + len(s2.sent)
        print(
            f"sent {sent}, acknowledged {len(acknowledged)}, delivered {len(delivered)}, "
            f"lost {len(lost)}, duplicated {len(duplicated)}, "
            f"unacknowledged and delivered again {len([b for b in again if delivered[b] > 1])}"
        )
        assert len(acknowledged) > sent // 2, "the senders' acks did not come"
        assert lost == [], f"acknowledged but never delivered: {lost[:10]}"
        assert duplicated == [], f"delivered twice: {duplicated[:10]}"
    finally:
        for client in clients:
            await client.stop()


@pytest.fixture
def cluster3(tmp_path: Path) -> Iterator[ClusterNodes]:
    with running_cluster(
        tmp_path,
        nodes=3,
        modules={**DEFAULT_TEST_MODULES, "offline": {}},
        extra="[c2s]\nresume_timeout = '60s'\n",
    ) as nodes:
        yield nodes


@pytest.mark.timeout(120)
async def test_kill_9_resume_on_a_node_that_did_not_clean_up(cluster3: ClusterNodes) -> None:
    """Three nodes: the killed node's client resumes at once on another node, which
    gets the session from the survivor that adopted it (or claims the session's mirror
    itself when it saw the death first). What it had received counts as acknowledged
    by its ``h`` (not sent again); what was sent while it was away follows, once."""
    node1, node2, node3 = cluster3.nodes
    for name in ("sender3", "away3"):
        await register_account(node3, name, PW)
    sender, away = CountingClient("sender3", "out"), CountingClient("away3", "in")
    await sender.start(node3)
    await away.start(node1)
    try:
        await asyncio.sleep(0.5)
        for i in range(10):
            sender.send(away.jid, f"before-{i}")
        await asyncio.sleep(1.0)
        assert sum(away.received.values()) == 10, away.received
        node1.process.kill()
        node1.process.wait()
        await asyncio.wait_for(away.lost_connection.wait(), 15)
        for i in range(5):
            sender.send(away.jid, f"after-{i}")
        answer = await away.resume(node2)
        assert answer.startswith(b"<resumed"), answer
        await asyncio.sleep(3)
        expected = [f"before-{i}" for i in range(10)] + [f"after-{i}" for i in range(5)]
        assert sorted(away.received) == sorted(expected), away.received
        assert all(n == 1 for n in away.received.values()), away.received
        assert sorted(sender.acknowledged()) == sorted(expected)
    finally:
        await sender.stop()
        await away.stop()
    for log in (node2.log_path, node3.log_path):
        for line in log.read_text(errors="replace").splitlines():
            if "mirror" in line or "resumed" in line:
                print(f"{log.parent.name}: {line[24:200]}")
