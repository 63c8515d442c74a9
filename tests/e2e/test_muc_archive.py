"""XEP-0313 on rooms, on real sockets: persistent rooms archive their groupchat
messages, every message carries the room's ``<stanza-id/>``, the archive is queried on
the room JID with RSM paging and the XEP's filters, members-only rooms keep theirs for
members, archiving can be turned off, and history on join comes from the archive (so it
survives a restart)."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from tests.e2e.test_muc import closing, login
from tests.support.clients import register_account
from tests.support.e2e import PASSWORD
from tests.support.muc import (
    DATA,
    DISCO_INFO,
    body,
    codes,
    create_room,
    groupchat,
    join,
    next_groupchat,
    submit_config,
    user_in_room,
)
from tests.support.server import XmppdServer, running_server
from tests.support.xmlclient import Element, XmlClient, error_condition, tag

MAM = "urn:xmpp:mam:2"
RSM = "http://jabber.org/protocol/rsm"
SID = "urn:xmpp:sid:0"
FORWARD = "urn:xmpp:forward:0"
ARCHIVED = {"muc#roomconfig_persistentroom": "1"}


def stanza_id(stanza: Element, by: str) -> str | None:
    for el in stanza.iter(f"{{{SID}}}stanza-id"):
        if el.get("by") == by:
            return el.get("id")
    return None


async def mam_query(
    client: XmlClient,
    room: str,
    *,
    form: dict[str, str] | None = None,
    rsm: str = "",
    queryid: str = "q",
    flip: bool = False,
) -> tuple[Element, list[Element]]:
    """Query the room's archive; the IQ result and the forwarded messages, in order."""
    fields = ""
    if form:
        fields = f"<field var='FORM_TYPE' type='hidden'><value>{MAM}</value></field>" + "".join(
            f"<field var='{var}'><value>{value}</value></field>" for var, value in form.items()
        )
    x = f"<x xmlns='{DATA}' type='submit'>{fields}</x>" if fields else ""
    set_ = f"<set xmlns='{RSM}'>{rsm}</set>" if rsm else ""
    flip_page = "<flip-page/>" if flip else ""
    reply = await client.iq(
        "set", f"<query xmlns='{MAM}' queryid='{queryid}'>{x}{set_}{flip_page}</query>", to=room
    )

    def is_result(el: Element) -> bool:
        res = el.find(f"{{{MAM}}}result")
        return el.tag == tag("message") and res is not None and res.get("queryid") == queryid

    results = [await client.expect(is_result) for _ in client.pending(is_result)]
    return reply, results


def forwarded_body(result: Element) -> str | None:
    return result.findtext(
        f"{{{MAM}}}result/{{{FORWARD}}}forwarded/{{jabber:client}}message/{{jabber:client}}body"
    )


def rsm(reply: Element, name: str) -> str | None:
    return reply.findtext(f"{{{MAM}}}fin/{{{RSM}}}set/{{{RSM}}}{name}")


