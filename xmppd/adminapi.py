"""The admin REST API, version 1: ``/api/v1/...`` on the HTTP listeners.

Every request carries ``Authorization: Bearer xat_...`` (a token made with
``xmppd token create``; see :mod:`xmppd.apitokens`); a missing or unknown token gets
401, a token whose scope is too low 403. Requests and answers are pydantic models, and
``/api/openapi.json`` (public: it holds no data) is generated from them.

Endpoints of this first layer:

- ``GET /api/v1/users?host=H&after=NAME&limit=N`` (read-only): one page of accounts.
- ``POST /api/v1/users`` (users): create an account.
- ``DELETE /api/v1/users/{jid}`` (users): delete an account and all its data; its
  sessions are closed (:func:`xmppd.users.remove_user`).
- ``GET /api/v1/sessions`` (read-only): the bound client sessions.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from xmppd import users
from xmppd.apitokens import ApiToken, ApiTokens
from xmppd.core import Core
from xmppd.httproutes import HttpRoutes
from xmppd.jid import JID, InvalidJID

API: Final = "/api/v1"
OPENAPI_PATH: Final = "/api/openapi.json"


class Problem(BaseModel):
    """An error answer."""

    error: str
    detail: str = ""


class UserPage(BaseModel):
    """One page of a host's accounts, sorted by name."""

    host: str
    users: list[str]
    next: str | None = Field(None, description="Pass as 'after' for the next page.")


class NewUser(BaseModel):
    """An account to create."""

    jid: str = Field(description="user@host, on one of this server's hosts")
    password: str = Field(min_length=1)


class UserCreated(BaseModel):
    jid: str


class SessionInfo(BaseModel):
    """A bound client session."""

    jid: str
    peer: str
    secure: bool
    detached: bool


class SessionList(BaseModel):
    sessions: list[SessionInfo]


Handler = Callable[[web.Request, ApiToken], Awaitable[web.StreamResponse]]


