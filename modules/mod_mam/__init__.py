"""XEP-0313: Message Archive Management, with XEP-0359 stanza ids and XEP-0059 paging.

What is archived. Each account has its own archive. Messages of type ``chat`` or
``normal`` (never ``error``, ``headline`` or ``groupchat``) are archived for both
parties when they have a ``<body/>``, an XEP-0184 delivery receipt (``<received/>``), an
XEP-0333 chat marker, an XEP-0308 correction, an XEP-0424 retraction, an XEP-0444
reaction or an XEP-0373 OpenPGP payload, or carry the XEP-0334 ``<store/>`` hint;
``<no-store/>`` and ``<no-permanent-store/>`` keep a message out. Receipts and markers
are kept so that a client syncing its history from the archive can tell which messages
were delivered and read. Messages with only chat states (or nothing) are skipped unless
``archive_without_body`` is on.

- The sender's copy is archived in ``user_send_packet`` (a message to one's own
  account is archived once, as received).
- The recipient's copy is archived in the global ``filter_packet``, when the ``to`` is
  an existing account of a host running this module, whoever sent it (a local user,
  the server, later a remote server). The message delivered is then a copy carrying
  ``<stanza-id xmlns='urn:xmpp:sid:0' by='<account>' id='<archive id>'/>`` (XEP-0359).
  Stanza ids that claim to come from the recipient's account or its server are removed
  from every message first (XEP-0359 §5), archived or not.
- A message archived for an account that has no session to take it, and that no
  offline store took, is not bounced: the archive holds it (as Prosody does).

Archiving preferences (XEP-0441, ``<prefs xmlns='urn:xmpp:mam:2'>``): ``default``
``always``, ``never`` or ``roster`` (only contacts in the roster, and oneself), plus
``always`` and ``never`` JID lists (``never`` wins). The option ``default`` applies until
a user sets their own.

Queries (IQ set ``<query xmlns='urn:xmpp:mam:2'>`` to one's own bare JID; anyone else
gets ``forbidden``) take the form fields ``with``, ``start``, ``end`` (XEP-0082 times),
``before-id``, ``after-id``, ``ids`` and ``{urn:xmpp:fulltext:0}fulltext`` (XEP-0431),
RSM ``max`` (capped by ``max_page_size``), ``after``, ``before`` (empty: the last page),
``index``, and ``<flip-page/>``. Each result is written straight to the asking session,
then the IQ result carries ``<fin complete=...>`` with ``first``/``last`` (in
chronological order, also for a flipped page) and, with ``count_results``, ``count`` and
the first index. An id that is not in the archive gives ``item-not-found``, a bad form
or time ``bad-request``, an unknown field ``feature-not-implemented``. A page also stops
early (``complete='false'``) once about 1 MiB of messages is queued for the client.
IQ get ``<query/>`` returns the form, ``<metadata/>`` the first and last entries.

Full-text search: PostgreSQL uses ``to_tsvector('simple', body) @@
plainto_tsquery('simple', :q)`` with a GIN index (whole words, any order, case folded).
SQLite uses an FTS5 index (``mod_mam__archive_fts``, tokenizer ``unicode61`` with
diacritics removed; the writer indexes each batch in the transaction that inserts it, a
trigger removes deleted rows, and existing rows are indexed when it is first created)
with the same meaning: every word must occur as a whole word, case folded; words
are quoted, so none is read as an FTS5 operator. The query runs in a worker thread.

Archive ids are 64-bit integers (the time in milliseconds shifted left by 20 bits, plus
20 random bits, raised to stay increasing) written as decimal strings: ordered by time,
unique per host, not guessable from one another. Messages are stored as clients see
them (``<message xmlns='jabber:client'>``), with their time in microseconds. Rows are
written behind the message path by one task per host, many per transaction (see
:class:`~xmppd_modules.mod_mam.store.Writer`); every read of the archive waits for the rows
queued before it. Entries older than ``retention`` are deleted hourly.

``xmppd export-user`` includes the archive, as XEP-0227 §6.7 describes (``export.py``).

Other modules reach the archives through :data:`ARCHIVE`.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import replace
from typing import Final

from xmppd.api import (
    JID,
    STOP,
    Drop,
    InvalidJID,
    IqRequest,
    Priority,
    Scope,
    Session,
    StanzaError,
    Stop,
    hooks,
    ns,
)
from xmppd.api.hooks import (
    Bind2Request,
    DiscoInfo,
    DiscoQuery,
    PacketContext,
    RouteInfo,
    StanzaEvent,
    UserEvent,
)
from xmppd.api.stanza import Element, child, payload
from xmppd_modules.mam_common import fin, parse_id, query_fields, result_message, unknown_field
from xmppd_modules.mam_common import parse_rsm as rsm_paging
from xmppd_modules.mod_mam.common import (
    FULLTEXT_FIELD,
    MAX_FULLTEXT_WORDS,
    MAX_PREF_JIDS,
    NS_FULLTEXT,
    NS_MAM,
    NS_MAM_EXTENDED,
    NS_SID,
    NS_XDATA_VALIDATE,
    PURGE_INTERVAL,
    Ctx,
    MamOptions,
    module,
)
from xmppd_modules.mod_mam.export import export as _export  # noqa: F401  (registers user_export)
from xmppd_modules.mod_mam.store import (
    ARCHIVE,
    SID_TAG,
    Archive,
    Filters,
    Paging,
    Prefs,
    format_stamp,
    has_forged_id,
    strip_ids,
)

__all__ = ["ARCHIVE", "Archive", "MamOptions", "module"]

_XDATA: Final = f"{{{ns.DATA_FORMS}}}"
_XEP82: Final = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)")


# ----------------------------------------------------------------------------- lifecycle


@module.on_load
async def start(ctx: Ctx) -> None:
    archive = Archive(ctx)
    await archive.start()
    ctx.provide(ARCHIVE, archive)
    if ctx.options.retention != float("inf") or _limited_users(ctx):
        ctx.spawn(_expire_periodically(archive), name=f"mod_mam retention {ctx.domain}")


STOP_FLUSH_SECONDS: Final = 5.0
"""How long stopping waits for queued archive rows to be written (the database may be
down: the writer is retrying)."""


@module.on_unload
async def stop(ctx: Ctx) -> None:
    writer = ctx.service(ARCHIVE).writer
    try:
        async with asyncio.timeout(STOP_FLUSH_SECONDS):
            await writer.flush()
    except TimeoutError:
        ctx.log.error("stopping: %d archive rows could not be written; lost", writer.pending)


def _limited_users(ctx: Ctx) -> dict[str, float]:
    """Accounts with a finite retention of their own."""
    return {u: age for u, age in ctx.options.retention_by_user.items() if age != float("inf")}


async def expire_once(archive: Archive) -> int:
    """Apply the host's and the accounts' retention once; returns the rows deleted."""
    ctx = archive.ctx
    now = time.time()
    removed = 0
    if ctx.options.retention != float("inf"):
        keep = list(ctx.options.retention_by_user)
        removed += await archive.expire(now - ctx.options.retention, keep=keep)
    for username, age in _limited_users(ctx).items():
        removed += await archive.expire_user(username, now - age)
    return removed


async def _expire_periodically(archive: Archive) -> None:
    ctx = archive.ctx
    expired = ctx.metrics.counter(
        "archive_expired", "Archived messages deleted because they outlived the retention."
    )
    while True:
        try:
            removed = await expire_once(archive)
            if removed:
                expired.inc(removed)
                ctx.log.info("retention: removed %d archived messages", removed)
        except Exception:
            ctx.log.exception("retention: could not remove old archived messages")
        await asyncio.sleep(PURGE_INTERVAL)


@module.on(hooks.USER_REMOVED)
async def forget(ctx: Ctx, event: UserEvent) -> None:
    await ctx.service(ARCHIVE).forget_user(event.jid)


# ----------------------------------------------------------------------------- archiving


# Late: after the filters that may change or drop what the client sent.
@module.fold(hooks.USER_SEND_PACKET, priority=Priority.LATE)
async def archive_sent(ctx: Ctx, stanza: Element, pctx: PacketContext) -> Element | Drop:
    if stanza.tag != "message":
        return stanza
    archive = ctx.service(ARCHIVE)
    if not archive.archivable(stanza):
        return stanza
    try:
        to = JID.parse(stanza.get("to") or "")
    except InvalidJID:
        return stanza
    user = pctx.session.jid.bare
    if to.bare != user and await archive.wants(user, to):  # to oneself: archived once
        await archive.writer.wait_for_room()
        archive.store(user, to, stanza, outgoing=True)
        await _visible_everywhere(ctx, archive)
    return stanza


async def _visible_everywhere(ctx: Ctx, archive: Archive) -> None:
    """In a cluster, the row is written before the message goes on: a query on another
    node (the recipient's, or the sender's other device's) must find what that device
    was just sent, and only this node can flush what it queued. The writer still
    commits many rows per transaction; one sender waits for its row's commit."""
    if ctx.cluster is not None:
        await archive.writer.flush()


# Late: after the filters (blocking, word filters) that may drop the message.
@module.fold(hooks.FILTER_PACKET, priority=Priority.LATE)
async def archive_received(ctx: Ctx, stanza: Element, route: RouteInfo) -> Element | Drop:
    if stanza.tag != "message":
        return stanza
    try:
        to = JID.parse(stanza.get("to") or "")
    except InvalidJID:
        return stanza
    # Bound once for the server: find the archive of the recipient's host.
    host_ctx = ctx.for_host(to.domain) if to.local else None
    if host_ctx is None:
        return stanza
    archive = host_ctx.service(ARCHIVE)
    user = to.bare
    if archive.archivable(stanza):
        try:
            stored = await _archive_received(archive, user, stanza)
            if stored is not None:
                await _visible_everywhere(host_ctx, archive)
        except Exception:  # deliver it anyway, but never with a forged id
            archive.ctx.log.exception("could not archive a message for %s", user)
            stored = None
        if stored is not None:
            return stored
    return strip_ids(stanza, user) if has_forged_id(stanza, user) else stanza


async def _archive_received(archive: Archive, user: JID, stanza: Element) -> Element | None:
    """The copy to deliver, with our stanza id; ``None`` when it is not archived."""
    try:
        sender = JID.parse(stanza.get("from") or "")
    except InvalidJID:
        return None
    if not await archive.exists(user) or not await archive.wants(user, sender):
        return None
    await archive.writer.wait_for_room()
    out = strip_ids(stanza, user)
    reserved = archive.reserve()
    child(out, "stanza-id", {"by": str(user), "id": str(reserved[0])}, namespace=NS_SID)
    archive.store(user, sender, out, outgoing=False, reserved=reserved)
    return out


@module.on(hooks.OFFLINE_MESSAGE, priority=Priority.FALLBACK)
async def kept_in_archive(ctx: Ctx, event: StanzaEvent) -> Stop | None:
    """No offline store took a message that is archived: it is not lost, do not bounce."""
    by = str(event.to.bare)
    if any(el.get("by") == by for el in event.stanza.iterfind(SID_TAG)):
        return STOP
    return None


# ----------------------------------------------------------------------------- queries


def _require_owner(req: IqRequest) -> None:
    if not req.is_from_owner:
        raise StanzaError("forbidden", "an archive belongs to its owner")


def parse_form(form: Element | None) -> Filters:
    f = Filters()
    for var, values in query_fields(form):
        value = values[0] if values else ""
        if f.read(var, value):
            continue
        if var == "with":
            try:
                f.with_ = JID.parse(value) if value else None
            except InvalidJID:
                raise StanzaError("bad-request", "'with' is not a valid JID") from None
        elif var == "ids":
            f.ids = tuple(sorted({parse_id(v) for v in values if v}))
        elif var == FULLTEXT_FIELD:
            words = value.split()
            if len(words) > MAX_FULLTEXT_WORDS:
                raise StanzaError("bad-request", f"at most {MAX_FULLTEXT_WORDS} search words")
            f.fulltext = " ".join(words) or None
        else:
            raise unknown_field(var)
    return f


def parse_rsm(query: Element, options: MamOptions) -> Paging:
    return rsm_paging(query, options.default_page_size, options.max_page_size)


def _result(session: Session, user: JID, queryid: str | None, row: tuple[int, int, str]) -> Element:
    archive_id, stamp, stored = row
    return result_message(str(session.jid), str(user), queryid, archive_id, stamp, stored)


@module.iq("set", NS_MAM, "query", to=Scope.BARE)
async def query(ctx: Ctx, req: IqRequest) -> Element:
    _require_owner(req)
    session = req.origin or (ctx.sessions.get(req.from_) if req.from_ is not None else None)
    if session is None:
        raise StanzaError("service-unavailable", "results go to a connected session")
    filters = parse_form(req.payload.find(f"{_XDATA}x"))
    paging = parse_rsm(req.payload, ctx.options)
    if filters.ids is not None and len(filters.ids) > ctx.options.max_page_size:
        raise StanzaError("policy-violation", "too many ids in one query")
    user = req.to.bare
    page = await ctx.service(ARCHIVE).query(user, filters, paging)
    queryid = req.payload.get("queryid")
    rows = page.rows
    if req.payload.find(f"{{{NS_MAM}}}flip-page") is not None:
        rows = rows[::-1]
    for row in rows:
        ctx.sessions.send_raw(session, _result(session, user, queryid, row))
    done = fin(
        page.complete,
        queryid,
        [row[0] for row in page.rows],
        count=page.count,
        index=page.index,
    )
    return req.result(done)


@module.iq("get", NS_MAM, "query", to=Scope.BARE)
async def query_form(ctx: Ctx, req: IqRequest) -> Element:
    _require_owner(req)
    result = payload(NS_MAM, "query")
    form = child(result, "x", {"type": "form"}, namespace=ns.DATA_FORMS)
    child(child(form, "field", {"type": "hidden", "var": "FORM_TYPE"}), "value", text=NS_MAM)
    for var, ftype in (
        ("with", "jid-single"),
        ("start", "text-single"),
        ("end", "text-single"),
        ("before-id", "text-single"),
        ("after-id", "text-single"),
        ("ids", "list-multi"),
        (FULLTEXT_FIELD, "text-single"),
    ):
        field = child(form, "field", {"type": ftype, "var": var})
        if var == "ids":  # §4.1.5: open to any value
            attrs = {"datatype": "xs:string"}
            child(child(field, "validate", attrs, namespace=NS_XDATA_VALIDATE), "open")
    return req.result(result)


@module.iq("get", NS_MAM, "metadata", to=Scope.BARE)
async def metadata(ctx: Ctx, req: IqRequest) -> Element:
    _require_owner(req)
    return req.result(await _metadata(ctx, req.to.bare))


async def _metadata(ctx: Ctx, user: JID) -> Element:
    """``<metadata/>``: the first and last entries of ``user``'s archive."""
    first, last = await ctx.service(ARCHIVE).edges(user)
    result = payload(NS_MAM, "metadata")
    for name, row in (("start", first), ("end", last)):
        if row is not None:
            child(result, name, {"id": str(row.id), "timestamp": format_stamp(int(row.stamp))})
    return result


@module.fold(hooks.BIND2_BOUND)
async def bind2_metadata(
    ctx: Ctx, answers: tuple[Element, ...], request: Bind2Request
) -> tuple[Element, ...]:
    """XEP-0386: the archive's state at bind time, so the client knows what to sync."""
    return (*answers, await _metadata(ctx, request.session.jid.bare))


# ----------------------------------------------------------------------------- preferences


def parse_prefs(el: Element) -> Prefs:
    default = el.get("default")
    if default not in ("always", "never", "roster"):
        raise StanzaError("bad-request", "default must be always, never or roster")
    lists: dict[str, frozenset[str]] = {}
    for name in ("always", "never"):
        found: set[str] = set()
        for jid in el.iterfind(f"{{{NS_MAM}}}{name}/{{{NS_MAM}}}jid"):
            try:
                found.add(str(JID.parse((jid.text or "").strip())))
            except InvalidJID:
                raise StanzaError("jid-malformed", f"invalid JID in <{name}/>") from None
        if len(found) > MAX_PREF_JIDS:
            raise StanzaError("not-acceptable", f"at most {MAX_PREF_JIDS} JIDs per list")
        lists[name] = frozenset(found)
    return Prefs(default, lists["always"], lists["never"])


@module.iq("get", NS_MAM, "prefs", to=Scope.BARE)
async def prefs_get(ctx: Ctx, req: IqRequest) -> Element:
    _require_owner(req)
    return req.result((await ctx.service(ARCHIVE).prefs(req.to.bare)).to_xml())


@module.iq("set", NS_MAM, "prefs", to=Scope.BARE)
async def prefs_set(ctx: Ctx, req: IqRequest) -> Element:
    _require_owner(req)
    prefs = parse_prefs(req.payload)
    await ctx.service(ARCHIVE).set_prefs(req.to.bare, prefs)
    return req.result(prefs.to_xml())


# ----------------------------------------------------------------------------- discovery


@module.fold(hooks.DISCO_INFO)
async def advertise(ctx: Ctx, info: DiscoInfo, disco: DiscoQuery) -> DiscoInfo:
    """On accounts, which host the archives (``urn:xmpp:mam:2`` comes from the IQs)."""
    if disco.node is not None or not disco.to.local:
        return info
    return replace(info, features=(*info.features, NS_MAM_EXTENDED, NS_SID, NS_FULLTEXT))
