"""Group chat (XEP-0045) steps on raw streams: join a room and read what the room sends
back (occupant presences, self-presence with its status codes, history, subject),
configure it, and read the codes, items and errors users see."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Final

from lxml import etree

from tests.support.e2e import PASSWORD, new_account
from tests.support.server import XmppdServer
from tests.support.xmlclient import Element, XmlClient, attrs, error_condition, tag, text

MUC: Final = "http://jabber.org/protocol/muc"
MUC_USER: Final = "http://jabber.org/protocol/muc#user"
MUC_OWNER: Final = "http://jabber.org/protocol/muc#owner"
MUC_ADMIN: Final = "http://jabber.org/protocol/muc#admin"
OCCUPANT_ID: Final = "urn:xmpp:occupant-id:0"
DATA: Final = "jabber:x:data"
ROOMCONFIG: Final = "http://jabber.org/protocol/muc#roomconfig"
DELAY: Final = "urn:xmpp:delay"
DISCO_INFO: Final = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS: Final = "http://jabber.org/protocol/disco#items"

_rooms = itertools.count()


def new_room(server: XmppdServer, prefix: str = "room") -> str:
    """A fresh room JID on the server's MUC service."""
    return f"{prefix}{next(_rooms)}@conference.{server.domain}"


class JoinRefused(Exception):
    def __init__(self, condition: str | None, stanza: Element) -> None:
        super().__init__(condition)
        self.condition = condition
        self.stanza = stanza


def codes(stanza: Element) -> set[str]:
    """The muc#user status codes of a presence or message."""
    return {s.get("code", "") for s in stanza.iterfind(f"{{{MUC_USER}}}x/{{{MUC_USER}}}status")}


def item(stanza: Element) -> Element:
    found = stanza.find(f"{{{MUC_USER}}}x/{{{MUC_USER}}}item")
    assert found is not None, etree.tostring(stanza)
    return found


def occupant_id(stanza: Element) -> str | None:
    found = stanza.find(f"{{{OCCUPANT_ID}}}occupant-id")
    return None if found is None else found.get("id")


def body(stanza: Element) -> str | None:
    return stanza.findtext(tag("body"))


def is_from(room: str, nick: str | None = None) -> object:
    """Predicate: a stanza from the room (``nick`` None: any occupant or the room)."""

    def match(el: Element) -> bool:
        frm = el.get("from", "")
        if nick is None:
            return frm == room or frm.startswith(room + "/")
        return frm == f"{room}/{nick}"

    return match


@dataclass
class Joined:
    """What a session got when it entered a room."""

    others: list[Element]
    self_presence: Element
    history: list[Element] = field(default_factory=list)
    subject: Element | None = None

    @property
    def nicks(self) -> set[str]:
        return {p.get("from", "").split("/", 1)[1] for p in self.others}


def _presence_from_room(room: str) -> object:
    def match(el: Element) -> bool:
        return el.tag == tag("presence") and el.get("from", "").startswith(room + "/")

    return match


async def join(
    client: XmlClient,
    room: str,
    nick: str,
    *,
    password: str | None = None,
    history: str = "",
    muc_x: bool = True,
) -> Joined:
    """Send a join presence and read up to the subject (or raise :class:`JoinRefused`).

    ``history`` is the attributes of ``<history/>`` (e.g. ``"maxstanzas='2'"``)."""
    inner = ""
    if password is not None:
        inner += f"<password>{text(password)}</password>"
    if history:
        inner += f"<history {history}/>"
    x = f"<x xmlns='{MUC}'>{inner}</x>" if muc_x else ""
    client.send(f"<presence{attrs(to=f'{room}/{nick}')}>{x}</presence>")
    own = f"{room}/{nick}"

    def is_self(el: Element) -> bool:
        return (
            el.tag == tag("presence")
            and el.get("from") == own
            and (el.get("type") == "error" or "110" in codes(el))
        )

    mine = await client.expect(is_self)
    if mine.get("type") == "error":
        raise JoinRefused(error_condition(mine), mine)
    match = _presence_from_room(room)
    others = [await client.expect(match) for _ in client.pending(match)]  # type: ignore[arg-type]
    joined = Joined(others, mine)

    def is_room_message(el: Element) -> bool:
        return el.tag == tag("message") and is_from(room)(el)  # type: ignore[operator]

    while True:
        msg = await client.expect(is_room_message)
        if msg.find(tag("subject")) is not None and msg.find(tag("body")) is None:
            joined.subject = msg
            return joined
        joined.history.append(msg)


async def user_in_room(
    server: XmppdServer, room: str, nick: str, *, prefix: str = "m", **kw: object
) -> tuple[XmlClient, Joined, str]:
    """A new account, logged in, that joined ``room`` as ``nick``."""
    jid = await new_account(server, prefix)
    client = await XmlClient.login(server, jid, PASSWORD, resource="r")
    joined = await join(client, room, nick, **kw)  # type: ignore[arg-type]
    return client, joined, jid


async def submit_config(
    client: XmlClient, room: str, fields: dict[str, str | list[str]]
) -> Element:
    """Submit a muc#roomconfig form with ``fields``; the IQ reply."""
    parts = [f"<field var='FORM_TYPE'><value>{ROOMCONFIG}</value></field>"]
    for var, value in fields.items():
        values = value if isinstance(value, list) else [value]
        inner = "".join(f"<value>{text(v)}</value>" for v in values)
        parts.append(f"<field{attrs(var=var)}>{inner}</field>")
    form = f"<x xmlns='{DATA}' type='submit'>{''.join(parts)}</x>"
    return await client.iq("set", f"<query xmlns='{MUC_OWNER}'>{form}</query>", to=room)


async def instant_room(client: XmlClient, room: str) -> Element:
    """Accept the default configuration of a new (locked) room (§10.1.2)."""
    return await client.iq(
        "set", f"<query xmlns='{MUC_OWNER}'><x xmlns='{DATA}' type='submit'/></query>", to=room
    )


async def create_room(
    server: XmppdServer, nick: str = "owner", fields: dict[str, str | list[str]] | None = None
) -> tuple[XmlClient, str, str]:
    """A new account that created, configured (``fields``) and entered a room; the
    client, the room JID and the owner's bare JID."""
    room = new_room(server)
    client, joined, jid = await user_in_room(server, room, nick, prefix="owner")
    assert {"110", "201"} <= codes(joined.self_presence)
    reply = await (submit_config(client, room, fields) if fields else instant_room(client, room))
    assert reply.get("type") == "result", etree.tostring(reply)
    return client, room, jid


async def admin_set(client: XmlClient, room: str, items: str) -> Element:
    return await client.iq("set", f"<query xmlns='{MUC_ADMIN}'>{items}</query>", to=room)


async def groupchat(
    client: XmlClient, room: str, body_text: str, *, sid: str | None = None
) -> None:
    client.send(
        f"<message{attrs(to=room, type='groupchat', id=sid)}><body>{text(body_text)}</body></message>"
    )


async def next_groupchat(client: XmlClient, room: str, body_text: str) -> Element:
    return await client.expect(
        lambda el: (
            el.tag == tag("message")
            and el.get("from", "").startswith(room)
            and body(el) == body_text
        )
    )


async def sync(client: XmlClient, room: str) -> None:
    """Wait until the room has handled everything ``client`` sent it: a disco#info of
    the room is answered after every earlier stanza of the stream (rooms handle their
    stanzas in order)."""
    reply = await client.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=room)
    assert reply.get("type") in ("result", "error")