async def test_room_archive_pages_and_filters(server: XmppdServer) -> None:
    owner, room, _ = await create_room(server, fields=ARCHIVED)
    bob, joined, _ = await user_in_room(server, room, "bob")
    async with closing(owner, bob):
        assert "170" in codes(joined.self_presence)  # §7.2.13: the room is archived
        info = await bob.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=room)
        features = {f.get("var") for f in info.iter(f"{{{DISCO_INFO}}}feature")}
        assert {MAM, SID} <= features
        ids: list[str] = []
        for n in range(5):
            # A client's own stanza-id "by the room" is a forgery: it is replaced.
            bob.send(
                f"<message to='{room}' type='groupchat'><body>m{n}</body>"
                f"<stanza-id xmlns='{SID}' by='{room}' id='forged'/></message>"
            )
            got = await next_groupchat(bob, room, f"m{n}")
            seen = await next_groupchat(owner, room, f"m{n}")
            sid = stanza_id(got, room)
            assert sid is not None and sid != "forged" and stanza_id(seen, room) == sid
            assert len([e for e in got.iter(f"{{{SID}}}stanza-id")]) == 1
            ids.append(sid)
        assert ids == sorted(ids, key=int)
        reply, results = await mam_query(bob, room)
        assert reply.get("type") == "result", etree.tostring(reply)
        assert [forwarded_body(r) for r in results] == [f"m{n}" for n in range(5)]
        assert [r.find(f"{{{MAM}}}result").get("id") for r in results] == ids  # type: ignore[union-attr]
        first = results[0]
        assert first.get("from") == room
        inner = first.find(f".//{{{FORWARD}}}forwarded/{{jabber:client}}message")
        assert inner is not None and inner.get("from") == f"{room}/bob"
        assert first.find(f".//{{{FORWARD}}}forwarded/{{urn:xmpp:delay}}delay") is not None
        fin = reply.find(f"{{{MAM}}}fin")
        assert fin is not None and fin.get("complete") == "true"
        assert rsm(reply, "count") == "5"
        # RSM: pages of two, forward with <after/>.
        reply, page1 = await mam_query(bob, room, rsm="<max>2</max>", queryid="p1")
        assert [forwarded_body(r) for r in page1] == ["m0", "m1"]
        assert reply.find(f"{{{MAM}}}fin").get("complete") == "false"  # type: ignore[union-attr]
        assert rsm(reply, "last") == ids[1]
        reply, page2 = await mam_query(
            bob, room, rsm=f"<max>2</max><after>{ids[1]}</after>", queryid="p2"
        )
        assert [forwarded_body(r) for r in page2] == ["m2", "m3"]
        # The last page (<before/> empty), then backwards from it.
        reply, last = await mam_query(bob, room, rsm="<max>2</max><before/>", queryid="p3")
        assert [forwarded_body(r) for r in last] == ["m3", "m4"]
        first_index = reply.find(f"{{{MAM}}}fin/{{{RSM}}}set/{{{RSM}}}first")
        assert first_index is not None and first_index.get("index") == "3"
        reply, earlier = await mam_query(
            bob, room, rsm=f"<max>2</max><before>{ids[3]}</before>", queryid="p4"
        )
        assert [forwarded_body(r) for r in earlier] == ["m1", "m2"]
        reply, flipped = await mam_query(
            bob, room, rsm="<max>2</max><before/>", queryid="p5", flip=True
        )
        assert [forwarded_body(r) for r in flipped] == ["m4", "m3"]
        # Filters: after-id / before-id, start / end.
        _, between = await mam_query(
            bob, room, form={"after-id": ids[0], "before-id": ids[3]}, queryid="f1"
        )
        assert [forwarded_body(r) for r in between] == ["m1", "m2"]
        stamps = [
            r.find(".//{urn:xmpp:delay}delay").get("stamp")  # type: ignore[union-attr]
            for r in results
        ]
        _, timed = await mam_query(
            bob, room, form={"start": stamps[2], "end": stamps[3]}, queryid="f2"
        )
        assert [forwarded_body(r) for r in timed] == ["m2", "m3"]
        # Errors: an unknown id, a bad time, a field the room does not know.
        bad = (await mam_query(bob, room, rsm="<after>12345</after>", queryid="e1"))[0]
        assert error_condition(bad) == "item-not-found"
        bad = (await mam_query(bob, room, form={"start": "yesterday"}, queryid="e2"))[0]
        assert error_condition(bad) == "bad-request"
        bad = (await mam_query(bob, room, form={"with": f"x@{server.domain}"}, queryid="e3"))[0]
        assert error_condition(bad) == "feature-not-implemented"
        # The form.
        form = await bob.iq("get", f"<query xmlns='{MAM}'/>", to=room)
        assert form.find(f".//{{{DATA}}}field[@var='before-id']") is not None


async def test_members_only_archive_is_for_members(server: XmppdServer) -> None:
    owner, room, _ = await create_room(
        server, fields={**ARCHIVED, "muc#roomconfig_membersonly": "1"}
    )
    outsider, _ = await login(server, "outsider")
    async with closing(owner, outsider):
        await groupchat(owner, room, "secret")
        await next_groupchat(owner, room, "secret")
        reply, results = await mam_query(outsider, room)
        assert error_condition(reply) == "forbidden" and results == []
        reply, results = await mam_query(owner, room, queryid="o")
        assert [forwarded_body(r) for r in results] == ["secret"]


async def test_password_protected_archive_is_for_those_inside(server: XmppdServer) -> None:
    """XEP-0045 §7.2.6: a password-protected room's discussion is for those who give the
    password; its archive too (it was readable by anyone who asked)."""
    owner, room, _ = await create_room(
        server,
        fields={
            **ARCHIVED,
            "muc#roomconfig_passwordprotectedroom": "1",
            "muc#roomconfig_roomsecret": "sesame",
        },
    )
    outsider, _ = await login(server, "pwoutsider")
    guest, _, _ = await user_in_room(server, room, "guest", password="sesame")
    async with closing(owner, outsider, guest):
        await groupchat(owner, room, "behind the password")
        await next_groupchat(guest, room, "behind the password")
        reply, results = await mam_query(outsider, room)
        assert error_condition(reply) == "forbidden" and results == []
        reply, results = await mam_query(guest, room, queryid="g")
        assert [forwarded_body(r) for r in results] == ["behind the password"]
        reply, results = await mam_query(owner, room, queryid="o")
        assert [forwarded_body(r) for r in results] == ["behind the password"]


