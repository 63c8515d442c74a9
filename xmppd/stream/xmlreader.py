"""Incremental, restricted XML reader for one XMPP stream (RFC 6120 §11).

The stream header is located by a small byte scanner and parsed on its own;
stanzas are then read by one lxml pull parser fed a synthetic root that
declares the header's prefixes but *no default namespace*. So stanzas come out
stream-neutral (``message``, not ``{jabber:client}message``) without any
renaming, and detaching them from the root leaves no stray declarations.

Refused, as RFC 6120 §11 requires: DOCTYPE and entity declarations, comments and
processing instructions (``restricted-xml``); malformed XML
(``not-well-formed``); encodings other than UTF-8 (``unsupported-encoding``);
a stanza larger than the configured limit (``policy-violation``), nesting deeper
than ``max_depth`` (``policy-violation``), a header longer than ``max_header_size``.

Every byte is counted before lxml sees it (issue 15): the bytes of the stanza being
read, in whatever parser state (inside a tag name, attribute values, namespace
declarations, text), count against ``max_stanza_size``; whitespace between stanzas
(keepalives) is skipped without reaching the parser, so it is accepted indefinitely
at no memory cost. A stream error releases the parser and everything it held.

Two paths feed the parser. Between stanzas, a read (up to one slice and no longer than
the limit) that ends at a tag's end and holds no CDATA, comment or processing
instruction goes to lxml in one feed, whatever number of stanzas it holds (the common
case under load: many small stanzas per read); if it ends inside a stanza, that
stanza's bytes so far are found by tokenising the tags, which is exact there because
every ``<`` starts a tag. Everything else is fed piece by piece, each piece ending
where the current top-level element may end (:meth:`XmlReader._piece_end`).

Neither path hands lxml part of a tag: a tag left open at the end of a read waits for
the next read (counted against the limit), and a tag longer than ``MAX_TAG`` is a
``policy-violation``. So the parser's depth is exact at every piece boundary, a stanza
of exactly the limit is accepted however its reads are cut (an end tag split between
two reads, a ``>`` inside a quoted value of a start tag cut in two), and libxml2, which
reparses an unfinished start tag at every feed that brings a ``>``, never sees one.
A tag with more than ``MAX_ATTRIBUTES`` attributes is a ``policy-violation`` too, before
libxml2 parses it (its cost and lxml's grow with the square of an element's attributes).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from copy import deepcopy
from dataclasses import dataclass
from typing import Final, NoReturn, cast

from lxml import etree

from xmppd import ns
from xmppd.errors import StreamError

Element = etree._Element

FEED_SLICE: Final = 16 * 1024
"""Most bytes handed to lxml at once, so an oversized stanza is caught within one slice."""
MAX_DEPTH: Final = 64
"""Deepest element nesting a stanza may have (the stanza itself is depth 1); deeper
gets ``policy-violation``. Real payloads (data forms, Atom entries, Jingle) stay
below 15; libxml2's own cap (256) would only say ``not-well-formed``."""
MAX_TAG: Final = FEED_SLICE
"""Longest tag, from its ``<`` to its ``>`` (a start tag's attributes included); a longer
one is a ``policy-violation``. Real tags stay far below (a long URL in an attribute is a
few KiB). The only markup exempt is what starts with ``<!`` (CDATA, which may be long;
comments and DTDs, which are refused anyway)."""
MAX_ATTRIBUTES: Final = 256
"""Most attributes one tag may have, counted as its ``=`` signs (namespace declarations
and an ``=`` inside a value count too); more is a ``policy-violation``, before libxml2
parses the tag. XMPP elements carry a handful."""
_WHITESPACE: Final = re.compile(rb"[ \t\r\n]*")

