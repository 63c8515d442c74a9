"""Requests from one node to another over the stanza bus, for work that must happen
on the node holding something (the REST API's room endpoints act on the node that owns
the room).

A call is an inbox entry ``cll`` naming a handler, a request id and the asking node,
with its arguments signed (:class:`~xmppd.cluster.records.Signer`: only a node of the
cluster, which knows the server secret, can ask); the answer comes back to the asker's
inbox as ``clr``. Handlers run as tasks of their own, so a slow one (a database write)
does not hold up the inbox behind it. A call that gets no answer in time raises
:class:`CallFailed` (the node died, or is too slow).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from xmppd.cluster.records import Signer

log = logging.getLogger(__name__)

CALL_TIMEOUT: Final = 15.0
"""Seconds a call waits for its answer by default."""

CallHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
"""Runs on the called node: the arguments in, the answer out (plain values)."""


class CallFailed(RuntimeError):
    """The called node did not answer in time, had no such handler, or failed."""


class Calls:
    """This node's side of node-to-node calls: asking, and answering."""

    def __init__(
        self,
        node: str,
        signer: Signer,
        send: Callable[[str, dict[str, Any]], None],
        start_task: Callable[..., asyncio.Task[None]],
    ) -> None:
        self._node = node
        self._signer = signer
        self._send = send
        self._start_task = start_task
        self._handlers: dict[str, CallHandler] = {}
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.asked = 0
        """Calls this node answered for others."""

    def serve(self, name: str, handler: CallHandler) -> None:
        """Answer calls named ``name`` with ``handler``."""
        self._handlers[name] = handler

    async def call(
        self, node: str, name: str, args: dict[str, Any], *, timeout: float = CALL_TIMEOUT
    ) -> dict[str, Any]:
        """Run handler ``name`` on ``node`` with ``args``; its answer."""
        request = os.urandom(8).hex()
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request] = future
        try:
            self._send(
                node,
                {"o": "cll", "q": request, "n": self._node, "d": self._signer.dumps((name, args))},
            )
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise CallFailed(f"node {node} did not answer {name!r} in time") from None
        finally:
            self._waiting.pop(request, None)

    def asked_for(self, get: Callable[[str], Any]) -> None:
        """Another node calls: run the handler in a task, answer when it is done."""
        request, asker = _text(get("q")), _text(get("n"))
        name, args = self._signer.loads(get("d") or b"")
        _ = self._start_task(
            self._answer(asker, request, str(name), args), name=f"cluster-call-{name}"
        )

    async def _answer(self, asker: str, request: str, name: str, args: dict[str, Any]) -> None:
        handler = self._handlers.get(name)
        result: tuple[bool, Any]
        if handler is None:
            result = (False, f"node {self._node} has no handler {name!r}")
        else:
            try:
                result = (True, await handler(args))
            except Exception as exc:
                log.exception("cluster: call %s failed", name)
                result = (False, f"{type(exc).__name__}: {exc}")
        self.asked += 1
        self._send(asker, {"o": "clr", "q": request, "d": self._signer.dumps(result)})

    def answered(self, get: Callable[[str], Any]) -> None:
        """An answer to one of this node's calls."""
        future = self._waiting.get(_text(get("q")))
        if future is None or future.done():
            return  # timed out meanwhile
        ok, value = self._signer.loads(get("d") or b"")
        if ok and isinstance(value, dict):
            future.set_result(value)
        else:
            future.set_exception(CallFailed(str(value)))


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)
