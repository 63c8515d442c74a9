"""XEP-0484 FAST tokens and the HT-* SASL mechanisms (draft-schmaus-kitten-sasl-ht)
that authenticate with them in one round trip.

A client that authenticated with its password asks for a token inside its SASL2
``<authenticate/>``; later it proves it holds the token with
``HMAC(token, "Initiator" || channel-binding data)`` and the server answers with
``HMAC(token, "Responder" || channel-binding data)``.

Tokens are not stored: each row keeps a random nonce and the token is
``HMAC-SHA-256(server secret, host, user, client id, nonce)``, so a copy of the
database alone does not let anyone log in. Every client (SASL2 ``<user-agent id>``)
has two slots, as XEP-0484 §6 suggests: a token is issued into ``new``; when it is used
it moves to ``current`` (replacing the older token), so a token the client never
received does not lock it out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import sqlalchemy as sa

from xmppd.auth.sasl import Failure, SaslStep, Success, TlsChannel, prepare_username
from xmppd.jid import InvalidJID
from xmppd.server_secret import derive
from xmppd.storage.database import Database
from xmppd.storage.groupcommit import GroupCommit
from xmppd.storage.prepared import prepared
from xmppd.storage.schema import fast_tokens

NS: Final = "urn:xmpp:fast:0"
MECHANISMS: Final[dict[str, str | None]] = {
    "HT-SHA-256-ENDP": "tls-server-end-point",
    "HT-SHA-256-UNIQ": "tls-unique",
    "HT-SHA-256-NONE": None,
}
"""HT mechanism name → the channel binding it uses (``None``: none)."""
_NEW: Final = "new"
_CURRENT: Final = "current"
_HMAC_SIZE: Final = 32


_ONE_CLIENT: Final = (
    fast_tokens.c.host == sa.bindparam("of_host"),
    fast_tokens.c.username == sa.bindparam("of_user"),
    fast_tokens.c.client_id == sa.bindparam("of_client"),
)
"""One client's rows (parameters not named after columns: UPDATE reserves those)."""
# Built once (a statement costs more to build than to run): a FAST login runs the first,
# and the first use of a new token the other two.
_CLIENT_TOKENS: Final = prepared(sa.select(fast_tokens).where(*_ONE_CLIENT))
_DROP_CLIENT: Final = sa.delete(fast_tokens).where(*_ONE_CLIENT)
_DROP_CURRENT: Final = sa.delete(fast_tokens).where(*_ONE_CLIENT, fast_tokens.c.slot == _CURRENT)
_NEW_BECOMES_CURRENT: Final = (
    sa.update(fast_tokens).where(*_ONE_CLIENT, fast_tokens.c.slot == _NEW).values(slot=_CURRENT)
)


MAX_CLIENTS: Final = 100
"""Clients (``client_id``) of one account that hold FAST tokens: a new one beyond this
drops the tokens of the account's least recently renewed clients (each login may name a
new client id, and expired rows are only replaced, so the table grew with every one)."""
_OF_ACCOUNT: Final = (
    fast_tokens.c.host == sa.bindparam("of_host"),
    fast_tokens.c.username == sa.bindparam("of_user"),
)
_KEPT_CLIENTS: Final = (
    sa.select(fast_tokens.c.client_id)
    .where(*_OF_ACCOUNT)
    .group_by(fast_tokens.c.client_id)
    .order_by(sa.func.max(fast_tokens.c.expires_at).desc())
    .limit(MAX_CLIENTS)
)
_DROP_OLD_CLIENTS: Final = sa.delete(fast_tokens).where(
    *_OF_ACCOUNT, fast_tokens.c.client_id.not_in(_KEPT_CLIENTS)
)


PROMOTION_LINGER: Final = 0.01
"""Seconds a token's promotion waits for others, in a burst of FAST logins only (a
transaction each was a tenth of such a storm's CPU: one login per event-loop turn)."""


def offered_mechanisms(tls: TlsChannel) -> list[str]:
    """The HT mechanisms usable on this TLS connection, channel-binding ones first."""
    return [
        name for name, binding in MECHANISMS.items() if binding is None or tls.bindings.get(binding)
    ]


@dataclass(frozen=True, slots=True)
class Token:
    """A token as the client sees it, with its expiry (seconds since the epoch)."""

    token: str
    expires_at: float
    mechanism: str


