"""XEP-0045 between occupants, on real sockets: mediated invitations and declines
(§7.8), XEP-0249 direct invitations, voice requests and their approval (§7.13, §8.6),
nickname registration (§7.10-7.11), the room's disco#items (§6.5) and IQs forwarded to
an occupant's real JID (private IQ)."""

from __future__ import annotations

from lxml import etree

from tests.e2e.test_muc import closing, login, refused
from tests.support.muc import (
    DATA,
    DISCO_INFO,
    DISCO_ITEMS,
    MUC_USER,
    admin_set,
    create_room,
    item,
    join,
    user_in_room,
)
from tests.support.server import XmppdServer
from tests.support.xmlclient import Element, error_condition, tag

REGISTER = "jabber:iq:register"
MUC_REGISTER = "http://jabber.org/protocol/muc#register"
MUC_REQUEST = "http://jabber.org/protocol/muc#request"
CONFERENCE = "jabber:x:conference"


def field_value(form: Element, var: str) -> str | None:
    found = form.find(f".//{{{DATA}}}field[@var='{var}']/{{{DATA}}}value")
    return None if found is None else (found.text or "")


async def test_mediated_invitation_and_decline(server: XmppdServer) -> None:
    owner, room, owner_jid = await create_room(
        server,
        fields={"muc#roomconfig_membersonly": "1", "muc#roomconfig_roomsecret": "s3cret"},
    )
    guest, guest_jid = await login(server, "guest")
    other, other_jid = await login(server, "other")
    async with closing(owner, guest, other):
        for client in (owner, guest, other):
            client.send("<presence/>")  # available: messages to the bare JID reach them
        assert await refused(guest, room, "guest", password="s3cret") == "registration-required"
        owner.send(
            f"<message to='{room}'><x xmlns='{MUC_USER}'>"
            f"<invite to='{guest_jid}'><reason>join us</reason></invite>"
            f"<invite to='{other_jid}'/></x></message>"
        )
        for client in (guest, other):
            got = await client.expect(lambda el: el.find(f"{{{MUC_USER}}}x") is not None)
            assert got.get("from") == room
            invite = got.find(f"{{{MUC_USER}}}x/{{{MUC_USER}}}invite")
            assert invite is not None and invite.get("from") == owner_jid + "/r"
            assert got.findtext(f"{{{MUC_USER}}}x/{{{MUC_USER}}}password") == "s3cret"
        # Members-only: the invitation made the invitees members, so they may enter.
        joined = await join(guest, room, "guest", password="s3cret")
        assert item(joined.self_presence).get("affiliation") == "member"
        other.send(
            f"<message to='{room}'><x xmlns='{MUC_USER}'>"
            f"<decline to='{owner_jid}'><reason>busy</reason></decline></x></message>"
        )
        declined = await owner.expect(
            lambda el: el.find(f"{{{MUC_USER}}}x/{{{MUC_USER}}}decline") is not None
        )
        assert declined.get("from") == room
        decline = declined.find(f"{{{MUC_USER}}}x/{{{MUC_USER}}}decline")
        assert decline is not None and decline.get("from") == other_jid
        assert decline.findtext(f"{{{MUC_USER}}}reason") == "busy"
        # Invitations are for admins here (allowinvites is off): a member is refused.
        guest.send(
            f"<message to='{room}' id='inv1'><x xmlns='{MUC_USER}'>"
            f"<invite to='someone@{server.domain}'/></x></message>"
        )
        refusal = await guest.expect(lambda el: el.get("id") == "inv1")
        assert error_condition(refusal) == "forbidden"
        # A non-occupant may not invite either.
        outsider, _ = await login(server, "outsider")
        async with closing(outsider):
            outsider.send(
                f"<message to='{room}' id='inv2'><x xmlns='{MUC_USER}'>"
                f"<invite to='{guest_jid}'/></x></message>"
            )
            refusal = await outsider.expect(lambda el: el.get("id") == "inv2")
            assert error_condition(refusal) == "not-acceptable"


