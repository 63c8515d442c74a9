"""XEP-0077: In-Band Registration — create an account, change its password, delete it."""

from __future__ import annotations

import ipaddress
import secrets
import time

from pydantic import Field, IPvAnyNetwork

from xmppd.api import (
    JID,
    AccountExists,
    Duration,
    InvalidJID,
    IqRequest,
    Module,
    ModuleContext,
    Options,
    Scope,
    StanzaError,
    hooks,
    ns,
    source_key,
)
from xmppd.api.stanza import Element, child, child_text, find_child, payload


class RegisterOptions(Options):
    allow_registration: bool = Field(
        False, description="Let anyone create an account in-band (before logging in)."
    )
    registration_interval: Duration = Field(
        600.0, ge=0, description="Minimum time between two registrations from one address."
    )
    interval_exempt: tuple[str, ...] = Field(
        ("127.0.0.1", "::1"), description="Addresses the interval does not apply to."
    )
    allowed_networks: tuple[IPvAnyNetwork, ...] = Field(
        (),
        description="Only clients from these networks may register (e.g. ['127.0.0.0/8', "
        "'::1/128']); empty means anyone.",
    )
    allow_password_change: bool = True
    allow_account_removal: bool = True

    def may_register_from(self, peer: str) -> bool:
        """Registration is open and ``peer`` is in an allowed network."""
        if not self.allow_registration:
            return False
        if not self.allowed_networks:
            return True
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in net for net in self.allowed_networks)


module = Module(
    "register",
    "XEP-0077: In-Band Registration",
    options=RegisterOptions,
    protocols=("XEP-0077 v2.4",),
)
Ctx = ModuleContext[RegisterOptions]

_last_registration: dict[tuple[str, str], float] = {}


def _form(instructions: str) -> Element:
    query = payload(ns.REGISTER, "query")
    child(query, "instructions", text=instructions)
    child(query, "username")
    child(query, "password")
    return query


@module.fold(hooks.C2S_STREAM_FEATURES)
async def advertise(
    ctx: Ctx, features: tuple[Element, ...], fctx: hooks.FeaturesContext
) -> tuple[Element, ...]:
    # Offered once the stream is ready to authenticate (after STARTTLS, when required).
    if fctx.stage != "pre-auth" or not ctx.options.may_register_from(fctx.session.peer):
        return features
    return (*features, payload(ns.REGISTER_FEATURE, "register"))


def _check_allowed(ctx: Ctx, req: IqRequest) -> None:
    if not ctx.options.allow_registration:
        raise StanzaError("service-unavailable")
    peer = req.origin.peer if req.origin is not None else ""
    if not ctx.options.may_register_from(peer):
        raise StanzaError("not-allowed", "registration is not open to your network")


@module.iq("get", ns.REGISTER, "query", to=Scope.STREAM)
async def registration_form(ctx: Ctx, req: IqRequest) -> Element:
    _check_allowed(ctx, req)
    return req.result(_form("Choose a username and password."))


@module.iq("set", ns.REGISTER, "query", to=Scope.STREAM)
async def register(ctx: Ctx, req: IqRequest) -> Element:
    _check_allowed(ctx, req)
    username = child_text(req.payload, "username", ns.REGISTER)
    password = child_text(req.payload, "password", ns.REGISTER)
    if find_child(req.payload, ns.REGISTER, "remove") is not None:
        raise StanzaError("not-authorized", "log in to remove an account")
    if not username or password is None:
        raise StanzaError("not-acceptable", "username and password are required")
    problem = ctx.password_problem(password)
    if problem is not None:
        raise StanzaError("not-acceptable", problem)
    try:
        jid = JID.create(username, ctx.domain)
    except InvalidJID:
        raise StanzaError("jid-malformed", "invalid username") from None
    peer = req.origin.peer if req.origin is not None else ""
    key = (ctx.domain, source_key(peer))  # an IPv6 /64 is one source
    now = time.monotonic()
    limited = peer not in ctx.options.interval_exempt
    previous = _last_registration.get(key)
    if limited:
        if previous is not None and now - previous < ctx.options.registration_interval:
            raise StanzaError("resource-constraint", "too many registrations; try later")
        # Take the address's slot before waiting on the database: parallel requests
        # from one address would otherwise all pass the check above.
        _last_registration[key] = now
    try:
        await ctx.register_user(jid, password)
    except BaseException as exc:
        if limited and _last_registration.get(key) == now:  # nothing registered: give it back
            if previous is None:
                del _last_registration[key]
            else:
                _last_registration[key] = previous
        if isinstance(exc, AccountExists):
            raise StanzaError("conflict", "username taken") from None
        raise
    _last_registration[key] = now
    if len(_last_registration) > 10_000:  # forget addresses whose interval has passed
        horizon = now - ctx.options.registration_interval
        for stale in [k for k, t in _last_registration.items() if t < horizon]:
            del _last_registration[stale]
    ctx.log.info("registered %s in-band from %s", jid, peer)
    return req.result()


def _own_account(ctx: Ctx, req: IqRequest) -> JID:
    """The account a logged-in user's request is about.

    XEP-0077 §3.2-3.3 address password changes and cancellations to the server
    (``to='example.org'``); clients also send them to their own account or without
    ``to``. Either way, one may only act on one's own account.
    """
    sender = req.from_
    if sender is None:
        raise StanzaError("not-authorized")
    if req.to.local:
        if not req.is_from_owner:
            raise StanzaError("forbidden")
        return req.to.bare
    if not sender.local or sender.domain != ctx.domain:
        raise StanzaError("forbidden")
    return sender.bare


@module.iq("get", ns.REGISTER, "query", to=Scope.HOST)
@module.iq("get", ns.REGISTER, "query", to=Scope.BARE)
async def registered(ctx: Ctx, req: IqRequest) -> Element:
    user = _own_account(ctx, req)
    query = payload(ns.REGISTER, "query")
    child(query, "registered")
    child(query, "username", text=user.local)
    return req.result(query)


@module.iq("set", ns.REGISTER, "query", to=Scope.HOST)
@module.iq("set", ns.REGISTER, "query", to=Scope.BARE)
async def change_or_remove(ctx: Ctx, req: IqRequest) -> Element | None:
    user = _own_account(ctx, req)
    if find_child(req.payload, ns.REGISTER, "remove") is not None:
        if not ctx.options.allow_account_removal:
            raise StanzaError("not-allowed")
        # Revoke the credentials first: once the client has the result, the old password
        # must not open a session, although removing the data takes a while longer.
        await ctx.set_password(user, secrets.token_urlsafe(32))
        # Answer before the account (and this session) goes away.
        if req.origin is not None:
            ctx.sessions.send_raw(req.origin, req.result())
        await ctx.remove_user(user)
        ctx.log.info("account %s removed in-band", user)
        return None
    username = child_text(req.payload, "username", ns.REGISTER)
    password = child_text(req.payload, "password", ns.REGISTER)
    if not ctx.options.allow_password_change:
        raise StanzaError("not-allowed")
    if username is None or password is None:
        raise StanzaError("bad-request", "username and password are required")
    try:
        same = JID.create(username, ctx.domain) == user
    except InvalidJID:
        same = False
    if not same:
        raise StanzaError("bad-request", "username does not match the account")
    problem = ctx.password_problem(password)
    if problem is not None:
        raise StanzaError("not-acceptable", problem)
    await ctx.set_password(user, password)
    return req.result()
