"""XEP-0313 parts shared by the account archives (``mod_mam``) and the room archives
of group chat (``mod_muc``).

Not a module (nothing to enable): archive ids, XEP-0082 times in microseconds, the
XEP-0059 paging request and the pieces of a query's answer both speak.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from xmppd.api import StanzaError, ns
from xmppd.api.stanza import Element, child, element, parse, payload

NS_MAM: Final = "urn:xmpp:mam:2"
NS_RSM: Final = "http://jabber.org/protocol/rsm"
NS_FORWARD: Final = "urn:xmpp:forward:0"
NS_SID: Final = "urn:xmpp:sid:0"

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_XEP82: Final = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)")


def format_stamp(us: int) -> str:
    """A XEP-0082 UTC timestamp with microseconds: ``2024-05-01T12:00:00.123456Z``."""
    return (_EPOCH + us * _MICROSECOND).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def to_microseconds(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


def parse_stamp(text: str) -> int:
    """Microseconds since the epoch of a XEP-0082 DateTime; ``bad-request`` otherwise."""
    try:
        if not _XEP82.fullmatch(text):
            raise ValueError(text)
        return to_microseconds(datetime.fromisoformat(text))
    except (ValueError, OverflowError):
        raise StanzaError("bad-request", f"not a XEP-0082 date and time: {text[:40]}") from None


def parse_id(text: str) -> int:
    """An archive id from its string form; one that cannot exist is ``item-not-found``."""
    if text.isdigit() and len(text) <= 19 and int(text) < 2**63:
        return int(text)
    raise StanzaError("item-not-found", "no such archive id")


@dataclass(slots=True)
class Bounds:
    """The time and id bounds of a query form (times in microseconds, ids as integers)."""

    start: int | None = None
    end: int | None = None
    after_id: int | None = None
    before_id: int | None = None

    def read(self, var: str, value: str) -> bool:
        """Take the form field ``var`` if it is one of the bounds (``start``, ``end``,
        ``after-id``, ``before-id``); ``False`` for any other field."""
        if var == "start":
            self.start = parse_stamp(value) if value else None
        elif var == "end":
            self.end = parse_stamp(value) if value else None
        elif var == "after-id":
            self.after_id = parse_id(value) if value else None
        elif var == "before-id":
            self.before_id = parse_id(value) if value else None
        else:
            return False
        return True


def query_fields(form: Element | None) -> Iterator[tuple[str, list[str]]]:
    """``(var, values)`` of each field of a XEP-0313 query form, ``FORM_TYPE`` checked
    (``bad-request`` unless it is urn:xmpp:mam:2) and left out."""
    if form is None:
        return
    for field_el in form.iterfind(f"{{{ns.DATA_FORMS}}}field"):
        var = field_el.get("var") or ""
        values = [(v.text or "").strip() for v in field_el.iterfind(f"{{{ns.DATA_FORMS}}}value")]
        if var == "FORM_TYPE":
            if (values[0] if values else "") != NS_MAM:
                raise StanzaError("bad-request", f"FORM_TYPE must be {NS_MAM}")
            continue
        yield var, values


def unknown_field(var: str) -> StanzaError:
    """The error for a query form field this archive does not filter on."""
    return StanzaError("feature-not-implemented", f"unknown field {var[:60]!r}")


def next_id(last: int, now_us: int) -> int:
    """An archive id after ``last``: the time in milliseconds shifted left by 20 bits
    plus 20 random bits, raised above ``last`` when needed (ordered by time, unique,
    not guessable from another id, XEP-0313 §3). It never precedes its time."""
    candidate = ((now_us // 1000) << 20) | secrets.randbits(20)
    return max(candidate, last + 1)


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(slots=True)
class Paging:
    """The RSM part of a query."""

    max: int
    after: int | None = None
    before: int | None = None
    backward: bool = False
    index: int | None = None


def parse_rsm(query: Element, default_size: int, max_size: int) -> Paging:
    """The XEP-0059 ``<set/>`` of a query (``max`` capped by ``max_size``)."""
    p = Paging(min(default_size, max_size))
    rsm = query.find(f"{{{NS_RSM}}}set")
    if rsm is None:
        return p
    for el in rsm:
        name, text = el.tag.rpartition("}")[2], (el.text or "").strip()
        if name in ("max", "index"):
            if not text.isdigit() or len(text) > 9:
                raise StanzaError("bad-request", f"RSM <{name}/> must be a number")
            if name == "max":
                p.max = min(int(text), max_size)
            else:
                p.index = int(text)
        elif name == "after" and text:
            p.after = parse_id(text)
        elif name == "before":
            p.backward = True
            p.before = parse_id(text) if text else None
    if p.after is not None or p.backward:
        p.index = None  # an offset counts from the start only
    return p


def result_message(
    to: str, archive: str, queryid: str | None, archive_id: int, stamp: int, stored: str
) -> Element:
    """One ``<result/>`` of a query: the stored message, forwarded with its time."""
    msg = element("message", {"to": to, "from": archive})
    attrs = {"id": str(archive_id)}
    if queryid is not None:
        attrs["queryid"] = queryid
    result = child(msg, "result", attrs, namespace=NS_MAM)
    forwarded = child(result, "forwarded", namespace=NS_FORWARD)
    child(forwarded, "delay", {"stamp": format_stamp(stamp)}, namespace=ns.DELAY)
    # The stored XML is ours; should it be damaged, the entry keeps its id and time.
    with contextlib.suppress(SyntaxError):  # lxml's XMLSyntaxError
        forwarded.append(parse(stored.encode("utf-8")))
    return msg


def fin(
    complete: bool,
    queryid: str | None,
    ids: list[int],
    *,
    count: int | None = None,
    index: int | None = None,
) -> Element:
    """The ``<fin/>`` of a query's IQ result: ``ids`` are the page's, oldest first."""
    out = payload(NS_MAM, "fin", {"complete": "true" if complete else "false"})
    if queryid is not None:
        out.set("queryid", queryid)
    rsm = child(out, "set", namespace=NS_RSM)
    if ids:
        first = child(rsm, "first", text=str(ids[0]))
        if index is not None:
            first.set("index", str(index))
        child(rsm, "last", text=str(ids[-1]))
    if count is not None:
        child(rsm, "count", text=str(count))
    return out


__all__ = [
    "NS_FORWARD",
    "NS_MAM",
    "NS_RSM",
    "NS_SID",
    "Paging",
    "fin",
    "format_stamp",
    "next_id",
    "now_us",
    "parse_id",
    "parse_rsm",
    "parse_stamp",
    "result_message",
    "to_microseconds",
]
