"""XEP-0163 storage: the node and item tables, the verified-caps table, and :class:`PepStore`
(the ``PEP`` service), which keeps the node configurations of recent owners in memory."""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from modules.mod_pep.common import NODE_CACHE, Ctx, module
from modules.mod_pep.config import NodeConfig
from xmppd.api import JID, KeyedLocks, ServiceKey
from xmppd.api.storage import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    String,
    Text,
    bindparam,
    delete,
    func,
    select,
)

nodes_table: Final = module.table(
    "nodes",
    Column("username", String(1023), primary_key=True),
    Column("node", String(1023), primary_key=True),
    Column("access_model", String(16), nullable=False),
    Column("max_items", Integer, nullable=True),  # NULL: "max"
    Column("persist_items", Boolean, nullable=False),
    Column("send_last", String(32), nullable=False),
    Column("config", Text, nullable=False, default="{}"),  # the other settings, JSON
    Column("changed_at", Float, nullable=False),  # created or last configured
)
"""One row per node of an account."""

items_table: Final = module.table(
    "items",
    Column("username", String(1023), primary_key=True),
    Column("node", String(1023), primary_key=True),
    Column("item_id", String(1023), primary_key=True),
    Column("published_at", BigInteger, nullable=False),  # microseconds, increasing
    Column("payload", Text, nullable=False),  # the serialized payload element
)
"""The items of persistent nodes; a node's newest item has the largest ``published_at``."""

caps_table: Final = module.table(
    "caps",
    Column("algo", String(16), primary_key=True),
    Column("ver", String(255), primary_key=True),
    Column("interests", Text, nullable=False),  # JSON list of "<node>+notify" features
    Column("stored_at", Float, nullable=False),
)
"""XEP-0115 verification strings whose disco#info answer matched, with the ``+notify``
features of that answer. Not user data: a hash of a client's feature set."""

_N: Final = nodes_table.c
_I: Final = items_table.c
_C: Final = caps_table.c
_INDEXES: Final = (
    Index("ix_mod_pep__items_order", _I.host, _I.username, _I.node, _I.published_at),
)

_HOST: Final = bindparam("host", type_=String)
_USER: Final = bindparam("username", type_=String)
_NODE: Final = bindparam("node", type_=String)
_LIMIT: Final = bindparam("limit", type_=Integer)
_NODE_COLUMNS: Final = (
    _N.node,
    _N.access_model,
    _N.max_items,
    _N.persist_items,
    _N.send_last,
    _N.config,
)
_THIS_NODE: Final = (_I.host == _HOST, _I.username == _USER, _I.node == _NODE)

_SELECT_NODES: Final = select(*_NODE_COLUMNS).where(_N.host == _HOST, _N.username == _USER)
_SELECT_MATCHING: Final = select(_N.username, *_NODE_COLUMNS).where(
    _N.host == _HOST,
    _N.username.in_(bindparam("usernames", expanding=True)),
    _N.node.in_(bindparam("nodes", expanding=True)),
)
_NEWEST: Final = (
    select(_I.item_id, _I.published_at, func.length(_I.payload).label("size"))
    .where(*_THIS_NODE)
    .order_by(_I.published_at.desc())
    .limit(_LIMIT)
)
_BY_IDS: Final = select(_I.item_id, _I.published_at, _I.payload).where(
    *_THIS_NODE, _I.item_id.in_(bindparam("ids", expanding=True))
)
_LAST: Final = (
    select(_I.item_id, _I.published_at, _I.payload)
    .where(*_THIS_NODE)
    .order_by(_I.published_at.desc())
    .limit(1)
)
_ITEM_IDS: Final = (
    select(_I.item_id).where(*_THIS_NODE).order_by(_I.published_at.desc()).limit(_LIMIT)
)
_OLDEST_KEPT: Final = (
    select(_I.published_at)
    .where(*_THIS_NODE)
    .order_by(_I.published_at.desc())
    .offset(bindparam("keep", type_=Integer))
    .limit(1)
)
_TRIM: Final = delete(items_table).where(
    *_THIS_NODE, _I.published_at <= bindparam("threshold", type_=BigInteger)
)
_RETRACT: Final = delete(items_table).where(
    *_THIS_NODE, _I.item_id == bindparam("item_id", type_=String)
)
_PURGE: Final = delete(items_table).where(*_THIS_NODE)
_DELETE_NODE: Final = delete(nodes_table).where(
    _N.host == _HOST, _N.username == _USER, _N.node == _NODE
)
_SELECT_CAPS: Final = select(_C.interests).where(
    _C.host == _HOST,
    _C.algo == bindparam("algo", type_=String),
    _C.ver == bindparam("ver", type_=String),
)


@dataclass(frozen=True, slots=True)
class StoredItem:
    item_id: str
    published_at: int
    """Microseconds since the epoch."""
    payload: str
    """The payload element, serialized (parse it when sending)."""


