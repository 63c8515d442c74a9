"""XEP-0357: Push Notifications — wake a user's sleeping device through its app server.

A client enables push for its device with an IQ set to its own account::

    <iq type='set'><enable xmlns='urn:xmpp:push:0' jid='push.example.com' node='abc'>
      <x xmlns='jabber:x:data' type='submit'>...publish-options...</x></enable></iq>

and turns it off with ``<disable xmlns='urn:xmpp:push:0' jid='push.example.com'
[node='abc']/>`` (without ``node``: every registration with that app server). Each
registration (account, app server JID, node) is stored with its publish-options form and
with the resource of the session that enabled it: XEP-0357 ties a registration to a
device, and a client enables push again after each login. Registrations survive logout
(they are used precisely while the device is offline); deleting the account deletes them.

**When a push is sent.** For a message worth waking a phone for (type ``chat`` or
``normal`` with a non-empty body, an encrypted OMEMO payload or a XEP-0353 call
proposal) addressed to an account with registrations:

* the message has no session to take it (``offline_message``; mod_offline still stores
  it): every registration whose device is not connected and active is pushed;
* the message goes to a session that is hibernating after a dropped connection
  (XEP-0198, ``Session.is_detached``): that device's registrations are pushed; this
  includes ``groupchat`` messages with a body that a room (XEP-0045) sends to the
  session of an occupant;
* with ``push_when_inactive``, the same for a session that told the server it is
  inactive (XEP-0352, mod_csi).

The first two are decided where the message reaches the session
(``user_receive_packet``, on the node that holds it, which knows its state exactly); the
first where the message finds nobody to take it.

A device whose session is connected and active is never pushed. Pushes are coalesced:
at most one per registration every ``min_interval``; ``message-count`` is the number of
such messages since the device last checked in (bound a session, or sent anything on
it), and a message counted once (same sender and id, such as one re-routed when a
hibernating session expires) is not counted or pushed again. Messages to an account
with other devices online that take the message are not pushed to offline devices.

**In a cluster** each account's pushes are counted and sent by one node: the owner of
the account's key by rendezvous hashing over the live nodes (``ctx.cluster``), as rooms
are placed. The nodes that decide a message is worth a push hand it to that node
(``ctx.send_to_node``), and so do the nodes where a device checks in, so a message is
counted and pushed once, with one count per device, whatever nodes its sender, its
device and its re-routing went through.

**The push** (XEP-0357 §7) is an IQ set from the account's bare JID to the app server,
publishing a ``urn:xmpp:push:summary`` form (``message-count``,
``last-message-sender`` as a bare JID, and ``last-message-body`` only with
``include_body``) to the registered node, with the stored publish-options. When the app
server answers with an error of type ``cancel`` or ``auth``, or ``item-not-found``, the
registration is disabled (§8). Nothing is retried on a timeout.

**Addressing the app server.** It is usually an external component (XEP-0114, a
``[[components]]`` entry such as ``push.example.org``): the push is written to the
component and its answer routed back here. While that component is not connected the
push bounces with ``service-unavailable`` of type ``wait``, which keeps the
registration (the push is not retried; the next message sends a new one). An app server
on a remote domain is reached over federation (s2s): the push leaves from the account's
bare JID like any IQ; when that domain cannot be reached it bounces with
``remote-server-not-found`` or ``remote-server-timeout``, and the registration is
disabled on the first (type ``cancel``) and kept on the second (type ``wait``). A local
account can also act as app server; use its *full* JID then
(``pushserver@example.org/app``): an IQ to an account's bare JID is answered by the
server's own IQ handlers (the PEP service would take the publish), and never reaches a
client. Enabling push to one's own account is refused.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Final

from pydantic import Field

from xmppd.api import (
    INVALIDATE_ALL,
    JID,
    Drop,
    Duration,
    InvalidJID,
    IqRequest,
    IqTimeout,
    Module,
    ModuleContext,
    Options,
    Priority,
    Scope,
    ServiceKey,
    Session,
    SessionKey,
    StanzaError,
    Stop,
    hooks,
    ns,
)
from xmppd.api.hooks import (
    PacketContext,
    SessionEvent,
    StanzaEvent,
    StreamElementEvent,
    UserEvent,
)
from xmppd.api.stanza import (
    Element,
    child,
    child_text,
    copy,
    element,
    new_id,
    parse,
    payload,
    serialize,
)
from xmppd.api.storage import Column, Float, String, Text, bindparam, delete, select
from xmppd_modules.mod_csi import INACTIVE

NS_PUSH: Final = "urn:xmpp:push:0"
NS_PUBSUB: Final = "http://jabber.org/protocol/pubsub"
NS_DATA: Final = "jabber:x:data"
NS_STANZAS: Final = "urn:ietf:params:xml:ns:xmpp-stanzas"
SUMMARY_FORM: Final = "urn:xmpp:push:summary"
PUBLISH_OPTIONS_FORM: Final = "http://jabber.org/protocol/pubsub#publish-options"

IMPORTANT_PAYLOADS: Final = frozenset(
    {
        "{eu.siacs.conversations.axolotl}encrypted",  # OMEMO (legacy)
        "{urn:xmpp:omemo:2}encrypted",  # OMEMO 2
        "{urn:xmpp:jingle-message:0}propose",  # XEP-0353: an incoming call
    }
)
"""Payloads that make a message without a body worth a push."""

BODY_LIMIT: Final = 256
"""Characters of the body sent with ``include_body`` (push services limit payloads)."""
MAX_FORM_BYTES: Final = 16 * 1024
"""Largest publish-options form stored with a registration."""
MAX_NODE_LENGTH: Final = 1023
CACHE_SIZE: Final = 10_000
"""Accounts whose registrations are kept in memory."""
SEEN_IDS: Final = 64
"""Message ids remembered per registration, so a message is counted once."""

COUNTED: Final = SessionKey("push.counted", False)
"""Set on a device's session (hibernating, or inactive) when a message for it was
counted: the node holding the session reports the device's next stanza as a check-in.
Shared, so that the node counting for the account can set it wherever the session is."""


class PushOptions(Options):
    min_interval: Duration = Field(
        2.0,
        ge=0,
        le=3600,
        description="At most one push per registration in this time (and never two at "
        "once); messages that arrive meanwhile are reported together by the next push.",
    )
    include_body: bool = Field(
        False,
        description="Send the body of the last message (its first 256 characters) to the "
        "app server as last-message-body. Off by default: the app server and the push "
        "service of the phone's vendor would see it.",
    )
    push_when_inactive: bool = Field(
        False,
        description="Also push a device whose session is connected but told the server it "
        "is inactive (XEP-0352, mod_csi), as some phone systems suspend such apps.",
    )
    max_registrations: int = Field(
        10,
        ge=1,
        le=1000,
        description="Registrations one account may have; enabling one more drops the oldest.",
    )
    timeout: Duration = Field(
        30.0,
        gt=0,
        le=600,
        description="How long to wait for the app server to answer a push.",
    )


module = Module(
    "push",
    "XEP-0357: Push Notifications",
    options=PushOptions,
    protocols=("XEP-0357 v0.4.1",),
)
Ctx = ModuleContext[PushOptions]

registrations: Final = module.table(
    "registrations",
    Column("username", String(1023), primary_key=True),
    Column("service", String(3071), primary_key=True),
    Column("node", String(1023), primary_key=True),
    Column("resource", String(1023), nullable=False),
    Column("form", Text, nullable=False, default=""),
    Column("reg_id", String(64), nullable=False),
    Column("created", Float, nullable=False),
)
"""One row per (account, app server, node): the device's resource, the publish-options
form (serialized, or empty), a random id that changes on each enable, and when."""

_HOST: Final = bindparam("host", type_=String)
_USER: Final = bindparam("username", type_=String)
_SELECT: Final = select(
    registrations.c.service,
    registrations.c.node,
    registrations.c.resource,
    registrations.c.form,
    registrations.c.reg_id,
    registrations.c.created,
).where(registrations.c.host == _HOST, registrations.c.username == _USER)


@dataclass(frozen=True, slots=True)
class Registration:
    """A device's push registration."""

    service: JID
    """The app server."""
    node: str
    resource: str
    """Resource of the session that enabled it: the device."""
    form: str
    """The publish-options ``<x/>``, serialized; empty when none was given."""
    reg_id: str
    created: float

    @property
    def key(self) -> tuple[JID, str]:
        return (self.service, self.node)


