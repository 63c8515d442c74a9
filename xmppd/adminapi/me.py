"""User-scoped endpoints: ``POST /api/v1/auth/token`` issues a user token after a
password check (throttled like logins: failures of an address or an account are
answered later and later, :mod:`xmppd.auth.throttle`), and ``/api/v1/me/...`` act as
that token's account, never another: send a message, read the archive (``mod_mam``)
by peer and time range with paging, read the roster, set presence.

The account is the token's; nothing in a ``/me`` request names it, so no request can
reach another user's data.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from lxml import etree
from pydantic import AfterValidator, AwareDatetime, BaseModel, Field

from xmppd.adminapi.base import ApiContext, ApiError, Call, Route, XmlText, not_found
from xmppd.adminapi.messages import MAX_TEXT, Sent, message
from xmppd.adminapi.rosters import RosterList, roster_of
from xmppd.adminapi.users import IssuedToken
from xmppd.apitokens import UserTokens
from xmppd.auth.sasl import verify_password
from xmppd.errors import StanzaError
from xmppd.httproutes import client_of
from xmppd.jid import JID, InvalidJID
from xmppd.stanza import Element, child, element, parse

API_RESOURCE = "api"
"""The resource of presence set through the API."""
PASSWORD_TOKEN_LIFETIME = 30 * 86400.0
"""A token issued after a password check lives 30 days unless asked for less."""


class TokenRequest(BaseModel):
    jid: str = Field(max_length=3071)
    password: str = Field(max_length=1024)
    name: str = Field("app", min_length=1, max_length=255)
    lifetime: float = Field(
        PASSWORD_TOKEN_LIFETIME, gt=0, le=PASSWORD_TOKEN_LIFETIME, description="Seconds."
    )


class Me(BaseModel):
    jid: str


class UserMessage(BaseModel):
    """A message sent as the token's user."""

    to: str = Field(min_length=3, max_length=3071)
    body: XmlText = Field(min_length=1, max_length=MAX_TEXT)
    subject: XmlText | None = Field(None, max_length=1024)
    type: Literal["chat", "normal", "headline"] = "chat"


EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
"""Archive ids embed the time in milliseconds shifted by 20 bits: later would overflow."""


def _in_range(moment: datetime | None) -> datetime | None:
    if moment is not None and not EARLIEST <= moment < LATEST:
        raise ValueError("must be between 1970 and 2200")
    return moment


ArchiveTime = Annotated[AwareDatetime | None, AfterValidator(_in_range)]


class ArchiveQuery(BaseModel):
    with_: str | None = Field(None, alias="with", max_length=3071, description="Peer JID.")
    start: ArchiveTime = Field(None, description="From (ISO 8601 with a time zone), 1970-2200.")
    end: ArchiveTime = Field(None, description="Until (ISO 8601 with a time zone), 1970-2200.")
    after: int | None = Field(None, ge=0, lt=2**63, description="'next' of the previous page.")
    limit: int = Field(50, ge=1, le=250)


class ArchivedMessage(BaseModel):
    id: int
    stamp: datetime
    outgoing: bool
    peer: str
    type: str
    body: str | None


class ArchivePage(BaseModel):
    messages: list[ArchivedMessage] = Field(description="Oldest first.")
    next: int | None = Field(None, description="Pass as 'after' for the next page.")


class PresenceChange(BaseModel):
    show: Literal["available", "away", "chat", "dnd", "xa", "unavailable"] = "available"
    status: XmlText | None = Field(None, max_length=1024)


def _microseconds(moment: datetime | None) -> int | None:
    if moment is None:
        return None
    return int(moment.timestamp() * 1_000_000)


