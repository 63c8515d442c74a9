"""XEP-0060: Publish-Subscribe — a service of leaf nodes at ``pubsub.<host>``.

The service registers its domain (option ``domain``; listed with ``name`` in the host's
disco#items) through ``ctx.serve`` and shares PEP's node store, configuration forms and
error conditions (:mod:`xmppd_modules.pubsub_common`); its own tables hold the nodes and items
(keyed by the service's domain), the affiliations and the subscriptions.

- **Create** (``<create node/>``, or ``<create/>`` for an instant node whose generated
  name the result carries; optionally with a ``<configure/>`` form) is for those the
  ``create_nodes`` rule lets in (others: ``forbidden``); the creator becomes the owner.
  An existing name is ``conflict``.
- **Publish** is for owners and publishers (others: ``forbidden``). Publishing to a node
  that does not exist creates it (auto-create) for those who may create nodes, with the
  ``<publish-options/>`` fields as its configuration; on an existing node those fields are
  preconditions (``conflict`` + ``<precondition-not-met/>``, also for a field the service
  does not know). A node keeps its ``pubsub#max_items`` newest items ("max": the
  ``max_items_limit`` option); a *transient* node (``pubsub#persist_items`` = 0) keeps
  none: its items are only notified, and retrieving, retracting or purging its items is
  ``feature-not-implemented`` + ``<unsupported feature='persistent-items'/>``.
- **Retract** (owners and publishers; notify with ``notify='true'`` or
  ``pubsub#notify_retract``), **purge**, **configure** (form get/submit), **delete**
  (subscribers are told, if ``pubsub#notify_delete``), and the ``#owner`` affiliations and
  subscriptions lists (get, and set as deltas): owners only.
- **Items** (all, the newest ``max_items``, or by id) and **subscribe** follow the
  node's access model: ``open``; ``presence`` (a node owner's roster on this host shows
  the requester with a presence subscription 'from' or 'both', else ``not-authorized`` +
  ``<presence-subscription-required/>``); ``whitelist`` (owners, publishers and members,
  else ``not-allowed`` + ``<closed-node/>``). Outcasts get ``forbidden``; owners,
  publishers and members always get in.
- **Subscribe** (``jid`` must have the requester's bare JID, else ``bad-request`` +
  ``<invalid-jid/>``), with an optional ``<options/>`` form; **unsubscribe**; the
  subscription **options** (get the ``pubsub#subscribe_options`` form, submit it; only
  ``pubsub#deliver`` is supported, other fields are ``bad-request`` +
  ``<invalid-options/>``); the user's own **subscriptions** and **affiliations**.
  A new subscriber gets the last item at once if ``pubsub#send_last_published_item`` is
  ``on_sub`` or ``on_sub_and_presence`` (the service does not track presence, so the
  latter means the former).
- **Notifications** are ``headline`` messages from the service to each subscribed JID
  whose ``pubsub#deliver`` is on, with the payload if ``pubsub#deliver_payloads``.
- **Discovery**: the service (identity pubsub/service, the features), a node
  (pubsub/leaf, with a ``pubsub#meta-data`` form), the nodes (disco#items) and a node's
  item ids, each to those who may read the node.
- The host's **admins** act as owners of every node.
- **Account removal** deletes the user's subscriptions and affiliations; a node whose
  only owner was the user is deleted (its subscribers are told); a node with other
  owners stays.

Not implemented: collection nodes, the ``authorize`` and ``roster`` access models (and so
pending subscriptions), several subscriptions of one JID to one node (SubIDs are given
but one per JID), ``publish-only`` affiliations, item expiry, presence-based delivery,
configuration-change notifications. The ``presence`` model is checked when a user
subscribes or reads, not again for each notification. Account removal is seen by the
service of the account's own host: an account of another host of this server keeps its
subscriptions here (notifications to it are dropped).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Final

from xmppd.api import (
    JID,
    InvalidJID,
    IqRequest,
    ServiceDomain,
    ServiceKey,
    StanzaError,
    by_domain,
    hooks,
    ns,
)
from xmppd.api.hooks import UserEvent
from xmppd.api.stanza import Element, child, error_reply, new_id, payload
from xmppd_modules.mod_pubsub.common import (
    Ctx,
    default_config,
    form_rules,
    module,
    service_domain,
)
from xmppd_modules.mod_pubsub.store import PubsubStore, Subscription
from xmppd_modules.mod_roster import ROSTER
from xmppd_modules.pubsub_common import errors
from xmppd_modules.pubsub_common.common import NS_OWNER, NS_PUBSUB, RESULT_BYTES
from xmppd_modules.pubsub_common.config import (
    NodeConfig,
    SubscriptionOptions,
    UnknownField,
    apply,
    config_form,
    node_config,
    options_form,
    publish_options,
    subscription_options,
    unmet,
)
from xmppd_modules.pubsub_common.protocol import (
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

__all__ = ["PUBSUB", "PubsubStore", "module"]

NODES_CHANGED: Final = "nodes"
"""Invalidation topic: nodes were deleted outside the service's own handling (account
removal, which runs on the cluster node where the account was removed)."""

PUBSUB: Final = ServiceKey[PubsubStore]("pubsub")
"""The PubSub service's store on a host."""

