"""XEP-0313 (Message Archive Management) from a raw client: build queries, collect the
result messages and the closing ``<fin/>``, and read them back as plain data."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from xml.sax.saxutils import escape, quoteattr

from tests.support.xmlclient import CLIENT, Element, XmlClient, error_condition, tag

MAM: Final = "urn:xmpp:mam:2"
RSM: Final = "http://jabber.org/protocol/rsm"
FORWARD: Final = "urn:xmpp:forward:0"
DELAY: Final = "urn:xmpp:delay"
SID: Final = "urn:xmpp:sid:0"
DATA: Final = "jabber:x:data"
FULLTEXT: Final = "{urn:xmpp:fulltext:0}fulltext"

_ids = itertools.count()


class MamError(Exception):
    """The query was answered with an error; ``condition`` is its defined condition."""

    def __init__(self, condition: str | None) -> None:
        super().__init__(condition)
        self.condition = condition


@dataclass(frozen=True)
class Item:
    """One result: its archive id, its delay stamp and the forwarded message."""

    id: str
    stamp: str
    message: Element

    @property
    def body(self) -> str | None:
        return self.message.findtext(f"{{{CLIENT}}}body")

    def get(self, name: str) -> str | None:
        return self.message.get(name)


@dataclass(frozen=True)
class Page:
    items: list[Item]
    complete: bool
    first: str | None
    last: str | None
    count: int | None
    index: int | None

    @property
    def ids(self) -> list[str]:
        return [item.id for item in self.items]

    @property
    def bodies(self) -> list[str | None]:
        return [item.body for item in self.items]


def form(fields: Mapping[str, str | Sequence[str]]) -> str:
    """A submitted ``urn:xmpp:mam:2`` form with these fields (several values: a list)."""
    out = [f"<x xmlns='{DATA}' type='submit'>"]
    out.append(f"<field var='FORM_TYPE' type='hidden'><value>{MAM}</value></field>")
    for var, value in fields.items():
        values = [value] if isinstance(value, str) else list(value)
        inner = "".join(f"<value>{escape(v)}</value>" for v in values)
        out.append(f"<field var={quoteattr(var)}>{inner}</field>")
    out.append("</x>")
    return "".join(out)


def query_xml(
    fields: Mapping[str, str | Sequence[str]] | None = None,
    *,
    queryid: str | None = None,
    max: int | None = None,
    after: str | None = None,
    before: str | None = None,
    index: int | None = None,
    flip: bool = False,
    raw_form: str | None = None,
) -> str:
    """The ``<query/>`` payload; ``before=''`` asks for the last page."""
    rsm = ""
    if max is not None:
        rsm += f"<max>{max}</max>"
    if after is not None:
        rsm += f"<after>{escape(after)}</after>"
    if before is not None:
        rsm += f"<before>{escape(before)}</before>" if before else "<before/>"
    if index is not None:
        rsm += f"<index>{index}</index>"
    body = raw_form if raw_form is not None else (form(fields) if fields else "")
    if rsm:
        body += f"<set xmlns='{RSM}'>{rsm}</set>"
    if flip:
        body += "<flip-page/>"
    qid = f" queryid={quoteattr(queryid)}" if queryid is not None else ""
    return f"<query xmlns='{MAM}'{qid}>{body}</query>"


def _is_result(el: Element, queryid: str) -> bool:
    result = el.find(f"{{{MAM}}}result")
    return el.tag == tag("message") and result is not None and result.get("queryid") == queryid


def _item(el: Element) -> Item:
    result = el.find(f"{{{MAM}}}result")
    assert result is not None
    forwarded = result.find(f"{{{FORWARD}}}forwarded")
    assert forwarded is not None, "a result without <forwarded/>"
    delay = forwarded.find(f"{{{DELAY}}}delay")
    message = forwarded.find(f"{{{CLIENT}}}message")
    assert delay is not None and message is not None, "<forwarded/> lacks delay or message"
    return Item(result.get("id", ""), delay.get("stamp", ""), message)


async def query(
    client: XmlClient,
    fields: Mapping[str, str | Sequence[str]] | None = None,
    *,
    to: str | None = None,
    max: int | None = None,
    after: str | None = None,
    before: str | None = None,
    index: int | None = None,
    flip: bool = False,
    raw_form: str | None = None,
    timeout: float = 20,
) -> Page:
    """Run one query on ``client``'s own archive (or ``to``); its page of results.

    The result messages come before the IQ result on the same stream, so they have all
    arrived when it does. Raises :class:`MamError` when the query fails.
    """
    queryid = f"q{next(_ids)}"
    payload = query_xml(
        fields,
        queryid=queryid,
        max=max,
        after=after,
        before=before,
        index=index,
        flip=flip,
        raw_form=raw_form,
    )
    reply = await client.iq("set", payload, to=to, timeout=timeout)
    received = client.pending(lambda el: _is_result(el, queryid))
    for _ in received:
        await client.expect(lambda el: _is_result(el, queryid))
    if reply.get("type") != "result":
        assert not received, "results for a query that failed"
        raise MamError(error_condition(reply))
    fin = reply.find(f"{{{MAM}}}fin")
    assert fin is not None, "no <fin/> in the IQ result"
    assert fin.get("queryid") in (None, queryid)
    rsm_set = fin.find(f"{{{RSM}}}set")
    assert rsm_set is not None, "no RSM <set/> in <fin/>"
    first = rsm_set.find(f"{{{RSM}}}first")
    count = rsm_set.findtext(f"{{{RSM}}}count")
    index = first.get("index") if first is not None else None
    return Page(
        items=[_item(el) for el in received],
        complete=fin.get("complete") in ("true", "1"),
        first=first.text if first is not None else None,
        last=rsm_set.findtext(f"{{{RSM}}}last"),
        count=int(count) if count is not None else None,
        index=int(index) if index is not None else None,
    )


async def query_error(
    client: XmlClient,
    fields: Mapping[str, str | Sequence[str]] | None = None,
    **kwargs: Any,
) -> str | None:
    """The error condition a query must get (``kwargs`` as for :func:`query`)."""
    try:
        await query(client, fields, **kwargs)
    except MamError as err:
        return err.condition
    raise AssertionError("expected an error, the query succeeded")


async def everything(
    client: XmlClient, fields: Mapping[str, str | Sequence[str]] | None = None
) -> list[Item]:
    """Every matching entry of the archive, page after page (oldest first)."""
    items: list[Item] = []
    after: str | None = None
    while True:
        page = await query(client, fields, max=250, after=after)
        items += page.items
        if page.complete or page.last is None:
            return items
        after = page.last


def stanza_ids(message: Element) -> list[tuple[str | None, str | None]]:
    """The (by, id) of each XEP-0359 ``<stanza-id/>`` in a message."""
    return [(el.get("by"), el.get("id")) for el in message.findall(f"{{{SID}}}stanza-id")]
