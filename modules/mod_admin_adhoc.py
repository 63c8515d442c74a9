"""XEP-0133: Service Administration — the host's admin commands over XEP-0050 ad-hoc
commands: accounts, sessions, rosters, counts, announcements, the message of the day,
and export and erasure of an account's data (GDPR).

Only requesters that pass the ``allow`` rule (by default the host's ``admins``) see and
run them; every account named must belong to this host.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Final

from pydantic import Field

from xmppd.api import (
    JID,
    AccessRule,
    AccountExists,
    InvalidJID,
    Module,
    ModuleContext,
    NoSuchAccount,
    Options,
    StanzaError,
    ns,
)
from xmppd.api.adhoc import (
    ADHOC,
    Ask,
    Command,
    CommandCall,
    Done,
    FormField,
    Step,
    data_form,
)
from xmppd.api.stanza import Element, child, element, payload, serialize
from xmppd_modules.mod_motd import MOTD
from xmppd_modules.mod_roster import ROSTER

NS_ADMIN: Final = "http://jabber.org/protocol/admin"
"""XEP-0133: the FORM_TYPE of every form, and the prefix of the command nodes."""
NODE_ERASE: Final = "urn:xmppd:admin:0#erase-user"
"""Our own command: erase an account's data now or after a grace period."""
NODE_EXPORT: Final = "urn:xmppd:admin:0#export-user"
"""Our own command: everything stored about an account, as a XEP-0227 document."""
MAX_EXPORT_BYTES: Final = 1024 * 1024
"""Largest export sent in a command's result: a bigger stanza could overrun the
admin's connection (``c2s.max_write_buffer``) or the client's own limit; the CLI and
the REST API write exports of any size."""
MAX_JIDS: Final = 100
"""Accounts one command acts on."""
MAX_PASSWORD: Final = 1024
MAX_TEXT: Final = 4000
LIST_SIZES: Final = ("25", "50", "75", "100", "150", "200")


class AdminAdhocOptions(Options):
    allow: AccessRule = Field(
        AccessRule("admins"),
        description="Who may see and run the admin commands: 'admins' (the host's "
        "admins), 'nobody', or a list of JIDs and domains.",
    )
    announce_type: str = Field(
        "headline",
        pattern="^(headline|normal)$",
        description="Message type of announcements: 'headline' or 'normal'.",
    )


module = Module(
    "admin_adhoc",
    "XEP-0133: Service Administration",
    options=AdminAdhocOptions,
    depends=("adhoc", "roster", "motd"),
    protocols=("XEP-0133 v1.3",),
)
Ctx = ModuleContext[AdminAdhocOptions]
Handler = Callable[[Ctx, CommandCall], Awaitable[Step]]


# ----------------------------------------------------------------------------- helpers


def _form(title: str, *fields: FormField, instructions: str = "") -> Element:
    return data_form("form", fields, title=title, instructions=instructions, form_type=NS_ADMIN)


def _result(*fields: FormField) -> Element:
    return data_form("result", fields, form_type=NS_ADMIN)


def _account(ctx: Ctx, text: str) -> JID:
    """An account JID of this host (``jid-malformed``, or ``not-allowed`` for another
    host: a host's admin manages only that host)."""
    try:
        jid = JID.parse(text.strip())
    except InvalidJID:
        raise StanzaError("jid-malformed", f"not a JID: {text[:100]!r}") from None
    if not jid.local:
        raise StanzaError("jid-malformed", f"not an account JID: {text[:100]!r}")
    if jid.domain != ctx.domain:
        raise StanzaError("not-allowed", f"{jid.bare} is not an account of {ctx.domain}")
    return jid


def _accounts(ctx: Ctx, call: CommandCall, var: str = "accountjids") -> list[JID]:
    values = [v for v in call.values.get(var, ()) if v.strip()]
    if not values:
        raise StanzaError("bad-request", f"field {var!r} is required")
    if len(values) > MAX_JIDS:
        raise StanzaError("policy-violation", f"at most {MAX_JIDS} accounts at once")
    return [_account(ctx, v) for v in values]


def _password(call: CommandCall, var: str = "password") -> str:
    password = call.value(var)
    if not password:
        raise StanzaError("bad-request", "the password may not be empty")
    if len(password) > MAX_PASSWORD:
        raise StanzaError("policy-violation", "the password is too long")
    return password


def _check_policy(ctx: Ctx, password: str) -> None:
    """The server's password policy (``accounts.min_password_length``, PRECIS), as
    in-band registration, the CLI and the REST API apply it."""
    problem = ctx.password_problem(password)
    if problem is not None:
        raise StanzaError("not-acceptable", problem)


