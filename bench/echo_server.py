"""Trivial XMPP-ish echo server used to measure the load generator's own ceiling.

It answers the login dance just well enough for :func:`bench.xmpp.login` (any PLAIN
credentials succeed; SCRAM-SHA-1 and STARTTLS when started with a certificate;
bind/session/roster/ping get canned results) and then:

* from the first ``<message>`` on, writes every complete message straight back to the
  connection it came from (chat ceiling);
* with ``--roster-users N --roster-size K``, fans presence out like a server with the
  presence scenario's rosters (:func:`bench.common.contact_indices`): every presence of an
  account goes to its online contacts and back to itself, and an available presence is
  answered with the contacts' current presences (what probes give).

Run: ``python -m bench.echo_server --port PORT [--cert C --key K] [--roster-users N ...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hmac
import os
import signal
import ssl
from typing import cast

from bench.common import PASSWORD, SCRAM_ITERATIONS, SCRAM_SALT, contact_indices
from bench.xmpp import (
    STREAM_NS,
    XmppError,
    attr,
    find_element,
    find_stream_header,
    local_name,
    scram_keys,
)

FEATURES_STARTTLS = (
    b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/>"
    b"</starttls></stream:features>"
)
FEATURES_SASL = (
    b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
    b"<mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms>"
    b"</stream:features>"
)
FEATURES_BOUND = (
    b"<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>"
)
SASL_SUCCESS = b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>%s</success>"


class Roster:
    """The presence scenario's ring of contacts and who is online."""

    def __init__(self, users: int, size: int) -> None:
        self.users = users
        self.size = size
        self.online: dict[int, EchoProtocol] = {}
        self._contacts: dict[int, list[int]] = {}

    def contacts(self, index: int) -> list[int]:
        found = self._contacts.get(index)
        if found is None:
            found = self._contacts[index] = contact_indices(index, self.users, self.size)
        return found


class Output:
    """Bytes for many connections, written once per event-loop turn (one send each)."""

    def __init__(self) -> None:
        self.pending: dict[EchoProtocol, list[bytes]] = {}
        self.scheduled = False

    def add(self, proto: EchoProtocol, data: bytes) -> None:
        chunks = self.pending.get(proto)
        if chunks is None:
            self.pending[proto] = [data]
        else:
            chunks.append(data)
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        pending, self.pending = self.pending, {}
        self.scheduled = False
        for proto, chunks in pending.items():
            transport = proto.transport
            if transport is not None and not transport.is_closing():
                transport.write(b"".join(chunks))


