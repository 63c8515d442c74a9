"""The error conditions of the MUC service, declared once (XEP-0045 §7-10 name which
condition each refusal uses)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from xmppd.api import StanzaError


@dataclass(frozen=True, slots=True)
class MucError:
    """One refusal: the condition, its type when it differs from the usual one, and the
    text the user sees."""

    condition: str
    text: str
    type: str | None = None

    def __call__(self, detail: str | None = None) -> StanzaError:
        text = f"{self.text}: {detail}" if detail else self.text
        return StanzaError(self.condition, text, type=self.type)  # type: ignore[arg-type]


NICK_MISSING: Final = MucError("jid-malformed", "a nickname is required to enter a room")
NICK_INVALID: Final = MucError("not-acceptable", "this nickname is not acceptable")
NICK_CONFLICT: Final = MucError("conflict", "this nickname is already in use")
NICK_RESERVED: Final = MucError("conflict", "this nickname is registered to someone else")
NICK_LOCKED: Final = MucError("not-acceptable", "nicknames are locked in this room")
BANNED: Final = MucError("forbidden", "you are banned from this room")
MEMBERS_ONLY: Final = MucError("registration-required", "this room is members-only")
BAD_PASSWORD: Final = MucError("not-authorized", "a password is required to enter this room")
ROOM_FULL: Final = MucError("service-unavailable", "this room is full")
ROOM_LOCKED: Final = MucError("item-not-found", "this room is not configured yet")
CREATE_DENIED: Final = MucError("not-allowed", "you may not create rooms on this service")
TOO_MANY_ROOMS: Final = MucError(
    "policy-violation", "you own as many rooms as this service allows", "cancel"
)
NOT_OCCUPANT: Final = MucError("not-acceptable", "only occupants may send to this room")
NO_VOICE: Final = MucError("forbidden", "you have no voice in this room")
SUBJECT_DENIED: Final = MucError("forbidden", "you may not change the subject of this room")
NO_SUCH_OCCUPANT: Final = MucError("item-not-found", "no occupant with this nickname")
PM_DENIED: Final = MucError("not-allowed", "private messages are not allowed in this room")
GROUPCHAT_TO_OCCUPANT: Final = MucError(
    "bad-request", "a groupchat message goes to the room, not to an occupant"
)
RATE_LIMITED: Final = MucError("resource-constraint", "you are sending too fast")
ROOM_LISTS_FULL: Final = MucError(
    "resource-constraint", "this room lists as many accounts as it may (max_affiliations)"
)
TOO_LARGE: Final = MucError("policy-violation", "this message is too large for the room")
NOT_OWNER: Final = MucError("forbidden", "only an owner may do this")
BAD_FORM: Final = MucError("bad-request", "the configuration form is malformed")
FORM_REFUSED: Final = MucError("not-acceptable", "this configuration is not acceptable")
NO_SUCH_ROOM: Final = MucError("item-not-found", "no such room")
BAD_REQUEST: Final = MucError("bad-request", "this request is malformed")
INVITE_DENIED: Final = MucError("forbidden", "occupants may not invite others to this room")
INVITE_BANNED: Final = MucError("not-allowed", "this user is banned from the room")
VOICE_REQUESTS_OFF: Final = MucError("forbidden", "this room does not take voice requests")
ARCHIVE_MEMBERS_ONLY: Final = MucError(
    "forbidden", "the archive of a members-only room is for its members"
)
ARCHIVE_PASSWORD: Final = MucError(
    "forbidden", "the archive of a password-protected room is for its occupants"
)
NOT_MODERATOR: Final = MucError("forbidden", "only moderators may do this")
NO_SUCH_MESSAGE: Final = MucError("item-not-found", "no such message in this room")
NOT_YOUR_MESSAGE: Final = MucError("forbidden", "you may retract only your own messages")
