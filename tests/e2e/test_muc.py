"""XEP-0045 group chat on real sockets: entering and leaving rooms with the presence
and status codes users see, room creation and configuration, messages, subject,
private messages, history, moderation, and the errors of §7.2 (raw streams, on SQLite
and PostgreSQL)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from lxml import etree

from tests.support.e2e import PASSWORD, new_account
from tests.support.muc import (
    DELAY,
    DISCO_INFO,
    DISCO_ITEMS,
    MUC_OWNER,
    MUC_USER,
    ROOMCONFIG,
    JoinRefused,
    admin_set,
    body,
    codes,
    create_room,
    groupchat,
    item,
    join,
    new_room,
    next_groupchat,
    occupant_id,
    submit_config,
    sync,
    user_in_room,
)
from tests.support.server import XmppdServer
from tests.support.xmlclient import XmlClient, error_condition, tag


@contextlib.asynccontextmanager
async def closing(*clients: XmlClient) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for client in clients:
            await client.close()


async def refused(client: XmlClient, room: str, nick: str, **kw: object) -> str | None:
    try:
        await join(client, room, nick, **kw)  # type: ignore[arg-type]
    except JoinRefused as exc:
        return exc.condition
    raise AssertionError("the join was accepted")


async def login(server: XmppdServer, prefix: str = "u") -> tuple[XmlClient, str]:
    jid = await new_account(server, prefix)
    return await XmlClient.login(server, jid, PASSWORD, resource="r"), jid


def form_field(query: etree._Element, var: str) -> list[str]:
    found = query.find(f".//{{jabber:x:data}}field[@var='{var}']")
    assert found is not None, var
    return [v.text or "" for v in found.findall("{jabber:x:data}value")]


# ----------------------------------------------------------------------------- entering


async def test_create_instant_room_then_others_join_and_chat(server: XmppdServer) -> None:
    owner, room, _ = await create_room(server)
    bob, joined, bob_jid = await user_in_room(server, room, "bob")
    async with closing(bob, owner):
        assert joined.nicks == {"owner"}
        assert item(joined.others[0]).get("affiliation") == "owner"
        assert item(joined.others[0]).get("role") == "moderator"
        assert item(joined.others[0]).get("jid") is None  # semi-anonymous by default
        assert codes(joined.self_presence) == {"110"}
        assert item(joined.self_presence).get("role") == "participant"
        assert joined.subject is not None and joined.subject.get("from") == room
        seen = await owner.expect(lambda el: el.get("from") == f"{room}/bob")
        assert item(seen).get("jid") == bob_jid + "/r"  # moderators see real JIDs
        await groupchat(bob, room, "hello all", sid="m1")
        for client in (owner, bob):
            got = await next_groupchat(client, room, "hello all")
            assert got.get("from") == f"{room}/bob"
            assert got.get("type") == "groupchat"
            assert got.get("id") == "m1"
            assert occupant_id(got) == occupant_id(joined.self_presence)
        await sync(owner, room)
        assert not owner.pending(lambda el: body(el) == "hello all")  # exactly once


async def test_locked_room_until_the_owner_configures_it(server: XmppdServer) -> None:
    room = new_room(server)
    owner, joined, _ = await user_in_room(server, room, "boss")
    bob, _ = await login(server)
    async with closing(owner, bob):
        assert {"110", "201"} <= codes(joined.self_presence)
        assert await refused(bob, room, "bob") == "item-not-found"
        form = await owner.iq("get", f"<query xmlns='{MUC_OWNER}'/>", to=room)
        assert form.get("type") == "result"
        assert form_field(form, "FORM_TYPE") == [ROOMCONFIG]
        for var in (
            "muc#roomconfig_roomname",
            "muc#roomconfig_roomdesc",
            "muc#roomconfig_persistentroom",
            "muc#roomconfig_publicroom",
            "muc#roomconfig_membersonly",
            "muc#roomconfig_passwordprotectedroom",
            "muc#roomconfig_roomsecret",
            "muc#roomconfig_moderatedroom",
            "muc#roomconfig_maxusers",
            "muc#roomconfig_whois",
            "muc#maxhistoryfetch",
            "muc#roomconfig_allowinvites",
            "muc#roomconfig_changesubject",
            "muc#roomconfig_allowpm",
        ):
            form_field(form, var)
        reply = await submit_config(
            owner, room, {"muc#roomconfig_roomname": "Team", "muc#roomconfig_roomdesc": "Work"}
        )
        assert reply.get("type") == "result"
        joined_bob = await join(bob, room, "bob")
        assert joined_bob.nicks == {"boss"}
        info = await bob.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=room)
        identity = info.find(f".//{{{DISCO_INFO}}}identity")
        assert identity is not None and identity.get("name") == "Team"
        features = {f.get("var") for f in info.iter(f"{{{DISCO_INFO}}}feature")}
        assert {"http://jabber.org/protocol/muc", "muc_temporary", "muc_open"} <= features
        assert form_field(info, "muc#roominfo_description") == ["Work"]
        assert form_field(info, "muc#roominfo_occupants") == ["2"]


async def test_cancelling_the_first_configuration_destroys_the_room(server: XmppdServer) -> None:
    room = new_room(server)
    owner, _, _ = await user_in_room(server, room, "boss")
    bob, _ = await login(server)
    async with closing(owner, bob):
        cancel = f"<query xmlns='{MUC_OWNER}'><x xmlns='jabber:x:data' type='cancel'/></query>"
        assert (await owner.iq("set", cancel, to=room)).get("type") == "result"
        gone = await owner.expect(lambda el: el.get("type") == "unavailable")
        assert gone.find(f"{{{MUC_USER}}}x/{{{MUC_USER}}}destroy") is not None
        fresh = await join(bob, room, "bob")  # a new room: bob creates it
        assert "201" in codes(fresh.self_presence)


async def test_configuration_form_errors(server: XmppdServer) -> None:
    owner, room, _ = await create_room(server)
    bob, _, _ = await user_in_room(server, room, "bob")
    async with closing(owner, bob):
        cases = [
            ({"muc#roomconfig_persistentroom": "perhaps"}, "bad-request"),
            ({"muc#roomconfig_maxusers": "many"}, "bad-request"),
            ({"muc#roomconfig_whois": "everybody"}, "not-acceptable"),
            ({"muc#roomconfig_allowpm": "friends"}, "not-acceptable"),
            ({"muc#roomconfig_maxusers": "100000000"}, "not-acceptable"),
            ({"muc#roomconfig_passwordprotectedroom": "1"}, "not-acceptable"),
        ]
        for fields, condition in cases:
            reply = await submit_config(owner, room, fields)  # type: ignore[arg-type]
            assert error_condition(reply) == condition, fields
        wrong_type = (
            f"<query xmlns='{MUC_OWNER}'><x xmlns='jabber:x:data' type='submit'>"
            "<field var='FORM_TYPE'><value>urn:example:other</value></field></x></query>"
        )
        assert error_condition(await owner.iq("set", wrong_type, to=room)) == "bad-request"
        get = f"<query xmlns='{MUC_OWNER}'/>"
        assert error_condition(await bob.iq("get", get, to=room)) == "forbidden"
        assert error_condition(await submit_config(bob, room, {})) == "forbidden"
        # The room still serves everyone.
        await groupchat(bob, room, "still here")
        await next_groupchat(owner, room, "still here")


async def test_leaving_and_a_temporary_room_vanishes_when_empty(server: XmppdServer) -> None:
    owner, room, _ = await create_room(server)
    bob, _, _ = await user_in_room(server, room, "bob")
    async with closing(owner, bob):
        bob.send(f"<presence to='{room}/bob' type='unavailable'><status>bye</status></presence>")
        mine = await bob.expect(lambda el: el.get("type") == "unavailable")
        assert "110" in codes(mine)
        theirs = await owner.expect(
            lambda el: el.get("from") == f"{room}/bob" and el.get("type") == "unavailable"
        )
        assert "110" not in codes(theirs) and item(theirs).get("role") == "none"
        assert theirs.findtext(tag("status")) == "bye"
        owner.send(f"<presence to='{room}/owner' type='unavailable'/>")
        await owner.expect(lambda el: el.get("type") == "unavailable")
        info = await bob.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=room)
        assert error_condition(info) == "item-not-found"
        again = await join(bob, room, "bob")
        assert "201" in codes(again.self_presence)


async def test_nick_change(server: XmppdServer) -> None:
    owner, room, _ = await create_room(server)
    bob, joined, _ = await user_in_room(server, room, "bob")
    async with closing(owner, bob):
        bob.send(f"<presence to='{room}/robert'/>")
        for client in (owner, bob):
            out = await client.expect(
                lambda el: el.get("from") == f"{room}/bob" and el.get("type") == "unavailable"
            )
            assert "303" in codes(out) and item(out).get("nick") == "robert"
            back = await client.expect(lambda el: el.get("from") == f"{room}/robert")
            assert occupant_id(back) == occupant_id(joined.self_presence)
        assert "110" in codes(back)
        owner.send(f"<presence to='{room}/robert'/>")
        err = await owner.expect(lambda el: el.get("type") == "error")
        assert error_condition(err) == "conflict"


async def test_join_errors_for_nicknames(server: XmppdServer) -> None:
    owner, room, _ = await create_room(server)
    bob, _ = await login(server)
    async with closing(owner, bob):
        assert await refused(bob, room, "owner") == "conflict"
        assert await refused(bob, room, "   ") == "not-acceptable"
        assert await refused(bob, room, "x" * 65) == "not-acceptable"
        bob.send(f"<presence to='{room}'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
        err = await bob.expect(lambda el: el.get("type") == "error")
        assert error_condition(err) == "jid-malformed"
        await join(bob, room, "bob")


async def test_password_members_only_and_full_rooms(server: XmppdServer) -> None:
    owner, room, _ = await create_room(
        server,
        fields={
            "muc#roomconfig_passwordprotectedroom": "1",
            "muc#roomconfig_roomsecret": "sesame",
            "muc#roomconfig_maxusers": "2",
        },
    )
    bob, _ = await login(server)
    carol, _ = await login(server)
    async with closing(owner, bob, carol):
        assert await refused(bob, room, "bob") == "not-authorized"
        assert await refused(bob, room, "bob", password="wrong") == "not-authorized"
        await join(bob, room, "bob", password="sesame")
        assert await refused(carol, room, "carol", password="sesame") == "service-unavailable"
    owner, room, _ = await create_room(server, fields={"muc#roomconfig_membersonly": "1"})
    dave, dave_jid = await login(server)
    async with closing(owner, dave):
        assert await refused(dave, room, "dave") == "registration-required"
        reply = await admin_set(owner, room, f"<item affiliation='member' jid='{dave_jid}'/>")
        assert reply.get("type") == "result"
        joined = await join(dave, room, "dave")
        assert item(joined.self_presence).get("affiliation") == "member"


async def test_messages_from_non_occupants_are_refused(server: XmppdServer) -> None:
    owner, room, _ = await create_room(server)
    stranger, _ = await login(server)
    async with closing(owner, stranger):
        await groupchat(stranger, room, "let me in")
        err = await stranger.expect(lambda el: el.get("type") == "error")
        assert error_condition(err) == "not-acceptable"
        stranger.send(f"<message to='{room}/owner' type='chat'><body>psst</body></message>")
        err = await stranger.expect(lambda el: el.get("type") == "error")
        assert error_condition(err) == "not-acceptable"
        await sync(owner, room)
        assert not owner.pending(lambda el: el.tag == tag("message") and body(el) is not None)


async def test_subject_rights(server: XmppdServer) -> None:
    owner, room, _ = await create_room(server)
    bob, _, _ = await user_in_room(server, room, "bob")
    async with closing(owner, bob):
        bob.send(f"<message to='{room}' type='groupchat'><subject>mine</subject></message>")
        err = await bob.expect(lambda el: el.get("type") == "error")
        assert error_condition(err) == "forbidden"
        owner.send(f"<message to='{room}' type='groupchat'><subject>Plans</subject></message>")
        for client in (owner, bob):
            got = await client.expect(lambda el: el.findtext(tag("subject")) == "Plans")
            assert got.get("from") == f"{room}/owner"
        carol, joined, _ = await user_in_room(server, room, "carol")
        async with closing(carol):
            assert joined.subject is not None
            assert joined.subject.findtext(tag("subject")) == "Plans"
            assert joined.subject.get("from") == f"{room}/owner"
        assert (await submit_config(owner, room, {"muc#roomconfig_changesubject": "1"})).get(
            "type"
        ) == "result"
        bob.send(f"<message to='{room}' type='groupchat'><subject>ours</subject></message>")
        await owner.expect(lambda el: el.findtext(tag("subject")) == "ours")


async def test_private_messages_follow_the_policy(server: XmppdServer) -> None:
    owner, room, _ = await create_room(server)
    bob, _, _ = await user_in_room(server, room, "bob")
    async with closing(owner, bob):
        bob.send(f"<message to='{room}/owner' type='chat'><body>just you</body></message>")
        got = await owner.expect(lambda el: body(el) == "just you")
        assert got.get("from") == f"{room}/bob" and got.get("type") == "chat"
        assert got.find(f"{{{MUC_USER}}}x") is not None
        bob.send(f"<message to='{room}/nobody' type='chat'><body>?</body></message>")
        assert error_condition(await bob.expect(lambda el: el.get("type") == "error")) == (
            "item-not-found"
        )
        bob.send(f"<message to='{room}/owner' type='groupchat'><body>?</body></message>")
        assert error_condition(await bob.expect(lambda el: el.get("type") == "error")) == (
            "bad-request"
        )
        await submit_config(owner, room, {"muc#roomconfig_allowpm": "none"})
        bob.send(f"<message to='{room}/owner' type='chat'><body>again</body></message>")
        assert error_condition(await bob.expect(lambda el: el.get("type") == "error")) == (
            "not-allowed"
        )


async def test_history_on_join_with_limits(server: XmppdServer) -> None:
    owner, room, _ = await create_room(server)
    async with closing(owner):
        for n in range(5):
            await groupchat(owner, room, f"line {n}")
            await next_groupchat(owner, room, f"line {n}")
        cases = {
            "": [f"line {n}" for n in range(5)],
            "maxstanzas='2'": ["line 3", "line 4"],
            "maxstanzas='0'": [],
            "maxchars='0'": [],
            "seconds='3600'": [f"line {n}" for n in range(5)],
            "since='2999-01-01T00:00:00Z'": [],
        }
        for limits, expected in cases.items():
            client, joined, _ = await user_in_room(server, room, "late", history=limits)
            async with closing(client):
                assert [body(m) for m in joined.history] == expected, limits
                for message in joined.history:
                    delay = message.find(f"{{{DELAY}}}delay")
                    assert delay is not None and delay.get("from") == room
                    assert message.get("from") == f"{room}/owner"
                client.send(f"<presence to='{room}/late' type='unavailable'/>")
                await client.expect(lambda el: el.get("type") == "unavailable")


async def test_kick_ban_and_voice(server: XmppdServer) -> None:
    owner, room, _ = await create_room(server, fields={"muc#roomconfig_moderatedroom": "1"})
    bob, joined, bob_jid = await user_in_room(server, room, "bob")
    carol, _, _ = await user_in_room(server, room, "carol")
    async with closing(owner, bob, carol):
        assert item(joined.self_presence).get("role") == "visitor"
        await groupchat(bob, room, "can I speak?")
        assert error_condition(await bob.expect(lambda el: el.get("type") == "error")) == (
            "forbidden"
        )
        await admin_set(owner, room, "<item nick='bob' role='participant'/>")
        voiced = await bob.expect(
            lambda el: el.get("from") == f"{room}/bob" and item(el).get("role") == "participant"
        )
        assert "110" in codes(voiced)
        await groupchat(bob, room, "thanks")
        await next_groupchat(owner, room, "thanks")
        # A participant may not kick.
        assert error_condition(await admin_set(bob, room, "<item nick='carol' role='none'/>")) == (
            "forbidden"
        )
        # Nobody may kick the owner.
        assert (
            error_condition(await admin_set(owner, room, "<item nick='owner' role='none'/>"))
            == "not-allowed"
        )
        reply = await admin_set(
            owner, room, "<item nick='carol' role='none'><reason>noise</reason></item>"
        )
        assert reply.get("type") == "result"
        kicked = await carol.expect(lambda el: el.get("type") == "unavailable")
        assert {"110", "307"} <= codes(kicked)
        assert item(kicked).findtext(f"{{{MUC_USER}}}reason") == "noise"
        seen = await bob.expect(
            lambda el: el.get("from") == f"{room}/carol" and el.get("type") == "unavailable"
        )
        assert "307" in codes(seen)
        await admin_set(owner, room, f"<item affiliation='outcast' jid='{bob_jid}'/>")
        banned = await bob.expect(
            lambda el: el.get("from") == f"{room}/bob" and el.get("type") == "unavailable"
        )
        assert {"110", "301"} <= codes(banned)
        assert await refused(bob, room, "bob") == "forbidden"
        outcasts = await owner.iq(
            "get",
            "<query xmlns='http://jabber.org/protocol/muc#admin'>"
            "<item affiliation='outcast'/></query>",
            to=room,
        )
        jids = [i.get("jid") for i in outcasts.iter("{http://jabber.org/protocol/muc#admin}item")]
        assert jids == [bob_jid]


async def test_admin_errors(server: XmppdServer) -> None:
    owner, room, owner_jid = await create_room(server)
    bob, _, bob_jid = await user_in_room(server, room, "bob")
    async with closing(owner, bob):
        assert (
            error_condition(
                await admin_set(owner, room, f"<item affiliation='king' jid='{bob_jid}'/>")
            )
            == "bad-request"
        )
        assert (
            error_condition(
                await admin_set(owner, room, f"<item affiliation='none' jid='{owner_jid}'/>")
            )
            == "conflict"
        )
        assert (
            error_condition(
                await admin_set(bob, room, f"<item affiliation='member' jid='{bob_jid}'/>")
            )
            == "forbidden"
        )
        # Made admin, bob is a moderator now.
        await admin_set(owner, room, f"<item affiliation='admin' jid='{bob_jid}'/>")
        promoted = await bob.expect(lambda el: item(el).get("affiliation") == "admin")
        assert item(promoted).get("role") == "moderator"


async def test_service_and_host_discovery(server: XmppdServer) -> None:
    owner, public_room, _ = await create_room(server, fields={"muc#roomconfig_roomname": "Lobby"})
    owner2, hidden_room, _ = await create_room(server, fields={"muc#roomconfig_publicroom": "0"})
    async with closing(owner, owner2):
        service = f"conference.{server.domain}"
        host_items = await owner.iq("get", f"<query xmlns='{DISCO_ITEMS}'/>", to=server.domain)
        assert service in {i.get("jid") for i in host_items.iter(f"{{{DISCO_ITEMS}}}item")}
        info = await owner.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=service)
        features = {f.get("var") for f in info.iter(f"{{{DISCO_INFO}}}feature")}
        assert "http://jabber.org/protocol/muc" in features
        items = await owner.iq("get", f"<query xmlns='{DISCO_ITEMS}'/>", to=service)
        listed = {i.get("jid"): i.get("name") for i in items.iter(f"{{{DISCO_ITEMS}}}item")}
        assert listed.get(public_room) == "Lobby"
        assert hidden_room not in listed
        assert (
            error_condition(
                await owner.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=f"nope@{service}")
            )
            == "item-not-found"
        )
