"""``/api/v1/sessions`` and ``/api/v1/users/{jid}/sessions``: the bound client
sessions, and ending them (the client gets a ``policy-violation`` stream error, as
an operator's kick; a deleted account's sessions get ``not-authorized``)."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, Field

from xmppd.adminapi.base import ApiContext, Call, Route, not_found
from xmppd.sessions import Endpoint


class SessionInfo(BaseModel):
    """A bound client session."""

    jid: str
    peer: str
    transport: str = Field(description="tcp, websocket or bosh")
    secure: bool
    detached: bool = Field(description="Waiting for a XEP-0198 resumption.")


def session_info(s: Endpoint) -> SessionInfo:
    return SessionInfo(
        jid=str(s.jid),
        peer=s.peer,
        transport=s.transport_name,
        secure=s.is_secure,
        detached=s.is_detached,
    )


class SessionList(BaseModel):
    sessions: list[SessionInfo]


class Kicked(BaseModel):
    closed: int = Field(description="How many sessions were ended.")


class SessionResource:
    def __init__(self, api: ApiContext) -> None:
        self.api = api

    def routes(self) -> list[Route]:
        return [
            Route(
                "GET",
                "/sessions",
                self.list_sessions,
                "read-only",
                "The bound client sessions of every host",
                response=SessionList,
            ),
            Route(
                "GET",
                "/users/{jid}/sessions",
                self.user_sessions,
                "read-only",
                "The bound sessions of one account",
                response=SessionList,
                errors=(404,),
            ),
            Route(
                "DELETE",
                "/users/{jid}/sessions",
                self.kick_all,
                "users",
                "End every session of an account",
                response=Kicked,
                errors=(404,),
            ),
            Route(
                "DELETE",
                "/users/{jid}/sessions/{resource}",
                self.kick_one,
                "users",
                "End one session (by resource)",
                status=204,
                errors=(404,),
            ),
        ]

    async def list_sessions(self, call: Call) -> SessionList:
        found = [session_info(s) for s in self.api.core.sessions.endpoints()]
        return SessionList(sessions=sorted(found, key=lambda s: s.jid))

    async def user_sessions(self, call: Call) -> SessionList:
        jid = await self.api.existing_account(call.params["jid"])
        found = [session_info(s) for s in self.api.core.sessions.endpoints_of(jid)]
        return SessionList(sessions=sorted(found, key=lambda s: s.jid))

    async def _end(self, endpoints: list[Endpoint]) -> int:
        closing = []
        for endpoint in endpoints:
            endpoint.close("policy-violation", "ended by the server's administrator")
            closing.append(endpoint.wait_closed())
        async with asyncio.timeout(10):
            await asyncio.gather(*closing)
        return len(closing)

    async def kick_all(self, call: Call) -> Kicked:
        jid = await self.api.existing_account(call.params["jid"])
        call.audit_target = str(jid)
        return Kicked(closed=await self._end(self.api.core.sessions.endpoints_of(jid)))

    async def kick_one(self, call: Call) -> None:
        jid = await self.api.existing_account(call.params["jid"])
        resource = call.params["resource"]
        call.audit_target = f"{jid}/{resource}"
        found = [e for e in self.api.core.sessions.endpoints_of(jid) if e.jid.resource == resource]
        if not found:
            raise not_found(f"no session {jid}/{resource}")
        await self._end(found)
