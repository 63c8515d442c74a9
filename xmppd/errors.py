"""Stanza errors (RFC 6120 §8.3) and stream errors (RFC 6120 §4.9)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from lxml.etree import _Element as Element

ErrorType = Literal["auth", "cancel", "continue", "modify", "wait"]

#: Default error type for each defined stanza error condition (RFC 6120 §8.3.3).
STANZA_ERROR_TYPES: Final[dict[str, ErrorType]] = {
    "bad-request": "modify",
    "conflict": "cancel",
    "feature-not-implemented": "cancel",
    "forbidden": "auth",
    "gone": "cancel",
    "internal-server-error": "cancel",
    "item-not-found": "cancel",
    "jid-malformed": "modify",
    "not-acceptable": "modify",
    "not-allowed": "cancel",
    "not-authorized": "auth",
    "policy-violation": "modify",
    "recipient-unavailable": "wait",
    "redirect": "modify",
    "registration-required": "auth",
    "remote-server-not-found": "cancel",
    "remote-server-timeout": "wait",
    "resource-constraint": "wait",
    "service-unavailable": "cancel",
    "subscription-required": "auth",
    "undefined-condition": "cancel",
    "unexpected-request": "wait",
}

STREAM_ERROR_CONDITIONS: Final = frozenset(
    {
        "bad-format",
        "bad-namespace-prefix",
        "conflict",
        "connection-timeout",
        "host-gone",
        "host-unknown",
        "improper-addressing",
        "internal-server-error",
        "invalid-from",
        "invalid-namespace",
        "invalid-xml",
        "not-authorized",
        "not-well-formed",
        "policy-violation",
        "remote-connection-failed",
        "reset",
        "resource-constraint",
        "restricted-xml",
        "see-other-host",
        "system-shutdown",
        "undefined-condition",
        "unsupported-encoding",
        "unsupported-feature",
        "unsupported-stanza-type",
        "unsupported-version",
    }
)


class StanzaError(Exception):
    """Raised by a handler to answer the stanza with an error (RFC 6120 §8.3).

    ``condition`` is one of the defined conditions; ``type`` defaults to the
    condition's usual type; ``text`` is a human-readable explanation sent to
    the peer (never put secrets in it).
    """

    def __init__(
        self,
        condition: str,
        text: str | None = None,
        *,
        type: ErrorType | None = None,
        application: Element | None = None,
    ) -> None:
        if condition not in STANZA_ERROR_TYPES:
            raise ValueError(f"unknown stanza error condition {condition!r}")
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition = condition
        self.text = text
        self.type: ErrorType = type or STANZA_ERROR_TYPES[condition]
        self.application = application
        """An application-specific condition element (RFC 6120 §8.3.2), e.g. XEP-0191's
        ``<blocked xmlns='urn:xmpp:blocking:errors'/>``; build it with ``payload``."""


class StreamError(Exception):
    """A stream-level fault: the stream is closed with ``<stream:error>`` (RFC 6120 §4.9)."""

    def __init__(self, condition: str, text: str | None = None) -> None:
        if condition not in STREAM_ERROR_CONDITIONS:
            raise ValueError(f"unknown stream error condition {condition!r}")
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition = condition
        self.text = text