FEATURES: Final = tuple(
    f"{NS_PUBSUB}#{feature}"
    for feature in (
        "access-open",
        "access-presence",
        "access-whitelist",
        "auto-create",
        "config-node",
        "create-and-configure",
        "create-nodes",
        "delete-items",
        "delete-nodes",
        "instant-nodes",
        "item-ids",
        "last-published",
        "manage-subscriptions",
        "member-affiliation",
        "modify-affiliations",
        "outcast-affiliation",
        "persistent-items",
        "publish",
        "publish-options",
        "publisher-affiliation",
        "purge-nodes",
        "retract-items",
        "retrieve-affiliations",
        "retrieve-default",
        "retrieve-default-sub",
        "retrieve-items",
        "retrieve-subscriptions",
        "subscribe",
        "subscription-options",
    )
)
"""XEP-0060 features of the service (§10)."""

_P: Final = f"{{{NS_PUBSUB}}}"
_O: Final = f"{{{NS_OWNER}}}"
_META_DATA: Final = "http://jabber.org/protocol/pubsub#meta-data"
_READERS: Final = frozenset({"owner", "publisher", "member"})
_PUBLISHERS: Final = frozenset({"owner", "publisher"})
_SETTABLE: Final = frozenset({"owner", "publisher", "member", "outcast", "none"})


def _store(ctx: Ctx) -> PubsubStore:
    return ctx.service(PUBSUB)


def _requester(req: IqRequest) -> JID:
    assert req.from_ is not None  # served domains only see routed stanzas
    return req.from_


def _first(pubsub: Element) -> Element:
    """The element that says what to do (the first child: ``<configure/>``,
    ``<options/>`` and ``<publish-options/>`` follow it)."""
    for el in pubsub:
        if isinstance(el.tag, str):
            return el
    raise errors.BAD_REQUEST("no pubsub action")


def _jid_attr(action: Element, missing: errors.PubsubCondition) -> JID:
    value = action.get("jid")
    if not value:
        raise missing()
    try:
        return JID.parse(value)
    except InvalidJID:
        raise errors.INVALID_JID() from None


# ----------------------------------------------------------------------------- access


async def _affiliation(ctx: Ctx, name: str, jid: JID) -> str:
    """``jid``'s affiliation with node ``name``; the host's admins are owners."""
    if ctx.is_admin(jid):
        return "owner"
    return await _store(ctx).affiliation(name, jid)


async def _existing(ctx: Ctx, name: str) -> NodeConfig:
    config = await _store(ctx).node(_store(ctx).service, name)
    if config is None:
        raise errors.NODE_NOT_FOUND()
    return config


async def _has_presence_of_an_owner(ctx: Ctx, name: str, jid: JID) -> bool:
    """Whether a node owner's roster (on this host) shows ``jid`` with 'from'/'both'."""
    roster = ctx.optional_service(ROSTER)
    if roster is None:
        return False
    for owner, affiliation in (await _store(ctx).affiliations(name)).items():
        if affiliation != "owner" or owner.domain != ctx.domain or not owner.local:
            continue
        item = await roster.item(owner, jid.bare)
        if item is not None and item.has_from:
            return True
    return False


async def _check_access(ctx: Ctx, name: str, config: NodeConfig, jid: JID) -> str:
    """Raise unless ``jid`` may read node ``name`` (items, subscribe, disco); its
    affiliation otherwise."""
    affiliation = await _affiliation(ctx, name, jid)
    if affiliation == "outcast":
        raise errors.FORBIDDEN("you are banned from this node")
    if affiliation in _READERS or config.access_model == "open":
        return affiliation
    if config.access_model == "presence":
        if await _has_presence_of_an_owner(ctx, name, jid):
            return affiliation
        raise errors.PRESENCE_SUBSCRIPTION_REQUIRED()
    raise errors.CLOSED_NODE()


async def _may_read(ctx: Ctx, name: str, config: NodeConfig, jid: JID) -> bool:
    try:
        await _check_access(ctx, name, config, jid)
    except StanzaError:
        return False
    return True


