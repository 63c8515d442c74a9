"""The BOSH relay's pure parts: which node a session id names, where the relay
listener binds, and the signature that makes the owner believe the client's address."""

from __future__ import annotations

import time

import pytest

from xmppd.httproutes import HttpClient
from xmppd.transports.boshrelay import BoshRelay, node_of, relay_address, split_address


def test_node_of_sid() -> None:
    assert node_of("AbC-_x.node1") == "node1"
    assert node_of("AbC-_x.host.example-w2") == "host.example-w2"
    assert node_of("AbC-_x") == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ("", 0)),
        ("10.0.0.5", ("10.0.0.5", 0)),
        ("10.0.0.5:5290", ("10.0.0.5", 5290)),
        ("node-a.internal:0", ("node-a.internal", 0)),
        ("[fd00::5]:5290", ("fd00::5", 5290)),
        ("[fd00::5]", ("fd00::5", 0)),
        (":5290", ("", 5290)),
    ],
)
def test_split_address(text: str, expected: tuple[str, int]) -> None:
    assert split_address(text) == expected


async def test_relay_address_defaults_to_the_http_listener() -> None:
    assert await relay_address("", "10.1.2.3") == ("10.1.2.3", 0)
    assert await relay_address("10.9.9.9:7000", "10.1.2.3") == ("10.9.9.9", 7000)
    assert await relay_address(":7000", "10.1.2.3") == ("10.1.2.3", 7000)
    host, port = await relay_address("", "0.0.0.0")
    assert host not in ("", "0.0.0.0") and port == 0


def test_signature_binds_nodes_client_and_body() -> None:
    key = b"k" * 32
    a = BoshRelay("a", key, is_live=_yes, address_of=_none, hold_timeout=5, max_body=1)
    client = HttpClient("198.51.100.7", True, "")
    stamp = f"{time.time():.3f}"
    good = a._sign("b", "a", stamp, client, b"<body/>")
    assert good == a._sign("b", "a", stamp, client, b"<body/>")
    assert good != a._sign("b", "c", stamp, client, b"<body/>")  # another receiver
    assert good != a._sign("b", "a", stamp, HttpClient("198.51.100.8", True, ""), b"<body/>")
    assert good != a._sign("b", "a", stamp, HttpClient("198.51.100.7", False, ""), b"<body/>")
    assert good != a._sign("b", "a", stamp, client, b"<body rid='2'/>")
    other = BoshRelay("a", b"x" * 32, is_live=_yes, address_of=_none, hold_timeout=5, max_body=1)
    assert good != other._sign("b", "a", stamp, client, b"<body/>")


async def _none(node: str) -> str | None:
    return None


async def _yes(node: str) -> bool:
    return True
