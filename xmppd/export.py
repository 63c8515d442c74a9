"""XEP-0227 documents: an account's data for export (``xmppd export-user``)."""

from __future__ import annotations

import base64
from collections.abc import Iterable

from lxml import etree

from xmppd import ns
from xmppd.auth.scram import ScramCredentials
from xmppd.jid import JID
from xmppd.stanza import Element, child, copy, in_client_namespace, payload


def export_document(
    user: JID, credentials: Iterable[ScramCredentials], parts: Iterable[Element]
) -> Element:
    """``<server-data><host jid><user name>…</user></host></server-data>``."""
    doc = payload(ns.PIE, "server-data")
    host = child(doc, "host", {"jid": user.domain})
    account = child(host, "user", {"name": user.local})
    for cred in credentials:
        scram = child(
            account,
            "scram-credentials",
            {"mechanism": f"SCRAM-{cred.hash_name}"},
            namespace=ns.PIE_SCRAM,
        )
        child(scram, "iter-count", text=str(cred.iterations))
        child(scram, "salt", text=base64.b64encode(cred.salt).decode())
        child(scram, "server-key", text=base64.b64encode(cred.server_key).decode())
        child(scram, "stored-key", text=base64.b64encode(cred.stored_key).decode())
    for part in parts:
        # A stream-neutral stanza would otherwise take the pie namespace of its parent.
        namespaced = isinstance(part.tag, str) and part.tag.startswith("{")
        account.append(copy(part) if namespaced else in_client_namespace(part))
    return doc


def to_bytes(doc: Element) -> bytes:
    return etree.tostring(doc, encoding="utf-8", xml_declaration=True, pretty_print=True)