async def _require(ctx: Ctx, name: str, jid: JID, allowed: frozenset[str]) -> NodeConfig:
    """The node's configuration if ``jid``'s affiliation is one of ``allowed``."""
    config = await _existing(ctx, name)
    if await _affiliation(ctx, name, jid) not in allowed:
        raise errors.FORBIDDEN("insufficient privileges on this node")
    return config


def _may_create(ctx: Ctx, jid: JID) -> bool:
    return ctx.may(ctx.options.create_nodes, jid)


# ----------------------------------------------------------------------------- notifications


async def _notify(
    ctx: Ctx, recipients: list[JID], event: Element, *, delayed: int | None = None
) -> None:
    store = _store(ctx)
    store.notified += len(recipients)
    for message in notifications(store.service, recipients, event, delayed=delayed):
        await ctx.send(message)


def _recipients(config: NodeConfig, subscriptions: list[Subscription]) -> list[JID]:
    if not config.deliver_notifications:
        return []
    return [s.jid for s in subscriptions if s.options.deliver]


async def _send_last_item(ctx: Ctx, name: str, config: NodeConfig, to: JID) -> None:
    """XEP-0060 §6.1.7: the last item to a new subscriber, stamped with ``<delay/>``."""
    if config.send_last_published_item == "never" or not config.deliver_notifications:
        return
    if not config.persist_items:
        return
    last = await _store(ctx).last_item(_store(ctx).service, name)
    if last is None:
        return
    data = last.payload if config.deliver_payloads else None
    await _notify(ctx, [to], items_event(name, last.item_id, data), delayed=last.published_at)


# ----------------------------------------------------------------------------- entity use cases


async def pubsub_get(ctx: Ctx, req: IqRequest) -> Element | None:
    action = _first(req.payload)
    tag = action.tag
    if tag == f"{_P}items":
        return await _items(ctx, req, action)
    if tag == f"{_P}subscriptions":
        return await _my_subscriptions(ctx, req, action)
    if tag == f"{_P}affiliations":
        return await _my_affiliations(ctx, req, action)
    if tag == f"{_P}options":
        return await _get_options(ctx, req, action)
    if tag == f"{_P}default":
        result = payload(NS_PUBSUB, "pubsub")
        child(result, "default").append(options_form(SubscriptionOptions()))
        return req.result(result)
    raise errors.unsupported(local_name(action))


async def pubsub_set(ctx: Ctx, req: IqRequest) -> Element | None:
    action = _first(req.payload)
    tag = action.tag
    if tag == f"{_P}publish":
        return await _publish(ctx, req, action)
    if tag == f"{_P}retract":
        return await _retract(ctx, req, action)
    if tag == f"{_P}create":
        return await _create(ctx, req, action)
    if tag == f"{_P}subscribe":
        return await _subscribe(ctx, req, action)
    if tag == f"{_P}unsubscribe":
        return await _unsubscribe(ctx, req, action)
    if tag == f"{_P}options":
        return await _set_options(ctx, req, action)
    raise errors.unsupported(local_name(action))


async def _items(ctx: Ctx, req: IqRequest, action: Element) -> Element:
    """§6.5: all items, the newest ``max_items``, or those named, oldest first."""
    name = node_name(action)
    config = await _existing(ctx, name)
    await _check_access(ctx, name, config, _requester(req))
    if not config.persist_items:
        raise errors.unsupported("persistent-items", "this node keeps no items")
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
    store = _store(ctx)
    page = await store.items(
        store.service, name, newest=newest, ids=ids[:limit], budget=RESULT_BYTES
    )
    if ids and not page.items:
        raise errors.ITEM_NOT_FOUND()
    return req.result(items_result(name, [(i.item_id, i.payload) for i in page.items]))


async def _publish(ctx: Ctx, req: IqRequest, action: Element) -> Element:
    """§7.1, with auto-create and publish-options (§7.1.5)."""
    name = node_name(action)
    item = publication(action, max_size=ctx.options.max_item_size)
    publisher = _requester(req)
    rules = form_rules(ctx)
    try:
        wanted = publish_options(req.payload.find(f"{_P}publish-options"), rules)
    except UnknownField as exc:
        raise errors.PRECONDITION_NOT_MET(f"unsupported publish option {exc}") from None
    store = _store(ctx)
    limit = ctx.options.max_items_limit
    lock = store.node_lock(name)
    async with lock:
        config = await store.node(store.service, name)
        if config is None:
            if not _may_create(ctx, publisher):
                raise errors.NODE_NOT_FOUND()
            config = apply(default_config(ctx), wanted)
            await _new_node(ctx, name, config, publisher)
        else:
            if await _affiliation(ctx, name, publisher) not in _PUBLISHERS:
                raise errors.FORBIDDEN("only owners and publishers publish here")
            if bad := unmet(config, wanted):
                raise errors.PRECONDITION_NOT_MET(
                    "the node is configured differently: " + ", ".join(bad)
                )
        if config.persist_items:
            await store.publish(
                store.service, name, item.item_id, item.payload, keep=config.limit(limit)
            )
        recipients = _recipients(config, await store.subscriptions(name))
        store.published += 1
    event = items_event(name, item.item_id, item.payload if config.deliver_payloads else None)
    await _notify(ctx, recipients, event)
    result = payload(NS_PUBSUB, "pubsub")
    child(child(result, "publish", {"node": name}), "item", {"id": item.item_id})
    return req.result(result)


