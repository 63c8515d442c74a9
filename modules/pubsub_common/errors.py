"""The error conditions of XEP-0060 (§§6-8), declared once: a defined stanza condition
plus, for most, a ``pubsub#errors`` application condition (RFC 6120 §8.3.2).

Raise ``NODE_NOT_FOUND()``, ``PRECONDITION_NOT_MET("why")``, ``unsupported("subscribe")``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from xmppd.api import StanzaError
from xmppd.api.stanza import payload
from xmppd_modules.pubsub_common.common import NS_ERRORS


@dataclass(frozen=True, slots=True)
class PubsubCondition:
    """One error case: ``condition`` (RFC 6120) and the optional ``pubsub#errors`` one."""

    condition: str
    app: str | None = None

    def __call__(self, text: str | None = None, **attrs: str) -> StanzaError:
        app = None if self.app is None else payload(NS_ERRORS, self.app, attrs or None)
        return StanzaError(self.condition, text, application=app)


NODE_NOT_FOUND: Final = PubsubCondition("item-not-found")
"""The node (or, for retract and items by id, the item) does not exist."""
ITEM_NOT_FOUND: Final = NODE_NOT_FOUND
NODE_EXISTS: Final = PubsubCondition("conflict")
FORBIDDEN: Final = PubsubCondition("forbidden")
"""Insufficient privileges (not an owner, publisher...; an outcast; may not create)."""
NODEID_REQUIRED: Final = PubsubCondition("bad-request", "nodeid-required")
INSTANT_NODES_UNSUPPORTED: Final = PubsubCondition("not-acceptable", "nodeid-required")
ITEM_REQUIRED: Final = PubsubCondition("bad-request", "item-required")
PAYLOAD_REQUIRED: Final = PubsubCondition("bad-request", "payload-required")
INVALID_PAYLOAD: Final = PubsubCondition("bad-request", "invalid-payload")
PAYLOAD_TOO_BIG: Final = PubsubCondition("not-acceptable", "payload-too-big")
PRECONDITION_NOT_MET: Final = PubsubCondition("conflict", "precondition-not-met")
INVALID_JID: Final = PubsubCondition("bad-request", "invalid-jid")
JID_REQUIRED: Final = PubsubCondition("bad-request", "jid-required")
NOT_SUBSCRIBED: Final = PubsubCondition("unexpected-request", "not-subscribed")
INVALID_SUBID: Final = PubsubCondition("not-acceptable", "invalid-subid")
INVALID_OPTIONS: Final = PubsubCondition("bad-request", "invalid-options")
PRESENCE_SUBSCRIPTION_REQUIRED: Final = PubsubCondition(
    "not-authorized", "presence-subscription-required"
)
CLOSED_NODE: Final = PubsubCondition("not-allowed", "closed-node")
MAX_NODES_EXCEEDED: Final = PubsubCondition("not-allowed", "max-nodes-exceeded")
TOO_MANY_SUBSCRIPTIONS: Final = PubsubCondition("not-allowed", "too-many-subscriptions")
NOT_ACCEPTABLE: Final = PubsubCondition("not-acceptable")
"""A bad form value, an affiliation change that would leave a node without an owner."""
BAD_REQUEST: Final = PubsubCondition("bad-request")
UNSUPPORTED: Final = PubsubCondition("feature-not-implemented", "unsupported")


def unsupported(feature: str, text: str | None = None) -> StanzaError:
    """``feature-not-implemented`` + ``<unsupported feature='...'/>`` (XEP-0060 §7-8)."""
    return UNSUPPORTED(text, feature=feature)
