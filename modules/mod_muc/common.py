"""XEP-0045 vocabulary shared by the room, the service and the store: namespaces,
affiliations and roles with their ranks."""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import TYPE_CHECKING, Final, Literal

from pydantic import Field

from xmppd.api import AccessRule, Duration, Module, ModuleContext, Options, Size, StanzaError

if TYPE_CHECKING:
    from xmppd.api.stanza import Element

NS_MUC: Final = "http://jabber.org/protocol/muc"
NS_MUC_USER: Final = "http://jabber.org/protocol/muc#user"
NS_MUC_ADMIN: Final = "http://jabber.org/protocol/muc#admin"
NS_MUC_OWNER: Final = "http://jabber.org/protocol/muc#owner"
NS_MUC_UNIQUE: Final = "http://jabber.org/protocol/muc#unique"
NS_MUC_STABLE_ID: Final = "http://jabber.org/protocol/muc#stable_id"
NS_ROOMCONFIG: Final = "http://jabber.org/protocol/muc#roomconfig"
NS_ROOMINFO: Final = "http://jabber.org/protocol/muc#roominfo"
NS_OCCUPANT_ID: Final = "urn:xmpp:occupant-id:0"
NS_STANZA_ID: Final = "urn:xmpp:sid:0"
NS_SELF_PING: Final = "urn:xmpp:muc:self-ping:0"  # reserved: XEP-0410 (not yet)
NS_MUC_REQUEST: Final = "http://jabber.org/protocol/muc#request"
NS_MUC_REGISTER: Final = "http://jabber.org/protocol/muc#register"
NS_CONFERENCE: Final = "jabber:x:conference"  # XEP-0249 direct invitations
NS_VCARD: Final = "vcard-temp"
NS_VCARD_UPDATE: Final = "vcard-temp:x:update"

LISTED: Final = "muc-room"
"""What a cluster node announces of the temporary public rooms it holds."""

Affiliation = Literal["owner", "admin", "member", "none", "outcast"]
Role = Literal["moderator", "participant", "visitor", "none"]

AFFILIATIONS: Final[tuple[Affiliation, ...]] = ("owner", "admin", "member", "none", "outcast")
ROLES: Final[tuple[Role, ...]] = ("moderator", "participant", "visitor", "none")

AFFILIATION_RANK: Final[dict[str, int]] = {
    "owner": 4,
    "admin": 3,
    "member": 2,
    "none": 1,
    "outcast": 0,
}
ROLE_RANK: Final[dict[str, int]] = {"moderator": 3, "participant": 2, "visitor": 1, "none": 0}


def avatar_hashes(vcard: Element | None) -> tuple[str, ...]:
    """SHA-1 (hex) of each ``PHOTO/BINVAL`` image of a vcard-temp, as XEP-0486 lists
    them in ``muc#roominfo_avatarhash``. ``bad-request`` for a BINVAL that is not
    base64."""
    if vcard is None:
        return ()
    hashes: list[str] = []
    for binval in vcard.iterfind(f"{{{NS_VCARD}}}PHOTO/{{{NS_VCARD}}}BINVAL"):
        try:
            image = base64.b64decode("".join((binval.text or "").split()), validate=True)
        except (binascii.Error, ValueError):
            raise StanzaError("bad-request", "a PHOTO's BINVAL is not base64") from None
        if image:
            hashes.append(hashlib.sha1(image).hexdigest())  # XEP-0153 names SHA-1
    return tuple(hashes)


class Status:
    """The muc#user status codes this service sends (XEP-0045 §15.6)."""

    NON_ANONYMOUS: Final = "100"
    SELF: Final = "110"
    CONFIG_CHANGED: Final = "104"
    LOGGING: Final = "170"
    NOT_LOGGING: Final = "171"
    NOW_NON_ANONYMOUS: Final = "172"
    NOW_SEMI_ANONYMOUS: Final = "173"
    CREATED: Final = "201"
    NICK_MODIFIED: Final = "210"
    BANNED: Final = "301"
    NEW_NICK: Final = "303"
    KICKED: Final = "307"
    AFFILIATION_CHANGED: Final = "321"
    MEMBERS_ONLY: Final = "322"
    SHUTDOWN: Final = "332"
    TECHNICAL: Final = "333"


class MucOptions(Options):
    domain: str = Field(
        "",
        max_length=1023,
        description="The service's domain; empty means `conference.<host>`.",
    )
    name: str = Field("Chatrooms", max_length=200, description="The service's name in disco.")
    create_rooms: AccessRule = Field(
        AccessRule("local"),
        description="Who may create rooms: `anyone`, `local`, `admins`, `nobody` or a list "
        "of JIDs and domains.",
    )
    lock_new_rooms: bool = Field(
        True,
        description="A new room stays locked (nobody else may enter) until its owner "
        "configures it or accepts the defaults, as XEP-0045 §10.1 says; `false` makes new "
        "rooms usable at once.",
    )
    max_rooms_per_user: int = Field(
        100, ge=0, description="Rooms one account may own (0: no limit)."
    )
    max_occupants: int = Field(
        1000, ge=1, le=1_000_000, description="Occupants a room may hold at most."
    )
    max_affiliations: int = Field(
        20_000,
        ge=10,
        description="Accounts a room may list with an affiliation (members, admins, owners, "
        "outcasts), and nicknames registered in it: past it, adding one is refused "
        "(resource-constraint). Anyone may register in an open room (which makes them a "
        "member), so without a limit a remote server could grow any room without bound.",
    )
    unload_idle_after: Duration = Field(
        600.0,
        ge=0,
        description="A persistent room with nobody in it and no stanza for this long is "
        "unloaded from memory (its state is stored; the next stanza loads it again), so "
        "that rooms once looked at do not stay loaded for ever. A room whose archive is "
        "off keeps its in-memory history loaded. 0: never.",
    )
    max_history: int = Field(
        100,
        ge=0,
        le=10_000,
        description="Messages of history a room keeps in memory for joining occupants.",
    )
    default_history: int = Field(20, ge=0, le=10_000, description="History length of a new room.")
    max_nick_length: int = Field(64, ge=1, le=1023, description="Longest nickname, in characters.")
    max_message_size: Size = Field(
        65536, ge=256, description="Largest groupchat or private message, in bytes."
    )
    messages_per_second: float = Field(
        5.0, gt=0, description="Messages an occupant may send per second, on average."
    )
    message_burst: int = Field(
        20, ge=1, description="Messages an occupant may send at once before the rate applies."
    )
    max_vcard_size: Size = Field(
        131072,
        ge=1024,
        description="Largest room vCard (where owners publish the room's avatar, XEP-0486), "
        "in bytes.",
    )
    persistent_by_default: bool = Field(False, description="Whether new rooms are persistent.")
    public_by_default: bool = Field(
        True, description="Whether new rooms are listed in disco#items."
    )


module: Final = Module(
    "muc",
    "XEP-0045: Multi-User Chat (group chat rooms on conference.<host>)",
    options=MucOptions,
    protocols=(
        "XEP-0045 v1.34",
        "XEP-0249 v1.2",
        "XEP-0313 v1.1 (room archives)",
        "XEP-0359 v0.7",
        "XEP-0421 v0.1",
        "XEP-0424 v0.4",
        "XEP-0486 v0.1 (room avatars)",
        "XEP-0425 v0.3",
    ),
)
Ctx = ModuleContext[MucOptions]
