"""An operator scrapes ``/metrics`` over HTTP while users log in and chat, and the
Grafana dashboard's queries (docs/grafana-dashboard.json) return data from a real
Prometheus (Debian's ``prometheus``) scraping a real xmppd."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.clients import AuthFailed, Slix
from tests.support.e2e import PASSWORD, new_account, online
from tests.support.server import (
    DEFAULT_TEST_MODULES,
    XmppdServer,
    free_port,
    running_server,
    service_unavailable,
)
from tests.support.wsclient import WsClient

DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana-dashboard.json"
MODULES = {**DEFAULT_TEST_MODULES, "offline": {}, "mam": {}, "http_upload": {}}

REQUIRED = {
    # the list, by metric family name (as the parser reports it)
    "xmppd_sessions": "sessions by transport and host",
    "xmppd_logins": "logins ok/failed by mechanism",
    "xmppd_c2s_stanzas": "stanzas in/out by kind",
    "xmppd_routing_seconds": "routing latency histogram",
    "xmppd_mod_offline_messages": "offline queue sizes",
    "xmppd_mod_mam_archive_writes": "archive writes",
    "xmppd_storage_query_seconds": "storage query latency",
    "xmppd_hook_errors": "hook errors by module",
    "xmppd_event_loop_lag_seconds": "event-loop lag",
    "process_resident_memory_bytes": "process memory",
    "process_cpu_seconds": "process CPU",
    "process_open_fds": "open files",
    "xmppd_tls_certificate_expiry_days": "TLS certificate days remaining",
    "xmppd_mod_muc_rooms": "MUC rooms",
    "xmppd_mod_muc_occupants": "MUC occupants",
    "xmppd_http_requests": "HTTP requests",
    "xmppd_mod_http_upload_upload_bytes": "upload bytes",
    "xmppd_s2s_outgoing_links": "s2s connections",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    with running_server(
        tmp_path_factory.mktemp("xmppd-metrics"), modules=MODULES, http=True
    ) as srv:
        yield srv


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(server: XmppdServer) -> tuple[set[str], Samples]:
    """The families and samples of ``/metrics``, parsed by prometheus-client."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{server.http_url}/metrics") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    families: set[str] = set()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return families, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of ``name`` over the samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


async def test_metrics_parse_and_move_when_a_message_is_sent_and_a_login_fails(
    server: XmppdServer,
) -> None:
    families, before = await scrape(server)
    missing = {name: what for name, what in REQUIRED.items() if name not in families}
    assert not missing, f"metrics missing: {missing}"

    alice_jid = await new_account(server, "alice")
    bob_jid = await new_account(server, "bob")
    intruder = Slix(server, alice_jid, "not the password", mechanism="PLAIN")
    with pytest.raises(AuthFailed):
        await intruder.start()
    await intruder.stop()

    alice = await online(server, alice_jid)
    bob = await online(server, bob_jid)
    try:
        _, during = await scrape(server)
        assert value(during, "xmppd_sessions", host=server.domain, transport="tcp") >= 2
        alice.xmpp.send_message(mto=bob_jid, mbody="metered", mtype="chat")
        await bob.next_message(lambda m: m["body"] == "metered")
        _, after = await scrape(server)
    finally:
        await alice.stop()
        await bob.stop()

    failed = {"mechanism": "PLAIN", "result": "failure"}
    assert (
        value(after, "xmppd_logins_total", **failed)
        == value(before, "xmppd_logins_total", **failed) + 1
    )
    for direction in ("in", "out"):
        moved = value(after, "xmppd_c2s_stanzas_total", direction=direction, kind="message")
        assert (
            moved
            >= value(before, "xmppd_c2s_stanzas_total", direction=direction, kind="message") + 1
        ), direction
    for histogram in ("xmppd_routing_seconds_count", "xmppd_storage_query_seconds_count"):
        assert value(after, histogram) > value(before, histogram), histogram
    # the chat message went to bob's archive
    assert (
        total(after, "xmppd_mod_mam_archive_writes_total")
        > total(before, "xmppd_mod_mam_archive_writes_total")
        or total(after, "xmppd_mod_mam_archive_queue") > 0
    )
    days = value(after, "xmppd_tls_certificate_expiry_days", host=server.domain)
    assert 300 < days < 4000  # the self-signed test certificate


