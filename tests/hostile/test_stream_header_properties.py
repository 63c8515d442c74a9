"""Property tests of the stream header's two shortcuts (issue 16): where the header
ends is found with one regular expression, and a plain header is read without lxml.
Each must say what the slow, obvious way says: the end found byte by byte (kept here
as the reference), the header read by lxml (:func:`parsed_header`, still what reads
every header the shortcut passes on)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NoReturn

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from xmppd import ns
from xmppd.errors import StreamError
from xmppd.stream.xmlreader import _find_header_end, parsed_header, plain_header

EXAMPLES = int(os.environ.get("XMPPD_FUZZ_EXAMPLES", "300"))
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
CLIENT = "jabber:client"
STREAMS = ns.STREAMS


def reference_end(buf: bytes, limit: int) -> int | None:
    """The header's end found byte by byte (what the reader did before the shortcut);
    ``buf`` starts with the header's ``<``."""
    n = len(buf)
    if n < 2:
        if n >= limit:
            _raise_too_long()
        return None
    if buf.startswith((b"<!", b"<?")):
        raise StreamError("restricted-xml")
    quote = 0
    for i in range(1, n):
        c = buf[i]
        if quote:
            if c == quote:
                quote = 0
        elif c in (0x22, 0x27):
            quote = c
        elif c == 0x3C:
            raise StreamError("not-well-formed")
        elif c == 0x3E:
            if buf[i - 1] == 0x2F:
                raise StreamError("not-well-formed", "empty stream")
            return i + 1
        if i > limit:
            _raise_too_long()
    if n > limit:
        _raise_too_long()
    return None


def _raise_too_long() -> NoReturn:
    raise StreamError("policy-violation", "stream header too long")


def _outcome(
    find: Callable[[bytes, int], int | None], buf: bytes, limit: int
) -> tuple[str, object]:
    try:
        return "end", find(buf, limit)
    except StreamError as exc:
        return "error", exc.condition


header_bytes = st.lists(
    st.sampled_from([b"a", b" ", b"'", b'"', b"<", b">", b"/", b"=", b"x", b"\n"]),
    max_size=60,
).map(b"".join)


@SETTINGS
@given(body=header_bytes, limit=st.integers(min_value=1, max_value=70))
@example(body=b"stream:stream a='<>' b=\"'\">", limit=64)
@example(body=b"s a='x/'/>", limit=64)
@example(body=b"s a='unclosed", limit=5)
@example(body=b"ssssssss>", limit=3)
def test_the_end_is_where_the_byte_by_byte_scan_finds_it(body: bytes, limit: int) -> None:
    buf = b"<" + body
    mine = _outcome(_find_header_end, buf, limit)
    reference = _outcome(reference_end, buf, limit)
    if reference[0] == "error" and reference[1] == "restricted-xml":
        assert mine[0] == "error"
    else:
        assert mine == reference


names = st.sampled_from(
    ["to", "from", "version", "id", "xml:lang", "xmlns", "xmlns:stream", "xmlns:db", "a:b", "x"]
)
values = st.one_of(
    st.sampled_from([CLIENT, STREAMS, "localhost", "1.0", "en", "jabber:server", ""]),
    st.text(
        alphabet=st.sampled_from(list("ab<>&'\"\t\n é;#x")) | st.characters(codec="utf-8"),
        max_size=8,
    ),
)
spaces = st.sampled_from([" ", "  ", "\n", "\t", " \r\n "])


@st.composite
def headers(draw: st.DrawFn) -> bytes:
    tag = draw(st.sampled_from(["stream:stream"] * 4 + ["stream", "s:stream"]))
    parts = ["<" + tag]
    attributes = [(name, draw(values)) for name in draw(st.lists(names, max_size=5))]
    # Mostly with the two namespaces a client declares, so that many pass the shortcut.
    if draw(st.integers(0, 9)):
        attributes.append(("xmlns", CLIENT))
    if draw(st.integers(0, 9)):
        attributes.append(("xmlns:stream", STREAMS))
    for name, value in draw(st.permutations(attributes)):
        quote = draw(st.sampled_from(["'", '"']))
        parts.append(draw(spaces) + name + draw(st.sampled_from(["=", " = "])))
        parts.append(quote + value + quote)
    parts.append(draw(st.sampled_from([">", " >", "\n>"])))
    return "".join(parts).encode("utf-8", "surrogatepass")


@SETTINGS
@given(head=headers())
@example(
    head=b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
    b" to='localhost' version='1.0' xml:lang='en'>"
)
@example(
    head=b"<stream:stream xmlns=\"jabber:client\" xmlns:stream='http://etherx.jabber.org/streams'"
    b" to='a&amp;b'>"
)
def test_a_plain_header_reads_as_lxml_reads_it(head: bytes) -> None:
    quick = plain_header(head, 0, CLIENT)
    try:
        slow = parsed_header(head, 0, CLIENT)
    except StreamError:
        assert quick is None, head
        return
    if quick is not None:
        assert (quick, {"stream": STREAMS}) == slow, head


def test_the_headers_clients_send_take_the_shortcut() -> None:
    for head in (
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
        b" to='localhost' version='1.0' xml:lang='en'>",
        b'<stream:stream to="localhost" version="1.0" xmlns="jabber:client"'
        b' xmlns:stream="http://etherx.jabber.org/streams">',
        b"<stream:stream\n  from='juliet@im.example.com'\n  to='im.example.com'\n"
        b"  version='1.0'\n  xml:lang='en'\n  xmlns='jabber:client'\n"
        b"  xmlns:stream='http://etherx.jabber.org/streams'>",
    ):
        quick = plain_header(head, 0, CLIENT)
        assert quick is not None, head
        assert (quick, {"stream": STREAMS}) == parsed_header(head, 0, CLIENT)
