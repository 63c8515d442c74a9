"""Group chat limits and creation rights: who may create rooms, rooms per user,
unlocked new rooms, message rate and size (XEP-0045 with this service's policy)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.clients import register_account
from tests.support.e2e import PASSWORD
from tests.support.muc import codes, groupchat, join, new_room, next_groupchat, user_in_room
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, running_server
from tests.support.xmlclient import XmlClient, error_condition

CHIEF = "chief"
TALKER = "talker"


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    muc = {
        "create_rooms": [f"{CHIEF}@localhost", f"{TALKER}@localhost"],
        "lock_new_rooms": False,
        "max_rooms_per_user": 1,
        "messages_per_second": 0.01,
        "message_burst": 3,
        "max_message_size": 512,
    }
    modules = {**DEFAULT_TEST_MODULES, "muc": muc}
    with running_server(tmp_path_factory.mktemp("xmppd-muc-limits"), modules=modules) as srv:
        yield srv


async def test_only_listed_accounts_create_rooms_and_unlocked_rooms_open_at_once(
    limited: XmppdServer,
) -> None:
    await register_account(limited, CHIEF, PASSWORD)
    chief = await XmlClient.login(limited, f"{CHIEF}@localhost", PASSWORD, resource="r")
    try:
        other_room = new_room(limited)
        room = new_room(limited)
        joined = await join(chief, room, "chief")
        assert {"110", "201"} <= codes(joined.self_presence)
        # No configuration needed: the room is open.
        client, joined_bob, _ = await user_in_room(limited, room, "bob")
        try:
            assert joined_bob.nicks == {"chief"}
            # bob may not create rooms.
            client.send(f"<presence to='{other_room}/bob'/>")
            err = await client.expect(lambda el: el.get("type") == "error")
            assert error_condition(err) == "not-allowed"
            # chief owns one room already: the limit is one.
            chief.send(f"<presence to='{other_room}/chief'/>")
            err = await chief.expect(lambda el: el.get("type") == "error")
            assert error_condition(err) == "policy-violation"
        finally:
            await client.close()
    finally:
        await chief.close()


async def test_a_flood_is_refused_and_the_others_keep_chatting(limited: XmppdServer) -> None:
    await register_account(limited, TALKER, PASSWORD)
    talker = await XmlClient.login(limited, f"{TALKER}@localhost", PASSWORD, resource="r")
    try:
        room = new_room(limited)
        await join(talker, room, "talker")
        listener, _, _ = await user_in_room(limited, room, "listener")
        try:
            for n in range(6):
                await groupchat(talker, room, f"flood {n}")
            errors = [await talker.expect(lambda el: el.get("type") == "error") for _ in range(3)]
            assert {error_condition(e) for e in errors} == {"resource-constraint"}
            for n in range(3):  # the burst got through, once each
                await next_groupchat(listener, room, f"flood {n}")
            await groupchat(listener, room, "x" * 600)
            err = await listener.expect(lambda el: el.get("type") == "error")
            assert error_condition(err) == "policy-violation"
            await groupchat(listener, room, "still chatting")
            await next_groupchat(talker, room, "still chatting")
        finally:
            await listener.close()
    finally:
        await talker.close()
