"""XEP-0050 ad-hoc commands as modules see them: a command, the steps it answers with,
and the XEP-0004 data forms it shows and reads.

``mod_adhoc`` runs the protocol (sessions, actions, disco, errors) and provides the
:data:`ADHOC` registry; a module that offers commands depends on ``adhoc`` and adds
them in ``on_load``::

    ctx.service(ADHOC).add(Command(node, "Do it", partial(do_it, ctx), allowed))

A handler gets a :class:`CommandCall` for each stage and returns :class:`Ask` (show a
form, wait for the next submission) or :class:`Done` (the command completed), or
raises ``StanzaError`` for input it refuses (the session stays open: the requester may
submit again or cancel).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

from xmppd import ns
from xmppd.errors import StanzaError
from xmppd.jid import JID
from xmppd.module import ServiceKey
from xmppd.stanza import Element, child, payload

NS_COMMANDS: Final = "http://jabber.org/protocol/commands"
"""XEP-0050; also the disco node that lists the commands."""

MAX_FIELDS: Final = 64
"""Fields read from one submitted form (more: ``bad-request``)."""
MAX_VALUES: Final = 1000
"""Values read from one field."""
MAX_VALUE_CHARS: Final = 10_000
"""Characters of one value."""

FieldType = Literal[
    "boolean",
    "fixed",
    "hidden",
    "jid-multi",
    "jid-single",
    "list-multi",
    "list-single",
    "text-multi",
    "text-private",
    "text-single",
]
NoteType = Literal["info", "warn", "error"]


@dataclass(frozen=True, slots=True)
class FormField:
    """One XEP-0004 field to show: ``values`` prefill it; ``options`` are ``(label,
    value)`` pairs of a list field."""

    var: str
    type: FieldType = "text-single"
    label: str = ""
    required: bool = False
    values: tuple[str, ...] = ()
    options: tuple[tuple[str, str], ...] = ()


def data_form(
    kind: Literal["form", "result"],
    fields: Sequence[FormField],
    *,
    title: str = "",
    instructions: str = "",
    form_type: str | None = None,
) -> Element:
    """A ``<x xmlns='jabber:x:data'/>`` form (``form`` to fill in, ``result`` to read),
    with a hidden ``FORM_TYPE`` first when ``form_type`` is given."""
    x = payload(ns.DATA_FORMS, "x", {"type": kind})
    if title:
        child(x, "title", text=title)
    if instructions:
        child(x, "instructions", text=instructions)
    if form_type:
        fields = [FormField("FORM_TYPE", "hidden", values=(form_type,)), *fields]
    for spec in fields:
        attrs = {"var": spec.var, "type": spec.type}
        if spec.label:
            attrs["label"] = spec.label
        f = child(x, "field", attrs)
        if spec.required:
            child(f, "required")
        for label, value in spec.options:
            option = child(f, "option", {"label": label} if label else {})
            child(option, "value", text=value)
        for value in spec.values:
            child(f, "value", text=value)
    return x


def read_form(x: Element | None) -> dict[str, tuple[str, ...]]:
    """The values of a submitted form by field ``var`` (``bad-request`` past the limits
    or when ``x`` is not a ``submit`` form)."""
    if x is None or x.get("type") != "submit":
        raise StanzaError("bad-request", "expected a submitted data form")
    values: dict[str, tuple[str, ...]] = {}
    for f in x.iterfind(f"{{{ns.DATA_FORMS}}}field"):
        var = f.get("var")
        if not var:
            continue
        if len(values) >= MAX_FIELDS:
            raise StanzaError("policy-violation", "too many fields")
        texts = [v.text or "" for v in f.iterfind(f"{{{ns.DATA_FORMS}}}value")]
        if len(texts) > MAX_VALUES or any(len(t) > MAX_VALUE_CHARS for t in texts):
            raise StanzaError("policy-violation", f"field {var!r} is too large")
        values[var] = tuple(texts)
    return values


@dataclass(frozen=True, slots=True)
class CommandCall:
    """One stage of a command: who asks, which stage (0 = the first execute), the
    values submitted at this stage (empty at stage 0) and the state returned with the
    previous :class:`Ask`."""

    requester: JID
    stage: int
    values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    state: Mapping[str, object] = field(default_factory=dict)

    def value(self, var: str, default: str = "") -> str:
        """The first value of field ``var`` (``default`` when absent)."""
        got = self.values.get(var, ())
        return got[0] if got else default

    def required(self, var: str) -> str:
        """The first value of ``var``, stripped; ``bad-request`` when it is empty."""
        got = self.value(var).strip()
        if not got:
            raise StanzaError("bad-request", f"field {var!r} is required")
        return got


@dataclass(frozen=True, slots=True)
class Ask:
    """Show ``form`` and wait for its submission. ``last``: that submission completes
    the command (the client offers *complete*); otherwise *next*. ``state`` comes back
    in the next :class:`CommandCall`."""

    form: Element
    last: bool = True
    state: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Done:
    """The command completed: a ``note`` for the requester, and a result form if any."""

    note: str = ""
    note_type: NoteType = "info"
    form: Element | None = None


Step = Ask | Done
CommandHandler = Callable[[CommandCall], Awaitable[Step]]


@dataclass(frozen=True, slots=True)
class Command:
    """An ad-hoc command on a host: its disco ``node`` and ``name``, the handler of its
    stages, and who may list and run it (``allowed(requester)``; others get
    ``forbidden`` and do not see it in disco)."""

    node: str
    name: str
    handler: CommandHandler
    allowed: Callable[[JID], bool]


class CommandRegistry(Protocol):
    """The commands of one host (provided by ``mod_adhoc`` as :data:`ADHOC`)."""

    def add(self, command: Command) -> None:
        """Offer ``command`` (``ValueError`` when its node is taken)."""

    def remove(self, node: str) -> None:
        """Withdraw the command of ``node`` (its open sessions end)."""

    def get(self, node: str) -> Command | None: ...

    def visible_to(self, requester: JID) -> list[Command]:
        """The commands ``requester`` may run, by node."""


ADHOC: Final = ServiceKey[CommandRegistry]("adhoc")
"""The host's command registry; modules adding commands list ``adhoc`` in ``depends``."""

__all__ = [
    "ADHOC",
    "MAX_FIELDS",
    "MAX_VALUES",
    "MAX_VALUE_CHARS",
    "NS_COMMANDS",
    "Ask",
    "Command",
    "CommandCall",
    "CommandHandler",
    "CommandRegistry",
    "Done",
    "FieldType",
    "FormField",
    "NoteType",
    "Step",
    "data_form",
    "read_form",
]
