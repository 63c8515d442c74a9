"""``/api/v1/users/{jid}/roster``: read an account's roster, add or change an item,
remove one. Changes go through ``mod_roster``'s ``roster`` service, which stores them
and pushes them (RFC 6121 §2.1.6) to the user's online resources that asked for the
roster, exactly as the user's own roster set would."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from xmppd.adminapi.base import ApiContext, ApiError, Call, Route, XmlText, not_found

if TYPE_CHECKING:
    from xmppd.jid import JID

Subscription = Literal["none", "to", "from", "both"]


class RosterEntry(BaseModel):
    jid: str
    name: str = ""
    subscription: Subscription = "none"
    ask: bool = Field(False, description="An outbound subscription request is pending.")
    groups: list[str] = []


class RosterList(BaseModel):
    jid: str
    items: list[RosterEntry]


class RosterEntryChange(BaseModel):
    """An item to add or replace."""

    name: XmlText = Field("", max_length=1023)
    subscription: Subscription = "none"
    groups: list[XmlText] = Field([], max_length=100)


def entries(items: dict[Any, Any]) -> list[RosterEntry]:
    return [
        RosterEntry(
            jid=str(item.contact),
            name=item.name,
            subscription=item.subscription,
            ask=item.ask,
            groups=list(item.groups),
        )
        for item in sorted(items.values(), key=lambda i: str(i.contact))
    ]


async def roster_of(api: ApiContext, user: JID) -> RosterList:
    service = api.service(user.domain, "roster")
    return RosterList(jid=str(user), items=entries(await service.items(user)))


class RosterResource:
    def __init__(self, api: ApiContext) -> None:
        self.api = api

    def routes(self) -> list[Route]:
        return [
            Route(
                "GET",
                "/users/{jid}/roster",
                self.get_roster,
                "read-only",
                "An account's roster",
                response=RosterList,
                errors=(404, 503),
            ),
            Route(
                "PUT",
                "/users/{jid}/roster/{contact}",
                self.put_item,
                "users",
                "Add or replace a roster item (pushed to the user's online resources)",
                body=RosterEntryChange,
                response=RosterEntry,
                errors=(404, 503),
            ),
            Route(
                "DELETE",
                "/users/{jid}/roster/{contact}",
                self.remove_item,
                "users",
                "Remove a roster item (pushed to the user's online resources)",
                status=204,
                errors=(404, 503),
            ),
        ]

    def _contact(self, text: str) -> JID:
        from xmppd.jid import JID, InvalidJID

        try:
            contact = JID.parse(text)
        except InvalidJID:
            raise ApiError(422, "invalid-body", f"{text!r} is not a JID", field="contact") from None
        if contact.resource:
            raise ApiError(422, "invalid-body", "a roster item is a bare JID", field="contact")
        return contact

    async def get_roster(self, call: Call) -> RosterList:
        user = await self.api.existing_account(call.params["jid"])
        return await roster_of(self.api, user)

    async def put_item(self, call: Call) -> RosterEntry:
        from xmppd_modules.mod_roster import RosterItem

        user = await self.api.existing_account(call.params["jid"])
        contact = self._contact(call.params["contact"])
        call.audit_target = f"{user} {contact}"
        service = self.api.service(user.domain, "roster")
        body: RosterEntryChange = call.body
        old = await service.item(user, contact)
        items = await service.items(user)
        if old is None and len(items) >= service.max_items:
            raise ApiError(409, "conflict", "the roster is full")
        groups = tuple(dict.fromkeys(g for g in body.groups if g))
        item = RosterItem(
            contact,
            name=body.name,
            subscription=body.subscription,
            ask=old.ask if old is not None else False,
            approved=old.approved if old is not None else False,
            groups=groups,
        )
        await service.save(user, item)
        [entry] = entries({contact: item})
        return entry

    async def remove_item(self, call: Call) -> None:
        user = await self.api.existing_account(call.params["jid"])
        contact = self._contact(call.params["contact"])
        call.audit_target = f"{user} {contact}"
        service = self.api.service(user.domain, "roster")
        if await service.item(user, contact) is None:
            raise not_found(f"{contact} is not in {user}'s roster")
        await service.remove(user, contact)
