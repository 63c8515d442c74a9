"""Stanza helpers for modules: build elements and replies without string formatting."""

from __future__ import annotations

from xmppd.stanza import (
    Element,
    child,
    child_text,
    copy,
    element,
    error_reply,
    find_child,
    in_client_namespace,
    iq_result,
    jid_attr,
    new_id,
    parse,
    payload,
    serialize,
    summary,
)

__all__ = [
    "Element",
    "child",
    "child_text",
    "copy",
    "element",
    "error_reply",
    "find_child",
    "in_client_namespace",
    "iq_result",
    "jid_attr",
    "new_id",
    "parse",
    "payload",
    "serialize",
    "summary",
]