async def test_direct_invitation_makes_the_invitee_a_member(server: XmppdServer) -> None:
    owner, room, _ = await create_room(
        server,
        fields={"muc#roomconfig_membersonly": "1", "muc#roomconfig_allowinvites": "1"},
    )
    member, member_jid = await login(server, "member")
    guest, guest_jid = await login(server, "guest")
    stranger, stranger_jid = await login(server, "stranger")
    async with closing(owner, member, guest, stranger):
        for client in (guest, stranger):
            client.send("<presence/>")
        await admin_set(owner, room, f"<item affiliation='member' jid='{member_jid}'/>")
        await join(member, room, "member")
        # A member invites directly (XEP-0249): the guest receives the message as sent.
        member.send(
            f"<message to='{guest_jid}' id='d1'>"
            f"<x xmlns='{CONFERENCE}' jid='{room}' reason='come in'/></message>"
        )
        got = await guest.expect(lambda el: el.get("id") == "d1")
        assert got.get("from") == member_jid + "/r"
        x = got.find(f"{{{CONFERENCE}}}x")
        assert x is not None and x.get("jid") == room and x.get("reason") == "come in"
        joined = await join(guest, room, "guest")
        assert item(joined.self_presence).get("affiliation") == "member"
        # Someone outside the room cannot get a friend in by "inviting" them.
        stranger.send(
            f"<message to='{guest_jid}' id='d2'><x xmlns='{CONFERENCE}' jid='{room}'/></message>"
        )
        await guest.expect(lambda el: el.get("id") == "d2")
        owner.send(
            f"<message to='{stranger_jid}' id='d3'><x xmlns='{CONFERENCE}' jid='{room}'/></message>"
        )
        await stranger.expect(lambda el: el.get("id") == "d3")
        # ... but the owner's invitation did: the stranger enters.
        joined = await join(stranger, room, "stranger")
        assert item(joined.self_presence).get("affiliation") == "member"


async def test_direct_invitation_without_invite_rights_changes_nothing(
    server: XmppdServer,
) -> None:
    owner, room, _ = await create_room(server, fields={"muc#roomconfig_membersonly": "1"})
    member, member_jid = await login(server, "member")
    guest, guest_jid = await login(server, "guest")
    async with closing(owner, member, guest):
        guest.send("<presence/>")
        await admin_set(owner, room, f"<item affiliation='member' jid='{member_jid}'/>")
        await join(member, room, "member")
        member.send(
            f"<message to='{guest_jid}' id='d1'><x xmlns='{CONFERENCE}' jid='{room}'/></message>"
        )
        await guest.expect(lambda el: el.get("id") == "d1")  # delivered all the same
        assert await refused(guest, room, "guest") == "registration-required"


def _voice_request(room: str) -> str:
    return (
        f"<message to='{room}'><x xmlns='{DATA}' type='submit'>"
        f"<field var='FORM_TYPE'><value>{MUC_REQUEST}</value></field>"
        "<field var='muc#role' type='list-single'><value>participant</value></field>"
        "</x></message>"
    )


