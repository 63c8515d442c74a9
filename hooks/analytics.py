"""A hook file that exports events for analytics: logins, logouts, registrations,
messages sent (metadata only, unless configured) and rooms created, to a webhook
(HTTP POST of JSON batches) and/or an AMQP exchange (RabbitMQ).

Enable it in the configuration::

    [hooks.analytics]
    webhook_url = "https://collector.example/xmpp-events"
    webhook_secret = "..."                 # optional: signs each POST (HMAC-SHA-256)
    amqp_url = "amqp://user:password@127.0.0.1:5672/analytics"
    amqp_exchange = "xmppd.events"         # a durable topic exchange, declared if missing
    events = ["login", "logout", "registration", "message", "room_created"]
    include_body = false

Each event is a JSON object with ``id`` (unique: consumers drop duplicates, which a
retry after a lost answer can produce), ``type``, ``time`` (UTC, ISO 8601), ``host``
and the event's fields; docs/events.md describes them. The webhook receives
``{"events": [...]}`` with at most ``batch_size`` events per POST, with the header
``X-Xmppd-Signature: sha256=<hex HMAC of the body>`` when ``webhook_secret`` is set.
AMQP gets one persistent message per event, routing key ``<type>`` (``message``,
``login``...), with publisher confirms.

Events wait in a bounded queue per destination (``queue_size``): a destination that
is down is retried with exponential back-off up to ``max_retry_delay``, and while it
is down the oldest events are dropped once the queue is full (counted in
``xmppd_mod_analytics_dropped_total``, logged). The handlers only append to the queue:
nothing on the message path waits for the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
import uuid
from collections import deque
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol

import aiohttp
from pydantic import Field, field_validator

from xmppd.api import (
    Duration,
    Element,
    HookSet,
    HostCounter,
    ModuleContext,
    Options,
    Priority,
    ServiceKey,
    hooks,
)
from xmppd.api.hooks import PacketContext, ServerEvent, SessionEvent, UserEvent
from xmppd_modules.mod_muc.hooks import ROOM_CREATED, RoomEvent

EventType = Literal["login", "logout", "registration", "message", "room_created"]
ALL_EVENTS: Final[tuple[EventType, ...]] = (
    "login",
    "logout",
    "registration",
    "message",
    "room_created",
)
FIRST_RETRY: Final = 0.5
"""Seconds before the first retry; doubled after each failure."""


class AnalyticsOptions(Options):
    webhook_url: str = Field(
        "", description="POST events here (http:// or https://); empty: no webhook."
    )
    webhook_secret: str = Field(
        "",
        description="Sign each POST: header X-Xmppd-Signature = sha256=<HMAC-SHA-256 of "
        "the body with this secret, hex>. Empty: unsigned.",
    )
    amqp_url: str = Field(
        "", description="Publish events to this AMQP broker (amqp://user:pass@host/vhost)."
    )
    amqp_exchange: str = Field(
        "xmppd.events",
        min_length=1,
        max_length=255,
        description="The topic exchange (declared durable if missing); routing key: type.",
    )
    events: tuple[EventType, ...] = Field(ALL_EVENTS, description="Which events to export.")
    include_body: bool = Field(
        False, description="Export message bodies too (personal data: think twice)."
    )
    batch_size: int = Field(100, ge=1, le=10_000, description="Most events per POST.")
    queue_size: int = Field(
        10_000,
        ge=1,
        le=1_000_000,
        description="Events kept per destination while it is slow or down; beyond, the "
        "oldest are dropped.",
    )
    timeout: Duration = Field(10.0, gt=0, le=300, description="Time for one POST or publish.")
    max_retry_delay: Duration = Field(
        60.0, gt=0, le=3600, description="Longest wait between retries of a failing destination."
    )

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return value

    @field_validator("amqp_url")
    @classmethod
    def _amqp_url(cls, value: str) -> str:
        if value and not value.startswith(("amqp://", "amqps://")):
            raise ValueError("expected an amqp:// or amqps:// URL")
        return value


handlers: HookSet[AnalyticsOptions] = HookSet(
    "analytics",
    summary="Export logins, logouts, registrations, messages and new rooms to a webhook or AMQP",
    options=AnalyticsOptions,
)
Ctx = ModuleContext[AnalyticsOptions]
Event = dict[str, Any]


class Sink(Protocol):
    """A destination: sends a batch or raises."""

    name: str

    async def send(self, batch: list[Event]) -> None: ...

    async def close(self) -> None: ...


class WebhookSink:
    """HTTP POST ``{"events": [...]}``; any status but 2xx is a failure (retried)."""

    name = "webhook"

    def __init__(self, url: str, secret: str, timeout: float) -> None:
        self._url = url
        self._secret = secret.encode()
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def send(self, batch: list[Event]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        body = json.dumps({"events": batch}, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"}
        if self._secret:
            digest = hmac.new(self._secret, body, hashlib.sha256).hexdigest()
            headers["X-Xmppd-Signature"] = f"sha256={digest}"
        async with self._session.post(self._url, data=body, headers=headers) as response:
            if not 200 <= response.status < 300:
                raise RuntimeError(f"HTTP {response.status}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class AmqpSink:
    """One persistent message per event on a durable topic exchange (publisher
    confirms: a publish counts once the broker has it)."""

    name = "amqp"

    def __init__(self, url: str, exchange: str) -> None:
        self._url = url
        self._exchange = exchange
        self._connection: Any = None
        self._channel: Any = None

    async def _open(self) -> Any:
        import aiormq  # optional dependency: pip install 'xmppd[events]'

        if self._channel is None or self._channel.is_closed:
            await self.close()
            self._connection = await aiormq.connect(self._url)
            channel = await self._connection.channel()
            await channel.exchange_declare(
                exchange=self._exchange, exchange_type="topic", durable=True
            )
            self._channel = channel
        return self._channel

    async def send(self, batch: list[Event]) -> None:
        from pamqp.commands import Basic  # aiormq's protocol layer

        try:
            channel = await self._open()
            for event in batch:
                await channel.basic_publish(
                    json.dumps(event, separators=(",", ":")).encode(),
                    exchange=self._exchange,
                    routing_key=event["type"],
                    properties=Basic.Properties(
                        content_type="application/json",
                        delivery_mode=2,
                        message_id=event["id"],
                    ),
                )
        except BaseException:
            await self.close()  # reconnect on the next attempt
            raise

    async def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):  # already broken: nothing to close cleanly
                await connection.close()


class Exporter:
    """A bounded queue of events in front of one sink, and the task that drains it."""

    def __init__(self, ctx: Ctx, sink: Sink) -> None:
        self.ctx = ctx
        self.sink = sink
        self.queue: deque[Event] = deque()
        self._wake = asyncio.Event()
        self._sent = ctx.metrics.counter("sent", "Events exported", ["sink"])
        self._dropped: HostCounter = ctx.metrics.counter(
            "dropped", "Events dropped because a destination's queue was full", ["sink"]
        )
        self._failures = ctx.metrics.counter(
            "failures", "Failed attempts to export a batch", ["sink"]
        )
        for counter in (self._sent, self._dropped, self._failures):
            counter.labels(sink=sink.name)

    def put(self, event: Event) -> None:
        self.queue.append(event)
        self._trim()
        self._wake.set()

    def _trim(self) -> None:
        excess = len(self.queue) - self.ctx.options.queue_size
        if excess > 0:
            for _ in range(excess):
                self.queue.popleft()
            self._dropped.inc(excess, sink=self.sink.name)
            self.ctx.log.warning(
                "analytics: %s queue full; dropped the %d oldest events", self.sink.name, excess
            )

    def _take(self) -> list[Event]:
        n = min(len(self.queue), self.ctx.options.batch_size)
        return [self.queue.popleft() for _ in range(n)]

    async def flush_once(self) -> bool:
        """Send one batch; on failure put it back in front. ``True`` when it went."""
        batch = self._take()
        if not batch:
            return True
        try:
            async with asyncio.timeout(self.ctx.options.timeout):
                await self.sink.send(batch)
        except Exception as exc:
            self.queue.extendleft(reversed(batch))
            self._trim()
            self._failures.inc(sink=self.sink.name)
            self.ctx.log.warning(
                "analytics: %s failed (%s); %d events waiting",
                self.sink.name,
                type(exc).__name__ if not str(exc) else exc,
                len(self.queue),
            )
            return False
        self._sent.inc(len(batch), sink=self.sink.name)
        return True

    async def run(self) -> None:
        delay = FIRST_RETRY
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self.queue:
                    if await self.flush_once():
                        delay = FIRST_RETRY
                    else:
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, self.ctx.options.max_retry_delay)
        finally:
            await self.sink.close()

    async def drain(self, within: float) -> None:
        """At shutdown: try to send what is queued, for at most ``within`` seconds."""
        try:
            async with asyncio.timeout(within):
                while self.queue and await self.flush_once():
                    pass
        except TimeoutError:
            pass
        if self.queue:
            self.ctx.log.warning(
                "analytics: %d events for %s not sent at shutdown",
                len(self.queue),
                self.sink.name,
            )


EXPORTERS: Final = ServiceKey[list[Exporter]]("analytics.exporters")
"""The exporters of a host this hook file is enabled on."""


@handlers.on_load
async def start(ctx: Ctx) -> None:
    options = ctx.options
    exporters: list[Exporter] = []
    if options.webhook_url:
        sink = WebhookSink(options.webhook_url, options.webhook_secret, options.timeout)
        exporters.append(Exporter(ctx, sink))
    if options.amqp_url:
        exporters.append(Exporter(ctx, AmqpSink(options.amqp_url, options.amqp_exchange)))
    if not exporters:
        ctx.log.warning("analytics: neither webhook_url nor amqp_url is set; exporting nothing")
    for exporter in exporters:
        ctx.spawn(exporter.run(), name=f"analytics {exporter.sink.name} {ctx.domain}")
    ctx.provide(EXPORTERS, exporters)


def _emit(ctx: Ctx, kind: EventType, **fields: Any) -> None:
    if kind not in ctx.options.events:
        return
    event: Event = {
        "id": uuid.uuid4().hex,
        "type": kind,
        "time": datetime.fromtimestamp(time.time(), UTC).isoformat(timespec="milliseconds"),
        "host": ctx.domain,
        **fields,
    }
    for exporter in ctx.optional_service(EXPORTERS) or ():
        exporter.put(event)


@handlers.on(hooks.RESOURCE_BOUND)
async def login(ctx: Ctx, event: SessionEvent) -> None:
    session = event.session
    _emit(ctx, "login", jid=str(session.jid), address=session.peer)


@handlers.on(hooks.RESOURCE_UNBOUND)
async def logout(ctx: Ctx, event: SessionEvent) -> None:
    _emit(ctx, "logout", jid=str(event.session.jid))


@handlers.on(hooks.USER_REGISTERED)
async def registration(ctx: Ctx, event: UserEvent) -> None:
    _emit(ctx, "registration", jid=str(event.jid))


@handlers.fold(hooks.USER_SEND_PACKET, priority=Priority.LATE)
async def message_sent(ctx: Ctx, stanza: Element, packet: PacketContext) -> Element:
    """Messages with content that a local client sends (chat states, receipts and other
    body-less messages are left out). Never changes the stanza."""
    if stanza.tag != "message" or "message" not in ctx.options.events:
        return stanza
    body = stanza.find("body")
    if body is None:
        return stanza
    fields: dict[str, Any] = {
        "from": str(packet.session.jid),
        "to": stanza.get("to", ""),
        "message_type": stanza.get("type", "normal"),
        "message_id": stanza.get("id", ""),
        "body_length": len(body.text or ""),
    }
    if ctx.options.include_body:
        fields["body"] = body.text or ""
    _emit(ctx, "message", **fields)
    return stanza


@handlers.on(ROOM_CREATED)
async def room_created(ctx: Ctx, event: RoomEvent) -> None:
    _emit(
        ctx,
        "room_created",
        room=str(event.room),
        actor=str(event.actor) if event.actor is not None else None,
    )


@handlers.on(hooks.SERVER_STOPPING)
async def stopping(ctx: Ctx, event: ServerEvent) -> None:
    for exporter in ctx.optional_service(EXPORTERS) or ():
        await exporter.drain(within=min(5.0, ctx.options.timeout))