async def _new_node(ctx: Ctx, name: str, config: NodeConfig, creator: JID) -> None:
    store = _store(ctx)
    if len(await store.nodes(store.service)) >= ctx.options.max_nodes:
        raise errors.MAX_NODES_EXCEEDED()
    await store.create(name, config, creator, limit=ctx.options.max_items_limit)


async def _create(ctx: Ctx, req: IqRequest, action: Element) -> Element:
    """§8.1: a named or instant node, with an optional ``<configure/>`` form."""
    creator = _requester(req)
    if not _may_create(ctx, creator):
        raise errors.FORBIDDEN("you may not create nodes on this service")
    configure = req.payload.find(f"{_P}configure")
    if configure is not None and configure.get("node") is not None:
        raise errors.BAD_REQUEST("<configure/> of a create has no 'node'")
    changes = node_config(configure, form_rules(ctx))
    instant = not action.get("node")
    name = new_id() if instant else node_name(action)
    store = _store(ctx)
    lock = store.node_lock(name)
    async with lock:
        if await store.node(store.service, name) is not None:
            raise errors.NODE_EXISTS("the node exists")
        await _new_node(ctx, name, apply(default_config(ctx), changes), creator)
    if not instant:
        return req.result()
    result = payload(NS_PUBSUB, "pubsub")
    child(result, "create", {"node": name})
    return req.result(result)


async def _retract(ctx: Ctx, req: IqRequest, action: Element) -> Element:
    """§7.2: owners and publishers delete an item."""
    name = node_name(action)
    item_id = retraction(action)
    store = _store(ctx)
    lock = store.node_lock(name)
    async with lock:
        config = await _require(ctx, name, _requester(req), _PUBLISHERS)
        if not config.persist_items:
            raise errors.unsupported("persistent-items", "this node keeps no items")
        if not await store.retract(store.service, name, item_id):
            raise errors.ITEM_NOT_FOUND()
        recipients = _recipients(config, await store.subscriptions(name))
    if should_notify_retract(action, config.notify_retract) and recipients:
        await _notify(ctx, recipients, retract_event(name, item_id))
    return req.result()


async def _subscribe(ctx: Ctx, req: IqRequest, action: Element) -> Element | None:
    """§6.1, with subscription options (§6.3.7); the last item follows the result."""
    requester = _requester(req)
    name = node_name(action)
    jid = _jid_attr(action, errors.INVALID_JID)
    if jid.bare != requester.bare and not ctx.is_admin(requester):
        raise errors.INVALID_JID("the subscribed JID must be yours")
    container = req.payload.find(f"{_P}options")
    if container is not None and (container.get("node") or container.get("jid")):
        raise errors.BAD_REQUEST("<options/> of a subscribe has no 'node' or 'jid'")
    changes = subscription_options(container)
    store = _store(ctx)
    lock = store.node_lock(name)
    async with lock:
        config = await _existing(ctx, name)
        await _check_access(ctx, name, config, jid)
        subscriptions = await store.subscriptions(name)
        current = next((s for s in subscriptions if s.jid == jid), None)
        if current is None and len(subscriptions) >= ctx.options.max_subscriptions:
            raise errors.TOO_MANY_SUBSCRIPTIONS()
        subid = new_id() if current is None else current.subid
        options = current.options if current is not None else SubscriptionOptions()
        if changes:
            options = SubscriptionOptions(**{**_as_dict(options), **changes})
        await store.subscribe(name, jid, subid, options)
    result = payload(NS_PUBSUB, "pubsub")
    attrs = {"node": name, "jid": str(jid), "subid": subid, "subscription": "subscribed"}
    child(result, "subscription", attrs)
    if container is not None:
        child(result, "options").append(options_form(options, form_type="result"))
    await ctx.send(_from_service(req, req.result(result)))
    if current is None and options.deliver:
        await _send_last_item(ctx, name, config, jid)
    return None


def _as_dict(options: SubscriptionOptions) -> dict[str, object]:
    return {"deliver": options.deliver}


