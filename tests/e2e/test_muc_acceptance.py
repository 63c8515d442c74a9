"""Issue #11 acceptance with third-party clients, on real sockets, SQLite and PostgreSQL.

Three clients, two libraries: alice and carol use slixmpp (xep_0045, xep_0249,
xep_0004, xep_0313), bob uses aioxmpp's MUC client. Alice creates a members-only,
persistent room through the configuration form, invites bob (mediated) and carol
(XEP-0249 direct); everyone chats and receives every message exactly once with the
sender's nick and occupant id; carol joins late and gets the history she asks for;
private messages follow the room's policy; carol goes offline, misses messages, and
catches up from the room's archive (MAM paged with RSM) with no gap and no duplicate.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import aioxmpp
import aioxmpp.im
import aioxmpp.muc
import aioxmpp.muc.xso
import aioxmpp.xso
from slixmpp import JID as SlixJID
from slixmpp.exceptions import PresenceError

from tests.support.aio import Aio
from tests.support.clients import Slix
from tests.support.e2e import PASSWORD, new_account, online, take
from tests.support.muc import new_room
from tests.support.server import XmppdServer

PLUGINS = ("xep_0030", "xep_0045", "xep_0249", "xep_0004", "xep_0059", "xep_0313", "xep_0359")
OCCUPANT_ID = "urn:xmpp:occupant-id:0"
SID = "urn:xmpp:sid:0"


class OccupantId(aioxmpp.xso.XSO):  # type: ignore[misc]
    """XEP-0421 ``<occupant-id/>``, which aioxmpp 0.13 does not know: registered on
    ``aioxmpp.Message`` so bob can read it (aioxmpp drops unknown children)."""

    TAG = (OCCUPANT_ID, "occupant-id")
    id = aioxmpp.xso.Attr("id")


aioxmpp.Message.xep0421_occupant_id = aioxmpp.xso.Child([OccupantId])


def slix_occupant_id(stanza: Any) -> str | None:
    found = stanza.xml.find(f"{{{OCCUPANT_ID}}}occupant-id")
    return None if found is None else str(found.get("id"))


def slix_stanza_id(stanza: Any, room: str) -> str | None:
    for found in stanza.xml.iter(f"{{{SID}}}stanza-id"):
        if found.get("by") == room:
            return str(found.get("id"))
    return None


class AioRoom:
    """bob's side: every groupchat message aioxmpp hands the room, as (nick, occupant
    id, body)."""

    def __init__(self, room: aioxmpp.muc.Room) -> None:
        self.room = room
        self.got: asyncio.Queue[tuple[str, str | None, str]] = asyncio.Queue()
        room.on_message.connect(self._on_message)

    def _on_message(self, message: aioxmpp.Message, member: Any, source: Any, **_: Any) -> None:
        if not message.body:
            return
        oid = message.xep0421_occupant_id
        self.got.put_nowait(
            (message.from_.resource or "", None if oid is None else oid.id, message.body.any())
        )


async def test_three_clients_members_only_room(server: XmppdServer) -> None:
    room = new_room(server, "acceptance")
    alice_jid, bob_jid, carol_jid = (
        await new_account(server, "alice"),
        await new_account(server, "bob"),
        await new_account(server, "carol"),
    )
    alice = await online(server, alice_jid, plugins=PLUGINS)
    carol = await online(server, carol_jid, plugins=PLUGINS)
    try:
        # Alice creates a reserved room and configures it through the form (§10.1.3).
        muc = alice.xmpp.plugin["xep_0045"]
        own, _subject, _occupants, _history = await muc.join_muc_wait(
            SlixJID(room), "alice", maxstanzas=0, timeout=10
        )
        assert {"110", "201"} <= {str(c) for c in own["muc"]["status_codes"]}
        form = await muc.get_room_config(SlixJID(room))
        assert "muc#roomconfig_membersonly" in {f["var"] for f in form["fields"]}
        form["type"] = "submit"
        form.set_values(  # type: ignore[no-untyped-call]
            {
                "muc#roomconfig_roomname": "Acceptance",
                "muc#roomconfig_persistentroom": True,
                "muc#roomconfig_membersonly": True,
                "muc#roomconfig_allowpm": "moderators",
                "muc#roomconfig_whois": "anyone",
            }
        )
        await muc.set_room_config(SlixJID(room), form)
        info = await alice.xmpp.plugin["xep_0030"].get_info(jid=SlixJID(room), timeout=10)
        features = set(info["disco_info"]["features"])
        assert {"muc_membersonly", "muc_persistent", "muc_nonanonymous"} <= features

        # Carol is not a member yet: a members-only room refuses her (§7.2.7).
        try:
            await carol.xmpp.plugin["xep_0045"].join_muc_wait(
                SlixJID(room), "carol", maxstanzas=0, timeout=10
            )
            raise AssertionError("a non-member entered a members-only room")
        except PresenceError as refused:
            assert refused.presence["error"]["condition"] == "registration-required"

        async with Aio(server, bob_jid, PASSWORD) as bob_client:
            # Mediated invitation (§7.8.1) from slixmpp, received by aioxmpp.
            client = bob_client.client.summon(aioxmpp.MUCClient)
            invitations: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

            def on_invitation(
                stanza: Any, muc_address: Any, inviter: Any, mode: Any, **_: Any
            ) -> None:
                invitations.put_nowait((muc_address, inviter, mode))

            client.on_muc_invitation.connect(on_invitation)
            muc.invite(SlixJID(room), SlixJID(bob_jid), "join us")
            async with asyncio.timeout(10):
                address, inviter, mode = await invitations.get()
            assert str(address) == room
            assert mode == aioxmpp.im.InviteMode.MEDIATED
            assert str(inviter.bare()) == alice_jid
            aio_room, joined = client.join(aioxmpp.JID.fromstr(room), "bob")
            async with asyncio.timeout(10):
                await joined
            bob = AioRoom(aio_room)

            # Direct invitation (XEP-0249) from slixmpp: the room admits carol.
            direct: asyncio.Queue[Any] = asyncio.Queue()
            carol.xmpp.add_event_handler("groupchat_direct_invite", direct.put_nowait)
            alice.xmpp.plugin["xep_0249"].send_invitation(
                SlixJID(carol_jid), SlixJID(room), reason="you too"
            )
            async with asyncio.timeout(10):
                invite = await direct.get()
            assert str(invite["groupchat_invite"]["jid"]) == room

            # Before carol enters: three messages she will ask two of as history.
            alice_room, carol_room = SlixRoom(alice, room), SlixRoom(carol, room)
            alice.xmpp.send_message(mto=SlixJID(room), mbody="early 1", mtype="groupchat")
            await collect(bob.got.get, [("alice", "early 1")])
            reply = aioxmpp.Message(
                type_=aioxmpp.MessageType.GROUPCHAT, to=aioxmpp.JID.fromstr(room)
            )
            reply.body[None] = "early 2"
            await bob_client.client.send(reply)
            alice.xmpp.send_message(mto=SlixJID(room), mbody="early 3", mtype="groupchat")
            early = [("alice", "early 1"), ("bob", "early 2"), ("alice", "early 3")]
            await collect(alice_room.get, early)
            await collect(bob.got.get, early[1:])

            # The late joiner gets the history she asked for, with the senders' nicks.
            cmuc = carol.xmpp.plugin["xep_0045"]
            own, _subject, occupants, history = await cmuc.join_muc_wait(
                SlixJID(room), "carol", maxstanzas=2, timeout=10
            )
            assert {str(c) for c in own["muc"]["status_codes"]} >= {"110", "100"}
            assert [(str(m["from"]), m["body"]) for m in history] == [
                (f"{room}/bob", "early 2"),
                (f"{room}/alice", "early 3"),
            ]
            assert all(m.xml.find("{urn:xmpp:delay}delay") is not None for m in history)
            ids = {str(p["from"].resource): slix_occupant_id(p) for p in [*occupants, own]}
            assert set(ids) == {"alice", "bob", "carol"}
            assert len(set(ids.values())) == 3 and None not in ids.values()

            # Everyone talks; each receives each message exactly once, with the sender's
            # nick and occupant id. The room keeps each sender's order, so once the last
            # message of every sender has arrived, everything has.
            sent: list[tuple[str, str]] = []
            for round_ in range(3):
                body = f"alice {round_}"
                alice.xmpp.send_message(mto=SlixJID(room), mbody=body, mtype="groupchat")
                sent.append(("alice", body))
                body = f"bob {round_}"
                msg = aioxmpp.Message(
                    type_=aioxmpp.MessageType.GROUPCHAT, to=aioxmpp.JID.fromstr(room)
                )
                msg.body[None] = body
                await bob_client.client.send(msg)
                sent.append(("bob", body))
                body = f"carol {round_}"
                carol.xmpp.send_message(mto=SlixJID(room), mbody=body, mtype="groupchat")
                sent.append(("carol", body))
            expected = Counter((nick, ids[nick], body) for nick, body in sent)
            gets = {"alice": alice_room.get, "bob": bob.got.get, "carol": carol_room.get}
            seen = {name: await collect(get, sent) for name, get in gets.items()}
            alice.xmpp.send_message(mto=SlixJID(room), mbody="fence", mtype="groupchat")
            for name, get in gets.items():
                seen[name] += await until_fence(get, "fence")
                assert Counter(seen[name]) == expected, name

            # Private messages follow the policy "moderators" (§7.5): the owner may
            # send one, a participant may not.
            alice.xmpp.send_message(mto=SlixJID(f"{room}/bob"), mbody="psst", mtype="chat")
            pm = await bob_client.next_message(lambda m: m.body and m.body.any() == "psst")
            assert str(pm.from_) == f"{room}/alice"
            carol.xmpp.send_message(mto=SlixJID(f"{room}/bob"), mbody="hey", mtype="chat")
            error = await take(
                carol.messages,
                lambda m: m["type"] == "error" and str(m["from"]) == f"{room}/bob",
            )
            assert error["error"]["condition"] == "not-allowed"

            # Carol goes offline after the last message she saw ...
            last = carol_room.stanza_ids["fence"]
            assert last is not None
            await carol.stop()
            missed: list[tuple[str, str]] = []
            for n in range(5):
                alice.xmpp.send_message(mto=SlixJID(room), mbody=f"missed {n}", mtype="groupchat")
                missed.append(("alice", f"missed {n}"))
                msg = aioxmpp.Message(
                    type_=aioxmpp.MessageType.GROUPCHAT, to=aioxmpp.JID.fromstr(room)
                )
                msg.body[None] = f"missed by carol {n}"
                await bob_client.client.send(msg)
                missed.append(("bob", f"missed by carol {n}"))
            # The room's order (alice's and bob's messages interleave as they came).
            in_order = [(nick, body) for nick, _, body in await collect(alice_room.get, missed)]
            assert sorted(in_order) == sorted(missed)
            await collect(bob.got.get, missed)

            # ... and catches up from the room's archive, two per page, after that id.
            carol = await online(server, carol_jid, plugins=PLUGINS)
            mam = carol.xmpp.plugin["xep_0313"]
            caught: list[tuple[str, str]] = []
            async for result in mam.iterate(jid=SlixJID(room), rsm={"after": last, "max": 2}):
                forwarded = result["mam_result"]["forwarded"]["stanza"]
                caught.append((forwarded["from"].resource, forwarded["body"]))
            assert caught == in_order
    finally:
        await alice.stop()
        await carol.stop()


Seen = tuple[str, str | None, str]


class SlixRoom:
    """A slixmpp client's live groupchat messages in ``room`` (history, with its
    ``<delay/>``, is not) as (nick, occupant id, body), and the room's stanza id of
    each body."""

    def __init__(self, client: Slix, room: str) -> None:
        self.client, self.room = client, room
        self.stanza_ids: dict[str, str | None] = {}

    async def get(self) -> Seen:
        while True:
            msg = await self.client.messages.get()
            live = msg.xml.find("{urn:xmpp:delay}delay") is None  # not history
            if msg["type"] == "groupchat" and msg["from"].bare == self.room:
                if not live or not msg["body"]:
                    continue
                self.stanza_ids[msg["body"]] = slix_stanza_id(msg, self.room)
                return (msg["from"].resource, slix_occupant_id(msg), msg["body"])


async def collect(get: Any, sent: list[tuple[str, str]]) -> list[Seen]:
    """Messages from ``get`` until the last message of each sender in ``sent`` came."""
    pending = set({nick: body for nick, body in sent}.items())
    seen: list[Seen] = []
    async with asyncio.timeout(10):
        while pending:
            seen.append(await get())
            pending.discard((seen[-1][0], seen[-1][2]))
    return seen


async def until_fence(get: Any, fence: str) -> list[Seen]:
    """Messages from ``get`` before ``fence``. The room handles stanzas one at a time
    and each session receives in order, so a duplicate of an earlier message would
    arrive before the fence: what has not arrived by then was sent once."""
    seen: list[Seen] = []
    async with asyncio.timeout(10):
        while True:
            got = await get()
            if got[2] == fence:
                return seen
            seen.append(got)
