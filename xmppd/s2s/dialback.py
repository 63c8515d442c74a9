"""Server dialback keys (XEP-0220 with XEP-0185's recommended key generation).

The key is ``HMAC-SHA256(SHA256(secret), "<receiving> <originating> <stream id>")`` in
lowercase hex. It needs no state: the authoritative server recomputes it when the
receiving server asks with ``<db:verify/>``. The secret is derived from the server's
persistent secret (``<data_dir>/server.key``), so keys stay valid across a restart
and every node of a cluster computes the same.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from xmppd.server_secret import derive

NS_DIALBACK: Final = "jabber:server:dialback"
NS_DIALBACK_FEATURE: Final = "urn:xmpp:features:dialback"


def dialback_secret(server_secret: bytes) -> bytes:
    """The dialback secret of this server (derived, never the server secret itself)."""
    return derive(server_secret, "s2s-dialback")


def dialback_key(secret: bytes, receiving: str, originating: str, stream_id: str) -> str:
    """XEP-0185 §3: the key ``originating`` sends to ``receiving`` on the stream
    ``receiving`` gave ``stream_id``."""
    key = hashlib.sha256(secret).hexdigest().encode()
    message = f"{receiving} {originating} {stream_id}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def is_valid_key(secret: bytes, receiving: str, originating: str, stream_id: str, key: str) -> bool:
    """Constant-time comparison of ``key`` with the one we would have sent."""
    expected = dialback_key(secret, receiving, originating, stream_id)
    return hmac.compare_digest(expected.encode(), key.strip().lower().encode())
