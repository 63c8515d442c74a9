"""Who may do something: one small rule type for every feature that needs one (node
creation on the PubSub service, room creation, upload, admin commands...).

In the configuration an :class:`AccessRule` is a word or a list::

    create_nodes = "local"          # anyone | local | admins | nobody
    create_nodes = ["alice@example.org", "example.net"]   # these JIDs and domains

A listed bare JID matches every resource of that account; a listed domain matches
every JID at that domain (not its subdomains).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

from xmppd.jid import JID, InvalidJID

RuleWord = Literal["anyone", "local", "admins", "nobody"]
_WORDS: tuple[str, ...] = ("anyone", "local", "admins", "nobody")


@dataclass(frozen=True, slots=True)
class AccessRule:
    """``kind`` is one of ``anyone``, ``local`` (accounts of this server's hosts),
    ``admins`` (the host's configured admins), ``nobody`` or ``listed`` (``jids`` and
    ``domains``)."""

    kind: Literal["anyone", "local", "admins", "nobody", "listed"]
    jids: frozenset[JID] = frozenset()
    domains: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, value: object) -> AccessRule:
        """From a config value: one of the words, or a list of JIDs and domains."""
        if isinstance(value, AccessRule):
            return value
        if isinstance(value, str):
            if value not in _WORDS:
                raise ValueError(f"expected one of {', '.join(_WORDS)} or a list of JIDs/domains")
            return cls(value)  # type: ignore[arg-type]
        if isinstance(value, list | tuple):
            jids: set[JID] = set()
            domains: set[str] = set()
            for item in value:
                if not isinstance(item, str):
                    raise ValueError(f"expected a JID or domain, got {item!r}")
                try:
                    jid = JID.parse(item)
                except InvalidJID as exc:
                    raise ValueError(f"{item!r}: {exc}") from None
                if jid.local:
                    jids.add(jid.bare)
                else:
                    domains.add(jid.domain)
            return cls("listed", frozenset(jids), frozenset(domains))
        raise ValueError("expected a word (anyone, local, admins, nobody) or a list")

    def allows(
        self, jid: JID, *, is_local: Callable[[JID], bool], is_admin: Callable[[JID], bool]
    ) -> bool:
        """Whether ``jid`` may; the caller says what local and admin mean for it."""
        kind = self.kind
        if kind == "anyone":
            return True
        if kind == "nobody":
            return False
        if kind == "local":
            return bool(jid.local) and is_local(jid)
        if kind == "admins":
            return is_admin(jid)
        return jid.bare in self.jids or jid.domain in self.domains

    def describe(self) -> object:
        """The rule as it would be written in the configuration."""
        if self.kind != "listed":
            return self.kind
        return sorted(str(j) for j in self.jids) + sorted(self.domains)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls.parse,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda rule: rule.describe()
            ),
        )
