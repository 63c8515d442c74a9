"""XEP-0163: Personal Eventing Protocol — every account is a small XEP-0060 pubsub service.

Used by OMEMO (XEP-0384), avatars (XEP-0084), user location, nicknames, bookmarks
(XEP-0402) and private storage (XEP-0223). IQs go to the owner's bare JID (no 'to': one's
own account).

- **Publish** (owner only; anyone else: ``forbidden``) creates the node on first use
  ("auto-create"), with the defaults of the options or the ``<publish-options/>`` form
  (XEP-0060 §7.1.5). On an existing node those fields are preconditions: a different
  setting gives ``conflict`` + ``<precondition-not-met/>``, and so does a field this
  service does not know. An item without id gets a generated one; an item with the id of
  a stored item replaces it. A node keeps its ``pubsub#max_items`` newest items ("max":
  the ``max_items_limit`` option).
- **Items** (``<items node [max_items]/>``, or with ``<item id/>`` children) and
  disco#info/#items of nodes are for those the node's access model lets in: the owner;
  ``open``: anyone; ``presence``: contacts the owner's roster shows with subscription
  ``from`` or ``both`` (others: ``not-authorized`` + ``<presence-subscription-required/>``);
  ``whitelist``: the owner only (others: ``not-allowed`` + ``<closed-node/>``). An unknown
  node is ``item-not-found``. A result carries at most about 1 MiB of payloads (the newest
  items first). Results are oldest first.
- **Retract** (``notify`` attribute, else ``pubsub#notify_retract``), **create** (with an
  optional ``<configure/>`` form), and, in ``pubsub#owner``, **configure** (get the form /
  submit it), **default**, **delete** and **purge**: owner only.
- **Notifications** (headline messages from the owner's bare JID, XEP-0163 §4) go to the
  owner's available resources (see ``notify_all_owner_resources``) and to the available
  resources, with non-negative priority, of the local contacts the access model lets in
  (presence subscription; never for ``whitelist``) whose XEP-0115 caps include
  ``<node>+notify``. A resource that becomes available, or whose caps newly include such a
  feature, gets the last item of each node it is interested in (``on_sub_and_presence``),
  stamped with ``<delay/>``. So does each available resource of a user who has just been
  granted a presence subscription to the owner (a new auto-subscriber: ``on_sub`` too).
- **Caps.** An available presence with ``<c hash node ver/>`` is looked up in a cache
  (memory, then the ``caps`` table). An unknown one is asked for in the background
  (disco#info to the client's full JID, node ``node#ver``, from the host) and trusted only
  if the answer hashes to ``ver`` (XEP-0115 §5); a session's presences are handled in
  order. A presence without caps keeps the session's interests.
- **Remote contacts** (federation): a resource on another server that sends available
  presence with caps to a local user whose roster shows it with subscription ``from`` or
  ``both`` is asked the same way (disco#info from the host,
  over s2s) and then gets notifications of the nodes of the local owners whose roster
  shows its account with subscription ``from`` or ``both``, like a local contact's
  resource (and, when it becomes available, the last item of its interests of the user
  its presence went to). Its unavailable presence forgets it; at most 10,000 remote
  resources are remembered per server process (oldest forgotten first).

Not implemented: explicit subscriptions (``subscribe`` and the like answer
``feature-not-implemented``), affiliations (so a whitelist holds only the owner), the
``roster`` and ``authorize`` access models, instant nodes, RSM paging of items, collection
nodes.

Other modules can read and write nodes through :data:`~xmppd_modules.mod_pep.store.PEP`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Final

from xmppd.api import (
    JID,
    IqRequest,
    IqTimeout,
    Priority,
    Scope,
    ServiceKey,
    Session,
    SessionKey,
    StanzaError,
    hooks,
    ns,
)
from xmppd.api.hooks import DiscoIdentity, DiscoInfo, DiscoItem, DiscoQuery, StanzaEvent, UserEvent
from xmppd.api.stanza import Element, child, child_text, element, new_id, parse, payload
from xmppd_modules.mod_pep.caps import Caps, interested_nodes, parse_caps, verified_interests
from xmppd_modules.mod_pep.common import (
    ACCESS_MODELS,
    NOTIFY,
    NS_OWNER,
    NS_PUBSUB,
    Ctx,
    form_rules,
    module,
)
from xmppd_modules.mod_pep.remote import REMOTE, RemoteResource, RemoteResources
from xmppd_modules.mod_pep.store import PEP, PepStore, StoredItem
from xmppd_modules.mod_roster import ROSTER
from xmppd_modules.pubsub_common import errors
from xmppd_modules.pubsub_common.common import RESULT_BYTES
from xmppd_modules.pubsub_common.config import (
    NodeConfig,
    UnknownField,
    apply,
    config_form,
    node_config,
    publish_options,
    unmet,
)
from xmppd_modules.pubsub_common.protocol import (
    action_of,
    items_event,
    items_result,
    local_name,
    node_event,
    node_name,
    notifications,
    publication,
    retract_event,
    retraction,
    should_notify_retract,
)

__all__ = ["PEP", "PepStore", "module"]

FEATURES: Final = tuple(
    f"{NS_PUBSUB}#{feature}"
    for feature in (
        "access-open",
        "access-presence",
        "access-whitelist",
        "auto-create",
        "auto-subscribe",
        "config-node",
        "create-and-configure",
        "create-nodes",
        "delete-items",
        "delete-nodes",
        "filtered-notifications",
        "item-ids",
        "last-published",
        "persistent-items",
        "presence-notifications",
        "publish",
        "publish-options",
        "purge-nodes",
        "retract-items",
        "retrieve-default",
        "retrieve-items",
    )
)
"""XEP-0060 features advertised on every account (XEP-0163 §6.1)."""

_P: Final = f"{{{NS_PUBSUB}}}"
_O: Final = f"{{{NS_OWNER}}}"
_UNSUPPORTED: Final = {
    "subscribe": "subscribe",
    "unsubscribe": "subscribe",
    "options": "subscription-options",
    "subscriptions": "retrieve-subscriptions",
    "affiliations": "retrieve-affiliations",
}
"""Pubsub actions not implemented, and the feature named in ``<unsupported/>``."""


# ----------------------------------------------------------------------------- sessions


@dataclass(frozen=True, slots=True)
class _Interests:
    """A session's XEP-0115 state: its verified ``+notify`` features, the caps they come
    from, and how many caps lookups it has caused."""

    features: frozenset[str] = frozenset()
    adopted: tuple[str, str] | None = None
    queries: int = 0


INTERESTS: Final[SessionKey[_Interests]] = SessionKey("pep.interests", _Interests())


@dataclass(slots=True)
class _Lookup:
    """Caps lookups under way for one session, handled one at a time, in order. Lives
    where the lookup runs (the node of the session's stream), not in the registry."""

    pending: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


LOOKUPS: Final[ServiceKey[dict[JID, _Lookup]]] = ServiceKey("pep.lookups")


def _features(ctx: Ctx, session: Session) -> frozenset[str]:
    return ctx.sessions.get_state(session, INTERESTS).features


def _store(ctx: Ctx) -> PepStore:
    return ctx.service(PEP)


def _default_config(ctx: Ctx) -> NodeConfig:
    return NodeConfig(
        access_model=ctx.options.default_access_model,
        max_items=min(ctx.options.default_max_items, ctx.options.max_items_limit),
    )


# ----------------------------------------------------------------------------- access


async def _allowed_models(ctx: Ctx, owner: JID, requester: JID) -> frozenset[str]:
    """The access models whose nodes ``requester`` may read."""
    if requester.bare == owner:
        return frozenset(ACCESS_MODELS)
    item = await ctx.service(ROSTER).item(owner, requester)
    if item is not None and item.has_from:
        return frozenset({"open", "presence"})
    return frozenset({"open"})


async def _check_access(ctx: Ctx, owner: JID, requester: JID, config: NodeConfig) -> None:
    if config.access_model in await _allowed_models(ctx, owner, requester):
        return
    if config.access_model == "presence":
        raise errors.PRESENCE_SUBSCRIPTION_REQUIRED()
    raise errors.CLOSED_NODE()


async def _recipients(ctx: Ctx, owner: JID, name: str, config: NodeConfig) -> list[JID]:
    """Who gets a notification about node ``name`` now (XEP-0163 §4)."""
    if not config.deliver_notifications:
        return []
    wanted = name + NOTIFY
    everyone = ctx.options.notify_all_owner_resources
    found = [
        s.jid for s in ctx.sessions.available(owner) if everyone or wanted in _features(ctx, s)
    ]
    if config.access_model not in ("presence", "open"):
        return found
    remote = ctx.service(REMOTE)
    for item in (await ctx.service(ROSTER).items(owner)).values():
        if not item.has_from or item.contact == owner:
            continue
        if not ctx.is_local(item.contact):
            for jid, resource in remote.of(item.contact):
                if resource.priority >= 0 and wanted in resource.features:
                    found.append(jid)
            continue
        for session in ctx.sessions.available(item.contact):
            if session.priority >= 0 and wanted in _features(ctx, session):
                found.append(session.jid)
    return found


# ----------------------------------------------------------------------------- events


async def _notify(
    ctx: Ctx, owner: JID, recipients: list[JID], event: Element, *, delayed: int | None = None
) -> None:
    """A headline carrying ``event`` from the owner's bare JID to each recipient."""
    for message in notifications(owner, recipients, event, delayed=delayed):
        await ctx.send(message)


# ----------------------------------------------------------------------------- parsing


def _unsupported(action: Element) -> StanzaError:
    local = local_name(action)
    return errors.unsupported(_UNSUPPORTED.get(local, local))


def _require_owner(req: IqRequest) -> None:
    if not req.is_from_owner:
        raise errors.FORBIDDEN("only the account owner may do this")


# ----------------------------------------------------------------------------- IQ handlers


@module.iq("get", NS_PUBSUB, "pubsub", to=Scope.BARE)
async def pubsub_get(ctx: Ctx, req: IqRequest) -> Element:
    action = action_of(req.payload)
    if action.tag == f"{_P}items":
        return await _get_items(ctx, req, action)
    raise _unsupported(action)


@module.iq("set", NS_PUBSUB, "pubsub", to=Scope.BARE)
async def pubsub_set(ctx: Ctx, req: IqRequest) -> Element:
    action = action_of(req.payload, besides=(f"{_P}publish-options", f"{_P}configure"))
    if action.tag == f"{_P}publish":
        _require_owner(req)
        return await _publish(ctx, req, action)
    if action.tag == f"{_P}retract":
        _require_owner(req)
        return await _retract(ctx, req, action)
    if action.tag == f"{_P}create":
        _require_owner(req)
        return await _create(ctx, req, action)
    raise _unsupported(action)


@module.iq("get", NS_OWNER, "pubsub", to=Scope.BARE)
async def owner_get(ctx: Ctx, req: IqRequest) -> Element:
    action = action_of(req.payload)
    if action.tag == f"{_O}configure":
        _require_owner(req)
        name = node_name(action)
        config = await _store(ctx).node(req.to.bare, name)
        if config is None:
            raise errors.NODE_NOT_FOUND()
        result = payload(NS_OWNER, "pubsub")
        child(result, "configure", {"node": name}).append(config_form(config, form_rules(ctx)))
        return req.result(result)
    if action.tag == f"{_O}default":
        _require_owner(req)
        result = payload(NS_OWNER, "pubsub")
        child(result, "default").append(config_form(_default_config(ctx), form_rules(ctx)))
        return req.result(result)
    raise _unsupported(action)


@module.iq("set", NS_OWNER, "pubsub", to=Scope.BARE)
async def owner_set(ctx: Ctx, req: IqRequest) -> Element:
    action = action_of(req.payload)
    if action.tag == f"{_O}configure":
        _require_owner(req)
        return await _configure(ctx, req, action)
    if action.tag == f"{_O}delete":
        _require_owner(req)
        return await _delete(ctx, req, action)
    if action.tag == f"{_O}purge":
        _require_owner(req)
        return await _purge(ctx, req, action)
    raise _unsupported(action)


# ----------------------------------------------------------------------------- use cases


async def _get_items(ctx: Ctx, req: IqRequest, action: Element) -> Element:
    """XEP-0060 §6.5: all items, the newest ``max_items``, or those named."""
    assert req.from_ is not None
    owner = req.to.bare
    name = node_name(action)
    config = await _store(ctx).node(owner, name)
    if config is None:
        raise errors.NODE_NOT_FOUND()
    await _check_access(ctx, owner, req.from_, config)
    limit = config.limit(ctx.options.max_items_limit)
    ids = [el.get("id", "") for el in action.findall(f"{_P}item")]
    if any(not item_id for item_id in ids):
        raise errors.ITEM_REQUIRED()
    newest = limit
    if (asked := action.get("max_items")) is not None:
        try:
            newest = min(int(asked), limit)
        except ValueError:
            newest = 0
        if newest < 1:
            raise errors.BAD_REQUEST("max_items must be a positive number")
    page = await _store(ctx).items(owner, name, newest=newest, ids=ids[:limit], budget=RESULT_BYTES)
    if ids and not page.items:
        raise errors.ITEM_NOT_FOUND()
    return req.result(items_result(name, [(i.item_id, i.payload) for i in page.items]))


async def _publish(ctx: Ctx, req: IqRequest, action: Element) -> Element:
    """XEP-0060 §7.1, with auto-create and publish-options."""
    owner = req.to.bare
    name = node_name(action)
    item = publication(action, max_size=ctx.options.max_item_size)
    limit = ctx.options.max_items_limit
    try:
        wanted = publish_options(req.payload.find(f"{_P}publish-options"), form_rules(ctx))
    except UnknownField as exc:
        raise errors.PRECONDITION_NOT_MET(f"unsupported publish option {exc}") from None
    store = _store(ctx)
    lock = store.lock(owner)
    async with lock:
        config = await store.node(owner, name)
        if config is None:
            config = apply(_default_config(ctx), wanted)
            await _new_node(ctx, owner, name, config)
        elif bad := unmet(config, wanted):
            raise errors.PRECONDITION_NOT_MET(
                "the node is configured differently: " + ", ".join(bad)
            )
        if config.persist_items:
            await store.publish(owner, name, item.item_id, item.payload, keep=config.limit(limit))
        recipients = await _recipients(ctx, owner, name, config)
    event = items_event(name, item.item_id, item.payload if config.deliver_payloads else None)
    await _notify(ctx, owner, recipients, event)
    result = payload(NS_PUBSUB, "pubsub")
    child(child(result, "publish", {"node": name}), "item", {"id": item.item_id})
    return req.result(result)


async def _new_node(ctx: Ctx, owner: JID, name: str, config: NodeConfig) -> None:
    store = _store(ctx)
    if len(await store.nodes(owner)) >= ctx.options.max_nodes:
        raise errors.MAX_NODES_EXCEEDED()
    await store.save_node(owner, name, config, limit=ctx.options.max_items_limit)


async def _create(ctx: Ctx, req: IqRequest, action: Element) -> Element:
    """XEP-0060 §8.1, with an optional ``<configure/>`` form (create-and-configure)."""
    owner = req.to.bare
    if not action.get("node"):
        raise errors.INSTANT_NODES_UNSUPPORTED("instant nodes: no")
    name = node_name(action)
    changes = node_config(req.payload.find(f"{_P}configure"), form_rules(ctx))
    store = _store(ctx)
    lock = store.lock(owner)
    async with lock:
        if await store.node(owner, name) is not None:
            raise errors.NODE_EXISTS("the node exists")
        await _new_node(ctx, owner, name, apply(_default_config(ctx), changes))
    return req.result()


async def _retract(ctx: Ctx, req: IqRequest, action: Element) -> Element:
    """XEP-0060 §7.2."""
    owner = req.to.bare
    name = node_name(action)
    item_id = retraction(action)
    store = _store(ctx)
    lock = store.lock(owner)
    async with lock:
        config = await store.node(owner, name)
        if config is None or not await store.retract(owner, name, item_id):
            raise errors.ITEM_NOT_FOUND()
        recipients = await _recipients(ctx, owner, name, config)
    if should_notify_retract(action, config.notify_retract) and recipients:
        await _notify(ctx, owner, recipients, retract_event(name, item_id))
    return req.result()


@asynccontextmanager
async def _existing_node(ctx: Ctx, owner: JID, name: str) -> AsyncIterator[NodeConfig]:
    """The owner's node ``name``, with the owner's nodes locked for the block;
    ``item-not-found`` when there is no such node."""
    store = _store(ctx)
    async with store.lock(owner):
        config = await store.node(owner, name)
        if config is None:
            raise errors.NODE_NOT_FOUND()
        yield config


async def _configure(ctx: Ctx, req: IqRequest, action: Element) -> Element:
    """XEP-0060 §8.2.4: submit the node configuration form (or cancel)."""
    owner = req.to.bare
    name = node_name(action)
    form = action.find(f"{{{ns.DATA_FORMS}}}x")
    if form is None:
        raise errors.BAD_REQUEST("no configuration form")
    if form.get("type") == "cancel":
        return req.result()
    changes = node_config(action, form_rules(ctx))
    async with _existing_node(ctx, owner, name) as config:
        await _store(ctx).save_node(
            owner, name, apply(config, changes), limit=ctx.options.max_items_limit
        )
    return req.result()


async def _delete(ctx: Ctx, req: IqRequest, action: Element) -> Element:
    """XEP-0060 §8.4: the node and its items go; subscribers are told."""
    owner = req.to.bare
    name = node_name(action)
    async with _existing_node(ctx, owner, name) as config:
        recipients = await _recipients(ctx, owner, name, config)
        await _store(ctx).delete_node(owner, name)
    if config.notify_delete and recipients:
        await _notify(ctx, owner, recipients, node_event("delete", name))
    return req.result()


async def _purge(ctx: Ctx, req: IqRequest, action: Element) -> Element:
    """XEP-0060 §8.5: every item goes; subscribers are told."""
    owner = req.to.bare
    name = node_name(action)
    async with _existing_node(ctx, owner, name) as config:
        await _store(ctx).purge(owner, name)
        recipients = await _recipients(ctx, owner, name, config)
    if recipients:
        await _notify(ctx, owner, recipients, node_event("purge", name))
    return req.result()


# ----------------------------------------------------------------------------- caps


def _priority(presence: Element) -> int:
    try:
        return int(child_text(presence, "priority") or 0)
    except ValueError:
        return 0


# Early: mod_presence handles (and stops) broadcast presence at the default priority.
@module.on(hooks.PRESENCE_OUT, priority=Priority.EARLY)
async def presence_sent(ctx: Ctx, event: StanzaEvent) -> None:
    """A session's available broadcast presence: learn its interests from its caps."""
    session, stanza = event.origin, event.stanza
    if session is None or stanza.get("to") is not None or stanza.get("type") is not None:
        return None
    initial = not session.is_available
    priority = _priority(stanza)
    state = ctx.sessions.get_state(session, INTERESTS)
    lookups = ctx.service(LOOKUPS)
    lookup = lookups.get(session.jid)
    pending = 0 if lookup is None else lookup.pending
    claim = parse_caps(stanza)
    if claim is None or (pending == 0 and claim.key == state.adopted):
        # No news about its interests (the usual presence update, or no caps at all).
        if initial and state.features and pending == 0 and priority >= 0:
            await _send_last_items(ctx, session, interested_nodes(state.features))
        return None
    known = _store(ctx).cached_interests(claim.key)
    if known is not None and pending == 0:
        await _adopt(ctx, session, claim, known, initial=initial, priority=priority)
        return None
    # The client answers our query on this same stream, whose worker runs this handler:
    # look it up in the background. Later presences of the session queue behind it.
    if lookup is None:
        lookup = lookups[session.jid] = _Lookup()
    lookup.pending += 1
    ctx.spawn(_learn(ctx, session, lookup, claim, initial, priority), name="mod_pep caps")
    return None


async def _learn(
    ctx: Ctx, session: Session, lookup: _Lookup, claim: Caps, initial: bool, priority: int
) -> None:
    try:
        async with lookup.lock:
            interests = await _resolve(ctx, session, claim)
            if interests is not None and ctx.sessions.is_current(session):
                await _adopt(ctx, session, claim, interests, initial=initial, priority=priority)
    finally:
        lookup.pending -= 1
        lookups = ctx.service(LOOKUPS)
        if lookup.pending == 0 and lookups.get(session.jid) is lookup:
            del lookups[session.jid]


async def _resolve(ctx: Ctx, session: Session, claim: Caps) -> frozenset[str] | None:
    """The verified interests behind ``claim``: stored, or asked of the client."""
    store = _store(ctx)
    known = await store.stored_interests(claim.key)
    if known is not None:
        return known
    state = ctx.sessions.get_state(session, INTERESTS)
    if state.queries >= ctx.options.max_caps_queries:
        ctx.log.debug("caps of %s: too many lookups for one session", session.jid)
        return None
    ctx.sessions.set_state(session, INTERESTS, replace(state, queries=state.queries + 1))
    iq = element("iq", {"type": "get", "id": new_id(), "from": ctx.domain, "to": str(session.jid)})
    iq.append(payload(ns.DISCO_INFO, "query", {"node": f"{claim.node}#{claim.ver}"}))
    try:
        reply = await ctx.request(iq, timeout=ctx.options.caps_timeout)
    except IqTimeout:
        ctx.log.debug("caps of %s: no disco#info answer", session.jid)
        return None
    query = reply.find(f"{{{ns.DISCO_INFO}}}query")
    if reply.get("type") != "result" or query is None:
        return None
    interests = verified_interests(query, claim)
    if interests is None:
        ctx.log.info("caps of %s do not match its disco#info; not trusted", session.jid)
        return None
    await store.store_interests(claim.key, interests)
    return interests


async def _adopt(
    ctx: Ctx,
    session: Session,
    claim: Caps,
    interests: frozenset[str],
    *,
    initial: bool,
    priority: int,
) -> None:
    """Take the session's new interests; send the last items of the nodes new among them."""
    state = ctx.sessions.get_state(session, INTERESTS)
    before = frozenset() if initial else state.features
    ctx.sessions.set_state(
        session, INTERESTS, replace(state, features=interests, adopted=claim.key)
    )
    if priority < 0:
        return
    fresh = interested_nodes(interests) - interested_nodes(before)
    if fresh:
        await _send_last_items(ctx, session, fresh)


async def _send_last_items(ctx: Ctx, session: Session, names: frozenset[str]) -> None:
    """XEP-0163 §4.3.2: the last item of each node called one of ``names`` of the user
    or of a contact whose presence the user receives, if the user may read it."""
    user = session.jid.bare
    owners = [user]
    for item in (await ctx.service(ROSTER).items(user)).values():
        contact = item.contact
        if item.has_to and contact.local and contact.domain == ctx.domain and contact != user:
            owners.append(contact)
    await _send_last_items_of(ctx, session.jid, owners, names, when=("on_sub_and_presence",))


async def _send_last_items_of(
    ctx: Ctx, to: JID, owners: list[JID], names: frozenset[str], *, when: tuple[str, ...]
) -> None:
    """The last item of each node of ``owners`` called one of ``names`` whose
    ``pubsub#send_last_published_item`` is one of ``when``, if the user of the full
    JID ``to`` (a local session or a remote resource) may read it, to ``to``."""
    user = to.bare
    roster = ctx.service(ROSTER)
    store = _store(ctx)
    for owner, name, config in await store.matching(owners, names):
        if config.send_last_published_item not in when:
            continue
        if not config.deliver_notifications:
            continue
        if owner != user:
            if config.access_model not in ("presence", "open"):
                continue
            theirs = await roster.item(owner, user)
            if theirs is None or not theirs.has_from:
                continue
        last: StoredItem | None = await store.last_item(owner, name)
        if last is None:
            continue
        data = last.payload if config.deliver_payloads else None
        event = items_event(name, last.item_id, data)
        await _notify(ctx, owner, [to], event, delayed=last.published_at)


# ----------------------------------------------------------------------------- new contacts


# Early: mod_presence handles (and stops) inbound subscription presence at the default
# priority. The owner's roster already shows the approval (the owner's server updates it
# before routing 'subscribed'); the subscriber's is updated right after this handler.
@module.on(hooks.PRESENCE_TO_BARE, priority=Priority.EARLY)
async def subscription_approved(ctx: Ctx, event: StanzaEvent) -> None:
    await _new_subscriber(ctx, event)


@module.on(hooks.PRESENCE_TO_FULL, priority=Priority.EARLY)
async def subscription_approved_to_full(ctx: Ctx, event: StanzaEvent) -> None:
    # RFC 6121 §3: a subscription stanza to a full JID counts as one to the bare JID.
    await _new_subscriber(ctx, event)


async def _new_subscriber(ctx: Ctx, event: StanzaEvent) -> None:
    """XEP-0163 §4.3.2: "a PEP service MUST send the last published item to all new
    subscribers". With auto-subscribe, a user who was just granted a presence
    subscription to a local owner is one: each of the user's available resources gets the
    last item of the owner's nodes it is interested in (``on_sub`` and
    ``on_sub_and_presence``), if the access model lets the user in. OMEMO clients rely on
    this to learn a new contact's device list."""
    if event.stanza.get("type") != "subscribed":
        return
    owner, user = event.from_.bare, event.to.bare
    if not owner.local or owner.domain != ctx.domain or owner == user:
        return
    mine = await ctx.service(ROSTER).item(user, owner)
    if mine is None or not mine.ask or mine.has_to:
        return  # no pending request: mod_presence ignores this 'subscribed'
    for session in ctx.sessions.available(user):
        names = interested_nodes(_features(ctx, session))
        if session.priority >= 0 and names:
            when = ("on_sub", "on_sub_and_presence")
            await _send_last_items_of(ctx, session.jid, [owner], names, when=when)


# ----------------------------------------------------------------------------- remote contacts


@module.on(hooks.PRESENCE_TO_BARE, priority=Priority.EARLY)
async def remote_presence(ctx: Ctx, event: StanzaEvent) -> None:
    await _remote_presence(ctx, event)


@module.on(hooks.PRESENCE_TO_FULL, priority=Priority.EARLY)
async def remote_presence_to_full(ctx: Ctx, event: StanzaEvent) -> None:
    await _remote_presence(ctx, event)


async def _remote_presence(ctx: Ctx, event: StanzaEvent) -> None:
    """Presence from a resource on another server to a local user: remember what the
    resource wants notifications about (its caps), for the local owners whose roster
    shows it with a subscription ``from``; forget it when it becomes unavailable."""
    sender, kind = event.from_, event.stanza.get("type")
    if not sender.resource or ctx.is_local(sender) or kind not in (None, "unavailable"):
        return
    table = ctx.service(REMOTE)
    if kind == "unavailable":
        table.remove(sender)
        return
    if not ctx.is_local(event.to):
        return
    item = await ctx.service(ROSTER).item(event.to.bare, sender.bare)
    if item is None or not item.has_from:
        return  # not a contact that may get our user's notifications (a room occupant...)
    priority = _priority(event.stanza)
    known = table.get(sender)
    claim = parse_caps(event.stanza)
    if claim is None or (known is not None and claim.key == known.adopted):
        features = known.features if known is not None else frozenset()
        table.set(sender, RemoteResource(features, claim.key if claim else None, priority))
        return
    cached = _store(ctx).cached_interests(claim.key)
    if cached is not None:
        await _adopt_remote(ctx, table, sender, event.to.bare, claim, cached, priority)
        return
    table.set(sender, RemoteResource(frozenset(), None, priority))
    if sender in table.pending:
        return  # one lookup at a time per resource; its next presence asks again
    table.pending.add(sender)
    ctx.spawn(
        _learn_remote(ctx, table, sender, event.to.bare, claim, priority),
        name="mod_pep remote caps",
    )


async def _learn_remote(
    ctx: Ctx,
    table: RemoteResources,
    sender: JID,
    user: JID,
    claim: Caps,
    priority: int,
) -> None:
    try:
        store = _store(ctx)
        interests = await store.stored_interests(claim.key)
        if interests is None:
            iq = element(
                "iq", {"type": "get", "id": new_id(), "from": ctx.domain, "to": str(sender)}
            )
            iq.append(payload(ns.DISCO_INFO, "query", {"node": f"{claim.node}#{claim.ver}"}))
            try:
                reply = await ctx.request(iq, timeout=ctx.options.caps_timeout)
            except IqTimeout:
                ctx.log.debug("caps of %s: no disco#info answer", sender)
                return
            query = reply.find(f"{{{ns.DISCO_INFO}}}query")
            if reply.get("type") != "result" or query is None:
                return
            interests = verified_interests(query, claim)
            if interests is None:
                ctx.log.info("caps of %s do not match its disco#info; not trusted", sender)
                return
            await store.store_interests(claim.key, interests)
        if table.get(sender) is not None:  # still available
            await _adopt_remote(ctx, table, sender, user, claim, interests, priority)
    finally:
        table.pending.discard(sender)


async def _adopt_remote(
    ctx: Ctx,
    table: RemoteResources,
    sender: JID,
    user: JID,
    claim: Caps,
    interests: frozenset[str],
    priority: int,
) -> None:
    """Take the remote resource's interests; it gets the last item of each node, new
    among its interests, of the local user its presence went to (if it may read it)."""
    known = table.get(sender)
    before = known.features if known is not None else frozenset()
    table.set(sender, RemoteResource(interests, claim.key, priority))
    fresh = interested_nodes(interests) - interested_nodes(before)
    if priority >= 0 and fresh:
        await _send_last_items_of(ctx, sender, [user], fresh, when=("on_sub_and_presence",))


# ----------------------------------------------------------------------------- discovery


@module.fold(hooks.DISCO_INFO)
async def disco_info(ctx: Ctx, info: DiscoInfo, query: DiscoQuery) -> DiscoInfo:
    """The account: identity pubsub/pep and the pubsub features (XEP-0163 §6.1); one of
    its nodes: identity pubsub/leaf, for those who may read it."""
    if not query.to.local:
        return info
    if query.node is None:
        return replace(
            info,
            identities=(*info.identities, DiscoIdentity("pubsub", "pep")),
            features=(*info.features, *FEATURES),
        )
    owner = query.to.bare
    config = await _store(ctx).node(owner, query.node)
    if config is None:
        return info
    if config.access_model not in await _allowed_models(ctx, owner, query.from_):
        return info
    return replace(
        info,
        identities=(*info.identities, DiscoIdentity("pubsub", "leaf")),
        features=(*info.features, NS_PUBSUB),
    )


@module.fold(hooks.DISCO_ITEMS)
async def disco_items(
    ctx: Ctx, items: tuple[DiscoItem, ...], query: DiscoQuery
) -> tuple[DiscoItem, ...]:
    """The account's nodes the requester may read (XEP-0060 §5.2), or a node's item ids
    (§5.5)."""
    if not query.to.local:
        return items
    owner = query.to.bare
    store = _store(ctx)
    nodes = await store.nodes(owner)
    if not nodes:
        return items
    allowed = await _allowed_models(ctx, owner, query.from_)
    if query.node is None:
        found = [
            DiscoItem(owner, node=name, name=config.title or None)
            for name, config in sorted(nodes.items())
            if config.access_model in allowed
        ]
        return (*items, *found)
    config = nodes.get(query.node)
    if config is None or config.access_model not in allowed:
        return items
    ids = await store.item_ids(owner, query.node, limit=config.limit(ctx.options.max_items_limit))
    return (*items, *(DiscoItem(owner, name=item_id) for item_id in ids))


# ----------------------------------------------------------------------------- lifecycle


@module.on_load
async def provide(ctx: Ctx) -> None:
    ctx.provide(PEP, PepStore(ctx))
    ctx.provide(LOOKUPS, {})
    ctx.provide(REMOTE, RemoteResources())


@module.on(hooks.USER_REGISTERED)
async def fresh_account(ctx: Ctx, event: UserEvent) -> None:
    # An account deleted by another process (the CLI) may have left its nodes cached.
    _store(ctx).forget_cached(event.jid)


@module.on(hooks.USER_REMOVED)
async def forget(ctx: Ctx, event: UserEvent) -> None:
    await _store(ctx).forget_user(event.jid)


@module.fold(hooks.USER_EXPORT)
async def export(ctx: Ctx, parts: tuple[Element, ...], event: UserEvent) -> tuple[Element, ...]:
    """XEP-0227: every PEP node with its items, as ``<pubsub><items node>``."""
    store = ctx.service(PEP)
    nodes = await store.nodes(event.jid)
    if not nodes:
        return parts
    pubsub = payload(NS_PUBSUB, "pubsub")
    for name in sorted(nodes):
        page = await store.items(
            event.jid, name, newest=ctx.options.max_items_limit, budget=1 << 62
        )
        items = child(pubsub, "items", {"node": name})
        for stored in page.items:
            item = child(items, "item", {"id": stored.item_id})
            item.append(parse(stored.payload.encode("utf-8")))
    return (*parts, pubsub)
