"""The hook bus: typed hook specs, priorities, and crash-isolated dispatch.

Two kinds of hook (after ejabberd's ``run``/``run_fold``):

* :class:`EventHook` — ``await bus.run(HOOK, event)``: handlers are called
  highest priority first; one returning :data:`STOP` ends the chain and ``run``
  returns ``True`` ("handled").
* :class:`FoldHook` — ``await bus.fold(HOOK, value, context)``: each handler
  returns the value (a copy if it changed it) or :data:`DROP`, which ends the
  chain; ``fold`` returns the final value or ``DROP``.

A handler that raises is logged (hook, owner, a one-line summary of the
payload) and skipped, as ejabberd's ``safe_apply`` does; :class:`StanzaError`
and ``CancelledError`` propagate.
"""

from __future__ import annotations

import enum
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Generic, Literal, TypeVar, cast, final

from xmppd.errors import StanzaError

log = logging.getLogger(__name__)

E = TypeVar("E")
V = TypeVar("V")
C = TypeVar("C")

HookScope = Literal["global", "host"]


class Priority(enum.IntEnum):
    """Named priority bands; higher runs first. Add an offset with a comment saying why."""

    FIRST = 1000
    EARLY = 100
    DEFAULT = 0
    LATE = -100
    FALLBACK = -1000


@final
class Stop:
    """Marker type of :data:`STOP`."""

    _instance: Stop | None = None

    def __new__(cls) -> Stop:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "STOP"


@final
class Drop:
    """Marker type of :data:`DROP`."""

    _instance: Drop | None = None

    def __new__(cls) -> Drop:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "DROP"


STOP: Final = Stop()
"""Returned by an :class:`EventHook` handler to end the chain (the event is handled)."""
DROP: Final = Drop()
"""Returned by a :class:`FoldHook` handler to end the chain and drop the value."""


@dataclass(frozen=True, eq=False)
class EventHook(Generic[E]):
    """Spec of a notification hook carrying an event of type ``E``."""

    name: str
    scope: HookScope
    doc: str


@dataclass(frozen=True, eq=False)
class FoldHook(Generic[V, C]):
    """Spec of a fold hook threading a value ``V`` through handlers, with context ``C``."""

    name: str
    scope: HookScope
    doc: str


EventHandler = Callable[[E], Awaitable[Stop | None]]
FoldHandler = Callable[[V, C], Awaitable[V | Drop]]
Summarize = Callable[[object], str]


@dataclass(slots=True, eq=False)
class Registration:
    """A handler bound to a bus; pass it to :meth:`EventBus.remove` to unbind."""

    hook: EventHook[Any] | FoldHook[Any, Any]
    handler: Callable[..., Awaitable[Any]]
    priority: int
    owner: str
    seq: int


def default_summary(payload: object) -> str:
    """One-line description of a hook payload for crash logs (no bodies, no secrets)."""
    describe = getattr(payload, "summary", None)
    if callable(describe):
        try:
            return str(describe())
        except Exception:  # a broken summary must not hide the original crash
            return type(payload).__name__
    return type(payload).__name__


@dataclass(slots=True)
class EventBus:
    """Handlers for hooks, kept sorted by priority (highest first, ties in registration order)."""

    name: str
    summarize: Summarize = default_summary
    errors: Counter[str] = field(default_factory=Counter)
    """Handler crashes by owner (module name or ``core``), read by the metrics."""
    _handlers: dict[int, list[Registration]] = field(default_factory=dict)
    _seq: int = 0

    def add(
        self,
        hook: EventHook[Any] | FoldHook[Any, Any],
        handler: Callable[..., Awaitable[Any]],
        *,
        priority: int = Priority.DEFAULT,
        owner: str = "core",
    ) -> Registration:
        """Bind ``handler`` to ``hook``; returns the registration for removal."""
        self._seq += 1
        reg = Registration(hook, handler, int(priority), owner, self._seq)
        regs = [*self._handlers.get(id(hook), ()), reg]
        regs.sort(key=lambda r: (-r.priority, r.seq))
        self._handlers[id(hook)] = regs
        return reg

    def remove(self, reg: Registration) -> None:
        """Unbind a registration (no error if already removed)."""
        regs = [r for r in self._handlers.get(id(reg.hook), ()) if r is not reg]
        if regs:
            self._handlers[id(reg.hook)] = regs
        else:
            self._handlers.pop(id(reg.hook), None)

    def has_handlers(self, hook: EventHook[Any] | FoldHook[Any, Any]) -> bool:
        return id(hook) in self._handlers

    def handlers(self, hook: EventHook[Any] | FoldHook[Any, Any]) -> tuple[Registration, ...]:
        return tuple(self._handlers.get(id(hook), ()))

    async def run(self, hook: EventHook[E], event: E) -> bool:
        """Call each handler with ``event``; ``True`` when one returned :data:`STOP`."""
        regs = self._handlers.get(id(hook))
        if not regs:
            return False
        for reg in regs:
            try:
                result = await reg.handler(event)
            except StanzaError:
                raise
            except Exception:
                self._log_crash(reg, event)
                continue
            if result is STOP:
                return True
        return False

    async def fold(self, hook: FoldHook[V, C], value: V, context: C) -> V | Drop:
        """Thread ``value`` through the handlers; :data:`DROP` when one dropped it."""
        regs = self._handlers.get(id(hook))
        if not regs:
            return value
        for reg in regs:
            try:
                result = await reg.handler(value, context)
            except StanzaError:
                raise
            except Exception:
                self._log_crash(reg, value)
                continue
            if result is DROP:
                return result
            value = cast(V, result)
        return value

    def _log_crash(self, reg: Registration, payload: object) -> None:
        self.errors[reg.owner] += 1
        log.exception(
            "hook %s: handler %s of %s crashed on %s; skipped",
            reg.hook.name,
            getattr(reg.handler, "__qualname__", repr(reg.handler)),
            reg.owner,
            self.summarize(payload),
        )