def _from_service(req: IqRequest, reply: Element) -> Element:
    if reply.get("from") is None:
        reply.set("from", str(req.to))
    return reply


async def _unsubscribe(ctx: Ctx, req: IqRequest, action: Element) -> Element:
    """§6.2."""
    requester = _requester(req)
    name = node_name(action)
    jid = _jid_attr(action, errors.INVALID_JID)
    if jid.bare != requester.bare and not ctx.is_admin(requester):
        raise errors.FORBIDDEN("you may not unsubscribe someone else")
    store = _store(ctx)
    lock = store.node_lock(name)
    async with lock:
        await _existing(ctx, name)
        current = await store.subscription(name, jid)
        if current is None:
            raise errors.NOT_SUBSCRIBED()
        subid = action.get("subid")
        if subid is not None and subid != current.subid:
            raise errors.INVALID_SUBID()
        await store.unsubscribe(name, [jid])
    return req.result()


async def _subscriber(ctx: Ctx, req: IqRequest, action: Element) -> tuple[str, Subscription]:
    """The node and subscription an ``<options/>`` request is about (§6.3.4)."""
    requester = _requester(req)
    name = action.get("node")
    if not name:
        raise errors.NODEID_REQUIRED()
    jid = _jid_attr(action, errors.JID_REQUIRED)
    if jid.bare != requester.bare and not ctx.is_admin(requester):
        raise errors.FORBIDDEN("these are someone else's options")
    await _existing(ctx, name)
    current = await _store(ctx).subscription(name, jid)
    if current is None:
        raise errors.NOT_SUBSCRIBED()
    subid = action.get("subid")
    if subid is not None and subid != current.subid:
        raise errors.INVALID_SUBID()
    return name, current


async def _get_options(ctx: Ctx, req: IqRequest, action: Element) -> Element:
    """§6.3: the subscription options form."""
    name, current = await _subscriber(ctx, req, action)
    result = payload(NS_PUBSUB, "pubsub")
    attrs = {"node": name, "jid": str(current.jid), "subid": current.subid}
    child(result, "options", attrs).append(options_form(current.options))
    return req.result(result)


async def _set_options(ctx: Ctx, req: IqRequest, action: Element) -> Element:
    """§6.3.5: submit the subscription options form."""
    store = _store(ctx)
    name = action.get("node") or ""
    lock = store.node_lock(name)
    async with lock:
        name, current = await _subscriber(ctx, req, action)
        changes = subscription_options(action)
        if action.find(f"{{{ns.DATA_FORMS}}}x") is None:
            raise errors.BAD_REQUEST("no options form")
        options = SubscriptionOptions(**{**_as_dict(current.options), **changes})
        await store.subscribe(name, current.jid, current.subid, options)
    return req.result()


def _wanted_node(action: Element) -> str | None:
    return action.get("node") or None


async def _my_subscriptions(ctx: Ctx, req: IqRequest, action: Element) -> Element:
    """§5.6: the requester's subscriptions (every resource of its bare JID)."""
    wanted = _wanted_node(action)
    result = payload(NS_PUBSUB, "pubsub")
    listing = child(result, "subscriptions", {"node": wanted} if wanted else None)
    for found in await _store(ctx).user_subscriptions(_requester(req)):
        if wanted is None or found.node == wanted:
            attrs = {"node": found.node, "jid": str(found.jid), "subid": found.subid}
            child(listing, "subscription", {**attrs, "subscription": "subscribed"})
    return req.result(result)


async def _my_affiliations(ctx: Ctx, req: IqRequest, action: Element) -> Element:
    """§5.7: the requester's affiliations (of its bare JID)."""
    wanted = _wanted_node(action)
    result = payload(NS_PUBSUB, "pubsub")
    listing = child(result, "affiliations", {"node": wanted} if wanted else None)
    for node, affiliation in await _store(ctx).user_affiliations(_requester(req)):
        if wanted is None or node == wanted:
            child(listing, "affiliation", {"node": node, "affiliation": affiliation})
    return req.result(result)


# ----------------------------------------------------------------------------- owner use cases


