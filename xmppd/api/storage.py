"""Storage helpers for modules: declare tables with ``module.table(...)`` using these
SQLAlchemy Core types, query through ``ctx.db`` (``fetch_all``, ``upsert``...). A read
on a hot path: build it once with ``bindparam`` placeholders and mark it
``prepared(...)`` (on SQLite it then skips SQLAlchemy's work per call). Many small
writes arriving together: :class:`GroupCommit` makes them in one transaction."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)

from xmppd.storage.database import Database
from xmppd.storage.groupcommit import GroupCommit
from xmppd.storage.keyval import KeyValueStore
from xmppd.storage.prepared import prepared
from xmppd.storage.retry import REFUSED_FOR_DATA, StorageUnavailable, WriteRetry

__all__ = [
    "JSON",
    "BigInteger",
    "Boolean",
    "Column",
    "Database",
    "Float",
    "GroupCommit",
    "Index",
    "Integer",
    "KeyValueStore",
    "LargeBinary",
    "REFUSED_FOR_DATA",
    "StorageUnavailable",
    "String",
    "Text",
    "and_",
    "bindparam",
    "delete",
    "func",
    "insert",
    "or_",
    "prepared",
    "sa",
    "select",
    "WriteRetry",
    "update",
]
