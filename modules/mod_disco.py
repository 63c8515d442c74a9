"""XEP-0030: Service Discovery (and XEP-0115 caps for the server itself)."""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Final

from xmppd.api import (
    Drop,
    IqRequest,
    Module,
    ModuleContext,
    NoOptions,
    Scope,
    StanzaError,
    hooks,
    ns,
)
from xmppd.api.hooks import DiscoIdentity, DiscoInfo, DiscoItem, DiscoQuery
from xmppd.api.stanza import Element, child, payload

module: Module[NoOptions] = Module(
    "disco",
    "XEP-0030: Service Discovery",
    protocols=("XEP-0030 v2.5", "XEP-0115 v1.6"),
)
Ctx = ModuleContext[NoOptions]

CAPS_NODE = "https://github.com/xmppd/xmppd"
"""Our XEP-0115 node URI."""

LANG = "en"
"""The language of identity names: our streams declare ``xml:lang='en'``.

Every identity carries it explicitly. XEP-0115 hashes an identity's language, and
clients disagree on whether one inherited from the stream header counts (aioxmpp
says yes, most say no); with the attribute on the element they all compute the same
verification string.
"""


async def build_info(ctx: Ctx, query: DiscoQuery, scope: Scope) -> DiscoInfo:
    """Identities and features of the host or an account, through the ``disco_info`` fold.

    For a node other than the caps node, only what ``disco_info`` handlers add is shown.
    """
    if query.node and not query.node.startswith(CAPS_NODE):
        info = DiscoInfo()
    elif scope is Scope.HOST:
        identities, features = ctx.disco_info_for(scope)
        ids = [DiscoIdentity("server", "im", "xmppd")]
        ids += [DiscoIdentity(i.category, i.type, i.name) for i in identities]
        feats = [ns.DISCO_INFO, ns.DISCO_ITEMS, *features]
        info = DiscoInfo(tuple(ids), tuple(dict.fromkeys(feats)))
    else:
        _, features = ctx.disco_info_for(scope)
        feats = [ns.DISCO_INFO, ns.DISCO_ITEMS, *features]
        info = DiscoInfo((DiscoIdentity("account", "registered"),), tuple(dict.fromkeys(feats)))
    result = await ctx.fold_hook(hooks.DISCO_INFO, info, query)
    if not isinstance(result, Drop):
        info = result
    if query.node and not info.identities and not info.features:
        raise StanzaError("item-not-found")
    return info


def info_element(info: DiscoInfo, node: str | None) -> Element:
    query = payload(ns.DISCO_INFO, "query")
    if node:
        query.set("node", node)
    for ident in sorted(set(info.identities), key=lambda i: (i.category, i.type, i.name)):
        attrs = {"category": ident.category, "type": ident.type, f"{{{ns.XML}}}lang": LANG}
        if ident.name:
            attrs["name"] = ident.name
        child(query, "identity", attrs)
    for feature in sorted(set(info.features)):
        child(query, "feature", {"var": feature})
    for form in info.forms:
        query.append(form)
    return query


def caps_hash(info: DiscoInfo) -> str:
    """XEP-0115 §5.1 verification string hash (SHA-1, base64); forms not included."""
    parts = []
    for ident in sorted(set(info.identities), key=lambda i: (i.category, i.type, LANG, i.name)):
        parts.append(f"{ident.category}/{ident.type}/{LANG}/{ident.name}<")
    parts.extend(f"{f}<" for f in sorted(set(info.features)))
    digest = hashlib.sha1("".join(parts).encode("utf-8")).digest()
    return base64.b64encode(digest).decode("ascii")


@module.iq("get", ns.DISCO_INFO, "query", to=Scope.HOST)
async def host_info(ctx: Ctx, req: IqRequest) -> Element:
    node = req.payload.get("node")
    assert req.from_ is not None
    info = await build_info(ctx, DiscoQuery(req.to, req.from_, node), Scope.HOST)
    return req.result(info_element(info, node))


@module.iq("get", ns.DISCO_INFO, "query", to=Scope.BARE)
async def account_info(ctx: Ctx, req: IqRequest) -> Element:
    assert req.from_ is not None
    if not req.is_from_owner and not await ctx.account_exists(req.to):
        raise StanzaError("service-unavailable")
    node = req.payload.get("node")
    info = await build_info(ctx, DiscoQuery(req.to.bare, req.from_, node), Scope.BARE)
    return req.result(info_element(info, node))


async def _items(ctx: Ctx, query: DiscoQuery) -> Element:
    items = await ctx.fold_hook(hooks.DISCO_ITEMS, (), query)
    result = payload(ns.DISCO_ITEMS, "query")
    if query.node:
        result.set("node", query.node)
    if not isinstance(items, Drop):
        for item in items:
            assert isinstance(item, DiscoItem)
            attrs = {"jid": str(item.jid)}
            if item.node:
                attrs["node"] = item.node
            if item.name:
                attrs["name"] = item.name
            child(result, "item", attrs)
    return result


@module.iq("get", ns.DISCO_ITEMS, "query", to=Scope.HOST)
async def host_items(ctx: Ctx, req: IqRequest) -> Element:
    assert req.from_ is not None
    return req.result(await _items(ctx, DiscoQuery(req.to, req.from_, req.payload.get("node"))))


@module.iq("get", ns.DISCO_ITEMS, "query", to=Scope.BARE)
async def account_items(ctx: Ctx, req: IqRequest) -> Element:
    assert req.from_ is not None
    if not req.is_from_owner and not await ctx.account_exists(req.to):
        raise StanzaError("service-unavailable")
    query = DiscoQuery(req.to.bare, req.from_, req.payload.get("node"))
    return req.result(await _items(ctx, query))


@module.fold(hooks.C2S_STREAM_FEATURES)
async def advertise_caps(
    ctx: Ctx, features: tuple[Element, ...], fctx: hooks.FeaturesContext
) -> tuple[Element, ...]:
    """XEP-0115 §6.3: the server's own caps in stream features, after authentication."""
    if fctx.stage != "post-auth":
        return features
    caps = payload(ns.CAPS, "c", {"hash": "sha-1", "node": CAPS_NODE, "ver": await _ver(ctx)})
    return (*features, caps)


_VER_TTL: Final = 10.0
"""Seconds the server's own caps hash is reused for stream features (every login
computes it otherwise: the host's disco#info through every ``disco_info`` handler).
A change of the host's features (a reload) shows in them at most this much later;
disco#info queries are answered fresh."""
_vers: dict[str, tuple[float, str]] = {}


async def _ver(ctx: Ctx) -> str:
    now = time.monotonic()
    cached = _vers.get(ctx.domain)
    if cached is not None and now < cached[0]:
        return cached[1]
    ver = caps_hash(await build_info(ctx, DiscoQuery(ctx.jid, ctx.jid, None), Scope.HOST))
    _vers[ctx.domain] = (now + _VER_TTL, ver)
    return ver