async def owner_get(ctx: Ctx, req: IqRequest) -> Element | None:
    action = _first(req.payload)
    tag = action.tag
    if tag == f"{_O}default":
        result = payload(NS_OWNER, "pubsub")
        child(result, "default").append(config_form(default_config(ctx), form_rules(ctx)))
        return req.result(result)
    name = node_name(action)
    config = await _require(ctx, name, _requester(req), frozenset({"owner"}))
    result = payload(NS_OWNER, "pubsub")
    if tag == f"{_O}configure":
        child(result, "configure", {"node": name}).append(config_form(config, form_rules(ctx)))
    elif tag == f"{_O}affiliations":
        listing = child(result, "affiliations", {"node": name})
        affiliations = await _store(ctx).affiliations(name)
        for jid, affiliation in sorted(affiliations.items(), key=lambda pair: str(pair[0])):
            child(listing, "affiliation", {"jid": str(jid), "affiliation": affiliation})
    elif tag == f"{_O}subscriptions":
        listing = child(result, "subscriptions", {"node": name})
        for found in await _store(ctx).subscriptions(name):
            attrs = {"jid": str(found.jid), "subid": found.subid, "subscription": "subscribed"}
            child(listing, "subscription", attrs)
    else:
        raise errors.unsupported(local_name(action))
    return req.result(result)


async def owner_set(ctx: Ctx, req: IqRequest) -> Element | None:
    action = _first(req.payload)
    tag = action.tag
    handler = {
        f"{_O}configure": _configure,
        f"{_O}delete": _delete,
        f"{_O}purge": _purge,
        f"{_O}affiliations": _set_affiliations,
        f"{_O}subscriptions": _set_subscriptions,
    }.get(tag if isinstance(tag, str) else "")
    if handler is None:
        raise errors.unsupported(local_name(action))
    name = node_name(action)
    store = _store(ctx)
    lock = store.node_lock(name)
    async with lock:
        config = await _require(ctx, name, _requester(req), frozenset({"owner"}))
        try:
            notify = await handler(ctx, name, config, action)
        except Rejected as exc:
            reply = error_reply(req.stanza, exc.err)
            assert reply is not None  # requests are get/set
            reply.insert(0, exc.entries)
            return reply
    if notify is not None:
        recipients, event = notify
        await _notify(ctx, recipients, event)
    return req.result()


Notification = tuple[list[JID], Element] | None


async def _configure(ctx: Ctx, name: str, config: NodeConfig, action: Element) -> Notification:
    """§8.2.4: submit the configuration form (or cancel it). Subscribers a new
    whitelist model leaves out lose their subscriptions."""
    form = action.find(f"{{{ns.DATA_FORMS}}}x")
    if form is None:
        raise errors.BAD_REQUEST("no configuration form")
    if form.get("type") == "cancel":
        return None
    store = _store(ctx)
    changed = apply(config, node_config(action, form_rules(ctx)))
    await store.save_node(store.service, name, changed, limit=ctx.options.max_items_limit)
    if changed.access_model != config.access_model and changed.access_model == "whitelist":
        affiliations = await store.affiliations(name)
        gone = [
            s.jid
            for s in await store.subscriptions(name)
            if affiliations.get(s.jid.bare, "none") not in _READERS
        ]
        await store.unsubscribe(name, gone)
    return None


async def _delete(ctx: Ctx, name: str, config: NodeConfig, action: Element) -> Notification:
    """§8.4: the node goes with its items, affiliations and subscriptions."""
    store = _store(ctx)
    recipients = _recipients(config, await store.subscriptions(name))
    await store.remove(name)
    if config.notify_delete and recipients:
        return recipients, node_event("delete", name)
    return None


async def _purge(ctx: Ctx, name: str, config: NodeConfig, action: Element) -> Notification:
    """§8.5: every item goes; subscribers get one ``<purge/>``."""
    if not config.persist_items:
        raise errors.unsupported("persistent-items", "this node keeps no items")
    store = _store(ctx)
    await store.purge(store.service, name)
    recipients = _recipients(config, await store.subscriptions(name))
    return (recipients, node_event("purge", name)) if recipients else None


class Rejected(Exception):
    """Some entries of an owner's affiliations or subscriptions delta were refused
    (§8.8.2.4, §8.9.2.4): the error carries them, as they stand now; the others were
    applied."""

    def __init__(self, err: StanzaError, entries: Element) -> None:
        super().__init__(str(err))
        self.err = err
        self.entries = entries


def _rejected(name: str, kind: str, refused: list[dict[str, str]], why: str) -> Rejected:
    pubsub = payload(NS_OWNER, "pubsub")
    listing = child(pubsub, f"{kind}s", {"node": name})
    for attrs in refused:
        child(listing, kind, attrs)
    return Rejected(errors.NOT_ACCEPTABLE(why), pubsub)