async def test_voice_request_and_approval(server: XmppdServer) -> None:
    owner, room, _ = await create_room(server, fields={"muc#roomconfig_moderatedroom": "1"})
    visitor, joined, visitor_jid = await user_in_room(server, room, "quiet")
    async with closing(owner, visitor):
        assert item(joined.self_presence).get("role") == "visitor"
        visitor.send(_voice_request(room))
        request = await owner.expect(lambda el: el.find(f"{{{DATA}}}x") is not None)
        assert request.get("from") == room
        form = request.find(f"{{{DATA}}}x")
        assert form is not None and form.get("type") == "form"
        assert field_value(form, "FORM_TYPE") == MUC_REQUEST
        assert field_value(form, "muc#roomnick") == "quiet"
        assert field_value(form, "muc#jid") == visitor_jid + "/r"
        assert field_value(form, "muc#request_allow") == "false"
        owner.send(
            f"<message to='{room}'><x xmlns='{DATA}' type='submit'>"
            f"<field var='FORM_TYPE'><value>{MUC_REQUEST}</value></field>"
            "<field var='muc#role'><value>participant</value></field>"
            "<field var='muc#roomnick'><value>quiet</value></field>"
            "<field var='muc#request_allow'><value>true</value></field>"
            "</x></message>"
        )
        voiced = await visitor.expect(
            lambda el: el.get("from") == f"{room}/quiet" and el.tag == tag("presence")
        )
        assert item(voiced).get("role") == "participant"
        # Voice requests off: the visitor is told.
        await admin_set(owner, room, "<item nick='quiet' role='visitor'/>")
        await visitor.expect(
            lambda el: el.tag == tag("presence") and item(el).get("role") == "visitor"
        )
        reply = await owner.iq(
            "set",
            f"<query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='{DATA}' "
            "type='submit'><field var='muc#roomconfig_allowvoicerequests'><value>0</value>"
            "</field></x></query>",
            to=room,
        )
        assert reply.get("type") == "result"
        visitor.send(_voice_request(room).replace("<message ", "<message id='v2' ", 1))
        refusal = await visitor.expect(lambda el: el.get("id") == "v2")
        assert error_condition(refusal) == "forbidden"


async def test_nickname_registration(server: XmppdServer) -> None:
    owner, room, _ = await create_room(server)
    alice, alice_jid = await login(server, "alice")
    mallory, _ = await login(server, "mallory")
    async with closing(owner, alice, mallory):
        form = await alice.iq("get", f"<query xmlns='{REGISTER}'/>", to=room)
        assert form.get("type") == "result", etree.tostring(form)
        x = form.find(f"{{{REGISTER}}}query/{{{DATA}}}x")
        assert x is not None and field_value(x, "FORM_TYPE") == MUC_REGISTER
        assert x.find(f"{{{DATA}}}field[@var='muc#register_roomnick']") is not None

        def submit(nick: str) -> str:
            return (
                f"<query xmlns='{REGISTER}'><x xmlns='{DATA}' type='submit'>"
                f"<field var='FORM_TYPE'><value>{MUC_REGISTER}</value></field>"
                f"<field var='muc#register_roomnick'><value>{nick}</value></field>"
                "</x></query>"
            )

        assert (await alice.iq("set", submit("Alice"), to=room)).get("type") == "result"
        again = await alice.iq("get", f"<query xmlns='{REGISTER}'/>", to=room)
        assert again.find(f"{{{REGISTER}}}query/{{{REGISTER}}}registered") is not None
        assert again.findtext(f"{{{REGISTER}}}query/{{{REGISTER}}}username") == "Alice"
        # §7.11: the registered nickname through disco.
        info = await alice.iq(
            "get", f"<query xmlns='{DISCO_INFO}' node='x-roomuser-item'/>", to=room
        )
        identity = info.find(f".//{{{DISCO_INFO}}}identity")
        assert identity is not None and identity.get("name") == "Alice"
        # Registering made alice a member.
        members = await owner.iq(
            "get",
            "<query xmlns='http://jabber.org/protocol/muc#admin'>"
            "<item affiliation='member'/></query>",
            to=room,
        )
        listed = members.find(".//{http://jabber.org/protocol/muc#admin}item")
        assert listed is not None and listed.get("jid") == alice_jid
        assert listed.get("nick") == "Alice"
        # The nickname is reserved: nobody else may register, enter or change to it.
        assert error_condition(await mallory.iq("set", submit("Alice"), to=room)) == "conflict"
        assert error_condition(await mallory.iq("set", submit(" "), to=room)) == "not-acceptable"
        assert await refused(mallory, room, "Alice") == "conflict"
        await join(mallory, room, "mal")
        mallory.send(f"<presence to='{room}/Alice'/>")
        taken = await mallory.expect(lambda el: el.get("type") == "error")
        assert error_condition(taken) == "conflict"
        joined = await join(alice, room, "Alice")
        assert item(joined.self_presence).get("affiliation") == "member"
        # Removing the registration frees the nickname.
        remove = f"<query xmlns='{REGISTER}'><remove/></query>"
        assert (await alice.iq("set", remove, to=room)).get("type") == "result"
        form = await alice.iq("get", f"<query xmlns='{REGISTER}'/>", to=room)
        assert form.find(f"{{{REGISTER}}}query/{{{REGISTER}}}registered") is None


