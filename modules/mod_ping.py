"""XEP-0199: XMPP Ping — answers pings, and pings idle clients to find dead connections."""

from __future__ import annotations

import asyncio
import time

from pydantic import Field

from xmppd.api import (
    JID,
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
        description="Ping a client that sent nothing for this long (clients that fell "
        "idle together are pinged one after another over up to 30 s more); 0 disables "
        "dead-connection detection.",
    )
    timeout: Duration = Field(
        60.0,
        gt=0,
        description="A client that does not answer a ping in this time is cut off: its "
        "session ends with connection-timeout, or, when it may resume (XEP-0198), it "
        "waits for the client to resume as after a dropped connection.",
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


SWEEP_PERIOD = 30.0
"""Seconds between two looks for idle clients (at most ``idle_interval``)."""


async def _sweep(ctx: Ctx) -> None:
    """Ping every client idle for ``idle_interval``, once at a time. Clients that
    logged in together (a restart, a reconnect storm) fall due together: their pings
    are spread over the period until the next look rather than sent at once, since
    each answer wakes the session up (its XML parser, released while idle, is built
    again) and thousands at once cost a burst of memory and latency for everyone."""
    interval = ctx.options.idle_interval
    period = min(interval, SWEEP_PERIOD)
    loop = asyncio.get_running_loop()
    pinging: set[JID] = set()
    """Full JIDs with a ping in flight (not pinged again meanwhile)."""
    while True:
        await asyncio.sleep(period)
        started = loop.time()
        due = [
            session
            # This process's own sessions: in a cluster, each node pings its own.
            for session in ctx.sessions.endpoints()
            if session.domain == ctx.domain
            and not session.is_detached
            and session.jid not in pinging
            and started - session.last_activity >= interval
        ]
        gap = period / len(due) if due else 0.0
        for index, session in enumerate(due):
            await asyncio.sleep(max(0.0, started + index * gap - loop.time()))
            if not ctx.sessions.is_current(session):  # gone while the others were pinged
                continue
            pinging.add(session.jid)
            ctx.spawn(_probe(ctx, session, pinging), name="ping-probe")


async def _probe(ctx: Ctx, session: Session, pinging: set[JID]) -> None:
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
    finally:
        pinging.discard(session.jid)
