"""XEP-0313: the archive tables and the ``Archive`` service (storage, preferences, queries)."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from xmppd.api import INVALIDATE_ALL, JID, InvalidJID, ServiceKey, StanzaError, ns
from xmppd.api.stanza import Element, child, copy, payload, serialize
from xmppd.api.storage import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    String,
    Text,
    bindparam,
    delete,
    func,
    insert,
    sa,
    select,
)
from xmppd_modules.mam_common import Bounds, Paging, format_stamp, to_microseconds
from xmppd_modules.mod_mam.common import (
    KEPT_STATUS,
    KEPT_WITHOUT_BODY,
    NS_HINTS,
    NS_MAM,
    NS_SID,
    PAGE_BYTES,
    PREFS_CACHE,
    PURGE_BATCH,
    Ctx,
    module,
)
from xmppd_modules.mod_roster import ROSTER

archive_table: Final = module.table(
    "archive",
    Column("username", String(1023), primary_key=True),
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("stamp", BigInteger, nullable=False),  # microseconds since the epoch
    Column("peer", String(2047), nullable=False),  # bare JID of the other party
    Column("resource", String(1023), nullable=False, default=""),  # ... and its resource
    Column("outgoing", Boolean, nullable=False),
    Column("stanza", Text, nullable=False),  # <message xmlns='jabber:client'...>
    Column("body", Text, nullable=True),  # for full-text search
)
"""One row per archived message and account (a chat between two users: two rows)."""

prefs_table: Final = module.table(
    "prefs",
    Column("username", String(1023), primary_key=True),
    Column("default_mode", String(8), nullable=False),
    Column("always_jids", Text, nullable=False, default="[]"),
    Column("never_jids", Text, nullable=False, default="[]"),
)
"""XEP-0441 preferences of the accounts that set them (JSON lists of JIDs)."""

_A: Final = archive_table.c
_SIMPLE: Final = sa.text("'simple'")
"""The PostgreSQL text search configuration: no stemming, no stop words (any language).
A SQL constant, not a column, so that the index below belongs to the table."""
_INDEXES: Final = (
    Index("ix_mod_mam__archive_peer", _A.host, _A.username, _A.peer, _A.id),
    Index("ix_mod_mam__archive_id", _A.host, _A.id),  # retention, start-up, 'start'
    Index(
        "ix_mod_mam__archive_fulltext",
        func.to_tsvector(_SIMPLE, _A.body),
        postgresql_using="gin",
    ).ddl_if(dialect="postgresql"),
)

_HOST: Final = bindparam("host", type_=String)
_USER: Final = bindparam("username", type_=String)
_INSERT: Final = insert(archive_table)
_LAST_ID: Final = select(func.max(_A.id)).where(_A.host == _HOST)
_PREFS: Final = select(prefs_table).where(
    prefs_table.c.host == _HOST, prefs_table.c.username == _USER
)
_EXISTING: Final = select(_A.id).where(
    _A.host == _HOST, _A.username == _USER, _A.id.in_(bindparam("check", expanding=True))
)
_EDGE: Final = select(_A.id, _A.stamp).where(_A.host == _HOST, _A.username == _USER).limit(1)
_FIRST: Final = _EDGE.order_by(_A.id)
_LAST: Final = _EDGE.order_by(_A.id.desc())
_OLD: Final = archive_table.alias("old")
_PURGE_OLD: Final = delete(archive_table).where(
    _A.host == _HOST,
    _A.id.in_(
        select(_OLD.c.id)
        .where(_OLD.c.host == _HOST, _OLD.c.id < bindparam("cutoff", type_=BigInteger))
        .limit(PURGE_BATCH)
    ),
)
_PURGE_USER_OLD: Final = delete(archive_table).where(
    _A.host == _HOST,
    _A.username == _USER,
    _A.id.in_(
        select(_OLD.c.id)
        .where(
            _OLD.c.host == _HOST,
            _OLD.c.username == _USER,
            _OLD.c.id < bindparam("cutoff", type_=BigInteger),
        )
        .limit(PURGE_BATCH)
    ),
)


def _purge_old_except(usernames: list[str]) -> sa.Delete:
    """``_PURGE_OLD`` without the accounts that have their own retention."""
    return delete(archive_table).where(
        _A.host == _HOST,
        _A.id.in_(
            select(_OLD.c.id)
            .where(
                _OLD.c.host == _HOST,
                _OLD.c.id < bindparam("cutoff", type_=BigInteger),
                _OLD.c.username.not_in(usernames),
            )
            .limit(PURGE_BATCH)
        ),
    )


_PURGE_USER: Final = delete(archive_table).where(
    _A.host == _HOST,
    _A.username == _USER,
    _A.id.in_(
        select(_OLD.c.id).where(_OLD.c.host == _HOST, _OLD.c.username == _USER).limit(PURGE_BATCH)
    ),
)

SID_TAG: Final = f"{{{NS_SID}}}stanza-id"
_SKIP: Final = frozenset({f"{{{NS_HINTS}}}no-store", f"{{{NS_HINTS}}}no-permanent-store"})
_STORE: Final = f"{{{NS_HINTS}}}store"


# ----------------------------------------------------------------------------- stanzas

__all__ = ["ARCHIVE", "Archive", "Paging", "format_stamp", "to_microseconds"]


def archivable(stanza: Element, *, without_body: bool) -> bool:
    """Whether a message is one to archive (see the package docstring)."""
    if stanza.get("type", "normal") not in ("chat", "normal"):
        return False
    keep = without_body
    for el in stanza:  # the reader never yields comments or PIs (restricted XML)
        tag = el.tag
        if tag == "body" or tag == _STORE or tag in KEPT_STATUS:
            keep = True
        elif tag in _SKIP:
            return False
        elif tag[0] == "{" and tag[1:].partition("}")[0] in KEPT_WITHOUT_BODY:
            keep = True
    return keep


def strip_ids(stanza: Element, user: JID) -> Element:
    """A copy of ``stanza`` without the stanza ids that claim to be by ``user`` or by its
    server: only we may add those (XEP-0359 §5)."""
    out = copy(stanza)
    claimed = (str(user), user.domain)
    for el in out.findall(SID_TAG):
        try:
            by = str(JID.parse(el.get("by", "")))
        except InvalidJID:
            continue
        if by in claimed:
            out.remove(el)
    return out


def has_forged_id(stanza: Element, user: JID) -> bool:
    if stanza.find(SID_TAG) is None:
        return False
    return len(strip_ids(stanza, user)) != len(stanza)


def client_xml(stanza: Element) -> str:
    """The message as it is stored and returned: in ``jabber:client``, not neutral."""
    data = serialize(stanza)
    if stanza.tag == "message" and None not in stanza.nsmap and data[8:9] in (b" ", b">", b"/"):
        # A neutral stanza serializes as '<message ...'; declaring the content namespace
        # on it puts every unqualified element in jabber:client, as on the client stream.
        return '<message xmlns="jabber:client"' + data[8:].decode("utf-8")
    return serialize(_client_copy(stanza)).decode("utf-8")


def _client_copy(el: Element, parent: Element | None = None) -> Element:
    """Slow path of :func:`client_xml`: rebuild ``el`` with its neutral parts qualified."""
    local = el.tag.rpartition("}")[2]
    attrs = {str(k): str(v) for k, v in el.attrib.items()}
    out = payload(ns.CLIENT, local, attrs) if parent is None else child(parent, local, attrs)
    out.text = el.text
    for sub in el:
        if sub.tag[0] == "{":
            out.append(copy(sub))
        else:
            _client_copy(sub, out).tail = sub.tail
    return out


# ----------------------------------------------------------------------------- preferences


_RANDOM_POOL = bytearray()


def _random_bits20() -> int:
    """20 unpredictable bits from a pool refilled 3 KiB at a time: one ``getrandom``
    syscall per ~1,000 ids instead of one per message (it showed up at 10 % of the
    message path in py-spy)."""
    if len(_RANDOM_POOL) < 3:
        _RANDOM_POOL.extend(secrets.token_bytes(3072))
    value = int.from_bytes(_RANDOM_POOL[:3], "big") & 0xFFFFF
    del _RANDOM_POOL[:3]
    return value


@dataclass(frozen=True, slots=True)
class Prefs:
    """XEP-0441 archiving preferences of one account."""

    default: str
    always: frozenset[str] = frozenset()
    never: frozenset[str] = frozenset()

    def to_xml(self) -> Element:
        el = payload(NS_MAM, "prefs", {"default": self.default})
        for name, jids in (("always", self.always), ("never", self.never)):
            lst = child(el, name)
            for jid in sorted(jids):
                child(lst, "jid", text=jid)
        return el


# ----------------------------------------------------------------------------- queries


@dataclass(slots=True)
class Filters(Bounds):
    """The query form: the bounds, plus who with, which ids and which words."""

    with_: JID | None = None
    ids: tuple[int, ...] | None = None
    fulltext: str | None = None


@dataclass(slots=True)
class Page:
    rows: list[tuple[int, int, str]]
    """(id, stamp in microseconds, stored XML), oldest first."""
    complete: bool
    count: int | None = None
    index: int | None = None


FTS_TABLE: Final = f"{archive_table.name}_fts"
"""SQLite only: the FTS5 index of the archive's bodies (external content: the archive
table's rows; the writer indexes what it inserts, a trigger forgets what is deleted)."""
_FTS_DDL: Final = (
    f"CREATE VIRTUAL TABLE IF NOT EXISTS {FTS_TABLE} USING fts5(body, "
    f"content='{archive_table.name}', content_rowid='rowid', "
    "tokenize='unicode61 remove_diacritics 2')",
    f"CREATE TRIGGER IF NOT EXISTS {FTS_TABLE}_delete AFTER DELETE ON {archive_table.name} "
    f"WHEN old.body IS NOT NULL BEGIN INSERT INTO {FTS_TABLE}({FTS_TABLE}, rowid, body) "
    f"VALUES ('delete', old.rowid, old.body); END",
)
_FTS_INDEX: Final = sa.text(
    f"INSERT INTO {FTS_TABLE}(rowid, body) SELECT rowid, body FROM {archive_table.name} "
    "WHERE host = :host AND id BETWEEN :low AND :high AND body IS NOT NULL"
)
"""Index the bodies of a batch the writer just inserted (one statement per batch: a
trigger per row cost a third of the archive's throughput)."""
_FULLTEXT_POSTGRESQL: Final = -1
_FULLTEXT_SQLITE: Final = -2


