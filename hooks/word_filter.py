"""A ``filter_packet`` hook file: drop or bounce messages whose body matches a pattern.

Enable it in the configuration::

    [hooks.word_filter]
    patterns = ["(?i)buy cheap", "casino"]
    action = "bounce"          # or "drop"
    exempt_domains = ["localhost"]

Patterns are Python regular expressions, searched in each message ``<body>``.
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import Literal

from pydantic import Field, field_validator

from xmppd.api import (
    DROP,
    Drop,
    Element,
    HookSet,
    ModuleContext,
    Options,
    Priority,
    StanzaError,
    hooks,
)
from xmppd.api.hooks import RouteInfo
from xmppd.api.stanza import child_text, error_reply


class PatternOptions(Options):
    """Options of a filter by regular expressions (also used by ``muc_word_filter``):
    the patterns, checked at start-up, compiled once."""

    patterns: tuple[str, ...] = Field((), description="Regular expressions to look for.")

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid pattern {pattern!r}: {exc}") from None
        return value

    @cached_property
    def compiled(self) -> tuple[re.Pattern[str], ...]:
        return tuple(re.compile(p) for p in self.patterns)


class WordFilterOptions(PatternOptions):
    action: Literal["drop", "bounce"] = Field(
        "bounce", description="drop: discard silently; bounce: answer policy-violation."
    )
    exempt_domains: tuple[str, ...] = Field(
        (), description="Senders from these domains are never filtered."
    )


handlers: HookSet[WordFilterOptions] = HookSet(
    "word_filter",
    summary="Drop or bounce messages whose body matches configured patterns",
    options=WordFilterOptions,
)


@handlers.fold(hooks.FILTER_PACKET, priority=Priority.EARLY)
async def filter_words(
    ctx: ModuleContext[WordFilterOptions], stanza: Element, route: RouteInfo
) -> Element | Drop:
    options = ctx.options
    if not options.patterns or stanza.tag != "message":
        return stanza
    body = child_text(stanza, "body")
    if not body or not any(p.search(body) for p in options.compiled):
        return stanza
    sender = stanza.get("from", "")
    domain = sender.split("@", 1)[-1].split("/", 1)[0]
    if domain in options.exempt_domains:
        return stanza
    ctx.log.info("word_filter: %s from %s", options.action, sender)
    if options.action == "bounce":
        reply = error_reply(stanza, StanzaError("policy-violation", "message refused by filter"))
        if reply is not None and route.origin is not None:
            ctx.sessions.send_raw(route.origin, reply)
    return DROP