class MeResource:
    def __init__(self, api: ApiContext) -> None:
        self.api = api
        self.tokens = UserTokens(api.core.db)

    def routes(self) -> list[Route]:
        return [
            Route(
                "POST",
                "/auth/token",
                self.issue,
                "public",
                "A user token, after a password check (throttled like logins)",
                status=201,
                body=TokenRequest,
                response=IssuedToken,
            ),
            Route("GET", "/me", self.me, "user", "The token's account", response=Me),
            Route(
                "POST",
                "/me/messages",
                self.send,
                "user",
                "Send a message as the token's user",
                status=202,
                body=UserMessage,
                response=Sent,
            ),
            Route(
                "GET",
                "/me/archive",
                self.archive,
                "user",
                "The user's message archive, by peer and time range, paged",
                query=ArchiveQuery,
                response=ArchivePage,
                errors=(404, 503),
            ),
            Route(
                "GET",
                "/me/roster",
                self.roster,
                "user",
                "The user's roster",
                response=RosterList,
                errors=(503,),
            ),
            Route(
                "PUT",
                "/me/presence",
                self.presence,
                "user",
                "Set the user's presence (resource 'api') for their contacts",
                status=204,
                body=PresenceChange,
                errors=(503,),
            ),
        ]

    async def issue(self, call: Call) -> IssuedToken:
        body: TokenRequest = call.body
        address = client_of(call.request).address
        throttle = self.api.throttle
        try:
            jid: JID | None = self.api.account(body.jid)
        except ApiError:
            jid = None
        call.audit_target = str(jid) if jid is not None else "-"
        ok = jid is not None and await verify_password(
            self.api.core.accounts.lookup_for(jid.domain), jid.local, body.password
        )
        account = str(jid) if jid is not None else None
        if not ok or jid is None:
            if throttle is not None:
                await throttle.answer_failure(address, "api-token", account=account)
            raise ApiError(401, "unauthorized", "wrong user or password")
        if throttle is not None:
            throttle.succeeded(address, "api-token", account=account)
        token, text = await self.tokens.create(jid, body.name, body.lifetime)
        return IssuedToken(
            token=text, token_id=token.token_id, jid=str(jid), expires_at=token.expires_at
        )

    async def me(self, call: Call) -> Me:
        return Me(jid=str(call.user))

    async def send(self, call: Call) -> Sent:
        body: UserMessage = call.body
        try:
            to = JID.parse(body.to)
        except InvalidJID:
            raise ApiError(422, "invalid-body", "to: not a JID", field="to") from None
        call.audit_target = f"{call.user} -> {to}"
        msg = message(call.user, to, body.body, body.subject, body.type)
        await self._archive_sent(call.user, to, msg)
        await self.api.core.router.route(msg, None)
        return Sent(id=msg.get("id", ""), recipients=1)

    async def _archive_sent(self, user: JID, to: JID, msg: Element) -> None:
        """Archive the sent message in the sender's archive, as ``mod_mam`` does for
        what a client sends (the API has no session, so ``user_send_packet`` does not
        run for it)."""
        archive = self.api.core.hosts[user.domain].services.get("mam")
        if archive is None or not archive.archivable(msg) or to.bare == user:
            return
        if await archive.wants(user, to):
            await archive.writer.wait_for_room()
            archive.store(user, to, msg, outgoing=True)

    async def archive(self, call: Call) -> ArchivePage:
        from xmppd_modules.mam_common import Paging
        from xmppd_modules.mod_mam.store import Filters

        q: ArchiveQuery = call.query
        user = call.user
        archive = self.api.service(user.domain, "mam")
        peer = None
        if q.with_ is not None:
            try:
                peer = JID.parse(q.with_)
            except InvalidJID:
                raise ApiError(422, "invalid-body", "with: not a JID", field="with") from None
        filters = Filters(start=_microseconds(q.start), end=_microseconds(q.end), with_=peer)
        try:
            page = await archive.query(user, filters, Paging(q.limit, after=q.after))
        except StanzaError as exc:
            if exc.condition == "item-not-found":
                raise not_found("no such archive id") from None
            raise ApiError(422, "invalid-body", exc.text or exc.condition) from None
        found = []
        for archive_id, stamp, xml in page.rows:
            stanza = parse(xml.encode())
            sender = stanza.get("from", "")
            outgoing = sender.split("/", 1)[0] == str(user)
            other = stanza.get("to" if outgoing else "from", "")
            body = next((el.text for el in stanza if etree.QName(el).localname == "body"), None)
            found.append(
                ArchivedMessage(
                    id=archive_id,
                    stamp=datetime.fromtimestamp(stamp / 1_000_000, UTC),
                    outgoing=outgoing,
                    peer=other.split("/", 1)[0],
                    type=stanza.get("type", "normal"),
                    body=body,
                )
            )
        more = not page.complete and bool(found)
        return ArchivePage(messages=found, next=found[-1].id if more else None)

    async def roster(self, call: Call) -> RosterList:
        return await roster_of(self.api, call.user)

    async def presence(self, call: Call) -> None:
        body: PresenceChange = call.body
        user = call.user
        call.audit_target = str(user)
        service = self.api.service(user.domain, "roster")
        sender = JID.create(user.local, user.domain, API_RESOURCE)
        attrs = {"from": str(sender)}
        if body.show == "unavailable":
            attrs["type"] = "unavailable"
        template = element("presence", attrs)
        if body.show not in ("available", "unavailable"):
            child(template, "show", text=body.show)
        if body.status:
            child(template, "status", text=body.status)
        items = await service.items(user)
        contacts = [item.contact for item in items.values() if item.has_from]
        await self.api.core.router.fanout(template, [*contacts, user])
