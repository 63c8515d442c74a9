"""XEP-0199: XMPP Ping — answers pings, and pings idle clients to find dead connections."""

from __future__ import annotations

import asyncio
import time

from pydantic import Field

from xmppd.api import (
    Duration,
    IqRequest,
    IqTimeout,
    Module,
    ModuleContext,
    Options,
    Scope,
    Session,
    StanzaError,
    ns,
)
from xmppd.api.stanza import Element, element, new_id, payload


class PingOptions(Options):
    idle_interval: Duration = Field(
        300.0,
        ge=0,
        description="Ping a client that sent nothing for this long; 0 disables "
        "dead-connection detection.",
    )
    timeout: Duration = Field(
        60.0, gt=0, description="A client that does not answer a ping in this time is cut off."
    )


module = Module("ping", "XEP-0199: XMPP Ping", options=PingOptions, protocols=("XEP-0199 v2.0",))
Ctx = ModuleContext[PingOptions]


@module.iq("get", ns.PING, "ping", to=Scope.HOST)
async def pong(ctx: Ctx, req: IqRequest) -> Element:
    return req.result()


@module.iq("get", ns.PING, "ping", to=Scope.BARE)
async def pong_for_account(ctx: Ctx, req: IqRequest) -> Element:
    # RFC 6120 §10.5.4 lets the server answer for an account's bare JID; RFC 6121 §8.5.1:
    # an IQ to an account that does not exist gets service-unavailable.
    if not req.is_from_owner and not await ctx.account_exists(req.to):
        raise StanzaError("service-unavailable")
    return req.result()


@module.on_load
async def start_dead_peer_detection(ctx: Ctx) -> None:
    if ctx.options.idle_interval > 0:
        ctx.spawn(_sweep(ctx), name="ping-sweep")


async def _sweep(ctx: Ctx) -> None:
    interval = ctx.options.idle_interval
    while True:
        await asyncio.sleep(min(interval, 30.0))
        now = asyncio.get_running_loop().time()
        for session in ctx.sessions:
            if session.domain != ctx.domain or session.is_detached:
                continue
            idle = now - session.last_activity
            if idle >= interval:
                ctx.spawn(_probe(ctx, session), name="ping-probe")


async def _probe(ctx: Ctx, session: Session) -> None:
    iq = element("iq", {"type": "get", "id": new_id(), "from": ctx.domain, "to": str(session.jid)})
    iq.append(payload(ns.PING, "ping"))
    started = time.monotonic()
    try:
        await ctx.request(iq, timeout=ctx.options.timeout)
    except IqTimeout:
        ctx.log.info(
            "%s did not answer a ping in %.0fs; closing", session.jid, time.monotonic() - started
        )
        ctx.sessions.close(session, "connection-timeout")
