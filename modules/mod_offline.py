"""XEP-0160: Best Practices for Handling Offline Messages, with XEP-0203 Delayed Delivery.

A chat or normal message for an existing account that has no available resource of
non-negative priority is stored, stamped with ``<delay from='<host>'/>``, and handed
to the first session that then sends available presence with a non-negative priority
(initial presence, or a priority raised from below zero). Delivered messages are
deleted. Headline, groupchat and error messages are never stored (the core drops or
bounces them), nor messages carrying the XEP-0334 ``<no-store/>`` hint; those get
``service-unavailable``, as does a message to an account whose storage is full.
Messages with only XEP-0085 chat states are discarded, as XEP-0160 §3 asks, unless
they carry the XEP-0334 ``<store/>`` hint.

Messages queued for a session that hibernates (XEP-0198 resumption pending) are stored
too (``sm_store``) so that a crash does not lose them, but kept back while the session
may resume; they are deleted once its client acknowledges them, and become ordinary
offline messages if it never does (or after a restart).

Stored messages expire: every ``expiry_interval`` the messages older than
``expire_after`` (default 30 days) are deleted, logged at INFO with how many and for
how many accounts, and counted in ``xmppd_mod_offline_expired_total``. The number
waiting is the gauge ``xmppd_mod_offline_messages`` (recounted at each sweep, kept
current in between); ``xmppd_mod_offline_stored_total`` counts messages stored.

Other modules can reach the store through :data:`OFFLINE`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Final

from pydantic import Field

from xmppd.api import (
    JID,
    STOP,
    Duration,
    Module,
    ModuleContext,
    Options,
    Priority,
    ServiceKey,
    Session,
    StanzaError,
    Stop,
    hooks,
    ns,
)
from xmppd.api.hooks import (
    Bind2Request,
    HibernatedRelease,
    HibernatedStanza,
    PresenceEvent,
    StanzaEvent,
    UserEvent,
)
from xmppd.api.stanza import (
    Element,
    child,
    child_text,
    copy,
    in_client_namespace,
    parse,
    payload,
    serialize,
)
from xmppd.api.storage import REFUSED_FOR_DATA as _REFUSED
from xmppd.api.storage import (
    BigInteger,
    Column,
    Float,
    GroupCommit,
    StorageUnavailable,
    String,
    Text,
    WriteRetry,
    bindparam,
    delete,
    func,
    insert,
    prepared,
    select,
)

NS_HINTS: Final = "urn:xmpp:hints"
NS_SID: Final = "urn:xmpp:sid:0"
NOT_CONTENT: Final = frozenset({NS_HINTS, NS_SID, ns.DELAY})
"""Payload namespaces that say something about a message, not in it: hints, XEP-0359
ids (the archive adds its stanza-id before this module sees the message) and delays."""
NS_CHATSTATES: Final = "http://jabber.org/protocol/chatstates"
NS_RECEIPTS: Final = "urn:xmpp:receipts"
NS_MARKERS: Final = "urn:xmpp:chat-markers:0"
FEATURE: Final = "msgoffline"
"""The XEP-0160 service discovery feature."""

PAGE: Final = 100
"""Messages read from storage at a time while delivering."""


class OfflineOptions(Options):
    max_messages: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="Most messages stored for one account. When it is reached, further "
        "messages are refused with service-unavailable (XEP-0160 §2) until the user "
        "collects them.",
    )
    outage_wait: Duration = Field(
        30.0,
        gt=0,
        le=3600,
        description="How long storing a message waits for an unavailable database "
        "(retried with back-off meanwhile; the sender's stanza is not acknowledged "
        "until then). After it, the sender gets the error resource-constraint: the "
        "message is never silently lost.",
    )
    store_receipts_and_markers: bool = Field(
        True,
        description="Store messages without a body that carry only delivery receipts "
        "(XEP-0184) or chat markers (XEP-0333), so the sender's client learns of them "
        "later. When false, such messages are discarded.",
    )
    expire_after: Duration = Field(
        30 * 86400.0,
        gt=0,
        description="Stored messages older than this are deleted undelivered (logged "
        "and counted in xmppd_mod_offline_expired_total).",
    )
    expiry_interval: Duration = Field(
        3600.0,
        gt=0,
        le=86400,
        description="How often expired messages are looked for (also how often the "
        "xmppd_mod_offline_messages gauge is recounted).",
    )


module = Module(
    "offline",
    "XEP-0160: Offline messages",
    options=OfflineOptions,
    depends=("presence",),
    protocols=("XEP-0160 v1.0", "XEP-0203 v2.0", "XEP-0334 v0.3 (no-store)"),
)
Ctx = ModuleContext[OfflineOptions]
module.feature(FEATURE)

messages: Final = module.table(
    "messages",
    Column("username", String(1023), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("stamp", Float, nullable=False),
    Column("sender", String(3071), nullable=False),
    Column("stanza", Text, nullable=False),
)
"""One row per stored message; ``seq`` (microseconds, strictly increasing per server
process) orders a user's messages."""

