"""XMPP addresses (JIDs) as defined by RFC 7622.

A JID has the form ``[localpart@]domainpart[/resourcepart]``.  :meth:`JID.parse`
splits a string as described in RFC 7622 §3.1 and prepares each part:

* the localpart with the PRECIS ``UsernameCaseMapped`` profile (RFC 8265) plus the
  extra characters RFC 7622 §3.3.1 forbids (``"&'/:<>@``);
* the domainpart by lowercasing, dropping one trailing dot and checking the labels
  (ASCII LDH labels, IP literals, or NFC-normalised internationalised labels);
* the resourcepart with the PRECIS ``OpaqueString`` profile (case is preserved).

Each part is limited to 1023 octets of UTF-8 once prepared.  Parsing is memoised,
and pure-ASCII parts that PRECIS would not change skip the PRECIS machinery.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Final

from precis_i18n import get_profile

__all__ = ["JID", "InvalidJID", "domainprep", "nodeprep", "resourceprep"]

MAX_PART_BYTES: Final = 1023
"""Largest allowed size of each prepared part, in octets of UTF-8 (RFC 7622 §3)."""

# Preparation never shrinks a part by anything near this factor, so longer input can
# be rejected before running PRECIS on it (a guard against pathological input).
MAX_INPUT_CHARS: Final = 4 * MAX_PART_BYTES

_USERNAME_PROFILE: Final = get_profile("UsernameCaseMapped")
_OPAQUE_PROFILE: Final = get_profile("OpaqueString")

# Printable ASCII minus the characters RFC 7622 §3.3.1 forbids in a localpart
# ("&'/:<>@).  For such strings UsernameCaseMapped is exactly str.lower().
_ASCII_LOCAL_RE: Final = re.compile(r"[!#-%(-.0-9;=?A-~]+")
_FORBIDDEN_LOCAL_CHARS: Final = frozenset("\"&'/:<>@")

# One or more dot-separated LDH labels (lowercase input), each 1-63 octets, not
# starting or ending with a hyphen.
_LDH_LABEL: Final = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_ASCII_DOMAIN_RE: Final = re.compile(rf"{_LDH_LABEL}(?:\.{_LDH_LABEL})*")
_ASCII_LABEL_RE: Final = re.compile(_LDH_LABEL)

# Label separators that RFC 7622 §3.2 (via IDNA) treats like U+002E FULL STOP.
_DOT_MAP: Final = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})

# Unicode general categories accepted in the non-ASCII characters of a domain label:
# letters, marks and decimal digits (roughly the IDNA2008 PVALID repertoire).
_IDN_CATEGORIES: Final = frozenset({"Ll", "Lu", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd"})


class InvalidJID(ValueError):
    """Raised when a string or part cannot be turned into a valid JID."""


def _reason(exc: UnicodeError) -> str:
    """The PRECIS rule that rejected a string (e.g. ``DISALLOWED/spaces``)."""
    return exc.reason if isinstance(exc, UnicodeEncodeError) else "invalid"


def _check_length(value: str, what: str) -> None:
    # Any str has at most 4 UTF-8 octets per character, so short strings need no
    # encoding to be known to fit.
    if len(value) * 4 > MAX_PART_BYTES and len(value.encode("utf-8")) > MAX_PART_BYTES:
        raise InvalidJID(f"{what} is longer than {MAX_PART_BYTES} octets")


def nodeprep(local: str) -> str:
    """Prepare a localpart (RFC 7622 §3.3) and return its canonical form.

    Applies PRECIS UsernameCaseMapped, rejects the characters ``"&'/:<>@`` and
    enforces the 1..1023 octet length.  Raises :class:`InvalidJID` on failure.
    """
    if len(local) > MAX_INPUT_CHARS:
        raise InvalidJID("localpart is too long")
    if _ASCII_LOCAL_RE.fullmatch(local) is not None:
        result = local.lower()
    else:
        if not local:
            raise InvalidJID("empty localpart")
        try:
            result = _USERNAME_PROFILE.enforce(local)
        except UnicodeError as exc:
            raise InvalidJID(f"invalid localpart: {_reason(exc)}") from None
        if not _FORBIDDEN_LOCAL_CHARS.isdisjoint(result):
            raise InvalidJID("localpart contains a forbidden character")
    _check_length(result, "localpart")
    return result


def resourceprep(resource: str) -> str:
    """Prepare a resourcepart (RFC 7622 §3.4) and return its canonical form.

    Applies PRECIS OpaqueString (no case mapping) and enforces the 1..1023 octet
    length.  Raises :class:`InvalidJID` on failure.
    """
    if len(resource) > MAX_INPUT_CHARS:
        raise InvalidJID("resourcepart is too long")
    if resource.isascii() and resource.isprintable() and resource:
        # OpaqueString leaves printable ASCII (including spaces) unchanged.
        result = resource
    else:
        if not resource:
            raise InvalidJID("empty resourcepart")
        try:
            result = _OPAQUE_PROFILE.enforce(resource)
        except UnicodeError as exc:
            raise InvalidJID(f"invalid resourcepart: {_reason(exc)}") from None
    _check_length(result, "resourcepart")
    return result


def _prep_ip6_literal(domain: str) -> str:
    inner = domain[1:-1] if domain.endswith("]") else ""
    if "%" in inner:  # zone identifiers are not allowed in an IP-literal
        raise InvalidJID("invalid IPv6 literal domainpart")
    try:
        address = ipaddress.IPv6Address(inner)
    except ValueError:
        raise InvalidJID("invalid IPv6 literal domainpart") from None
    return f"[{address.compressed}]"


def _map_width(char: str) -> str:
    """Map a fullwidth or halfwidth character to its ordinary form (as UTS #46 does)."""
    if char.isascii() or not unicodedata.decomposition(char).startswith(("<wide>", "<narrow>")):
        return char
    return unicodedata.normalize("NFKC", char)


def _check_idn_label(label: str) -> None:
    if not label:
        raise InvalidJID("empty label in domainpart")
    if label.isascii():
        if _ASCII_LABEL_RE.fullmatch(label) is None:
            raise InvalidJID("invalid label in domainpart")
        return
    if label[0] == "-" or label[-1] == "-":
        raise InvalidJID("domain label starts or ends with a hyphen")
    if unicodedata.category(label[0]).startswith("M"):
        raise InvalidJID("domain label starts with a combining mark")
    for char in label:
        if char.isascii():
            if not (char.isalnum() or char == "-"):
                raise InvalidJID("invalid character in domainpart")
        elif unicodedata.category(char) not in _IDN_CATEGORIES:
            raise InvalidJID("invalid character in domainpart")
    # The 63-octet limit applies to the A-label (the Punycode form).
    try:
        a_label_length = 4 + len(label.encode("punycode"))
    except UnicodeError:
        raise InvalidJID("invalid label in domainpart") from None
    if a_label_length > 63:
        raise InvalidJID("domain label is too long")


def domainprep(domain: str) -> str:
    """Prepare a domainpart (RFC 7622 §3.2) and return its canonical form.

    ASCII domains are lowercased, lose one trailing dot and must consist of LDH
    labels (letters, digits, inner hyphens; 1-63 octets each), or be an IPv4 address
    or a bracketed IPv6 literal (returned in compressed form).  In non-ASCII domains
    ideographic full stops count as dots, fullwidth/halfwidth forms are mapped to
    ordinary ones, and the result is lowercased and NFC-normalised; each label may
    then contain only letters, marks, digits and hyphens.  A-labels (``xn--``) are
    kept as they are, not converted to U-labels.  Raises :class:`InvalidJID` on failure.
    """
    if len(domain) > MAX_INPUT_CHARS:
        raise InvalidJID("domainpart is too long")
    if domain.isascii():
        result = domain.lower()
    else:
        mapped = "".join(_map_width(char) for char in domain.translate(_DOT_MAP))
        result = unicodedata.normalize("NFC", mapped.lower())
    if result.endswith("."):
        result = result[:-1]
    if result.isascii():
        if result.startswith("["):
            return _prep_ip6_literal(result)
        if _ASCII_DOMAIN_RE.fullmatch(result) is None:
            raise InvalidJID("invalid domainpart")
    else:
        for label in result.split("."):
            _check_idn_label(label)
    _check_length(result, "domainpart")
    return result


def _parse(text: str) -> JID:
    # RFC 7622 §3.1: first split off the resourcepart at the first "/", then the
    # localpart at the first "@" of what remains.
    slash = text.find("/")
    if slash >= 0:
        resource = resourceprep(text[slash + 1 :])
        text = text[:slash]
    else:
        resource = ""
    at = text.find("@")
    if at >= 0:
        local = nodeprep(text[:at])
        domain = text[at + 1 :]
    else:
        local = ""
        domain = text
    if not domain:
        raise InvalidJID("empty domainpart")
    return JID(local, domainprep(domain), resource)


_parse_cached: Final = functools.lru_cache(maxsize=65536)(_parse)

# Only strings up to this length are memoised, which bounds the caches' memory
# (a full cache of maximal JIDs would otherwise hold hundreds of megabytes).
_CACHE_MAX_CHARS: Final = 256


@functools.lru_cache(maxsize=65536)
def _bare_cached(local: str, domain: str) -> JID:
    return JID(local, domain)


def _make_bare(local: str, domain: str) -> JID:
    if len(local) + len(domain) <= _CACHE_MAX_CHARS:
        return _bare_cached(local, domain)
    return JID(local, domain)


@dataclass(frozen=True, slots=True)
class JID:
    """An XMPP address with already prepared (canonical) parts.

    Build instances with :meth:`parse` or :meth:`create`; the constructor trusts its
    arguments and does not validate them.  Equality and hashing use the three parts
    (``local`` and ``resource`` are ``""`` when absent).
    """

    local: str
    domain: str
    resource: str = ""
    _text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        text = f"{self.local}@{self.domain}" if self.local else self.domain
        if self.resource:
            text = f"{text}/{self.resource}"
        object.__setattr__(self, "_text", text)

    @staticmethod
    def parse(text: str) -> JID:
        """Parse and prepare a JID string; raise :class:`InvalidJID` if it is invalid.

        Results are memoised (LRU, 65536 entries, strings of up to 256 characters),
        so parsing the same string again returns the same object.
        """
        if len(text) <= _CACHE_MAX_CHARS:
            return _parse_cached(text)
        return _parse(text)

    @staticmethod
    def create(local: str, domain: str, resource: str = "") -> JID:
        """Build a JID from separate parts, preparing each as :meth:`parse` would.

        An empty ``local`` or ``resource`` means the part is absent.
        """
        return JID(
            nodeprep(local) if local else "",
            domainprep(domain),
            resourceprep(resource) if resource else "",
        )

    @property
    def bare(self) -> JID:
        """This JID without its resourcepart (``self`` when it is already bare)."""
        if not self.resource:
            return self
        return _make_bare(self.local, self.domain)

    @property
    def bare_str(self) -> str:
        """String form of :attr:`bare`."""
        if not self.resource:
            return self._text
        return _make_bare(self.local, self.domain)._text

    @property
    def is_bare(self) -> bool:
        """True when there is no resourcepart."""
        return not self.resource

    @property
    def is_full(self) -> bool:
        """True when there is a resourcepart."""
        return bool(self.resource)

    @property
    def is_domain(self) -> bool:
        """True for a domain-only JID (no localpart and no resourcepart)."""
        return not self.local and not self.resource

    def with_resource(self, resource: str) -> JID:
        """This JID's bare form with ``resource`` (prepared; must be non-empty)."""
        return JID(self.local, self.domain, resourceprep(resource))

    def __str__(self) -> str:
        return self._text