async def test_room_disco_items_follow_the_whois_policy(server: XmppdServer) -> None:
    owner, room, _ = await create_room(server)
    bob, _, _ = await user_in_room(server, room, "bob")
    async with closing(owner, bob):
        items = await bob.iq("get", f"<query xmlns='{DISCO_ITEMS}'/>", to=room)
        assert items.find(f".//{{{DISCO_ITEMS}}}item") is None  # semi-anonymous: empty
        reply = await owner.iq(
            "set",
            f"<query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='{DATA}' "
            "type='submit'><field var='muc#roomconfig_whois'><value>anyone</value>"
            "</field></x></query>",
            to=room,
        )
        assert reply.get("type") == "result"
        items = await bob.iq("get", f"<query xmlns='{DISCO_ITEMS}'/>", to=room)
        listed = {el.get("jid") for el in items.iter(f"{{{DISCO_ITEMS}}}item")}
        assert listed == {f"{room}/owner", f"{room}/bob"}


async def test_iq_to_an_occupant_is_forwarded_to_its_real_jid(server: XmppdServer) -> None:
    owner, room, _ = await create_room(server)
    bob, _, bob_jid = await user_in_room(server, room, "bob")
    async with closing(owner, bob):
        owner.send(
            f"<iq type='get' to='{room}/bob' id='v1'><query xmlns='jabber:iq:version'/></iq>"
        )
        asked = await bob.expect(
            lambda el: el.tag == tag("iq") and el.find("{jabber:iq:version}query") is not None
        )
        assert asked.get("from") == f"{room}/owner"  # the asker stays anonymous
        assert asked.get("to") == bob_jid + "/r"
        bob.send(
            f"<iq type='result' to='{room}/owner' id='{asked.get('id')}'>"
            "<query xmlns='jabber:iq:version'><name>bobclient</name></query></iq>"
        )
        answer = await owner.expect(lambda el: el.get("id") == "v1")
        assert answer.get("type") == "result"
        assert answer.get("from") == f"{room}/bob"
        assert answer.findtext(".//{jabber:iq:version}name") == "bobclient"
        # A vCard request goes to the account, whose server answers it (this server has
        # no vcard module: service-unavailable), not to bob's client.
        vcard = await owner.iq("get", "<vCard xmlns='vcard-temp'/>", to=f"{room}/bob")
        assert vcard.get("from") == f"{room}/bob"
        assert error_condition(vcard) == "service-unavailable"
        assert not bob.pending(lambda el: el.find("{vcard-temp}vCard") is not None)
        # A ping to another occupant goes to its client, which answers it (XEP-0410
        # §4: an occupant ping is forwarded like any IQ).
        bob.send(f"<iq type='get' to='{room}/owner' id='v2'><ping xmlns='urn:xmpp:ping'/></iq>")
        pong = await bob.expect(lambda el: el.get("id") == "v2")
        assert pong.get("type") == "result" and pong.get("from") == f"{room}/owner"
        assert owner.pings_received >= 1
        # To a nickname nobody has: item-not-found.
        gone = await owner.iq("get", "<query xmlns='jabber:iq:version'/>", to=f"{room}/nobody")
        assert error_condition(gone) == "item-not-found"
