"""``/api/v1/hosts/{host}/rooms``: group chats (``mod_muc`` rooms of the host's MUC
service) as enterprise backends manage "groups": list, create with owners, admins and
members, show, configure, destroy; add or remove members, make admins; occupants.

Everything goes through ``mod_muc``'s ``MucService.admin`` (``modules/mod_muc/admin.py``)
so occupants see the changes as XEP-0045 says (presence on an affiliation change,
status 104 on a configuration change, the destroy notice).

In a cluster a room lives on one node (rendezvous hashing of its JID): a request about
one room (create, show, configure, destroy, occupants, affiliations) that reaches
another node is passed on to the room's node as a node-to-node call
(:mod:`xmppd.cluster.calls`, ``admin-api-rooms``), which runs the same handler there
and answers; the node the request reached answers the HTTP client and writes the audit
line. The list names the stored rooms, this node's rooms and the public temporary
rooms the other nodes announce."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Final, Literal, TypeVar, cast

from aiohttp import web
from pydantic import BaseModel, Field

from xmppd.adminapi.base import ApiContext, ApiError, Call, Handler, Route, XmlText
from xmppd.cluster.calls import CallFailed
from xmppd.jid import JID, InvalidJID

T = TypeVar("T")
ROOMS_CALL: Final = "admin-api-rooms"
"""The node-to-node call that runs a room endpoint on the room's node."""
Affiliation = Literal["owner", "admin", "member", "outcast", "none"]


class RoomSettings(BaseModel):
    """Room configuration (XEP-0045 §10.2); fields left out keep their value."""

    name: XmlText | None = Field(None, max_length=1023)
    description: XmlText | None = Field(None, max_length=4096)
    persistent: bool | None = None
    public: bool | None = None
    members_only: bool | None = None
    password: XmlText | None = Field(None, max_length=1023)
    moderated: bool | None = None
    max_users: int | None = Field(None, ge=0, le=1_000_000)
    whois: Literal["moderators", "anyone"] | None = None
    history_length: int | None = Field(None, ge=0, le=1_000_000)
    allow_invites: bool | None = None
    change_subject: bool | None = None
    allow_pm: Literal["anyone", "participants", "moderators", "none"] | None = None
    allow_voice_requests: bool | None = None
    lang: XmlText | None = Field(None, max_length=64)
    archive: bool | None = None


class NewRoom(BaseModel):
    name: str = Field(min_length=1, max_length=1023, description="The room's local part.")
    owners: list[str] = Field([], max_length=1000)
    admins: list[str] = Field([], max_length=1000)
    members: list[str] = Field([], max_length=10_000)
    settings: RoomSettings = RoomSettings()


class RoomList(BaseModel):
    service: str
    rooms: list[str]


class OccupantInfo(BaseModel):
    nick: str
    jid: str
    role: str
    affiliation: str


class OccupantList(BaseModel):
    occupants: list[OccupantInfo]


class RoomInfo(BaseModel):
    jid: str
    settings: dict[str, Any]
    affiliations: dict[str, str] = Field(description="Bare JID -> owner, admin, member, outcast.")
    occupants: int


class AffiliationChange(BaseModel):
    affiliation: Affiliation = "member"


def _jid(text: str, field: str) -> JID:
    try:
        jid = JID.parse(text)
    except InvalidJID:
        raise ApiError(422, "invalid-body", f"{text!r} is not a JID", field=field) from None
    if jid.resource or not jid.local:
        raise ApiError(422, "invalid-body", f"{text!r} is not a bare JID", field=field)
    return jid


def _info(room: Any) -> RoomInfo:
    from dataclasses import asdict

    settings = asdict(room.config)
    settings["password"] = "***" if settings.get("password") else ""
    return RoomInfo(
        jid=str(room.jid),
        settings=settings,
        affiliations={str(j): a for j, a in sorted(room.affiliations.items(), key=str)},
        occupants=len(room.occupants),
    )


