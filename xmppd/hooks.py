"""The catalogue of core hooks. ``docs/hooks.md`` is generated from this file.

Each hook is declared once, with its kind (event or fold), its payload types,
its scope (``global``: the server's bus; ``host``: each virtual host's bus) and
its documentation. Modules and hook files refer to these objects, never to
names as strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from xmppd.events import EventHook, FoldHook
from xmppd.jid import JID

if TYPE_CHECKING:
    from xmppd.sessions import Session
    from xmppd.stanza import Element


# ----------------------------------------------------------------------------- payloads


@dataclass(frozen=True, slots=True)
class RouteInfo:
    """Context of a routed stanza: the session it came from (``None``: the server)."""

    origin: Session | None

    @property
    def is_local_user(self) -> bool:
        return self.origin is not None


@dataclass(frozen=True, slots=True)
class PacketContext:
    """Context of ``user_send_packet`` / ``user_receive_packet``: the client session."""

    session: Session


@dataclass(frozen=True, slots=True)
class StanzaEvent:
    """A stanza being delivered on a host: its parsed addresses and where it came from."""

    stanza: Element
    to: JID
    from_: JID
    origin: Session | None

    def summary(self) -> str:
        from xmppd.stanza import summary

        return summary(self.stanza)


@dataclass(frozen=True, slots=True)
class SessionEvent:
    session: Session


@dataclass(frozen=True, slots=True)
class StreamElementEvent:
    """A top-level element on a bound client stream that is not a stanza (a "nonza")."""

    session: Session
    element: Element


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """A session's presence changed; ``presence`` is the stanza that changed it."""

    session: Session
    presence: Element


@dataclass(frozen=True, slots=True)
class UserEvent:
    """An account, as a bare JID."""

    jid: JID


@dataclass(frozen=True, slots=True)
class UserFile:
    """A file stored for an account (an HTTP upload): ``name`` as the user gave it
    (it is made safe before use), where it is on disk, and its media type."""

    name: str
    path: Path
    content_type: str = ""


@dataclass(frozen=True, slots=True)
class HibernatedStanza:
    """A message queued for ``session`` while its stream-management session hibernates
    (XEP-0198): it is in memory only until a handler of ``sm_store`` stores it."""

    session: Session
    stanza: Element
    from_: JID


@dataclass(frozen=True, slots=True)
class HibernatedRelease:
    """Stored copies (``tokens`` from ``sm_store``) of messages queued for ``session``
    that no longer need one. ``acked``: the client acknowledged them, delete the copies;
    otherwise the session ended without acknowledging them and each copy becomes an
    ordinary offline message."""

    session: Session
    tokens: tuple[str, ...]
    acked: bool


@dataclass(frozen=True, slots=True)
class FeaturesContext:
    """Which stream features are being offered, and to whom."""

    session: Session
    stage: Literal["pre-tls", "pre-auth", "post-auth"]


@dataclass(frozen=True, slots=True)
class BindRequest:
    """A resource bind on ``session``; the folded value is the resource to bind."""

    session: Session


@dataclass(frozen=True, slots=True)
class Bind2Request:
    """A XEP-0386 Bind 2 request on ``session``: its full JID is set but it is not yet
    routable. ``requests`` are the children of ``<bind/>`` other than ``<tag/>``: the
    features the client asks to enable inline (``<enable xmlns='urn:xmpp:carbons:2'/>``...)."""

    session: Session
    requests: tuple[Element, ...]

    def find(self, namespace: str, name: str) -> Element | None:
        """The request element ``{namespace}name``, if the client sent one."""
        tag = f"{{{namespace}}}{name}"
        return next((el for el in self.requests if el.tag == tag), None)


@dataclass(frozen=True, slots=True)
class DiscoQuery:
    """A disco#info or disco#items request."""

    to: JID
    from_: JID
    node: str | None


@dataclass(frozen=True, slots=True)
class DiscoIdentity:
    category: str
    type: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class DiscoInfo:
    """The disco#info answer being built; return a changed copy (``dataclasses.replace``)."""

    identities: tuple[DiscoIdentity, ...] = ()
    features: tuple[str, ...] = ()
    forms: tuple[Element, ...] = ()


@dataclass(frozen=True, slots=True)
class DiscoItem:
    jid: JID
    node: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class HostEvent:
    domain: str


@dataclass(frozen=True, slots=True)
class ServerEvent:
    reason: str


# ----------------------------------------------------------------------------- routing

FILTER_PACKET: Final = FoldHook["Element", RouteInfo](
    "filter_packet",
    "global",
    "Every stanza the router handles, local or not, before delivery. Return the stanza "
    "(or a changed copy) or DROP. Runs on the global bus (hook files and modules alike).",
)