@dataclass(frozen=True, slots=True)
class ItemPage:
    items: list[StoredItem]
    """Oldest first."""
    truncated: bool
    """More items were asked for than fit in one result."""


def _config(row: Any) -> NodeConfig:
    return NodeConfig.from_row(
        row.access_model, row.max_items, row.persist_items, row.send_last, row.config
    )


class PepStore:
    """Nodes and items of one host's accounts (the ``PEP`` service).

    Every change goes through here, so the configurations cached for recently used
    owners stay right; an owner's changes are serialized by :meth:`lock`.
    """

    def __init__(self, ctx: Ctx) -> None:
        self._ctx = ctx
        self._nodes: OrderedDict[str, dict[str, NodeConfig]] = OrderedDict()
        self._locks = KeyedLocks()
        self._last_stamp = 0
        self._caps: OrderedDict[tuple[str, str], frozenset[str]] = OrderedDict()

    def _params(self, owner: JID, node: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"host": self._ctx.domain, "username": owner.local}
        if node is not None:
            params["node"] = node
        return params

    def lock(self, owner: JID) -> asyncio.Lock:
        """The lock that serializes changes to ``owner``'s nodes (hold a reference)."""
        return self._locks.lock(owner.local)

    def _stamp(self) -> int:
        """Microseconds since the epoch, strictly increasing in this process."""
        self._last_stamp = max(time.time_ns() // 1000, self._last_stamp + 1)
        return self._last_stamp

    # ------------------------------------------------------------------ nodes

    async def nodes(self, owner: JID) -> dict[str, NodeConfig]:
        """``owner``'s nodes by name (do not change the mapping)."""
        key = owner.local
        cached = self._nodes.get(key)
        if cached is not None:
            self._nodes.move_to_end(key)
            return cached
        rows = await self._ctx.db.fetch_all(_SELECT_NODES, self._params(owner))
        loaded = {row.node: _config(row) for row in rows}
        cached = self._nodes.setdefault(key, loaded)  # keep one loaded meanwhile
        while len(self._nodes) > NODE_CACHE:
            self._nodes.popitem(last=False)
        return cached

    async def node(self, owner: JID, name: str) -> NodeConfig | None:
        return (await self.nodes(owner)).get(name)

    async def matching(
        self, owners: Sequence[JID], names: Iterable[str]
    ) -> list[tuple[JID, str, NodeConfig]]:
        """The nodes called one of ``names`` of any of ``owners`` (one query)."""
        wanted = sorted(set(names))
        if not owners or not wanted:
            return []
        by_name = {owner.local: owner for owner in owners}
        rows = await self._ctx.db.fetch_all(
            _SELECT_MATCHING,
            {"host": self._ctx.domain, "usernames": sorted(by_name), "nodes": wanted},
        )
        return [(by_name[row.username], row.node, _config(row)) for row in rows]

    async def save_node(self, owner: JID, name: str, config: NodeConfig, *, limit: int) -> None:
        """Create or reconfigure a node; items beyond its new limit are deleted (all of
        them if it no longer persists items)."""
        nodes = await self.nodes(owner)
        values = {
            **self._params(owner, name),
            "access_model": config.access_model,
            "max_items": config.max_items,
            "persist_items": config.persist_items,
            "send_last": config.send_last_published_item,
            "config": config.extra_json(),
            "changed_at": time.time(),
        }
        db = self._ctx.db
        existed = name in nodes
        async with db.transaction() as tx:
            await db.upsert_in(tx, nodes_table, values, ("host", "username", "node"))
            if existed:
                keep = config.limit(limit) if config.persist_items else 0
                await self._trim(tx, owner, name, keep)
        nodes[name] = config

    async def delete_node(self, owner: JID, name: str) -> None:
        nodes = await self.nodes(owner)
        params = self._params(owner, name)
        async with self._ctx.db.transaction() as tx:
            await tx.execute(_PURGE, params)
            await tx.execute(_DELETE_NODE, params)
        nodes.pop(name, None)

    # ------------------------------------------------------------------ items

    async def _trim(self, tx: Any, owner: JID, name: str, keep: int) -> None:
        params = self._params(owner, name)
        if keep <= 0:
            await tx.execute(_PURGE, params)
            return
        result = await tx.execute(_OLDEST_KEPT, {**params, "keep": keep})
        threshold = result.scalar()
        if threshold is not None:
            await tx.execute(_TRIM, {**params, "threshold": threshold})

    async def publish(self, owner: JID, name: str, item_id: str, payload: str, *, keep: int) -> int:
        """Store an item (replacing one with the same id) and keep the newest ``keep``;
        returns its time stamp."""
        stamp = self._stamp()
        values = {**self._params(owner, name), "item_id": item_id}
        values.update(published_at=stamp, payload=payload)
        db = self._ctx.db
        async with db.transaction() as tx:
            await db.upsert_in(tx, items_table, values, ("host", "username", "node", "item_id"))
            await self._trim(tx, owner, name, keep)
        return stamp

    async def retract(self, owner: JID, name: str, item_id: str) -> bool:
        """Delete one item; ``False`` when there was none with that id."""
        count = await self._ctx.db.execute(
            _RETRACT, {**self._params(owner, name), "item_id": item_id}
        )
        return count > 0

    async def purge(self, owner: JID, name: str) -> None:
        await self._ctx.db.execute(_PURGE, self._params(owner, name))

    async def items(
        self, owner: JID, name: str, *, newest: int, ids: Sequence[str] = (), budget: int
    ) -> ItemPage:
        """The newest ``newest`` items, or those with ``ids``, oldest first, as many as
        fit in ``budget`` payload characters (always at least one)."""
        params = self._params(owner, name)
        db = self._ctx.db
        if ids:
            rows = await db.fetch_all(_BY_IDS, {**params, "ids": list(dict.fromkeys(ids))})
            found = sorted(
                (StoredItem(r.item_id, r.published_at, r.payload) for r in rows),
                key=lambda i: i.published_at,
                reverse=True,
            )
            chosen: list[StoredItem] = []
            used = 0
            for item in found:
                if chosen and used + len(item.payload) > budget:
                    break
                chosen.append(item)
                used += len(item.payload)
            return ItemPage(chosen[::-1], len(chosen) < len(found))
        meta = await db.fetch_all(_NEWEST, {**params, "limit": newest})
        wanted: list[str] = []
        used = 0
        for row in meta:
            size = int(row.size or 0)
            if wanted and used + size > budget:
                break
            wanted.append(row.item_id)
            used += size
        if not wanted:
            return ItemPage([], False)
        rows = await db.fetch_all(_BY_IDS, {**params, "ids": wanted})
        chosen = sorted(
            (StoredItem(r.item_id, r.published_at, r.payload) for r in rows),
            key=lambda i: i.published_at,
        )
        return ItemPage(chosen, len(wanted) < len(meta))

    async def last_item(self, owner: JID, name: str) -> StoredItem | None:
        row = await self._ctx.db.fetch_one(_LAST, self._params(owner, name))
        return None if row is None else StoredItem(row.item_id, row.published_at, row.payload)

    async def item_ids(self, owner: JID, name: str, *, limit: int) -> list[str]:
        """Item ids, newest first."""
        rows = await self._ctx.db.fetch_all(
            _ITEM_IDS, {**self._params(owner, name), "limit": limit}
        )
        return [row.item_id for row in rows]

    # ------------------------------------------------------------------ accounts

    def forget_cached(self, owner: JID) -> None:
        self._nodes.pop(owner.local, None)

    async def forget_user(self, owner: JID) -> None:
        self.forget_cached(owner)
        params = {"host": self._ctx.domain, "username": owner.local}
        async with self._ctx.db.transaction() as tx:
            for table in (items_table, nodes_table):
                await tx.execute(
                    delete(table).where(table.c.host == _HOST, table.c.username == _USER),
                    params,
                )
        self.forget_cached(owner)

    # ------------------------------------------------------------------ caps

    def cached_interests(self, key: tuple[str, str]) -> frozenset[str] | None:
        found = self._caps.get(key)
        if found is not None:
            self._caps.move_to_end(key)
        return found

    def _remember(self, key: tuple[str, str], interests: frozenset[str]) -> None:
        self._caps[key] = interests
        self._caps.move_to_end(key)
        while len(self._caps) > self._ctx.options.caps_cache_size:
            self._caps.popitem(last=False)

    async def stored_interests(self, key: tuple[str, str]) -> frozenset[str] | None:
        """The interests of a verification string verified before (memory, then table)."""
        found = self.cached_interests(key)
        if found is not None:
            return found
        algo, ver = key
        text = await self._ctx.db.fetch_value(
            _SELECT_CAPS, {"host": self._ctx.domain, "algo": algo, "ver": ver}
        )
        if text is None:
            return None
        try:
            interests = frozenset(str(f) for f in json.loads(text))
        except (ValueError, TypeError):
            return None
        self._remember(key, interests)
        return interests

    async def store_interests(self, key: tuple[str, str], interests: frozenset[str]) -> None:
        self._remember(key, interests)
        algo, ver = key
        await self._ctx.db.upsert(
            caps_table,
            {
                "host": self._ctx.domain,
                "algo": algo,
                "ver": ver,
                "interests": json.dumps(sorted(interests)),
                "stored_at": time.time(),
            },
            ("host", "algo", "ver"),
        )


PEP: Final = ServiceKey[PepStore]("pep")
"""The PEP store of a host, for other modules (e.g. to read an account's avatar node)."""