@dataclass(slots=True)
class _Pending:
    """What a registration's next push will report, and its coalescing state."""

    reg: Registration
    """The registration, as it was when the last message was counted."""
    count: int = 0
    sender: str = ""
    body: str | None = None
    dirty: bool = False
    """Counted messages not reported yet."""
    running: bool = False
    """A push task owns this registration."""
    last_sent: float = float("-inf")
    seen: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=SEEN_IDS))


class PushService:
    """Registrations and pushes of one host (the ``PUSH`` service)."""

    def __init__(self, ctx: Ctx) -> None:
        self._ctx = ctx
        self._cache: OrderedDict[JID, tuple[Registration, ...]] = OrderedDict()
        self._epoch = 0
        """Bumped on every change: a load that overlapped one is not cached."""
        self._gone: OrderedDict[str, None] = OrderedDict()
        """Ids of registrations disabled lately: ignored even if a read saw them."""
        self._pending: dict[JID, dict[tuple[JID, str], _Pending]] = {}
        ctx.on_invalidate("registrations", self._invalidated)

    # ------------------------------------------------------------------ cluster

    def _invalidated(self, key: str) -> None:
        """Another node of the cluster changed an account's registrations: drop the
        cached copy, and stop pending pushes for registrations that are gone."""
        self._epoch += 1
        if key == INVALIDATE_ALL:
            self._cache.clear()
            users = list(self._pending)
        else:
            user = JID.parse(key)
            self._cache.pop(user, None)
            users = [user] if user in self._pending else []
        for user in users:
            self._ctx.spawn(self._drop_gone(user), name="push-invalidated")

    async def _drop_gone(self, user: JID) -> None:
        """Forget the pending pushes of ``user`` whose registration is no longer stored."""
        pending = self._pending.get(user)
        if not pending:
            return
        stored = {r.reg_id for r in await self._read(user)}
        gone = [s.reg for s in list(pending.values()) if s.reg.reg_id not in stored]
        if gone:
            self._changed(user, gone)

    def _stored(self, user: JID) -> Awaitable[object]:
        """A change of ``user``'s registrations is stored: other nodes drop theirs."""
        return self._ctx.invalidate("registrations", str(user))

    # ------------------------------------------------------------------ storage

    def _params(self, user: JID) -> dict[str, str]:
        return {"host": self._ctx.domain, "username": user.local}

    async def _read(self, user: JID) -> tuple[Registration, ...]:
        rows = await self._ctx.db.fetch_all(_SELECT, self._params(user))
        found = []
        for row in rows:
            try:
                service = JID.parse(row.service)
            except InvalidJID:
                continue
            found.append(
                Registration(
                    service, row.node, row.resource, row.form, row.reg_id, float(row.created)
                )
            )
        return tuple(found)

    async def registrations(self, user: JID) -> tuple[Registration, ...]:
        """The account's registrations (cached)."""
        user = user.bare
        cached = self._cache.get(user)
        if cached is None:
            epoch = self._epoch
            cached = await self._read(user)
            if epoch == self._epoch:  # (invalidations from other nodes bump it too)
                self._cache[user] = cached
                while len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(user)
        if self._gone:
            cached = tuple(r for r in cached if r.reg_id not in self._gone)
        return cached

    def _changed(self, user: JID, gone: list[Registration]) -> None:
        """Forget what memory holds about ``user`` (before the database is written)."""
        self._epoch += 1
        self._cache.pop(user, None)
        pending = self._pending.get(user)
        for reg in gone:
            self._gone[reg.reg_id] = None
            if pending is not None:
                pending.pop(reg.key, None)
        if pending is not None and not pending:
            del self._pending[user]
        while len(self._gone) > CACHE_SIZE:
            self._gone.popitem(last=False)

    async def enable(self, user: JID, reg: Registration) -> None:
        """Store ``reg``, replacing the one with the same app server and node; beyond
        ``max_registrations``, the oldest others go."""
        ctx = self._ctx
        current = await self._read(user)
        others = sorted((r for r in current if r.key != reg.key), key=lambda r: r.created)
        replaced = [r for r in current if r.key == reg.key]
        evicted = others[: max(0, len(others) + 1 - ctx.options.max_registrations)]
        self._changed(user, replaced + evicted)
        for old in evicted:
            ctx.log.info("%s has too many push registrations; dropping the oldest", user)
            await self._delete(user, old)
        await ctx.db.upsert(
            registrations,
            {
                **self._params(user),
                "service": str(reg.service),
                "node": reg.node,
                "resource": reg.resource,
                "form": reg.form,
                "reg_id": reg.reg_id,
                "created": reg.created,
            },
            ("host", "username", "service", "node"),
        )
        self._changed(user, [])
        await self._stored(user)

    async def _delete(self, user: JID, reg: Registration) -> None:
        t = registrations.c
        await self._ctx.db.execute(
            delete(registrations).where(
                t.host == self._ctx.domain,
                t.username == user.local,
                t.service == str(reg.service),
                t.node == reg.node,
                t.reg_id == reg.reg_id,  # not one enabled again meanwhile
            )
        )

    async def disable(self, user: JID, service: JID, node: str | None) -> int:
        """Remove the registrations with ``service`` (and ``node``, if given)."""
        gone = [
            r
            for r in await self._read(user)
            if r.service == service and (node is None or r.node == node)
        ]
        self._changed(user, gone)
        for reg in gone:
            await self._delete(user, reg)
        if gone:
            await self._stored(user)
        return len(gone)

    async def remove_user(self, user: JID) -> None:
        gone = list(await self._read(user))
        self._changed(user, gone)
        self._pending.pop(user, None)
        await self._ctx.db.execute(
            delete(registrations).where(
                registrations.c.host == self._ctx.domain,
                registrations.c.username == user.local,
            )
        )
        await self._stored(user)

    # ------------------------------------------------------------------ devices

    def is_awake(self, session: Session) -> bool:
        """The device is connected and active: it needs no push."""
        if session.is_detached:
            return False
        return not (
            self._ctx.options.push_when_inactive and self._ctx.sessions.get_state(session, INACTIVE)
        )

    # ------------------------------------------------------------------ the account's node

    def _elsewhere(self, user: JID) -> str | None:
        """The node that counts and pushes for ``user`` when it is not this one: in a
        cluster, the owner of the account's key by rendezvous hashing over the live
        nodes, so that a message is counted once however many nodes route it."""
        cluster = self._ctx.cluster
        if cluster is None:
            return None
        owner = cluster.owner_of(f"push\0{user}")
        return None if owner == cluster.node else owner

    def checked_in(self, device: JID) -> None:
        """The device ``user/resource`` is back: its pending count starts again (on
        the node that counts for the account)."""
        owner = self._elsewhere(device.bare)
        if owner is not None:
            self._ctx.send_to_node(owner, "checkin", str(device))
            return
        self._checked_in_here(device)

    def _checked_in_here(self, device: JID) -> None:
        pending = self._pending.get(device.bare)
        if pending is None:
            return
        for key, state in list(pending.items()):
            if state.reg.resource == device.resource:
                del pending[key]  # a running push task sees it is no longer current
        if not pending:
            del self._pending[device.bare]

    async def on_checkin(self, value: object) -> None:
        """Another node's :meth:`checked_in` for an account this node counts for."""
        try:
            device = JID.parse(str(value))
        except InvalidJID:
            return
        self._checked_in_here(device)

    async def on_count(self, value: object) -> None:
        """Another node's :meth:`note` for an account this node counts for: ``(user,
        registration fields, sender, message id, body)``, as :meth:`note` sends it."""
        assert isinstance(value, tuple), value
        user, fields, sender, msg_id, body = value
        service, node, resource, form, reg_id, created = fields
        try:
            reg = Registration(
                JID.parse(service), str(node), str(resource), str(form), str(reg_id), created
            )
            self._count_here(JID.parse(user), reg, JID.parse(sender), str(msg_id), body)
        except InvalidJID:
            return

    # ------------------------------------------------------------------ pushes

    def note(self, user: JID, reg: Registration, stanza: Element, sender: JID) -> None:
        """Count the message ``stanza`` from ``sender`` for ``reg`` and make sure a push
        will report it, on the node that counts for the account."""
        msg_id = stanza.get("id") or ""
        body = child_text(stanza, "body")
        body = body[:BODY_LIMIT] if body else None
        owner = self._elsewhere(user)
        if owner is None:
            self._count_here(user, reg, sender, msg_id, body)
            return
        fields = (str(reg.service), reg.node, reg.resource, reg.form, reg.reg_id, reg.created)
        self._ctx.send_to_node(owner, "count", (str(user), fields, str(sender), msg_id, body))

    def _count_here(
        self, user: JID, reg: Registration, sender: JID, msg_id: str, body: str | None
    ) -> None:
        if reg.reg_id in self._gone:
            return  # disabled here (an app server's error) after the sender read it
        pending = self._pending.setdefault(user, {})
        state = pending.get(reg.key)
        if state is None:
            state = pending[reg.key] = _Pending(reg)
        state.reg = reg
        if msg_id:
            seen = (str(sender), msg_id)
            if seen in state.seen:
                return
            state.seen.append(seen)
        state.count += 1
        state.sender = str(sender.bare)
        state.body = body
        state.dirty = True
        # The device's session, if it has one (hibernating, inactive), checks in with
        # its next stanza: its node learns from this mark that there is a count to end.
        sessions = self._ctx.sessions
        device = sessions.get(user.with_resource(reg.resource))
        if device is not None and not sessions.get_state(device, COUNTED):
            sessions.set_state(device, COUNTED, True)
        if not state.running:
            state.running = True
            self._ctx.spawn(self._push_task(user, reg.key, state), name="push")

    def _current(self, user: JID, key: tuple[JID, str], state: _Pending) -> bool:
        pending = self._pending.get(user)
        return pending is not None and pending.get(key) is state

    async def _push_task(self, user: JID, key: tuple[JID, str], state: _Pending) -> None:
        """Send pushes for one registration while there is something new, at most one
        per ``min_interval``. Nothing is awaited before the first push is routed, so
        pushes go out in the order of the messages that caused them.

        The first push goes out on the word of the node that counted the message (it
        found the device asleep or gone; in a cluster this node's view of the device's
        session may be a few milliseconds older). Later ones, after a wait, look at the
        device again: it may have come back meanwhile."""
        loop = asyncio.get_running_loop()
        ctx = self._ctx
        waited = False
        try:
            while state.dirty and self._current(user, key, state):
                wait = state.last_sent + ctx.options.min_interval - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                    waited = True
                    continue  # check again: the device may have come back meanwhile
                # Disabling or enabling again replaces ``state``: ``_current`` is False.
                reg = state.reg
                device = ctx.sessions.get(user.with_resource(reg.resource))
                if waited and device is not None and self.is_awake(device):
                    self._checked_in_here(device.jid)
                    return
                waited = True
                state.dirty = False
                state.last_sent = loop.time()
                await self._publish(user, reg, state.count, state.sender, state.body)
        finally:
            state.running = False

    async def _publish(
        self, user: JID, reg: Registration, count: int, sender: str, body: str | None
    ) -> None:
        ctx = self._ctx
        iq = notification(user, reg, count, sender, body if ctx.options.include_body else None)
        try:
            reply = await ctx.request(iq, timeout=ctx.options.timeout)
        except IqTimeout:
            ctx.log.warning("app server %s did not answer a push for %s", reg.service, user)
            return
        if reply.get("type") == "result":
            ctx.log.debug("pushed %d message(s) for %s to %s", count, user, reg.service)
            return
        error_type, condition = error_of(reply)
        if error_type in ("cancel", "auth") or condition == "item-not-found":
            ctx.log.info(
                "app server %s refused a push for %s (%s, %s); disabling that registration",
                reg.service,
                user,
                error_type,
                condition,
            )
            self._changed(user, [reg])
            await self._delete(user, reg)
            await self._stored(user)
        else:
            ctx.log.warning(
                "app server %s answered a push for %s with %s (%s)",
                reg.service,
                user,
                condition,
                error_type,
            )


