"""The restricted XML reader, fed bytes with no I/O (RFC 6120 §11)."""

from __future__ import annotations

import pytest
from lxml import etree

from xmppd.errors import StreamError
from xmppd.stream.xmlreader import XmlReader

HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' to='example.org' version='1.0'>"
)


def reader(limit: int = 10_000) -> XmlReader:
    return XmlReader(expected_namespace="jabber:client", max_stanza_size=limit)


def test_header_then_stream_neutral_stanzas() -> None:
    r = reader()
    assert r.feed(HEADER) == []
    assert r.header is not None and r.header.to == "example.org" and r.header.version == "1.0"
    stanzas = r.feed(
        b"<message to='a@b'><body>hi &amp; bye</body></message><iq type='get' id='1'/>"
    )
    assert [s.tag for s in stanzas] == ["message", "iq"]
    assert etree.tostring(stanzas[0]) == b'<message to="a@b"><body>hi &amp; bye</body></message>'


def test_bytes_split_anywhere_give_the_same_stanzas() -> None:
    data = HEADER + b"<message to='a@b'><body>\xc3\xa9t\xc3\xa9</body></message></stream:stream>"
    r = reader()
    out = []
    for i in range(len(data)):
        out.extend(r.feed(data[i : i + 1]))
    assert [etree.tostring(s, encoding="utf-8") for s in out] == [
        '<message to="a@b"><body>été</body></message>'.encode()
    ]
    assert r.closed


def test_payload_namespaces_are_kept_without_prefixes() -> None:
    r = reader()
    r.feed(HEADER)
    (iq,) = r.feed(
        b"<iq type='set' id='r'><query xmlns='jabber:iq:roster'><item jid='x@y'/></query></iq>"
    )
    assert iq[0].tag == "{jabber:iq:roster}query"
    assert b"ns0" not in etree.tostring(iq)


