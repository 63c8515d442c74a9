"""Property tests of the stream reader (issue 15): however the bytes are cut, the same
stanzas come out; whatever the bytes, only a StreamError comes out, and what the
reader holds never passes its limits.

Bounded ``max_examples`` keep this in the suite; crashers found by longer campaigns
(``XMPPD_FUZZ_EXAMPLES=20000 pytest --timeout=0 tests/hostile/test_xmlreader_properties.py``,
see docs/security.md) are kept below as ``@example`` regression cases.
"""

from __future__ import annotations

import contextlib
import itertools
import os

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from lxml import etree

from xmppd.errors import StreamError
from xmppd.stream.xmlreader import FEED_SLICE, MAX_ATTRIBUTES, MAX_TAG, XmlReader

EXAMPLES = int(os.environ.get("XMPPD_FUZZ_EXAMPLES", "150"))
LIMIT = 4096
HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>"
)
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

names = st.sampled_from(["message", "iq", "presence", "body", "x", "a", "item", "q:n"])
texts = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=20)
whitespace = st.text(alphabet=" \t\r\n", max_size=5)


@st.composite
def elements(draw: st.DrawFn, depth: int = 0) -> etree._Element:
    name = draw(names)
    el = etree.Element(
        "{urn:q}n" if name == "q:n" else name,
        nsmap={"q": "urn:q"} if name == "q:n" else None,
    )
    for key in draw(st.lists(st.sampled_from(["to", "id", "type", "from"]), unique=True)):
        el.set(key, draw(texts))
    el.text = draw(texts) or None
    if depth < 3:
        for child in draw(st.lists(elements(depth + 1), max_size=3)):
            child.tail = draw(texts) or None
            el.append(child)
    return el


def _canonical(el: etree._Element) -> bytes:
    return etree.tostring(el, method="c14n")


def _feed_in_pieces(data: bytes, cuts: list[int], limit: int = LIMIT) -> list[bytes]:
    reader = XmlReader(expected_namespace="jabber:client", max_stanza_size=limit)
    out: list[bytes] = []
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for start, end in itertools.pairwise(points):
        out.extend(_canonical(el) for el in reader.feed(data[start:end]))
        assert reader.pending <= limit + 1
    return out


@SETTINGS
@given(
    stanzas=st.lists(elements(), min_size=1, max_size=4),
    gaps=st.lists(whitespace, min_size=5, max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_any_cutting_gives_the_same_stanzas(
    stanzas: list[etree._Element], gaps: list[str], cuts: list[int]
) -> None:
    body = b"".join(
        gaps[i % len(gaps)].encode() + etree.tostring(el) for i, el in enumerate(stanzas)
    )
    data = HEADER + body + b" </stream:stream>"
    whole = _feed_in_pieces(data, [], limit=1 << 20)
    assert whole == [_canonical(etree.fromstring(etree.tostring(el))) for el in stanzas]
    assert _feed_in_pieces(data, cuts, limit=1 << 20) == whole
    assert _feed_in_pieces(data, list(range(len(data))), limit=1 << 20) == whole


@SETTINGS
@given(junk=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 5000), max_size=8))
@example(junk=b"<a></", cuts=[4])
@example(junk=b"<a><![CDATA[</b></c>]]></a>", cuts=[7, 12])
@example(junk=b"<a x='>'/>  <b/>", cuts=[5])
@example(junk=b"<message a='<<'>", cuts=[])  # a segment cut before its last '<' (IndexError)
def test_arbitrary_bytes_give_only_stream_errors(junk: bytes, cuts: list[int]) -> None:
    with contextlib.suppress(StreamError):
        _feed_in_pieces(HEADER + junk, cuts)