class RoomResource:
    def __init__(self, api: ApiContext) -> None:
        self.api = api

    def routes(self) -> list[Route]:
        """The endpoints; in a cluster, those about one room run on its node."""
        return [
            route
            if route.handler == self.list_rooms
            else replace(route, handler=self._placed(route))
            for route in self._routes()
        ]

    def _routes(self) -> list[Route]:
        base = "/hosts/{host}/rooms"
        one = base + "/{room}"
        return [
            Route("GET", base, self.list_rooms, "read-only", "The rooms of a host's MUC service",
                  response=RoomList, errors=(404, 503)),
            Route("POST", base, self.create, "rooms",
                  "Create a room with owners, admins and members", status=201, body=NewRoom,
                  response=RoomInfo, errors=(404, 409, 503)),
            Route("GET", one, self.show, "read-only", "A room's settings and affiliations",
                  response=RoomInfo, errors=(404, 503)),
            Route("PATCH", one, self.configure, "rooms",
                  "Change a room's settings (occupants get status 104)", body=RoomSettings,
                  response=RoomInfo, errors=(404, 503)),
            Route("DELETE", one, self.destroy, "rooms",
                  "Destroy a room (occupants are told)", status=204, errors=(404, 503)),
            Route("GET", one + "/occupants", self.occupants, "read-only",
                  "Who is in a room", response=OccupantList, errors=(404, 503)),
            Route("PUT", one + "/affiliations/{jid}", self.affiliate, "rooms",
                  "Make an account a member, admin, owner or outcast of a room", status=204,
                  body=AffiliationChange, errors=(404, 409, 503)),
            Route("DELETE", one + "/affiliations/{jid}", self.unaffiliate, "rooms",
                  "Remove an account's affiliation (e.g. a member)", status=204,
                  errors=(404, 409, 503)),
        ]  # fmt: skip

    # ------------------------------------------------------------------ cluster

    def _placed(self, route: Route) -> Handler:
        """``route``'s handler, run on the node that holds the room."""
        local = route.handler

        async def handler(call: Call) -> BaseModel | None:
            node = self._owner(call)
            if node is None:
                return await local(call)
            return await self._forward(node, route, call)

        return handler

    def _owner(self, call: Call) -> str | None:
        """The other node that holds the room of ``call`` (``None``: this one)."""
        cluster = self.api.core.cluster
        if cluster is None:
            return None
        admin = self._admin(call)
        name = call.params.get("room") or cast(NewRoom, call.body).name
        jid = admin.room_jid_or_none(name)
        if jid is None:
            return None  # an invalid name: the local handler says so
        owner = cluster.owner_of(str(jid))
        return None if owner == cluster.name else owner

    async def _forward(self, node: str, route: Route, call: Call) -> BaseModel | None:
        cluster = self.api.core.cluster
        assert cluster is not None
        args = {
            "method": route.method,
            "path": route.path,
            "params": dict(call.params),
            "body": None if call.body is None else call.body.model_dump(mode="json"),
        }
        try:
            answer = await cluster.call(node, ROOMS_CALL, args)
        except CallFailed as exc:
            raise ApiError(503, "unavailable", f"the room's node did not answer: {exc}") from None
        call.audit_target = str(answer.get("target", ""))
        problem = answer.get("problem")
        if isinstance(problem, dict):
            raise ApiError(int(answer["status"]), **problem)
        result = answer.get("result")
        if result is None or route.response is None:
            return None
        return route.response.model_validate(result)

    async def answer(self, args: dict[str, Any]) -> dict[str, Any]:
        """On the room's node: run a room endpoint another node passed on
        (:data:`ROOMS_CALL`); the caller was authorised there."""
        method, path = args.get("method"), args.get("path")
        route = next((r for r in self._routes() if (r.method, r.path) == (method, path)), None)
        if route is None:
            return {"status": 404, "problem": {"error": "not-found", "detail": "no such endpoint"}}
        # No HTTP request here: the room handlers read only params and body.
        call = Call(cast(web.Request, None), None, dict(args.get("params") or {}))
        if route.body is not None and args.get("body") is not None:
            call.body = route.body.model_validate(args["body"])
        try:
            result = await route.handler(call)
        except ApiError as exc:
            return {
                "status": exc.status,
                "problem": exc.problem.model_dump(),
                "target": call.audit_target,
            }
        return {
            "result": None if result is None else result.model_dump(mode="json"),
            "target": call.audit_target,
        }

    # ------------------------------------------------------------------ handlers

    def _admin(self, call: Call) -> Any:
        host = self.api.host(call.params["host"]).domain
        return self.api.service(host, "muc").admin

    async def _do(self, action: Callable[[], Awaitable[T]]) -> T:
        from xmppd_modules.mod_muc.admin import RoomAdminError

        try:
            return await action()
        except RoomAdminError as exc:
            if exc.kind == "not-found":
                raise ApiError(404, "not-found", str(exc)) from None
            if exc.kind == "conflict":
                raise ApiError(409, "conflict", str(exc)) from None
            raise ApiError(422, "invalid-body", str(exc), field=exc.field) from None

    async def list_rooms(self, call: Call) -> RoomList:
        admin = self._admin(call)
        return RoomList(service=admin.domain, rooms=await admin.names())

    async def create(self, call: Call) -> RoomInfo:
        admin = self._admin(call)
        body: NewRoom = call.body
        call.audit_target = f"{body.name}@{admin.domain}"
        owners = [_jid(j, "owners") for j in body.owners]
        admins = [_jid(j, "admins") for j in body.admins]
        members = [_jid(j, "members") for j in body.members]
        settings = body.settings.model_dump(exclude_none=True)
        room = await self._do(lambda: admin.create(body.name, settings, owners, admins, members))
        return _info(room)

    async def _room(self, call: Call) -> tuple[Any, Any]:
        admin = self._admin(call)
        name = call.params["room"]
        call.audit_target = f"{name}@{admin.domain}"
        return admin, await self._do(lambda: admin.get(name))

    async def show(self, call: Call) -> RoomInfo:
        _, room = await self._room(call)
        return _info(room)

    async def configure(self, call: Call) -> RoomInfo:
        admin, room = await self._room(call)
        body: RoomSettings = call.body
        await self._do(lambda: admin.configure(room, body.model_dump(exclude_none=True)))
        return _info(room)

    async def destroy(self, call: Call) -> None:
        admin, room = await self._room(call)
        await self._do(lambda: admin.destroy(room))

    async def occupants(self, call: Call) -> OccupantList:
        admin, room = await self._room(call)
        return OccupantList(
            occupants=[
                OccupantInfo(nick=o.nick, jid=str(o.jid), role=o.role, affiliation=o.affiliation)
                for o in admin.occupants(room)
            ]
        )

    async def affiliate(self, call: Call) -> None:
        admin, room = await self._room(call)
        jid = _jid(call.params["jid"], "jid")
        call.audit_target += f" {jid}"
        body: AffiliationChange = call.body
        await self._do(lambda: admin.set_affiliation(room, jid, body.affiliation))

    async def unaffiliate(self, call: Call) -> None:
        admin, room = await self._room(call)
        jid = _jid(call.params["jid"], "jid")
        call.audit_target += f" {jid}"
        if room.affiliation(jid) == "none":
            raise ApiError(404, "not-found", f"{jid} has no affiliation with the room")
        await self._do(lambda: admin.set_affiliation(room, jid, "none"))
