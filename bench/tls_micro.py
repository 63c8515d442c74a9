"""The server's CPU for one TLS 1.3 handshake, full and resumed, in process.

The floor every way back after a reconnect storm shares: a client that comes back
over TLS costs the server at least this before a byte of XMPP. The server side is
xmppd's own context (:func:`xmppd.tls.server_context`, stateless session tickets on),
the certificate the benchmark's servers use (ECDSA P-256, :mod:`bench.certs`); the
client is a plain OpenSSL client context. Both ends run in one thread over memory
BIOs, and only the server's calls are timed (thread CPU time), so neither sockets nor
the client's own work are counted. "resumed" offers the ticket of a first handshake
(TLS 1.3 PSK with an X25519 exchange, what phones' TLS stacks offer).

    .venv/bin/python -m bench.tls_micro --handshakes 2000 --repeat 3
"""

from __future__ import annotations

import argparse
import contextlib
import ssl
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.certs import make_certificate
from xmppd.tls import server_context


@dataclass(frozen=True, slots=True)
class Handshake:
    server_cpu: float
    """Seconds of the server's CPU (its handshake, and sending the ticket)."""
    session: ssl.SSLSession | None
    """The client's session afterwards (its ticket), to resume with."""
    resumed: bool


def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> Handshake:
    """One handshake over memory BIOs; the server's part timed."""
    to_server, from_server = ssl.MemoryBIO(), ssl.MemoryBIO()
    to_client, from_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    srv = server.wrap_bio(to_server, from_server, server_side=True)
    cli = client.wrap_bio(to_client, from_client, server_hostname="localhost", session=session)
    cpu = 0.0
    client_done = server_done = False
    while not (client_done and server_done):
        if not client_done:
            try:
                cli.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
        to_server.write(from_client.read())
        started = time.thread_time()
        if not server_done:
            try:
                srv.do_handshake()
                server_done = True
            except ssl.SSLWantReadError:
                pass
        srv_out = from_server.read()
        cpu += time.thread_time() - started
        to_client.write(srv_out)
    started = time.thread_time()
    srv.write(b"x")  # TLS 1.3 sends the ticket after the handshake, with the first write
    cpu += time.thread_time() - started
    to_client.write(from_server.read())
    with contextlib.suppress(ssl.SSLWantReadError):
        cli.read(1)
    return Handshake(cpu, cli.session, cli.session_reused)


def measure(handshakes: int, repeat: int, directory: Path) -> dict[str, list[float]]:
    """Milliseconds of server CPU per handshake, one figure per repetition."""
    certs = make_certificate(directory, "localhost")
    server = server_context(certs.cert, certs.key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    figures: dict[str, list[float]] = {"full": [], "resumed": []}
    for _ in range(repeat):
        for kind, runs in figures.items():
            first = handshake(server, client)
            total = 0.0
            for _ in range(handshakes):
                done = handshake(server, client, first.session if kind == "resumed" else None)
                if done.resumed != (kind == "resumed"):
                    raise RuntimeError(f"a {kind} handshake was resumed={done.resumed}")
                total += done.server_cpu
            runs.append(total / handshakes * 1e3)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handshakes", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        figures = measure(args.handshakes, args.repeat, Path(directory))
    print(f"OpenSSL: {ssl.OPENSSL_VERSION}")
    for kind, runs in figures.items():
        shown = ", ".join(f"{ms:.3f}" for ms in runs)
        print(f"{kind:8} server CPU ms per handshake: {shown} (best {min(runs):.3f})")


if __name__ == "__main__":
    main()