def fts5_query(text: str) -> str:
    """The words of a search as FTS5 strings, all required (like PostgreSQL's
    ``plainto_tsquery``): quoting keeps a word from being read as an operator."""
    return " ".join('"' + word.replace('"', '""') + '"' for word in text.split())


def _shape(f: Filters, p: Paging, dialect: str) -> tuple[Any, ...]:
    words = 0
    if f.fulltext is not None:
        if dialect == "postgresql":
            words = _FULLTEXT_POSTGRESQL
        elif dialect == "sqlite":
            words = _FULLTEXT_SQLITE
        else:
            words = len(f.fulltext.split())
    return (
        f.with_ is not None,
        f.with_ is not None and bool(f.with_.resource),
        f.start is not None,
        f.end is not None,
        f.after_id is not None,
        f.before_id is not None,
        f.ids is not None,
        words,
        p.after is not None,
        p.before is not None,
        p.backward,
        p.index is not None,
    )


_STATEMENTS: Final[dict[tuple[Any, ...], tuple[sa.Select[Any], sa.Select[Any]]]] = {}
"""(page, count) statements by query shape: each is built once, then run with parameters."""


def _statements(shape: tuple[Any, ...]) -> tuple[sa.Select[Any], sa.Select[Any]]:
    found = _STATEMENTS.get(shape)
    if found is not None:
        return found
    with_, resource, start, end, after_id, before_id, ids, words, after, before, back, index = shape
    conds: list[Any] = [_A.host == _HOST, _A.username == _USER]
    if with_:
        conds.append(_A.peer == bindparam("peer", type_=String))
    if resource:
        conds.append(_A.resource == bindparam("resource", type_=String))
    if start:  # an id never precedes its time (Archive.reserve): the id index helps
        conds += [_A.stamp >= bindparam("start"), _A.id >= bindparam("start_id")]
    if end:
        conds.append(_A.stamp <= bindparam("end"))
    if after_id:
        conds.append(_A.id > bindparam("after_id"))
    if before_id:
        conds.append(_A.id < bindparam("before_id"))
    if ids:
        conds.append(_A.id.in_(bindparam("ids", expanding=True)))
    if words == _FULLTEXT_POSTGRESQL:
        tsquery = func.plainto_tsquery(_SIMPLE, bindparam("q", type_=Text))
        conds.append(func.to_tsvector(_SIMPLE, _A.body).op("@@", is_comparison=True)(tsquery))
    elif words == _FULLTEXT_SQLITE:
        matching: sa.Select[Any] = (
            select(sa.literal_column("rowid"))
            .select_from(sa.table(FTS_TABLE))
            .where(sa.literal_column(FTS_TABLE).op("MATCH")(bindparam("q", type_=Text)))
        )
        conds.append(sa.literal_column(f"{archive_table.name}.rowid").in_(matching))
    for i in range(max(words, 0)):
        conds.append(_A.body.like(bindparam(f"w{i}", type_=Text), escape="\\"))
    paged = list(conds)
    if after:
        paged.append(_A.id > bindparam("rsm_after"))
    if before:
        paged.append(_A.id < bindparam("rsm_before"))
    page = (
        select(_A.id, _A.stamp, _A.stanza)
        .where(*paged)
        .order_by(_A.id.desc() if back else _A.id)
        .limit(bindparam("limit", type_=Integer))
    )
    if index:
        page = page.offset(bindparam("offset", type_=Integer))
    earlier = sa.case((_A.id < bindparam("first_id", type_=BigInteger), 1), else_=0)
    count = select(
        func.count().label("total"), func.coalesce(func.sum(earlier), 0).label("earlier")
    ).where(*conds)
    _STATEMENTS[shape] = (page, count)
    return page, count