USER_SEND_PACKET: Final = FoldHook["Element", PacketContext](
    "user_send_packet",
    "host",
    "A stanza a local client sent, after the core stamped 'from' and checked its shape, "
    "before routing. Return it (or a changed copy) or DROP.",
)

USER_RECEIVE_PACKET: Final = FoldHook["Element", PacketContext](
    "user_receive_packet",
    "host",
    "A stanza about to be written to a local client. Return it (or a changed copy) or DROP.",
)

PRESENCE_OUT: Final = EventHook[StanzaEvent](
    "presence_out",
    "host",
    "A presence stanza a local client sent (after user_send_packet). The presence module "
    "broadcasts and tracks subscriptions here; a handler that routes the stanza itself "
    "returns STOP, otherwise the core routes it unchanged.",
)

OFFLINE_MESSAGE: Final = EventHook[StanzaEvent](
    "offline_message",
    "host",
    "A chat or normal message for an account with no session to take it (the account "
    "may not exist: check ctx.account_exists). A handler that stores it returns STOP; if "
    "none does, the sender gets service-unavailable.",
)

SM_STORE: Final = FoldHook[str, HibernatedStanza](
    "sm_store",
    "host",
    "A chat or normal message is queued for a client whose stream-management session "
    "hibernates, in memory only: store a durable copy that a crash or restart does not "
    "lose, kept back from every session while this one may resume, and return a token "
    "naming it (the value is '' until a handler stores it; return it unchanged if you "
    "do not). The core releases each token through sm_store_release.",
)

SM_STORE_RELEASE: Final = EventHook[HibernatedRelease](
    "sm_store_release",
    "host",
    "Copies stored through sm_store are no longer needed as such: the client "
    "acknowledged the messages (delete them), or its session ended without "
    "acknowledging them (deliver them as offline messages).",
)


def _delivery(kind: str, target: str) -> EventHook[StanzaEvent]:
    return EventHook[StanzaEvent](
        f"{kind}_to_{target}",
        "host",
        f"A {kind} stanza addressed to a {target} JID of this host, before the default "
        "RFC 6121 delivery. A handler that handled it returns STOP.",
    )


MESSAGE_TO_BARE: Final = _delivery("message", "bare")
MESSAGE_TO_FULL: Final = _delivery("message", "full")
MESSAGE_TO_HOST: Final = _delivery("message", "host")
PRESENCE_TO_BARE: Final = _delivery("presence", "bare")
PRESENCE_TO_FULL: Final = _delivery("presence", "full")
PRESENCE_TO_HOST: Final = _delivery("presence", "host")
IQ_TO_BARE: Final = _delivery("iq", "bare")
IQ_TO_FULL: Final = _delivery("iq", "full")
IQ_TO_HOST: Final = _delivery("iq", "host")

# ----------------------------------------------------------------------------- sessions

C2S_STREAM_FEATURES: Final = FoldHook[tuple["Element", ...], FeaturesContext](
    "c2s_stream_features",
    "host",
    "The stream features about to be offered to a client; return the tuple with yours "
    "added. The core adds STARTTLS, SASL mechanisms and bind itself; yours follow "
    "them. Runs for every features element a client is sent (three per login): keep "
    "it cheap.",
)

C2S_STREAM_ELEMENT: Final = EventHook[StreamElementEvent](
    "c2s_stream_element",
    "host",
    "A top-level element other than message/presence/iq on a bound client stream "
    "(e.g. XEP-0352 <active/>). A handler that understood it returns STOP; if none "
    "does, the stream is closed with unsupported-stanza-type.",
)

PRE_RESOURCE_BIND: Final = FoldHook[str, BindRequest](
    "pre_resource_bind",
    "host",
    "The resource a client is about to bind (server-generated when it asked for none). "
    "Return it or another; raise StanzaError to refuse the bind.",
)

BIND2_FEATURES: Final = FoldHook[tuple[str, ...], FeaturesContext](
    "bind2_features",
    "host",
    "The features a client may enable inline in a XEP-0386 Bind 2 request, as "
    "namespaces (``urn:xmpp:carbons:2``); return the tuple with yours added.",
)

BIND2_BOUND: Final = FoldHook[tuple["Element", ...], Bind2Request](
    "bind2_bound",
    "host",
    "A client is binding with Bind 2 (XEP-0386). Enable what it asked for inline "
    "(``ctx.find(ns, name)``) and return the tuple with any elements to put in the "
    "``<bound/>`` answer added (e.g. MAM metadata). Runs before the session becomes "
    "routable, so nothing is delivered to it in between.",
)

RESOURCE_BOUND: Final = EventHook[SessionEvent](
    "resource_bound", "host", "A session bound its resource and is now routable."
)