@SETTINGS
@given(
    prefix=st.sampled_from([b"<message ", b"<message to='", b"<m", b"<message>", b"", b"<a/>x"]),
    filler=st.sampled_from([b" ", b"a", b"\n\t", b" xmlns:p='u'", b"<b>", b"&amp;"]),
    cuts=st.lists(st.integers(0, 50_000), max_size=8),
)
@example(prefix=b"<a/>x", filler=b" ", cuts=[136])  # text after a stanza, in its piece
def test_unfinished_input_stops_at_the_limit(prefix: bytes, filler: bytes, cuts: list[int]) -> None:
    data = HEADER + prefix + filler * (3 * LIMIT // len(filler) + 1)
    try:
        _feed_in_pieces(data, cuts)
    except StreamError as err:
        assert err.condition in ("policy-violation", "not-well-formed")
    else:
        assert prefix == b"" and filler.strip() == b"", "held more than the limit"


@SETTINGS
@given(sizes=st.lists(st.integers(1, 3 * FEED_SLICE), min_size=1, max_size=6))
def test_keepalives_hold_nothing(sizes: list[int]) -> None:
    reader = XmlReader(expected_namespace="jabber:client", max_stanza_size=LIMIT)
    reader.feed(HEADER)
    for size in sizes:
        assert reader.feed(b" \n\t\r"[size % 4 :] * size) == []
        assert reader.pending == 0
        assert [el.tag for el in reader.feed(b"<presence/>")] == ["presence"]
        assert reader.pending <= len(b"<presence/>")


def test_a_stanza_of_exactly_the_limit_is_accepted() -> None:
    reader = XmlReader(expected_namespace="jabber:client", max_stanza_size=LIMIT)
    reader.feed(HEADER)
    shell = b"<message><body></body></message>"
    stanza = b"<message><body>" + b"x" * (LIMIT - len(shell)) + b"</body></message>"
    assert len(stanza) == LIMIT
    assert len(reader.feed(stanza)) == 1
    try:
        reader.feed(stanza[:-1] + b" >")
    except StreamError as err:
        assert err.condition == "policy-violation"
    else:
        raise AssertionError("a stanza one byte over the limit was accepted")


def test_nesting_past_the_limit_is_a_policy_violation() -> None:
    reader = XmlReader(expected_namespace="jabber:client", max_stanza_size=1 << 20, max_depth=8)
    reader.feed(HEADER)
    assert len(reader.feed(b"<a>" * 8 + b"</a>" * 8)) == 1
    try:
        reader.feed(b"<a>" * 9)
    except StreamError as err:
        assert err.condition == "policy-violation"
    else:
        raise AssertionError("nesting of 9 accepted with max_depth=8")


def _sized_message(size: int, attr: bytes = b"") -> bytes:
    shell = b"<message" + attr + b"><body></body></message>"
    return b"<message" + attr + b"><body>" + b"x" * (size - len(shell)) + b"</body></message>"


@SETTINGS
@given(
    before=st.lists(st.sampled_from([b"<presence/>", b"<a x='>'/>", b'<iq><q y="a>b"/></iq>'])),
    after=st.lists(st.sampled_from([b"<presence/>", b"<r/>", b" "]), max_size=3),
    over=st.booleans(),
    cuts=st.lists(st.integers(0, 3 * LIMIT), max_size=4),
)
@example(before=[b"<presence/>"] * 3, after=[], over=False, cuts=[])
@example(before=[b"<presence/>"] * 3, after=[], over=True, cuts=[])
@example(before=[], after=[b"<r/>"], over=False, cuts=[139, 4230])  # '</message' + '><r/>'
@example(before=[b"<a x='>'/>"], after=[], over=False, cuts=[136])  # '<' + "a x='>'/>..."
def test_the_limit_is_exact_whatever_shares_the_read(
    before: list[bytes], after: list[bytes], over: bool, cuts: list[int]
) -> None:
    """Reads holding several stanzas go to the parser whole (the fast path); the bytes
    of a stanza left unfinished at the end of such a read are still counted exactly: a
    stanza of exactly the limit is accepted, one byte more refused, whatever came
    before it in the same read and wherever the reads are cut: inside an end tag, or
    inside a start tag whose quoted value holds a '>' (which serialisers escape, but
    a peer need not)."""
    big = _sized_message(LIMIT + over, b" to='a>b'")
    data = HEADER + b"".join(before) + big + b"".join(after)
    try:
        out = _feed_in_pieces(data, cuts)
    except StreamError as err:
        assert over and err.condition == "policy-violation"
    else:
        assert not over, "a stanza one byte over the limit was accepted"
        expected = len(before) + 1 + sum(1 for piece in after if piece.strip())
        assert len(out) == expected


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(b"</message", id="end tag cut after its name"),
        pytest.param(b"</mess", id="end tag cut inside its name"),
        pytest.param(b"<message to='a>", id="start tag cut after a quoted '>'"),
        pytest.param(b"<message to='a", id="start tag cut inside a quoted value"),
    ],
)
def test_a_stanza_of_the_limit_cut_in_a_tag_is_accepted_with_what_follows(cut: bytes) -> None:
    """Two reads cut one tag of a stanza of exactly the limit, and the second read
    holds the next stanza too: both come out (before, the end tag's second half and
    the next stanza were counted towards the first stanza: policy-violation)."""
    reader = XmlReader(expected_namespace="jabber:client", max_stanza_size=LIMIT)
    reader.feed(HEADER)
    stanza = _sized_message(LIMIT, b" to='a>b'")
    at = stanza.rfind(cut) + len(cut) if cut.startswith(b"</") else stanza.find(cut) + len(cut)
    first = reader.feed(stanza[:at])
    second = reader.feed(stanza[at:] + b"<r/>")
    assert [el.tag for el in first + second] == ["message", "r"]
    assert reader.pending == 0


