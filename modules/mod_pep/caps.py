"""XEP-0115 for clients: read a presence's ``<c/>``, check a disco#info answer against it.

Only what XEP-0163 needs is kept: the ``<node>+notify`` features, a client's interests.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Final

from xmppd.api import ns
from xmppd.api.stanza import Element
from xmppd_modules.mod_pep.common import NOTIFY

HASHES: Final[dict[str, str]] = {
    "sha-1": "sha1",
    "sha-224": "sha224",
    "sha-256": "sha256",
    "sha-384": "sha384",
    "sha-512": "sha512",
    "sha3-256": "sha3_256",
    "sha3-512": "sha3_512",
}
"""Hash functions accepted in ``<c hash=.../>``: IANA name to hashlib name (not MD5)."""

MAX_VER: Final = 128
MAX_NODE: Final = 1023
MAX_FEATURES: Final = 2000
"""A disco#info answer with more features than this is not trusted (nor cached)."""
MAX_FEATURE: Final = 1023
MAX_INTEREST_CHARS: Final = 16 * 1024
"""The ``+notify`` features of one answer, in characters: more is not trusted (real
clients list a few dozen; each verified set is cached, ``caps_cache_size`` of them)."""

_LANG: Final = f"{{{ns.XML}}}lang"
_IDENTITY: Final = f"{{{ns.DISCO_INFO}}}identity"
_FEATURE: Final = f"{{{ns.DISCO_INFO}}}feature"
_FORM: Final = f"{{{ns.DATA_FORMS}}}x"
_FIELD: Final = f"{{{ns.DATA_FORMS}}}field"
_VALUE: Final = f"{{{ns.DATA_FORMS}}}value"


@dataclass(frozen=True, slots=True)
class Caps:
    """What a presence's ``<c xmlns='http://jabber.org/protocol/caps'/>`` claims."""

    node: str
    ver: str
    algo: str

    @property
    def key(self) -> tuple[str, str]:
        """The cache key: the same hash of the same data is the same feature set."""
        return (self.algo, self.ver)


def parse_caps(presence: Element) -> Caps | None:
    """The caps a presence carries; ``None`` when absent, legacy (no 'hash'), with an
    unknown hash function, or malformed."""
    c = presence.find(f"{{{ns.CAPS}}}c")
    if c is None:
        return None
    node, ver, algo = c.get("node", ""), c.get("ver", ""), c.get("hash", "").lower()
    if algo not in HASHES or not node or not ver:
        return None
    if len(ver) > MAX_VER or len(node) > MAX_NODE:
        return None
    return Caps(node, ver, algo)


def _texts(field: Element) -> list[str]:
    return [value.text or "" for value in field.findall(_VALUE)]


def verification_string(query: Element) -> str | None:
    """The XEP-0115 §5.1 string S of a disco#info ``<query/>``; ``None`` when §5.4 says
    the answer is ill-formed (duplicate identities, features or form types)."""
    identities = []
    for ident in query.findall(_IDENTITY):
        identities.append(
            (
                ident.get("category", ""),
                ident.get("type", ""),
                ident.get(_LANG, ""),
                ident.get("name", ""),
            )
        )
    if len(set(identities)) != len(identities):
        return None
    features = [feature.get("var", "") for feature in query.findall(_FEATURE)]
    if len(set(features)) != len(features):
        return None
    forms: dict[str, Element] = {}
    for form in query.findall(_FORM):
        form_type: list[str] | None = None
        for field in form.findall(_FIELD):
            if field.get("var") == "FORM_TYPE":
                if field.get("type") != "hidden":
                    form_type = None
                    break
                form_type = _texts(field)
        if not form_type:
            continue  # §5.4 3.6: ignored, not an error
        if len(set(form_type)) != 1 or form_type[0] in forms:
            return None
        forms[form_type[0]] = form
    parts = [f"{c}/{t}/{lang}/{name}<" for c, t, lang, name in sorted(identities)]
    parts.extend(f"{feature}<" for feature in sorted(features))
    for name in sorted(forms):
        parts.append(f"{name}<")
        fields = [f for f in forms[name].findall(_FIELD) if f.get("var") != "FORM_TYPE"]
        for field in sorted(fields, key=lambda f: f.get("var", "")):
            parts.append(f"{field.get('var', '')}<")
            parts.extend(f"{value}<" for value in sorted(_texts(field)))
    return "".join(parts)


def compute_ver(query: Element, algo: str) -> str | None:
    """The verification string hashed with ``algo`` and base64-encoded (XEP-0115 §5.1)."""
    text = verification_string(query)
    name = HASHES.get(algo)
    if text is None or name is None:
        return None
    return base64.b64encode(hashlib.new(name, text.encode("utf-8")).digest()).decode("ascii")


def verified_interests(query: Element, caps: Caps) -> frozenset[str] | None:
    """The ``+notify`` features of a disco#info answer, if it matches ``caps.ver``
    (otherwise, or when it is too large to be trusted, ``None``)."""
    features = query.findall(_FEATURE)
    if len(features) > MAX_FEATURES:
        return None
    if compute_ver(query, caps.algo) != caps.ver:
        return None
    interests = frozenset(
        var
        for feature in features
        if (var := feature.get("var", "")).endswith(NOTIFY) and len(var) <= MAX_FEATURE
    )
    if sum(len(var) for var in interests) > MAX_INTEREST_CHARS:
        return None
    return interests


def interested_nodes(interests: frozenset[str]) -> frozenset[str]:
    """Node names from ``<node>+notify`` features."""
    return frozenset(f[: -len(NOTIFY)] for f in interests if f.endswith(NOTIFY) and f != NOTIFY)
