"""What every resource of the admin API shares: routes described once (method, path
template, scope, request and answer models) so that dispatch, validation and the
OpenAPI document all come from the same table; JSON errors with stable codes; the
caller (:class:`Principal`); and the audit log of mutations.

Errors (:class:`ApiError`, answered as :class:`Problem`):

======  ==================  ==============================================
status  ``error``           when
======  ==================  ==============================================
401     ``unauthorized``    no bearer token, an unknown, wrong or revoked one
403     ``forbidden``       the token's scope does not allow the endpoint
404     ``not-found``       no such user (or not one of this server's hosts),
                            room, session, roster item or route
409     ``conflict``        the account or room exists already
422     ``invalid-body``    the JSON body or a query parameter is invalid;
                            ``field`` names it
422     ``weak-password``   refused by the password policy (``field``: password)
429     ``throttled``       (``POST /auth/token``) too many failed checks
503     ``unavailable``     the module behind the endpoint is not loaded
======  ==================  ==============================================
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Final
from urllib.parse import unquote

from aiohttp import web
from pydantic import AfterValidator, BaseModel, Field, StringConstraints, ValidationError

from xmppd.auth.passwords import password_problem
from xmppd.httproutes import client_of
from xmppd.jid import JID, InvalidJID

if TYPE_CHECKING:
    from xmppd.auth.throttle import FailedLoginThrottle
    from xmppd.core import Core
    from xmppd.host import Host

API: Final = "/api/v1"
OPENAPI_PATH: Final = "/api/openapi.json"
DOCS_PATH: Final = "/api"
MAX_BODY: Final = 64 * 1024
"""Request bodies above this are refused (413) before they are parsed."""

audit_log = logging.getLogger("xmppd.audit")
"""One INFO line per mutation; see :func:`audit_line` for the format."""

ADMIN_SCOPES: Final = ("read-only", "users", "rooms", "admin")
USER_SCOPE: Final = "user"
PUBLIC: Final = "public"


class Problem(BaseModel):
    """An error answer: ``error`` is a stable code, ``detail`` is for humans."""

    error: str
    detail: str = ""
    field: str | None = Field(None, description="The body field or query parameter at fault.")


class ApiError(Exception):
    """Raised by a handler; answered as a :class:`Problem` with ``status``."""

    def __init__(self, status: int, error: str, detail: str = "", field: str | None = None):
        super().__init__(detail or error)
        self.status = status
        self.problem = Problem(error=error, detail=detail, field=field)


def not_found(what: str) -> ApiError:
    return ApiError(404, "not-found", what)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who calls: an admin token (scope one of :data:`ADMIN_SCOPES`) or a user token
    (scope ``user``, ``account`` set); ``None`` for the public endpoints."""

    token_id: str
    name: str
    scope: str
    account: JID | None = None

    def allows(self, needed: str) -> bool:
        """Whether this principal may call an endpoint needing ``needed``.

        ``admin`` allows every admin endpoint; ``users`` and ``rooms`` allow their own
        and the ``read-only`` ones; a user token allows only the ``/me`` endpoints."""
        if needed == PUBLIC:
            return True
        if self.scope == USER_SCOPE or needed == USER_SCOPE:
            return self.scope == needed
        return self.scope in ("admin", needed) or needed == "read-only"


@dataclass(slots=True)
class Call:
    """One request as a handler sees it: validated, authorised."""

    request: web.Request
    principal: Principal | None
    params: dict[str, str]
    body: Any = None
    query: Any = None
    audit_target: str = ""
    """Set by a mutating handler: what it acted on (for the audit log)."""

    @property
    def user(self) -> JID:
        """The account of a user token (only on ``/me`` endpoints)."""
        assert self.principal is not None and self.principal.account is not None
        return self.principal.account


class Download(BaseModel):
    """A file answered as is (``Route.download``), not as JSON."""

    filename: str
    data: bytes


