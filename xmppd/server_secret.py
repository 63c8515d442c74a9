"""The server's persistent secret: one random key for the whole server (or cluster).

Things that must survive a restart without being stored in the database derive their
keys from it: FAST tokens (XEP-0484), the fake SCRAM salts answered for unknown users,
stable Bind 2 resources, the signatures of cluster records. Every node of a cluster
must hold the same one, so it comes from, in this order:

1. ``[server] secret_file``: a file the operator provides (a Kubernetes Secret);
2. in a cluster on a shared database (PostgreSQL): the ``xmppd_server_secret`` row,
   inserted by the first node that starts (insert-if-absent, so nodes starting at the
   same time agree) and read by every other;
3. otherwise ``<data_dir>/server.key``, created on first use.

A single server that becomes a cluster keeps its secret: the first node puts its
``server.key`` in the database instead of a new one, so FAST tokens stay valid.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from xmppd.storage.schema import server_secret

if TYPE_CHECKING:
    from xmppd.config import ServerConfig
    from xmppd.storage.database import Database

log = logging.getLogger(__name__)

FILE_NAME: Final = "server.key"
_KEY_BYTES: Final = 32
_MIN_TEXT: Final = 32
"""A secret file that is not hex must hold at least this many characters."""


class SecretError(ValueError):
    """The configured secret cannot be used (missing, unreadable, too short)."""


def load_or_create(data_dir: Path) -> bytes:
    """Read ``<data_dir>/server.key``, creating it (mode 0600) on first use."""
    path = data_dir / FILE_NAME
    existing = read_key_file(path, missing_ok=True)
    if existing is not None:
        return existing
    key = secrets.token_bytes(_KEY_BYTES)
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process of this server made it first
        found = read_key_file(path, missing_ok=False)
        assert found is not None
        return found
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    return key


def read_key_file(path: Path, *, missing_ok: bool) -> bytes | None:
    """The secret in ``path``: hex digits (``openssl rand -hex 32``) decoded, or any
    other text of 32 characters or more as its bytes. ``None`` if the file is missing
    and ``missing_ok``."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        if missing_ok:
            return None
        raise SecretError(f"{path}: the server secret file does not exist") from None
    except OSError as exc:
        raise SecretError(f"{path}: cannot read the server secret: {exc}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) >= 16:
        return key
    if len(text) >= _MIN_TEXT:
        return text.encode()
    raise SecretError(
        f"{path}: the server secret is too short (32 hex digits or 32 characters at "
        "least); write a new one with `openssl rand -hex 32`"
    )


def uses_database(config: ServerConfig) -> bool:
    """The secret lives in the database: a cluster on a shared database and no
    ``secret_file``."""
    return (
        config.server.secret_file is None
        and config.cluster.enabled
        and not config.storage_url().startswith("sqlite")
    )


async def load(config: ServerConfig, db: Database) -> bytes:
    """The server secret for ``config`` (the database must be started when
    :func:`uses_database`)."""
    if config.server.secret_file is not None:
        key = read_key_file(config.server.secret_file, missing_ok=False)
        assert key is not None
        return key
    if uses_database(config):
        path = config.server.data_dir / FILE_NAME
        local = read_key_file(path, missing_ok=True)
        key = await shared_secret(db, local)
        if local is not None and local != key:
            log.warning(
                "ignored %s: the cluster's server secret is the one in the database (set "
                "[server] secret_file to use a file on every node instead)",
                path,
            )
        return key
    return load_or_create(config.server.data_dir)


async def shared_secret(db: Database, initial: bytes | None = None) -> bytes:
    """The cluster's secret in the database: inserted if absent (``initial``, else a
    new random key), then read, so that every node, even those starting together,
    ends with the one row that won."""
    candidate = initial if initial is not None else secrets.token_bytes(_KEY_BYTES)
    row = {"id": 1, "secret": candidate.hex(), "created_at": time.time()}
    dialect = postgresql if db.dialect == "postgresql" else sqlite
    await db.execute(dialect.insert(server_secret).values(**row).on_conflict_do_nothing())
    stored = await db.fetch_value(sa.select(server_secret.c.secret).where(server_secret.c.id == 1))
    if not isinstance(stored, str):
        raise SecretError("the database holds no server secret after inserting one")
    key = bytes.fromhex(stored)
    if key == candidate:
        log.info("server secret: stored in the database for the whole cluster")
    return key


def derive(secret: bytes, purpose: str, *parts: str) -> bytes:
    """A 32-byte key for ``purpose`` bound to ``parts`` (HMAC-SHA-256; parts are
    NUL-separated, so no two different part lists give the same input)."""
    message = "\0".join((purpose, *parts)).encode()
    return hmac.new(secret, message, hashlib.sha256).digest()
