"""A group chat hook file: mask or refuse groupchat messages whose body matches a
pattern, in every room of the host's MUC service (the ``muc_groupchat_message`` fold
of ``mod_muc``).

Enable it in the configuration::

    [hooks.muc_word_filter]
    patterns = ["(?i)darn", "heck"]
    action = "mask"            # or "refuse"

``mask`` replaces each match with asterisks before the room sends the message to its
occupants (and archives it); ``refuse`` answers the sender with ``policy-violation`` and
sends nothing to the room. Patterns are Python regular expressions.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from xmppd.api import Drop, Element, HookSet, ModuleContext, Priority, StanzaError
from xmppd.api.stanza import copy
from xmppd_hooks.word_filter import PatternOptions
from xmppd_modules.mod_muc.hooks import GROUPCHAT_MESSAGE, GroupchatContext


class MucWordFilterOptions(PatternOptions):
    action: Literal["mask", "refuse"] = Field(
        "mask", description="mask: replace matches with asterisks; refuse: policy-violation."
    )


handlers: HookSet[MucWordFilterOptions] = HookSet(
    "muc_word_filter",
    summary="Mask or refuse groupchat messages whose body matches configured patterns",
    options=MucWordFilterOptions,
)


@handlers.fold(GROUPCHAT_MESSAGE, priority=Priority.EARLY)
async def filter_room_words(
    ctx: ModuleContext[MucWordFilterOptions], stanza: Element, room: GroupchatContext
) -> Element | Drop:
    options = ctx.options
    body = stanza.find("body")
    if body is None or not body.text or not options.patterns:
        return stanza
    text = body.text
    for pattern in options.compiled:
        text = pattern.sub(lambda m: "*" * len(m.group(0)), text)
    if text == body.text:
        return stanza
    ctx.log.info("muc_word_filter: %s in %s from %s", options.action, room.room, room.nick)
    if options.action == "refuse":
        raise StanzaError("policy-violation", "message refused by the room's word filter")
    changed = copy(stanza)
    masked = changed.find("body")
    assert masked is not None
    masked.text = text
    return changed