_XML_DECL = re.compile(rb"<\?xml(\s[^?]*+)?\?>")
_ENCODING = re.compile(rb"""encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_NAME = re.compile(rb"[A-Za-z_][-A-Za-z0-9_.:]*")
_WS_BYTES: Final = b" \t\r\n"
_STREAM_TAG: Final = f"{{{ns.STREAMS}}}stream"
_STREAM_PREFIX_ONLY: Final = {"stream": ns.STREAMS}
_STREAM_ROOT_ONLY: Final = b'<stream:stream xmlns:stream="' + ns.STREAMS.encode() + b'">'
"""The synthetic root of a header that declares only the ``stream`` prefix."""
_TAG: Final = re.compile(rb"""<(/?)[^\s/>'"<]*+(?:[^>'"/<]++|/(?!>)|'[^'<]*+'|"[^"<]*+")*+(/?)>""")
"""One tag, in a chunk where every ``<`` starts a tag: group 1 marks an end tag, group 2
an empty-element tag. Quoted attribute values may hold ``>`` (not ``<``, which XML
forbids there). Possessive throughout and stopping at the next ``<``, so a tag that never
ends costs one pass over itself, not one per byte of its name (a lazy form took 0.5 s on
a 4 KB unfinished tag) nor one per ``<`` to the end of the read (0.6 s on 16 KB)."""
_COMPLETE_TAG: Final = re.compile(
    rb"</[^\s>]+\s*>|<[^\s/>'\"]+(?:\s+[^\s='\"/>]+\s*=\s*(?:'[^']*'|\"[^\"]*\"))*\s*/>"
)
"""A whole end tag or empty-element tag, nothing before or after it."""
_PLAIN_VALUE: Final = rb"""(?:'([ !#-%(-;=?-~"]*)'|"([ !#-%'-;=?-~]*)")"""
"""Printable ASCII but ``<``, ``&`` and the quote (``'`` is 0x27, ``"`` 0x22)."""
_PLAIN_NAME: Final = rb"[A-Za-z_][A-Za-z0-9_.-]*(?::[A-Za-z_][A-Za-z0-9_.-]*)?"
_PLAIN_ATTRIBUTE: Final = re.compile(
    rb"[ \t\r\n]+(" + _PLAIN_NAME + rb")[ \t\r\n]*=[ \t\r\n]*" + _PLAIN_VALUE
)
_PLAIN_HEADER: Final = re.compile(
    rb"<stream:stream((?:" + _PLAIN_ATTRIBUTE.pattern + rb")*)[ \t\r\n]*>"
)
"""A stream header with plain attributes only (see :func:`plain_header`)."""
_STREAMS_BYTES: Final = ns.STREAMS.encode()
_TAG_REST: Final = re.compile(rb"""[^>'"]*+(?:(?:'[^']*+'|"[^"]*+")[^>'"]*+)*+>""")
"""What follows a tag's ``<`` up to its end: quoted values may hold ``>``."""
_HEADER_BODY: Final = re.compile(rb"""(?:[^<>'"]++|'[^']*+'|"[^"]*+")*+""")
"""What follows a header's ``<`` up to its end: quoted values may hold ``<`` and ``>``."""


@dataclass(frozen=True, slots=True)
class StreamHeader:
    """The peer's ``<stream:stream>`` opening tag."""

    to: str | None
    from_: str | None
    version: str | None
    id: str | None
    lang: str | None
    content_namespace: str | None


_HEADER_PARSER: Final = etree.XMLParser(
    resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False
)
"""Parses stream headers (each closed artificially); shared, as the loop is single-threaded."""


class XmlReader:
    """Turns the bytes of one stream into a header, stanzas and the closing tag.

    ``feed()`` returns the stanzas completed by the data (detached elements);
    ``header`` is set once the opening tag has been read; ``closed`` once the
    peer sent ``</stream:stream>``. Call ``reset()`` at each stream restart.
    """

    __slots__ = (
        "_at_boundary",
        "_buffer",
        "_carry",
        "_carry_quote",
        "_depth",
        "_parser",
        "_pending",
        "_spare",
        "_synthetic_root",
        "closed",
        "expected_namespace",
        "header",
        "max_depth",
        "max_header_size",
        "max_stanza_size",
    )
    _carry: bytes
    _synthetic_root: bytes

    def __init__(
        self,
        *,
        expected_namespace: str,
        max_stanza_size: int,
        max_header_size: int = 8192,
        max_depth: int = MAX_DEPTH,
    ) -> None:
        self.expected_namespace = expected_namespace
        self.max_stanza_size = max_stanza_size
        self.max_header_size = max_header_size
        self.max_depth = max_depth
        self.reset()

    def reset(self) -> None:
        """Forget everything read so far (stream restart after STARTTLS or SASL).

        A parser that stands between stanzas is kept for the next stream, whose
        header usually declares the same prefixes: its stanzas then continue as
        children of the same synthetic root (a new parser is a tenth of what a
        stream header costs, and one dropped is garbage for the cycle collector)."""
        parser = getattr(self, "_parser", None)
        self._spare: tuple[etree.XMLPullParser, bytes] | None = (
            (parser, self._synthetic_root)
            if parser is not None and self.is_between_stanzas and not self._carry
            else None
        )
        self.header: StreamHeader | None = None
        self.closed = False
        self._buffer = b""
        self._carry = b""
        self._carry_quote = 0
        self._parser: etree.XMLPullParser | None = None
        self._synthetic_root = b""
        self._at_boundary = True
        self._depth = 0
        self._pending = 0

    @property
    def pending(self) -> int:
        """Bytes of the stanza being read (or of the unfinished header) held so far:
        what the limits are checked against."""
        return len(self._buffer) if self.header is None else self._pending + len(self._carry)

    @property
    def is_between_stanzas(self) -> bool:
        """Everything fed so far is complete: no element or tag is half-read (nor a
        tag waiting for the next read)."""
        return self._depth == 0 and self._at_boundary and not self._carry

    def release_if_idle(self) -> bool:
        """Free the pull parser (several KB of libxml2 buffers) between stanzas.

        Only when nothing is half-read; the next ``feed`` builds a fresh parser. Called
        for idle sessions, so an idle connection costs little more than its socket.
        """
        if self._spare is not None:  # waiting for the header of a restarted stream
            _end(*self._spare)
            self._spare = None
            return True
        parser = self._parser
        if parser is None:
            return False
        if self.closed:  # the peer's </stream:stream> ended the document: close it
            self._parser = None
            _close(parser)
            return True
        if self._depth != 0 or not self._at_boundary:
            return False
        _end(parser, self._synthetic_root)
        self._parser = None
        return True

    def release_at_end(self) -> bool:
        """The stream ended: free the parsers that can be ended cleanly (between
        stanzas, or after the peer's ``</stream:stream>``); ``True`` if one is left in
        lxml's reference cycle (it was mid-element: only a full collection frees it)."""
        while self.release_if_idle():
            pass
        return self._parser is not None

    def _release(self) -> None:
        """Drop everything held (after a stream error): the parser and its input."""
        self._parser = self._spare = None
        self._buffer = self._carry = b""
        self._pending = 0

    def _new_parser(self) -> etree.XMLPullParser:
        # resolve_entities stays at its default (True) on purpose: no DTD can reach this
        # parser (the header scanner refuses '<!' before the root, and the synthetic root
        # has none), so only the five predefined entities exist, and with
        # resolve_entities=False libxml2 silently swallows an undefined '&name;' and
        # loses track of element ends instead of reporting not-well-formed.
        parser = etree.XMLPullParser(
            events=("start", "end", "comment", "pi"),
            no_network=True,
            huge_tree=False,
            load_dtd=False,
        )
        parser.feed(self._synthetic_root)
        parser.read_events().__next__()  # the synthetic root's own start event
        return parser

    def feed(self, data: bytes) -> list[Element]:
        """Consume ``data``; returns completed stanzas. Raises :class:`StreamError`
        (and releases what was held) on malformed or oversized input."""
        try:
            if (
                self._at_boundary
                and self._parser is not None
                and not self._carry
                and not self.closed
                and 0 < (n := len(data)) <= FEED_SLICE
                and n <= self.max_stanza_size
                and data[0] == 0x3C  # '<'
                and data[n - 1] == 0x3E  # '>'
                # find(), not 'in': 'bytes in bytes' first tries the operand as an
                # integer and raises (and clears) a TypeError, several times the scan.
                and data.find(b"<!") < 0
                and data.find(b"<?") < 0
                # The read ends with a whole end or empty-element tag (one test, which
                # also says whether the stream is between stanzas after it), or at
                # least not inside a tag ('>' may be in a quoted value).
                and ((ends_whole := _ends_with_whole_tag(data, n)) or _open_tag(data, 0, n) < 0)
            ):
                # The common case under load, checked first: between stanzas, a read
                # that starts with a tag, ends with one and may go to the parser whole
                # (what :meth:`_whole_segment_end` admits, for a segment that is the read).
                stanzas: list[Element] = []
                if not self._feed_piece(data, stanzas):
                    if self._depth == 0 and ends_whole:
                        # It ended with a whole tag and every element is closed.
                        self._at_boundary = True
                        self._pending = 0
                    else:
                        self._settle(data)
                return stanzas
            return self._feed(data)
        except StreamError:
            self._release()
            raise

    def _feed(self, data: bytes) -> list[Element]:
        if self.closed:
            return []
        if self.header is None:
            data = self._read_header(data)
            if self._parser is None:
                return []
        if self._carry:
            # A tag waits for its end: only the new bytes are scanned for it (from the
            # quote the carried part ended in), so a tag dripped a byte per read costs
            # a pass over each byte, not over the whole tag at every read.
            end, quote = _scan_tag(data, 0, self._carry_quote)
            if end < 0:
                self._carry += data
                self._carry_quote = quote
                self._check_carry()
                return []
            data, self._carry = self._carry + data, b""
        stanzas: list[Element] = []
        pos, n = 0, len(data)
        while pos < n:
            if self._at_boundary:
                # Between stanzas: whitespace is a keepalive (RFC 6120 §4.6.1), skipped
                # here so that it never reaches (nor grows) the parser.
                pos = _skip_whitespace(data, pos)
                if pos == n:
                    break
                whole = self._whole_segment_end(data, pos)
                if whole:
                    # The fast path: every stanza of this segment in one parser feed.
                    if self._feed_whole(data[pos:whole], stanzas):
                        break  # the peer closed its stream
                    pos = whole
                    continue
                self._at_boundary = False
                self._pending = 0
            end = piece_end = self._piece_end(data, pos)
            if end == n:
                # A tag the read leaves open waits for the next read: the parser never
                # stops inside a tag, so the depth the piece boundaries rely on is
                # exact (an end tag cut in two would otherwise close the stanza in
                # the next read's first piece, with the stanzas that follow it).
                lt = _open_tag(data, pos, n)
                if lt >= 0:
                    self._carry = data[lt:]
                    self._check_carry()  # before the piece goes to the parser
                    self._carry_quote = _scan_tag(data, lt + 1, 0)[1]
                    piece_end = lt
            piece = data[pos:piece_end]
            pos = end
            if not piece:
                continue
            # Counted before the parser sees it: every byte of a stanza, whatever state
            # the parser is in (tag name, attributes, namespace declarations, text).
            self._pending += len(piece)
            past_limit = self._pending > self.max_stanza_size
            if past_limit and (
                self._pending - len(piece) + len(piece.rstrip(b" \t\r\n")) > self.max_stanza_size
            ):
                raise StreamError("policy-violation", "stanza too large")
            if self._parser is None:
                self._parser = self._new_parser()
            if self._feed_piece(piece, stanzas):
                break  # the peer closed its stream
            if past_limit and not self._at_boundary:
                # Only whitespace went past the limit; that is allowed when it follows
                # the stanza's end (a keepalive), not inside a stanza or a tag.
                raise StreamError("policy-violation", "stanza too large")
            if self._at_boundary:
                # The stanza ended in the piece's last tag (see _piece_end); what follows
                # that tag's '>' is character data at stream level. Whitespace: we are
                # between stanzas. Anything else counts towards the next stanza.
                if piece[-1] == 0x3E:  # '>': nothing follows
                    self._pending = 0
                else:
                    rest = piece[piece.find(b">", piece.rfind(b"<")) + 1 :]
                    if rest.strip(b" \t\r\n"):
                        self._at_boundary = False
                        self._pending = len(rest)
                        if self._pending > self.max_stanza_size:  # not a keepalive
                            raise StreamError("policy-violation", "stanza too large")
                    else:
                        self._pending = 0
        if self._carry:
            self._check_carry()
        return stanzas

    def _check_carry(self) -> None:
        """The tag waiting for the next read: no longer than ``MAX_TAG``, and part of the
        stanza being read, which it must not take past the limit."""
        if len(self._carry) > MAX_TAG:
            raise StreamError("policy-violation", "tag too long")
        if self._pending + len(self._carry) > self.max_stanza_size:
            raise StreamError("policy-violation", "stanza too large")

    def _whole_segment_end(self, data: bytes, pos: int) -> int:
        """End of a segment of ``data`` from ``pos`` (between stanzas) that may go to
        the parser in one feed, or 0 when none may (then it is read piece by piece).

        A segment may when no stanza in it can pass the limit (it is no longer than the
        limit nor than one slice), when it ends at the end of a tag (a ``>``), and when
        it has no markup that may hide a ``<`` (CDATA, comments, processing
        instructions, DTDs): with none, every ``<`` starts a tag, which is what
        :meth:`_settle` relies on to count the bytes of a stanza left unfinished.
        """
        n = len(data)
        limit = min(n, pos + FEED_SLICE, pos + self.max_stanza_size)
        if limit == n and data[n - 1] == 0x3E:
            end = gt_end = n
        elif limit == n and data[n - 1] in _WS_BYTES:
            gt_end = len(data.rstrip(b" \t\r\n"))  # just after the last '>'
            if gt_end <= pos or data[gt_end - 1] != 0x3E:
                return 0
            end = n
        else:
            end = gt_end = data.rfind(b">", pos, limit) + 1
            if end <= pos:
                return 0
        if data.find(b"<!", pos, end) >= 0 or data.find(b"<?", pos, end) >= 0:
            return 0
        if (lt := _open_tag(data, pos, gt_end)) >= 0:
            # The last '>' is inside a quoted value: the tag it is in goes on after
            # the segment, which stops before it (the slow path keeps it for later).
            return lt if lt > pos else 0
        return end

    def _feed_whole(self, data: bytes, stanzas: list[Element]) -> bool:
        """Feed a segment that :meth:`_whole_segment_end` admitted, then work out where
        the stream stands: between stanzas, or inside one whose bytes so far are known.
        ``True`` when the segment held the end of the stream."""
        if self._parser is None:
            self._parser = self._new_parser()
        if self._feed_piece(data, stanzas):
            return True
        self._locate_end(data, len(data.rstrip(b" \t\r\n")))
        return False

    def _locate_end(self, data: bytes, end: int) -> None:
        """After a whole-segment feed (``data[:end]`` ends with ``>``, whitespace may
        follow): between stanzas, or inside one whose bytes so far are counted."""
        if self._depth == 0 and _ends_with_whole_tag(data, end):
            # The chunk ends with a whole tag and every element is closed.
            self._at_boundary = True
            self._pending = 0
        else:
            self._settle(data)

    def _settle(self, data: bytes) -> None:
        """After a whole-chunk feed that ended inside a stanza (or inside a tag): count
        the bytes of that stanza, from the end of the last top-level element in ``data``
        (found by tokenising the tags, which is exact for a chunk the parser accepted
        and that has no CDATA, comment or processing instruction)."""
        depth = 0
        last_end = 0
        for tag in _TAG.finditer(data):
            if tag.group(1):  # an end tag
                depth -= 1
                if depth == 0:
                    last_end = tag.end()
            elif tag.group(2):  # an empty-element tag
                if depth == 0:
                    last_end = tag.end()
            else:
                depth += 1
        rest = data[last_end:].lstrip(b" \t\r\n")
        self._pending = len(rest)
        self._at_boundary = self._depth == 0 and not rest

    def _piece_end(self, data: bytes, pos: int) -> int:
        """Where the next piece handed to the parser ends: at most FEED_SLICE bytes,
        and never past the end of the current top-level element. Pieces end just before
        a ``<``; at depth ``d`` the top-level element cannot close before ``d`` more
        end tags (``</``, which only starts an end tag, or CDATA), so the piece runs to
        the ``<`` after the d-th ``</``. At depth 0 the top-level start tag is read
        whole (quoted values may hold ``>``): one ending in ``/>`` is the element, any
        other needs an end tag too. A top-level element can thus only finish in the
        last tag of a piece: when it does, what follows it in the piece is character
        data, and the next piece starts exactly between stanzas.

        This relies on the parser never having stopped inside a tag, which
        :meth:`_feed` sees to by keeping a tag open at the end of a read for the
        next one, and this method by ending a piece before a tag the slice cuts (a
        tag longer than a slice is refused: ``MAX_TAG``)."""
        limit = min(len(data), pos + FEED_SLICE)
        closes = self._depth
        if closes == 0:
            if data[pos] != 0x3C:
                # Character data at stream level (no tag is ever fed in parts): the
                # next '<' starts the next tag.
                nxt = data.find(b"<", pos + 1, limit)
                return limit if nxt < 0 else nxt
            tag = _TAG.match(data, pos, limit)
            if tag is None:
                return _before_open_tag(data, pos, limit)
            if tag.group(1) or tag.group(2):  # an end tag (the stream's) or '<x/>'
                nxt = data.find(b"<", tag.end(), limit)
                return limit if nxt < 0 else nxt
            closes = 1
            at = tag.end()
        else:
            at = pos
        for _ in range(closes):
            found = data.find(b"</", at, limit)
            if found < 0:
                return _before_open_tag(data, pos, limit)
            at = found + 2
        nxt = data.find(b"<", at, limit)
        return _before_open_tag(data, pos, limit) if nxt < 0 else nxt

    def _feed_piece(self, piece: bytes, stanzas: list[Element]) -> bool:
        """Parse one piece; ``True`` when it held the end of the stream."""
        parser = self._parser
        assert parser is not None
        if piece.count(b"=") > MAX_ATTRIBUTES and _crowded_tag(piece):
            # Refused before libxml2 parses it (the cost is in the parse itself).
            raise StreamError("policy-violation", "too many attributes")
        try:
            parser.feed(piece)
            events = parser.read_events()
        except etree.XMLSyntaxError:
            for event, _ in parser.read_events():  # what came before the error
                if event == "start":
                    self._depth += 1
            if self._depth > self.max_depth:
                raise StreamError("policy-violation", "elements nested too deeply") from None
            if b"<!" in piece and (b"<!DOCTYPE" in piece or b"<!ENTITY" in piece):
                raise StreamError("restricted-xml", "DTDs are not allowed") from None
            raise StreamError("not-well-formed") from None
        depth = self._depth
        max_depth = self.max_depth
        try:
            for kind, item in cast("Iterator[tuple[str, Element]]", events):
                if kind == "start":
                    depth += 1
                    self._at_boundary = False
                    if depth > max_depth:
                        raise StreamError("policy-violation", "elements nested too deeply")
                elif kind == "end":
                    depth -= 1
                    if depth == 0:
                        el = item
                        root = el.getparent()
                        if root is not None:
                            root.remove(el)
                            root.text = None
                        el.tail = None
                        if el.tag[0] == "{":
                            el = self._neutral(el)
                        stanzas.append(el)
                        self._at_boundary = True
                    elif depth < 0:
                        self.closed = True
                        return True
                else:  # comment or processing instruction
                    raise StreamError("restricted-xml", "comments and processing instructions")
        finally:
            self._depth = depth
        return False

    def _neutral(self, el: Element) -> Element:
        """A stanza that spelled out the content namespace (``<iq xmlns='jabber:client'>``,
        as RFC 7395 framing does) rebuilt stream-neutral, like every other stanza."""
        prefix = f"{{{self.expected_namespace}}}"
        if not el.tag.startswith(prefix):
            return el  # a stream-level element in its own namespace (SASL, STARTTLS...)
        neutral = etree.Element(el.tag[len(prefix) :], _attrs(el))
        neutral.text = el.text
        for child in el:
            if isinstance(child.tag, str) and child.tag.startswith(prefix):
                copy = etree.SubElement(neutral, child.tag[len(prefix) :], _attrs(child))
                copy.text, copy.tail = child.text, child.tail
                for grandchild in child:
                    copy.append(deepcopy(grandchild))
            else:
                neutral.append(deepcopy(child))
        return neutral

    def _read_header(self, data: bytes) -> bytes:
        buf = self._buffer + data
        # The header ends at a '>': a read that brings none cannot end it, and is not
        # scanned again (but the first one is, for the errors its first bytes show).
        end = (
            _find_header_end(buf, self.max_header_size)
            if not self._buffer or data.find(b">") >= 0
            else None
        )
        if end is None:
            if len(buf) > self.max_header_size:  # whitespace before it counts too
                _too_long()
            self._buffer = buf
            return b""
        self._buffer = b""
        head, rest = buf[:end], buf[end:]
        self._parse_header(head)
        return rest

    def _parse_header(self, head: bytes) -> None:
        decl = _XML_DECL.match(head.lstrip())
        if decl is not None:
            enc = _ENCODING.search(decl.group(0))
            if enc is not None and enc.group(1).lower() not in (b"utf-8", b"utf8"):
                raise StreamError("unsupported-encoding")
        open_at = head.rfind(b"<")
        header = plain_header(head, open_at, self.expected_namespace)
        if header is not None:
            self.header, prefixes = header, _STREAM_PREFIX_ONLY
        else:
            self.header, prefixes = parsed_header(head, open_at, self.expected_namespace)
        if prefixes == _STREAM_PREFIX_ONLY:
            self._synthetic_root = _STREAM_ROOT_ONLY
        else:
            synthetic = etree.tostring(etree.Element(_STREAM_TAG, nsmap=prefixes))
            self._synthetic_root = synthetic[:-2] + b">"
        spare, self._spare = self._spare, None
        if spare is not None and spare[1] == self._synthetic_root:
            self._parser = spare[0]
        else:
            if spare is not None:
                _end(*spare)
            self._parser = self._new_parser()
        self._depth = 0
        self._at_boundary = True
        self._pending = 0


def parsed_header(
    head: bytes, open_at: int, expected_namespace: str
) -> tuple[StreamHeader, dict[str, str]]:
    """The stream header that starts at ``head[open_at]`` read by lxml, and the
    namespace prefixes it declares; :class:`StreamError` when it is not one."""
    name_match = _NAME.match(head, open_at + 1)
    if name_match is None:
        raise StreamError("not-well-formed")
    qname = name_match.group(0)
    try:
        root = etree.fromstring(head + b"</" + qname + b">", _HEADER_PARSER)
    except etree.XMLSyntaxError:
        raise StreamError("not-well-formed") from None
    qn = etree.QName(root)
    if qn.localname != "stream":
        raise StreamError("invalid-namespace", "expected a stream header")
    if qn.namespace != ns.STREAMS:
        raise StreamError("invalid-namespace", "wrong stream namespace")
    if root.prefix is None:
        raise StreamError("bad-namespace-prefix")
    content_ns = root.nsmap.get(None)
    if content_ns != expected_namespace:
        raise StreamError("invalid-namespace", "wrong content namespace")
    header = StreamHeader(
        to=root.get("to"),
        from_=root.get("from"),
        version=root.get("version"),
        id=root.get("id"),
        lang=root.get(f"{{{ns.XML}}}lang"),
        content_namespace=content_ns,
    )
    return header, {p: uri for p, uri in root.nsmap.items() if p is not None}


def plain_header(head: bytes, open_at: int, expected_namespace: str) -> StreamHeader | None:
    """The header every client sends, read without lxml (a parse per stream restart,
    three per login): ``<stream:stream`` with plain attributes (values of printable
    ASCII without an entity, no prefix but ``xmlns:stream`` and ``xml:lang``, none
    twice), the streams and the expected content namespace. ``None`` for anything
    else, which :func:`parsed_header` reads (and refuses, if it must): whatever this
    accepts, that would accept with the same result."""
    tag = _PLAIN_HEADER.fullmatch(head, open_at)
    if tag is None:
        return None
    fields: dict[bytes, bytes] = {}
    for name, single, double in _PLAIN_ATTRIBUTE.findall(tag.group(1)):
        if name in fields:
            return None
        fields[name] = single or double
    if fields.pop(b"xmlns:stream", None) != _STREAMS_BYTES:
        return None
    content = fields.pop(b"xmlns", None)
    if content is None or any(b":" in name and name != b"xml:lang" for name in fields):
        return None
    text = {name: value.decode("ascii") for name, value in fields.items()}  # ASCII only
    content_ns = content.decode("ascii")
    if content_ns != expected_namespace:
        return None
    return StreamHeader(
        to=text.get(b"to"),
        from_=text.get(b"from"),
        version=text.get(b"version"),
        id=text.get(b"id"),
        lang=text.get(b"xml:lang"),
        content_namespace=content_ns,
    )


def _end(parser: etree.XMLPullParser, synthetic_root: bytes) -> None:
    """End a parser that stands between stanzas: its synthetic root closed and its
    events read, nothing keeps it in a reference cycle (dropped mid-document, it would
    wait for the cyclic garbage collector: :mod:`xmppd.heap`)."""
    qname = synthetic_root[1 : synthetic_root.find(b" ")]
    with contextlib.suppress(etree.XMLSyntaxError):
        parser.feed(b"</" + qname + b">")
    _close(parser)


def _close(parser: etree.XMLPullParser) -> None:
    """Close a parser whose document is complete and read its last events: nothing
    keeps it in a reference cycle after."""
    with contextlib.suppress(etree.XMLSyntaxError):
        parser.close()
    for _ in parser.read_events():
        pass


def _crowded_tag(piece: bytes) -> bool:
    """A tag of ``piece`` holds more than ``MAX_ATTRIBUTES`` ``=`` (attributes, namespace
    declarations, and any ``=`` inside their values). Tags reach the parser whole, so
    the tokeniser sees each one entire."""
    return any(tag.group(0).count(b"=") > MAX_ATTRIBUTES for tag in _TAG.finditer(piece))


def _skip_whitespace(buf: bytes, pos: int) -> int:
    whitespace = _WHITESPACE.match(buf, pos)
    assert whitespace is not None  # '*' always matches
    return whitespace.end()


def _find_header_end(buf: bytes, limit: int) -> int | None:
    """Index just past the stream header's closing ``>``; ``None`` if incomplete."""
    n = len(buf)
    # Regular expressions, not byte loops: a peer may send the header a byte at a time,
    # and each read scans the buffer again (8 KiB of whitespace so: 3 s in a byte loop).
    pos = _skip_whitespace(buf, 0)
    if buf.startswith(b"\xef\xbb\xbf", pos):
        pos += 3
    if pos < n and buf[pos] != 0x3C:  # not '<'
        if buf[pos] in (0x00, 0xFE, 0xFF):
            raise StreamError("unsupported-encoding")
        raise StreamError("not-well-formed")
    if buf.startswith(b"<?", pos):
        decl = _XML_DECL.match(buf, pos)
        if decl is None:
            if buf.find(b"?>", pos) >= 0 or len(buf) - pos > limit:
                raise StreamError("restricted-xml", "processing instructions are not allowed")
            return None
        pos = _skip_whitespace(buf, decl.end())
    if n - pos < 2:
        return None if n < limit else _too_long()
    if buf.startswith(b"<!", pos):
        raise StreamError("restricted-xml", "DTDs and comments are not allowed")
    if buf.startswith(b"<?", pos):
        raise StreamError("restricted-xml", "processing instructions are not allowed")
    body = _HEADER_BODY.match(buf, pos + 1)
    assert body is not None  # it matches the empty string
    stop = body.end()  # a '<' or '>' outside quotes, a quote never closed, or the end
    if stop - 1 > limit and stop - 1 > pos:
        _too_long()
    if stop < n:
        c = buf[stop]
        if c == 0x3E:
            if buf[stop - 1] == 0x2F:  # '/>': a stream that closes at once
                raise StreamError("not-well-formed", "empty stream")
            return stop + 1
        if c == 0x3C:
            raise StreamError("not-well-formed")
    if n > limit:
        _too_long()
    return None


def _ends_with_whole_tag(data: bytes, end: int) -> bool:
    """``data[:end]`` ends with a whole end tag or empty-element tag (its last ``<``
    starts one that its last byte closes)."""
    lt = data.rfind(b"<", 0, end)
    if lt < 0 or lt + 1 >= end:
        return False  # no tag, or a '<' that ends the data
    if data[lt + 1] == 0x2F and data[lt + 2 : end - 1].isalpha():
        return True  # '</name>' with a plain ASCII name: the common case, without a regex
    return _COMPLETE_TAG.fullmatch(data, lt, end) is not None


def _open_tag(data: bytes, pos: int, end: int) -> int:
    """Where the last tag of ``data[pos:end]`` starts if ``end`` cuts it (its ``>``
    not there yet, or only inside a quoted value), else -1. Markup that starts with
    ``<!`` is not taken for a tag (CDATA runs to ``]]>``, whatever its length)."""
    lt = data.rfind(b"<", pos, end)
    if lt < 0 or data.startswith(b"<!", lt):
        return -1
    gt = data.find(b">", lt, end)
    if gt < 0:
        return lt
    if data.find(b"'", lt, gt) < 0 and data.find(b'"', lt, gt) < 0:
        return -1  # nothing quoted before its first '>', which ends it
    return -1 if _TAG_REST.match(data, lt + 1, end) is not None else lt


_UNQUOTED_IN_TAG: Final = re.compile(rb"""[^'">]*+""")


def _scan_tag(data: bytes, pos: int, quote: int) -> tuple[int, int]:
    """Read on from ``pos`` inside a tag (``quote``: the quote character it is inside,
    0 for none): ``(index after the tag's '>', 0)`` when it ends in ``data``, else
    ``(-1, the quote the data ends inside, or 0)``. One pass over the bytes: the
    resumable form of ``_TAG_REST`` (which is faster where a tag is read whole)."""
    n = len(data)
    while pos < n:
        if quote:
            close = data.find(b"'" if quote == 0x27 else b'"', pos)
            if close < 0:
                return -1, quote
            pos, quote = close + 1, 0
            continue
        unquoted = _UNQUOTED_IN_TAG.match(data, pos)
        assert unquoted is not None  # '*' always matches
        pos = unquoted.end()
        if pos == n:
            break
        if data[pos] == 0x3E:  # '>'
            return pos + 1, 0
        quote = data[pos]
        pos += 1
    return -1, quote


def _before_open_tag(data: bytes, pos: int, limit: int) -> int:
    """A piece that would end at ``limit``: before a tag ``limit`` cuts, unless that is
    the end of the data (then :meth:`XmlReader._feed` keeps the tag for the next read).
    A tag that the whole slice does not hold is longer than ``MAX_TAG``: refused."""
    if limit == len(data):
        return limit
    lt = _open_tag(data, pos, limit)
    if lt < 0:
        return limit
    if lt == pos:
        raise StreamError("policy-violation", "tag too long")
    return lt


def _too_long() -> NoReturn:
    raise StreamError("policy-violation", "stream header too long")


def _attrs(el: Element) -> dict[str, str]:
    return {str(k): str(v) for k, v in el.attrib.items()}