async def _set_affiliations(
    ctx: Ctx, name: str, config: NodeConfig, action: Element
) -> Notification:
    """§8.9.2: a delta of affiliations; the node keeps at least one owner. Invalid
    entries (a bad JID or affiliation, or the demotion of the last owners) are refused
    and returned; the others apply."""
    store = _store(ctx)
    current = await store.affiliations(name)
    changes: dict[JID, str] = {}
    refused: list[dict[str, str]] = []
    for entry in action.findall(f"{_O}affiliation"):
        affiliation = entry.get("affiliation")
        if affiliation == "publish-only":
            raise errors.unsupported("publish-only-affiliation")
        try:
            jid = JID.parse(entry.get("jid", "")).bare
        except InvalidJID:
            refused.append({"jid": entry.get("jid", ""), "affiliation": "none"})
            continue
        if affiliation is None:
            continue
        if affiliation not in _SETTABLE:
            refused.append({"jid": str(jid), "affiliation": current.get(jid, "none")})
            continue
        changes[jid] = affiliation
    after = {**current, **changes}
    if not any(affiliation == "owner" for affiliation in after.values()):
        for jid, affiliation in list(changes.items()):
            if current.get(jid) == "owner" and affiliation != "owner":
                del changes[jid]
                refused.append({"jid": str(jid), "affiliation": "owner"})
    await store.set_affiliations(name, changes)
    if refused:
        raise _rejected(name, "affiliation", refused, "a node keeps an owner; valid changes made")
    return None


async def _set_subscriptions(
    ctx: Ctx, name: str, config: NodeConfig, action: Element
) -> Notification:
    """§8.8.2: a delta of subscriptions: 'subscribed' adds one, 'none' removes it.
    Invalid entries (a bad JID or state, an outcast) are refused and returned; the
    others apply."""
    store = _store(ctx)
    affiliations = await store.affiliations(name)
    existing = {s.jid: s for s in await store.subscriptions(name)}
    added: list[JID] = []
    removed: list[JID] = []
    refused: list[dict[str, str]] = []
    for entry in action.findall(f"{_O}subscription"):
        try:
            jid = JID.parse(entry.get("jid", ""))
        except InvalidJID:
            refused.append({"jid": entry.get("jid", ""), "subscription": "none"})
            continue
        state = entry.get("subscription")
        if state == "none":
            removed.append(jid)
        elif state == "subscribed" and affiliations.get(jid.bare) != "outcast":
            added.append(jid)
        elif state is not None:
            now = "subscribed" if jid in existing else "none"
            refused.append({"jid": str(jid), "subscription": now})
    await store.unsubscribe(name, removed)
    for jid in added:
        if jid not in existing:
            await store.subscribe(name, jid, new_id(), SubscriptionOptions())
    if refused:
        raise _rejected(name, "subscription", refused, "refused entries; valid changes made")
    return None


# ----------------------------------------------------------------------------- discovery


async def disco_info(ctx: Ctx, service: ServiceDomain, req: IqRequest) -> Element:
    """The service (its identity pubsub/service and features), or a node the requester may
    read (identity pubsub/leaf, ``pubsub#meta-data`` form); anything else:
    ``item-not-found``."""
    query = payload(ns.DISCO_INFO, "query")
    name = req.payload.get("node")
    if name is None:
        for identity in service.identities:
            attrs = {"category": identity.category, "type": identity.type}
            if identity.name:
                attrs["name"] = identity.name
            child(query, "identity", attrs)
        for feature in service.features:
            child(query, "feature", {"var": feature})
        return req.result(query)
    query.set("node", name)
    config = await _store(ctx).node(_store(ctx).service, name)
    if config is None or not await _may_read(ctx, name, config, _requester(req)):
        raise errors.NODE_NOT_FOUND()
    child(query, "identity", {"category": "pubsub", "type": "leaf"})
    child(query, "feature", {"var": NS_PUBSUB})
    form = child(query, "x", {"type": "result"}, namespace=ns.DATA_FORMS)
    _form_field(form, "FORM_TYPE", _META_DATA, kind="hidden")
    _form_field(form, "pubsub#title", config.title)
    _form_field(form, "pubsub#access_model", config.access_model)
    owners = [str(j) for j, a in (await _store(ctx).affiliations(name)).items() if a == "owner"]
    field = child(form, "field", {"var": "pubsub#owner", "type": "jid-multi"})
    for owner in sorted(owners):
        child(field, "value", text=owner)
    return req.result(query)


def _form_field(form: Element, var: str, value: str, *, kind: str | None = None) -> None:
    field = child(form, "field", {"var": var, **({"type": kind} if kind else {})})
    child(field, "value", text=value)


