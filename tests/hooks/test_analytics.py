"""hooks/analytics.py: a real server exports logins, logouts, registrations, messages
(metadata, no body) and new rooms to a real aiohttp webhook receiver, retries a
failing receiver with back-off, and publishes the same events to RabbitMQ, read back
by a real AMQP consumer on a private vhost."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.support.e2e import new_account, online
from tests.support.muc import create_room
from tests.support.server import XmppdServer, free_port, running_server, service_unavailable

SECRET = "webhook-signing-secret"
AMQP_HOST, AMQP_PORT = "127.0.0.1", 5672


@dataclass
class Receiver:
    """An aiohttp webhook receiver: answers 503 to the first ``fail_first`` POSTs."""

    fail_first: int = 0
    posts: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    signatures_ok: bool = True
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.posts += 1
        if self.posts <= self.fail_first:
            return web.Response(status=503)
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        if request.headers.get("X-Xmppd-Signature") != expected:
            self.signatures_ok = False
        self.events.extend(json.loads(body)["events"])
        self.arrived.set()
        return web.Response(status=204)

    async def wait_for(self, predicate: Any, timeout: float = 20) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                self.arrived.clear()
                await self.arrived.wait()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    got = Receiver(fail_first=2)
    app = web.Application()
    app.router.add_post("/events", got.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield got, port
    finally:
        await runner.cleanup()


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    """A private RabbitMQ vhost for this test run (deleted afterwards)."""
    import socket

    try:
        socket.create_connection((AMQP_HOST, AMQP_PORT), timeout=2).close()
    except OSError:
        service_unavailable(f"RabbitMQ is not reachable on {AMQP_HOST}:{AMQP_PORT}")
    if shutil.which("rabbitmqctl") is None:
        service_unavailable("rabbitmqctl is not installed (needed for a private vhost)")
    name = f"xmppd-test-{uuid.uuid4().hex[:12]}"
    try:
        _rabbitmqctl("add_vhost", name)
        _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        service_unavailable(f"cannot create a RabbitMQ vhost: {exc}")
    try:
        yield name
    finally:
        _rabbitmqctl("delete_vhost", name)


def hooks_config(webhook_port: int, vhost: str | None) -> dict[str, dict[str, Any]]:
    options: dict[str, Any] = {
        "webhook_url": f"http://127.0.0.1:{webhook_port}/events",
        "webhook_secret": SECRET,
        "max_retry_delay": "1s",
    }
    if vhost is not None:
        options["amqp_url"] = f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/{vhost}"
        options["amqp_exchange"] = "xmppd.test-events"
    return {"analytics": options}


@pytest.fixture
def server(tmp_path: Path, receiver: tuple[Receiver, int], vhost: str) -> Iterator[XmppdServer]:
    with running_server(tmp_path, hooks=hooks_config(receiver[1], vhost)) as srv:
        yield srv


async def amqp_queue(vhost: str) -> tuple[Any, Any, str]:
    """A consumer's connection, channel and exclusive queue bound to every event."""
    import aiormq

    connection = await aiormq.connect(f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/{vhost}")
    channel = await connection.channel()
    await channel.exchange_declare(
        exchange="xmppd.test-events", exchange_type="topic", durable=True
    )
    declared = await channel.queue_declare(exclusive=True, auto_delete=True)
    await channel.queue_bind(declared.queue, "xmppd.test-events", routing_key="#")
    return connection, channel, declared.queue


async def test_events_reach_the_webhook_and_amqp(
    server: XmppdServer, receiver: tuple[Receiver, int], vhost: str
) -> None:
    got, _ = receiver
    connection, channel, queue = await amqp_queue(vhost)
    published: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_message(message: Any) -> None:
        published.put_nowait({"key": message.delivery.routing_key, **json.loads(message.body)})
        await message.channel.basic_ack(message.delivery.delivery_tag)

    await channel.basic_consume(queue, on_message)
    try:
        alice_jid = await new_account(server, "alice")
        bob_jid = await new_account(server, "bob")
        alice = await online(server, alice_jid)
        bob = await online(server, bob_jid)
        try:
            alice.xmpp.send_message(mto=bob_jid, mbody="secret plans", mtype="chat")
            await bob.next_message(lambda m: m["body"] == "secret plans")
            full = alice.jid
        finally:
            await alice.stop()
            await bob.stop()
        owner, room, _ = await create_room(server)
        await owner.close()

        registered = await got.wait_for(
            lambda e: e["type"] == "registration" and e["jid"] == alice_jid
        )
        assert registered["host"] == server.domain and registered["id"]
        login = await got.wait_for(lambda e: e["type"] == "login" and e["jid"] == full)
        assert login["address"] == "127.0.0.1"
        message = await got.wait_for(lambda e: e["type"] == "message" and e["from"] == full)
        assert message["to"] == bob_jid and message["message_type"] == "chat"
        assert message["body_length"] == len("secret plans")
        assert "body" not in message  # metadata only by default
        await got.wait_for(lambda e: e["type"] == "logout" and e["jid"] == full)
        await got.wait_for(lambda e: e["type"] == "room_created" and e["room"] == room)
        assert got.posts > 2  # the first two POSTs failed (503) and were retried
        assert got.signatures_ok
        ids = [e["id"] for e in got.events]
        assert len(ids) == len(set(ids))

        seen: list[dict[str, Any]] = []
        async with asyncio.timeout(20):
            while not any(e["type"] == "room_created" for e in seen):
                seen.append(await published.get())
        kinds = {e["type"] for e in seen}
        assert {"registration", "login", "message", "logout", "room_created"} <= kinds
        assert all(e["key"] == e["type"] for e in seen)
        amqp_message = next(e for e in seen if e["type"] == "message" and e["from"] == full)
        assert amqp_message["id"] == message["id"]  # the same event on both destinations
        assert "secret plans" not in json.dumps(seen)
    finally:
        await connection.close()


async def test_a_full_queue_drops_the_oldest_events(tmp_path: Path) -> None:
    """No receiver at all: events wait in a bounded queue, the oldest dropped and counted."""
    dead_port = free_port()  # nothing listens there
    hooks = hooks_config(dead_port, None)
    hooks["analytics"] |= {"queue_size": 3, "events": ["registration"]}
    with running_server(tmp_path, hooks=hooks, http=True) as srv:
        for _ in range(5):
            await new_account(srv, "lost")
        import aiohttp
        from prometheus_client.parser import text_string_to_metric_families

        async with aiohttp.ClientSession() as http, http.get(f"{srv.http_url}/metrics") as r:
            text = await r.text()
    dropped = {
        s.labels["sink"]: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "xmppd_mod_analytics_dropped_total"
    }
    assert dropped == {"webhook": 2.0}
    assert "analytics: webhook queue full" in srv.log_text()