async def test_an_offline_message_shows_in_the_queue_gauge(server: XmppdServer) -> None:
    carol_jid = await new_account(server, "carol")
    dave_jid = await new_account(server, "dave")
    _, before = await scrape(server)
    dave = await online(server, dave_jid)
    try:
        dave.xmpp.send_message(mto=carol_jid, mbody="wait for me", mtype="chat")
        # an iq round trip after the message: the message was handled before the answer
        await dave.xmpp.plugin["xep_0199"].ping(server.domain, timeout=10)
    finally:
        await dave.stop()
    _, after = await scrape(server)
    waiting = ("xmppd_mod_offline_messages", {"host": server.domain})
    assert value(after, waiting[0], **waiting[1]) == value(before, waiting[0], **waiting[1]) + 1
    stored = "xmppd_mod_offline_stored_total"
    assert value(after, stored, host=server.domain) == value(before, stored, host=server.domain) + 1


# ---------------------------------------------------------------------- the dashboard


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of the dashboard, variables filled in as
    Grafana would for "All" instances and a short rate window."""
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", ()):
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$instance", ".+")
            out.append((panel["title"], expr))
    return out


def test_the_dashboard_is_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    queries = dashboard_queries()
    assert len(queries) >= len(REQUIRED) - 4  # a panel may chart two families
    text = DASHBOARD.read_text()
    for name in REQUIRED:
        assert name in text, f"the dashboard does not chart {name}"


@contextlib.contextmanager
def prometheus(tmp: Path, target: str) -> Iterator[str]:
    """Debian's prometheus on a free loopback port, scraping ``target`` every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        service_unavailable("prometheus is not installed (apt-get install prometheus)")
        raise AssertionError  # unreachable: service_unavailable skips or fails
    config = tmp / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: xmppd\n    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )
    port = free_port()
    log = (tmp / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp,
        env={**os.environ, "HOME": str(tmp)},
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def test_every_dashboard_query_returns_data(server: XmppdServer, tmp_path: Path) -> None:
    # Some traffic first, so that every family has samples (logins, stanzas, archive,
    # a federation failure: .invalid never resolves, RFC 2606).
    eve_jid = await new_account(server, "eve")
    async with Slix(server, eve_jid, PASSWORD) as eve:
        eve.xmpp.send_message(mto=eve_jid, mbody="to myself", mtype="chat")
        await eve.next_message(lambda m: m["body"] == "to myself")
        eve.xmpp.send_message(mto="someone@nowhere.invalid", mbody="hello?", mtype="chat")
        bounce = await eve.next_message(lambda m: m["type"] == "error", timeout=30)
        assert bounce["error"]["condition"] == "remote-server-not-found"
    assert server.http_port is not None
    with prometheus(tmp_path, f"127.0.0.1:{server.http_port}") as api:
        pending = {expr: title for title, expr in dashboard_queries()}
        deadline = time.monotonic() + 45
        async with aiohttp.ClientSession() as http:
            while pending and time.monotonic() < deadline:
                for expr in list(pending):
                    try:
                        async with http.get(f"{api}/api/v1/query", params={"query": expr}) as r:
                            answer = await r.json()
                    except aiohttp.ClientConnectionError:
                        break  # prometheus still starting
                    assert answer["status"] == "success", (expr, answer)
                    if answer["data"]["result"]:
                        del pending[expr]
                if pending:
                    await asyncio.sleep(1)  # prometheus scrapes once a second
        assert not pending, "queries without data: " + "; ".join(
            f"{title}: {expr}" for expr, title in pending.items()
        )


async def test_a_websocket_session_is_counted_and_logged_by_its_transport(
    server: XmppdServer,
) -> None:
    jid = await new_account(server, "webby")
    client = await WsClient.connect(server)
    try:
        await client.open()
        full = await client.login(jid.split("@")[0], PASSWORD, resource="browser")
        _, during = await scrape(server)
        assert value(during, "xmppd_sessions", host=server.domain, transport="websocket") >= 1
    finally:
        await client.close()
    line = f"login: address=127.0.0.1 jid={full} mechanism="
    logged = [x for x in server.log_text().splitlines() if line in x]
    assert len(logged) == 1 and logged[0].endswith(" transport=websocket"), logged
