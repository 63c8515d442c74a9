"""XEP-0050: Ad-Hoc Commands — the protocol, sessions and discovery of the commands
that other modules add to the host's registry (``xmppd.api.adhoc.ADHOC``).

A command is listed (disco#items of node ``http://jabber.org/protocol/commands`` on the
host) and runs only for requesters it allows; others get ``forbidden``. A multi-stage
command keeps a session, bound to the requester's full JID, until it completes, is
cancelled or times out.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from dataclasses import dataclass, field
from typing import Final

from pydantic import Field

from xmppd.api import (
    JID,
    Duration,
    IqRequest,
    Module,
    ModuleContext,
    Options,
    Scope,
    StanzaError,
    hooks,
    ns,
)
from xmppd.api.adhoc import (
    ADHOC,
    NS_COMMANDS,
    Ask,
    Command,
    CommandCall,
    Done,
    Step,
    read_form,
)
from xmppd.api.hooks import DiscoIdentity, DiscoInfo, DiscoItem, DiscoQuery
from xmppd.api.stanza import Element, child, copy, payload

ACTIONS: Final = frozenset({"execute", "next", "prev", "complete", "cancel"})


class AdhocOptions(Options):
    session_timeout: Duration = Field(
        "10m",
        validate_default=True,
        gt=0,
        le=86400,
        description="How long a multi-stage command waits for the requester's next "
        "stage; later submissions get 'not-allowed' with <session-expired/>.",
    )
    max_sessions_per_requester: int = Field(
        5, ge=1, le=100, description="Open multi-stage commands per requester (full JID)."
    )
    max_sessions: int = Field(
        1000, ge=1, le=100_000, description="Open multi-stage commands on the host."
    )


module = Module(
    "adhoc",
    "XEP-0050: Ad-Hoc Commands",
    options=AdhocOptions,
    protocols=("XEP-0050 v1.3",),
)
Ctx = ModuleContext[AdhocOptions]


class AdhocErrors:
    """The XEP-0050 §4.6 application conditions, with their stanza conditions."""

    @staticmethod
    def _error(condition: str, app: str, text: str) -> StanzaError:
        return StanzaError(condition, text, application=payload(NS_COMMANDS, app))

    @classmethod
    def malformed_action(cls) -> StanzaError:
        return cls._error("bad-request", "malformed-action", "unknown action")

    @classmethod
    def bad_action(cls, text: str = "that action is not offered at this stage") -> StanzaError:
        return cls._error("bad-request", "bad-action", text)

    @classmethod
    def bad_sessionid(cls) -> StanzaError:
        return cls._error("bad-request", "bad-sessionid", "no such session for this command")

    @classmethod
    def session_expired(cls) -> StanzaError:
        return cls._error("not-allowed", "session-expired", "the command session timed out")

    @classmethod
    def bad_payload(cls) -> StanzaError:
        return cls._error("bad-request", "bad-payload", "expected a submitted data form")


@dataclass(slots=True)
class _Session:
    requester: JID
    node: str
    expires: float
    asked: list[Ask] = field(default_factory=list)
    """The forms shown, in order (``prev`` goes back one)."""


class Commands:
    """The host's commands and open command sessions (in memory: a restart ends them)."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self._commands: dict[str, Command] = {}
        self._sessions: dict[str, _Session] = {}

    # -- the registry (CommandRegistry)
    def add(self, command: Command) -> None:
        if command.node in self._commands:
            raise ValueError(f"ad-hoc command node {command.node!r} is taken")
        self._commands[command.node] = command

    def remove(self, node: str) -> None:
        self._commands.pop(node, None)
        for sid in [s for s, sess in self._sessions.items() if sess.node == node]:
            del self._sessions[sid]

    def get(self, node: str) -> Command | None:
        return self._commands.get(node)

    def visible_to(self, requester: JID) -> list[Command]:
        return [c for _, c in sorted(self._commands.items()) if c.allowed(requester)]

    # -- sessions
    def _prune(self, now: float) -> None:
        for sid in [s for s, sess in self._sessions.items() if sess.expires <= now]:
            del self._sessions[sid]

    def open(self, requester: JID, node: str) -> str:
        now = time.monotonic()
        self._prune(now)
        opts = self.ctx.options
        mine = sum(1 for s in self._sessions.values() if s.requester == requester)
        if mine >= opts.max_sessions_per_requester or len(self._sessions) >= opts.max_sessions:
            raise StanzaError("resource-constraint", "too many open command sessions")
        sid = secrets.token_hex(12)
        self._sessions[sid] = _Session(requester, node, now + opts.session_timeout)
        return sid

    def session(self, sid: str, requester: JID, node: str) -> _Session:
        sess = self._sessions.get(sid)
        if sess is None or sess.requester != requester or sess.node != node:
            raise AdhocErrors.bad_sessionid()
        now = time.monotonic()
        if sess.expires <= now:
            del self._sessions[sid]
            raise AdhocErrors.session_expired()
        sess.expires = now + self.ctx.options.session_timeout
        return sess

    def close(self, sid: str) -> None:
        self._sessions.pop(sid, None)

    def record(self, sid: str, ask: Ask) -> int:
        """Remember the form shown in session ``sid``; returns how many were shown."""
        sess = self._sessions.get(sid)
        if sess is None:  # the command was withdrawn meanwhile
            raise AdhocErrors.bad_sessionid()
        sess.asked.append(ask)
        return len(sess.asked)