def _json(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(
        status=status, text=model.model_dump_json(), content_type="application/json"
    )


def _problem(status: int, error: str, detail: str = "") -> web.Response:
    return _json(Problem(error=error, detail=detail), status)


class AdminApi:
    """The handlers of ``/api/v1``, bound to the server's core."""

    def __init__(self, core: Core, tokens: ApiTokens) -> None:
        self.core = core
        self.tokens = tokens

    def register(self, routes: HttpRoutes) -> None:
        routes.add("GET", OPENAPI_PATH, self.openapi)
        routes.add("GET", f"{API}/users", self._guard("read-only", self.list_users))
        routes.add("POST", f"{API}/users", self._guard("users", self.create_user))
        routes.add("DELETE", f"{API}/users/", self._guard("users", self.delete_user))
        routes.add("GET", f"{API}/sessions", self._guard("read-only", self.list_sessions))

    def _guard(
        self, scope: str, handler: Handler
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def guarded(request: web.Request) -> web.StreamResponse:
            kind, _, credential = request.headers.get("Authorization", "").partition(" ")
            token = (
                await self.tokens.check(credential.strip()) if kind.lower() == "bearer" else None
            )
            if token is None:
                response = _problem(401, "unauthorized", "a valid bearer token is required")
                response.headers["WWW-Authenticate"] = 'Bearer realm="xmppd"'
                return response
            if not token.allows(scope):
                return _problem(403, "forbidden", f"needs a token of scope {scope!r}")
            return await handler(request, token)

        return guarded

    # ------------------------------------------------------------------ users

    async def list_users(self, request: web.Request, token: ApiToken) -> web.StreamResponse:
        host = request.query.get("host") or next(iter(self.core.hosts), "")
        if host not in self.core.hosts:
            return _problem(404, "unknown-host", host)
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            return _problem(400, "bad-request", "limit must be an integer")
        if not 1 <= limit <= 1000:
            return _problem(400, "bad-request", "limit must be between 1 and 1000")
        after = request.query.get("after", "")
        names = [n for n in await self.core.accounts.list(host) if n > after]
        page = names[:limit]
        more = len(names) > limit
        return _json(UserPage(host=host, users=page, next=page[-1] if more else None))

    def _account(self, text: str) -> JID | None:
        try:
            jid = JID.parse(text)
        except InvalidJID:
            return None
        if not jid.local or jid.resource or jid.domain not in self.core.hosts:
            return None
        return jid

    async def create_user(self, request: web.Request, token: ApiToken) -> web.StreamResponse:
        try:
            body = NewUser.model_validate_json(await request.read())
        except ValidationError as exc:
            return _problem(400, "bad-request", str(exc.errors(include_url=False)))
        jid = self._account(body.jid)
        if jid is None:
            return _problem(400, "bad-request", "jid must be user@host on a host of this server")
        if await self.core.accounts.exists(jid.bare):
            return _problem(409, "conflict", f"{jid.bare} exists")
        await users.register_user(self.core, jid, body.password)
        return _json(UserCreated(jid=str(jid.bare)), 201)

    async def delete_user(self, request: web.Request, token: ApiToken) -> web.StreamResponse:
        jid = self._account(request.path[len(f"{API}/users/") :])
        if jid is None:
            return _problem(400, "bad-request", "expected /api/v1/users/user@host")
        if not await users.remove_user(self.core, jid):
            return _problem(404, "not-found", str(jid.bare))
        return web.Response(status=204)

    # ------------------------------------------------------------------ sessions

    async def list_sessions(self, request: web.Request, token: ApiToken) -> web.StreamResponse:
        found = [
            SessionInfo(jid=str(s.jid), peer=s.peer, secure=s.is_secure, detached=s.is_detached)
            for s in self.core.sessions
        ]
        return _json(SessionList(sessions=sorted(found, key=lambda s: s.jid)))

    # ------------------------------------------------------------------ OpenAPI

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text=json.dumps(openapi_document()), content_type="application/json")


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _content(model: type[BaseModel]) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(model)}}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of ``/api/v1``, from the pydantic models."""
    models: list[type[BaseModel]] = [
        Problem,
        UserPage,
        NewUser,
        UserCreated,
        SessionInfo,
        SessionList,
    ]
    schemas: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    errors = {
        "401": {"description": "no valid bearer token", "content": _content(Problem)},
        "403": {"description": "the token's scope is too low", "content": _content(Problem)},
    }

    def op(summary: str, scope: str, ok: str, body: dict[str, Any] | None) -> dict[str, Any]:
        responses: dict[str, Any] = {ok.split(" ")[0]: {"description": ok}}
        if body is not None:
            responses[ok.split(" ")[0]]["content"] = body
        return {"summary": f"{summary} (scope: {scope})", "responses": {**responses, **errors}}

    list_users = op("One page of a host's accounts", "read-only", "200 OK", _content(UserPage))
    list_users["parameters"] = [
        {"name": "host", "in": "query", "schema": {"type": "string"}},
        {"name": "after", "in": "query", "schema": {"type": "string"}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "default": 100}},
    ]
    create = op("Create an account", "users", "201 Created", _content(UserCreated))
    create["requestBody"] = {"required": True, "content": _content(NewUser)}
    delete = op("Delete an account and its data; its sessions close", "users", "204 Deleted", None)
    delete["parameters"] = [
        {"name": "jid", "in": "path", "required": True, "schema": {"type": "string"}}
    ]
    sessions = op("The bound client sessions", "read-only", "200 OK", _content(SessionList))
    return {
        "openapi": "3.1.0",
        "info": {"title": "xmppd admin API", "version": "1"},
        "paths": {
            f"{API}/users": {"get": list_users, "post": create},
            f"{API}/users/{{jid}}": {"delete": delete},
            f"{API}/sessions": {"get": sessions},
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
