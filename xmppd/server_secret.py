"""The server's persistent secret: a random key kept in ``<data_dir>/server.key``.

Things that must survive a restart without being stored in the database derive their
keys from it: FAST tokens (XEP-0484), the fake SCRAM salts answered for unknown users,
stable Bind 2 resources. Nodes of a cluster must share the same file.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Final

FILE_NAME: Final = "server.key"
_KEY_BYTES: Final = 32


def load_or_create(data_dir: Path) -> bytes:
    """Read the secret, creating it (mode 0600) on first use."""
    path = data_dir / FILE_NAME
    try:
        key = bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        key = secrets.token_bytes(_KEY_BYTES)
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key.hex() + "\n")
        return key
    if len(key) < 16:
        raise ValueError(f"{path}: the server secret is too short; delete it to make a new one")
    return key


def derive(secret: bytes, purpose: str, *parts: str) -> bytes:
    """A 32-byte key for ``purpose`` bound to ``parts`` (HMAC-SHA-256; parts are
    NUL-separated, so no two different part lists give the same input)."""
    message = "\0".join((purpose, *parts)).encode()
    return hmac.new(secret, message, hashlib.sha256).digest()