PUSH: Final = ServiceKey[PushService]("push")


# ----------------------------------------------------------------------------- stanzas


def notification(
    user: JID, reg: Registration, count: int, sender: str, body: str | None
) -> Element:
    """The XEP-0357 §7 publish of a ``urn:xmpp:push:summary`` form."""
    iq = element("iq", {"type": "set", "from": str(user), "to": str(reg.service), "id": new_id()})
    pubsub = child(iq, "pubsub", namespace=NS_PUBSUB)
    item = child(child(pubsub, "publish", {"node": reg.node}), "item")
    form = child(
        child(item, "notification", namespace=NS_PUSH), "x", {"type": "submit"}, namespace=NS_DATA
    )
    fields = [("FORM_TYPE", SUMMARY_FORM), ("message-count", str(count))]
    if sender:
        fields.append(("last-message-sender", sender))
    if body is not None:
        fields.append(("last-message-body", body))
    for var, value in fields:
        child(child(form, "field", {"var": var}), "value", text=value)
    if reg.form:
        child(pubsub, "publish-options").append(parse(reg.form.encode("utf-8")))
    return iq


def error_of(reply: Element) -> tuple[str, str]:
    """Type and defined condition of an error reply (empty strings when missing)."""
    error = reply.find("error")
    if error is None:
        return "", ""
    for el in error:
        if isinstance(el.tag, str) and el.tag.startswith(f"{{{NS_STANZAS}}}"):
            name = el.tag[len(NS_STANZAS) + 2 :]
            if name != "text":
                return error.get("type", ""), name
    return error.get("type", ""), ""