_HOST: Final = bindparam("host", type_=String)
_USER: Final = bindparam("username", type_=String)
_AFTER: Final = bindparam("after", type_=BigInteger)
_COUNT: Final = (
    select(func.count())
    .select_from(messages)
    .where(messages.c.host == _HOST, messages.c.username == _USER)
)
_COUNTS: Final = (
    select(messages.c.username, func.count().label("n"))
    .where(
        messages.c.host == _HOST,
        messages.c.username.in_(bindparam("usernames", expanding=True)),
    )
    .group_by(messages.c.username)
)
_INSERT: Final = insert(messages)
_DELETE_SEQS: Final = delete(messages).where(
    messages.c.host == _HOST,
    messages.c.username == _USER,
    messages.c.seq.in_(bindparam("seqs", expanding=True)),
)
"""Built once: every login with messages waiting deletes what it was sent."""
_STANZA_ID: Final = "{urn:xmpp:sid:0}stanza-id"
# Run at every login that sends initial presence, most often to find nothing: built
# once and run on SQLite without SQLAlchemy's work per call (xmppd.storage.prepared).
_PAGE: Final = prepared(
    select(messages.c.seq, messages.c.stanza)
    .where(messages.c.host == _HOST, messages.c.username == _USER, messages.c.seq > _AFTER)
    .order_by(messages.c.seq)
    .limit(PAGE)
)

"""Parses stored stanzas back. They are our own serializations; harden it anyway."""


class Verdict(Enum):
    """What to do with a message for an offline account."""

    STORE = "store"
    DISCARD = "discard"
    """Drop it silently: nothing in it is worth keeping (chat states)."""
    REFUSE = "refuse"
    """Not ours to store: the core answers service-unavailable."""


def verdict(stanza: Element, *, store_receipts_and_markers: bool) -> Verdict:
    """Whether a message for an offline account is stored (XEP-0160 §3, XEP-0334).

    ``<store/>`` keeps a message that would otherwise be discarded (chat states only, or
    receipts and markers when those are not stored). ``<no-permanent-store/>`` does not
    prevent storage: that hint is about archives and logs, and XEP-0334 (use case
    "Sensitive messages") allows storage for an offline recipient.
    """
    if stanza.get("type", "normal") not in ("normal", "chat"):
        return Verdict.REFUSE
    if stanza.find(f"{{{NS_HINTS}}}no-store") is not None:
        return Verdict.REFUSE
    if stanza.find("body") is not None or stanza.find("subject") is not None:
        return Verdict.STORE
    if stanza.find(f"{{{NS_HINTS}}}store") is not None:
        return Verdict.STORE  # XEP-0334 §4.4: the sender says it is worth storing
    payload_ns = {
        el.tag[1:].partition("}")[0]
        for el in stanza
        if isinstance(el.tag, str) and el.tag.startswith("{")
    } - NOT_CONTENT
    if payload_ns <= {NS_CHATSTATES}:
        return Verdict.DISCARD  # XEP-0160 §3: chat-state-only messages are not stored
    if payload_ns <= {NS_CHATSTATES, NS_RECEIPTS, NS_MARKERS} and not store_receipts_and_markers:
        return Verdict.DISCARD
    return Verdict.STORE