def _text(call: CommandCall, var: str) -> str:
    text = "\n".join(call.values.get(var, ()))
    if len(text) > MAX_TEXT:
        raise StanzaError("policy-violation", f"{var} is longer than {MAX_TEXT} characters")
    return text


def _account_field() -> FormField:
    return FormField("accountjid", "jid-single", "The Jabber ID of the account", True)


def _accounts_field(label: str) -> FormField:
    return FormField("accountjids", "jid-multi", label, True)


# ----------------------------------------------------------------------------- accounts


async def add_user(ctx: Ctx, call: CommandCall) -> Step:
    """XEP-0133 §4.1."""
    if call.stage == 0:
        return Ask(
            _form(
                "Adding a user",
                FormField("accountjid", "jid-single", "The Jabber ID for the account", True),
                FormField("password", "text-private", "The password for this account", True),
                FormField("password-verify", "text-private", "Retype password", True),
            )
        )
    jid = _account(ctx, call.required("accountjid"))
    password = _password(call)
    if call.value("password-verify") != password:
        raise StanzaError("bad-request", "the passwords differ")
    if await ctx.account_exists(jid):
        raise StanzaError("conflict", f"{jid.bare} already exists")
    _check_policy(ctx, password)
    try:
        await ctx.register_user(jid, password)
    except AccountExists:
        raise StanzaError("conflict", f"{jid.bare} already exists") from None
    ctx.log.info("admin %s created account %s", call.requester.bare, jid.bare)
    return Done(f"Created {jid.bare}")


async def delete_user(ctx: Ctx, call: CommandCall) -> Step:
    """XEP-0133 §4.2: the accounts and all their data; their sessions end."""
    if call.stage == 0:
        return Ask(_form("Deleting users", _accounts_field("The Jabber ID(s) to delete")))
    jids = _accounts(ctx, call)
    missing = [str(j.bare) for j in jids if not await ctx.account_exists(j)]
    if missing:
        raise StanzaError("item-not-found", f"no such account: {', '.join(missing)}")
    for jid in jids:
        await ctx.remove_user(jid)
        ctx.log.info("admin %s deleted account %s", call.requester.bare, jid.bare)
    return Done(f"Deleted {', '.join(str(j.bare) for j in jids)}")


async def change_password(ctx: Ctx, call: CommandCall) -> Step:
    """XEP-0133 §4.7."""
    if call.stage == 0:
        return Ask(
            _form(
                "Changing a user's password",
                _account_field(),
                FormField("password", "text-private", "The new password", True),
            )
        )
    jid = _account(ctx, call.required("accountjid"))
    password = _password(call)
    if not await ctx.account_exists(jid):
        raise StanzaError("item-not-found", f"no such account: {jid.bare}")
    _check_policy(ctx, password)
    try:
        await ctx.set_password(jid, password)
    except NoSuchAccount:
        raise StanzaError("item-not-found", f"no such account: {jid.bare}") from None
    ctx.log.info("admin %s changed the password of %s", call.requester.bare, jid.bare)
    return Done(f"Changed the password of {jid.bare}")


async def end_session(ctx: Ctx, call: CommandCall) -> Step:
    """XEP-0133 §4.5: a full JID ends that session, a bare JID every session of it."""
    if call.stage == 0:
        return Ask(_form("Ending sessions", _accounts_field("The Jabber ID(s) whose session ends")))
    ended = 0
    for jid in _accounts(ctx, call):
        sessions = [s for s in ctx.sessions.of(jid.bare) if not jid.resource or s.jid == jid]
        for session in sessions:
            ctx.sessions.close(session, "policy-violation", "session ended by an administrator")
        ended += len(sessions)
    ctx.log.info("admin %s ended %d sessions", call.requester.bare, ended)
    return Done(f"Ended {ended} session(s)")


async def get_roster(ctx: Ctx, call: CommandCall) -> Step:
    """XEP-0133 §4.12: the result form carries the roster as ``jabber:iq:roster``."""
    if call.stage == 0:
        return Ask(_form("Getting a user's roster", _account_field()))
    jid = _account(ctx, call.required("accountjid"))
    if not await ctx.account_exists(jid):
        raise StanzaError("item-not-found", f"no such account: {jid.bare}")
    form = _result(FormField("accountjid", "jid-single", "The Jabber ID", values=(str(jid.bare),)))
    query = payload(ns.ROSTER, "query")
    for item in (await ctx.service(ROSTER).items(jid.bare)).values():
        item.to_xml(query)
    form.append(query)
    return Done(form=form)


# ----------------------------------------------------------------------------- counts and lists


async def registered_count(ctx: Ctx, call: CommandCall) -> Step:
    """XEP-0133 §4.17."""
    n = await ctx.count_users()
    field = FormField("registeredusersnum", "text-single", "Registered users", values=(str(n),))
    return Done(form=_result(field))


