"""The REST API, version 1: ``/api/v1/...`` on the HTTP listeners, described by the
OpenAPI 3.1 document at ``/api/openapi.json`` (public: it holds no data) and a small
page at ``/api``.

Every request but ``POST /api/v1/auth/token`` carries ``Authorization: Bearer ...``:
an admin token (``xat_...``, ``xmppd token create``; scopes ``read-only``, ``users``,
``rooms``, ``admin``) or a user token (``xut_...``, for the ``/me`` endpoints only);
see :mod:`xmppd.apitokens`. One file per resource (``users``, ``sessions``,
``messages``, ``rosters``, ``rooms``, ``stats``, ``me``); each lists its :class:`~.base.Route`
objects, from which this module dispatches, validates and writes the OpenAPI
document. Errors and the audit log: :mod:`xmppd.adminapi.base`.
"""

from __future__ import annotations

import html
import json
import logging
from typing import TYPE_CHECKING

from aiohttp import web
from pydantic import BaseModel, ValidationError

from xmppd.adminapi.base import (
    API,
    DOCS_PATH,
    MAX_BODY,
    OPENAPI_PATH,
    PUBLIC,
    ApiContext,
    ApiError,
    Call,
    Principal,
    Problem,
    Route,
    invalid,
    json_response,
    split_path,
    write_audit,
)
from xmppd.adminapi.datarequests import DataRequestResource
from xmppd.adminapi.me import MeResource
from xmppd.adminapi.messages import MessageResource
from xmppd.adminapi.openapi import openapi_document
from xmppd.adminapi.rooms import RoomResource
from xmppd.adminapi.rosters import RosterResource
from xmppd.adminapi.sessions import SessionResource
from xmppd.adminapi.stats import StatsResource
from xmppd.adminapi.users import UserResource
from xmppd.apitokens import PREFIX, USER_PREFIX, ApiTokens, UserTokens

if TYPE_CHECKING:
    from xmppd.auth.throttle import FailedLoginThrottle
    from xmppd.core import Core
    from xmppd.httproutes import HttpRoutes

__all__ = ["API", "OPENAPI_PATH", "AdminApi", "all_routes", "openapi_document"]

log = logging.getLogger(__name__)

_PAGE = """<!doctype html><meta charset="utf-8"><title>xmppd REST API</title>
<h1>xmppd REST API v1</h1><p>OpenAPI document: <a href="/api/openapi.json">/api/openapi.json</a>.
Send <code>Authorization: Bearer &lt;token&gt;</code>; see the admin guide.</p><ul>{}</ul>
"""


def all_routes(api: ApiContext) -> list[Route]:
    """Every endpoint of ``/api/v1``."""
    resources = (
        UserResource(api),
        DataRequestResource(api),
        SessionResource(api),
        MessageResource(api),
        RosterResource(api),
        RoomResource(api),
        StatsResource(api),
        MeResource(api),
    )
    return [route for resource in resources for route in resource.routes()]


class AdminApi:
    """Dispatches ``/api/v1/`` to the routes of the resources."""

    def __init__(
        self, core: Core, tokens: ApiTokens, throttle: FailedLoginThrottle | None = None
    ) -> None:
        self.core = core
        self.tokens = tokens
        self.user_tokens = UserTokens(core.db)
        self.context = ApiContext(core, throttle)
        self.routes = all_routes(self.context)

    def register(self, routes: HttpRoutes) -> None:
        routes.add("GET", OPENAPI_PATH, self.openapi)
        routes.add("GET", DOCS_PATH, self.page)
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
            routes.add(method, f"{API}/", self.dispatch)

    async def _principal(self, request: web.Request) -> Principal | None:
        kind, _, credential = request.headers.get("Authorization", "").partition(" ")
        credential = credential.strip()
        if kind.lower() != "bearer":
            return None
        if credential.startswith(PREFIX):
            token = await self.tokens.check(credential)
            if token is not None:
                return Principal(token.token_id, token.name, token.scope)
        elif credential.startswith(USER_PREFIX):
            user = await self.user_tokens.check(credential)
            if user is not None:
                return Principal(user.token_id, user.name, "user", user.account)
        return None

    def _find(self, method: str, parts: list[str]) -> tuple[Route, dict[str, str]]:
        allowed = False
        for route in self.routes:
            params = route.match(parts)
            if params is None:
                continue
            if route.method == method:
                return route, params
            allowed = True
        if allowed:
            raise ApiError(405, "method-not-allowed", f"{method} is not served here")
        raise ApiError(404, "not-found", "no such endpoint")

    async def dispatch(
        self, request: web.Request, *, as_principal: Principal | None = None
    ) -> web.StreamResponse:
        """Serve one ``/api/v1`` request. ``as_principal``: the caller is known already
        (the local control socket, :mod:`xmppd.control`); no token is read."""
        call: Call | None = None
        route: Route | None = None
        try:
            parts = split_path(request.raw_path)
            if parts is None:
                raise ApiError(404, "not-found", "no such endpoint")
            route, params = self._find(request.method, parts)
            call = Call(request, None, params)
            if route.scope != PUBLIC:
                call.principal = as_principal or await self._principal(request)
                if call.principal is None:
                    raise ApiError(401, "unauthorized", "a valid bearer token is required")
                if not call.principal.allows(route.scope):
                    raise ApiError(403, "forbidden", f"needs a token of scope {route.scope!r}")
            if route.query is not None:
                try:
                    call.query = route.query.model_validate(dict(request.query))
                except ValidationError as exc:
                    raise invalid(exc, "query") from None
            if route.body is not None:
                call.body = await self._body(request, route.body)
            result = await route.handler(call)
            response = json_response(
                result, route.status if result is not None else 204, route.download
            )
        except ApiError as exc:
            response = json_response(exc.problem, exc.status)
            if exc.status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="xmppd"'
        if route is not None and call is not None and route.is_mutation:
            write_audit(call, route, response.status)
        return response

    async def _body(self, request: web.Request, model: type[BaseModel]) -> BaseModel:
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise ApiError(413, "too-large", f"bodies are at most {MAX_BODY} bytes")
        data = await request.content.read(MAX_BODY + 1)
        if len(data) > MAX_BODY:
            raise ApiError(413, "too-large", f"bodies are at most {MAX_BODY} bytes")
        try:
            return model.model_validate_json(data)
        except ValidationError as exc:
            raise invalid(exc, "body") from None

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            text=json.dumps(openapi_document(self.routes)), content_type="application/json"
        )

    async def page(self, request: web.Request) -> web.StreamResponse:
        items = "".join(
            f"<li><code>{r.method} {API}{html.escape(r.path)}</code> ({r.scope}): "
            f"{html.escape(r.summary)}</li>"
            for r in self.routes
        )
        return web.Response(text=_PAGE.format(items), content_type="text/html")


_ = Problem  # re-exported through the OpenAPI components