def test_a_read_ending_inside_a_tag_counts_that_tag() -> None:
    """A read that ends on a '>' inside an attribute value (no start event yet) leaves
    the half tag counted towards the limit, so repeating it cannot grow unnoticed."""
    reader = XmlReader(expected_namespace="jabber:client", max_stanza_size=LIMIT)
    reader.feed(HEADER)
    assert [el.tag for el in reader.feed(b"<presence/><message to='a>")] == ["presence"]
    assert reader.pending == len(b"<message to='a>")
    try:
        for _ in range(LIMIT):
            reader.feed(b"b>")
    except StreamError as err:
        assert err.condition == "policy-violation"
    else:
        raise AssertionError("an endless attribute value was held past the limit")


def _reader() -> XmlReader:
    reader = XmlReader(expected_namespace="jabber:client", max_stanza_size=1 << 20)
    reader.feed(HEADER)
    return reader


@pytest.mark.parametrize("drip", [False, True], ids=["one read", "a byte per read"])
def test_a_tag_of_max_tag_is_read_and_one_byte_more_refused(drip: bool) -> None:
    """No tag reaches libxml2 in parts (it reparses an unfinished start tag at every feed
    that brings a '>'): a tag of up to MAX_TAG bytes waits whole, a longer one is a
    policy-violation, whether it comes in one read or a byte at a time."""

    def tag(size: int) -> bytes:
        head = b"<message to='"
        return head + b">" * (size - len(head) - 2) + b"'>"

    for size, accepted in ((MAX_TAG, True), (MAX_TAG + 1, False)):
        reader = _reader()
        data = tag(size) + b"</message>"
        try:
            if drip:
                out = [el for i in range(len(data)) for el in reader.feed(data[i : i + 1])]
            else:
                out = reader.feed(data)
        except StreamError as err:
            assert not accepted, f"a tag of {size} bytes was refused"
            assert err.condition == "policy-violation"
        else:
            assert accepted, f"a tag of {size} bytes was accepted"
            assert [el.get("to") for el in out] == [">" * (size - 15)]


def test_an_element_of_max_attributes_is_read_and_one_more_refused() -> None:
    for count, accepted in ((MAX_ATTRIBUTES, True), (MAX_ATTRIBUTES + 1, False)):
        stanza = b"<message" + b"".join(b" a%d='1'" % i for i in range(count)) + b"/>"
        reader = _reader()
        try:
            out = reader.feed(stanza)
        except StreamError as err:
            assert not accepted and err.condition == "policy-violation"
        else:
            assert accepted and len(out[0].attrib) == count
