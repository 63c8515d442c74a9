"""XEP-0402: PEP Native Bookmarks — kept in sync with XEP-0048 bookmarks in private storage.

Bookmarks live in the PEP node ``urn:xmpp:bookmarks:1`` (mod_pep): one item per room,
its id the room's JID, its payload ``<conference xmlns='urn:xmpp:bookmarks:1' name
autojoin><nick/><password/><extensions/></conference>``, published with the
publish-options ``access_model=whitelist``, ``max_items=max`` and ``persist_items=true``
(only the owner may read them). Older clients keep the same list as
``<storage xmlns='storage:bookmarks'>`` in XEP-0049 private XML storage (mod_private).
This module keeps the two copies in sync (XEP-0402 §5.3, advertised as
``urn:xmpp:bookmarks:1#compat`` on the account):

- a successful ``jabber:iq:private`` set of ``storage:bookmarks`` is mirrored into the
  PEP node: conferences new or changed are published, rooms no longer listed are
  retracted (the owner's resources get the usual notifications);
- a successful publish or retract on ``urn:xmpp:bookmarks:1`` (or a purge or delete of
  the node) rewrites the ``conference`` elements of the private copy from the node's
  items; its other children (``url`` bookmarks) are kept.

The client's IQ is noted on its way in (``user_send_packet``); the copy is made when the
success reply passes on its way back (``user_receive_packet``), before the client gets
it, so a client that reads the other copy after the reply sees the change. Both copies
are written through the modules' own IQ handlers, as the account, so their limits and
checks apply. ``extensions`` have no legacy form: a legacy set keeps the extensions of
conferences the PEP node already has.

Not implemented: ``urn:xmpp:bookmarks:1#compat-pep`` (the legacy ``storage:bookmarks``
PEP node), and copies of changes made without a client IQ (by another module or the CLI).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final

from xmppd.api import (
    JID,
    InvalidJID,
    IqTimeout,
    KeyedLocks,
    Module,
    ModuleContext,
    NoOptions,
    OwnIqWatch,
    Priority,
    hooks,
    ns,
)
from xmppd.api.hooks import DiscoInfo, DiscoQuery, PacketContext
from xmppd.api.stanza import Element, child, element, new_id, parse, payload, serialize
from xmppd_modules.mod_pep import PEP
from xmppd_modules.mod_pep.common import NS_OWNER, NS_PUBLISH_OPTIONS, NS_PUBSUB
from xmppd_modules.mod_private import NS_PRIVATE
from xmppd_modules.mod_private import STORE as PRIVATE_STORE

NS_BOOKMARKS: Final = "urn:xmpp:bookmarks:1"
NS_LEGACY: Final = "storage:bookmarks"
FEATURE_COMPAT: Final = f"{NS_BOOKMARKS}#compat"
PUBLISH_OPTIONS: Final = {
    "pubsub#persist_items": "true",
    "pubsub#max_items": "max",
    "pubsub#access_model": "whitelist",
}
"""XEP-0402 §3 publish-options of every bookmark."""
ALL_ITEMS: Final = 100_000
READ_BUDGET: Final = 64 * 1024 * 1024
TIMEOUT: Final = 30.0

module: Module[NoOptions] = Module(
    "bookmarks",
    "XEP-0402: PEP Native Bookmarks (kept in sync with XEP-0048 private storage)",
    depends=("pep", "private"),
    protocols=("XEP-0402 v1.2 (with urn:xmpp:bookmarks:1#compat)", "XEP-0411 v1.0"),
)
Ctx = ModuleContext[NoOptions]

_P: Final = f"{{{NS_PUBSUB}}}"
_O: Final = f"{{{NS_OWNER}}}"
_LEGACY: Final = f"{{{NS_LEGACY}}}"
_NEW: Final = f"{{{NS_BOOKMARKS}}}"

PENDING: Final = OwnIqWatch[str]("bookmarks.pending")
"""A session's bookmark changes awaiting their reply: which copy (``legacy``, ``pep``)."""
LOCKS: Final = KeyedLocks()
"""Serializes the copies made for one account."""

# ----------------------------------------------------------------------------- conversions


@dataclass(frozen=True, slots=True)
class Bookmark:
    """One room, whichever form it came in."""

    jid: str
    name: str | None = None
    autojoin: bool = False
    nick: str | None = None
    password: str | None = None
    extensions: bytes | None = None
    """The serialized ``<extensions/>`` element of the PEP form, if any."""


def _room(value: str | None) -> str | None:
    if not value:
        return None
    try:
        room = JID.parse(value)
    except InvalidJID:
        return None
    return str(room) if not room.resource else None


