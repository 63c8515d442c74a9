"""Group chat with third-party clients: slixmpp (xep_0045, xep_0249) and aioxmpp (its
MUC client) create, join and chat in a room on the real server."""

from __future__ import annotations

import asyncio

import aioxmpp
import aioxmpp.muc
from slixmpp import JID as SlixJID

from tests.support.aio import Aio
from tests.support.e2e import PASSWORD, new_account, online, take
from tests.support.muc import new_room
from tests.support.server import XmppdServer

PLUGINS = ("xep_0030", "xep_0045", "xep_0004")


async def test_slixmpp_and_aioxmpp_chat_in_a_room(server: XmppdServer) -> None:
    room = new_room(server, "clients")
    alice_jid = await new_account(server, "alice")
    bob_jid = await new_account(server, "bob")
    alice = await online(server, alice_jid, plugins=PLUGINS)
    try:
        muc = alice.xmpp.plugin["xep_0045"]
        own, _subject, _occupants, _history = await muc.join_muc_wait(
            SlixJID(room), "alice", maxstanzas=0, timeout=10
        )
        assert "201" in {str(c) for c in own["muc"]["status_codes"]}
        form = await muc.get_room_config(SlixJID(room))
        form["type"] = "submit"
        await muc.set_room_config(SlixJID(room), form)
        async with Aio(server, bob_jid, PASSWORD) as bob:
            client = bob.client.summon(aioxmpp.MUCClient)
            aio_room, joined = client.join(aioxmpp.JID.fromstr(room), "bob")
            async with asyncio.timeout(10):
                await joined
            assert {m.nick for m in aio_room.members} == {"alice", "bob"}
            got: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

            def on_message(
                message: aioxmpp.Message, member: object, source: object, **_: object
            ) -> None:
                got.put_nowait((str(message.from_), message.body.any()))

            aio_room.on_message.connect(on_message)
            alice.xmpp.send_message(mto=SlixJID(room), mbody="hi bob", mtype="groupchat")
            async with asyncio.timeout(10):
                sender, text = await got.get()
            assert (sender, text) == (f"{room}/alice", "hi bob")
            reply = aioxmpp.Message(
                type_=aioxmpp.MessageType.GROUPCHAT, to=aioxmpp.JID.fromstr(room)
            )
            reply.body[None] = "hi alice"
            await bob.client.send(reply)
            msg = await take(alice.messages, lambda m: m["body"] == "hi alice")
            assert str(msg["from"]) == f"{room}/bob"
            assert msg["type"] == "groupchat"
    finally:
        await alice.stop()
