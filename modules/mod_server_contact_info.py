"""XEP-0157: Contact Addresses for XMPP Services — who to reach about this server.

The host's disco#info carries a ``http://jabber.org/network/serverinfo`` form with the
configured addresses (URIs such as ``mailto:abuse@example.org`` or
``xmpp:admin@example.org``), one field per kind: abuse, admin, feedback, sales,
security, status, support. Kinds left empty are not listed; with none configured the
form is not added.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from pydantic import Field, field_validator

from xmppd.api import Module, ModuleContext, Options, hooks, ns
from xmppd.api.hooks import DiscoInfo, DiscoQuery
from xmppd.api.stanza import child, payload

FORM_TYPE: Final = "http://jabber.org/network/serverinfo"
KINDS: Final = ("abuse", "admin", "feedback", "sales", "security", "status", "support")


def _uris(v: tuple[str, ...]) -> tuple[str, ...]:
    for uri in v:
        scheme, colon, rest = uri.partition(":")
        if not colon or not rest or not scheme.isascii() or not scheme.isalpha():
            raise ValueError(f"{uri!r} is not a URI (mailto:..., xmpp:..., https://...)")
    return v


class ContactOptions(Options):
    abuse: tuple[str, ...] = Field((), description="Where to report abuse (URIs).")
    admin: tuple[str, ...] = Field((), description="The server's administrators (URIs).")
    feedback: tuple[str, ...] = Field((), description="Where to send feedback (URIs).")
    sales: tuple[str, ...] = Field((), description="Sales contacts (URIs).")
    security: tuple[str, ...] = Field((), description="Where to report security issues.")
    status: tuple[str, ...] = Field((), description="Where the service's status is shown.")
    support: tuple[str, ...] = Field((), description="Where users get help (URIs).")

    @field_validator(*KINDS)
    @classmethod
    def _are_uris(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _uris(v)


module = Module(
    "server_contact_info",
    "XEP-0157: Contact Addresses for XMPP Services",
    options=ContactOptions,
    soft_depends=("disco",),
    protocols=("XEP-0157 v1.1",),
)
Ctx = ModuleContext[ContactOptions]


@module.fold(hooks.DISCO_INFO)
async def contact_form(ctx: Ctx, info: DiscoInfo, query: DiscoQuery) -> DiscoInfo:
    """The serverinfo form on the host's own disco#info (no node)."""
    to = query.to
    if to.local or to.resource or query.node or to.domain != ctx.domain:
        return info
    opts = ctx.options
    fields = [(kind, getattr(opts, kind)) for kind in KINDS if getattr(opts, kind)]
    if not fields:
        return info
    form = payload(ns.DATA_FORMS, "x", {"type": "result"})
    hidden = child(form, "field", {"var": "FORM_TYPE", "type": "hidden"})
    child(hidden, "value", text=FORM_TYPE)
    for kind, uris in fields:
        field = child(form, "field", {"var": f"{kind}-addresses", "type": "list-multi"})
        for uri in uris:
            child(field, "value", text=uri)
    return replace(info, forms=(*info.forms, form))
