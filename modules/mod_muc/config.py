"""A room's configuration (XEP-0045 §10.2) and its data forms: ``muc#roomconfig`` for
owners (read, validated, written) and ``muc#roominfo`` for disco#info (§6.4)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Final

from xmppd.api import ns
from xmppd.api.stanza import Element, child, payload
from xmppd_modules.mod_muc import errors
from xmppd_modules.mod_muc.common import NS_ROOMCONFIG, NS_ROOMINFO

WHOIS: Final = ("moderators", "anyone")
ALLOW_PM: Final = ("anyone", "participants", "moderators", "none")

_FIELD: Final = f"{{{ns.DATA_FORMS}}}field"
_VALUE: Final = f"{{{ns.DATA_FORMS}}}value"


@dataclass(frozen=True, slots=True)
class RoomConfig:
    """Everything an owner can set. ``max_users`` 0 means the service's limit;
    ``history_length`` is how many messages a joining occupant may get."""

    name: str = ""
    description: str = ""
    persistent: bool = False
    public: bool = True
    members_only: bool = False
    password: str = ""
    moderated: bool = False
    max_users: int = 0
    whois: str = "moderators"
    history_length: int = 20
    allow_invites: bool = False
    change_subject: bool = False
    allow_pm: str = "anyone"
    allow_voice_requests: bool = True
    lang: str = ""
    archive: bool = True
    """A persistent room archives its groupchat messages (XEP-0313)."""

    @property
    def password_protected(self) -> bool:
        return bool(self.password)

    @property
    def non_anonymous(self) -> bool:
        return self.whois == "anyone"

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @staticmethod
    def from_json(text: str, default: RoomConfig) -> RoomConfig:
        known = {f.name for f in fields(RoomConfig)}
        try:
            data = {k: v for k, v in json.loads(text).items() if k in known}
        except (ValueError, AttributeError):
            return default
        return replace(default, **data)


# ----------------------------------------------------------------------------- reading


def _boolean(value: str) -> bool:
    if value in ("1", "true"):
        return True
    if value in ("0", "false"):
        return False
    raise ValueError("expected a boolean")


def _choice(allowed: tuple[str, ...]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in allowed:
            raise LookupError(f"expected one of {', '.join(allowed)}")
        return value

    return parse


def _count(value: str) -> int:
    if value in ("", "none"):
        return 0
    number = int(value)  # ValueError: not a number
    if number < 0:
        raise LookupError("expected a positive number")
    return number


def _text(limit: int) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if len(value) > limit:
            raise LookupError(f"at most {limit} characters")
        return value

    return parse


_FIELDS: Final[dict[str, tuple[str, Callable[[str], Any]]]] = {
    "muc#roomconfig_roomname": ("name", _text(200)),
    "muc#roomconfig_roomdesc": ("description", _text(2000)),
    "muc#roomconfig_lang": ("lang", _text(35)),
    "muc#roomconfig_persistentroom": ("persistent", _boolean),
    "muc#roomconfig_publicroom": ("public", _boolean),
    "muc#roomconfig_membersonly": ("members_only", _boolean),
    "muc#roomconfig_roomsecret": ("password", _text(200)),
    "muc#roomconfig_moderatedroom": ("moderated", _boolean),
    "muc#roomconfig_maxusers": ("max_users", _count),
    "muc#roomconfig_whois": ("whois", _choice(WHOIS)),
    "muc#maxhistoryfetch": ("history_length", _count),
    "muc#roomconfig_historylength": ("history_length", _count),
    "muc#roomconfig_allowinvites": ("allow_invites", _boolean),
    "muc#roomconfig_changesubject": ("change_subject", _boolean),
    "muc#roomconfig_allowpm": ("allow_pm", _choice(ALLOW_PM)),
    "muc#roomconfig_allowvoicerequests": ("allow_voice_requests", _boolean),
    "muc#roomconfig_enablearchiving": ("archive", _boolean),
}
_PASSWORD_PROTECTED: Final = "muc#roomconfig_passwordprotectedroom"
_JID_LISTS: Final[tuple[str, ...]] = ("muc#roomconfig_roomowners", "muc#roomconfig_roomadmins")


def form_values(form: Element) -> tuple[str | None, dict[str, list[str]]]:
    """A data form's FORM_TYPE and its other fields (var -> values)."""
    form_type: str | None = None
    values: dict[str, list[str]] = {}
    for field in form.findall(_FIELD):
        var = field.get("var")
        if not var:
            continue
        texts = [v.text or "" for v in field.findall(_VALUE)]
        if var == "FORM_TYPE":
            form_type = texts[0].strip() if texts else ""
        else:
            values[var] = texts
    return form_type, values


