"""Server side of the SASL mechanisms: SCRAM-SHA-{1,256,512}[-PLUS] and PLAIN.

The stream layer picks the offered mechanisms with :func:`offered_mechanisms`,
instantiates the one the client chose with :func:`create_mechanism` and feeds it the
base64-decoded client payloads through :meth:`Mechanism.step` until it returns
:class:`Success` or :class:`Failure`.  ``step`` never raises: malformed input yields
``Failure("malformed-request")`` and credential-store errors
``Failure("temporary-auth-failure")``.

An empty payload as the very first step (the client sent no initial response) is
answered with an empty :class:`Challenge`, once.

Unknown users go through the whole SCRAM exchange with a deterministic fake salt
(an HMAC of the username under a process secret, see
:func:`configure_unknown_user_disguise`) and fail only at the final step, exactly
like a wrong password.  Passwords and SASL payloads are never logged.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hmac
import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Protocol, TypeAlias

from precis_i18n import get_profile

from xmppd.auth.hashing import off_the_loop
from xmppd.auth.scram import (
    DEFAULT_ITERATIONS,
    SCRAM_HASHES,
    ScramCredentials,
    digest_size,
    hash_digest,
    hmac_digest,
    keys_from_salted_password,
    prepare_password,
    salted_password,
)
from xmppd.jid import JID, MAX_INPUT_CHARS, InvalidJID, domainprep, nodeprep

__all__ = [
    "Advertised",
    "Challenge",
    "CredentialLookup",
    "Failure",
    "Mechanism",
    "SaslStep",
    "Success",
    "TlsChannel",
    "configure_unknown_user_disguise",
    "create_mechanism",
    "offered_mechanisms",
    "prepare_username",
    "verify_password",
]

logger = logging.getLogger(__name__)

PLAIN: Final = "PLAIN"
_SCRAM_BY_STRENGTH: Final = ("SHA-512", "SHA-256", "SHA-1")
_PLAIN_HASH_PREFERENCE: Final = ("SHA-256", "SHA-512", "SHA-1")
_FAKE_SALT_LENGTH: Final = 16
_SERVER_NONCE_BYTES: Final = 24

_OPAQUE_PROFILE: Final = get_profile("OpaqueString")
_CB_NAME_RE: Final = re.compile(r"[A-Za-z0-9.-]+")
_ATTRIBUTE_RE: Final = re.compile(r"[A-Za-z]=.+", re.DOTALL)
_SASLNAME_ESCAPE_RE: Final = re.compile(r"=(2C|3D)")


# --------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send ``data`` to the client in a ``<challenge/>`` and wait for its response."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Success:
    """Authentication succeeded.

    ``username`` is the prepared (nodeprep'd) localpart; ``data`` is the additional
    data for ``<success/>`` (the SCRAM server-final message, empty for PLAIN).
    """

    username: str
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class Failure:
    """Authentication failed; ``condition`` is an RFC 6120 §6.5 condition name.

    One of ``not-authorized``, ``malformed-request``, ``invalid-mechanism``,
    ``encryption-required``, ``invalid-authzid``, ``aborted``, ``incorrect-encoding``
    or ``temporary-auth-failure``.
    """

    condition: str
    text: str = ""


SaslStep: TypeAlias = Challenge | Success | Failure


class CredentialLookup(Protocol):
    """Source of stored SCRAM credentials (usually the account store)."""

    async def get_scram(self, username: str, hash_name: str) -> ScramCredentials | None:
        """Credentials of ``username`` (already nodeprep'd) for ``hash_name``, if any."""
        ...


@dataclass(frozen=True, slots=True)
class TlsChannel:
    """The TLS layer a SASL exchange runs over.

    ``bindings`` maps channel-binding type names (``"tls-server-end-point"``,
    ``"tls-unique"``, ``"tls-exporter"``...) to their data for this connection; it is
    empty when no binding data is available.  Entries with empty data are ignored.
    """

    bindings: Mapping[str, bytes]


@dataclass(frozen=True, slots=True)
class Advertised:
    """What the stream features offered: the SASL mechanisms (of the SASL profile the
    client is using) and the XEP-0440 channel-binding types (``None``: not advertised)."""

    mechanisms: tuple[str, ...]
    channel_bindings: tuple[str, ...] | None

    def downgrade_hash(self, hash_name: str) -> str:
        """XEP-0474 SCRAM downgrade protection: the base64 hash of the sorted lists,
        sent as the ``h`` attribute of the server-first-message."""
        text = "\x1e".join(sorted(self.mechanisms))
        if self.channel_bindings is not None:
            text += "\x1f" + "\x1e".join(sorted(self.channel_bindings))
        digest = hash_digest(hash_name, text.encode("ascii"))
        return base64.b64encode(digest).decode("ascii")


class Mechanism(Protocol):
    """One server-side SASL exchange."""

    name: str
    username: str
    """The (prepared) account the client named, once it did; ``""`` before. The
    failed-login throttle counts failures against it."""

    async def step(self, data: bytes) -> SaslStep:
        """Process one decoded client payload (``b""`` for an empty one)."""
        ...


# ------------------------------------------------------- unknown-user disguise


class _Disguise:
    secret: bytes = secrets.token_bytes(32)
    iterations: int = DEFAULT_ITERATIONS


def configure_unknown_user_disguise(secret: bytes, *, iterations: int = DEFAULT_ITERATIONS) -> None:
    """Set how SCRAM answers for users that do not exist.

    The fake salt is ``HMAC-SHA-256(secret, hash name + username)``; by default the
    secret is random per process, so a server that wants the fake salts to stay stable
    across restarts (as real ones do) should pass a persistent secret.  ``iterations``
    should match the count used for real accounts.
    """
    if not secret:
        raise ValueError("the secret must not be empty")
    if iterations < 1:
        raise ValueError("the iteration count must be positive")
    _Disguise.secret = bytes(secret)
    _Disguise.iterations = iterations


def _fake_credentials(username: str, hash_name: str) -> ScramCredentials:
    message = f"{hash_name}\0{username}".encode()
    salt = hmac.digest(_Disguise.secret, message, "sha256")[:_FAKE_SALT_LENGTH]
    size = digest_size(hash_name)
    return ScramCredentials(
        hash_name=hash_name,
        salt=salt,
        iterations=_Disguise.iterations,
        stored_key=secrets.token_bytes(size),
        server_key=secrets.token_bytes(size),
    )


def _usable(creds: ScramCredentials | None, hash_name: str) -> bool:
    if creds is None:
        return False
    size = digest_size(hash_name)
    if (
        creds.hash_name != hash_name
        or len(creds.stored_key) != size
        or len(creds.server_key) != size
        or not creds.salt
        or creds.iterations < 1
    ):
        logger.warning("ignoring unusable stored %s credentials", hash_name)
        return False
    return True


# ------------------------------------------------------------------- helpers


class _Abort(Exception):
    """Internal: end the exchange with the given failure condition."""

    def __init__(self, condition: str) -> None:
        super().__init__(condition)
        self.condition = condition


def _malformed() -> _Abort:
    return _Abort("malformed-request")


def prepare_username(raw: str) -> str:
    """SASLprep (as PRECIS OpaqueString) then nodeprep; raises InvalidJID."""
    if len(raw) > MAX_INPUT_CHARS:  # before PRECIS, whose cost grows with the length
        raise InvalidJID("username too long")
    if raw and raw.isascii() and raw.isprintable():
        return nodeprep(raw)  # OpaqueString leaves printable ASCII as it is
    try:
        mapped = _OPAQUE_PROFILE.enforce(raw)
    except UnicodeError:
        raise InvalidJID("invalid username") from None
    return nodeprep(mapped)


def _authzid_allowed(authzid: str, username: str, domain: str) -> bool:
    """Only the user's own bare JID may be requested as authorization identity."""
    try:
        jid = JID.parse(authzid)
    except InvalidJID:
        return False
    return jid.is_bare and jid.local == username and jid.domain == domain


def _b64decode(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _malformed() from None


def _parse_attributes(text: str) -> list[tuple[str, str]]:
    """Split ``k=v,k=v`` SCRAM attributes; values must be non-empty."""
    attributes = []
    for item in text.split(","):
        if _ATTRIBUTE_RE.fullmatch(item) is None:
            raise _malformed()
        attributes.append((item[0], item[2:]))
    return attributes


def _unescape_saslname(value: str) -> str:
    """Decode ``=2C`` and ``=3D``; any other use of ``=`` is malformed."""
    if value.count("=") != len(_SASLNAME_ESCAPE_RE.findall(value)):
        raise _malformed()
    return _SASLNAME_ESCAPE_RE.sub(lambda m: "," if m.group(1) == "2C" else "=", value)


def _decode_utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed() from None


def _valid_nonce(nonce: str) -> bool:
    return nonce.isascii() and nonce.isprintable() and " " not in nonce and "," not in nonce


class _State(enum.Enum):
    START = enum.auto()
    AWAIT_INITIAL = enum.auto()  # sent an empty challenge for the initial response
    AWAIT_FINAL = enum.auto()
    DONE = enum.auto()


async def _run_step(mechanism_name: str, coro_step: _StepFunction, data: bytes) -> SaslStep:
    """Run one step, turning internal aborts and unexpected errors into failures."""
    try:
        return await coro_step(data)
    except _Abort as abort:
        return Failure(abort.condition)
    except Exception as exc:  # never let client input crash the stream
        logger.error("%s: unexpected %s during SASL step", mechanism_name, type(exc).__name__)
        return Failure("malformed-request")


class _StepFunction(Protocol):
    async def __call__(self, data: bytes) -> SaslStep: ...


# --------------------------------------------------------------------- SCRAM


class ScramServerMechanism:
    """Server side of one SCRAM-<hash>[-PLUS] exchange (RFC 5802, RFC 7677)."""

    __slots__ = (
        "_auth_message_prefix",
        "_cbind_expected",
        "_creds",
        "_domain",
        "_downgrade_hash",
        "_hash_name",
        "_known",
        "_lookup",
        "_nonce",
        "_plus",
        "_state",
        "_tls",
        "name",
        "username",
    )

    def __init__(
        self,
        hash_name: str,
        *,
        plus: bool,
        domain: str,
        lookup: CredentialLookup,
        tls: TlsChannel | None,
        advertised: Advertised | None = None,
    ) -> None:
        if hash_name not in SCRAM_HASHES:
            raise ValueError(f"unsupported SCRAM hash: {hash_name!r}")
        self.name: str = f"SCRAM-{hash_name}" + ("-PLUS" if plus else "")
        self._hash_name = hash_name
        self._plus = plus
        self._domain = domain
        self._lookup = lookup
        self._tls = tls
        self._state = _State.START
        self.username = ""
        self._nonce = ""
        self._cbind_expected = b""
        self._auth_message_prefix = ""
        self._creds: ScramCredentials | None = None
        self._known = False
        self._downgrade_hash = "" if advertised is None else advertised.downgrade_hash(hash_name)

    async def step(self, data: bytes) -> SaslStep:
        result = await _run_step(self.name, self._step, data)
        if not isinstance(result, Challenge):
            self._state = _State.DONE
        return result

    async def _step(self, data: bytes) -> SaslStep:
        if self._state is _State.START and not data:
            self._state = _State.AWAIT_INITIAL
            return Challenge(b"")
        if self._state in (_State.START, _State.AWAIT_INITIAL):
            return await self._client_first(data)
        if self._state is _State.AWAIT_FINAL:
            return self._client_final(data)
        return Failure("malformed-request")

    def _channel_binding_input(self, flag: str, gs2_header: str) -> bytes:
        """Check the GS2 channel-binding flag; return the expected ``c=`` content."""
        bindings = _available_bindings(self._tls)
        if flag == "n":
            if self._plus:
                raise _malformed()
            return gs2_header.encode()
        if flag == "y":
            if self._plus:
                raise _malformed()
            if bindings:
                # The client believes we cannot bind although we offered -PLUS:
                # someone stripped the -PLUS mechanisms (RFC 5802 §6).
                raise _Abort("not-authorized")
            return gs2_header.encode()
        if flag.startswith("p="):
            cb_name = flag[2:]
            if not self._plus or _CB_NAME_RE.fullmatch(cb_name) is None:
                raise _malformed()
            cb_data = bindings.get(cb_name)
            if cb_data is None:
                raise _Abort("not-authorized")
            return gs2_header.encode() + cb_data
        raise _malformed()

    async def _client_first(self, data: bytes) -> SaslStep:
        text = _decode_utf8(data)
        parts = text.split(",", 2)
        if len(parts) != 3:
            raise _malformed()
        flag, authz, bare = parts
        gs2_header = f"{flag},{authz},"
        cbind_expected = self._channel_binding_input(flag, gs2_header)

        authzid = ""
        if authz:
            if not authz.startswith("a=") or len(authz) == 2:
                raise _malformed()
            authzid = _unescape_saslname(authz[2:])

        attributes = _parse_attributes(bare)
        if len(attributes) < 2 or attributes[0][0] != "n" or attributes[1][0] != "r":
            raise _malformed()  # this includes a mandatory extension ("m=") up front
        raw_username = _unescape_saslname(attributes[0][1])
        client_nonce = attributes[1][1]
        if not _valid_nonce(client_nonce):
            raise _malformed()

        try:
            username = prepare_username(raw_username)
        except InvalidJID:
            raise _Abort("not-authorized") from None
        if authzid and not _authzid_allowed(authzid, username, self._domain):
            raise _Abort("invalid-authzid")

        try:
            creds = await self._lookup.get_scram(username, self._hash_name)
        except Exception as exc:
            logger.warning("%s: credential lookup failed: %s", self.name, type(exc).__name__)
            raise _Abort("temporary-auth-failure") from None
        self._known = _usable(creds, self._hash_name)
        if creds is None or not self._known:
            creds = _fake_credentials(username, self._hash_name)

        nonce = client_nonce + base64.b64encode(secrets.token_bytes(_SERVER_NONCE_BYTES)).decode(
            "ascii"
        )
        salt = base64.b64encode(creds.salt).decode("ascii")
        server_first = f"r={nonce},s={salt},i={creds.iterations}"
        if self._downgrade_hash:
            server_first += f",h={self._downgrade_hash}"

        self.username = username
        self._nonce = nonce
        self._creds = creds
        self._cbind_expected = cbind_expected
        self._auth_message_prefix = f"{bare},{server_first},"
        self._state = _State.AWAIT_FINAL
        return Challenge(server_first.encode("ascii"))

    def _client_final(self, data: bytes) -> SaslStep:
        creds = self._creds
        if creds is None:  # cannot happen once the state is AWAIT_FINAL
            raise _malformed()
        text = _decode_utf8(data)
        attributes = _parse_attributes(text)
        if (
            len(attributes) < 3
            or attributes[0][0] != "c"
            or attributes[1][0] != "r"
            or attributes[-1][0] != "p"
        ):
            raise _malformed()
        cbind_input = _b64decode(attributes[0][1])
        nonce = attributes[1][1]
        proof = _b64decode(attributes[-1][1])
        if len(proof) != digest_size(self._hash_name):
            raise _malformed()

        without_proof = text.rsplit(",", 1)[0]
        auth_message = (self._auth_message_prefix + without_proof).encode("utf-8")
        client_signature = hmac_digest(self._hash_name, creds.stored_key, auth_message)
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
        proof_ok = hmac.compare_digest(hash_digest(self._hash_name, client_key), creds.stored_key)
        binding_ok = hmac.compare_digest(cbind_input, self._cbind_expected)
        nonce_ok = hmac.compare_digest(nonce.encode("utf-8"), self._nonce.encode("ascii"))

        if not (proof_ok and binding_ok and nonce_ok and self._known):
            return Failure("not-authorized")
        server_signature = hmac_digest(self._hash_name, creds.server_key, auth_message)
        verifier = b"v=" + base64.b64encode(server_signature)
        return Success(self.username, verifier)


def _available_bindings(tls: TlsChannel | None) -> dict[str, bytes]:
    if tls is None:
        return {}
    return {name: data for name, data in tls.bindings.items() if data}


# --------------------------------------------------------------------- PLAIN


async def _lookup_for_password(lookup: CredentialLookup, username: str) -> ScramCredentials | None:
    for hash_name in _PLAIN_HASH_PREFERENCE:
        creds = await lookup.get_scram(username, hash_name)
        if _usable(creds, hash_name):
            return creds
    return None


async def verify_password(lookup: CredentialLookup, username: str, password: str) -> bool:
    """Check ``password`` against the stored SCRAM credentials of ``username``.

    ``username`` is prepared (SASLprep, then nodeprep) first, so both raw and
    already-prepared names work.  The SCRAM-SHA-256 credentials are preferred;
    SHA-512 and then SHA-1 are used when those are missing.  PBKDF2 runs in a hashing
    thread (:mod:`xmppd.auth.hashing`: below the event loop's priority), also for
    unknown users so that they take as long as wrong passwords.
    Exceptions raised by ``lookup`` propagate.
    """
    try:
        user = prepare_username(username)
        prepared = prepare_password(password)
    except ValueError:  # InvalidJID is a ValueError too
        return False
    creds = await _lookup_for_password(lookup, user)
    known = creds is not None
    if creds is None:
        creds = _fake_credentials(user, "SHA-256")
    salted = await off_the_loop(
        salted_password, prepared, creds.hash_name, creds.salt, creds.iterations
    )
    _, stored_key, _ = keys_from_salted_password(creds.hash_name, salted)
    return hmac.compare_digest(stored_key, creds.stored_key) and known


class PlainMechanism:
    """Server side of SASL PLAIN (RFC 4616); only ever offered over TLS."""

    __slots__ = ("_domain", "_lookup", "_state", "name", "username")

    def __init__(self, *, domain: str, lookup: CredentialLookup) -> None:
        self.name: str = PLAIN
        self.username = ""
        self._domain = domain
        self._lookup = lookup
        self._state = _State.START

    async def step(self, data: bytes) -> SaslStep:
        result = await _run_step(self.name, self._step, data)
        if not isinstance(result, Challenge):
            self._state = _State.DONE
        return result

    async def _step(self, data: bytes) -> SaslStep:
        if self._state is _State.START and not data:
            self._state = _State.AWAIT_INITIAL
            return Challenge(b"")
        if self._state not in (_State.START, _State.AWAIT_INITIAL):
            return Failure("malformed-request")

        fields = data.split(b"\0")
        if len(fields) != 3:
            raise _malformed()
        authzid, authcid, password = (_decode_utf8(field) for field in fields)
        if not authcid or not password:
            raise _malformed()
        try:
            username = prepare_username(authcid)
        except InvalidJID:
            return Failure("not-authorized")
        self.username = username
        if authzid and not _authzid_allowed(authzid, username, self._domain):
            return Failure("invalid-authzid")
        try:
            ok = await verify_password(self._lookup, username, password)
        except Exception as exc:
            logger.warning("PLAIN: credential lookup failed: %s", type(exc).__name__)
            return Failure("temporary-auth-failure")
        return Success(username) if ok else Failure("not-authorized")


# ----------------------------------------------------------------- selection


def offered_mechanisms(
    *, tls: TlsChannel | None, allow_plain: bool, insecure_plain: bool = False
) -> list[str]:
    """Mechanism names to advertise, strongest first.

    SCRAM-SHA-512, -256 and -1 always; preceded by their -PLUS variants when the TLS
    channel has binding data; followed by PLAIN when ``allow_plain`` and only over TLS,
    unless the admin explicitly allowed ``insecure_plain`` (loopback benchmarks).
    """
    names: list[str] = []
    if _available_bindings(tls):
        names.extend(f"SCRAM-{hash_name}-PLUS" for hash_name in _SCRAM_BY_STRENGTH)
    names.extend(f"SCRAM-{hash_name}" for hash_name in _SCRAM_BY_STRENGTH)
    if allow_plain and (tls is not None or insecure_plain):
        names.append(PLAIN)
    return names


def create_mechanism(
    name: str,
    *,
    domain: str,
    lookup: CredentialLookup,
    tls: TlsChannel | None,
    allow_plain: bool,
    insecure_plain: bool = False,
    advertised: Advertised | None = None,
) -> Mechanism | None:
    """Start an exchange for ``name``; ``None`` when that mechanism is not offered.

    ``domain`` is the server's domain, against which authorization identities are
    checked (it is prepared here; an invalid one raises :class:`InvalidJID`).
    """
    if name not in offered_mechanisms(
        tls=tls, allow_plain=allow_plain, insecure_plain=insecure_plain
    ):
        return None
    prepared_domain = domainprep(domain)
    if name == PLAIN:
        return PlainMechanism(domain=prepared_domain, lookup=lookup)
    plus = name.endswith("-PLUS")
    hash_name = name.removeprefix("SCRAM-").removesuffix("-PLUS")
    return ScramServerMechanism(
        hash_name, plus=plus, domain=prepared_domain, lookup=lookup, tls=tls, advertised=advertised
    )