Handler = Callable[[Call], Awaitable[BaseModel | None]]


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint: everything dispatch and the OpenAPI document need."""

    method: str
    path: str
    """Under ``/api/v1``; ``{name}`` matches one path segment (percent-decoded)."""
    handler: Handler
    scope: str
    summary: str
    status: int = 200
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    """Error statuses besides 401/403/422 that the endpoint answers."""
    download: str | None = None
    """Media type of a file the endpoint answers with instead of JSON (its handler
    returns :class:`Download`)."""
    segments: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", tuple(self.path.strip("/").split("/")))

    def match(self, parts: list[str]) -> dict[str, str] | None:
        if len(parts) != len(self.segments):
            return None
        params: dict[str, str] = {}
        for want, got in zip(self.segments, parts, strict=True):
            if want.startswith("{"):
                if not got:
                    return None
                params[want[1:-1]] = got
            elif want != got:
                return None
        return params

    @property
    def is_mutation(self) -> bool:
        return self.method != "GET"


def split_path(raw_path: str) -> list[str] | None:
    """The percent-decoded segments of ``raw_path`` after ``/api/v1/``."""
    rest = raw_path.split("?", 1)[0][len(API) :]
    if not rest.startswith("/"):
        return None
    return [unquote(p) for p in rest.strip("/").split("/")]


def json_response(
    model: BaseModel | None, status: int, media_type: str | None = None
) -> web.Response:
    if model is None:
        return web.Response(status=status)
    if isinstance(model, Download):
        return web.Response(
            status=status,
            body=model.data,
            content_type=media_type or "application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{model.filename}"'},
        )
    return web.Response(
        status=status, text=model.model_dump_json(), content_type="application/json"
    )


def invalid(exc: ValidationError, where: str) -> ApiError:
    """A 422 naming the first field pydantic complained about."""
    errors = exc.errors(include_url=False)
    first = errors[0] if errors else None
    loc = ".".join(str(p) for p in first["loc"]) if first else ""
    detail = f"{loc or where}: {first['msg']}" if first else str(exc)
    return ApiError(422, "invalid-body", detail, field=loc or where)


# ----------------------------------------------------------------------- the services


@dataclass(slots=True)
class ApiContext:
    """What the resources use of the server."""

    core: Core
    throttle: FailedLoginThrottle | None = None

    def host(self, domain: str) -> Host:
        host = self.core.hosts.get(domain)
        if host is None:
            raise not_found(f"no host {domain!r} on this server")
        return host

    def account(self, text: str) -> JID:
        """A bare account JID on one of this server's hosts, from a path or a body.

        Anything else (another server's user, a full JID, garbage) is refused as not
        found: the API never acts on, nor tells anything about, other hosts' users."""
        try:
            jid = JID.parse(text)
        except InvalidJID:
            raise not_found(f"{text!r} is not an account of this server") from None
        if not jid.local or jid.resource or jid.domain not in self.core.hosts:
            raise not_found(f"{text!r} is not an account of this server")
        return jid.bare

    async def existing_account(self, text: str) -> JID:
        jid = self.account(text)
        if not await self.core.accounts.exists(jid):
            raise not_found(f"no user {jid}")
        return jid

    def check_password(self, password: str) -> None:
        problem = password_problem(password, self.core.config.accounts.min_password_length)
        if problem is not None:
            raise ApiError(422, "weak-password", problem, field="password")

    def service(self, domain: str, name: str) -> Any:
        """The module service ``name`` (``roster``, ``mam``, ``muc``) on host ``domain``,
        or a 503 when that module is not loaded there."""
        found = self.host(domain).services.get(name)
        if found is None:
            raise ApiError(503, "unavailable", f"mod_{name} is not loaded on {domain}")
        return found


# ----------------------------------------------------------------------- audit log


def _value(text: str) -> str:
    """A value of an audit line: bare when it is one plain word, JSON-quoted otherwise."""
    if text and all(c.isalnum() or c in "@._-/:{}" for c in text):
        return text
    return json.dumps(text)


def audit_line(
    principal: Principal | None, route: Route, target: str, address: str, status: int
) -> str:
    """``audit at=<ISO time> token=<id> name=<name> scope=<scope> action=<METHOD
    /api/v1/template> target=<what> from=<address> status=<HTTP status>``: one line per
    mutation, keys in this order, values quoted as JSON strings when they hold anything
    but letters, digits and ``@._-/:{}``."""
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    who = principal or Principal("-", "-", PUBLIC)
    return " ".join(
        [
            "audit",
            f"at={at}",
            f"token={_value(who.token_id)}",
            f"name={_value(who.name)}",
            f"scope={_value(who.scope)}",
            f"action={_value(route.method + ' ' + API + route.path)}",
            f"target={_value(target or '-')}",
            f"from={_value(address or '-')}",
            f"status={status}",
        ]
    )


def write_audit(call: Call, route: Route, status: int) -> None:
    address = client_of(call.request).address
    audit_log.info("%s", audit_line(call.principal, route, call.audit_target, address, status))


# ----------------------------------------------------------------------- field types

_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def _xml_text(value: str) -> str:
    if _XML_INVALID.search(value):
        raise ValueError("contains characters XML cannot carry")
    return value


XmlText = Annotated[
    str,
    StringConstraints(pattern="^[^\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\ufffe\\uffff]*$"),
    AfterValidator(_xml_text),
]
"""A string that can go into a stanza (no control characters or lone surrogates)."""