@dataclass(frozen=True, slots=True)
class Limits:
    """What the service allows whatever an owner asks for."""

    max_users: int
    max_history: int


def apply_form(
    config: RoomConfig, form: Element, limits: Limits
) -> tuple[RoomConfig, dict[str, list[str]]]:
    """The configuration after an owner's submitted ``muc#roomconfig`` form, and the
    JID-list fields (owners, admins) for the caller to apply.

    A value of the wrong type (text in a boolean or number field) is ``bad-request``; a
    well-formed value the room cannot take (an unknown choice, more occupants or
    history than the service allows, password protection without a password) is
    ``not-acceptable``. Fields this service does not know are ignored."""
    form_type, values = form_values(form)
    if form_type is not None and form_type != NS_ROOMCONFIG:
        raise errors.BAD_FORM(f"FORM_TYPE must be {NS_ROOMCONFIG}")
    changes: dict[str, Any] = {}
    for var, texts in values.items():
        known = _FIELDS.get(var)
        if known is None:
            continue
        attr, parse = known
        value = texts[0].strip() if texts and attr != "password" else (texts[0] if texts else "")
        try:
            changes[attr] = parse(value)
        except LookupError as exc:
            raise errors.FORM_REFUSED(f"{var}: {exc}") from None
        except ValueError as exc:
            raise errors.BAD_FORM(f"{var}: {exc}") from None
    protected: bool | None = None
    if _PASSWORD_PROTECTED in values:
        texts = values[_PASSWORD_PROTECTED]
        try:
            protected = _boolean(texts[0].strip() if texts else "")
        except ValueError as exc:
            raise errors.BAD_FORM(f"{_PASSWORD_PROTECTED}: {exc}") from None
    new = replace(config, **changes)
    if protected is False:
        new = replace(new, password="")
    elif protected and not new.password:
        raise errors.FORM_REFUSED("a password-protected room needs a password")
    if limits.max_users and new.max_users > limits.max_users:
        raise errors.FORM_REFUSED(f"at most {limits.max_users} occupants")
    if new.history_length > limits.max_history:
        raise errors.FORM_REFUSED(f"at most {limits.max_history} messages of history")
    lists: dict[str, list[str]] = {
        var: [t.strip() for t in values[var] if t.strip()] for var in _JID_LISTS if var in values
    }
    return new, lists


# ----------------------------------------------------------------------------- writing


def _field(
    form: Element,
    var: str,
    type_: str,
    label: str,
    values: list[str] | tuple[str, ...] = (),
    options: tuple[str, ...] = (),
) -> None:
    attrs = {"var": var}
    if type_:
        attrs["type"] = type_
    if label:
        attrs["label"] = label
    field = child(form, "field", attrs)
    for option in options:
        opt = child(field, "option", {"label": option})
        child(opt, "value", text=option)
    for value in values:
        child(field, "value", text=value)


def _bool(value: bool) -> list[str]:
    return ["1" if value else "0"]


