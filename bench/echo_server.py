"""Trivial XMPP-ish echo server used to measure the load generator's own ceiling.

It answers the login dance just well enough for :func:`bench.xmpp.login` (any PLAIN
credentials succeed, bind/session/roster/ping get canned results) and, from the first
``<message>`` on, writes every complete message straight back to the connection it came
from.  Run: ``python -m bench.echo_server --port PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import cast

from bench.xmpp import STREAM_NS, XmppError, attr, find_element, find_stream_header, local_name

FEATURES_SASL = (
    b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
    b"<mechanism>PLAIN</mechanism></mechanisms></stream:features>"
)
FEATURES_BOUND = (
    b"<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>"
)


class EchoProtocol(asyncio.Protocol):
    def __init__(self, domain: str) -> None:
        self.domain = domain
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.pos = 0
        self.in_stream = False
        self.authenticated = False
        self.echo = False
        self.user = b"user"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        if self.echo:
            buf = self.buf + data if self.buf else data
            end = buf.rfind(b"</message>")
            if end < 0:
                self.buf = buf
            else:
                end += 10
                transport.write(buf[:end])
                self.buf = buf[end:]
            if b"</stream:stream>" in data:
                transport.close()
            return
        self.buf += data
        try:
            self._login_steps(transport)
        except XmppError:
            transport.close()

    def _header(self) -> bytes:
        return (
            f"<?xml version='1.0'?><stream:stream from='{self.domain}' id='echo' "
            f"xmlns='jabber:client' xmlns:stream='{STREAM_NS}' version='1.0'>"
        ).encode()

    def _login_steps(self, transport: asyncio.Transport) -> None:
        while True:
            if not self.in_stream:
                end = find_stream_header(self.buf, self.pos)
                if end is None:
                    return
                self.pos = end
                self.in_stream = True
                features = FEATURES_BOUND if self.authenticated else FEATURES_SASL
                transport.write(self._header() + features)
                continue
            span = find_element(self.buf, self.pos)
            if span is None:
                return
            start, end = span
            element = self.buf[start:end]
            self.pos = end
            name = local_name(element)
            if name == b"message":
                # From here on only echo: hand the rest of the buffer to the fast path.
                rest = self.buf[start:]
                self.buf = b""
                self.pos = 0
                self.echo = True
                self.data_received(rest)
                return
            if name == b"auth":
                self.authenticated = True
                self.in_stream = False  # the client restarts the stream
                transport.write(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
                self.buf = self.buf[self.pos :]
                self.pos = 0
            elif name == b"iq":
                self._iq(transport, element)
            elif name == b"presence":
                transport.write(element)

    def _iq(self, transport: asyncio.Transport, element: bytes) -> None:
        iq_id = attr(element, b"id") or b""
        if b"xmpp-bind" in element:
            i = element.find(b"<resource>")
            resource = element[i + 10 : element.find(b"</resource>", i)] if i >= 0 else b"echo"
            jid = b"%s@%s/%s" % (self.user, self.domain.encode(), resource)
            transport.write(
                b"<iq type='result' id='%s'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                b"<jid>%s</jid></bind></iq>" % (iq_id, jid)
            )
        elif b"jabber:iq:roster" in element:
            transport.write(
                b"<iq type='result' id='%s'><query xmlns='jabber:iq:roster'/></iq>" % iq_id
            )
        else:
            transport.write(b"<iq type='result' id='%s'/>" % iq_id)


async def serve(host: str, port: int, domain: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: EchoProtocol(domain), host, port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--domain", default="bench.local")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(args.host, args.port, args.domain))


if __name__ == "__main__":
    main()