def _truthy(value: str | None) -> bool:
    return value in ("true", "1")


def from_legacy(storage: Element) -> list[Bookmark]:
    """The conferences of a legacy ``<storage/>`` (one per room; the last one wins)."""
    found: dict[str, Bookmark] = {}
    for conf in storage.findall(f"{_LEGACY}conference"):
        room = _room(conf.get("jid"))
        if room is None:
            continue
        found[room] = Bookmark(
            room,
            conf.get("name"),
            _truthy(conf.get("autojoin")),
            conf.findtext(f"{_LEGACY}nick"),
            conf.findtext(f"{_LEGACY}password"),
        )
    return list(found.values())


def from_pep(item_id: str, data: str) -> Bookmark | None:
    """A bookmark from a stored item of the PEP node (``None``: not a conference)."""
    room = _room(item_id)
    conf = parse(data.encode("utf-8"))
    if room is None or conf.tag != f"{_NEW}conference":
        return None
    extensions = conf.find(f"{_NEW}extensions")
    return Bookmark(
        room,
        conf.get("name"),
        _truthy(conf.get("autojoin")),
        conf.findtext(f"{_NEW}nick"),
        conf.findtext(f"{_NEW}password"),
        None if extensions is None else serialize(extensions),
    )


def to_pep(mark: Bookmark) -> Element:
    """The ``<conference xmlns='urn:xmpp:bookmarks:1'/>`` payload of a bookmark."""
    attrs = {"autojoin": "true" if mark.autojoin else "false"}
    if mark.name is not None:
        attrs["name"] = mark.name
    conf = payload(NS_BOOKMARKS, "conference", attrs)
    if mark.nick is not None:
        child(conf, "nick", text=mark.nick)
    if mark.password is not None:
        child(conf, "password", text=mark.password)
    if mark.extensions is not None:
        conf.append(parse(mark.extensions))
    return conf


def to_legacy(storage: Element, mark: Bookmark) -> None:
    """Append the legacy ``<conference/>`` of a bookmark to ``storage``."""
    attrs = {"jid": mark.jid, "autojoin": "true" if mark.autojoin else "false"}
    if mark.name is not None:
        attrs["name"] = mark.name
    conf = child(storage, "conference", attrs)
    if mark.nick is not None:
        child(conf, "nick", text=mark.nick)
    if mark.password is not None:
        child(conf, "password", text=mark.password)


# ----------------------------------------------------------------------------- the copies


async def _request(ctx: Ctx, owner: JID, kind: str, query: Element) -> bool:
    """Send an IQ as the account to the account itself; did it succeed?"""
    iq = element("iq", {"type": kind, "id": new_id(), "from": str(owner), "to": str(owner)})
    iq.append(query)
    try:
        reply = await ctx.request(iq, timeout=TIMEOUT)
    except IqTimeout:
        ctx.log.warning("bookmarks of %s: no answer to a %s", owner, query.tag)
        return False
    if reply.get("type") != "result":
        ctx.log.info("bookmarks of %s: a %s failed", owner, query.tag)
        return False
    return True


async def _pep_bookmarks(ctx: Ctx, owner: JID) -> dict[str, Bookmark] | None:
    """The bookmarks of the PEP node, by room (``None``: there is no node)."""
    store = ctx.service(PEP)
    if await store.node(owner, NS_BOOKMARKS) is None:
        return None
    page = await store.items(owner, NS_BOOKMARKS, newest=ALL_ITEMS, budget=READ_BUDGET)
    found: dict[str, Bookmark] = {}
    for item in page.items:
        mark = from_pep(item.item_id, item.payload)
        if mark is not None:
            found[item.item_id] = mark
    return found


async def _legacy_storage(ctx: Ctx, owner: JID) -> Element | None:
    """The account's private ``storage:bookmarks`` element, if it keeps one."""
    stored = await ctx.keyval(PRIVATE_STORE).get(owner.local, NS_LEGACY)
    if stored is None:
        return None
    query = await _private_get(ctx, owner)
    return None if query is None else query.find(f"{_LEGACY}storage")


async def _private_get(ctx: Ctx, owner: JID) -> Element | None:
    query = payload(NS_PRIVATE, "query")
    child(query, "storage", namespace=NS_LEGACY)
    iq = element("iq", {"type": "get", "id": new_id(), "from": str(owner), "to": str(owner)})
    iq.append(query)
    try:
        reply = await ctx.request(iq, timeout=TIMEOUT)
    except IqTimeout:
        return None
    if reply.get("type") != "result":
        return None
    return reply.find(f"{{{NS_PRIVATE}}}query")


