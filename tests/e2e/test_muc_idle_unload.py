"""Persistent rooms nobody is in leave memory after ``unload_idle_after`` (anyone can
load a stored room by sending it a stanza, and a loaded room stayed loaded for ever);
the next stanza loads it again from storage, with its configuration, subject,
affiliations and archive, so users see the same room."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.e2e.test_muc import closing, login
from tests.support.muc import MUC_ADMIN, create_room, groupchat, item, join, next_groupchat
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, running_server
from tests.support.xmlclient import tag

DISCO_INFO = "http://jabber.org/protocol/disco#info"


@pytest.fixture(scope="module")
def unloading(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    modules = {**DEFAULT_TEST_MODULES, "muc": {"unload_idle_after": "1s"}}
    with running_server(tmp_path_factory.mktemp("mucidle"), modules=modules) as srv:
        yield srv


async def test_an_idle_persistent_room_is_unloaded_and_comes_back_whole(
    unloading: XmppdServer,
) -> None:
    fields = {"muc#roomconfig_persistentroom": "1", "muc#roomconfig_roomname": "Kept"}
    owner, room, _ = await create_room(unloading, fields=fields)
    member, member_jid = await login(unloading, "member")
    async with closing(owner, member):
        owner.send(f"<message to='{room}' type='groupchat'><subject>still here</subject></message>")
        await owner.expect(lambda el: el.findtext(tag("subject")) == "still here")
        await groupchat(owner, room, "kept in the archive")
        await next_groupchat(owner, room, "kept in the archive")
        made = await owner.iq(
            "set",
            f"<query xmlns='{MUC_ADMIN}'><item affiliation='member' jid='{member_jid}'/></query>",
            to=room,
        )
        assert made.get("type") == "result"
        owner.send(f"<presence to='{room}/owner' type='unavailable'/>")
        await owner.expect(lambda el: el.get("from") == f"{room}/owner")
        for _ in range(100):
            if "unloaded 1 idle rooms" in unloading.log_text():
                break
            await asyncio.sleep(0.1)
        assert "unloaded 1 idle rooms" in unloading.log_text()
        # Loaded again by a disco#info query, then entered: nothing was lost.
        info = await member.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=room)
        identity = info.find(f".//{{{DISCO_INFO}}}identity")
        assert identity is not None and identity.get("name") == "Kept"
        joined = await join(member, room, "member", history="maxstanzas='5'")
        assert joined.subject is not None
        assert joined.subject.findtext(tag("subject")) == "still here"
        assert [m.findtext(tag("body")) for m in joined.history] == ["kept in the archive"]
        assert item(joined.self_presence).get("affiliation") == "member"