def delay_stamp(at: float) -> str:
    """A XEP-0082 UTC timestamp with milliseconds: ``2024-05-01T12:00:00.123Z``."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _stamped(ctx: Ctx, stanza: Element, at: float) -> Element:
    """A copy of ``stanza`` with our XEP-0203 delay. A delay that claims to come from
    this host already (only we may add one) is removed first."""
    out = copy(stanza)
    for old in out.findall(f"{{{ns.DELAY}}}delay"):
        if old.get("from") == ctx.domain:
            out.remove(old)
    child(
        out,
        "delay",
        {"from": ctx.domain, "stamp": delay_stamp(at)},
        namespace=ns.DELAY,
        text="Offline Storage",
    )
    return out


def parse_stored(data: str) -> Element:
    """A stored stanza, parsed back into a stream-neutral element."""
    return parse(data.encode("utf-8"))


_Queued = tuple[dict[str, Any], bool]
"""A row to store, and whether it is held back for a hibernated session once stored."""


class OfflineStore:
    """The offline messages of one host (the ``OFFLINE`` service)."""

    def __init__(self, ctx: Ctx) -> None:
        self._ctx = ctx
        self._last_seq = 0
        self.waiting = 0
        """Messages stored on this host (a gauge; recounted by :meth:`expire`)."""
        self.stored_count = 0
        self.expired_count = 0
        self._flushing: dict[JID, tuple[asyncio.Lock, int]] = {}
        self.retry = WriteRetry(
            ctx.health.part(), ctx.log, "write offline messages", deadline=ctx.options.outage_wait
        )
        self._writer = GroupCommit(self._write_batch)
        self._held: set[int] = set()
        """Messages stored for a hibernated session (``sm_store``): kept back from
        every delivery while it may resume, as its own queue holds them. In memory
        only: after a restart no session is left to resume, and they are delivered."""

    async def start(self) -> None:
        """Continue the sequence after what is stored (the clock may have gone back)."""
        ctx = self._ctx
        last = await ctx.db.fetch_value(
            select(func.max(messages.c.seq)).where(messages.c.host == ctx.domain)
        )
        self._last_seq = int(last or 0)
        await self._recount()
        self._ctx.health.part().set_ready()

    async def _recount(self) -> None:
        ctx = self._ctx
        stored = await ctx.db.fetch_value(
            select(func.count()).select_from(messages).where(messages.c.host == ctx.domain)
        )
        self.waiting = int(stored or 0)

    async def expire(self, now: float | None = None) -> int:
        """Delete messages stored longer than ``expire_after`` ago; how many went.

        Held messages (a hibernated session's queue) are left: their session decides."""
        ctx = self._ctx
        cutoff = (time.time() if now is None else now) - ctx.options.expire_after
        old = messages.c.host == ctx.domain, messages.c.stamp < cutoff
        rows = await ctx.db.fetch_all(select(messages.c.username, messages.c.seq).where(*old))
        by_user: dict[str, list[int]] = {}
        for row in rows:
            if row.seq not in self._held:
                by_user.setdefault(row.username, []).append(int(row.seq))
        expired = 0
        for username, seqs in by_user.items():
            user = JID.create(username, ctx.domain)
            async with self._lock(user):
                expired += await self._delete(user, seqs)
        if expired:
            self.expired_count += expired
            ctx.log.info(
                "offline messages expired: %d for %d accounts (older than %gs)",
                expired,
                len(by_user),
                ctx.options.expire_after,
            )
        await self._recount()
        return expired

    def _next_seq(self) -> int:
        self._last_seq = max(time.time_ns() // 1000, self._last_seq + 1)
        return self._last_seq

    def _params(self, user: JID) -> dict[str, str]:
        return {"host": self._ctx.domain, "username": user.local}

    async def count(self, user: JID) -> int:
        """How many messages are waiting for ``user``."""
        return int(await self._ctx.db.fetch_value(_COUNT, self._params(user)) or 0)

    async def store(self, user: JID, stanza: Element, sender: JID) -> bool:
        """Stamp and store ``stanza`` for ``user``; ``False`` when the storage is full."""
        return await self._insert(user, stanza, sender) is not None

    async def hold(self, user: JID, stanza: Element, sender: JID) -> int | None:
        """Store a message queued for a hibernated session of ``user`` and keep it back
        until :meth:`release`; its number, or ``None`` when it is not stored (not worth
        storing, or the storage is full)."""
        ctx = self._ctx
        decision = verdict(
            stanza, store_receipts_and_markers=ctx.options.store_receipts_and_markers
        )
        if decision is not Verdict.STORE:
            return None
        try:
            return await self._insert(user, stanza, sender, held=True)
        except StorageUnavailable:
            ctx.log.error("could not store a message for hibernated %s; kept in memory", user)
            return None

    async def release(self, user: JID, seqs: list[int], *, acked: bool) -> None:
        """Messages held for a hibernated session: acknowledged by the client (deleted),
        or never acknowledged (now ordinary offline messages, delivered at once to an
        available session of ``user`` if there is one)."""
        if acked:
            # Under the delivery lock: a delivery either sees them held, or deleted.
            async with self._lock(user):
                await self._delete(user, seqs)
                self._held.difference_update(seqs)
            return
        self._held.difference_update(seqs)
        ctx = self._ctx
        ready = [s for s in ctx.sessions.available(user) if s.priority >= 0]
        if ready:
            await self.deliver(max(ready, key=lambda s: s.priority))

    async def _insert(
        self, user: JID, stanza: Element, sender: JID, *, held: bool = False
    ) -> int | None:
        """Store one message: its ``seq``, or ``None`` when ``user``'s storage is full.

        Messages stored in the same turn of the event loop share one transaction
        (:class:`GroupCommit`): during a reconnect storm every message for a
        hibernated session is stored, and a transaction each cost several times the
        message's own delivery. The caller learns the outcome once the transaction
        committed; a ``held`` message is held back (:meth:`hold`) from the commit on,
        before any delivery can read it. Raises :class:`StorageUnavailable` when the
        database stayed unavailable past the retry deadline."""
        ctx = self._ctx
        now = time.time()
        data = serialize(_stamped(ctx, stanza, now)).decode("utf-8")
        row = {
            "host": ctx.domain,
            "username": user.local,
            "seq": self._next_seq(),
            "stamp": now,
            "sender": str(sender),
            "stanza": data,
        }
        return await self._writer.submit((row, held))

    async def _write_batch(self, batch: list[_Queued]) -> list[int | None]:
        """Store ``batch`` (retried while the database is unavailable): each row's
        ``seq``, or ``None`` when its account's storage is full."""
        stored = await self.retry.run(lambda: self._transaction(batch))
        seqs: list[int | None] = []
        for (row, held), ok in zip(batch, stored, strict=True):
            seq = int(row["seq"])
            if ok:
                self.waiting += 1
                self.stored_count += 1
                if held:
                    self._held.add(seq)
            seqs.append(seq if ok else None)
        return seqs

    async def _transaction(self, batch: list[_Queued]) -> list[bool]:
        """One transaction: which rows were stored (the others' accounts are full).

        Each row's ``seq`` was chosen before the first attempt, so a retry after a
        commit whose answer was lost meets the rows' keys and stores no second copy."""
        ctx = self._ctx
        limit = ctx.options.max_messages
        rows = [row for row, _ in batch]
        users = sorted({str(row["username"]) for row in rows})
        stored: list[bool] = []
        try:
            async with ctx.db.transaction() as tx:
                counts = await tx.execute(_COUNTS, {"host": ctx.domain, "usernames": users})
                waiting: dict[str, int] = {row.username: row.n for row in counts}
                for row in rows:
                    name = str(row["username"])
                    room = waiting.get(name, 0) < limit
                    if room:
                        waiting[name] = waiting.get(name, 0) + 1
                    stored.append(room)
                kept = [row for row, ok in zip(rows, stored, strict=True) if ok]
                if kept:
                    await tx.execute(_INSERT, kept)
        except _REFUSED:
            if not self.retry.failing:
                raise
            # The attempt before committed although its answer was lost: what it
            # stored is there now.
            seqs = [int(row["seq"]) for row in rows]
            there = await ctx.db.fetch_all(
                select(messages.c.seq).where(
                    messages.c.host == ctx.domain, messages.c.seq.in_(seqs)
                )
            )
            found = {int(r.seq) for r in there}
            ctx.log.debug("offline messages %s were stored already", sorted(found))
            return [int(row["seq"]) in found for row in rows]
        return stored

    async def deliver(self, session: Session) -> int:
        """Send every stored message to ``session``, oldest first, deleting each page
        once written. Stops early if the session goes away. Returns how many went out."""
        ctx = self._ctx
        user = session.jid.bare
        sent = 0
        async with self._lock(user):
            after = 0
            while True:
                rows = await ctx.db.fetch_all(_PAGE, {**self._params(user), "after": after})
                if not rows:
                    break
                delivered: list[int] = []
                ended = False
                try:
                    for row in rows:
                        after = row.seq
                        if row.seq in self._held:
                            continue
                        if not ctx.sessions.is_current(session):
                            ended = True
                            break
                        try:
                            stanza = parse_stored(row.stanza)
                        except SyntaxError:  # lxml.etree.XMLSyntaxError
                            ctx.log.error("dropping an unreadable offline message %s", row.seq)
                        else:
                            await ctx.sessions.deliver(session, stanza)
                            sent += 1
                        delivered.append(row.seq)
                finally:
                    await self._delete(user, delivered)
                if ended:
                    break
        if sent:
            ctx.log.debug("delivered %d offline messages to %s", sent, session.jid)
        return sent

    async def drop_archived(self, user: JID) -> int:
        """Delete stored messages that ``user``'s archive also holds (they carry its
        XEP-0359 ``<stanza-id by='user'>``); the others stay. Returns how many went."""
        ctx = self._ctx
        by = str(user)
        archived: list[int] = []
        async with self._lock(user):
            after = 0
            while rows := await ctx.db.fetch_all(_PAGE, {**self._params(user), "after": after}):
                for row in rows:
                    if row.seq in self._held:
                        continue  # its session may resume and acknowledge it
                    try:
                        stanza = parse_stored(row.stanza)
                    except SyntaxError:
                        continue
                    if any(el.get("by") == by for el in stanza.iterfind(_STANZA_ID)):
                        archived.append(row.seq)
                after = rows[-1].seq
            await self._delete(user, archived)
        return len(archived)

    async def _delete(self, user: JID, seqs: list[int]) -> int:
        if not seqs:
            return 0
        ctx = self._ctx
        deleted = await ctx.db.execute(
            _DELETE_SEQS, {"host": ctx.domain, "username": user.local, "seqs": seqs}
        )
        self.waiting = max(0, self.waiting - deleted)
        return deleted

    @asynccontextmanager
    async def _lock(self, user: JID) -> AsyncIterator[None]:
        """One delivery per account at a time: two sessions coming online together
        must not both get the same messages."""
        lock, users = self._flushing.get(user) or (asyncio.Lock(), 0)
        self._flushing[user] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._flushing[user]
            if users == 1:
                del self._flushing[user]
            else:
                self._flushing[user] = (lock, users - 1)

    async def remove_user(self, user: JID) -> None:
        ctx = self._ctx
        deleted = await ctx.db.execute(
            delete(messages).where(messages.c.host == ctx.domain, messages.c.username == user.local)
        )
        self.waiting = max(0, self.waiting - deleted)


OFFLINE: Final = ServiceKey[OfflineStore]("offline")


@module.on_load
async def start(ctx: Ctx) -> None:
    store = OfflineStore(ctx)
    await store.start()
    ctx.provide(OFFLINE, store)
    ctx.metrics.gauge_function(
        "messages", "Offline messages waiting for their recipient.", lambda: store.waiting
    )
    ctx.metrics.counter_function(
        "stored", "Messages stored for offline recipients.", lambda: store.stored_count
    )
    ctx.metrics.counter_function(
        "expired",
        "Offline messages deleted undelivered after expire_after.",
        lambda: store.expired_count,
    )
    ctx.spawn(_expire_periodically(ctx, store), name="offline-expiry")


async def _expire_periodically(ctx: Ctx, store: OfflineStore) -> None:
    while True:
        await asyncio.sleep(ctx.options.expiry_interval)
        try:
            await store.expire()
        except Exception:  # a database outage: try again next time
            ctx.log.warning("offline expiry failed; retrying in %gs", ctx.options.expiry_interval)


@module.on(hooks.OFFLINE_MESSAGE)
async def offline_message(ctx: Ctx, event: StanzaEvent) -> Stop | None:
    decision = verdict(
        event.stanza, store_receipts_and_markers=ctx.options.store_receipts_and_markers
    )
    if decision is Verdict.REFUSE:
        return None
    user = event.to.bare
    store = ctx.service(OFFLINE)
    try:
        if not await store.retry.run(lambda: ctx.account_exists(user)):
            return None  # RFC 6121 §8.5.1: the core answers service-unavailable
        if decision is Verdict.DISCARD:
            return STOP
        stored = await store.store(user, event.stanza, event.from_)
    except StorageUnavailable:
        ctx.log.error("offline storage unavailable: refused a message for %s", user)
        raise StanzaError("resource-constraint", "offline storage is unavailable") from None
    if not stored:
        ctx.log.info("offline storage of %s is full; refusing a message", user)
        return None
    # The user may have come online while this was being stored, after the delivery that
    # initial presence starts had already looked (on PostgreSQL the store yields): then
    # nothing else would deliver it before the next login. Deliver what is stored now.
    ready = [s for s in ctx.sessions.available(user) if s.priority >= 0]
    if ready:
        await store.deliver(max(ready, key=lambda s: s.priority))
    return STOP


@module.fold(hooks.SM_STORE)
async def store_hibernated(ctx: Ctx, token: str, event: HibernatedStanza) -> str:
    """XEP-0198 hibernation: a durable copy of a message queued in memory, so that a
    crash or restart does not lose it (it is delivered at the next login)."""
    if token:
        return token
    seq = await ctx.service(OFFLINE).hold(event.session.jid.bare, event.stanza, event.from_)
    return "" if seq is None else str(seq)


@module.on(hooks.SM_STORE_RELEASE)
async def release_hibernated(ctx: Ctx, event: HibernatedRelease) -> None:
    seqs = [int(token) for token in event.tokens if token.isdigit()]
    await ctx.service(OFFLINE).release(event.session.jid.bare, seqs, acked=event.acked)


@module.fold(hooks.BIND2_BOUND)
async def bind2_skip_archived(
    ctx: Ctx, answers: tuple[Element, ...], request: Bind2Request
) -> tuple[Element, ...]:
    """XEP-0386 §2.2: a Bind 2 client syncs from the archive, so offline messages that
    are in it are cleared instead of sent; any the archive does not hold still come."""
    dropped = await ctx.service(OFFLINE).drop_archived(request.session.jid.bare)
    if dropped:
        ctx.log.debug("bind2: %d archived offline messages cleared", dropped)
    return answers


@module.on(hooks.USER_AVAILABLE)
async def came_online(ctx: Ctx, event: PresenceEvent) -> None:
    if event.session.priority >= 0:
        await ctx.service(OFFLINE).deliver(event.session)


def _priority(presence: Element) -> int:
    """The priority an available presence sets (RFC 6121 §4.7.2.3), as mod_presence reads it."""
    text = child_text(presence, "priority")
    try:
        return max(-128, min(127, int(text))) if text else 0
    except ValueError:
        return 0


# Before mod_presence records the new priority (it returns STOP): we need the old one.
@module.on(hooks.PRESENCE_OUT, priority=Priority.EARLY)
async def priority_raised(ctx: Ctx, event: StanzaEvent) -> None:
    """XEP-0160 §2: deliver when the user 'next sends non-negative available presence',
    which includes an available session raising its priority from below zero."""
    session = event.origin
    presence = event.stanza
    if session is None or presence.get("to") is not None or presence.get("type") is not None:
        return
    if not session.is_available or session.priority >= 0 or _priority(presence) < 0:
        return  # initial presence is handled on user_available
    await ctx.service(OFFLINE).deliver(session)


@module.on(hooks.USER_REMOVED)
async def forget(ctx: Ctx, event: UserEvent) -> None:
    await ctx.service(OFFLINE).remove_user(event.jid)


PIE: Final = "urn:xmpp:pie:0"
_EXPORT: Final = (
    select(messages.c.stanza)
    .where(messages.c.host == bindparam("host"), messages.c.username == bindparam("username"))
    .order_by(messages.c.seq)
)


@module.fold(hooks.USER_EXPORT)
async def export(ctx: Ctx, parts: tuple[Element, ...], event: UserEvent) -> tuple[Element, ...]:
    """XEP-0227: stored messages, oldest first, in ``<offline-messages>``."""
    rows = await ctx.db.fetch_all(_EXPORT, {"host": ctx.domain, "username": event.jid.local})
    if not rows:
        return parts
    box = payload(PIE, "offline-messages")
    for row in rows:
        box.append(in_client_namespace(parse_stored(row.stanza)))
    return (*parts, box)
