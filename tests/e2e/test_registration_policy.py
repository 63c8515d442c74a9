"""In-band registration can be limited to networks; outside them it is neither offered
nor accepted."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.rawstream import RawClient, stanza_error
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, running_server


@pytest.fixture(scope="module")
def lan_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    modules = dict(DEFAULT_TEST_MODULES)
    modules["register"] = {"allow_registration": True, "allowed_networks": ["10.0.0.0/8"]}
    with running_server(tmp_path_factory.mktemp("reg-policy"), modules=modules) as srv:
        yield srv


async def test_registration_from_outside_the_allowed_networks_is_refused(
    lan_only: XmppdServer,
) -> None:
    client = await RawClient(lan_only).connect()
    try:
        await client.starttls()
        features = await client.open_stream()
        assert b"http://jabber.org/features/iq-register" not in features
        client.send(
            "<iq type='set' id='r1'><query xmlns='jabber:iq:register'>"
            "<username>mallory</username><password>secret-pw</password></query></iq>"
        )
        reply = await client.read_until(b"</iq>")
    finally:
        await client.close()
    assert stanza_error(reply) == "not-allowed"
    result = lan_only.cli("users")
    assert "mallory" not in result.stdout