def config_form(
    config: RoomConfig, owners: list[str], admins: list[str], limits: Limits
) -> Element:
    """The ``muc#roomconfig`` form an owner gets (§10.2), filled with ``config``."""
    form = payload(ns.DATA_FORMS, "x", {"type": "form"})
    child(form, "title", text="Room configuration")
    _field(form, "FORM_TYPE", "hidden", "", [NS_ROOMCONFIG])
    _field(form, "muc#roomconfig_roomname", "text-single", "Name", [config.name])
    _field(form, "muc#roomconfig_roomdesc", "text-single", "Description", [config.description])
    _field(form, "muc#roomconfig_lang", "text-single", "Language", [config.lang])
    _field(form, "muc#roomconfig_persistentroom", "boolean", "Persistent", _bool(config.persistent))
    _field(
        form,
        "muc#roomconfig_publicroom",
        "boolean",
        "Listed in the directory",
        _bool(config.public),
    )
    _field(
        form, "muc#roomconfig_membersonly", "boolean", "Members only", _bool(config.members_only)
    )
    _field(
        form,
        _PASSWORD_PROTECTED,
        "boolean",
        "Password protected",
        _bool(config.password_protected),
    )
    _field(form, "muc#roomconfig_roomsecret", "text-private", "Password", [config.password])
    _field(form, "muc#roomconfig_moderatedroom", "boolean", "Moderated", _bool(config.moderated))
    limit = str(limits.max_users) if limits.max_users else "none"
    choices = tuple(dict.fromkeys(v for v in ("10", "20", "50", "100", "500", limit)))
    _field(
        form,
        "muc#roomconfig_maxusers",
        "list-single",
        "Maximum occupants",
        [str(config.max_users) if config.max_users else limit],
        choices,
    )
    _field(
        form, "muc#roomconfig_whois", "list-single", "Who may see real JIDs", [config.whois], WHOIS
    )
    _field(
        form,
        "muc#maxhistoryfetch",
        "text-single",
        "Messages of history",
        [str(config.history_length)],
    )
    _field(
        form,
        "muc#roomconfig_allowinvites",
        "boolean",
        "Occupants may invite",
        _bool(config.allow_invites),
    )
    _field(
        form,
        "muc#roomconfig_changesubject",
        "boolean",
        "Occupants may change the subject",
        _bool(config.change_subject),
    )
    _field(
        form,
        "muc#roomconfig_allowpm",
        "list-single",
        "Who may send private messages",
        [config.allow_pm],
        ALLOW_PM,
    )
    _field(
        form,
        "muc#roomconfig_allowvoicerequests",
        "boolean",
        "Visitors may ask for voice",
        _bool(config.allow_voice_requests),
    )
    _field(
        form,
        "muc#roomconfig_enablearchiving",
        "boolean",
        "Archive messages (persistent rooms)",
        _bool(config.archive),
    )
    _field(form, "muc#roomconfig_roomowners", "jid-multi", "Owners", owners)
    _field(form, "muc#roomconfig_roomadmins", "jid-multi", "Admins", admins)
    return form


def info_form(
    config: RoomConfig, occupants: int, subject: str, avatar: tuple[str, ...] = ()
) -> Element:
    """The ``muc#roominfo`` extension of the room's disco#info (§6.4), with the
    avatar's hashes when the room has one (XEP-0486)."""
    form = payload(ns.DATA_FORMS, "x", {"type": "result"})
    _field(form, "FORM_TYPE", "hidden", "", [NS_ROOMINFO])
    _field(form, "muc#roominfo_description", "text-single", "Description", [config.description])
    _field(form, "muc#roominfo_occupants", "text-single", "Occupants", [str(occupants)])
    _field(form, "muc#roominfo_subject", "text-single", "Subject", [subject])
    _field(
        form,
        "muc#roominfo_subjectmod",
        "boolean",
        "Occupants may change the subject",
        _bool(config.change_subject),
    )
    if config.lang:
        _field(form, "muc#roominfo_lang", "text-single", "Language", [config.lang])
    _field(form, "muc#roomconfig_allowinvites", "boolean", "", _bool(config.allow_invites))
    _field(form, "muc#roomconfig_allowpm", "list-single", "", [config.allow_pm])
    if avatar:
        _field(form, "muc#roominfo_avatarhash", "text-multi", "Avatar hash", list(avatar))
    return form


def feature_vars(config: RoomConfig, locked: bool) -> list[str]:
    """The ``muc_*`` features of a room's disco#info (§15.3)."""
    return [
        "muc_persistent" if config.persistent else "muc_temporary",
        "muc_public" if config.public else "muc_hidden",
        "muc_membersonly" if config.members_only else "muc_open",
        "muc_passwordprotected" if config.password else "muc_unsecured",
        "muc_moderated" if config.moderated else "muc_unmoderated",
        "muc_nonanonymous" if config.non_anonymous else "muc_semianonymous",
    ] + (["muc_unconfigured"] if locked else [])