async def legacy_to_pep(ctx: Ctx, owner: JID) -> None:
    """Make the PEP node hold the conferences of the private copy."""
    storage = await _legacy_storage(ctx, owner)
    wanted = {} if storage is None else {m.jid: m for m in from_legacy(storage)}
    current = await _pep_bookmarks(ctx, owner) or {}
    for room, mark in wanted.items():
        have = current.get(room)
        if mark.extensions is None and have is not None and have.extensions is not None:
            mark = replace(mark, extensions=have.extensions)
        if have == mark:
            continue
        pubsub = payload(NS_PUBSUB, "pubsub")
        publish = child(pubsub, "publish", {"node": NS_BOOKMARKS})
        child(publish, "item", {"id": room}).append(to_pep(mark))
        options = child(pubsub, "publish-options")
        form = child(options, "x", {"type": "submit"}, namespace=ns.DATA_FORMS)
        hidden = child(form, "field", {"var": "FORM_TYPE", "type": "hidden"})
        child(hidden, "value", text=NS_PUBLISH_OPTIONS)
        for var, value in PUBLISH_OPTIONS.items():
            child(child(form, "field", {"var": var}), "value", text=value)
        await _request(ctx, owner, "set", pubsub)
    for room in current.keys() - wanted.keys():
        pubsub = payload(NS_PUBSUB, "pubsub")
        retract = child(pubsub, "retract", {"node": NS_BOOKMARKS, "notify": "true"})
        child(retract, "item", {"id": room})
        await _request(ctx, owner, "set", pubsub)


async def pep_to_legacy(ctx: Ctx, owner: JID) -> None:
    """Make the conferences of the private copy those of the PEP node."""
    marks = await _pep_bookmarks(ctx, owner) or {}
    old = await _legacy_storage(ctx, owner)
    if old is None and not marks:
        return
    storage = payload(NS_LEGACY, "storage")
    if old is not None:
        for el in old:
            if isinstance(el.tag, str) and el.tag != f"{_LEGACY}conference":
                storage.append(el)
    for mark in marks.values():
        to_legacy(storage, mark)
    query = payload(NS_PRIVATE, "query")
    query.append(storage)
    await _request(ctx, owner, "set", query)


# ----------------------------------------------------------------------------- hooks


def _change_kind(iq: Element) -> str | None:
    """``legacy`` or ``pep`` for an IQ set that changes one copy of the bookmarks."""
    if iq.get("type") != "set" or len(iq) != 1:
        return None
    query = iq[0]
    if query.tag == f"{{{NS_PRIVATE}}}query":
        return "legacy" if query.find(f"{_LEGACY}storage") is not None else None
    if query.tag == f"{_P}pubsub":
        names = (f"{_P}publish", f"{_P}retract")
    elif query.tag == f"{_O}pubsub":
        names = (f"{_O}purge", f"{_O}delete")
    else:
        return None
    for action in query:
        if action.tag in names and action.get("node") == NS_BOOKMARKS:
            return "pep"
    return None


# Late: see the IQ as it is finally routed (after filters that might change or drop it).
@module.fold(hooks.USER_SEND_PACKET, priority=Priority.LATE)
async def note_change(ctx: Ctx, stanza: Element, pctx: PacketContext) -> Element:
    """Remember a client's IQ that changes one copy of its bookmarks."""
    if stanza.tag == "iq" and (kind := _change_kind(stanza)) is not None:
        PENDING.note(ctx.sessions, stanza, pctx.session, kind)
    return stanza


@module.fold(hooks.USER_RECEIVE_PACKET)
async def copy_on_success(ctx: Ctx, stanza: Element, pctx: PacketContext) -> Element:
    """The reply to a noted IQ: on success, update the other copy before it is delivered."""
    outcome = PENDING.reply(ctx.sessions, stanza, pctx.session)
    if outcome is None or not outcome[1]:
        return stanza
    owner = pctx.session.jid.bare
    lock = LOCKS.lock(owner)
    async with lock:
        if outcome[0] == "legacy":
            await legacy_to_pep(ctx, owner)
        else:
            await pep_to_legacy(ctx, owner)
    return stanza


@module.fold(hooks.DISCO_INFO)
async def disco_info(ctx: Ctx, info: DiscoInfo, query: DiscoQuery) -> DiscoInfo:
    """The account advertises that its two bookmark copies are kept in sync."""
    if not query.to.local or query.node is not None:
        return info
    return replace(info, features=(*info.features, FEATURE_COMPAT))
