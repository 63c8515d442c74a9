"""The node and item store of XEP-0060 services: :func:`node_tables` declares a module's
two tables, :class:`NodeStore` reads and writes them and keeps the node configurations of
recently used owners in memory.

An *owner* is whoever holds a set of nodes: an account for PEP (keyed by its username),
a service domain for the PubSub service.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from xmppd.api import INVALIDATE_ALL, JID, KeyedLocks, Module, ModuleContext
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
    sa,
    select,
)
from xmppd_modules.pubsub_common.common import NODE_CACHE
from xmppd_modules.pubsub_common.config import NodeConfig

_HOST: Final = bindparam("host", type_=String)
_OWNER: Final = bindparam("owner", type_=String)
_NODE: Final = bindparam("node", type_=String)
_LIMIT: Final = bindparam("limit", type_=Integer)


class NodeTables:
    """A module's node and item tables and the queries on them."""

    def __init__(self, nodes: sa.Table, items: sa.Table, owner_column: str) -> None:
        self.nodes = nodes
        self.items = items
        self.owner_column = owner_column
        n, i = nodes.c, items.c
        n_owner, i_owner = n[owner_column], i[owner_column]
        this_node = (i.host == _HOST, i_owner == _OWNER, i.node == _NODE)
        self.node_columns = (
            n.node,
            n.access_model,
            n.max_items,
            n.persist_items,
            n.send_last,
            n.config,
        )
        self.select_nodes = select(*self.node_columns).where(n.host == _HOST, n_owner == _OWNER)
        self.select_matching = select(n_owner.label("owner"), *self.node_columns).where(
            n.host == _HOST,
            n_owner.in_(bindparam("owners", expanding=True)),
            n.node.in_(bindparam("nodes", expanding=True)),
        )
        self.newest = (
            select(i.item_id, i.published_at, func.length(i.payload).label("size"))
            .where(*this_node)
            .order_by(i.published_at.desc())
            .limit(_LIMIT)
        )
        self.by_ids = select(i.item_id, i.published_at, i.payload).where(
            *this_node, i.item_id.in_(bindparam("ids", expanding=True))
        )
        self.last = (
            select(i.item_id, i.published_at, i.payload)
            .where(*this_node)
            .order_by(i.published_at.desc())
            .limit(1)
        )
        self.item_ids = (
            select(i.item_id).where(*this_node).order_by(i.published_at.desc()).limit(_LIMIT)
        )
        self.oldest_kept = (
            select(i.published_at)
            .where(*this_node)
            .order_by(i.published_at.desc())
            .offset(bindparam("keep", type_=Integer))
            .limit(1)
        )
        self.trim = delete(items).where(
            *this_node, i.published_at <= bindparam("threshold", type_=BigInteger)
        )
        self.retract = delete(items).where(
            *this_node, i.item_id == bindparam("item_id", type_=String)
        )
        self.purge = delete(items).where(*this_node)
        self.delete_node = delete(nodes).where(n.host == _HOST, n_owner == _OWNER, n.node == _NODE)
        self.forget_owner = tuple(
            delete(t).where(t.c.host == _HOST, t.c[owner_column] == _OWNER) for t in (items, nodes)
        )


def node_tables(module: Module[Any], owner_column: str, *, schema_version: int = 1) -> NodeTables:
    """Declare ``mod_<module>__nodes`` and ``mod_<module>__items``, keyed by host, then
    ``owner_column``, then node (and item id)."""
    nodes = module.table(
        "nodes",
        Column(owner_column, String(1023), primary_key=True),
        Column("node", String(1023), primary_key=True),
        Column("access_model", String(16), nullable=False),
        Column("max_items", Integer, nullable=True),  # NULL: "max"
        Column("persist_items", Boolean, nullable=False),
        Column("send_last", String(32), nullable=False),
        Column("config", Text, nullable=False, default="{}"),  # the other settings, JSON
        Column("changed_at", Float, nullable=False),  # created or last configured
        schema_version=schema_version,
    )
    items = module.table(
        "items",
        Column(owner_column, String(1023), primary_key=True),
        Column("node", String(1023), primary_key=True),
        Column("item_id", String(1023), primary_key=True),
        Column("published_at", BigInteger, nullable=False),  # microseconds, increasing
        Column("payload", Text, nullable=False),  # the serialized payload element
        schema_version=schema_version,
    )
    i = items.c
    Index(f"ix_{items.name}_order", i.host, i[owner_column], i.node, i.published_at)
    return NodeTables(nodes, items, owner_column)


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


