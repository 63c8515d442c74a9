"""XEP-0313: the ``Module`` object, its options and the namespaces and limits it uses."""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import Field, StringConstraints

from xmppd.api import Duration, Module, ModuleContext, Options

NS_MAM: Final = "urn:xmpp:mam:2"
NS_MAM_EXTENDED: Final = "urn:xmpp:mam:2#extended"
NS_SID: Final = "urn:xmpp:sid:0"
NS_RSM: Final = "http://jabber.org/protocol/rsm"
NS_FORWARD: Final = "urn:xmpp:forward:0"
NS_HINTS: Final = "urn:xmpp:hints"
NS_FULLTEXT: Final = "urn:xmpp:fulltext:0"
NS_XDATA_VALIDATE: Final = "http://jabber.org/protocol/xdata-validate"
FULLTEXT_FIELD: Final = f"{{{NS_FULLTEXT}}}fulltext"
"""The XEP-0431 search field of the query form."""

KEPT_WITHOUT_BODY: Final = frozenset(
    {
        "urn:xmpp:message-correct:0",  # XEP-0308
        "urn:xmpp:message-retract:0",  # XEP-0424 (old)
        "urn:xmpp:message-retract:1",  # XEP-0424
        "urn:xmpp:fasten:0",  # XEP-0422, carries old retractions
        "urn:xmpp:reactions:0",  # XEP-0444
        "urn:xmpp:openpgp:0",  # XEP-0373
    }
)
"""Payload namespaces that make a bodyless message worth archiving."""

NS_RECEIPTS: Final = "urn:xmpp:receipts"
NS_MARKERS: Final = "urn:xmpp:chat-markers:0"
KEPT_STATUS: Final = frozenset(
    {
        f"{{{NS_RECEIPTS}}}received",  # XEP-0184
        f"{{{NS_MARKERS}}}received",  # XEP-0333
        f"{{{NS_MARKERS}}}displayed",
        f"{{{NS_MARKERS}}}acknowledged",
    }
)
"""Bodyless status messages that are archived too: a client that rebuilds its history
from the archive needs them to show a message as delivered or read (as Prosody does)."""

PAGE_BYTES: Final = 1024 * 1024
"""A page of results stops early once its messages exceed this many bytes: they are
written to the client at once, and its write buffer is limited."""
PURGE_BATCH: Final = 1000
"""Rows deleted per statement by retention and account removal (keeps the loop free)."""
PURGE_INTERVAL: Final = 3600.0
"""Seconds between two retention runs."""
MAX_PREF_JIDS: Final = 1000
MAX_FULLTEXT_WORDS: Final = 16
PREFS_CACHE: Final = 10_000
"""Accounts whose preferences are kept in memory (least recently used go first)."""


Username = Annotated[str, StringConstraints(min_length=1, max_length=1023)]
PositiveDuration = Annotated[Duration, Field(gt=0)]


class MamOptions(Options):
    default: Literal["always", "never", "roster"] = Field(
        "always",
        description="Archiving preference of accounts that have not set their own: "
        "'always', 'never', or 'roster' (only messages with contacts in the roster).",
    )
    retention: Duration = Field(
        "forever",
        validate_default=True,
        gt=0,
        description="How long archived messages are kept, e.g. '365d'; 'forever' keeps "
        "them. Older entries are deleted at start-up and then every hour.",
    )
    retention_by_user: dict[Username, PositiveDuration] = Field(
        default_factory=dict,
        max_length=10_000,
        description="Retention of some accounts, overriding 'retention': account name "
        "(the part before @) to a duration, e.g. {alice = '30d', bob = 'forever'}.",
    )
    max_page_size: int = Field(
        250, ge=1, le=1000, description="Largest page of results a query returns (RSM max)."
    )
    default_page_size: int = Field(
        50, ge=1, le=1000, description="Page size of a query that does not ask for one."
    )
    archive_without_body: bool = Field(
        False,
        description="Also archive every chat and normal message without a body (chat "
        "states, for instance). Off: only messages with a body, a delivery receipt "
        "(XEP-0184 <received/>), a chat marker (XEP-0333), a correction, retraction, "
        "reaction or OpenPGP payload, or the XEP-0334 <store/> hint.",
    )
    count_results: bool = Field(
        True,
        description="Include the RSM <count> and first index in query results. Costs one "
        "counting query over the matching entries per page.",
    )


module = Module(
    "mam",
    "XEP-0313: Message Archive Management",
    options=MamOptions,
    depends=("roster",),
    protocols=(
        "XEP-0313 v1.1",
        "XEP-0359 v0.7",
        "XEP-0059 v1.0",
        "XEP-0431 v0.2",
        "XEP-0441 v0.2",
        "XEP-0334 v0.3 (store, no-store, no-permanent-store)",
    ),
)
Ctx = ModuleContext[MamOptions]
