"""The stream features a client is offered, serialised once per combination.

A login sees the features three times (before STARTTLS, before authentication, after
it), and building them as an element tree and serialising it was about a tenth of a
TLS + SCRAM login's CPU. What the core offers (STARTTLS, SASL mechanisms, XEP-0440
channel-binding types, SASL2 with its inline offers, bind, session, stream management)
depends on a handful of flags, captured in :class:`CoreFeatures`; its serialised form is
kept per distinct value (a few per configuration). What modules add through the
``c2s_stream_features`` hook may depend on the session, so it is serialised each time
and placed after the core's part.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from lxml import etree

from xmppd import ns
from xmppd.auth import fast, sasl
from xmppd.stanza import Element, child
from xmppd.stream import sasl2
from xmppd.stream import sm as sm_ns

_OPEN: Final = b"<stream:features xmlns:stream='" + ns.STREAMS.encode() + b"'>"
_CLOSE: Final = b"</stream:features>"
_LIMIT: Final = 256
"""Distinct combinations kept; more only after a run of configuration reloads (the
cache then starts again)."""


@dataclass(frozen=True, slots=True)
class CoreFeatures:
    """Everything the core's part of the features depends on."""

    stage: str
    """``pre-tls``, ``pre-auth`` or ``post-auth`` (as :class:`~xmppd.hooks.FeaturesContext`)."""
    require_tls: bool = False
    insecure_plain: bool = False
    bindings: tuple[tuple[str, bool], ...] | None = None
    """The TLS channel's binding types and whether each has data; ``None``: no TLS."""
    sasl2: bool = False
    bind2_inline: tuple[str, ...] = ()
    resume: bool = False
    fast: bool = False
    offer_bind: bool = False
    offer_sm: bool = False

    @staticmethod
    def channel_bindings(channel: sasl.TlsChannel | None) -> tuple[tuple[str, bool], ...] | None:
        if channel is None:
            return None
        return tuple((name, bool(data)) for name, data in channel.bindings.items())


_SERIALISED: dict[CoreFeatures, bytes] = {}


def serialise(core: CoreFeatures, extra: Iterable[Element] = ()) -> bytes:
    """``<stream:features/>`` with the core's features and then ``extra``'s."""
    part = _SERIALISED.get(core)
    if part is None:
        if len(_SERIALISED) >= _LIMIT:
            _SERIALISED.clear()
        part = _SERIALISED[core] = _inner(_build(core))
    return _OPEN + part + b"".join(etree.tostring(el) for el in extra) + _CLOSE


def _inner(features: Element) -> bytes:
    """The serialised children of ``features`` (its own start and end tags cut off)."""
    if not len(features):
        return b""
    text = etree.tostring(features)
    return text[text.index(b">") + 1 : text.rindex(b"</")]


def _build(core: CoreFeatures) -> Element:
    features = etree.Element(f"{{{ns.STREAMS}}}features", nsmap={"stream": ns.STREAMS})
    if core.stage == "post-auth":
        if core.offer_bind:
            child(features, "bind", namespace=ns.BIND)
            child(child(features, "session", namespace=ns.SESSION), "optional")
        if core.offer_sm:
            child(features, "sm", namespace=sm_ns.NS)
    elif core.stage == "pre-tls":
        tls = child(features, "starttls", namespace=ns.TLS)
        if core.require_tls:
            child(tls, "required")
        else:
            _add_mechanisms(features, core, None)
    else:
        channel = _channel(core.bindings)
        _add_mechanisms(features, core, channel)
        if channel is not None and core.sasl2:
            features.append(
                sasl2.authentication_feature(
                    offered_mechanisms(channel, insecure_plain=core.insecure_plain),
                    bind_features=core.bind2_inline,
                    resume=core.resume,
                    fast_mechanisms=fast.offered_mechanisms(channel) if core.fast else (),
                )
            )
    return features


def offered_mechanisms(channel: sasl.TlsChannel | None, *, insecure_plain: bool) -> list[str]:
    """The SASL mechanisms offered over ``channel`` (``None``: no TLS)."""
    return sasl.offered_mechanisms(tls=channel, allow_plain=True, insecure_plain=insecure_plain)


def _channel(bindings: tuple[tuple[str, bool], ...] | None) -> sasl.TlsChannel | None:
    """A channel with the same binding types (and which have data) as the one described."""
    if bindings is None:
        return None
    return sasl.TlsChannel({name: b"x" if has else b"" for name, has in bindings})


def _add_mechanisms(features: Element, core: CoreFeatures, channel: sasl.TlsChannel | None) -> None:
    mechs = child(features, "mechanisms", namespace=ns.SASL)
    for name in offered_mechanisms(channel, insecure_plain=core.insecure_plain):
        child(mechs, "mechanism", text=name)
    if channel is not None and channel.bindings:
        # XEP-0440: the channel-binding types a -PLUS mechanism can use here.
        cb = child(features, "sasl-channel-binding", namespace=ns.SASL_CB)
        for name in channel.bindings:
            child(cb, "channel-binding", {"type": name})