@module.on_load
async def provide(ctx: Ctx) -> None:
    ctx.provide(ADHOC, Commands(ctx))


def _registry(ctx: Ctx) -> Commands:
    registry = ctx.service(ADHOC)
    assert isinstance(registry, Commands)
    return registry


def _answer(node: str, sid: str, status: str) -> Element:
    return payload(NS_COMMANDS, "command", {"node": node, "sessionid": sid, "status": status})


def _asking(node: str, sid: str, ask: Ask, *, can_go_back: bool) -> Element:
    answer = _answer(node, sid, "executing")
    forward = "complete" if ask.last else "next"
    actions = child(answer, "actions", {"execute": forward})
    if can_go_back:
        child(actions, "prev")
    child(actions, forward)
    answer.append(copy(ask.form))
    return answer


def _done(node: str, sid: str, done: Done) -> Element:
    answer = _answer(node, sid, "completed")
    if done.note:
        child(answer, "note", {"type": done.note_type}, text=done.note)
    if done.form is not None:
        answer.append(copy(done.form))
    return answer


@module.iq("set", NS_COMMANDS, "command", to=Scope.HOST)
async def execute(ctx: Ctx, req: IqRequest) -> Element:
    assert req.from_ is not None
    requester = req.from_
    cmd_el = req.payload
    node = cmd_el.get("node", "")
    action = cmd_el.get("action", "execute")
    if action not in ACTIONS:
        raise AdhocErrors.malformed_action()
    registry = _registry(ctx)
    command = registry.get(node) if node else None
    if command is None:
        raise StanzaError("item-not-found", "no such command")
    if not command.allowed(requester):
        raise StanzaError("forbidden", "you may not run this command")
    sid = cmd_el.get("sessionid")
    if sid is None:
        if action != "execute":
            raise AdhocErrors.bad_action("a command starts with 'execute'")
        sid = registry.open(requester, node)
        step = await _run(registry, sid, command, CommandCall(requester, 0))
        return req.result(_step(registry, node, sid, step))
    sess = registry.session(sid, requester, node)
    if action == "cancel":
        registry.close(sid)
        return req.result(_answer(node, sid, "canceled"))
    if not sess.asked:  # pragma: no cover - a session always shows a form first
        raise AdhocErrors.bad_sessionid()
    shown = sess.asked[-1]
    if action == "prev":
        if len(sess.asked) < 2:
            raise AdhocErrors.bad_action("there is no previous stage")
        sess.asked.pop()
        return req.result(_asking(node, sid, sess.asked[-1], can_go_back=len(sess.asked) > 1))
    if (action == "next" and shown.last) or (action == "complete" and not shown.last):
        raise AdhocErrors.bad_action()
    x = cmd_el.find(f"{{{ns.DATA_FORMS}}}x")
    if x is None:
        raise AdhocErrors.bad_payload()
    call = CommandCall(requester, len(sess.asked), read_form(x), dict(shown.state))
    step = await _run(registry, sid, command, call)
    return req.result(_step(registry, node, sid, step))


async def _run(registry: Commands, sid: str, command: Command, call: CommandCall) -> Step:
    try:
        return await command.handler(call)
    except Exception:
        # A refusal at the first stage ends the session (the requester starts again);
        # later, the requester may correct the form and submit it again, or cancel.
        if call.stage == 0:
            registry.close(sid)
        raise


def _step(registry: Commands, node: str, sid: str, step: Step) -> Element:
    if isinstance(step, Done):
        registry.close(sid)
        return _done(node, sid, step)
    shown = registry.record(sid, step)
    return _asking(node, sid, step, can_go_back=shown > 1)


# ----------------------------------------------------------------------------- discovery


def _to_host(ctx: Ctx, query: DiscoQuery) -> bool:
    return query.to == ctx.jid


@module.fold(hooks.DISCO_ITEMS)
async def list_commands(
    ctx: Ctx, items: tuple[DiscoItem, ...], query: DiscoQuery
) -> tuple[DiscoItem, ...]:
    """XEP-0050 §2.2: the commands this requester may run."""
    if query.node != NS_COMMANDS or not _to_host(ctx, query):
        return items
    mine = _registry(ctx).visible_to(query.from_)
    return (*items, *(DiscoItem(ctx.jid, c.node, c.name) for c in mine))


@module.fold(hooks.DISCO_INFO)
async def describe(ctx: Ctx, info: DiscoInfo, query: DiscoQuery) -> DiscoInfo:
    """XEP-0050 §2.3: a command node is an ``automation/command-node`` (for those who
    may run it; to others it does not exist)."""
    if not query.node or not _to_host(ctx, query):
        return info
    if query.node == NS_COMMANDS:
        ident = DiscoIdentity("automation", "command-list")
        return dataclasses.replace(info, identities=(*info.identities, ident))
    command = _registry(ctx).get(query.node)
    if command is None or not command.allowed(query.from_):
        return info
    return dataclasses.replace(
        info,
        identities=(*info.identities, DiscoIdentity("automation", "command-node", command.name)),
        features=(*info.features, NS_COMMANDS, ns.DATA_FORMS),
    )
