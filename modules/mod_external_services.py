"""XEP-0215: External Service Discovery — STUN and TURN servers for calls.

Jingle clients (Conversations, Dino, Monal...) ask the server which STUN/TURN relays
to use. The services come from the configuration; a TURN service with a ``secret``
gets time-limited credentials in the shared-secret REST scheme coturn implements
(``use-auth-secret`` / ``static-auth-secret``): the username is
``<expiry unix time>:<bare JID>`` and the password the base64 HMAC-SHA1 of the
username under the secret, valid for ``credentials_ttl``. Only users the ``access``
rule lets in get the list (others: ``forbidden``); the secret itself never leaves the
server.

- ``<services xmlns='urn:xmpp:extdisco:2'/>`` (optionally ``type='turn'``...) lists
  the services, with credentials where they have a secret;
- ``<credentials><service host='...' type='...'/></credentials>`` gives fresh
  credentials for one of them (``item-not-found`` for an unknown one).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from xmppd.api import (
    AccessRule,
    Duration,
    IqRequest,
    Module,
    ModuleContext,
    Options,
    Scope,
    StanzaError,
    ns,
)
from xmppd.api.stanza import Element, payload

NS: Final = ns.EXTDISCO


class ExternalService(BaseModel):
    """One STUN or TURN server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["stun", "stuns", "turn", "turns"]
    host: str = Field(min_length=1, max_length=255)
    port: int = Field(3478, ge=1, le=65535)
    transport: Literal["udp", "tcp"] = "udp"
    name: str = ""
    secret: SecretStr | None = Field(
        None, description="coturn's static-auth-secret: credentials are derived from it."
    )


class ExternalServicesOptions(Options):
    services: tuple[ExternalService, ...] = Field(
        (),
        description="STUN/TURN servers: tables with type (stun, stuns, turn, turns), host, "
        "port (3478), transport (udp, tcp), name, and for TURN the shared secret.",
    )
    credentials_ttl: Duration = Field(
        86400.0, ge=60, le=30 * 86400, description="How long TURN credentials stay valid."
    )
    access: AccessRule = Field(
        AccessRule("local"),
        description="Who may list the services (and get credentials): 'local', 'anyone', "
        "'admins', 'nobody', or a list of JIDs and domains.",
    )


module = Module(
    "external_services",
    "XEP-0215: External Service Discovery",
    options=ExternalServicesOptions,
    protocols=("XEP-0215 v1.0",),
)
module.feature(NS)
Ctx = ModuleContext[ExternalServicesOptions]


def turn_credentials(secret: str, user: str, expires: int) -> tuple[str, str]:
    """The TURN REST API credentials coturn accepts with ``use-auth-secret``."""
    username = f"{expires}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def _service(ctx: Ctx, service: ExternalService, user: str, now: float) -> Element:
    attrs = {
        "type": service.type,
        "host": service.host,
        "port": str(service.port),
        "transport": service.transport,
    }
    if service.name:
        attrs["name"] = service.name
    if service.secret is not None:
        expires = int(now + ctx.options.credentials_ttl)
        username, password = turn_credentials(service.secret.get_secret_value(), user, expires)
        attrs["username"] = username
        attrs["password"] = password
        attrs["expires"] = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        attrs["restricted"] = "1"
    return payload(NS, "service", attrs)


def _requester(ctx: Ctx, req: IqRequest) -> str:
    if req.from_ is None or not ctx.may(ctx.options.access, req.from_.bare):
        raise StanzaError("forbidden", "not allowed to use these services")
    return str(req.from_.bare)


@module.iq("get", NS, "services", to=Scope.HOST)
async def services(ctx: Ctx, req: IqRequest) -> Element:
    user = _requester(ctx, req)
    wanted = req.payload.get("type")
    result = payload(NS, "services")
    if wanted:
        result.set("type", wanted)
    now = time.time()
    for service in ctx.options.services:
        if wanted is None or service.type == wanted:
            result.append(_service(ctx, service, user, now))
    return req.result(result)


@module.iq("get", NS, "credentials", to=Scope.HOST)
async def credentials(ctx: Ctx, req: IqRequest) -> Element:
    user = _requester(ctx, req)
    asked = req.payload.find(f"{{{NS}}}service")
    if asked is None or not asked.get("host") or not asked.get("type"):
        raise StanzaError("bad-request", "which service?")
    port = asked.get("port")
    for service in ctx.options.services:
        if (
            service.host == asked.get("host")
            and service.type == asked.get("type")
            and (port is None or port == str(service.port))
        ):
            result = payload(NS, "credentials")
            result.append(_service(ctx, service, user, time.time()))
            return req.result(result)
    raise StanzaError("item-not-found", "no such service")


__all__ = ["ExternalService", "module", "turn_credentials"]