def is_important(stanza: Element, *, groupchat: bool = False) -> bool:
    """A message worth waking a device for (XEP-0357 leaves the choice to the server).
    ``groupchat``: a room's message to an occupant's session counts too."""
    allowed = ("chat", "normal", "groupchat") if groupchat else ("chat", "normal")
    if stanza.get("type", "normal") not in allowed:
        return False
    if child_text(stanza, "body"):
        return True
    return any(el.tag in IMPORTANT_PAYLOADS for el in stanza)


def _form_value(form: Element, var: str) -> str | None:
    for fld in form.iterfind(f"{{{NS_DATA}}}field"):
        if fld.get("var") == var:
            return fld.findtext(f"{{{NS_DATA}}}value") or ""
    return None


def _publish_options(enable: Element) -> str:
    """The enable's publish-options form, serialized ("" when none)."""
    form = enable.find(f"{{{NS_DATA}}}x")
    if form is None:
        return ""
    if form.get("type") != "submit":
        raise StanzaError("bad-request", "publish-options must be a submitted form")
    form_type = _form_value(form, "FORM_TYPE")
    if form_type is not None and form_type != PUBLISH_OPTIONS_FORM:
        raise StanzaError("bad-request", "publish-options must be a pubsub#publish-options form")
    out = copy(form)
    out.tail = None
    data = serialize(out)
    if len(data) > MAX_FORM_BYTES:
        raise StanzaError("not-acceptable", "the publish-options form is too large")
    return data.decode("utf-8")


