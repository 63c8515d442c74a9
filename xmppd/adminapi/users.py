"""``/api/v1/users``: accounts (paged list, create, show with sessions, delete, change
password) and the user tokens an admin issues for an app backend."""

from __future__ import annotations

from pydantic import BaseModel, Field

from xmppd import users
from xmppd.adminapi.base import ApiContext, ApiError, Call, Route, not_found
from xmppd.adminapi.sessions import SessionInfo, session_info
from xmppd.apitokens import UserTokens
from xmppd.auth.accounts import AccountExists


class UserQuery(BaseModel):
    host: str | None = Field(None, max_length=255, description="Default: the first host.")
    after: str = Field("", max_length=1023, description="The 'next' of the previous page.")
    limit: int = Field(100, ge=1, le=1000)


class UserPage(BaseModel):
    """One page of a host's accounts, sorted by name."""

    host: str
    users: list[str]
    next: str | None = Field(None, description="Pass as 'after' for the next page.")


class NewUser(BaseModel):
    """An account to create."""

    jid: str = Field(max_length=3071, description="user@host, on one of this server's hosts")
    password: str = Field(max_length=1024)


class UserCreated(BaseModel):
    jid: str


class UserInfo(BaseModel):
    """An account and its bound sessions."""

    jid: str
    created_at: float = Field(description="Unix time")
    online: bool
    sessions: list[SessionInfo]


class NewPassword(BaseModel):
    password: str = Field(max_length=1024)


class NewUserToken(BaseModel):
    name: str = Field(min_length=1, max_length=255, description="What the token is for.")
    lifetime: float | None = Field(
        None, gt=0, le=10 * 365 * 86400, description="Seconds; none: until revoked."
    )


class IssuedToken(BaseModel):
    """A user token; ``token`` is shown only once."""

    token: str
    token_id: str
    jid: str
    expires_at: float | None = None


class UserResource:
    def __init__(self, api: ApiContext) -> None:
        self.api = api
        self.tokens = UserTokens(api.core.db)

    def routes(self) -> list[Route]:
        return [
            Route(
                "GET",
                "/users",
                self.list_users,
                "read-only",
                "One page of a host's accounts",
                query=UserQuery,
                response=UserPage,
                errors=(404,),
            ),
            Route(
                "POST",
                "/users",
                self.create_user,
                "users",
                "Create an account",
                status=201,
                body=NewUser,
                response=UserCreated,
                errors=(404, 409),
            ),
            Route(
                "GET",
                "/users/{jid}",
                self.show_user,
                "read-only",
                "An account and its sessions",
                response=UserInfo,
                errors=(404,),
            ),
            Route(
                "DELETE",
                "/users/{jid}",
                self.delete_user,
                "users",
                "Delete an account and all its data; its sessions end at once",
                status=204,
                errors=(404,),
            ),
            Route(
                "PUT",
                "/users/{jid}/password",
                self.change_password,
                "users",
                "Change an account's password (its user tokens and FAST tokens die)",
                status=204,
                body=NewPassword,
                errors=(404,),
            ),
            Route(
                "POST",
                "/users/{jid}/tokens",
                self.issue_token,
                "users",
                "Issue a user token for the account (for an app backend)",
                status=201,
                body=NewUserToken,
                response=IssuedToken,
                errors=(404,),
            ),
        ]

    async def list_users(self, call: Call) -> UserPage:
        q: UserQuery = call.query
        host = q.host or next(iter(self.api.core.hosts), "")
        self.api.host(host)
        names, more = await self.api.core.accounts.page(host, q.after, q.limit)
        return UserPage(host=host, users=names, next=names[-1] if more else None)

    async def create_user(self, call: Call) -> UserCreated:
        body: NewUser = call.body
        jid = self.api.account(body.jid)
        call.audit_target = str(jid)
        self.api.check_password(body.password)
        try:
            await users.register_user(self.api.core, jid, body.password)
        except AccountExists:
            raise ApiError(409, "conflict", f"{jid} exists") from None
        return UserCreated(jid=str(jid))

    async def show_user(self, call: Call) -> UserInfo:
        jid = self.api.account(call.params["jid"])
        created = await self.api.core.accounts.created_at(jid)
        if created is None:
            raise not_found(f"no user {jid}")
        sessions = sorted(
            (session_info(s, self.api.core.sessions) for s in self.api.core.sessions.of(jid)),
            key=lambda s: s.jid,
        )
        return UserInfo(jid=str(jid), created_at=created, online=bool(sessions), sessions=sessions)

    async def delete_user(self, call: Call) -> None:
        jid = await self.api.existing_account(call.params["jid"])
        call.audit_target = str(jid)
        await users.remove_user(self.api.core, jid)

    async def change_password(self, call: Call) -> None:
        jid = await self.api.existing_account(call.params["jid"])
        call.audit_target = str(jid)
        body: NewPassword = call.body
        self.api.check_password(body.password)
        await self.api.core.accounts.set_password(jid, body.password)

    async def issue_token(self, call: Call) -> IssuedToken:
        jid = await self.api.existing_account(call.params["jid"])
        call.audit_target = str(jid)
        body: NewUserToken = call.body
        token, text = await self.tokens.create(jid, body.name, body.lifetime)
        return IssuedToken(
            token=text, token_id=token.token_id, jid=str(jid), expires_at=token.expires_at
        )
