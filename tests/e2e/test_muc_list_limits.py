"""A room's lists are bounded (``max_affiliations``): anyone may register a nickname
in an open room, which also makes them a member, so without a limit any server could
grow any room's lists, kept in memory and in storage, without end. Past the limit a
registration, or an owner's addition to the member list, is refused with
``resource-constraint``; what is listed already keeps working."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.test_muc import closing, login
from tests.support.muc import MUC_ADMIN, create_room
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, running_server
from tests.support.xmlclient import error_condition

REGISTER = "jabber:iq:register"
DATA = "jabber:x:data"
MUC_REGISTER = "http://jabber.org/protocol/muc#register"
LIMIT = 10


@pytest.fixture(scope="module")
def small_rooms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    modules = {**DEFAULT_TEST_MODULES, "muc": {"max_affiliations": LIMIT}}
    with running_server(tmp_path_factory.mktemp("mucl"), modules=modules) as srv:
        yield srv


def _submit(nick: str) -> str:
    return (
        f"<query xmlns='{REGISTER}'><x xmlns='{DATA}' type='submit'>"
        f"<field var='FORM_TYPE'><value>{MUC_REGISTER}</value></field>"
        f"<field var='muc#register_roomnick'><value>{nick}</value></field>"
        "</x></query>"
    )


async def test_registrations_stop_at_the_room_limit(small_rooms: XmppdServer) -> None:
    owner, room, _ = await create_room(small_rooms)  # the owner: one listed account
    async with closing(owner):
        for i in range(LIMIT - 1):
            client, _ = await login(small_rooms, f"reg{i}")
            async with closing(client):
                reply = await client.iq("set", _submit(f"nick{i}"), to=room)
                assert reply.get("type") == "result", i
        late, _ = await login(small_rooms, "late")
        async with closing(late):
            reply = await late.iq("set", _submit("late"), to=room)
            assert error_condition(reply) == "resource-constraint"
        # The owner cannot list one more either; changing a listed account still works.
        more = await owner.iq(
            "set",
            f"<query xmlns='{MUC_ADMIN}'><item affiliation='member' jid='x@elsewhere.example'/>"
            "</query>",
            to=room,
        )
        assert error_condition(more) == "resource-constraint"
        listed = await owner.iq(
            "get", f"<query xmlns='{MUC_ADMIN}'><item affiliation='member'/></query>", to=room
        )
        members = listed.findall(f".//{{{MUC_ADMIN}}}item")
        assert len(members) == LIMIT - 1
        demote = await owner.iq(
            "set",
            f"<query xmlns='{MUC_ADMIN}'><item affiliation='none' jid='{members[0].get('jid')}'/>"
            "</query>",
            to=room,
        )
        assert demote.get("type") == "result"