def _online_accounts(ctx: Ctx) -> list[JID]:
    return sorted({s.jid.bare for s in ctx.sessions if s.domain == ctx.domain}, key=str)


async def online_count(ctx: Ctx, call: CommandCall) -> Step:
    """XEP-0133 §4.20: accounts with at least one session."""
    n = len(_online_accounts(ctx))
    field = FormField("onlineusersnum", "text-single", "Online users", values=(str(n),))
    return Done(form=_result(field))


def _max_items() -> FormField:
    options = tuple((n, n) for n in LIST_SIZES)
    return FormField(
        "max_items", "list-single", "Maximum number of items", values=("100",), options=options
    )


def _limit(call: CommandCall) -> int:
    value = call.value("max_items", "100")
    if value not in LIST_SIZES:
        raise StanzaError("bad-request", "max_items must be one of the options")
    return int(value)


async def online_list(ctx: Ctx, call: CommandCall) -> Step:
    """XEP-0133 §4.21."""
    if call.stage == 0:
        return Ask(_form("Listing online users", _max_items()))
    jids = tuple(str(j) for j in _online_accounts(ctx)[: _limit(call)])
    return Done(form=_result(FormField("onlineuserjids", "jid-multi", "Online users", values=jids)))


async def registered_list(ctx: Ctx, call: CommandCall) -> Step:
    """XEP-0133 §4.18."""
    if call.stage == 0:
        return Ask(_form("Listing registered users", _max_items()))
    users = await ctx.list_users(_limit(call))
    jids = tuple(f"{u}@{ctx.domain}" for u in users)
    field = FormField("registereduserjids", "jid-multi", "Registered users", values=jids)
    return Done(form=_result(field))


# ----------------------------------------------------------------------------- announcements


async def announce(ctx: Ctx, call: CommandCall) -> Step:
    """XEP-0133 §4.23: a message to every online session of the host."""
    if call.stage == 0:
        return Ask(
            _form(
                "Making an announcement",
                FormField("subject", "text-single", "Subject"),
                FormField("announcement", "text-multi", "Announcement", True),
            )
        )
    text = _text(call, "announcement")
    if not text.strip():
        raise StanzaError("bad-request", "the announcement is empty")
    subject = call.value("subject")[:200]
    message = element("message", {"type": ctx.options.announce_type, "from": ctx.domain})
    if subject:
        child(message, "subject", text=subject)
    child(message, "body", text=text)
    targets = [s.jid for s in ctx.sessions if s.domain == ctx.domain and s.jid is not None]
    await ctx.send_many(message, targets)
    ctx.log.info("admin %s announced to %d sessions", call.requester.bare, len(targets))
    return Done(f"Sent to {len(targets)} session(s)")


async def set_motd(ctx: Ctx, call: CommandCall) -> Step:
    """XEP-0133 §4.25 (and §4.26, edit: the form shows the current message)."""
    motd = ctx.service(MOTD)
    if call.stage == 0:
        current = motd.current
        return Ask(
            _form(
                "Setting the message of the day",
                FormField("subject", "text-single", "Subject", values=(current.subject or "",)),
                FormField(
                    "motd",
                    "text-multi",
                    "Message of the day",
                    True,
                    values=tuple(current.text.splitlines()),
                ),
                instructions="Sessions that come online from now on receive it.",
            )
        )
    text = _text(call, "motd")
    if not text.strip():
        raise StanzaError("bad-request", "the message is empty (use delete-motd)")
    await motd.set(text, call.value("subject")[:200] or None)
    ctx.log.info("admin %s set the message of the day", call.requester.bare)
    return Done("Message of the day set")


async def delete_motd(ctx: Ctx, call: CommandCall) -> Step:
    """XEP-0133 §4.27."""
    await ctx.service(MOTD).set("")
    ctx.log.info("admin %s deleted the message of the day", call.requester.bare)
    return Done("Message of the day deleted")


# ----------------------------------------------------------------------------- export


async def export_user(ctx: Ctx, call: CommandCall) -> Step:
    """Everything stored about an account (GDPR access and portability): the result
    form names the account and the number of stored files, and carries the XEP-0227
    ``<server-data>`` document, as ``get-user-roster`` carries the roster. The files
    themselves (uploads) come only with ``xmppd export`` or the REST API."""
    if call.stage == 0:
        return Ask(_form("Exporting a user's data", _account_field()))
    jid = _account(ctx, call.required("accountjid"))
    try:
        document, files = await ctx.export_user(jid)
    except NoSuchAccount:
        raise StanzaError("item-not-found", f"no such account: {jid.bare}") from None
    size = len(serialize(document))
    if size > MAX_EXPORT_BYTES:
        raise StanzaError(
            "policy-violation",
            f"the export of {jid.bare} is {size} bytes, more than an ad-hoc result "
            "carries: use xmppd export or the REST API",
        )
    form = _result(
        FormField("accountjid", "jid-single", "The Jabber ID", values=(str(jid.bare),)),
        FormField("files", "text-single", "Stored files (not included)", values=(str(files),)),
    )
    form.append(document)
    ctx.log.info("admin %s exported %s", call.requester.bare, jid.bare)
    return Done(form=form)


