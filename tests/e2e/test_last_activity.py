"""XEP-0012 Last Activity end to end: the server's uptime, and when a contact was last
seen (with the status they left), for those allowed to know."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from slixmpp.exceptions import IqError

from tests.support.e2e import (
    check_server_survived,
    new_account,
    online,
    presence,
    subscribe,
    take,
    user_rows,
)
from tests.support.server import XmppdServer, restart, running_server


@pytest.fixture(scope="module", autouse=True)
def _server_survives(server: XmppdServer) -> Iterator[None]:
    yield
    check_server_survived(server)


def process_age(pid: int) -> float:
    """Seconds since ``pid`` started (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        system_uptime = float(f.read().split()[0])
    return system_uptime - start_ticks / os.sysconf("SC_CLK_TCK")


async def test_server_uptime(server: XmppdServer) -> None:
    client = await online(server, await new_account(server, "uptime"))
    try:
        age_before = process_age(server.process.pid)
        result = await client.xmpp.plugin["xep_0012"].get_last_activity(server.domain)
        age_after = process_age(server.process.pid)
    finally:
        await client.stop()
    seconds = result["last_activity"]["seconds"]
    # Counted from when the server started, which is a little after the process did.
    assert age_before - 30 <= seconds <= age_after + 1


async def test_last_seen_of_a_contact(server: XmppdServer) -> None:
    alice = await online(server, await new_account(server, "watcher"))
    bob_jid = await new_account(server, "seen")
    bob = await online(server, bob_jid)
    last = alice.xmpp.plugin["xep_0012"]
    try:
        await subscribe(alice, bob)
        online_now = await last.get_last_activity(bob_jid)
        assert online_now["last_activity"]["seconds"] == 0
        assert not online_now["last_activity"]["status"]

        went_offline = time.monotonic()
        bob.xmpp.send_presence(ptype="unavailable", pstatus="gone fishing")
        await take(alice.presences, presence("unavailable", bob.xmpp.boundjid))
        # Stanzas of one stream are handled in order: once this ping is answered, the
        # unavailable presence has been fully processed.
        await bob.xmpp.plugin["xep_0199"].ping(jid=server.domain, timeout=10)
        await bob.stop()

        offline = await last.get_last_activity(bob_jid)
        elapsed = time.monotonic() - went_offline
        assert 0 <= offline["last_activity"]["seconds"] <= elapsed + 1
        assert offline["last_activity"]["status"] == "gone fishing"
    finally:
        await alice.stop()
        await bob.stop()


async def test_last_activity_is_only_for_subscribers(server: XmppdServer) -> None:
    stranger = await online(server, await new_account(server, "stranger"))
    bob_jid = await new_account(server, "private")
    bob = await online(server, bob_jid)
    last = stranger.xmpp.plugin["xep_0012"]
    try:
        with pytest.raises(IqError) as refused:
            await last.get_last_activity(bob_jid)
        assert refused.value.iq["error"]["condition"] == "forbidden"
        # Being subscribed the other way (Bob sees the stranger) is not enough.
        await subscribe(bob, stranger)
        with pytest.raises(IqError) as still_refused:
            await last.get_last_activity(bob_jid)
        assert still_refused.value.iq["error"]["condition"] == "forbidden"
        # An account that does not exist is not there to ask about.
        with pytest.raises(IqError) as missing:
            await last.get_last_activity(f"never-existed@{server.domain}")
        assert missing.value.iq["error"]["condition"] == "service-unavailable"
        # One may always ask about oneself.
        own = await bob.xmpp.plugin["xep_0012"].get_last_activity(bob_jid)
        assert own["last_activity"]["seconds"] == 0
    finally:
        await stranger.stop()
        await bob.stop()


async def test_everyone_cut_off_at_once_is_seen_going(server: XmppdServer) -> None:
    """Contacts whose connections all drop in the same moment (a network blip): each
    one's unavailable presence reaches the watcher and each one's last seen is
    recorded, however many of their teardowns share a turn and a transaction."""
    watcher = await online(server, await new_account(server, "blipwatch"))
    jids = [await new_account(server, "blip") for _ in range(12)]
    contacts = [await online(server, jid) for jid in jids]
    last = watcher.xmpp.plugin["xep_0012"]
    try:
        for contact in contacts:
            await subscribe(watcher, contact)
        cut = time.monotonic()
        for contact in contacts:  # no </stream:stream>, no unavailable presence
            contact.xmpp.transport.abort()
        for contact in contacts:
            await take(watcher.presences, presence("unavailable", contact.xmpp.boundjid))
        for jid in jids:
            # Recorded after the broadcast (by the same teardown): ask until it is there.
            for _ in range(50):
                try:
                    seen = await last.get_last_activity(jid)
                    break
                except IqError as exc:
                    assert exc.iq["error"]["condition"] == "item-not-found"
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"no last activity recorded for {jid}")
            assert 0 <= seen["last_activity"]["seconds"] <= time.monotonic() - cut + 1
    finally:
        await watcher.stop()
        for contact in contacts:
            await contact.stop()


async def test_a_graceful_stop_records_everyone_last_seen(tmp_path: Path) -> None:
    """Sessions still online when the server stops (SIGTERM) end in its shutdown: each
    one's teardown (last activity) finishes before the modules unload, however slowly
    they are paced (here one per turn)."""
    pacing = "[c2s]\nteardowns_per_turn = 1\n"
    with running_server(tmp_path, extra=pacing) as srv:
        jids = [await new_account(srv, "stopped") for _ in range(30)]
        clients = [await online(srv, jid) for jid in jids]
        try:
            restart(srv)  # SIGTERM, then the same configuration and database again
        finally:
            for client in clients:
                await client.stop()
        for jid in jids:
            rows = await user_rows(srv, jid.split("@")[0], ["mod_last__seen"])
            assert rows == {"mod_last__seen": 1}, jid
