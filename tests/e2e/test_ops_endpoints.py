"""The operator's endpoints on the HTTP listener: ``/metrics`` in the Prometheus text
format, ``/health`` as JSON (200 ready, 503 with the parts that are not and why), and
their restriction to ``http.ops_allowed`` (loopback by default; behind a trusted proxy,
the forwarded address counts)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.inprocess import inprocess_server
from tests.support.server import XmppdServer, running_server
from xmppd.metrics import CONTENT_TYPE


async def test_metrics_and_health_from_loopback(tmp_path: Path) -> None:
    async with (
        inprocess_server(tmp_path, http=True) as srv,
        aiohttp.ClientSession() as session,
    ):
        async with session.get(srv.http_url + "/metrics") as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == CONTENT_TYPE
            assert r.headers["Cache-Control"] == "no-store"
            text = await r.text()
        assert "# TYPE xmppd_http_requests_total counter" in text
        # The registry rendered is the server's own: a request it counted shows up.
        async with session.get(srv.http_url + "/metrics") as r:
            again = await r.text()
        assert 'xmppd_http_requests_total{method="GET",status="200"}' in again

        async with session.get(srv.http_url + "/health") as r:
            assert r.status == 200
            assert r.content_type == "application/json"
            body = json.loads(await r.read())
        assert body["ready"] is True
        assert body["parts"] and all(p["ready"] for p in body["parts"])

        part = srv.server.health.part("ops-test", reason="warming up")
        for path in ("/health", "/health/ready"):
            async with session.get(srv.http_url + path) as r:
                assert r.status == 503
                body = json.loads(await r.read())
            assert body["ready"] is False
            [down] = [p for p in body["parts"] if not p["ready"]]
            assert down["name"] == "ops-test" and down["reason"] == "warming up"
        # Not ready is not dead: the liveness probe still answers, so an orchestrator
        # holds traffic back without restarting the process.
        async with session.get(srv.http_url + "/health/live") as r:
            assert r.status == 200
            assert json.loads(await r.read()) == {"live": True}

        part.set_ready()
        for path in ("/health", "/health/ready"):
            async with session.get(srv.http_url + path) as r:
                assert r.status == 200
        srv.server.health.remove("ops-test")

        async with session.post(srv.http_url + "/metrics") as r:
            assert r.status == 405


@pytest.fixture(scope="module")
def proxied_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    extra = (
        "[http]\n"
        'trusted_proxies = ["127.0.0.0/8"]\n'
        'ops_allowed = ["198.51.100.0/24", "2001:db8::/32"]\n'
        "metrics = false\n"
    )
    with running_server(tmp_path_factory.mktemp("ops"), http=True, extra=extra) as srv:
        yield srv


@pytest.mark.parametrize(
    ("forwarded", "status"),
    [
        (None, 403),  # the proxy itself (loopback) is not in ops_allowed
        ("198.51.100.7", 200),
        ("2001:db8::5", 200),
        ("203.0.113.5", 403),
        ("198.51.100.7, 203.0.113.5", 403),  # the nearest untrusted hop counts
    ],
)
async def test_health_only_for_allowed_networks(
    proxied_server: XmppdServer, forwarded: str | None, status: int
) -> None:
    headers = {} if forwarded is None else {"X-Forwarded-For": forwarded}
    async with aiohttp.ClientSession() as session:
        async with session.get(proxied_server.http_url + "/health", headers=headers) as r:
            assert r.status == status
            if status == 403:
                assert b"ready" not in await r.read()
            else:
                assert json.loads(await r.read())["ready"] is True
        async with session.get(proxied_server.http_url + "/health/live", headers=headers) as r:
            assert r.status == status


async def test_metrics_can_be_turned_off(proxied_server: XmppdServer) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            proxied_server.http_url + "/metrics", headers={"X-Forwarded-For": "198.51.100.7"}
        ) as r,
    ):
        assert r.status == 404


async def test_an_api_token_opens_them_to_other_networks(tmp_path: Path) -> None:
    """A Prometheus outside ``http.ops_allowed`` scrapes with a REST API token: any
    scope opens /metrics and the probes; a wrong, revoked or user token does not."""
    extra = '[http]\nops_allowed = ["198.51.100.0/24"]\n'  # loopback is not allowed
    with running_server(tmp_path, http=True, extra=extra) as srv:
        made = srv.cli("token", "create", "prometheus", "--scope", "read-only")
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip()
        revoked = srv.cli("token", "create", "gone", "--scope", "admin").stdout.strip()
        assert srv.cli("token", "revoke", revoked.split("_")[1]).returncode == 0
        async with aiohttp.ClientSession() as session:

            async def get(path: str, bearer: str | None) -> tuple[int, str]:
                headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
                async with session.get(srv.http_url + path, headers=headers) as r:
                    return r.status, await r.text()

            assert (await get("/metrics", None))[0] == 403
            for wrong in (token[:-2] + "zz", revoked, "xut_a_b", "nonsense"):
                status, _ = await get("/metrics", wrong)
                assert status == 401, wrong
            status, text = await get("/metrics", token)
            assert status == 200
            families = {f.name for f in text_string_to_metric_families(text)}
            assert {"xmppd_sessions", "xmppd_http_requests"} <= families
            for path in ("/health", "/health/ready", "/health/live"):
                assert (await get(path, None))[0] == 403
                status, body = await get(path, token)
                assert status == 200, (path, body)
        # A scrape is not an API call: the audit log does not record it.
        audit = [line for line in srv.log_text().splitlines() if "xmppd.audit" in line]
        assert not [line for line in audit if "/metrics" in line or "/health" in line]