def _like(word: str) -> str:
    escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


# ----------------------------------------------------------------------------- writing


GATHER_SECONDS: Final = 0.01
GATHER_ROWS: Final = 256
"""The writer waits up to GATHER_SECONDS for this many rows before a transaction."""
MAX_QUEUED: Final = 20_000
"""Rows queued and not yet written, at most. While the database cannot be written, the
queue grows to this; then archiving a message waits for room, and so does the sender's
stanza (and its XEP-0198 acknowledgement): the server stops acknowledging rather than
lose."""
RETRY_FIRST: Final = 0.1
RETRY_MAX: Final = 5.0
"""Back-off between attempts to write a batch the database refused: doubling, capped."""


class Writer:
    """Writes archive rows behind the message path, many per transaction.

    A row is queued when a message is archived (its id is already assigned, so the
    stanza id can be delivered at once). One task per host takes everything queued and
    inserts it in one transaction; while that waits for the database, new rows gather
    for the next one (group commit). One INSERT per message cost ~150 µs of CPU on
    SQLite and ~650 µs plus a ~3 ms commit wait on PostgreSQL; batched, ~20 µs a row.
    Whatever reads the archive calls :meth:`flush` first, so it sees every row queued
    before; a crash loses what was queued and not yet written (milliseconds' worth, or
    what queued during a database outage).

    When the database cannot be written (down, unreachable), the batch is retried with
    back-off until it can, and the module's health part (``mod_mam``) says the archive
    is not ready and why. A row the database refuses for what it is (a duplicate: the
    previous attempt committed after all) is not written twice; any other row error
    loses that row only, logged.
    """

    def __init__(self, ctx: Ctx) -> None:
        self._ctx = ctx
        self._health = ctx.health.part(reason="starting")
        self._failing = False
        self._queue: list[dict[str, Any]] = []
        self._queued = 0
        """Rows ever queued."""
        self._done = 0
        """Rows ever handled (written, or lost to an error), in queue order."""
        self.written = 0
        """Rows ever committed (the metric xmppd_mod_mam_archive_writes_total)."""
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        """Set (and replaced) each time the writer has handled what it took."""
        self._running = False

    def add(self, row: dict[str, Any]) -> None:
        self._queue.append(row)
        self._queued += 1
        self._wake.set()

    @property
    def pending(self) -> int:
        """Rows queued and not yet written."""
        return self._queued - self._done

    def started(self) -> None:
        self._health.set_ready()

    async def wait_for_room(self) -> None:
        """Return once fewer than :data:`MAX_QUEUED` rows wait to be written."""
        while self._queued - self._done >= MAX_QUEUED and self._running:
            await self._progress.wait()

    async def run(self) -> None:
        """The writer task (spawned on load, cancelled at stop)."""
        self._running = True
        try:
            while True:
                await self._wake.wait()
                if len(self._queue) < GATHER_ROWS:
                    # Let more rows arrive: on SQLite a write never yields, so without
                    # this pause every message would be its own transaction.
                    await asyncio.sleep(GATHER_SECONDS)
                self._wake.clear()
                await self._write_queued()
        finally:
            self._running = False
            self._notify()

    def _notify(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    async def _write_queued(self) -> None:
        rows, self._queue = self._queue, []
        if rows:
            try:
                await self._write(rows)
            except asyncio.CancelledError:  # stopping: a last flush may still write them
                self._queue[:0] = rows
                raise
            self._done += len(rows)
        self._notify()

    async def _write(self, rows: list[dict[str, Any]]) -> None:
        delay = RETRY_FIRST
        while True:
            try:
                await self._insert(rows)
            except (sa.exc.IntegrityError, sa.exc.DataError) as exc:
                if len(rows) == 1:
                    self._row_refused(rows[0], exc)
                    return
                break
            except Exception as exc:  # the database is down or unreachable: retry
                self._unavailable(exc, len(rows))
                if not self._running:  # the last flush while stopping: no more time
                    self._ctx.log.error("could not archive %d messages; lost", len(rows))
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            if self._failing:
                self._failing = False
                self._health.set_ready()
                self._ctx.log.warning("archive writable again")
            return
        for row in rows:  # a row of the batch is refused: save the others
            await self._write([row])

    async def _insert(self, rows: list[dict[str, Any]]) -> None:
        db = self._ctx.db
        async with db.transaction() as tx:
            await tx.execute(_INSERT, rows)
            if db.dialect == "sqlite":  # the same transaction keeps the index exact
                ids = [row["id"] for row in rows]
                bounds = {"host": self._ctx.domain, "low": min(ids), "high": max(ids)}
                await tx.execute(_FTS_INDEX, bounds)
        self.written += len(rows)

    def _row_refused(self, row: dict[str, Any], exc: Exception) -> None:
        if isinstance(exc, sa.exc.IntegrityError):
            # The same host, user and id: an earlier attempt committed although its
            # answer was lost with the connection. It is archived once.
            self._ctx.log.debug("archive row %s was written already", row["id"])
        else:
            self._ctx.log.error("could not archive a message (%s); it is lost", exc)

    def _unavailable(self, exc: Exception, rows: int) -> None:
        reason = f"cannot write the archive: {type(exc).__name__}: {str(exc)[:200]}"
        self._health.set_not_ready(reason)
        if not self._failing:
            self._failing = True
            self._ctx.log.warning("%s; %d rows held, retrying", reason, rows)

    async def flush(self) -> None:
        """Return once every row queued so far is in the database."""
        target = self._queued
        while self._done < target and self._running:
            self._wake.set()
            await self._progress.wait()
        if self._done < target:  # no writer task (the server is stopping): write here
            await self._write_queued()


# ----------------------------------------------------------------------------- the archive


class Archive:
    """The archives of one host (the ``ARCHIVE`` service)."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self._last_id = 0
        self._prefs: OrderedDict[str, Prefs] = OrderedDict()
        """Preferences of recently used accounts, by username (dropped when another
        node of a cluster stores a change)."""
        self._prefs_epoch = 0
        """Bumped by every change: a read that overlapped one is not cached."""
        self._default = Prefs(ctx.options.default)
        self.writer = Writer(ctx)
        ctx.on_invalidate("prefs", self._prefs_invalidated)

    def _prefs_invalidated(self, key: str) -> None:
        """Another node stored preferences of the account ``key`` (a username)."""
        self._prefs_epoch += 1
        if key == INVALIDATE_ALL:
            self._prefs.clear()
        else:
            self._prefs.pop(key, None)

    async def start(self) -> None:
        """Continue the id sequence after what is stored (the clock may have gone back),
        and start writing."""
        last = await self.ctx.db.fetch_value(_LAST_ID, {"host": self.ctx.domain})
        self._last_id = int(last or 0)
        if self.ctx.db.dialect == "sqlite":
            await self._create_fulltext_index()
        self.ctx.spawn(self.writer.run(), name=f"mod_mam writer {self.ctx.domain}")
        self.writer.started()
        writer = self.writer
        self.ctx.metrics.counter_function(
            "archive_writes", "Messages written to user archives.", lambda: writer.written
        )
        self.ctx.metrics.gauge_function(
            "archive_queue",
            "Messages waiting to be written to the archive.",
            lambda: writer.pending,
        )

    async def _create_fulltext_index(self) -> None:
        """SQLite: create the FTS5 index and its delete trigger once; index what is
        stored."""
        db = self.ctx.db
        exists = await db.fetch_value(
            select(func.count())
            .select_from(sa.table("sqlite_master"))
            .where(sa.column("name") == FTS_TABLE)
        )
        async with db.transaction() as tx:
            # The first FTS5 version indexed with a trigger per row; the writer does now.
            await tx.execute(sa.text(f"DROP TRIGGER IF EXISTS {FTS_TABLE}_insert"))
        if exists:
            return
        async with db.transaction() as tx:
            for ddl in _FTS_DDL:
                await tx.execute(sa.text(ddl))
            await tx.execute(sa.text(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES ('rebuild')"))
        self.ctx.log.info("full-text index of the archive created")

    def archivable(self, stanza: Element) -> bool:
        return archivable(stanza, without_body=self.ctx.options.archive_without_body)

    def reserve(self) -> tuple[int, int]:
        """A new archive id and the current time in microseconds.

        The id is the time in milliseconds shifted left by 20 bits plus 20 random bits,
        raised above the previous id when needed: ordered by time, unique on the host,
        and not guessable from another id (XEP-0313 §3). It never precedes its time.
        """
        now_us = time.time_ns() // 1000
        candidate = ((now_us // 1000) << 20) | _random_bits20()
        self._last_id = max(candidate, self._last_id + 1)
        return self._last_id, now_us

    def store(
        self,
        user: JID,
        peer: JID,
        stanza: Element,
        *,
        outgoing: bool,
        reserved: tuple[int, int] | None = None,
    ) -> int:
        """Archive ``stanza`` for ``user`` (queued for the writer); returns its id."""
        archive_id, now_us = reserved or self.reserve()
        bodies = [el.text or "" for el in stanza.iterfind("body")]
        self.writer.add(
            {
                "host": self.ctx.domain,
                "username": user.local,
                "id": archive_id,
                "stamp": now_us,
                "peer": str(peer.bare),
                "resource": peer.resource,
                "outgoing": outgoing,
                "stanza": client_xml(stanza),
                "body": "\n".join(bodies) if bodies else None,
            }
        )
        return archive_id

    async def exists(self, user: JID) -> bool:
        """Whether the account exists (no query while it has a session)."""
        return self.ctx.sessions.is_online(user) or await self.ctx.account_exists(user)

    def _params(self, user: JID) -> dict[str, Any]:
        return {"host": self.ctx.domain, "username": user.local}

    # -- preferences

    async def prefs(self, user: JID) -> Prefs:
        cached = self._prefs.get(user.local)
        if cached is not None:
            self._prefs.move_to_end(user.local)
            return cached
        epoch = self._prefs_epoch
        row = await self.ctx.db.fetch_one(_PREFS, self._params(user))
        prefs = self._default
        if row is not None:
            prefs = Prefs(
                row.default_mode,
                frozenset(json.loads(row.always_jids)),
                frozenset(json.loads(row.never_jids)),
            )
        if epoch == self._prefs_epoch:
            self._remember(user, prefs)
        return prefs

    def _remember(self, user: JID, prefs: Prefs) -> None:
        self._prefs[user.local] = prefs
        self._prefs.move_to_end(user.local)
        if len(self._prefs) > PREFS_CACHE:
            self._prefs.popitem(last=False)

    async def set_prefs(self, user: JID, prefs: Prefs) -> None:
        await self.ctx.db.upsert(
            prefs_table,
            {
                **self._params(user),
                "default_mode": prefs.default,
                "always_jids": json.dumps(sorted(prefs.always)),
                "never_jids": json.dumps(sorted(prefs.never)),
            },
            ("host", "username"),
        )
        self._prefs_epoch += 1
        self._remember(user, prefs)
        await self.ctx.invalidate("prefs", user.local)

    async def wants(self, user: JID, other: JID) -> bool:
        """Whether ``user``'s preferences archive messages with ``other``."""
        prefs = await self.prefs(user)
        if prefs.default == "always" and not prefs.never and not prefs.always:
            return True
        candidates = (str(other.bare), str(other))
        if any(jid in prefs.never for jid in candidates):
            return False
        if any(jid in prefs.always for jid in candidates) or prefs.default == "always":
            return True
        if prefs.default == "never":
            return False
        if other.bare == user:
            return True
        return await self.ctx.service(ROSTER).item(user, other) is not None

    # -- queries

    async def _run(
        self, stmt: sa.Select[Any], params: dict[str, Any], *, slow: bool
    ) -> list[sa.Row[Any]]:
        db = self.ctx.db
        if slow and db.dialect == "sqlite":  # a scan: off the event loop
            return await db.run_in_thread(lambda conn: list(conn.execute(stmt, params).all()))
        return list(await db.fetch_all(stmt, params))

    async def check_ids(self, user: JID, ids: Iterable[int]) -> None:
        """``item-not-found`` unless every id is in ``user``'s archive."""
        wanted = sorted(set(ids))
        if not wanted:
            return
        await self.writer.flush()
        found = await self.ctx.db.fetch_all(_EXISTING, {**self._params(user), "check": wanted})
        if len(found) != len(wanted):
            raise StanzaError("item-not-found", "no such archive id")

    async def query(self, user: JID, f: Filters, p: Paging) -> Page:
        await self.writer.flush()
        refs = [i for i in (f.after_id, f.before_id, p.after, p.before) if i is not None]
        await self.check_ids(user, [*refs, *(f.ids or ())])
        dialect = self.ctx.db.dialect
        page_stmt, count_stmt = _statements(_shape(f, p, dialect))
        params = self._params(user)
        if f.with_ is not None:
            params["peer"] = str(f.with_.bare)
            params["resource"] = f.with_.resource
        if f.start is not None:
            params["start"] = f.start
            params["start_id"] = (f.start // 1000) << 20
        optional = {
            "end": f.end,
            "after_id": f.after_id,
            "before_id": f.before_id,
            "rsm_after": p.after,
            "rsm_before": p.before,
            "offset": p.index,
        }
        params.update({k: v for k, v in optional.items() if v is not None})
        if f.ids is not None:
            params["ids"] = list(f.ids)
        if f.fulltext is not None:
            if dialect == "postgresql":
                params["q"] = f.fulltext
            elif dialect == "sqlite":
                params["q"] = fts5_query(f.fulltext)
            else:
                for i, word in enumerate(f.fulltext.split()):
                    params[f"w{i}"] = _like(word)
        slow = f.fulltext is not None
        rows = await self._run(page_stmt, {**params, "limit": p.max + 1}, slow=slow)
        complete = len(rows) <= p.max
        kept: list[tuple[int, int, str]] = []
        size = 0
        for row in rows[: p.max]:
            if kept and size + len(row.stanza) > PAGE_BYTES:
                complete = False
                break
            size += len(row.stanza)
            kept.append((int(row.id), int(row.stamp), str(row.stanza)))
        if p.backward:
            kept.reverse()
        page = Page(kept, complete)
        if self.ctx.options.count_results:
            first_id = kept[0][0] if kept else 0
            counts = await self._run(count_stmt, {**params, "first_id": first_id}, slow=slow)
            page.count = int(counts[0].total)
            page.index = int(counts[0].earlier) if kept else None
        return page

    async def edges(self, user: JID) -> tuple[sa.Row[Any] | None, sa.Row[Any] | None]:
        """The first and the last entry of ``user``'s archive (id, stamp)."""
        await self.writer.flush()
        params = self._params(user)
        first = await self.ctx.db.fetch_one(_FIRST, params)
        last = await self.ctx.db.fetch_one(_LAST, params)
        return first, last

    # -- deletion

    async def _purge(self, stmt: sa.Delete, params: dict[str, Any]) -> int:
        removed = 0
        while True:
            n = await self.ctx.db.execute(stmt, params)
            removed += n
            if n < PURGE_BATCH:
                return removed
            await asyncio.sleep(0)  # let other work run between batches

    async def expire(self, older_than: float, *, keep: Sequence[str] = ()) -> int:
        """Delete the entries stored before ``older_than`` (a Unix time), except those
        of the accounts named in ``keep`` (they have a retention of their own)."""
        cutoff = _id_at(older_than)
        stmt = _purge_old_except(list(keep)) if keep else _PURGE_OLD
        return await self._purge(stmt, {"host": self.ctx.domain, "cutoff": cutoff})

    async def expire_user(self, username: str, older_than: float) -> int:
        """Delete the entries of one account stored before ``older_than``."""
        params = {"host": self.ctx.domain, "username": username, "cutoff": _id_at(older_than)}
        return await self._purge(_PURGE_USER_OLD, params)

    async def forget_user(self, user: JID) -> None:
        await self.writer.flush()
        await self._purge(_PURGE_USER, self._params(user))
        await self.ctx.db.execute(
            delete(prefs_table).where(
                prefs_table.c.host == self.ctx.domain, prefs_table.c.username == user.local
            )
        )
        self._prefs_epoch += 1
        self._prefs.pop(user.local, None)
        await self.ctx.invalidate("prefs", user.local)


def _id_at(when: float) -> int:
    """The smallest archive id reserved at or after ``when`` (ids start with the time)."""
    return int(when * 1000) << 20


ARCHIVE: Final = ServiceKey[Archive]("mam")
