"""``server.workers``: one ``xmppd run`` serving with several worker processes that share
the listening ports (SO_REUSEPORT) and form a local cluster through Redis, on
PostgreSQL. Clients connecting to the one port land on every worker, chat across
them, and the supervisor restarts a worker that dies and stops them all on SIGTERM."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.boshclient import BoshClient
from tests.support.clients import Slix, register_account
from tests.support.cluster import REDIS_URL, cluster_extra, delete_prefix, redis_or_skip
from tests.support.component import SlixComponent, ctag
from tests.support.server import free_port, postgres_database, write_config
from tests.support.workers import Workers, running_workers
from xmppd.config import ConfigError, load_config
from xmppd.control import call

pytestmark = pytest.mark.timeout(240)  # each start imports xmppd in three processes

PW = "s3cret-pw"
COMPONENT = "gateway.localhost"
_counter = itertools.count()


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    with running_workers(
        tmp_path_factory.mktemp("workers"),
        workers=2,
        http=True,
        components={COMPONENT: "comp-secret"},
    ) as running:
        yield running


async def sessions_by_node(
    running: Workers, expected: int = 0, until: Callable[[dict[str, str]], bool] | None = None
) -> dict[str, str]:
    """Full JID → node of every session, as the REST API of whichever worker answers
    on the control sockets lists them, once ``expected`` sessions are listed (or
    ``until`` holds)."""
    async with asyncio.timeout(20):
        while True:
            status, body = await call(running.server.data_dir, "GET", "/sessions")
            assert status == 200, body
            found = {s["jid"]: s["node"] for s in body["sessions"]}
            if until(found) if until is not None else len(found) >= expected:
                return found
            await asyncio.sleep(0.1)


@asynccontextmanager
async def clients_on_every_worker(
    running: Workers, at_least: int = 8
) -> AsyncIterator[tuple[list[Slix], dict[str, str]]]:
    """Connect clients to the shared port until every worker has one (and at least
    ``at_least`` are connected); the clients and their sessions' nodes."""
    async with AsyncExitStack() as stack:
        clients: list[Slix] = []
        nodes: dict[str, str] = {}
        while len(clients) < 40:
            name = f"w{next(_counter)}"
            await register_account(running.server, name, PW)
            clients.append(
                await stack.enter_async_context(Slix(running.server, f"{name}@localhost", PW))
            )
            if len(clients) >= at_least:
                mine = {c.jid for c in clients}
                listed = await sessions_by_node(running, until=mine.issubset)
                nodes = {jid: listed[jid] for jid in mine}
                if len(set(nodes.values())) == running.count:
                    break
        yield clients, nodes


async def test_connections_spread_over_workers_and_users_chat_across_them(
    workers: Workers,
) -> None:
    async with clients_on_every_worker(workers) as (clients, nodes):
        assert set(nodes.values()) == {"wk-w0", "wk-w1"}
        on = {c.jid: nodes[c.jid] for c in clients}
        a = next(c for c in clients if on[c.jid] == "wk-w0")
        b = next(c for c in clients if on[c.jid] == "wk-w1")
        a.xmpp.send_message(mto=b.xmpp.boundjid.bare, mbody="across workers", mtype="chat")
        got = await b.next_message(lambda m: m["body"] == "across workers")
        assert got["from"] == a.xmpp.boundjid
        b.xmpp.send_message(mto=a.jid, mbody="and back", mtype="chat")
        got = await a.next_message(lambda m: m["body"] == "and back")
        assert got["from"] == b.xmpp.boundjid

        # The CLI's control socket reaches one worker, which acts for all: deleting
        # b's account ends its session on the other worker.
        status, _ = await call(workers.server.data_dir, "DELETE", f"/users/{b.xmpp.boundjid.bare}")
        assert status == 204
        await sessions_by_node(workers, until=lambda found: b.jid not in found)


