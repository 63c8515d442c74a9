"""``/api/v1/sessions`` and ``/api/v1/users/{jid}/sessions``: the bound client
sessions, and ending them (the client gets a ``policy-violation`` stream error, as
an operator's kick; a deleted account's sessions get ``not-authorized``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from xmppd.adminapi.base import ApiContext, Call, Route, not_found
from xmppd.cluster.records import RemoteSession
from xmppd.cluster.registry import ClusterSessions
from xmppd.sessions import Session, SessionRegistry, end_sessions

if TYPE_CHECKING:
    pass


class SessionInfo(BaseModel):
    """A bound client session (in a cluster: on any node)."""

    jid: str
    peer: str
    transport: str = Field(description="tcp, websocket or bosh (empty: on another node)")
    secure: bool
    detached: bool = Field(description="Waiting for a XEP-0198 resumption.")
    node: str | None = Field(
        None, description="The cluster node (or worker) it is bound on; null: no cluster."
    )


def session_info(s: Session, registry: SessionRegistry | None = None) -> SessionInfo:
    """``s`` as the API shows it; ``registry`` tells the node of a local session."""
    if isinstance(s, RemoteSession):
        node: str | None = s.node
        transport = ""
    else:
        node = registry.node if isinstance(registry, ClusterSessions) else None
        # An endpoint, or the serialised registry's snapshot of one: both tell it.
        transport = str(getattr(s, "transport_name", ""))
    return SessionInfo(
        jid=str(s.jid),
        peer=s.peer,
        transport=transport,
        secure=s.is_secure,
        detached=s.is_detached,
        node=node,
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
        registry = self.api.core.sessions
        found = [session_info(s, registry) for s in registry]
        return SessionList(sessions=sorted(found, key=lambda s: s.jid))

    async def user_sessions(self, call: Call) -> SessionList:
        jid = await self.api.existing_account(call.params["jid"])
        registry = self.api.core.sessions
        found = [session_info(s, registry) for s in registry.of(jid)]
        return SessionList(sessions=sorted(found, key=lambda s: s.jid))

    async def _end(self, sessions: list[Session]) -> int:
        return await end_sessions(
            self.api.core.sessions,
            sessions,
            "policy-violation",
            "ended by the server's administrator",
        )

    async def kick_all(self, call: Call) -> Kicked:
        jid = await self.api.existing_account(call.params["jid"])
        call.audit_target = str(jid)
        return Kicked(closed=await self._end(self.api.core.sessions.of(jid)))

    async def kick_one(self, call: Call) -> None:
        jid = await self.api.existing_account(call.params["jid"])
        resource = call.params["resource"]
        call.audit_target = f"{jid}/{resource}"
        found = [s for s in self.api.core.sessions.of(jid) if s.jid.resource == resource]
        if not found:
            raise not_found(f"no session {jid}/{resource}")
        await self._end(found)