@pytest.mark.parametrize(
    ("data", "condition"),
    [
        (b"<!DOCTYPE x>" + HEADER, "restricted-xml"),
        (HEADER + b"<!-- c -->", "restricted-xml"),
        (HEADER + b"<?pi x?>", "restricted-xml"),
        (HEADER + b"<message><body>&ent;</body></message>", "not-well-formed"),
        (HEADER + b"<message></iq>", "not-well-formed"),
        (HEADER.replace(b"jabber:client", b"jabber:server"), "invalid-namespace"),
        (HEADER.replace(b"etherx.jabber.org/streams", b"example.org/x"), "invalid-namespace"),
        (b"<?xml version='1.0' encoding='ISO-8859-1'?>" + HEADER[21:], "unsupported-encoding"),
        (b"hello", "not-well-formed"),
        (b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'/>", "not-well-formed"),
    ],
)
def test_refused_input(data: bytes, condition: str) -> None:
    with pytest.raises(StreamError) as err:
        reader().feed(data)
    assert err.value.condition == condition


def test_oversized_stanza_is_refused_while_small_ones_flow() -> None:
    r = reader(limit=4096)
    r.feed(HEADER)
    for _ in range(100):  # many small stanzas are fine, whatever their total
        assert len(r.feed(b"<message><body>" + b"x" * 1000 + b"</body></message>")) == 1
    with pytest.raises(StreamError) as err:
        r.feed(b"<message><body>" + b"x" * 40_000)
    assert err.value.condition == "policy-violation"


def test_oversized_header_is_refused() -> None:
    with pytest.raises(StreamError) as err:
        reader().feed(b"<stream:stream " + b"a='1' " * 5000)
    assert err.value.condition == "policy-violation"


def test_reset_reads_a_new_header() -> None:
    r = reader()
    r.feed(HEADER + b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    r.reset()
    assert r.header is None
    r.feed(HEADER)
    assert r.header is not None


def test_stanzas_after_restarts_read_as_on_a_new_stream() -> None:
    r = reader()
    r.feed(HEADER + b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>AA==</auth>")
    r.reset()
    (iq,) = r.feed(HEADER + b"<iq type='set' id='b'><bind xmlns='urn:x'/></iq>")
    assert iq.tag == "iq" and iq[0].tag == "{urn:x}bind"
    # The next header declares one more prefix: stanzas may use it.
    r.reset()
    other = HEADER.replace(b" version='1.0'>", b" xmlns:db='jabber:server:dialback' version='1.0'>")
    (verify,) = r.feed(other + b"<db:verify id='1'>k</db:verify>")
    assert verify.tag == "{jabber:server:dialback}verify" and verify.text == "k"
    # Back to the first header: the prefix is no longer bound to the namespace.
    r.reset()
    (unbound,) = r.feed(HEADER + b"<db:verify id='2'>k</db:verify>")
    assert unbound.tag != "{jabber:server:dialback}verify"


def test_a_restart_in_the_middle_of_a_stanza_forgets_it() -> None:
    r = reader()
    r.feed(HEADER + b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><message><bo")
    r.reset()
    (msg,) = r.feed(HEADER + b"<message to='a@b'><body>new</body></message>")
    assert msg.findtext("body") == "new" and len(msg) == 1
    r.feed(b"</stream:stream>")
    assert r.closed


def test_the_parser_kept_for_a_restart_is_released_while_idle() -> None:
    r = reader()
    r.feed(HEADER + b"<presence/>")
    r.reset()
    assert r.release_if_idle()  # waiting for the next header: nothing half-read
    assert not r.release_if_idle()
    r.feed(HEADER)
    (msg,) = r.feed(b"<message><body>x</body></message>")
    assert msg.findtext("body") == "x"


def test_whitespace_keepalives_do_not_accumulate() -> None:
    r = reader(limit=2048)
    r.feed(HEADER)
    for _ in range(1000):
        assert r.feed(b" \n") == []
    assert len(r.feed(b"<presence/>")) == 1


def test_idle_parser_is_released_between_stanzas_and_rebuilt() -> None:
    r = reader()
    r.feed(HEADER + b"<presence/>")
    assert r.release_if_idle()
    assert not r.release_if_idle()  # nothing left to free
    (msg,) = r.feed(b"<message to='a@b'><body>after</body></message>")
    assert msg.findtext("body") == "after"


def test_parser_is_kept_while_a_stanza_is_half_read() -> None:
    r = reader()
    r.feed(HEADER + b"<message><body>hal")
    assert not r.release_if_idle()
    r2 = reader()
    r2.feed(HEADER + b"<presence/><mess")
    assert not r2.release_if_idle()  # a start tag is half-fed
    (msg,) = r.feed(b"f</body></message>")
    assert msg.findtext("body") == "half"


def test_stanza_declaring_the_content_namespace_comes_out_neutral() -> None:
    r = reader()
    r.feed(HEADER)
    (msg,) = r.feed(
        b"<message xmlns='jabber:client' to='a@b' xml:lang='en'><body>hi</body>"
        b"<forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'><body>in</body>"
        b"</message></forwarded></message>"
    )
    assert msg.tag == "message" and msg[0].tag == "body" and msg.findtext("body") == "hi"
    assert msg.get("{http://www.w3.org/XML/1998/namespace}lang") == "en"
    inner = msg.find("{urn:xmpp:forward:0}forwarded/{jabber:client}message")
    assert inner is not None and inner.findtext("{jabber:client}body") == "in"
    text = etree.tostring(msg)
    assert text.startswith(b'<message to="a@b"') and b"ns0" not in text


def where(r: XmlReader) -> tuple[bool, int]:
    """Between stanzas or not, and the bytes pending (read afresh at each call)."""
    return r.is_between_stanzas, r.pending


def test_reads_of_whole_tags_leave_exactly_the_open_stanza_counted() -> None:
    """The common case (a read between stanzas that starts and ends with a tag) goes to
    the parser whole; where such a read stops inside a stanza, that stanza's bytes so
    far are what is pending, whichever tag the read ends with."""
    r = reader()
    r.feed(HEADER)
    whole = b"<message to='a@b'><body>one</body></message>"
    assert [el.tag for el in r.feed(whole + b"<presence/>")] == ["message", "presence"]
    assert where(r) == (True, 0)
    opened = b"<message to='a@b'><body>two</body>"  # ends with an inner end tag
    assert [el.findtext("body") for el in r.feed(whole + opened)] == ["one"]
    assert where(r) == (False, len(opened))
    (msg,) = r.feed(b"<thread>t</thread></message>")  # not at a boundary: read in pieces
    assert msg.findtext("thread") == "t"
    assert where(r) == (True, 0)
    assert [
        el.tag for el in r.feed(b"<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>")
    ] == ["iq"]
    assert where(r) == (True, 0)
