"""Hooks of the MUC service, for modules and hook files that act on rooms (a word
filter, an audit log, a bot). They run on the bus of the host that serves the MUC
domain. ``docs/hooks.md`` lists them under "Hooks declared by modules"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from xmppd.api import JID, EventHook, FoldHook
from xmppd.api.stanza import Element


@dataclass(frozen=True, slots=True)
class RoomEvent:
    """A room, by its bare JID, and who caused the event (``None``: the service)."""

    room: JID
    actor: JID | None


@dataclass(frozen=True, slots=True)
class OccupantEvent:
    """An occupant of ``room``: its nickname, real full JID, role and affiliation (after
    the change); ``reason`` is why it happened (``"kick"``, ``"ban"``, ``"leave"``...)."""

    room: JID
    nick: str
    jid: JID
    role: str
    affiliation: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class GroupchatContext:
    """A groupchat message about to be sent to every occupant of ``room``: the sender's
    nickname and real full JID."""

    room: JID
    nick: str
    sender: JID


ROOM_CREATED: Final = EventHook[RoomEvent](
    "muc_room_created", "host", "A room was created (``actor`` is its first owner)."
)

ROOM_DESTROYED: Final = EventHook[RoomEvent](
    "muc_room_destroyed",
    "host",
    "A room was destroyed: by an owner (``actor``), or by the service when a temporary "
    "room's last occupant left (``actor`` is ``None``).",
)

ROOM_CONFIGURED: Final = EventHook[RoomEvent](
    "muc_room_configured", "host", "An owner submitted a new configuration for a room."
)

OCCUPANT_JOINED: Final = EventHook[OccupantEvent](
    "muc_occupant_joined", "host", "An occupant entered a room (after its presence was sent)."
)

OCCUPANT_LEFT: Final = EventHook[OccupantEvent](
    "muc_occupant_left",
    "host",
    "An occupant left a room: it left, was kicked or banned, or its session went away.",
)

OCCUPANT_ROLE_CHANGED: Final = EventHook[OccupantEvent](
    "muc_occupant_role_changed",
    "host",
    "An occupant's role or affiliation changed (voice granted, made moderator...).",
)

GROUPCHAT_MESSAGE: Final = FoldHook[Element, GroupchatContext](
    "muc_groupchat_message",
    "host",
    "A groupchat message an occupant sent, before the room stamps it and sends it to "
    "every occupant. Return it (a changed copy to rewrite it) or ``DROP`` to discard it "
    "silently; raise ``StanzaError`` to refuse it with an error to the sender.",
)
