"""The public API for modules (``modules/``) and hook files (``hooks/``).

Import only from here (and ``xmppd.api.*``); everything else in ``xmppd`` is
private and may change. See docs/module-guide.md for a worked example.
"""

from __future__ import annotations

from xmppd.access import AccessRule
from xmppd.api import hooks, ns
from xmppd.auth.accounts import AccountExists, NoSuchAccount
from xmppd.cluster.placement import KeyOf, Placement, by_bare_jid, by_domain
from xmppd.config import Duration, Size
from xmppd.errors import StanzaError, StreamError
from xmppd.events import DROP, STOP, Drop, EventHook, FoldHook, Priority, Stop
from xmppd.health import HealthCheck, HealthPart, ModuleHealth
from xmppd.httproutes import HttpClient, HttpHandler, client_of
from xmppd.invalidation import ALL as INVALIDATE_ALL
from xmppd.iq import IqRequest
from xmppd.iqtracker import IqTimeout
from xmppd.jid import JID, InvalidJID
from xmppd.metrics import HostCounter, HostGauge, HostHistogram, ModuleMetrics
from xmppd.module import (
    HookSet,
    Identity,
    Module,
    ModuleContext,
    NoOptions,
    Options,
    Scope,
    ServiceKey,
)
from xmppd.owniq import KeyedLocks, OwnIqWatch
from xmppd.peeraddress import source_key
from xmppd.router import Destination
from xmppd.service import ServiceDomain
from xmppd.sessions import Session, SessionKey, SessionRegistry
from xmppd.stanza import Element

__all__ = [
    "DROP",
    "INVALIDATE_ALL",
    "STOP",
    "JID",
    "KeyOf",
    "AccessRule",
    "AccountExists",
    "Destination",
    "Drop",
    "Duration",
    "Element",
    "EventHook",
    "FoldHook",
    "HealthCheck",
    "HealthPart",
    "HookSet",
    "HttpClient",
    "HttpHandler",
    "HostCounter",
    "HostGauge",
    "HostHistogram",
    "Identity",
    "InvalidJID",
    "IqRequest",
    "IqTimeout",
    "KeyedLocks",
    "Module",
    "ModuleContext",
    "ModuleHealth",
    "ModuleMetrics",
    "NoOptions",
    "NoSuchAccount",
    "Options",
    "OwnIqWatch",
    "Placement",
    "Priority",
    "Scope",
    "ServiceDomain",
    "ServiceKey",
    "Session",
    "SessionKey",
    "SessionRegistry",
    "Size",
    "StanzaError",
    "Stop",
    "StreamError",
    "by_bare_jid",
    "by_domain",
    "client_of",
    "hooks",
    "ns",
    "source_key",
]
