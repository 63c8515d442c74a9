"""Gap 1 of issue 15: every byte a peer sends counts against a per-stream limit, in
every parser state, before it reaches libxml2.

A raw socket sends tens of megabytes before login while the test watches the server's
RSS in /proc: the stream error must arrive, the connection must close, and the memory
must stay within a bound far below what was sent. Whitespace keepalives between
stanzas are the exception: accepted indefinitely, without growing memory.
"""

from __future__ import annotations

import asyncio
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


async def test_an_unfinished_long_tag_does_not_hold_up_others(hostile_server: XmppdServer) -> None:
    """One read that ends inside a long start tag (a '>' in a quoted value makes it look
    finished) is read in one pass: another user's ping is answered at once. Before, the
    reader's tag tokeniser tried every length of the 16,000-byte name (about 8 s of the
    event loop, for every user on the process)."""
    srv = hostile_server
    for user in ("slowtag", "bystander"):
        proc = srv.cli("adduser", f"{user}@{srv.domain}", input="secret-pw\n")
        assert proc.returncode == 0, proc.stderr
    attacker, bystander = RawClient(srv), RawClient(srv)
    await attacker.connect()
    await bystander.connect()
    try:
        await attacker.login("slowtag", "secret-pw")
        await bystander.login("bystander", "secret-pw")
        attacker.send(b"<presence/><" + b"m" * 16_000 + b" x='>")
        await asyncio.sleep(0.05)  # the attacker's read first
        bystander.send(b"<iq type='get' id='alive'><ping xmlns='urn:xmpp:ping'/></iq>")
        reply = await bystander.read_until(b"id=['\"]alive", timeout=2)
        assert b"type='result'" in reply or b'type="result"' in reply, reply
        attacker.send(b"'/>")  # the tag ends: an element the server does not route
        assert stream_error(await attacker.read_to_close()) is not None
    finally:
        await attacker.close()
        await bystander.close()
