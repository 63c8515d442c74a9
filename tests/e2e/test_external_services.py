"""XEP-0215: the configured STUN/TURN services, with TURN credentials in coturn's
shared-secret REST scheme (recomputed here as coturn does, and accepted by a real
coturn started by the test); the secret never leaves the server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from lxml import etree

from tests.support.clients import register_account
from tests.support.coturn import Coturn, running_coturn, turn_allocates
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, running_server
from tests.support.xmlclient import XmlClient, error_condition
from xmppd.config import load_config
from xmppd.server import Server

NS = "urn:xmpp:extdisco:2"
SECRET = "coturn-shared-s3cret"


@pytest.fixture(scope="module")
def turn_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    modules = {
        **DEFAULT_TEST_MODULES,
        "external_services": {
            "credentials_ttl": "1h",
            "services": [
                {"type": "stun", "host": "stun.example.org"},
                {"type": "turn", "host": "turn.example.org", "port": 3478, "secret": SECRET},
                {
                    "type": "turns",
                    "host": "turn.example.org",
                    "port": 5349,
                    "transport": "tcp",
                    "secret": SECRET,
                },
            ],
        },
    }
    with running_server(tmp_path_factory.mktemp("turn"), modules=modules) as srv:
        yield srv


def coturn_password(username: str) -> str:
    return base64.b64encode(
        hmac.new(SECRET.encode(), username.encode(), hashlib.sha1).digest()
    ).decode()


async def test_services_with_turn_credentials(turn_server: XmppdServer) -> None:
    await register_account(turn_server, "caller", "pw-call")
    async with await XmlClient.login(turn_server, "caller@localhost", "pw-call") as client:
        before = time.time()
        reply = await client.iq("get", f"<services xmlns='{NS}'/>", to="localhost")
        assert reply.get("type") == "result"
        services = reply.findall(f"{{{NS}}}services/{{{NS}}}service")
        assert [
            (s.get("type"), s.get("host"), s.get("port"), s.get("transport")) for s in services
        ] == [
            ("stun", "stun.example.org", "3478", "udp"),
            ("turn", "turn.example.org", "3478", "udp"),
            ("turns", "turn.example.org", "5349", "tcp"),
        ]
        assert services[0].get("username") is None  # STUN: no credentials
        turn = services[1]
        username = turn.get("username") or ""
        expiry, _, user = username.partition(":")
        assert user == "caller@localhost"
        assert before + 3600 - 5 <= int(expiry) <= time.time() + 3600 + 5
        assert turn.get("password") == coturn_password(username)
        assert turn.get("expires") == datetime.fromtimestamp(int(expiry), UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        assert turn.get("restricted") == "1"
        assert SECRET not in etree.tostring(reply).decode()

        only_turn = await client.iq("get", f"<services xmlns='{NS}' type='turn'/>", to="localhost")
        assert [s.get("type") for s in only_turn.iter(f"{{{NS}}}service")] == ["turn"]

        creds = await client.iq(
            "get",
            f"<credentials xmlns='{NS}'><service host='turn.example.org' type='turns'/></credentials>",
            to="localhost",
        )
        (service,) = creds.findall(f"{{{NS}}}credentials/{{{NS}}}service")
        assert service.get("port") == "5349"
        assert service.get("password") == coturn_password(service.get("username") or "")

        unknown = await client.iq(
            "get",
            f"<credentials xmlns='{NS}'><service host='other.example.org' type='turn'/></credentials>",
            to="localhost",
        )
        assert error_condition(unknown) == "item-not-found"
        info = await client.iq(
            "get", "<query xmlns='http://jabber.org/protocol/disco#info'/>", to="localhost"
        )
        features = [
            f.get("var") for f in info.iter("{http://jabber.org/protocol/disco#info}feature")
        ]
        assert NS in features


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    with running_coturn(tmp_path_factory.mktemp("coturn"), "real-turn-s3cret") as turn:
        yield turn


@pytest.fixture(scope="module")
def coturn_xmppd(coturn: Coturn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    modules = {
        **DEFAULT_TEST_MODULES,
        "external_services": {
            "services": [
                {"type": "stun", "host": "127.0.0.1", "port": coturn.port},
                {"type": "turn", "host": "127.0.0.1", "port": coturn.port, "secret": coturn.secret},
            ],
        },
    }
    with running_server(tmp_path_factory.mktemp("turnreal"), modules=modules) as srv:
        yield srv


async def test_turn_credentials_are_accepted_by_coturn(
    coturn: Coturn, coturn_xmppd: XmppdServer
) -> None:
    await register_account(coturn_xmppd, "jingler", "pw-jingle")
    async with await XmlClient.login(coturn_xmppd, "jingler@localhost", "pw-jingle") as client:
        reply = await client.iq("get", f"<services xmlns='{NS}' type='turn'/>", to="localhost")
    (turn,) = reply.findall(f"{{{NS}}}services/{{{NS}}}service")
    assert (turn.get("host"), turn.get("port")) == ("127.0.0.1", str(coturn.port))
    username, password = turn.get("username") or "", turn.get("password") or ""
    assert username.endswith(":jingler@localhost") and password
    wrong_password = base64.b64encode(hashlib.sha1(b"guess").digest()).decode()
    expiry, _, user = username.partition(":")
    other_user = f"{expiry}:mallory@localhost"  # someone else's name, this password
    expired = f"{int(time.time()) - 60}:{user}"
    expired_password = base64.b64encode(
        hmac.new(coturn.secret.encode(), expired.encode(), hashlib.sha1).digest()
    ).decode()
    accepted, wrong, forged, late = await asyncio.gather(
        turn_allocates(coturn, username, password),
        turn_allocates(coturn, username, wrong_password),
        turn_allocates(coturn, other_user, password),
        turn_allocates(coturn, expired, expired_password),
    )
    assert accepted[0], accepted[1][-2000:]
    for refused in (wrong, forged, late):
        assert not refused[0], refused[1][-2000:]


def test_the_example_config_documents_the_module(tmp_path: Path) -> None:
    """config/xmppd.toml shows the module commented out; uncommented, it is valid."""
    example = Path(__file__).parents[2] / "config" / "xmppd.toml"
    lines = example.read_text().splitlines()
    start = lines.index("# [modules.external_services]")
    end = lines.index("", start)
    for i in range(start, end):
        if lines[i].startswith(("# [", "#   {", "# ]")) or " = " in lines[i]:
            lines[i] = lines[i].removeprefix("# ")
    path = tmp_path / "xmppd.toml"
    path.write_text("\n".join(lines) + "\n")
    config = load_config(path)
    Server(config).check()
    assert len(config.modules["external_services"]["services"]) == 3
