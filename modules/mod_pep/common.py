"""XEP-0163: the ``Module`` object, its options, and the namespaces and limits it uses."""

from __future__ import annotations

from typing import Final, Literal

from pydantic import Field

from xmppd.api import Duration, Module, ModuleContext, Options, Size
from xmppd_modules.pubsub_common.common import (
    NS_ERRORS,
    NS_EVENT,
    NS_NODE_CONFIG,
    NS_OWNER,
    NS_PUBLISH_OPTIONS,
    NS_PUBSUB,
)
from xmppd_modules.pubsub_common.config import FormRules

__all__ = [
    "ACCESS_MODELS",
    "NOTIFY",
    "NS_ERRORS",
    "NS_EVENT",
    "NS_NODE_CONFIG",
    "NS_OWNER",
    "NS_PUBLISH_OPTIONS",
    "NS_PUBSUB",
    "Ctx",
    "PepOptions",
    "form_rules",
    "module",
]

NOTIFY: Final = "+notify"
"""Suffix of the XEP-0163 §2.4 interest features (``<node>+notify``)."""

ACCESS_MODELS: Final = ("presence", "open", "whitelist")
AccessModel = Literal["presence", "open", "whitelist"]


class PepOptions(Options):
    default_access_model: AccessModel = Field(
        "presence",
        description="Access model of a node created without one: 'presence' (XEP-0163 §5: "
        "contacts with a presence subscription to the owner), 'open' or 'whitelist'.",
    )
    default_max_items: int = Field(
        1, ge=1, le=100_000, description="Items a node created without 'pubsub#max_items' keeps."
    )
    max_items_limit: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="Most items one node keeps; 'pubsub#max_items' = 'max' means this many. "
        "Publishing beyond it deletes the oldest items; a larger number is refused.",
    )
    max_nodes: int = Field(
        1000, ge=1, le=100_000, description="Most nodes one account may have (then not-allowed)."
    )
    max_item_size: Size = Field(
        256 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Largest item payload, serialized (then not-acceptable, payload-too-big).",
    )
    caps_timeout: Duration = Field(
        20.0,
        gt=0,
        le=300,
        description="Time a client has to answer the server's XEP-0115 disco#info query.",
    )
    caps_cache_size: int = Field(
        10_000,
        ge=10,
        le=1_000_000,
        description="Verified XEP-0115 verification strings kept in memory (they are also "
        "stored in a table, so they survive restarts).",
    )
    max_caps_queries: int = Field(
        10,
        ge=1,
        le=1000,
        description="Unknown verification strings the server looks up for one session; "
        "later ones are ignored (the session keeps its previous interests).",
    )
    notify_all_owner_resources: bool = Field(
        True,
        description="Send notifications to every available resource of the owner, whatever "
        "its XEP-0115 interests; when false, the owner's resources are filtered like "
        "contacts' (XEP-0163 §4, notification filtering).",
    )


module = Module(
    "pep",
    "XEP-0163: Personal Eventing Protocol",
    options=PepOptions,
    depends=("roster", "presence"),
    soft_depends=("disco",),
    protocols=(
        "XEP-0163 v1.2.2",
        "XEP-0060 v1.26 (the PEP subset)",
        "XEP-0115 v1.6 (clients' interests)",
        "XEP-0223 v1.1",
    ),
)
Ctx = ModuleContext[PepOptions]


def form_rules(ctx: Ctx) -> FormRules:
    """What PEP accepts in configuration forms."""
    return FormRules(limit=ctx.options.max_items_limit, access_models=ACCESS_MODELS)