async def test_one_scrape_shows_every_worker_by_node(workers: Workers) -> None:
    """Whichever worker the kernel hands the scrape to, /metrics has every worker's
    series, labelled with its node, and each family once."""
    port = workers.server.http_port
    for _ in range(4):  # several connections: several workers answer
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as response,
        ):
            assert response.status == 200
            text = await response.text()
        families = {
            f.name: f for f in text_string_to_metric_families(text) if f.name.startswith("xmppd_")
        }
        nodes = {s.labels["node"] for s in families["xmppd_cluster_nodes"].samples}
        assert nodes == {"wk-w0", "wk-w1"}
        assert text.count("# TYPE xmppd_cluster_nodes gauge") == 1
        sessions = {
            s.labels["node"]: s.value for s in families["xmppd_cluster_local_sessions"].samples
        }
        assert set(sessions) == {"wk-w0", "wk-w1"}


async def test_a_bosh_session_is_served_whichever_worker_gets_the_request(
    workers: Workers,
) -> None:
    """Every request on a new connection, so the kernel spreads them over the workers:
    the ones that do not hold the session pass the request on to the one that does
    (the cluster's BOSH relay: each worker is a node)."""
    name = f"w{next(_counter)}"
    await register_account(workers.server, name, PW)
    url = f"http://127.0.0.1:{workers.server.http_port}/http-bind"
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        bosh = BoshClient(http, url)
        jid = await bosh.login(name, PW)
        assert jid.startswith(f"{name}@localhost/")
        for i in range(10):
            response = await bosh.send(
                f"<iq xmlns='jabber:client' type='get' id='p{i}' to='localhost'>"
                "<ping xmlns='urn:xmpp:ping'/></iq>"
            )
            if not any(el.get("id") == f"p{i}" for el in response):
                await bosh.until(lambda el, i=i: el.get("id") == f"p{i}")
        async with http.get(f"http://127.0.0.1:{workers.server.http_port}/metrics") as r:
            text = await r.text()
    forwarded = sum(
        s.value
        for f in text_string_to_metric_families(text)
        if f.name == "xmppd_bosh_relay_forwarded"
        for s in f.samples
        if s.name == "xmppd_bosh_relay_forwarded_total"
    )
    assert forwarded > 0


async def test_a_component_serves_users_of_every_worker(workers: Workers) -> None:
    """The component connects to one worker; a user on the other worker reaches it
    (through the cluster) and gets its answer."""
    component = await SlixComponent(workers.server, COMPONENT, "comp-secret").connected()
    try:
        deadline = time.monotonic() + 15
        while (held := workers.component_node(COMPONENT)) is None:
            assert time.monotonic() < deadline, "the component's node was not published"
            await asyncio.sleep(0.05)
        async with clients_on_every_worker(workers, at_least=2) as (clients, nodes):
            user = next(c for c in clients if nodes[c.jid] != held)
            user.xmpp.send_message(mto=f"bot@{COMPONENT}", mbody="hello gateway", mtype="chat")
            got = await component.next(
                lambda el: (
                    el.tag == ctag("message") and el.findtext(ctag("body")) == "hello gateway"
                )
            )
            assert got.get("from") == user.jid
            component.send_message(user.jid, "hello user", mfrom=f"bot@{COMPONENT}")
            answer = await user.next_message(lambda m: m["body"] == "hello user")
            assert answer["from"] == f"bot@{COMPONENT}"
    finally:
        await component.stop()
    deadline = time.monotonic() + 15
    while workers.component_node(COMPONENT) is not None:  # it left: the key goes
        assert time.monotonic() < deadline, "the component's node was not withdrawn"
        await asyncio.sleep(0.05)


async def test_killed_worker_is_restarted_and_its_sessions_end(workers: Workers) -> None:
    async with clients_on_every_worker(workers, at_least=2) as (clients, nodes):
        a = next(c for c in clients if nodes[c.jid] == "wk-w0")
        b = next(c for c in clients if nodes[c.jid] == "wk-w1")
        # a sees b's presence (slixmpp accepts and subscribes back on its own)
        a.xmpp.send_presence(pto=b.xmpp.boundjid.bare, ptype="subscribe")
        await a.next_presence(
            lambda p: p["type"] == "available" and p["from"] == b.xmpp.boundjid, timeout=15
        )
        victim = workers.worker_pids()["wk-w1"]
        os.kill(victim, signal.SIGKILL)
        gone = await a.next_presence(
            lambda p: p["type"] == "unavailable" and p["from"] == b.xmpp.boundjid, timeout=20
        )
        assert gone is not None
        deadline = time.monotonic() + 30
        while workers.worker_pids().get("wk-w1") in (None, victim):
            assert time.monotonic() < deadline, "the supervisor did not restart worker 1"
            await asyncio.sleep(0.1)
        listed = await sessions_by_node(
            workers, until=lambda found: b.jid not in found and a.jid in found
        )
        assert nodes[a.jid] == listed[a.jid] == "wk-w0"
        log = workers.server.log_text()
        assert "worker 1 exited (status -9); starting it again" in log