def _service(req: IqRequest) -> JID:
    value = req.payload.get("jid")
    if not value:
        raise StanzaError("bad-request", "the app server's 'jid' is missing")
    try:
        return JID.parse(value)
    except InvalidJID:
        raise StanzaError("jid-malformed", "the app server's 'jid' is invalid") from None


def _owner_session(req: IqRequest) -> Session:
    if req.origin is None or not req.is_from_owner:
        raise StanzaError("forbidden", "push is set up by the account's own devices")
    return req.origin


# ----------------------------------------------------------------------------- IQs


@module.on_load
async def start(ctx: Ctx) -> None:
    service = PushService(ctx)
    ctx.provide(PUSH, service)
    ctx.on_node_message("count", service.on_count)
    ctx.on_node_message("checkin", service.on_checkin)


@module.iq("set", NS_PUSH, "enable", to=Scope.BARE)
async def enable(ctx: Ctx, req: IqRequest) -> Element:
    session = _owner_session(req)
    service = _service(req)
    node = req.payload.get("node", "")
    if not node:
        raise StanzaError("bad-request", "the pubsub 'node' is missing")
    if len(node) > MAX_NODE_LENGTH:
        raise StanzaError("not-acceptable", "the pubsub 'node' is too long")
    user = req.to.bare
    if service.bare == user:
        raise StanzaError("not-acceptable", "the app server cannot be the account itself")
    reg = Registration(
        service, node, session.jid.resource, _publish_options(req.payload), new_id(), time.time()
    )
    await ctx.service(PUSH).enable(user, reg)
    ctx.log.info("%s enabled push to %s", session.jid, service)
    return req.result()