class NodeStore:
    """Nodes and items of one host's owners.

    Every change goes through here, so the configurations cached for recently used
    owners stay right; an owner's changes are serialized by :meth:`lock`.
    ``owner_key`` maps an owner's JID to the value of the owner column.
    """

    def __init__(
        self, ctx: ModuleContext[Any], tables: NodeTables, owner_key: Callable[[JID], str]
    ) -> None:
        self._ctx = ctx
        self._tables = tables
        self._key = owner_key
        self._nodes: OrderedDict[str, dict[str, NodeConfig]] = OrderedDict()
        self._locks = KeyedLocks()
        self._last_stamp = 0
        ctx.on_invalidate("nodes", self._invalidated)

    def _invalidated(self, key: str) -> None:
        """Another node of the cluster changed the nodes of the owner ``key`` (the
        owner column's value): drop this node's configurations."""
        if key == INVALIDATE_ALL:
            self._nodes.clear()
        else:
            self._nodes.pop(key, None)

    def changed(self, owner: JID) -> Awaitable[object]:
        """``owner``'s nodes changed in storage (committed): other nodes of a cluster
        drop their copy. :meth:`save_node` and :meth:`delete_node` do it themselves
        unless given a transaction, whose owner calls this after the commit."""
        return self._ctx.invalidate("nodes", self._key(owner))

    def _params(self, owner: JID, node: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"host": self._ctx.domain, "owner": self._key(owner)}
        if node is not None:
            params["node"] = node
        return params

    def forget_all_cached(self) -> None:
        """Drop the cached node configurations (another process may have changed the
        nodes meanwhile: a cluster node that takes a service over)."""
        self._nodes.clear()

    def lock(self, owner: JID) -> asyncio.Lock:
        """The lock that serializes changes to ``owner``'s nodes (hold a reference)."""
        return self._locks.lock(self._key(owner))

    def _stamp(self) -> int:
        """Microseconds since the epoch, strictly increasing in this process."""
        self._last_stamp = max(time.time_ns() // 1000, self._last_stamp + 1)
        return self._last_stamp

    # ------------------------------------------------------------------ nodes

    async def nodes(self, owner: JID) -> dict[str, NodeConfig]:
        """``owner``'s nodes by name (do not change the mapping)."""
        key = self._key(owner)
        cached = self._nodes.get(key)
        if cached is not None:
            self._nodes.move_to_end(key)
            return cached
        generation = self._ctx.invalidation_generation
        rows = await self._ctx.db.fetch_all(self._tables.select_nodes, self._params(owner))
        loaded = {row.node: _config(row) for row in rows}
        if generation != self._ctx.invalidation_generation:
            return loaded  # another node may have changed them meanwhile: not kept
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
        by_key = {self._key(owner): owner for owner in owners}
        rows = await self._ctx.db.fetch_all(
            self._tables.select_matching,
            {"host": self._ctx.domain, "owners": sorted(by_key), "nodes": wanted},
        )
        return [(by_key[row.owner], row.node, _config(row)) for row in rows]

    async def save_node(
        self, owner: JID, name: str, config: NodeConfig, *, limit: int, tx: Any = None
    ) -> None:
        """Create or reconfigure a node; items beyond its new limit are deleted (all of
        them if it no longer persists items). With ``tx``, inside that transaction."""
        nodes = await self.nodes(owner)  # before the transaction: it reads on its own
        values = {
            "host": self._ctx.domain,
            self._tables.owner_column: self._key(owner),
            "node": name,
            "access_model": config.access_model,
            "max_items": config.max_items,
            "persist_items": config.persist_items,
            "send_last": config.send_last_published_item,
            "config": config.extra_json(),
            "changed_at": time.time(),
        }
        key = ("host", self._tables.owner_column, "node")
        keep = config.limit(limit) if config.persist_items else 0
        if tx is None:
            async with self._ctx.db.transaction() as own:
                await self._ctx.db.upsert_in(own, self._tables.nodes, values, key)
                if name in nodes:
                    await self._trim(own, owner, name, keep)
        else:
            await self._ctx.db.upsert_in(tx, self._tables.nodes, values, key)
            if name in nodes:
                await self._trim(tx, owner, name, keep)
        nodes[name] = config
        if tx is None:
            await self.changed(owner)

    async def delete_node(self, owner: JID, name: str, *, tx: Any = None) -> None:
        """Delete a node and its items (with ``tx``, inside that transaction)."""
        nodes = await self.nodes(owner)
        params = self._params(owner, name)
        if tx is None:
            async with self._ctx.db.transaction() as own:
                await own.execute(self._tables.purge, params)
                await own.execute(self._tables.delete_node, params)
        else:
            await tx.execute(self._tables.purge, params)
            await tx.execute(self._tables.delete_node, params)
        nodes.pop(name, None)
        if tx is None:
            await self.changed(owner)

    # ------------------------------------------------------------------ items

    async def _trim(self, tx: Any, owner: JID, name: str, keep: int) -> None:
        params = self._params(owner, name)
        if keep <= 0:
            await tx.execute(self._tables.purge, params)
            return
        result = await tx.execute(self._tables.oldest_kept, {**params, "keep": keep})
        threshold = result.scalar()
        if threshold is not None:
            await tx.execute(self._tables.trim, {**params, "threshold": threshold})

    async def publish(self, owner: JID, name: str, item_id: str, payload: str, *, keep: int) -> int:
        """Store an item (replacing one with the same id) and keep the newest ``keep``;
        returns its time stamp."""
        stamp = self._stamp()
        values = {
            "host": self._ctx.domain,
            self._tables.owner_column: self._key(owner),
            "node": name,
            "item_id": item_id,
            "published_at": stamp,
            "payload": payload,
        }
        key = ("host", self._tables.owner_column, "node", "item_id")
        db = self._ctx.db
        async with db.transaction() as tx:
            await db.upsert_in(tx, self._tables.items, values, key)
            await self._trim(tx, owner, name, keep)
        return stamp

    async def retract(self, owner: JID, name: str, item_id: str) -> bool:
        """Delete one item; ``False`` when there was none with that id."""
        count = await self._ctx.db.execute(
            self._tables.retract, {**self._params(owner, name), "item_id": item_id}
        )
        return count > 0

    async def purge(self, owner: JID, name: str) -> None:
        await self._ctx.db.execute(self._tables.purge, self._params(owner, name))

    async def items(
        self, owner: JID, name: str, *, newest: int, ids: Sequence[str] = (), budget: int
    ) -> ItemPage:
        """The newest ``newest`` items, or those with ``ids``, oldest first, as many as
        fit in ``budget`` payload characters (always at least one)."""
        params = self._params(owner, name)
        db = self._ctx.db
        tables = self._tables
        if ids:
            rows = await db.fetch_all(tables.by_ids, {**params, "ids": list(dict.fromkeys(ids))})
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
        meta = await db.fetch_all(tables.newest, {**params, "limit": newest})
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
        rows = await db.fetch_all(tables.by_ids, {**params, "ids": wanted})
        chosen = sorted(
            (StoredItem(r.item_id, r.published_at, r.payload) for r in rows),
            key=lambda i: i.published_at,
        )
        return ItemPage(chosen, len(wanted) < len(meta))

    async def last_item(self, owner: JID, name: str) -> StoredItem | None:
        row = await self._ctx.db.fetch_one(self._tables.last, self._params(owner, name))
        return None if row is None else StoredItem(row.item_id, row.published_at, row.payload)

    async def item_ids(self, owner: JID, name: str, *, limit: int) -> list[str]:
        """Item ids, newest first."""
        rows = await self._ctx.db.fetch_all(
            self._tables.item_ids, {**self._params(owner, name), "limit": limit}
        )
        return [row.item_id for row in rows]

    # ------------------------------------------------------------------ owners

    def forget_cached(self, owner: JID) -> None:
        self._nodes.pop(self._key(owner), None)

    async def forget_owner(self, owner: JID) -> None:
        """Delete every node and item of ``owner``."""
        self.forget_cached(owner)
        params = self._params(owner)
        async with self._ctx.db.transaction() as tx:
            for statement in self._tables.forget_owner:
                await tx.execute(statement, params)
        self.forget_cached(owner)
        await self.changed(owner)
