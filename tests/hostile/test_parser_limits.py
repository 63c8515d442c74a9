"""Gap 1 of issue 15: every byte a peer sends counts against a per-stream limit, in
every parser state, before it reaches libxml2.

A raw socket sends tens of megabytes before login while the test watches the server's
RSS in /proc: the stream error must arrive, the connection must close, and the memory
must stay within a bound far below what was sent. Whitespace keepalives between
stanzas are the exception: accepted indefinitely, without growing memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.hostile import MIB, flood, rss
from tests.support.rawstream import STREAM_HEADER, RawClient, stream_error
from tests.support.server import XmppdServer, running_server

HEADER = STREAM_HEADER.format(to="localhost").encode()
SENT = 16 * MIB
"""What each attacking connection sends (more than libxml2's own 10 MB caps on names
and text, which on their own let one connection pin ~25 MB before the fix)."""
CONNECTIONS = 6
"""Attacking connections at once, per attack."""
BOUND = 24 * MIB
"""How much the server's RSS may grow during one attack (the limits are 256 KiB per
stream; the rest is socket buffers, the TLS-less stream objects and allocator slack)."""

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    # No shaper: the floods here are about the parser's limits (test_limits.py shapes).
    with running_server(
        tmp_path_factory.mktemp("hostile"), modules={"ping": {}}, extra="[c2s]\ninput_rate = 0\n"
    ) as srv:
        yield srv


ATTACKS = {
    # name: (prefix, filler, expected stream error)
    "whitespace-in-start-tag": (HEADER + b"<message ", b" \t\r\n", "policy-violation"),
    "endless-attribute-value": (HEADER + b"<message to='", b"a", "policy-violation"),
    "endless-element-name": (HEADER + b"<m", b"essage", "policy-violation"),
    "endless-namespace-declarations": (HEADER + b"<message", None, "policy-violation"),
    "text-between-stanzas": (HEADER + b"<presence/>", b"text", "policy-violation"),
    "text-inside-stanza": (HEADER + b"<message><body>", b"hello ", "policy-violation"),
    "whitespace-before-header": (b"", b" \r\n\t", "policy-violation"),
    "whitespace-in-header": (b"<stream:stream ", b" ", "policy-violation"),
    "nesting": (HEADER + b"<message>", b"<a>", "policy-violation"),
}


def _namespaces() -> bytes:
    return b"".join(b" xmlns:p%d='urn:x:%d'" % (i, i) for i in range(4096))


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_unfinished_input_is_bounded_and_refused(
    hostile_server: XmppdServer, attack: str
) -> None:
    prefix, filler, condition = ATTACKS[attack]
    pid = hostile_server.process.pid
    before = rss(pid)
    results = await asyncio.gather(
        *(
            flood(
                hostile_server.starttls_port,
                pid,
                prefix=prefix,
                filler=filler if filler is not None else _namespaces(),
                total=SENT,
            )
            for _ in range(CONNECTIONS)
        )
    )
    grown = max(r.peak_rss for r in results) - before
    for result in results:
        assert result.closed_by_server, f"{attack}: still open after {result.sent} bytes"
        assert stream_error(result.received) == condition, result.received[-500:]
    assert grown < BOUND, f"{attack}: RSS grew {grown / MIB:.1f} MiB"


async def test_whitespace_keepalives_are_accepted_without_growing(
    hostile_server: XmppdServer,
) -> None:
    """RFC 6120 §4.6.1: whitespace between stanzas is a keepalive, never an error."""
    pid = hostile_server.process.pid
    before = rss(pid)
    result = await flood(
        hostile_server.starttls_port,
        pid,
        prefix=HEADER,  # before STARTTLS: only keepalives may come (a stanza is refused)
        filler=b" \n",
        total=SENT,
        suffix=b"</stream:stream>",
    )
    assert result.sent == SENT
    assert stream_error(result.received) is None, result.received[-500:]
    assert result.received.rstrip().endswith(b"</stream:stream>")
    grown = result.peak_rss - before
    assert grown < BOUND, f"RSS grew {grown / MIB:.1f} MiB on keepalives"
    assert b"<stream:features" in result.received


async def test_keepalives_inside_a_session(hostile_server: XmppdServer, tmp_path: Path) -> None:
    """A logged-in client's keepalives between real stanzas, in pieces of every size."""
    srv = hostile_server
    proc = srv.cli("adduser", f"ka@{srv.domain}", input="secret-pw\n")
    assert proc.returncode == 0, proc.stderr
    client = RawClient(srv)
    await client.connect()
    try:
        await client.login("ka", "secret-pw")
        for n in (1, 7, 4096, 70000):
            client.send(
                b" " * n + b"<iq type='get' id='p%d'><ping xmlns='urn:xmpp:ping'/></iq>" % n
            )
            client.send(b"\n" * n)
            reply = await client.read_until(b"id=['\"]p%d" % n)
            assert b"type='result'" in reply or b'type="result"' in reply, reply
    finally:
        await client.close()


SLOW_READS = {
    # name: (one read sent by each attacking connection before login, stream error)
    # A read ending inside a 16,000-byte start tag whose quoted '>' makes it look whole:
    # the tag tokeniser tried every length of the name (about 8 s per read).
    "unfinished long tag": (b"<presence/><" + b"m" * 16_000 + b" x='>", "policy-violation"),
    # '<' repeated inside a quoted value: the tokeniser restarted at every '<' and
    # scanned to the end of the read (0.6 s per 16 KB read).
    "'<' in a quoted value": (b"<message a='" + b"<x" * 8_000 + b"'>", "not-well-formed"),
    # An element with thousands of attributes (libxml2 2.10 and lxml cost the square
    # of their number: 3.4 s for 24,000 in one stanza), its namespace spelled out so
    # that the reader rebuilds it stream-neutral: now a tag too long.
    "many attributes": (
        b"<message xmlns='jabber:client' "
        + b" ".join(b"a%d='1'" % i for i in range(20_000))
        + b"/>",
        "policy-violation",
    ),
}


@pytest.mark.parametrize("attack", list(SLOW_READS))
async def test_slow_reads_do_not_hold_up_others(hostile_server: XmppdServer, attack: str) -> None:
    """Reads built to be expensive for the stream reader, from five connections at
    once before login: each gets its stream error, and a logged-in user's ping is
    answered meanwhile (before the fixes the event loop was held for seconds)."""
    data, condition = SLOW_READS[attack]
    srv = hostile_server
    user = "bystander" + attack.replace(" ", "").replace("'", "").replace("<", "")
    proc = srv.cli("adduser", f"{user}@{srv.domain}", input="secret-pw\n")
    assert proc.returncode == 0, proc.stderr
    bystander = RawClient(srv)
    await bystander.connect()
    attackers: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        await bystander.login(user, "secret-pw")
        for _ in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.starttls_port)
            writer.write(HEADER + data)
            attackers.append((reader, writer))
        await asyncio.sleep(0.05)  # the attackers' reads first
        bystander.send(b"<iq type='get' id='alive'><ping xmlns='urn:xmpp:ping'/></iq>")
        reply = await bystander.read_until(b"id=['\"]alive", timeout=2)
        assert b"type='result'" in reply or b'type="result"' in reply, reply
        for reader, writer in attackers:
            # The quoted value's end: a tag still waiting for it is now whole.
            with contextlib.suppress(ConnectionError):
                writer.write(b"'/>")
            received = await asyncio.wait_for(reader.read(), timeout=10)
            assert stream_error(received) == condition, received[-300:]
    finally:
        await bystander.close()
        for _, writer in attackers:
            writer.close()