@module.iq("set", NS_PUSH, "disable", to=Scope.BARE)
async def disable(ctx: Ctx, req: IqRequest) -> Element:
    session = _owner_session(req)
    service = _service(req)
    node = req.payload.get("node") or None
    removed = await ctx.service(PUSH).disable(req.to.bare, service, node)
    ctx.log.info("%s disabled %d push registration(s) with %s", session.jid, removed, service)
    return req.result()


# ----------------------------------------------------------------------------- triggers


# Just before mod_csi (LATE) may hold the stanza: a handler that drops it runs first,
# and nothing that reaches the device's queue is missed. Here, on the node that holds
# the session, its state (hibernating, inactive) is exact, not a view from elsewhere.
@module.fold(hooks.USER_RECEIVE_PACKET, priority=Priority.LATE + 1)
async def delivered(ctx: Ctx, stanza: Element, pctx: PacketContext) -> Element | Drop:
    """A message reaches a session whose device sleeps: push that device. A room sends
    groupchat to each occupant's full JID: a hibernating occupant is pushed too."""
    if stanza.tag != "message":
        return stanza
    push = ctx.service(PUSH)
    session = pctx.session
    if push.is_awake(session):
        return stanza
    if not is_important(stanza, groupchat="/" in stanza.get("to", "")):
        return stanza
    try:
        sender = JID.parse(stanza.get("from", ""))
    except InvalidJID:
        return stanza
    user = session.jid.bare
    for reg in await push.registrations(user):
        if reg.resource == session.jid.resource:
            push.note(user, reg, stanza, sender)
    return stanza


