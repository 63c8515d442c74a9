"""IQ handling shared by hosts and module-served domains: whom a handler answers for
(:class:`Scope`), the request a handler gets (:class:`IqRequest`), and running a
handler so that it always yields a reply or an error (:func:`answer_iq`)."""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xmppd.errors import StanzaError
from xmppd.jid import JID
from xmppd.stanza import Element, error_reply, iq_result, summary

if TYPE_CHECKING:
    from xmppd.sessions import Session

log = logging.getLogger(__name__)


class Scope(enum.Enum):
    """Whom an IQ handler answers for."""

    HOST = "host"
    """IQs addressed to the server itself (``to='example.org'``)."""
    BARE = "bare"
    """IQs addressed to an account's bare JID (including one's own, or no ``to``)."""
    STREAM = "stream"
    """IQs on a stream that has not authenticated yet (in-band registration)."""


@dataclass(frozen=True, slots=True)
class Identity:
    """A disco#info identity (XEP-0030)."""

    category: str
    type: str
    name: str = ""


@dataclass(slots=True)
class IqRequest:
    """An IQ get/set being handled: the stanza, its parsed addresses, its payload."""

    stanza: Element
    to: JID
    from_: JID | None
    """Sender (full JID); ``None`` on a not-yet-authenticated stream (``Scope.STREAM``)."""
    payload: Element
    origin: Session | None

    @property
    def type(self) -> str:
        return self.stanza.get("type", "")

    @property
    def id(self) -> str | None:
        return self.stanza.get("id")

    @property
    def is_from_owner(self) -> bool:
        """True when the sender is the account the IQ is addressed to."""
        return self.from_ is not None and self.from_.bare == self.to.bare

    def result(self, payload: Element | None = None) -> Element:
        return iq_result(self.stanza, payload)


BoundIqHandler = Callable[[IqRequest], Awaitable[Element | None]]

SERVICE_UNAVAILABLE = StanzaError("service-unavailable")


def iq_payload(stanza: Element) -> Element | None:
    """The one child element of an IQ get/set (``None`` when there is not exactly one)."""
    if len(stanza) != 1:
        return None
    payload = stanza[0]
    return payload if isinstance(payload.tag, str) else None


async def answer_iq(
    handler: BoundIqHandler | None, stanza: Element, request: IqRequest | None
) -> Element | None:
    """Run ``handler`` on a get/set: its reply, or the error reply for what it raised
    (``service-unavailable`` when there is no handler; ``internal-server-error`` when it
    crashed)."""
    if handler is None or request is None:
        return error_reply(stanza, SERVICE_UNAVAILABLE)
    try:
        return await handler(request)
    except StanzaError as err:
        return error_reply(stanza, err)
    except Exception:
        log.exception("IQ handler crashed on %s", summary(stanza))
        return error_reply(stanza, StanzaError("internal-server-error"))
