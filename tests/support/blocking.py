"""Shared steps of the blocking (XEP-0191), private storage (XEP-0049) and vCard
(XEP-0054/0153) end-to-end tests: the server they run against, and barriers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.clients import Slix
from tests.support.e2e import ALL_PLUGINS, PASSWORD, online
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, running_server
from tests.support.xmlclient import XmlClient

MODULES: dict[str, dict[str, Any]] = {
    **DEFAULT_TEST_MODULES,
    "blocklist": {},
    "private": {},
    "vcard": {},
}
PLUGINS = (*ALL_PLUGINS, "xep_0191", "xep_0054")
"""slixmpp plugins of the test clients: the defaults plus blocking and vcard-temp (not
XEP-0153, so that what the clients' presence carries is what the server added)."""

BLOCKING = "urn:xmpp:blocking"
BLOCKING_ERRORS = "urn:xmpp:blocking:errors"
CLIENT = "jabber:client"


def storage_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[XmppdServer]:
    """Body of a module-scoped fixture parametrized on the storage backend."""
    tmp = tmp_path_factory.mktemp(f"xmppd-{request.param}")
    with running_server(tmp, backend=request.param, modules=MODULES) as srv:
        yield srv


def assert_no_crash(server: XmppdServer) -> None:
    """The server still runs and logged no traceback (a hook handler that raises is
    logged and skipped, which a test would not always notice otherwise)."""
    assert server.process.poll() is None, "xmppd exited"
    log = server.log_text()
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]


async def client(server: XmppdServer, jid: str, **kwargs: Any) -> Slix:
    """A slixmpp client, online (roster fetched, initial presence processed)."""
    return await online(server, jid, plugins=PLUGINS, **kwargs)


async def roundtrip(client: Slix) -> None:
    """Once this returns, everything the server wrote to ``client`` before has arrived.

    The server answers a ping after everything it wrote to the stream before, and
    slixmpp handles what it receives in order.
    """
    await client.xmpp.plugin["xep_0199"].send_ping(client.server.domain, timeout=10)


async def raw_roundtrip(client: XmlClient) -> None:
    """:func:`roundtrip` for a raw client."""
    reply = await client.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to=client.domain)
    assert reply.get("type") == "result"


async def raw_login(server: XmppdServer, jid: str, resource: str | None = None) -> XmlClient:
    return await XmlClient.login(server, jid, PASSWORD, resource=resource)


def blocked_condition(stanza: Any) -> bool:
    """The error of a slixmpp stanza carries XEP-0191's ``<blocked/>`` condition."""
    xml = stanza.xml if hasattr(stanza, "xml") else stanza
    return xml.find(f"{{{CLIENT}}}error/{{{BLOCKING_ERRORS}}}blocked") is not None