async def disco_items(ctx: Ctx, req: IqRequest) -> Element:
    """The nodes the requester may read (§5.2), or a node's item ids (§5.5)."""
    store = _store(ctx)
    requester = _requester(req)
    name = req.payload.get("node")
    query = payload(ns.DISCO_ITEMS, "query")
    service = str(store.service)
    nodes = await store.nodes(store.service)
    if name is None:
        for node, config in sorted(nodes.items()):
            if await _may_read(ctx, node, config, requester):
                attrs = {"jid": service, "node": node}
                if config.title:
                    attrs["name"] = config.title
                child(query, "item", attrs)
        return req.result(query)
    query.set("node", name)
    found = nodes.get(name)
    if found is None or not await _may_read(ctx, name, found, requester):
        raise errors.NODE_NOT_FOUND()
    limit = found.limit(ctx.options.max_items_limit)
    for item_id in await store.item_ids(store.service, name, limit=limit):
        child(query, "item", {"jid": service, "name": item_id})
    return req.result(query)


# ----------------------------------------------------------------------------- lifecycle


async def _at_service(
    handler: Callable[..., Awaitable[Element | None]], *args: object
) -> Element | None:
    """Run ``handler`` for requests to the service's own address; a JID at the service's
    domain (``someone@pubsub.example.org``) is nobody: ``service-unavailable``."""
    req = args[-1]
    assert isinstance(req, IqRequest)
    if req.to.local or req.to.resource:
        raise StanzaError("service-unavailable")
    return await handler(*args)


@module.on_load
async def serve(ctx: Ctx) -> None:
    domain = service_domain(ctx)
    service = ServiceDomain(ctx, domain, name=ctx.options.name)
    store = PubsubStore(ctx, service.jid)
    ctx.provide(PUBSUB, store)
    ctx.metrics.counter_function(
        "published_items", "Items published to the PubSub service.", lambda: store.published
    )
    ctx.metrics.counter_function(
        "notifications", "Event notifications the PubSub service sent.", lambda: store.notified
    )
    service.identity("pubsub", "service", ctx.options.name)
    for feature in FEATURES:
        service.feature(feature)
    for kind, namespace, tag, handler in (
        ("get", NS_PUBSUB, "pubsub", pubsub_get),
        ("set", NS_PUBSUB, "pubsub", pubsub_set),
        ("get", NS_OWNER, "pubsub", owner_get),
        ("set", NS_OWNER, "pubsub", owner_set),
        ("get", ns.DISCO_ITEMS, "query", disco_items),
    ):
        service.iq(kind, namespace, tag)(partial(_at_service, handler, ctx))
    # Ours answers node queries too; without a node, from the facts registered above.
    service.iq("get", ns.DISCO_INFO, "query")(partial(_at_service, disco_info, ctx, service))
    # In a cluster the whole service lives on one node (chosen by its domain): the node
    # configurations are cached and changes to a node are serialized in memory.
    ctx.serve(service, placed_by=by_domain)

    async def moved() -> None:
        store.forget_all_cached()  # this node may take the service (back) over

    ctx.on_cluster_change(moved)
    # Account removal deletes nodes on whichever node the account was removed.
    ctx.on_invalidate(NODES_CHANGED, lambda _key: store.forget_all_cached())
    ctx.log.info("PubSub service at %s", domain)


@module.fold(hooks.USER_EXPORT)
async def export(ctx: Ctx, parts: tuple[Element, ...], event: UserEvent) -> tuple[Element, ...]:
    """The account's affiliations and subscriptions on the host's PubSub service."""
    store = _store(ctx)
    affiliations = await store.user_affiliations(event.jid)
    subscriptions = await store.user_subscriptions(event.jid)
    if not affiliations and not subscriptions:
        return parts
    service = payload(ns.XMPPD_EXPORT, "pubsub", {"service": str(store.service)})
    for node, affiliation in affiliations:
        child(service, "affiliation", {"node": node, "affiliation": affiliation})
    for sub in subscriptions:
        child(service, "subscription", {"node": sub.node, "jid": str(sub.jid), "subid": sub.subid})
    return (*parts, service)


@module.on(hooks.USER_REMOVED)
async def forget(ctx: Ctx, event: UserEvent) -> None:
    """The user's subscriptions and affiliations go; so do the nodes the user was the only
    owner of (their subscribers are told)."""
    store = _store(ctx)
    user = event.jid.bare
    for name, affiliation in await store.user_affiliations(user):
        if affiliation != "owner":
            continue
        lock = store.node_lock(name)
        async with lock:
            others = [
                jid
                for jid, a in (await store.affiliations(name)).items()
                if a == "owner" and jid != user
            ]
            config = await store.node(store.service, name)
            if others or config is None:
                continue
            recipients = _recipients(config, await store.subscriptions(name))
            await store.remove(name)
            await ctx.invalidate(NODES_CHANGED, name)  # the node holding the service caches them
        if config.notify_delete and recipients:
            await _notify(
                ctx, [r for r in recipients if r.bare != user], node_event("delete", name)
            )
    await store.forget_user(user)
