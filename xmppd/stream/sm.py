"""XEP-0198 Stream Management state of one c2s session: counters and the unacked queue."""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

NS: Final = "urn:xmpp:sm:3"
MOD: Final = 2**32
"""``h`` wraps around at 2^32 (XEP-0198 §4)."""


class SmMirror(Protocol):
    """A copy of one resumable session's counters and unacked queue kept where other
    cluster nodes can take it over (``xmppd.cluster.smmirror``); ``None`` on one node."""

    def sent(self, data: bytes) -> None:
        """A stanza was queued for the client."""

    def acked(self, count: int, acked: int) -> None:
        """The client acknowledged ``count`` more stanzas (its ``h`` is ``acked``)."""

    def handling(self, inbound: int) -> object:
        """A client stanza (our ``h`` is now ``inbound``) is being routed: the count is
        written with the writes its routing makes; a token for :meth:`handled`."""

    def handled(self, token: object) -> None:
        """The stanza's routing is done (writes the count if routing wrote nothing)."""

    def end(self) -> None:
        """The session ended here or moved on: forget the copy."""


class SmMirrors(Protocol):
    """Starts mirrors (a cluster node's ``xmppd.cluster.smmirror.SmMirrors``)."""

    def start(self, handover: Handover, snapshot: Callable[[], Handover] | None = None) -> SmMirror:
        """Mirror the session ``handover`` describes from now on (``snapshot``: the
        session as it is then, when it must be written again)."""


class SmState:
    """Counts handled inbound stanzas and keeps outbound stanzas until acknowledged."""

    __slots__ = (
        "ack_requested",
        "acked",
        "id",
        "inbound",
        "lenient",
        "mirror",
        "released",
        "resumable",
        "sent",
        "stored",
        "unacked",
        "unacked_bytes",
    )

    def __init__(self, *, resumable: bool) -> None:
        self.id = secrets.token_urlsafe(18) if resumable else ""
        self.resumable = resumable
        self.inbound = 0
        """Stanzas received from the client and handled (our ``h``)."""
        self.sent = 0
        self.acked = 0
        """The client's last ``h``: stanzas it confirmed."""
        self.unacked: deque[bytes] = deque()
        self.unacked_bytes = 0
        """What :attr:`unacked` holds, in bytes (``c2s.max_unacked_bytes``)."""
        self.ack_requested = False
        self.stored: dict[int, str] = {}
        """Durable copies of queued stanzas (``sm_store`` tokens), by the stanza's number
        (``sent`` just after it was queued)."""
        self.released: list[str] = []
        """Tokens of stored stanzas the client acknowledged, to be released."""
        self.mirror: SmMirror | None = None
        self.lenient = False
        """Restored from a mirror that may have missed the last stanzas sent: a client
        ``h`` beyond what it knows acknowledges everything instead of failing."""

    def handled_inbound(self) -> None:
        self.inbound = (self.inbound + 1) % MOD

    def sent_stanza(self, data: bytes) -> None:
        self.unacked.append(data)
        self.unacked_bytes += len(data)
        self.sent = (self.sent + 1) % MOD
        if self.mirror is not None:
            self.mirror.sent(data)

    def ack(self, h: int) -> bool:
        """Apply the client's ``h``; ``False`` when it acknowledges more than was sent."""
        count = (h - self.acked) % MOD
        if count > len(self.unacked):
            if not self.lenient:
                return False
            count = len(self.unacked)  # the stanzas beyond reached it from a dead node
            self.sent = h % MOD
        for i in range(1, count + 1):
            self.unacked_bytes -= len(self.unacked.popleft())
            if self.stored:
                token = self.stored.pop((self.acked + i) % MOD, None)
                if token is not None:
                    self.released.append(token)
        self.acked = h % MOD
        self.ack_requested = False
        if self.mirror is not None:
            self.mirror.acked(count, self.acked)
        return True

    def clear_unacked(self) -> None:
        """Forget the queue (it was handed on, or delivered again elsewhere)."""
        self.unacked.clear()
        self.unacked_bytes = 0

    def pending(self) -> list[tuple[int, bytes]]:
        """The unacknowledged stanzas with their numbers, oldest first."""
        return [((self.acked + 1 + i) % MOD, data) for i, data in enumerate(self.unacked)]

    def is_pending(self, number: int) -> bool:
        """Whether stanza ``number`` is still queued, unacknowledged."""
        return 0 < (number - self.acked) % MOD <= len(self.unacked)


@dataclass(slots=True)
class Handover:
    """A resumable session handed from one cluster node to another: what the new node
    needs to continue it where the client left it (XEP-0198 resumption on another
    node). Plain data: it travels between nodes."""

    jid: str
    """The session's full JID."""
    sm_id: str
    inbound: int
    """Stanzas the old node handled from the client (the ``h`` of ``<resumed/>``)."""
    acked: int
    """The client's ``h``: what it confirmed."""
    unacked: list[bytes]
    """Stanzas sent and not acknowledged, oldest first (sent again after resuming)."""
    stored: dict[int, str] = field(default_factory=dict)
    """Durable copies (``sm_store`` tokens) of some of them, by stanza number."""
    presence: bytes | None = None
    priority: int = 0
    interested: bool = False
    state: dict[str, Any] = field(default_factory=dict)
    """Per-session state (``SessionKey`` name → value)."""
    mechanism: str = ""

    lenient: bool = False
    """Rebuilt from a mirror (its holder died): see :attr:`SmState.lenient`."""

    def restore(self, *, resumable: bool = True) -> SmState:
        """The stream-management state on the new node."""
        sm = SmState(resumable=resumable)
        sm.lenient = self.lenient
        sm.id = self.sm_id
        sm.inbound = self.inbound
        sm.acked = self.acked
        sm.unacked = deque(self.unacked)
        sm.unacked_bytes = sum(len(data) for data in self.unacked)
        sm.sent = (self.acked + len(self.unacked)) % MOD
        sm.stored = dict(self.stored)
        return sm