# ----------------------------------------------------------------------------- erasure


async def erase_user(ctx: Ctx, call: CommandCall) -> Step:
    """Erase accounts' data (GDPR), now or after a grace period during which the
    accounts are disabled. Three stages: the accounts, a confirmation, the result."""
    if call.stage == 0:
        return Ask(
            _form(
                "Erasing users' data",
                _accounts_field("The Jabber ID(s) to erase"),
                FormField("grace", "text-single", "Grace period in days (0: now)", values=("0",)),
                instructions="The accounts are disabled at once; their data is deleted "
                "after the grace period.",
            ),
            last=False,
        )
    if call.stage == 1:
        jids = _accounts(ctx, call)
        try:
            days = float(call.value("grace", "0") or "0")
        except ValueError:
            raise StanzaError("bad-request", "the grace period is a number of days") from None
        if not 0 <= days <= 366:
            raise StanzaError("bad-request", "the grace period is 0 to 366 days")
        missing = [str(j.bare) for j in jids if not await ctx.account_exists(j)]
        if missing:
            raise StanzaError("item-not-found", f"no such account: {', '.join(missing)}")
        names = ", ".join(str(j.bare) for j in jids)
        when = "now" if days == 0 else f"in {days:g} days"
        confirm = _form(
            "Confirm erasure",
            FormField("confirm", "boolean", f"Erase {names} {when}?", True, values=("0",)),
        )
        return Ask(confirm, state={"jids": [str(j.bare) for j in jids], "days": days})
    jids = [JID.parse(str(j)) for j in call.state.get("jids", ())]  # type: ignore[attr-defined]
    days = float(call.state.get("days", 0.0))  # type: ignore[arg-type]
    if call.value("confirm") not in ("1", "true"):
        return Done("Nothing was erased")
    done = []
    for jid in jids:
        try:
            due = await ctx.erase_user(jid, days * 86400.0)
        except NoSuchAccount:
            done.append(f"{jid}: no such account")
            continue
        done.append(f"{jid}: {'erased' if due is None else 'disabled, erased later'}")
        ctx.log.info("admin %s erased (grace %.2f days) %s", call.requester.bare, days, jid)
    return Done("; ".join(done))


# ----------------------------------------------------------------------------- registry

COMMANDS: Final[tuple[tuple[str, str, Handler], ...]] = (
    ("add-user", "Add a User", add_user),
    ("delete-user", "Delete a User", delete_user),
    ("end-user-session", "End a User Session", end_session),
    ("change-user-password", "Change User Password", change_password),
    ("get-user-roster", "Get User Roster", get_roster),
    ("get-registered-users-num", "Get Number of Registered Users", registered_count),
    ("get-registered-users-list", "Get List of Registered Users", registered_list),
    ("get-online-users-num", "Get Number of Online Users", online_count),
    ("get-online-users-list", "Get List of Online Users", online_list),
    ("announce", "Send Announcement to Online Users", announce),
    ("set-motd", "Set Message of the Day", set_motd),
    ("edit-motd", "Edit Message of the Day", set_motd),
    ("delete-motd", "Delete Message of the Day", delete_motd),
)
"""XEP-0133 commands: node suffix (after ``http://jabber.org/protocol/admin#``), name,
handler."""


@module.on_load
async def register(ctx: Ctx) -> None:
    registry = ctx.service(ADHOC)

    def allowed(jid: JID) -> bool:
        return ctx.may(ctx.options.allow, jid)

    for suffix, name, handler in COMMANDS:
        registry.add(
            Command(f"{NS_ADMIN}#{suffix}", name, functools.partial(handler, ctx), allowed)
        )
    registry.add(
        Command(NODE_ERASE, "Erase User Data (GDPR)", functools.partial(erase_user, ctx), allowed)
    )
    registry.add(
        Command(
            NODE_EXPORT, "Export User Data (GDPR)", functools.partial(export_user, ctx), allowed
        )
    )


@module.on_unload
async def unregister(ctx: Ctx) -> None:
    registry = ctx.optional_service(ADHOC)
    if registry is not None:
        for suffix, _, _ in COMMANDS:
            registry.remove(f"{NS_ADMIN}#{suffix}")
        registry.remove(NODE_ERASE)
        registry.remove(NODE_EXPORT)
