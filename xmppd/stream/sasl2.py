"""XEP-0388 SASL2 and XEP-0386 Bind 2: the elements, parsed and built.

The stream (:mod:`xmppd.stream.c2s`) runs the exchange; this module knows the XML:
what ``<authenticate/>`` asks for, what the ``<authentication/>`` feature offers and
how ``<success/>``, ``<failure/>`` and ``<challenge/>`` look.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from lxml import etree

from xmppd import ns
from xmppd.stanza import Element, child, payload
from xmppd.stream import sm as sm_ns

AUTHENTICATE: Final = f"{{{ns.SASL2}}}authenticate"
RESPONSE: Final = f"{{{ns.SASL2}}}response"
ABORT: Final = f"{{{ns.SASL2}}}abort"
ELEMENTS: Final = frozenset({AUTHENTICATE, RESPONSE, ABORT})
_INITIAL_RESPONSE: Final = f"{{{ns.SASL2}}}initial-response"
_USER_AGENT: Final = f"{{{ns.SASL2}}}user-agent"
_REQUEST_TOKEN: Final = f"{{{ns.FAST}}}request-token"
_BIND: Final = f"{{{ns.BIND2}}}bind"
_RESUME: Final = f"{{{sm_ns.NS}}}resume"
_FAST: Final = f"{{{ns.FAST}}}fast"
_AUTHENTICATE_CHILDREN: Final = frozenset(
    {_INITIAL_RESPONSE, _USER_AGENT, _REQUEST_TOKEN, _BIND, _RESUME, _FAST}
)
_MAX_TAG_LENGTH: Final = 64
_MAX_TEXT: Final = 256


class MalformedRequest(ValueError):
    """The ``<authenticate/>`` element cannot be understood."""


@dataclass(frozen=True, slots=True)
class AuthenticateRequest:
    """What one ``<authenticate/>`` asks for, besides authentication itself."""

    mechanism: str
    initial_response: bytes | None
    """``None`` when the client sent no initial response."""
    client_id: str
    """The ``<user-agent id>`` (a UUID, normalised), or ``""``."""
    software: str
    device: str
    bind: Element | None
    """The Bind 2 ``<bind/>`` request, if any."""
    resume: Element | None
    """An inline XEP-0198 ``<resume/>``, if any."""
    request_token: str | None
    """The FAST mechanism a new token is asked for (XEP-0484), if any."""
    fast: Element | None
    """The FAST ``<fast/>`` element sent along with a token login, if any."""

    @property
    def invalidate_token(self) -> bool:
        return self.fast is not None and self.fast.get("invalidate") in ("1", "true")

    @property
    def bind_tag(self) -> str:
        """The Bind 2 ``<tag/>``: a label for the client, part of the resource."""
        if self.bind is None:
            return ""
        return (self.bind.findtext(f"{{{ns.BIND2}}}tag") or "").strip()[:_MAX_TAG_LENGTH]

    @property
    def bind_requests(self) -> tuple[Element, ...]:
        """The features asked for inline in ``<bind/>`` (everything but ``<tag/>``)."""
        if self.bind is None:
            return ()
        return tuple(el for el in self.bind if el.tag != f"{{{ns.BIND2}}}tag")


def decode(text: str | None) -> bytes:
    """Base64 payload of a SASL2 element (whitespace tolerated); raises ValueError."""
    compact = "".join((text or "").split())
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("incorrect base64") from None


def parse_authenticate(el: Element) -> AuthenticateRequest:
    """Read an ``<authenticate/>``; raises :class:`MalformedRequest` or ValueError
    (incorrect base64)."""
    mechanism = el.get("mechanism", "")
    if not mechanism:
        raise MalformedRequest("no mechanism")
    # One pass over the children (first of each kind wins, as find() would have it).
    found: dict[str, Element] = {}
    for item in el:
        tag = item.tag
        if tag in _AUTHENTICATE_CHILDREN and tag not in found:
            found[tag] = item
    initial = found.get(_INITIAL_RESPONSE)
    agent = found.get(_USER_AGENT)
    token_request = found.get(_REQUEST_TOKEN)
    return AuthenticateRequest(
        mechanism=mechanism,
        initial_response=None if initial is None else decode(initial.text),
        client_id=_client_id(agent.get("id") if agent is not None else None),
        software=_text(agent, "software"),
        device=_text(agent, "device"),
        bind=found.get(_BIND),
        resume=found.get(_RESUME),
        request_token=None if token_request is None else token_request.get("mechanism", ""),
        fast=found.get(_FAST),
    )


def _client_id(value: str | None) -> str:
    if not value:
        return ""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return ""  # XEP-0388 wants a UUID; anything else is ignored, not trusted


def _text(agent: Element | None, name: str) -> str:
    if agent is None:
        return ""
    return (agent.findtext(f"{{{ns.SASL2}}}{name}") or "").strip()[:_MAX_TEXT]


def authentication_feature(
    mechanisms: Iterable[str],
    *,
    bind_features: Iterable[str],
    resume: bool,
    fast_mechanisms: Iterable[str],
) -> Element:
    """The ``<authentication/>`` stream feature with its ``<inline/>`` offers."""
    feature = payload(ns.SASL2, "authentication")
    for name in mechanisms:
        child(feature, "mechanism", namespace=ns.SASL2, text=name)
    inline = child(feature, "inline", namespace=ns.SASL2)
    bind = child(inline, "bind", namespace=ns.BIND2)
    bind_inline = child(bind, "inline", namespace=ns.BIND2)
    for var in bind_features:
        child(bind_inline, "feature", {"var": var}, namespace=ns.BIND2)
    if resume:
        child(inline, "sm", namespace=sm_ns.NS)
    fast = list(fast_mechanisms)
    if fast:
        fast_el = child(inline, "fast", namespace=ns.FAST)
        for name in fast:
            child(fast_el, "mechanism", namespace=ns.FAST, text=name)
    return feature


def challenge(data: bytes) -> bytes:
    el = payload(ns.SASL2, "challenge")
    el.text = base64.b64encode(data).decode("ascii")
    return etree.tostring(el)


def failure(condition: str, text: str = "") -> bytes:
    """A ``<failure/>`` with an RFC 6120 §6.5 SASL condition."""
    el = payload(ns.SASL2, "failure")
    child(el, condition, namespace=ns.SASL)
    if text:
        child(el, "text", namespace=ns.SASL2, text=text)
    return etree.tostring(el)


def success(authorization_id: str, additional_data: bytes, extra: Iterable[Element]) -> bytes:
    """``<success/>``: SASL additional data, the identity, then inline results."""
    el = payload(ns.SASL2, "success")
    if additional_data:
        child(el, "additional-data", namespace=ns.SASL2).text = base64.b64encode(
            additional_data
        ).decode("ascii")
    child(el, "authorization-identifier", namespace=ns.SASL2, text=authorization_id)
    for item in extra:
        el.append(item)
    return etree.tostring(el)


def bound(children: Iterable[Element]) -> Element:
    el = payload(ns.BIND2, "bound")
    for item in children:
        el.append(item)
    return el
