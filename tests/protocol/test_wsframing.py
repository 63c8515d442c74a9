"""RFC 7395 framing: <open/> and <close/>, one element per message, the same XML
restrictions and size limit as TCP, stanzas qualified on the way out."""

from __future__ import annotations

import pytest

from xmppd.errors import StreamError
from xmppd.stream.wsframing import WEBSOCKET, FramedReader, qualify_stanza

FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"


def reader() -> FramedReader:
    return WEBSOCKET.reader("jabber:client", 4096)


def test_open_is_the_header_and_close_the_end() -> None:
    r = reader()
    assert (
        r.feed(f"<open xmlns='{FRAMING}' to='localhost' version='1.0' xml:lang='en'/>".encode())
        == []
    )
    assert r.header is not None
    assert (r.header.to, r.header.version, r.header.lang) == ("localhost", "1.0", "en")
    (msg,) = r.feed(b"<message xmlns='jabber:client' to='a@localhost'><body>hi</body></message>")
    assert msg.tag == "message"  # stream-neutral, as over TCP
    assert msg[0].tag == "body"
    assert r.feed(f"<close xmlns='{FRAMING}'/>".encode()) == []
    assert r.closed
    r.reset()
    assert r.header is None and not r.closed
    r.feed(f"<open xmlns='{FRAMING}' to='localhost' version='1.0'/>".encode())
    assert r.header is not None


@pytest.mark.parametrize(
    ("message", "condition"),
    [
        (b"<message xmlns='jabber:client'/>", "not-well-formed"),  # before <open/>
        (b"not xml", "not-well-formed"),
        (b"<message xmlns='jabber:client'>", "not-well-formed"),  # unfinished
        (
            b"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='a>",
            "not-well-formed",
        ),  # in a tag
        (b"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing'", "not-well-formed"),  # cut tag
        (
            b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
            "not-well-formed",
        ),
        (b"<!-- hi --><open xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>", "restricted-xml"),
        (b"<!DOCTYPE x []><open xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>", "restricted-xml"),
    ],
)
def test_bad_messages_are_stream_errors(message: bytes, condition: str) -> None:
    with pytest.raises(StreamError) as err:
        reader().feed(message)
    assert err.value.condition == condition


def test_a_stanza_over_the_limit_is_a_policy_violation() -> None:
    r = reader()
    r.feed(f"<open xmlns='{FRAMING}' to='localhost' version='1.0'/>".encode())
    with pytest.raises(StreamError) as err:
        r.feed(b"<message><body>" + b"x" * 20000 + b"</body></message>")
    assert err.value.condition == "policy-violation"


def test_our_open_close_and_qualified_stanzas() -> None:
    opened = WEBSOCKET.open("jabber:client", {"from": "localhost", "id": "abc", "version": "1.0"})
    assert opened.startswith(b'<open xmlns="urn:ietf:params:xml:ns:xmpp-framing"')
    assert b'from="localhost"' in opened and opened.endswith(b"/>")
    assert WEBSOCKET.close() == b'<close xmlns="urn:ietf:params:xml:ns:xmpp-framing"/>'
    assert qualify_stanza(b"<message to='a'/>") == b"<message xmlns=\"jabber:client\" to='a'/>"
    assert qualify_stanza(b"<iq>x</iq>") == b'<iq xmlns="jabber:client">x</iq>'
    assert (
        qualify_stanza(b'<presence xmlns="jabber:client"/>') == b'<presence xmlns="jabber:client"/>'
    )
    assert (
        qualify_stanza(b'<message xmlns:x="y"/>') == b'<message xmlns="jabber:client" xmlns:x="y"/>'
    )
    features = b'<stream:features xmlns:stream="http://etherx.jabber.org/streams"/>'
    assert qualify_stanza(features) == features
    assert qualify_stanza(b'<r xmlns="urn:xmpp:sm:3"/>') == b'<r xmlns="urn:xmpp:sm:3"/>'
