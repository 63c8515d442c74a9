"""XEP-0049: Private XML Storage — XML fragments an account keeps on its server.

A ``<query xmlns='jabber:iq:private'>`` set stores its children, grouped by namespace:
the elements of one namespace replace whatever that namespace held. A get names the
namespace(s) with an element, usually empty, and gets back what is stored, or the
element it sent, empty, when nothing is. Only the account itself may get or set
(anyone else: ``forbidden``, the condition XEP-0049 prefers).

Errors: a query without a child: ``not-acceptable`` (§2.3); a child in a reserved
namespace (``jabber:*``, ``http://jabber.org/*``, ``vcard-temp`` by default, see the
option), without a namespace of its own, or with descendants that undeclare the
namespace (``xmlns=''``, which the stored form cannot keep): ``not-acceptable``; a
namespace holding more than ``max_size`` bytes, or more than ``max_namespaces``
namespaces per account: ``policy-violation``.

Data is kept in the key/value store ``private`` (one key per namespace), as a JSON
form of the element tree, rebuilt with the stanza helpers on the way out.
"""

from __future__ import annotations

import json
from typing import Any, Final

from pydantic import Field

from xmppd.api import (
    IqRequest,
    Module,
    ModuleContext,
    Options,
    Scope,
    Size,
    StanzaError,
    hooks,
)
from xmppd.api.hooks import UserEvent
from xmppd.api.stanza import Element, child, element, payload, serialize

NS_PRIVATE: Final = "jabber:iq:private"
STORE: Final = "private"
MAX_NAMESPACE_LENGTH: Final = 1023
"""Longest namespace that can be a key of the key/value store."""


class PrivateOptions(Options):
    max_size: Size = Field(
        64 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Most bytes one namespace may hold (its elements, serialized).",
    )
    max_namespaces: int = Field(
        100, ge=1, le=10_000, description="Most namespaces one account may store data in."
    )
    reserved_prefixes: tuple[str, ...] = Field(
        ("jabber:", "http://jabber.org/", "vcard-temp"),
        description="Namespaces that start with one of these are reserved (XEP-0049 §2.3): "
        "getting or setting them is refused with not-acceptable.",
    )


module = Module(
    "private",
    "XEP-0049: Private XML Storage",
    options=PrivateOptions,
    protocols=("XEP-0049 v1.2",),
)
Ctx = ModuleContext[PrivateOptions]


# ----------------------------------------------------------------------------- XML <-> JSON


def _split(tag: str) -> tuple[str | None, str]:
    if tag.startswith("{"):
        namespace, _, local = tag[1:].partition("}")
        return namespace, local
    return None, tag


def encode(el: Element) -> list[Any]:
    """A JSON-ready form of an element tree: ``[tag, attributes, text, tail, children]``."""
    return [
        el.tag,
        {str(k): str(v) for k, v in el.attrib.items()},
        el.text,
        el.tail,
        [encode(c) for c in el if isinstance(c.tag, str)],
    ]


def has_unqualified(el: Element) -> bool:
    """Does a descendant have no namespace (``xmlns=''``)? Rebuilt, it would take its
    parent's default namespace, so such data is refused rather than changed."""
    return any(isinstance(d.tag, str) and not d.tag.startswith("{") for d in el.iterdescendants())


def decode(data: list[Any], parent: Element | None = None) -> Element:
    """Rebuild what :func:`encode` produced (under ``parent``, if given)."""
    tag, attrs, text, tail, children = data
    namespace, local = _split(tag)
    if parent is None:
        el = payload(namespace, local, attrs) if namespace else element(local, attrs)
    elif namespace is None and _split(parent.tag)[0] is not None:
        el = parent.makeelement(local, attrs)
        parent.append(el)
    else:
        el = child(parent, local, attrs, namespace=namespace)
    el.text = text
    el.tail = tail if parent is not None else None
    for sub in children:
        decode(sub, el)
    return el


# ----------------------------------------------------------------------------- IQs


def _namespaced_children(ctx: Ctx, query: Element) -> list[tuple[str, Element]]:
    children = [c for c in query if isinstance(c.tag, str)]
    if not children:
        raise StanzaError("not-acceptable", "name a namespace with a child element")
    found = []
    for el in children:
        namespace, _ = _split(el.tag)
        if (
            namespace is None
            or namespace == NS_PRIVATE
            or namespace.startswith(ctx.options.reserved_prefixes)
        ):
            raise StanzaError("not-acceptable", "this namespace is reserved")
        if len(namespace) > MAX_NAMESPACE_LENGTH:
            raise StanzaError("not-acceptable", "namespace too long")
        if has_unqualified(el):
            raise StanzaError("not-acceptable", "elements without a namespace cannot be stored")
        found.append((namespace, el))
    return found


def _require_owner(req: IqRequest) -> None:
    if not req.is_from_owner:
        raise StanzaError("forbidden", "private data belongs to its owner")


@module.iq("get", NS_PRIVATE, "query", to=Scope.BARE)
async def get_private(ctx: Ctx, req: IqRequest) -> Element:
    _require_owner(req)
    wanted = _namespaced_children(ctx, req.payload)
    store = ctx.keyval(STORE)
    query = payload(NS_PRIVATE, "query")
    for namespace, el in wanted:
        stored = await store.get(req.to.local, namespace)
        if stored is None:
            query.append(payload(namespace, _split(el.tag)[1]))
            continue
        for data in json.loads(stored):
            query.append(decode(data))
    return req.result(query)


@module.iq("set", NS_PRIVATE, "query", to=Scope.BARE)
async def set_private(ctx: Ctx, req: IqRequest) -> Element:
    _require_owner(req)
    groups: dict[str, list[Element]] = {}
    for namespace, el in _namespaced_children(ctx, req.payload):
        groups.setdefault(namespace, []).append(el)
    for elements in groups.values():
        if sum(len(serialize(el)) for el in elements) > ctx.options.max_size:
            raise StanzaError(
                "policy-violation", f"at most {ctx.options.max_size} bytes per namespace"
            )
    user = req.to.local
    store = ctx.keyval(STORE)
    existing = set(await store.keys(user))
    if len(existing | groups.keys()) > ctx.options.max_namespaces:
        raise StanzaError(
            "policy-violation", f"at most {ctx.options.max_namespaces} namespaces per account"
        )
    for namespace, elements in groups.items():
        await store.set(user, json.dumps([encode(el) for el in elements]), namespace)
    return req.result()


@module.on(hooks.USER_REMOVED)
async def forget(ctx: Ctx, event: UserEvent) -> None:
    await ctx.keyval(STORE).delete(event.jid.local)


@module.fold(hooks.USER_EXPORT)
async def export(ctx: Ctx, parts: tuple[Element, ...], event: UserEvent) -> tuple[Element, ...]:
    """XEP-0227: every stored namespace in one ``jabber:iq:private`` query."""
    store = ctx.keyval(STORE)
    namespaces = await store.keys(event.jid.local)
    if not namespaces:
        return parts
    query = payload(NS_PRIVATE, "query")
    for namespace in sorted(namespaces):
        stored = await store.get(event.jid.local, namespace)
        for data in json.loads(stored or "[]"):
            query.append(decode(data))
    return (*parts, query)
