"""XEP-0060: the ``Module`` object of the PubSub service and its options."""

from __future__ import annotations

from typing import Final, Literal

from pydantic import Field

from xmppd.api import AccessRule, Module, ModuleContext, Options, Size
from xmppd_modules.pubsub_common.config import FormRules, NodeConfig

ACCESS_MODELS: Final = ("open", "presence", "whitelist")
AccessModel = Literal["open", "presence", "whitelist"]
SendLast = Literal["never", "on_sub", "on_sub_and_presence"]


class PubsubOptions(Options):
    domain: str = Field(
        "",
        max_length=255,
        description="Domain of the service; empty: 'pubsub.' followed by the host's domain. "
        "Nodes belong to this name: renaming the service starts an empty one.",
    )
    name: str = Field(
        "Publish-Subscribe",
        max_length=200,
        description="Name of the service in disco#info and in the host's disco#items.",
    )
    create_nodes: AccessRule = Field(
        AccessRule("local"),
        description="Who may create nodes: 'anyone', 'local' (accounts of this server), "
        "'admins', 'nobody', or a list of JIDs and domains. Others get forbidden.",
    )
    default_access_model: AccessModel = Field(
        "open",
        description="Access model of a node created without one: 'open', 'presence' "
        "(users with a presence subscription to one of the node's owners, as their "
        "roster shows it) or 'whitelist' (owners, publishers and members).",
    )
    default_max_items: int = Field(
        10, ge=1, le=100_000, description="Items a node created without 'pubsub#max_items' keeps."
    )
    default_send_last_published_item: SendLast = Field(
        "on_sub",
        description="'pubsub#send_last_published_item' of a node created without it: "
        "'never', 'on_sub' (a new subscriber gets the last item), 'on_sub_and_presence' "
        "(treated as 'on_sub': the service does not track subscribers' presence).",
    )
    max_items_limit: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="Most items one node keeps; 'pubsub#max_items' = 'max' means this many. "
        "Publishing beyond it deletes the oldest items; a larger number is refused.",
    )
    max_nodes: int = Field(
        10_000, ge=1, le=10_000_000, description="Most nodes the service holds (then not-allowed)."
    )
    max_subscriptions: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="Most subscriptions one node has (then not-allowed, too-many-subscriptions).",
    )
    max_item_size: Size = Field(
        256 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Largest item payload, serialized (then not-acceptable, payload-too-big).",
    )


module = Module(
    "pubsub",
    "XEP-0060: Publish-Subscribe service",
    options=PubsubOptions,
    soft_depends=("roster", "disco"),
    protocols=("XEP-0060 v1.26 (a service of leaf nodes)",),
)
Ctx = ModuleContext[PubsubOptions]


def form_rules(ctx: Ctx) -> FormRules:
    """What the service accepts in configuration forms."""
    return FormRules(limit=ctx.options.max_items_limit, access_models=ACCESS_MODELS)


def default_config(ctx: Ctx) -> NodeConfig:
    """The configuration of a node created without a form (``pubsub#default``)."""
    options = ctx.options
    return NodeConfig(
        access_model=options.default_access_model,
        max_items=min(options.default_max_items, options.max_items_limit),
        send_last_published_item=options.default_send_last_published_item,
    )


def service_domain(ctx: Ctx) -> str:
    return ctx.options.domain or f"pubsub.{ctx.domain}"
