"""Persistent rooms survive a restart of the server (configuration, subject,
affiliations); temporary rooms do not. Stop the server, start it again on the same
database, and look."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.clients import register_account
from tests.support.e2e import PASSWORD
from tests.support.muc import (
    DISCO_INFO,
    JoinRefused,
    admin_set,
    codes,
    create_room,
    item,
    join,
    new_room,
)
from tests.support.server import running_server
from tests.support.xmlclient import XmlClient, error_condition, tag


async def test_persistent_room_survives_restart_and_temporary_does_not(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    tmp: Path = tmp_path_factory.mktemp("xmppd-muc-restart")
    with running_server(tmp) as server:
        await register_account(server, "member", PASSWORD)
        await register_account(server, "stranger", PASSWORD)
        owner, room, owner_jid = await create_room(
            server,
            fields={
                "muc#roomconfig_persistentroom": "1",
                "muc#roomconfig_membersonly": "1",
                "muc#roomconfig_roomname": "Keep",
            },
        )
        try:
            await admin_set(
                owner, room, f"<item affiliation='member' jid='member@{server.domain}'/>"
            )
            owner.send(f"<message to='{room}' type='groupchat'><subject>Kept</subject></message>")
            await owner.expect(lambda el: el.findtext(tag("subject")) == "Kept")
            temporary = new_room(server)
            await join(owner, temporary, "owner")
        except BaseException:
            await owner.close()
            raise
    # The server stopped with the owner inside: it heard that the rooms closed (332).
    await owner.wait_closed()
    shut = owner.pending(lambda el: el.get("type") == "unavailable" and "332" in codes(el))
    assert {el.get("from", "").split("/")[0] for el in shut} == {room, temporary}
    await owner.close()
    with running_server(tmp) as server:
        member = await XmlClient.login(server, f"member@{server.domain}", PASSWORD, resource="r")
        stranger = await XmlClient.login(
            server, f"stranger@{server.domain}", PASSWORD, resource="r"
        )
        owner_name = owner_jid.split("@")[0]
        boss = await XmlClient.login(server, owner_jid, PASSWORD, resource="r")
        try:
            info = await member.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=room)
            assert info.get("type") == "result"
            features = {f.get("var") for f in info.iter(f"{{{DISCO_INFO}}}feature")}
            assert {"muc_persistent", "muc_membersonly"} <= features
            joined = await join(member, room, "member")
            assert item(joined.self_presence).get("affiliation") == "member"
            assert "201" not in codes(joined.self_presence)
            assert joined.subject is not None
            assert joined.subject.findtext(tag("subject")) == "Kept"
            try:
                await join(stranger, room, "stranger")
                raise AssertionError("a non-member entered a members-only room")
            except JoinRefused as exc:
                assert exc.condition == "registration-required"
            owner_joined = await join(boss, room, owner_name)
            assert item(owner_joined.self_presence).get("affiliation") == "owner"
            gone = await stranger.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=temporary)
            assert error_condition(gone) == "item-not-found"
        finally:
            for client in (member, stranger, boss):
                await client.close()