class EchoProtocol(asyncio.Protocol):
    def __init__(
        self, domain: str, tls: ssl.SSLContext | None, roster: Roster | None, output: Output
    ) -> None:
        self.domain = domain
        self.tls = tls
        self.roster = roster
        self.output = output
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.pos = 0
        self.in_stream = False
        self.encrypted = False
        self.authenticated = False
        self.echo = False
        self.user = b"user"
        self.index = -1
        self.jid = b""
        self.presence = b""
        self.scram: tuple[bytes, bytes] | None = None  # (client-first-bare, server-first)
        self.handshake: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.roster is not None and self.roster.online.get(self.index) is self:
            del self.roster.online[self.index]

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
        except (XmppError, ValueError, KeyError):
            transport.close()

    def _header(self) -> bytes:
        return (
            f"<?xml version='1.0'?><stream:stream from='{self.domain}' id='echo' "
            f"xmlns='jabber:client' xmlns:stream='{STREAM_NS}' version='1.0'>"
        ).encode()

    def _features(self) -> bytes:
        if self.authenticated:
            return FEATURES_BOUND
        if self.tls is not None and not self.encrypted:
            return FEATURES_STARTTLS
        return FEATURES_SASL

    def _login_steps(self, transport: asyncio.Transport) -> None:
        while True:
            if not self.in_stream:
                end = find_stream_header(self.buf, self.pos)
                if end is None:
                    return
                self.pos = end
                self.in_stream = True
                transport.write(self._header() + self._features())
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
            if name == b"starttls" and self.tls is not None:
                transport.write(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
                transport.pause_reading()  # the ClientHello is for the TLS layer
                self._restart()
                self.handshake = asyncio.get_running_loop().create_task(
                    self._start_tls(transport, self.tls)
                )
                return
            if name in (b"auth", b"response"):
                if self._sasl(transport, name, element):
                    self._restart()
            elif name == b"iq":
                self._iq(transport, element)
            elif name == b"presence":
                self._presence(element)
            if self.buf and self.pos > 65536:
                self.buf = self.buf[self.pos :]
                self.pos = 0

    def _restart(self) -> None:
        """The client opens a new stream next (after SASL success or STARTTLS)."""
        self.in_stream = False
        self.buf = self.buf[self.pos :]
        self.pos = 0

    async def _start_tls(self, transport: asyncio.Transport, context: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        try:
            new = await loop.start_tls(transport, self, context, server_side=True)
        except (OSError, ssl.SSLError, ConnectionError):
            transport.close()
            return
        self.transport = cast(asyncio.Transport, new)
        self.encrypted = True

    def _sasl(self, transport: asyncio.Transport, name: bytes, element: bytes) -> bool:
        """One SASL step; True once authenticated (any credentials succeed)."""
        gt = element.find(b">")
        closed = element[gt - 1 : gt] == b"/"
        payload = b"" if closed else base64.b64decode(element[gt + 1 : element.rfind(b"</")])
        if name == b"auth" and attr(element, b"mechanism") == b"SCRAM-SHA-1":
            first_bare = payload[payload.index(b"n=", 1) :]
            fields = dict(part.split(b"=", 1) for part in first_bare.split(b","))
            self._set_user(fields[b"n"])
            server_first = b"r=%s%s,s=%s,i=%d" % (
                fields[b"r"],
                base64.b64encode(os.urandom(12)),
                base64.b64encode(SCRAM_SALT),
                SCRAM_ITERATIONS,
            )
            self.scram = (first_bare, server_first)
            transport.write(
                b"<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>%s</challenge>"
                % base64.b64encode(server_first)
            )
            return False
        if name == b"response" and self.scram is not None:
            first_bare, server_first = self.scram
            without_proof = payload[: payload.rindex(b",p=")]
            auth_message = first_bare + b"," + server_first + b"," + without_proof
            _, _, server_key = scram_keys(PASSWORD, SCRAM_SALT, SCRAM_ITERATIONS)
            signature = hmac.digest(server_key, auth_message, "sha1")
            transport.write(SASL_SUCCESS % base64.b64encode(b"v=" + base64.b64encode(signature)))
            self.authenticated = True
            return True
        self._set_user(payload.split(b"\0")[1] if payload.count(b"\0") == 2 else b"user")
        transport.write(SASL_SUCCESS % b"")
        self.authenticated = True
        return True

    def _set_user(self, user: bytes) -> None:
        self.user = user
        if user[1:].isdigit():
            self.index = int(user[1:])

    def _iq(self, transport: asyncio.Transport, element: bytes) -> None:
        iq_id = attr(element, b"id") or b""
        if b"xmpp-bind" in element:
            i = element.find(b"<resource>")
            resource = element[i + 10 : element.find(b"</resource>", i)] if i >= 0 else b"echo"
            self.jid = b"%s@%s/%s" % (self.user, self.domain.encode(), resource)
            transport.write(
                b"<iq type='result' id='%s'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                b"<jid>%s</jid></bind></iq>" % (iq_id, self.jid)
            )
        elif b"jabber:iq:roster" in element:
            transport.write(
                b"<iq type='result' id='%s'><query xmlns='jabber:iq:roster'/></iq>" % iq_id
            )
        else:
            transport.write(b"<iq type='result' id='%s'/>" % iq_id)

    def _presence(self, element: bytes) -> None:
        """Broadcast to online contacts and oneself; answer an available presence with
        the contacts' current ones (what a server's probes give)."""
        stamped = b"<presence from='" + self.jid + b"'" + element[9:]
        roster = self.roster
        output = self.output
        if roster is None or self.index < 0:
            output.add(self, stamped)
            return
        available = attr(element, b"type") is None
        self.presence = stamped if available else b""
        online = roster.online
        if available:
            online[self.index] = self
        else:
            online.pop(self.index, None)
        for contact in roster.contacts(self.index):
            peer = online.get(contact)
            if peer is None:
                continue
            output.add(peer, stamped)
            if available and peer.presence:
                output.add(self, peer.presence)
        output.add(self, stamped)


async def serve(
    host: str, port: int, domain: str, tls: ssl.SSLContext | None, roster: Roster | None
) -> None:
    loop = asyncio.get_running_loop()
    output = Output()
    server = await loop.create_server(
        lambda: EchoProtocol(domain, tls, roster, output), host, port, backlog=1024
    )
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
    parser.add_argument("--cert", help="PEM certificate: offer (and require) STARTTLS")
    parser.add_argument("--key", help="PEM key of --cert")
    parser.add_argument("--roster-users", type=int, default=0, help="presence accounts")
    parser.add_argument("--roster-size", type=int, default=0, help="contacts per account")
    args = parser.parse_args()
    tls = None
    if args.cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.cert, args.key)
    roster = Roster(args.roster_users, args.roster_size) if args.roster_users else None
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(args.host, args.port, args.domain, tls, roster))


if __name__ == "__main__":
    main()