async def test_a_room_made_temporary_leaves_no_archive_to_the_next_of_its_name(
    server: XmppdServer,
) -> None:
    """A persistent room made temporary, then left empty, vanishes; whoever creates a
    room of the same name and makes it persistent finds an empty archive (the old
    messages stayed stored under the name and came back to the new owner)."""
    owner, room, _ = await create_room(server, fields=ARCHIVED)
    async with closing(owner):
        await groupchat(owner, room, "before the room was made temporary")
        await next_groupchat(owner, room, "before the room was made temporary")
        reply = await submit_config(owner, room, {"muc#roomconfig_persistentroom": "0"})
        assert reply.get("type") == "result"
        owner.send(f"<presence to='{room}/owner' type='unavailable'/>")
        await owner.expect(
            lambda el: (
                el.tag == tag("presence") and el.get("type") == "unavailable" and "110" in codes(el)
            )
        )
    newcomer, joined, _ = await user_in_room(server, room, "newcomer")
    async with closing(newcomer):
        assert "201" in codes(joined.self_presence)  # a new room
        reply = await submit_config(newcomer, room, ARCHIVED)
        assert reply.get("type") == "result"
        reply, results = await mam_query(newcomer, room)
        assert reply.get("type") == "result" and results == []


async def test_archiving_can_be_turned_off(server: XmppdServer) -> None:
    owner, room, _ = await create_room(
        server, fields={**ARCHIVED, "muc#roomconfig_enablearchiving": "0"}
    )
    bob, joined, _ = await user_in_room(server, room, "bob")
    async with closing(owner, bob):
        assert "170" not in codes(joined.self_presence)
        await groupchat(bob, room, "off the record")
        got = await next_groupchat(bob, room, "off the record")
        assert stanza_id(got, room) is not None  # ids all the same (for references)
        reply, _ = await mam_query(bob, room)
        assert error_condition(reply) == "service-unavailable"
        # Turning it on is announced with 170 (§10.2.1).
        reply = await submit_config(owner, room, {"muc#roomconfig_enablearchiving": "1"})
        assert reply.get("type") == "result"
        notice = await bob.expect(lambda el: el.tag == tag("message") and "104" in codes(el))
        assert "170" in codes(notice)


