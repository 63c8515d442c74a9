"""Offline messages expire (mod_offline ``expire_after``): a message nobody collected in
time is deleted, the expiry is logged and counted, and the recipient's next login
brings nothing (delivery within the default 30 days: tests/e2e/test_offline.py)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.e2e import new_account, online, until_equal
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, running_server

MODULES = {**DEFAULT_TEST_MODULES, "offline": {"expire_after": "1s", "expiry_interval": "1s"}}
EXPIRED = re.compile(
    r"INFO xmppd\.mod\.offline: offline messages expired: (\d+) for (\d+) accounts"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    with running_server(
        tmp_path_factory.mktemp("xmppd-offline-expiry"), modules=MODULES, http=True
    ) as srv:
        yield srv


async def metric(server: XmppdServer, name: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{server.http_url}/metrics") as r:
        text = await r.text()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and s.labels.get("host") == server.domain
    )


async def test_an_uncollected_message_expires_logged_and_counted(server: XmppdServer) -> None:
    sender_jid = await new_account(server, "sender")
    away_jid = await new_account(server, "away")
    expired_before = await metric(server, "xmppd_mod_offline_expired_total")
    sender = await online(server, sender_jid)
    try:
        sender.xmpp.send_message(mto=away_jid, mbody="too late", mtype="chat")
        await sender.xmpp.plugin["xep_0199"].ping(server.domain, timeout=10)
    finally:
        await sender.stop()

    async def expired() -> float:
        return await metric(server, "xmppd_mod_offline_expired_total") - expired_before

    await until_equal(expired, 1.0)
    assert await metric(server, "xmppd_mod_offline_messages") == 0
    counts = [(int(a), int(b)) for a, b in EXPIRED.findall(server.log_text())]
    assert (1, 1) in counts

    away = await online(server, away_jid)
    try:
        await away.xmpp.plugin["xep_0199"].ping(server.domain, timeout=10)
        assert away.messages.empty()  # nothing was waiting any more
    finally:
        await away.stop()
