"""Random well-formed stanzas in every module's namespaces, sent to a real server.

:func:`generate` builds one stanza from a seed: an IQ (get or set), a message or a
presence, addressed to the server, the sender's own account, another account, the MUC
service or a room, carrying a tree of elements in a namespace some module handles (found
by reading ``modules/`` and ``xmppd/ns.py``), with names, attributes and text drawn from
what those protocols use plus hostile values. :func:`run` sends them over one logged-in
connection and checks what RFC 6120 promises: each IQ gets a result or an error with a
defined condition, the stream stays open, the server keeps answering.

Used by ``tests/hostile/test_module_stanzas.py`` (a bounded run, plus every kept
crasher) and ``python -m tests.hostile.fuzz`` (a long one).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Final

from lxml import etree

from tests.support.xmlclient import XmlClient, error_condition, tag

ROOT: Final = Path(__file__).resolve().parents[2]
CRASHERS: Final = Path(__file__).resolve().parent / "corpus" / "crashers"
"""Stanzas that broke the server once, kept as regression cases (one per file)."""

_NS_LITERAL = re.compile(
    r"[\"'](urn:xmpp:[\w:.#/-]+|http://jabber\.org/protocol/[\w:.#/-]+|jabber:(?:iq|x):[\w:.-]+"
    r"|vcard-temp(?::x:update)?|storage:[\w:.-]+|urn:ietf:params:xml:ns:[\w:.-]+)[\"']"
)

NAMES: Final = [
    "query",
    "item",
    "x",
    "field",
    "value",
    "pubsub",
    "publish",
    "items",
    "retract",
    "subscribe",
    "unsubscribe",
    "enable",
    "disable",
    "block",
    "unblock",
    "ping",
    "time",
    "vCard",
    "prefs",
    "fin",
    "set",
    "max",
    "after",
    "before",
    "index",
    "first",
    "last",
    "body",
    "subject",
    "thread",
    "username",
    "password",
    "remove",
    "storage",
    "conference",
    "photo",
    "request",
    "slot",
    "header",
    "list",
    "active",
    "default",
    "configure",
    "options",
    "affiliations",
    "subscriptions",
    "affiliation",
    "subscription",
    "delete",
    "purge",
    "destroy",
    "invite",
    "decline",
    "reason",
    "history",
    "status",
    "nick",
    "jid",
    "actor",
    "continue",
    "feature",
    "identity",
    "metadata",
    "info",
    "fasten",
    "apply-to",
    "moderate",
    "displayed",
    "received",
    "markable",
    "services",
    "service",
    "credentials",
    "name",
    "os",
    "tz",
    "utc",
    "group",
    "always",
    "never",
    "create",
    "publish-options",
    "retrieve",
    "delay",
    "stanza-id",
    "origin-id",
    "registered",
    "instructions",
    "url",
    "count",
    "start",
    "end",
    "with",
    "flip-page",
    "forwarded",
    "result",
]
ATTRS: Final = [
    "node",
    "jid",
    "var",
    "type",
    "affiliation",
    "role",
    "nick",
    "id",
    "queryid",
    "name",
    "with",
    "start",
    "end",
    "max",
    "by",
    "item",
    "action",
    "order",
    "value",
    "subscription",
    "ask",
    "category",
    "publish_model",
    "subid",
    "notify",
    "maxstanzas",
    "seconds",
    "since",
    "maxchars",
    "filename",
    "size",
    "content-type",
    "stamp",
    "from",
    "to",
    "xml:lang",
]


def values(domain: str) -> tuple[str, ...]:
    return (
        "",
        "0",
        "1",
        "-1",
        "99999999999999999999999",
        "1e308",
        "NaN",
        "true",
        "false",
        "admin",
        "owner",
        "member",
        "outcast",
        "none",
        "moderator",
        "visitor",
        "participant",
        "set",
        "get",
        "submit",
        "cancel",
        "result",
        "form",
        "both",
        "remove",
        "text-single",
        "list-multi",
        "jid-multi",
        "hidden",
        "FORM_TYPE",
        "urn:xmpp:mam:2",
        "http://jabber.org/protocol/muc#roomconfig",
        "http://jabber.org/protocol/pubsub#node_config",
        "2024-01-01T00:00:00Z",
        "1970-01-01T00:00:00.000000Z",
        "9999-99-99T99:99:99Z",
        "yesterday",
        f"fuzz@{domain}",
        f"other@{domain}",
        f"fuzz@{domain}/r",
        domain,
        f"conference.{domain}",
        f"room@conference.{domain}",
        f"room@conference.{domain}/nick",
        "@",
        "a@b@c",
        "/",
        "user@",
        "x" * 1100,
        "\u00e9\u0301\u200b\ufeff",
        "\U0001f600",
        "../../etc/passwd",
        "<not-xml>",
        "a" * 4000,
    )


@cache
def namespaces() -> tuple[str, ...]:
    """Every namespace a module (or the core) handles, from their sources."""
    found: set[str] = set()
    for path in [*(ROOT / "modules").rglob("*.py"), ROOT / "xmppd" / "ns.py"]:
        found.update(_NS_LITERAL.findall(path.read_text()))
    skip = ("urn:ietf:params:xml:ns:xmpp-tls", "urn:ietf:params:xml:ns:xmpp-sasl")
    return tuple(sorted(ns for ns in found if ns not in skip))


_IQ_HANDLER = re.compile(r"\.iq\(\s*\"(get|set)\",\s*([A-Za-z_.]+),\s*\"([A-Za-z-]+)\"")
_ASSIGN = r"^{name}(?::\s*Final(?:\[str\])?)?\s*=\s*\"([^\"]+)\""
_EXTRA_ROOTS: Final = (
    ("http://jabber.org/protocol/muc#owner", "query"),
    ("http://jabber.org/protocol/muc#admin", "query"),
    ("http://jabber.org/protocol/muc#user", "x"),
    ("urn:xmpp:mam:2", "query"),
    ("http://jabber.org/protocol/disco#info", "query"),
    ("http://jabber.org/protocol/disco#items", "query"),
    ("urn:xmpp:extdisco:2", "services"),
    ("urn:xmpp:extdisco:2", "credentials"),
    ("urn:xmpp:http:upload:0", "request"),
    ("http://jabber.org/protocol/commands", "command"),
)


def _resolve(ident: str, source: str) -> str | None:
    """The string value of ``ident`` (``ns.X`` or a module constant)."""
    if ident.startswith("ns."):
        ident, source = ident[3:], (ROOT / "xmppd" / "ns.py").read_text()
    found = re.search(_ASSIGN.format(name=re.escape(ident)), source, re.M)
    if found:
        return found.group(1)
    if ident == "NS":  # too common a name to look for elsewhere
        return None
    for path in (ROOT / "modules").rglob("*.py"):  # imported from a sibling file
        found = re.search(_ASSIGN.format(name=re.escape(ident)), path.read_text(), re.M)
        if found:
            return found.group(1)
    return None


@cache
def handler_roots() -> tuple[tuple[str, str], ...]:
    """(namespace, element) of every IQ payload a module registers a handler for."""
    roots: set[tuple[str, str]] = set(_EXTRA_ROOTS)
    for path in (ROOT / "modules").rglob("*.py"):
        source = path.read_text()
        for _type, ident, name in _IQ_HANDLER.findall(source):
            value = _resolve(ident, source)
            if value is not None:
                roots.add((value, name))
    return tuple(sorted(roots))


def _tree(rng: random.Random, domain: str, ns: str, depth: int) -> etree._Element:
    name = rng.choice(NAMES)
    el = etree.Element(f"{{{ns}}}{name}" if rng.random() < 0.8 else name)
    pool = values(domain)
    for attr in rng.sample(ATTRS, rng.randint(0, 3)):
        key = "{http://www.w3.org/XML/1998/namespace}lang" if attr == "xml:lang" else attr
        el.set(key, rng.choice(pool))
    if rng.random() < 0.4:
        el.text = rng.choice(pool)
    if depth < 4:
        for _ in range(rng.randint(0, 3)):
            child_ns = ns if rng.random() < 0.7 else rng.choice(namespaces())
            el.append(_tree(rng, domain, child_ns, depth + 1))
    return el


@dataclass(frozen=True, slots=True)
class Case:
    """One generated stanza: its kind and serialisation."""

    kind: str
    xml: str


def generate(seed: int, domain: str) -> Case:
    """The stanza of ``seed`` (the same seed gives the same stanza)."""
    rng = random.Random(seed)
    ns = rng.choice(namespaces())
    to = rng.choice(
        (
            None,
            domain,
            f"fuzz@{domain}",
            f"other@{domain}",
            f"conference.{domain}",
            f"room@conference.{domain}",
            f"room@conference.{domain}/nick",
        )
    )
    kind = rng.choices(("iq", "message", "presence"), weights=(6, 2, 1))[0]
    stanza = etree.Element(kind)
    if to is not None:
        stanza.set("to", to)
    stanza.set("id", f"fz{seed}")
    if kind == "iq":
        stanza.set("type", rng.choice(("get", "set")))
        payload = _tree(rng, domain, ns, 0)
        if rng.random() < 0.7:  # mostly a payload some handler takes
            root_ns, root_name = rng.choice(handler_roots())
            payload = _tree(rng, domain, root_ns, 0)
            payload.tag = f"{{{root_ns}}}{root_name}"
        stanza.append(payload)
    else:
        if kind == "message":
            stanza.set("type", rng.choice(("chat", "normal", "groupchat", "headline")))
        elif rng.random() < 0.5:
            stanza.set("type", rng.choice(("subscribe", "unsubscribe", "probe", "unavailable")))
        for _ in range(rng.randint(1, 3)):
            stanza.append(_tree(rng, domain, rng.choice(namespaces()), 1))
    return Case(kind, etree.tostring(stanza).decode())


@dataclass
class Outcome:
    sent: int = 0
    answered: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    """(stanza, what went wrong)."""


async def check(client: XmlClient, case: Case, timeout: float = 10) -> str | None:
    """Send ``case``; what went wrong, or ``None``."""
    el = etree.fromstring(case.xml)
    stanza_id = el.get("id") or ""
    client.send(case.xml)
    if case.kind == "iq":
        try:
            reply = await _reply(client, stanza_id, timeout)
        except TimeoutError:
            return "no answer to the IQ"
        except ConnectionError:
            return f"stream closed: {client.stream_error}"
        if reply.get("type") == "error" and error_condition(reply) is None:
            return "error without a defined condition"
        if reply.get("type") not in ("result", "error"):
            return f"answered with type {reply.get('type')!r}"
        if error_condition(reply) == "internal-server-error":
            return "internal-server-error"
    if removes_account(case) and client.stream_error in (None, "not-authorized"):
        # XEP-0077 §3.2: the account is gone, and the stream may end with
        # <not-authorized/>; the campaign registers it again.
        return None
    # Still served?
    try:
        pong = await client.iq(
            "get", "<ping xmlns='urn:xmpp:ping'/>", to=client.domain, timeout=timeout
        )
    except (TimeoutError, ConnectionError):
        return f"no longer served (stream error {client.stream_error})"
    if pong.get("type") != "result":
        return "ping failed"
    return None


def removes_account(case: Case) -> bool:
    """An in-band unregistration (XEP-0077 §3.2), whatever else its query holds."""
    el = etree.fromstring(case.xml)
    if el.get("type") != "set":
        return False
    query = el.find("{jabber:iq:register}query")
    return query is not None and query.find("{jabber:iq:register}remove") is not None


async def _reply(client: XmlClient, stanza_id: str, timeout: float) -> etree._Element:
    """The answer to our IQ ``stanza_id``. An IQ request that reaches us meanwhile (our
    own, forwarded by a room to the occupant we are) is answered as a client would."""

    def is_ours_or_request(r: etree._Element) -> bool:
        return r.tag == tag("iq") and (r.get("id") == stanza_id or r.get("type") in ("get", "set"))

    while True:
        got = await client.expect(is_ours_or_request, timeout)
        if got.get("id") == stanza_id and got.get("type") in ("result", "error"):
            return got
        if got.get("type") in ("get", "set"):
            client.send(
                f"<iq type='error' id='{got.get('id')}' to='{got.get('from')}'>"
                "<error type='cancel'><service-unavailable "
                "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
            )


def keep_crasher(case: Case, problem: str) -> Path:
    """Store a failing stanza under :data:`CRASHERS` (named by its content)."""
    CRASHERS.mkdir(parents=True, exist_ok=True)
    name = f"{abs(hash(case.xml)) % 10**12:012d}.xml"
    path = CRASHERS / name
    path.write_text(f"<!-- {problem.replace('--', '- -')} -->\n{case.xml}\n")
    return path


def crashers() -> list[Case]:
    """The kept crashers, as cases."""
    cases = []
    for path in sorted(CRASHERS.glob("*.xml")):
        xml = "\n".join(
            line for line in path.read_text().splitlines() if not line.startswith("<!--")
        )
        el = etree.fromstring(xml.strip())
        cases.append(Case(etree.QName(el).localname, xml.strip()))
    return cases
