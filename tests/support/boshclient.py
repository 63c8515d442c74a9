"""A hand-driven BOSH client (XEP-0124/0206) for tests: raw HTTP POSTs of <body/>."""

from __future__ import annotations

import base64
import itertools
import random
from typing import Final

import aiohttp
from lxml import etree

Element = etree._Element

HTTPBIND: Final = "http://jabber.org/protocol/httpbind"
XBOSH: Final = "urn:xmpp:xbosh"
CLIENT: Final = "jabber:client"
STREAMS: Final = "http://etherx.jabber.org/streams"
SASL: Final = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND: Final = "urn:ietf:params:xml:ns:xmpp-bind"
_ids = itertools.count(1)


def body(rid: int, sid: str | None = None, content: str = "", **attrs: str) -> str:
    extra = "".join(f" {k.replace('__', ':')}='{v}'" for k, v in attrs.items())
    sid_attr = f" sid='{sid}'" if sid else ""
    return (
        f"<body xmlns='{HTTPBIND}' xmlns:xmpp='{XBOSH}' rid='{rid}'{sid_attr}{extra}>"
        f"{content}</body>"
    )


class BoshClient:
    """One BOSH session against ``url`` (``.../http-bind``); with ``also``, successive
    requests go to ``url`` and the ``also`` URLs in turn (the nodes of a cluster)."""

    def __init__(
        self, session: aiohttp.ClientSession, url: str, also: tuple[str, ...] = ()
    ) -> None:
        self.session = session
        self.url = url
        self.urls = (url, *also)
        self.posts = 0
        """Requests sent so far (request N went to ``urls[N % len(urls)]``)."""
        self.headers: dict[str, str] = {}
        """Sent with every request (``X-Forwarded-For``...)."""
        self.rid = random.randint(1_000_000, 9_000_000)
        self.sid = ""
        self.created: Element | None = None
        self.jid = ""

    async def post(self, data: str | bytes, headers: dict[str, str] | None = None) -> Element:
        """POST raw data; the response <body/> (HTTP 200 expected)."""
        url = self.urls[self.posts % len(self.urls)]
        self.posts += 1
        async with self.session.post(
            url,
            data=data.encode() if isinstance(data, str) else data,
            headers={"Content-Type": "text/xml; charset=utf-8", **self.headers, **(headers or {})},
        ) as r:
            assert r.status == 200, (r.status, await r.text())
            return etree.fromstring(await r.read())

    def next_rid(self) -> int:
        self.rid += 1
        return self.rid

    async def send(self, content: str = "", **attrs: str) -> Element:
        """The next request of the session, with ``content`` as the payload."""
        return await self.post(body(self.next_rid(), self.sid, content, **attrs))

    async def create(self, *, wait: int = 5, hold: int = 1, to: str = "localhost") -> Element:
        created = await self.post(
            body(
                self.rid,
                None,
                "",
                to=to,
                wait=str(wait),
                hold=str(hold),
                ver="1.6",
                xmpp__version="1.0",
                **{"xml:lang": "en"},
            )
        )
        self.created = created
        self.sid = created.get("sid") or ""
        return created

    async def until(self, predicate: object, *, tries: int = 10) -> Element:
        """Send empty requests until a response holds an element matching
        ``predicate``; that element."""
        for _ in range(tries):
            response = await self.send()
            for el in response:
                if predicate(el):  # type: ignore[operator]
                    return el
            if response.get("type") == "terminate":
                raise ConnectionError(f"terminated: {response.get('condition')}")
        raise TimeoutError("nothing matched")

    async def features(self, first: Element) -> Element:
        for el in first:
            if el.tag == f"{{{STREAMS}}}features":
                return el
        return await self.until(lambda el: el.tag == f"{{{STREAMS}}}features")

    async def login(self, username: str, password: str, resource: str = "bosh") -> str:
        first = await self.create()
        await self.features(first)
        token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
        response = await self.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>")
        success = [el for el in response if el.tag == f"{{{SASL}}}success"]
        if not success:
            await self.until(lambda el: el.tag == f"{{{SASL}}}success")
        response = await self.send(xmpp__restart="true")
        await self.features(response)
        iq_id = f"b{next(_ids)}"
        response = await self.send(
            f"<iq xmlns='{CLIENT}' type='set' id='{iq_id}'><bind xmlns='{BIND}'>"
            f"<resource>{resource}</resource></bind></iq>"
        )
        result = [el for el in response if el.get("id") == iq_id]
        reply = result[0] if result else await self.until(lambda el: el.get("id") == iq_id)
        self.jid = reply.findtext(f"{{{BIND}}}bind/{{{BIND}}}jid") or ""
        return self.jid
