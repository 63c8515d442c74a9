"""``/api/v1/users/{jid}/messages`` and ``/api/v1/hosts/{host}/announce``: messages
from the server (the host's domain) to one account, or a headline to every online
session of a host. They are routed like any stanza: an offline user's chat or normal
message waits in their offline store (when ``mod_offline`` is loaded)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from xmppd.adminapi.base import ApiContext, Call, Route, XmlText
from xmppd.jid import JID
from xmppd.stanza import Element, child, element, new_id

MAX_TEXT = 64 * 1024 - 1024


class OutgoingMessage(BaseModel):
    """A message to send."""

    body: XmlText = Field(min_length=1, max_length=MAX_TEXT)
    subject: XmlText | None = Field(None, max_length=1024)
    type: Literal["chat", "normal", "headline"] = "normal"


class Announcement(BaseModel):
    body: XmlText = Field(min_length=1, max_length=MAX_TEXT)
    subject: XmlText | None = Field(None, max_length=1024)


class Sent(BaseModel):
    id: str = Field(description="The stanza id of the message.")
    recipients: int = Field(description="How many addresses it was routed to.")


def message(sender: JID, to: JID, body: str, subject: str | None, kind: str) -> Element:
    msg = element("message", {"from": str(sender), "to": str(to), "type": kind, "id": new_id()})
    if subject:
        child(msg, "subject", text=subject)
    child(msg, "body", text=body)
    return msg


class MessageResource:
    def __init__(self, api: ApiContext) -> None:
        self.api = api

    def routes(self) -> list[Route]:
        return [
            Route(
                "POST",
                "/users/{jid}/messages",
                self.send,
                "users",
                "Send a message (or headline) from the server to an account",
                status=202,
                body=OutgoingMessage,
                response=Sent,
                errors=(404,),
            ),
            Route(
                "POST",
                "/hosts/{host}/announce",
                self.announce,
                "admin",
                "Send a headline to every online session of a host",
                status=202,
                body=Announcement,
                response=Sent,
                errors=(404,),
            ),
        ]

    async def send(self, call: Call) -> Sent:
        jid = await self.api.existing_account(call.params["jid"])
        call.audit_target = str(jid)
        body: OutgoingMessage = call.body
        msg = message(JID.create("", jid.domain), jid, body.body, body.subject, body.type)
        await self.api.core.router.route(msg, None)
        return Sent(id=msg.get("id", ""), recipients=1)

    async def announce(self, call: Call) -> Sent:
        host = self.api.host(call.params["host"]).domain
        call.audit_target = host
        body: Announcement = call.body
        sender = JID.create("", host)
        recipients = [s.jid for s in self.api.core.sessions if s.jid.domain == host]
        template = message(sender, sender, body.body, body.subject, "headline")
        await self.api.core.router.fanout(template, recipients)
        return Sent(id=template.get("id", ""), recipients=len(recipients))