class FastTokens:
    """Issues, verifies and revokes FAST tokens of every host."""

    def __init__(self, db: Database, secret: bytes, *, lifetime: float) -> None:
        self._db = db
        self._secret = secret
        self.lifetime = lifetime
        # A storm of FAST logins moves a token to ``current`` at each one (the first
        # use of every token issued at the logins before): one transaction for the
        # moves of several logins (a login waits up to PROMOTION_LINGER in a burst).
        self._promotions: GroupCommit[dict[str, str], None] = GroupCommit(
            self._promote_all, linger=PROMOTION_LINGER
        )

    def _token(self, host: str, username: str, client_id: str, nonce: str) -> str:
        raw = derive(self._secret, "fast-token", host, username, client_id, nonce)
        return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    async def issue(self, host: str, username: str, client_id: str, mechanism: str) -> Token:
        """A new token in the client's ``new`` slot (an unused earlier one is replaced)."""
        nonce = secrets.token_urlsafe(24)
        expires_at = time.time() + self.lifetime
        await self._db.upsert(
            fast_tokens,
            {
                "host": host,
                "username": username,
                "client_id": client_id,
                "slot": _NEW,
                "nonce": nonce,
                "mechanism": mechanism,
                "expires_at": expires_at,
            },
            keys=("host", "username", "client_id", "slot"),
        )
        await self._db.execute(_DROP_OLD_CLIENTS, {"of_host": host, "of_user": username})
        return Token(self._token(host, username, client_id, nonce), expires_at, mechanism)

    async def verify(
        self,
        host: str,
        username: str,
        client_id: str,
        mechanism: str,
        proves: Callable[[bytes], bool],
    ) -> Token | None:
        """The client's unexpired token for ``mechanism`` for which ``proves(token)``
        holds, ``new`` slot first; a matching ``new`` token becomes ``current``."""
        rows = await self._db.fetch_all(_CLIENT_TOKENS, _one_client(host, username, client_id))
        now = time.time()
        for row in sorted(rows, key=lambda r: r.slot != _NEW):
            token = self._token(host, username, client_id, row.nonce)
            if row.mechanism != mechanism or row.expires_at <= now:
                continue
            if proves(token.encode()):
                if row.slot == _NEW:
                    await self._promotions.submit(_one_client(host, username, client_id))
                return Token(token, float(row.expires_at), mechanism)
        return None

    async def _promote_all(self, clients: list[dict[str, str]]) -> list[None]:
        """Each client's ``new`` token becomes its ``current`` one (one transaction)."""
        async with self._db.transaction() as conn:
            await conn.execute(_DROP_CURRENT, clients)
            await conn.execute(_NEW_BECOMES_CURRENT, clients)
        return [None] * len(clients)

    def due_for_rotation(self, token: Token) -> bool:
        """Less than half of the token's lifetime is left."""
        return token.expires_at - time.time() < self.lifetime / 2

    async def invalidate(self, host: str, username: str, client_id: str) -> None:
        """Forget every token of one client (XEP-0484 §5 'invalidate')."""
        await self._db.execute(_DROP_CLIENT, _one_client(host, username, client_id))

    async def revoke_user(self, host: str, username: str) -> None:
        """Forget every token of an account (password changed, account removed)."""
        await self._db.execute(
            sa.delete(fast_tokens).where(
                fast_tokens.c.host == host, fast_tokens.c.username == username
            )
        )


def _one_client(host: str, username: str, client_id: str) -> dict[str, str]:
    """The parameters of :data:`_ONE_CLIENT`."""
    return {"of_host": host, "of_user": username, "of_client": client_id}


class HashedTokenMechanism:
    """Server side of one HT-SHA-256-* exchange: a single client message."""

    __slots__ = ("_client_id", "_domain", "_done", "_tls", "_tokens", "name", "token", "username")

    def __init__(
        self, name: str, *, domain: str, tokens: FastTokens, client_id: str, tls: TlsChannel
    ) -> None:
        if name not in MECHANISMS:
            raise ValueError(f"not an HT mechanism: {name!r}")
        self.name = name
        self._domain = domain
        self._tokens = tokens
        self._client_id = client_id
        self._tls = tls
        self._done = False
        self.username = ""
        self.token: Token | None = None
        """The token that authenticated the client, once it did."""

    async def step(self, data: bytes) -> SaslStep:
        if self._done:
            return Failure("malformed-request")
        self._done = True
        authcid, sep, proof = data.partition(b"\0")
        if not sep or len(proof) != _HMAC_SIZE:
            return Failure("malformed-request")
        try:
            username = prepare_username(authcid.decode("utf-8"))
        except (UnicodeDecodeError, InvalidJID):
            return Failure("not-authorized")
        self.username = username
        binding = MECHANISMS[self.name]
        cb_data = b"" if binding is None else self._tls.bindings.get(binding, b"")
        if binding is not None and not cb_data:
            return Failure("not-authorized")

        def proves(token: bytes) -> bool:
            expected = hmac.digest(token, b"Initiator" + cb_data, hashlib.sha256)
            return hmac.compare_digest(expected, proof)

        try:
            token = await self._tokens.verify(
                self._domain, username, self._client_id, self.name, proves
            )
        except Exception:
            return Failure("temporary-auth-failure")
        if token is None:
            return Failure("not-authorized")
        self.token = token
        answer = hmac.digest(token.token.encode(), b"Responder" + cb_data, hashlib.sha256)
        return Success(username, answer)
