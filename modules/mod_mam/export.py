"""XEP-0227: an account's message archive in ``xmppd export-user``.

The archive is written as XEP-0227 §6.7 asks: ``<archive xmlns='urn:xmpp:pie:0#mam'>``
holding one XEP-0313 ``<result id>`` per entry, oldest first, each forwarding the stored
message with its ``<delay stamp>``, exactly as a MAM query would return it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Final

from xmppd.api import JID, hooks, ns
from xmppd.api.hooks import UserEvent
from xmppd.api.stanza import Element, child, parse, payload
from xmppd.api.storage import BigInteger, Integer, String, bindparam, select
from xmppd_modules.mod_mam.common import NS_FORWARD, NS_MAM, Ctx, module
from xmppd_modules.mod_mam.store import ARCHIVE, archive_table, format_stamp

NS_PIE_MAM: Final = "urn:xmpp:pie:0#mam"
EXPORT_PAGE: Final = 500
"""Archive rows read per query: a large archive is read in pages, never in one result."""

_A: Final = archive_table.c
_PAGE: Final = (
    select(_A.id, _A.stamp, _A.stanza)
    .where(
        _A.host == bindparam("host", type_=String),
        _A.username == bindparam("username", type_=String),
        _A.id > bindparam("after", type_=BigInteger),
    )
    .order_by(_A.id)
    .limit(bindparam("limit", type_=Integer))
)


async def entries(ctx: Ctx, user: JID) -> AsyncIterator[tuple[int, int, str]]:
    """Every entry of ``user``'s archive as (id, stamp in microseconds, stored XML),
    oldest first, read :data:`EXPORT_PAGE` rows at a time."""
    await ctx.service(ARCHIVE).writer.flush()  # what is queued belongs in the export too
    params = {"host": ctx.domain, "username": user.local, "limit": EXPORT_PAGE}
    after = -1
    while True:
        rows = await ctx.db.fetch_all(_PAGE, {**params, "after": after})
        for row in rows:
            yield int(row.id), int(row.stamp), str(row.stanza)
        if len(rows) < EXPORT_PAGE:
            return
        after = int(rows[-1].id)


def result_element(archive_id: int, stamp: int, stored: str) -> Element:
    """``<result xmlns='urn:xmpp:mam:2' id><forwarded><delay/><message/></forwarded></result>``."""
    result = payload(NS_MAM, "result", {"id": str(archive_id)})
    forwarded = child(result, "forwarded", namespace=NS_FORWARD)
    child(forwarded, "delay", {"stamp": format_stamp(stamp)}, namespace=ns.DELAY)
    # The stored XML is ours (<message xmlns='jabber:client'>); should it be damaged, the
    # entry keeps its id and time, as in query results.
    with contextlib.suppress(SyntaxError):  # lxml's XMLSyntaxError
        forwarded.append(parse(stored.encode("utf-8")))
    return result


@module.fold(hooks.USER_EXPORT)
async def export(ctx: Ctx, parts: tuple[Element, ...], event: UserEvent) -> tuple[Element, ...]:
    """XEP-0227: the archive, oldest first, in ``<archive xmlns='urn:xmpp:pie:0#mam'>``.

    The hook returns whole elements, so the document holds the archive in memory; the
    database is still read page by page.
    """
    archive: Element | None = None
    async for archive_id, stamp, stored in entries(ctx, event.jid):
        if archive is None:
            archive = payload(NS_PIE_MAM, "archive")
        archive.append(result_element(archive_id, stamp, stored))
    return parts if archive is None else (*parts, archive)