# Early: before mod_offline stores the message (and returns STOP).
@module.on(hooks.OFFLINE_MESSAGE, priority=Priority.EARLY)
async def offline(ctx: Ctx, event: StanzaEvent) -> Stop | None:
    if not is_important(event.stanza):
        return None
    push = ctx.service(PUSH)
    user = event.to.bare
    for reg in await push.registrations(user):  # none for an account that does not exist
        device = ctx.sessions.get(user.with_resource(reg.resource))
        if device is not None and push.is_awake(device):
            push.checked_in(device.jid)
            continue
        push.note(user, reg, event.stanza, event.from_)
    return None  # storage still happens


# ----------------------------------------------------------------------------- check-ins


@module.on(hooks.RESOURCE_BOUND)
async def logged_in(ctx: Ctx, event: SessionEvent) -> None:
    ctx.service(PUSH).checked_in(event.session.jid)


def _active(ctx: Ctx, session: Session) -> None:
    """The device sent something on ``session``: a check-in, if a message for it was
    counted since the last one."""
    if ctx.sessions.get_state(session, COUNTED):
        ctx.sessions.set_state(session, COUNTED, False)
        ctx.service(PUSH).checked_in(session.jid)


@module.fold(hooks.USER_SEND_PACKET)
async def sent_something(ctx: Ctx, stanza: Element, pctx: PacketContext) -> Element | Drop:
    _active(ctx, pctx.session)
    return stanza


# Early: mod_csi answers <active/> and <inactive/> with STOP.
@module.on(hooks.C2S_STREAM_ELEMENT, priority=Priority.EARLY)
async def nonza(ctx: Ctx, event: StreamElementEvent) -> None:
    _active(ctx, event.session)


@module.on(hooks.USER_REMOVED)
async def forget(ctx: Ctx, event: UserEvent) -> None:
    await ctx.service(PUSH).remove_user(event.jid)


@module.fold(hooks.USER_EXPORT)
async def export(ctx: Ctx, parts: tuple[Element, ...], event: UserEvent) -> tuple[Element, ...]:
    """The push registrations (app server, node, device resource, when); the
    publish-options form is left out: it carries the app server's secret."""
    rows = await ctx.db.fetch_all(_SELECT, {"host": ctx.domain, "username": event.jid.local})
    if not rows:
        return parts
    push = payload(ns.XMPPD_EXPORT, "push")
    for row in rows:
        attrs = {"service": row.service, "node": row.node, "resource": row.resource}
        child(push, "registration", {**attrs, "created": f"{row.created:.0f}"})
    return (*parts, push)