RESOURCE_UNBOUND: Final = EventHook[SessionEvent](
    "resource_unbound",
    "host",
    "A bound session ended (closed, replaced or timed out); it is no longer routable. "
    "Runs in a task of its own; when many sessions end at once, a few start per turn of "
    "the event loop (`c2s.teardowns_per_turn`), so handlers may run a little after "
    "the end.",
)

USER_AVAILABLE: Final = EventHook[PresenceEvent](
    "user_available", "host", "A session sent its initial available presence."
)

USER_UNAVAILABLE: Final = EventHook[PresenceEvent](
    "user_unavailable",
    "host",
    "A session that was available became unavailable (presence or disconnect); "
    "the presence is the unavailable stanza broadcast.",
)

# ----------------------------------------------------------------------------- accounts

USER_REGISTERED: Final = EventHook[UserEvent](
    "user_registered", "host", "An account was created (in-band, CLI or admin API)."
)

USER_REMOVED: Final = EventHook[UserEvent](
    "user_removed",
    "host",
    "An account is being deleted. Every module that stores user data deletes it here.",
)

USER_EXPORT: Final = FoldHook[tuple["Element", ...], UserEvent](
    "user_export",
    "host",
    "Collecting an account's data for `xmppd export-user` (XEP-0227). Return the tuple "
    "with your module's data appended, as the XEP-0227 element for it (e.g. the roster "
    "as <query xmlns='jabber:iq:roster'>). Every module that stores user data should.",
)

USER_EXPORT_FILES: Final = FoldHook[tuple[UserFile, ...], UserEvent](
    "user_export_files",
    "host",
    "Collecting the files stored for an account for a data export (`xmppd export`): "
    "return the tuple with yours appended (uploads). They are written next to the "
    "XEP-0227 document, under ``files/``.",
)

# ----------------------------------------------------------------------------- discovery

DISCO_INFO: Final = FoldHook[DiscoInfo, DiscoQuery](
    "disco_info",
    "host",
    "The disco#info answer for a host or account JID (and node); return it with your "
    "identities, features or forms added.",
)

DISCO_ITEMS: Final = FoldHook[tuple[DiscoItem, ...], DiscoQuery](
    "disco_items", "host", "The disco#items answer for a host or account JID (and node)."
)

# ----------------------------------------------------------------------------- lifecycle

HOST_STARTED: Final = EventHook[HostEvent](
    "host_started", "host", "A virtual host finished loading its modules."
)

SERVER_STOPPING: Final = EventHook[ServerEvent](
    "server_stopping", "global", "The server is about to close every stream and stop."
)

ALL_HOOKS: Final[tuple[EventHook[object] | FoldHook[object, object], ...]] = tuple(
    value for value in list(globals().values()) if isinstance(value, EventHook | FoldHook)
)
"""Every hook of the catalogue, in declaration order (for the docs generator)."""

__all__ = [
    "ALL_HOOKS",
    "BindRequest",
    "C2S_STREAM_ELEMENT",
    "BIND2_BOUND",
    "BIND2_FEATURES",
    "Bind2Request",
    "C2S_STREAM_FEATURES",
    "DISCO_INFO",
    "DISCO_ITEMS",
    "DiscoIdentity",
    "DiscoInfo",
    "DiscoItem",
    "DiscoQuery",
    "FILTER_PACKET",
    "FeaturesContext",
    "HOST_STARTED",
    "HibernatedRelease",
    "HibernatedStanza",
    "HostEvent",
    "IQ_TO_BARE",
    "IQ_TO_FULL",
    "IQ_TO_HOST",
    "MESSAGE_TO_BARE",
    "MESSAGE_TO_FULL",
    "MESSAGE_TO_HOST",
    "OFFLINE_MESSAGE",
    "PRESENCE_OUT",
    "PRESENCE_TO_BARE",
    "PRESENCE_TO_FULL",
    "PRESENCE_TO_HOST",
    "PRE_RESOURCE_BIND",
    "PacketContext",
    "PresenceEvent",
    "RESOURCE_BOUND",
    "RESOURCE_UNBOUND",
    "RouteInfo",
    "SERVER_STOPPING",
    "SM_STORE",
    "SM_STORE_RELEASE",
    "ServerEvent",
    "SessionEvent",
    "StreamElementEvent",
    "StanzaEvent",
    "USER_AVAILABLE",
    "USER_EXPORT",
    "USER_EXPORT_FILES",
    "USER_RECEIVE_PACKET",
    "USER_REGISTERED",
    "USER_REMOVED",
    "USER_SEND_PACKET",
    "USER_UNAVAILABLE",
    "UserEvent",
    "UserFile",
]
