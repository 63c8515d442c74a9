"""XEP-0163 storage: the node and item tables (the shared XEP-0060 store of
:mod:`xmppd_modules.pubsub_common.store`, keyed by username), the verified-caps table, and
:class:`PepStore` (the ``PEP`` service)."""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from typing import Final

from xmppd.api import JID, ServiceKey
from xmppd.api.storage import Column, Float, String, Text, bindparam, select
from xmppd_modules.mod_pep.common import Ctx, module
from xmppd_modules.pubsub_common.store import ItemPage, NodeStore, StoredItem, node_tables

__all__ = ["PEP", "ItemPage", "PepStore", "StoredItem", "tables"]

tables: Final = node_tables(module, "username")
"""One row per node of an account, and the items of persistent nodes."""

caps_table: Final = module.table(
    "caps",
    Column("algo", String(16), primary_key=True),
    Column("ver", String(255), primary_key=True),
    Column("interests", Text, nullable=False),  # JSON list of "<node>+notify" features
    Column("stored_at", Float, nullable=False),
)
"""XEP-0115 verification strings whose disco#info answer matched, with the ``+notify``
features of that answer. Not user data: a hash of a client's feature set."""

_C: Final = caps_table.c
_SELECT_CAPS: Final = select(_C.interests).where(
    _C.host == bindparam("host", type_=String),
    _C.algo == bindparam("algo", type_=String),
    _C.ver == bindparam("ver", type_=String),
)


def _username(owner: JID) -> str:
    return owner.local


class PepStore(NodeStore):
    """Nodes and items of one host's accounts (the ``PEP`` service), and the verified
    XEP-0115 caps."""

    def __init__(self, ctx: Ctx) -> None:
        super().__init__(ctx, tables, _username)
        self._pep_ctx = ctx
        self._caps: OrderedDict[tuple[str, str], frozenset[str]] = OrderedDict()

    async def forget_user(self, owner: JID) -> None:
        await self.forget_owner(owner)

    # ------------------------------------------------------------------ caps

    def cached_interests(self, key: tuple[str, str]) -> frozenset[str] | None:
        found = self._caps.get(key)
        if found is not None:
            self._caps.move_to_end(key)
        return found

    def _remember(self, key: tuple[str, str], interests: frozenset[str]) -> None:
        self._caps[key] = interests
        self._caps.move_to_end(key)
        while len(self._caps) > self._pep_ctx.options.caps_cache_size:
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