def test_sigterm_stops_every_worker(tmp_path: Path) -> None:
    """Clients connected to both workers; the workers stop together, so none drains
    into the others (a drain would wait drain_timeout for clients to move)."""
    with running_workers(tmp_path, workers=2, cluster='drain_timeout = "120s"\n') as running:
        pids = running.worker_pids()
        # A worker joins the cluster before it opens its control socket: wait for both.
        deadline = time.monotonic() + 30
        while (sockets := sorted(p.name for p in running.server.data_dir.glob("*.ctl"))) != [
            "xmppd-w0.ctl",
            "xmppd-w1.ctl",
        ] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sockets == ["xmppd-w0.ctl", "xmppd-w1.ctl"]
        assert (running.server.data_dir / "xmppd.pid").read_text().strip() == str(
            running.server.process.pid
        )

        async def stop_with_clients() -> int:
            async with clients_on_every_worker(running, at_least=2):
                running.server.process.send_signal(signal.SIGTERM)
                return await asyncio.to_thread(running.server.process.wait, 30)

        assert asyncio.run(stop_with_clients()) == 0
        for pid in pids.values():
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        assert running.nodes() == {}  # every worker left the cluster
        assert not list(running.server.data_dir.glob("*.ctl"))
        assert not (running.server.data_dir / "xmppd.pid").exists()
        log = running.server.log_text()
        assert "supervisor: every worker has stopped" in log
        assert "draining:" not in log
        assert "Traceback" not in log


def test_a_worker_that_cannot_start_stops_the_supervisor(tmp_path: Path) -> None:
    """A port taken by another program (without SO_REUSEPORT): the workers cannot
    bind, and ``xmppd run`` exits with an error instead of restarting them forever."""
    redis_or_skip()
    prefix = f"t{uuid.uuid4().hex[:10]}"
    with socket.socket() as taken, postgres_database() as url:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = tmp_path / "xmppd.toml"
        write_config(
            config,
            data_dir=tmp_path / "data",
            storage_url=url,
            starttls_port=taken.getsockname()[1],
            direct_tls_port=free_port(),
            extra=cluster_extra(REDIS_URL, prefix, "taken"),
            server={"workers": 2},
        )
        try:
            done = subprocess.run(
                [sys.executable, "-m", "xmppd", "--config", str(config), "run"],
                capture_output=True,
                text=True,
                timeout=90,
            )
        finally:
            delete_prefix(REDIS_URL, prefix)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "failed at start" in done.stderr
    assert "address already in use" in done.stderr


def test_workers_refuse_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text('[server]\nworkers = 2\n[cluster]\nredis_url = "redis://127.0.0.1:1/0"\n')
    with pytest.raises(ConfigError, match="SQLite file is written by one process only"):
        load_config(path)


def test_workers_refuse_a_fixed_relay_port(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text(
        '[server]\nworkers = 2\n[storage]\nurl = "postgresql+asyncpg://x@h/db"\n'
        '[cluster]\nredis_url = "redis://127.0.0.1:1/0"\nhttp_address = "10.0.0.5:5290"\n'
    )
    with pytest.raises(ConfigError, match="each worker needs a relay port of its own"):
        load_config(path)
    path.write_text(path.read_text().replace(":5290", ""))
    assert load_config(path).cluster.http_address == "10.0.0.5"


def test_auto_is_one_worker_per_core(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text(
        '[server]\nworkers = "auto"\n[storage]\nurl = "postgresql+asyncpg://x@h/db"\n'
        '[cluster]\nredis_url = "redis://127.0.0.1:1/0"\n'
    )
    assert load_config(path).worker_count == (os.cpu_count() or 1)