async def test_history_comes_from_the_archive_and_survives_restart(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    tmp: Path = tmp_path_factory.mktemp("xmppd-muc-archive")
    with running_server(tmp) as server:
        await register_account(server, "late", PASSWORD)
        owner, room, _ = await create_room(server, fields=ARCHIVED)
        async with closing(owner):
            for n in range(3):
                await groupchat(owner, room, f"h{n}")
                await next_groupchat(owner, room, f"h{n}")
    with running_server(tmp) as server:
        late = await XmlClient.login(server, f"late@{server.domain}", PASSWORD, resource="r")
        async with closing(late):
            joined = await join(late, room, "late", history="maxstanzas='2'")
            assert [body(m) for m in joined.history] == ["h1", "h2"]
            for message in joined.history:
                assert message.find("{urn:xmpp:delay}delay") is not None
                assert stanza_id(message, room) is not None
            _, results = await mam_query(late, room)
            assert [forwarded_body(r) for r in results] == ["h0", "h1", "h2"]
            # The ids continue after those stored: a new message sorts last.
            await groupchat(late, room, "after restart")
            got = await next_groupchat(late, room, "after restart")
            new_id = stanza_id(got, room)
            last = results[-1].find(f"{{{MAM}}}result")
            assert new_id is not None and last is not None
            assert int(new_id) > int(last.get("id", "0"))


RETRACT = "urn:xmpp:message-retract:1"
MODERATE = "urn:xmpp:message-moderate:1"


async def post_keep_spam_oops(bob: XmlClient, owner: XmlClient, room: str) -> dict[str, str]:
    """Bob posts "keep", "spam" and "oops" (both see each); their room stanza ids."""
    sids: dict[str, str] = {}
    for text_ in ("keep", "spam", "oops"):
        await groupchat(bob, room, text_)
        got = await next_groupchat(bob, room, text_)
        sid = stanza_id(got, room)
        assert sid is not None
        sids[text_] = sid
        await next_groupchat(owner, room, text_)
    return sids


def moderation_of(sid: str) -> str:
    """The XEP-0425 request that retracts message ``sid`` for spam."""
    return (
        f"<moderate xmlns='{MODERATE}' id='{sid}'>"
        f"<retract xmlns='{RETRACT}'/><reason>spam</reason></moderate>"
    )


async def moderation_notice(client: XmlClient, room: str, sid: str) -> Element:
    """The room's notice that the owner moderated ``sid``: its ``<retract/>``."""
    notice = await client.expect(
        lambda el: el.find(f"{{{RETRACT}}}retract") is not None and el.get("from") == room
    )
    retract = notice.find(f"{{{RETRACT}}}retract")
    assert retract is not None and retract.get("id") == sid
    moderated = retract.find(f"{{{MODERATE}}}moderated")
    assert moderated is not None and moderated.get("by") == f"{room}/owner"
    return retract


async def test_moderation_and_retraction_rewrite_the_archive(server: XmppdServer) -> None:
    owner, room, _ = await create_room(server, fields=ARCHIVED)
    bob, _, _ = await user_in_room(server, room, "bob")
    carol, _, _ = await user_in_room(server, room, "carol")
    async with closing(owner, bob, carol):
        sids = await post_keep_spam_oops(bob, owner, room)
        moderate = moderation_of(sids["spam"])
        # Only moderators moderate.
        assert error_condition(await carol.iq("set", moderate, to=room)) == "forbidden"
        reply = await owner.iq("set", moderate, to=room)
        assert reply.get("type") == "result", etree.tostring(reply)
        for client in (owner, bob, carol):
            retract = await moderation_notice(client, room, sids["spam"])
            assert retract.findtext(f"{{{RETRACT}}}reason") == "spam"
        unknown = moderate.replace(sids["spam"], "1234")
        assert error_condition(await owner.iq("set", unknown, to=room)) == "item-not-found"
        # XEP-0424: bob retracts his own message; carol may not retract bob's.
        carol.send(
            f"<message to='{room}' type='groupchat' id='r1'>"
            f"<retract xmlns='{RETRACT}' id='{sids['keep']}'/></message>"
        )
        refusal = await carol.expect(lambda el: el.get("id") == "r1" and el.get("type") == "error")
        assert error_condition(refusal) == "forbidden"
        bob.send(
            f"<message to='{room}' type='groupchat' id='r2'>"
            f"<retract xmlns='{RETRACT}' id='{sids['oops']}'/><body>retracted</body></message>"
        )
        relayed = await carol.expect(lambda el: el.get("id") == "r2")
        assert relayed.get("from") == f"{room}/bob"
        # Later joiners and MAM no longer get the moderated or retracted messages.
        late, joined, _ = await user_in_room(server, room, "late")
        async with closing(late):
            bodies = [body(m) for m in joined.history]
            assert "keep" in bodies and "spam" not in bodies and "oops" not in bodies
            _, results = await mam_query(late, room)
            archived = [forwarded_body(r) for r in results]
            assert "spam" not in archived and "oops" not in archived and "keep" in archived
            tombstones = [
                r
                for r in results
                if r.find(f".//{{jabber:client}}message/{{{RETRACT}}}retracted") is not None
            ]
            assert len(tombstones) == 2
            by_id = {r.find(f"{{{MAM}}}result").get("id"): r for r in tombstones}  # type: ignore[union-attr]
            assert set(by_id) == {sids["spam"], sids["oops"]}
            spam = by_id[sids["spam"]].find(f".//{{{RETRACT}}}retracted/{{{MODERATE}}}moderated")
            assert spam is not None and spam.get("by") == f"{room}/owner"


async def test_moderation_and_retraction_in_a_room_without_an_archive(
    server: XmppdServer,
) -> None:
    """A temporary room keeps its history in memory only: a moderated (XEP-0425) and a
    retracted (XEP-0424) message leave it, so a later joiner's history lacks them;
    the occupants get the notices; an id the room never gave is item-not-found."""
    owner, room, _ = await create_room(server)
    bob, _, _ = await user_in_room(server, room, "bob")
    async with closing(owner, bob):
        sids = await post_keep_spam_oops(bob, owner, room)
        moderate = moderation_of(sids["spam"])
        assert error_condition(await bob.iq("set", moderate, to=room)) == "forbidden"
        reply = await owner.iq("set", moderate, to=room)
        assert reply.get("type") == "result", etree.tostring(reply)
        for client in (owner, bob):
            await moderation_notice(client, room, sids["spam"])
        unknown = moderate.replace(sids["spam"], "98765")
        assert error_condition(await owner.iq("set", unknown, to=room)) == "item-not-found"
        bob.send(
            f"<message to='{room}' type='groupchat' id='r2'>"
            f"<retract xmlns='{RETRACT}' id='{sids['oops']}'/><body>retracted</body></message>"
        )
        relayed = await owner.expect(lambda el: el.get("id") == "r2")
        assert relayed.get("from") == f"{room}/bob"
        late, joined, _ = await user_in_room(server, room, "late")
        async with closing(late):
            bodies = [body(m) for m in joined.history]
            assert "keep" in bodies
            assert "spam" not in bodies and "oops" not in bodies
            # No archive on this room: its disco#info does not offer one.
            info = await late.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=room)
            features = {f.get("var") for f in info.iter(f"{{{DISCO_INFO}}}feature")}
            assert MAM not in features
