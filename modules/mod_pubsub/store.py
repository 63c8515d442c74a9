"""The PubSub service's storage: its nodes and items (the shared XEP-0060 store of
:mod:`xmppd_modules.pubsub_common.store`, keyed by the service's domain), affiliations and
subscriptions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from xmppd.api import JID, KeyedLocks
from xmppd.api.storage import Column, Float, Index, String, Text, bindparam, delete, select
from xmppd_modules.mod_pubsub.common import Ctx, module
from xmppd_modules.pubsub_common.config import NodeConfig, SubscriptionOptions
from xmppd_modules.pubsub_common.store import NodeStore, node_tables

AFFILIATIONS: Final = ("owner", "publisher", "member", "outcast")
"""Stored affiliations ('none' is the absence of a row)."""

tables: Final = node_tables(module, "service")
"""The nodes of the service and the items of persistent nodes."""

affiliations_table: Final = module.table(
    "affiliations",
    Column("service", String(255), primary_key=True),
    Column("node", String(1023), primary_key=True),
    Column("jid", String(1023), primary_key=True),  # a bare JID
    Column("affiliation", String(16), nullable=False),
)
"""XEP-0060 §4.1: who is owner, publisher, member or outcast of a node."""

subscriptions_table: Final = module.table(
    "subscriptions",
    Column("service", String(255), primary_key=True),
    Column("node", String(1023), primary_key=True),
    Column("jid", String(3071), primary_key=True),  # as subscribed: bare or full
    Column("bare", String(2047), nullable=False),  # its bare JID, for the user's lists
    Column("subid", String(64), nullable=False),
    Column("options", Text, nullable=False, default="{}"),  # SubscriptionOptions, JSON
    Column("created_at", Float, nullable=False),
)
"""XEP-0060 §6.1: the subscriptions (state 'subscribed'; no pending ones, no 'authorize')."""

_A: Final = affiliations_table.c
_S: Final = subscriptions_table.c
_INDEXES: Final = (
    Index("ix_mod_pubsub__affiliations_jid", _A.host, _A.service, _A.jid),
    Index("ix_mod_pubsub__subscriptions_bare", _S.host, _S.service, _S.bare),
)

_HOST: Final = bindparam("host", type_=String)
_SERVICE: Final = bindparam("service", type_=String)
_NODE: Final = bindparam("node", type_=String)
_JID: Final = bindparam("jid", type_=String)
_BARE: Final = bindparam("bare", type_=String)
_A_SERVICE: Final = (_A.host == _HOST, _A.service == _SERVICE)
_S_SERVICE: Final = (_S.host == _HOST, _S.service == _SERVICE)

_NODE_AFFILIATIONS: Final = select(_A.jid, _A.affiliation).where(*_A_SERVICE, _A.node == _NODE)
_USER_AFFILIATIONS: Final = select(_A.node, _A.affiliation).where(*_A_SERVICE, _A.jid == _JID)
_DELETE_AFFILIATION: Final = delete(affiliations_table).where(
    *_A_SERVICE, _A.node == _NODE, _A.jid == _JID
)
_DELETE_NODE_AFFILIATIONS: Final = delete(affiliations_table).where(*_A_SERVICE, _A.node == _NODE)
_DELETE_USER_AFFILIATIONS: Final = delete(affiliations_table).where(*_A_SERVICE, _A.jid == _JID)

_SUB_COLUMNS: Final = (_S.node, _S.jid, _S.subid, _S.options)
_NODE_SUBSCRIPTIONS: Final = select(*_SUB_COLUMNS).where(*_S_SERVICE, _S.node == _NODE)
_USER_SUBSCRIPTIONS: Final = select(*_SUB_COLUMNS).where(*_S_SERVICE, _S.bare == _BARE)
_DELETE_SUBSCRIPTION: Final = delete(subscriptions_table).where(
    *_S_SERVICE, _S.node == _NODE, _S.jid == _JID
)
_DELETE_BARE_SUBSCRIPTIONS: Final = delete(subscriptions_table).where(
    *_S_SERVICE, _S.node == _NODE, _S.bare == _BARE
)
_DELETE_NODE_SUBSCRIPTIONS: Final = delete(subscriptions_table).where(*_S_SERVICE, _S.node == _NODE)
_DELETE_USER_SUBSCRIPTIONS: Final = delete(subscriptions_table).where(*_S_SERVICE, _S.bare == _BARE)


@dataclass(frozen=True, slots=True)
class Subscription:
    node: str
    jid: JID
    """As subscribed (bare or full)."""
    subid: str
    options: SubscriptionOptions


def _subscription(row: Any) -> Subscription:
    return Subscription(
        row.node, JID.parse(row.jid), row.subid, SubscriptionOptions.from_json(row.options)
    )


class PubsubStore(NodeStore):
    """The service's nodes, items, affiliations and subscriptions (one service per host).

    Changes to one node are serialized by :meth:`node_lock`.
    """

    def __init__(self, ctx: Ctx, service: JID) -> None:
        super().__init__(ctx, tables, str)
        self.service = service
        self._node_locks = KeyedLocks()
        self.published = 0
        """Items published since start (the ``published_items`` metric)."""
        self.notified = 0
        """Event notifications sent since start (the ``notifications`` metric)."""

    def node_lock(self, name: str) -> asyncio.Lock:
        """The lock that serializes changes to node ``name`` (hold a reference)."""
        return self._node_locks.lock(name)

    def _base(self, **params: Any) -> dict[str, Any]:
        return {"host": self._ctx.domain, "service": str(self.service), **params}

    # ------------------------------------------------------------------ nodes

    async def create(self, name: str, config: NodeConfig, creator: JID, *, limit: int) -> None:
        """A new node with ``creator`` as its owner."""
        await self.nodes(self.service)  # loaded before the transaction: it reads on its own
        db = self._ctx.db
        async with db.transaction() as tx:
            await self.save_node(self.service, name, config, limit=limit, tx=tx)
            await db.upsert_in(
                tx,
                affiliations_table,
                self._base(node=name, jid=str(creator.bare), affiliation="owner"),
                ("host", "service", "node", "jid"),
            )
        await self.changed(self.service)

    async def remove(self, name: str) -> None:
        """Delete a node with its items, affiliations and subscriptions."""
        await self.nodes(self.service)  # loaded before the transaction: it reads on its own
        async with self._ctx.db.transaction() as tx:
            await self.delete_node(self.service, name, tx=tx)
            await tx.execute(_DELETE_NODE_AFFILIATIONS, self._base(node=name))
            await tx.execute(_DELETE_NODE_SUBSCRIPTIONS, self._base(node=name))
        await self.changed(self.service)

    # ------------------------------------------------------------------ affiliations

    async def affiliations(self, name: str) -> dict[JID, str]:
        """The affiliations of node ``name`` by bare JID."""
        rows = await self._ctx.db.fetch_all(_NODE_AFFILIATIONS, self._base(node=name))
        return {JID.parse(row.jid): row.affiliation for row in rows}

    async def affiliation(self, name: str, jid: JID) -> str:
        """``jid``'s affiliation with node ``name`` ('none' without one)."""
        return (await self.affiliations(name)).get(jid.bare, "none")

    async def user_affiliations(self, jid: JID) -> list[tuple[str, str]]:
        """(node, affiliation) of ``jid``'s bare JID, by node name."""
        rows = await self._ctx.db.fetch_all(_USER_AFFILIATIONS, self._base(jid=str(jid.bare)))
        return sorted((row.node, row.affiliation) for row in rows)

    async def set_affiliations(self, name: str, changes: dict[JID, str]) -> None:
        """Apply (bare JID -> affiliation or 'none'); an outcast loses its subscriptions."""
        db = self._ctx.db
        async with db.transaction() as tx:
            for jid, affiliation in changes.items():
                params = self._base(node=name, jid=str(jid))
                if affiliation == "none":
                    await tx.execute(_DELETE_AFFILIATION, params)
                    continue
                await db.upsert_in(
                    tx,
                    affiliations_table,
                    {**params, "affiliation": affiliation},
                    ("host", "service", "node", "jid"),
                )
                if affiliation == "outcast":
                    await tx.execute(
                        _DELETE_BARE_SUBSCRIPTIONS, self._base(node=name, bare=str(jid))
                    )

    # ------------------------------------------------------------------ subscriptions

    async def subscriptions(self, name: str) -> list[Subscription]:
        rows = await self._ctx.db.fetch_all(_NODE_SUBSCRIPTIONS, self._base(node=name))
        return [_subscription(row) for row in rows]

    async def subscription(self, name: str, jid: JID) -> Subscription | None:
        for found in await self.subscriptions(name):
            if found.jid == jid:
                return found
        return None

    async def user_subscriptions(self, jid: JID) -> list[Subscription]:
        """Every subscription of ``jid``'s bare JID (any resource), by node name."""
        rows = await self._ctx.db.fetch_all(_USER_SUBSCRIPTIONS, self._base(bare=str(jid.bare)))
        return sorted((_subscription(row) for row in rows), key=lambda s: (s.node, str(s.jid)))

    async def subscribe(
        self, name: str, jid: JID, subid: str, options: SubscriptionOptions
    ) -> None:
        await self._ctx.db.upsert(
            subscriptions_table,
            self._base(
                node=name,
                jid=str(jid),
                bare=str(jid.bare),
                subid=subid,
                options=options.to_json(),
                created_at=time.time(),
            ),
            ("host", "service", "node", "jid"),
        )

    async def unsubscribe(self, name: str, jids: Sequence[JID]) -> None:
        async with self._ctx.db.transaction() as tx:
            for jid in jids:
                await tx.execute(_DELETE_SUBSCRIPTION, self._base(node=name, jid=str(jid)))

    # ------------------------------------------------------------------ accounts

    async def forget_user(self, jid: JID) -> None:
        """Delete the affiliations and subscriptions of an account (bare JID)."""
        params = self._base(jid=str(jid.bare), bare=str(jid.bare))
        async with self._ctx.db.transaction() as tx:
            await tx.execute(_DELETE_USER_AFFILIATIONS, params)
            await tx.execute(_DELETE_USER_SUBSCRIPTIONS, params)
