"""SCRAM credentials (RFC 5802, RFC 7677) and the primitives shared by the mechanisms.

Only the derived keys are ever stored: ``StoredKey = H(HMAC(SaltedPassword, "Client
Key"))`` and ``ServerKey = HMAC(SaltedPassword, "Server Key")`` with ``SaltedPassword =
PBKDF2-HMAC(password, salt, iterations)``.  SCRAM-SHA-512 follows the same
construction with SHA-512.

Passwords are prepared with the PRECIS OpaqueString profile (RFC 8265), the successor
of SASLprep.  ``scramp`` is used by the test-suite as an independent SCRAM client;
its server side is not used here because it cannot express several channel-binding
types, authorization identities, PRECIS preparation or indistinguishable unknown
users.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Final

from precis_i18n import get_profile

__all__ = [
    "DEFAULT_ITERATIONS",
    "SCRAM_HASHES",
    "ScramCredentials",
    "derive_credentials",
    "digest_size",
    "hash_digest",
    "hmac_digest",
    "keys_from_salted_password",
    "prepare_password",
    "salted_password",
]

SCRAM_HASHES: Final = ("SHA-1", "SHA-256", "SHA-512")
"""Hash names usable with SCRAM, as they appear in mechanism names (``SCRAM-<hash>``)."""

DEFAULT_ITERATIONS: Final = 4096

_HASHLIB_NAMES: Final = {"SHA-1": "sha1", "SHA-256": "sha256", "SHA-512": "sha512"}
_OPAQUE_PROFILE: Final = get_profile("OpaqueString")


@dataclass(frozen=True, slots=True)
class ScramCredentials:
    """What the server stores to verify one user's password with one hash."""

    hash_name: str
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


def _hashlib_name(hash_name: str) -> str:
    try:
        return _HASHLIB_NAMES[hash_name]
    except KeyError:
        raise ValueError(f"unsupported SCRAM hash: {hash_name!r}") from None


def digest_size(hash_name: str) -> int:
    """Output size in octets of the named hash (one of :data:`SCRAM_HASHES`)."""
    return hashlib.new(_hashlib_name(hash_name)).digest_size


def hash_digest(hash_name: str, data: bytes) -> bytes:
    """``H(data)`` with the named hash."""
    return hashlib.new(_hashlib_name(hash_name), data).digest()


def hmac_digest(hash_name: str, key: bytes, message: bytes) -> bytes:
    """``HMAC(key, message)`` with the named hash."""
    return hmac.digest(key, message, _hashlib_name(hash_name))


def prepare_password(password: str) -> bytes:
    """Prepare a password with PRECIS OpaqueString and encode it as UTF-8.

    Raises :class:`ValueError` when the password is empty or contains disallowed
    characters.
    """
    try:
        return _OPAQUE_PROFILE.enforce(password).encode("utf-8")
    except UnicodeError:
        # Deliberately no detail: the message must not echo any part of the password.
        raise ValueError("password is not valid under PRECIS OpaqueString") from None


def salted_password(prepared: bytes, hash_name: str, salt: bytes, iterations: int) -> bytes:
    """``Hi(password, salt, i)`` of RFC 5802, i.e. PBKDF2-HMAC; CPU bound."""
    return hashlib.pbkdf2_hmac(_hashlib_name(hash_name), prepared, salt, iterations)


def keys_from_salted_password(hash_name: str, salted: bytes) -> tuple[bytes, bytes, bytes]:
    """Return ``(ClientKey, StoredKey, ServerKey)`` for a salted password."""
    client_key = hmac_digest(hash_name, salted, b"Client Key")
    stored_key = hash_digest(hash_name, client_key)
    server_key = hmac_digest(hash_name, salted, b"Server Key")
    return client_key, stored_key, server_key


def derive_credentials(
    password: str,
    hash_name: str,
    *,
    iterations: int = DEFAULT_ITERATIONS,
    salt: bytes | None = None,
) -> ScramCredentials:
    """Derive the SCRAM credentials to store for ``password``.

    ``hash_name`` is one of :data:`SCRAM_HASHES`; a random 16-octet salt is used
    unless one is given.  This runs PBKDF2 synchronously, so async callers should use
    ``await xmppd.auth.hashing.off_the_loop(derive_credentials, ...)``.  Raises :class:`ValueError`
    for an unknown hash, a non-positive iteration count, an empty salt or an invalid
    password.
    """
    _hashlib_name(hash_name)
    if iterations < 1:
        raise ValueError("the iteration count must be positive")
    if salt is None:
        salt = secrets.token_bytes(16)
    elif not salt:
        raise ValueError("the salt must not be empty")
    salted = salted_password(prepare_password(password), hash_name, salt, iterations)
    _, stored_key, server_key = keys_from_salted_password(hash_name, salted)
    return ScramCredentials(hash_name, salt, iterations, stored_key, server_key)
