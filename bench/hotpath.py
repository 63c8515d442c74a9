"""CPU per 1:1 message of the real server, in one process, without sockets.

``python -m bench.hotpath`` starts xmppd's ``Server`` in this process with the chat
scenario's configuration (roster, presence, disco, ping; no archive, no stream
management), logs ``2 * pairs`` clients in through the c2s listener's own protocol
objects on fake in-memory asyncio transports, then has one client of every pair send
``--messages`` chat messages to its partner's bare JID, one message per read and one
read per sender per event-loop turn (what the bench's paced generator produces; a read
goes through the protocol's buffer interface when it has one, as the event loop does), and
prints the process CPU time (``time.process_time()``) per delivered message.

Everything the server does for a message runs (parser, stream machine, router, host,
hooks, serialiser, the event loop's scheduling under uvloop) except the socket system
calls; the client side is a few bytes copied per message, the same whichever code is
measured. CPU time, not wall time, so that other processes on a shared machine change
the figure far less than they change a throughput run: interleave the versions being
compared and take medians (``--repeat``).

The harness uses only what every version since the spine's base has (``Server``,
``start``, ``register_user``, the c2s listener's protocol factory), so pointing
``PYTHONPATH`` at another checkout measures that checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DOMAIN = "bench.example"
PASSWORD = "secret"
HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    "xmlns:stream='http://etherx.jabber.org/streams' to='" + DOMAIN + "' version='1.0'>"
).encode()
CONFIG = """
[server]
data_dir = "{dir}/data"
log_level = "warning"

[storage]
url = "sqlite+aiosqlite:///{dir}/xmppd.sqlite3"

[auth]
allow_insecure_plain = true
scram_iterations = 4096

[[listeners]]
kind = "c2s"
address = "127.0.0.1"
port = 0
tls = "none"

[c2s]
require_encryption = false
{input_rate}
[hosts."{domain}"]

[modules]
roster = {{}}
presence = {{}}
disco = {{}}
ping = {{}}
"""


def _callgrind(switch: str) -> None:
    """Under ``valgrind --tool=callgrind --instr-atstart=no`` with ``HOTPATH_CALLGRIND``
    set: instrument only the message rounds (instructions counted whatever the load)."""
    import os
    import subprocess

    if os.environ.get("HOTPATH_CALLGRIND"):
        subprocess.run(["callgrind_control", "-i", switch, str(os.getpid())], check=True)


class FakeSocket(asyncio.Transport):
    """The asyncio transport under one c2s connection: counts what the server writes."""

    def __init__(self, on_write: Callable[[bytes], None]) -> None:
        super().__init__()
        self._on_write = on_write
        self._closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._on_write(bytes(data))

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def abort(self) -> None:
        self._closing = True

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


class Client:
    """One logged-in client: the server's protocol object and what it was sent."""

    def __init__(self, protocol: asyncio.Protocol) -> None:
        self.protocol = protocol
        self.buf = bytearray()
        self.messages = 0
        self.changed = asyncio.Event()
        self.counting = False
        self.socket = FakeSocket(self._wrote)
        protocol.connection_made(self.socket)

    def _wrote(self, data: bytes) -> None:
        if self.counting:
            self.messages += data.count(b"</message>")
        else:
            self.buf += data
        self.changed.set()

    def send(self, data: bytes) -> None:
        protocol = self.protocol
        if isinstance(protocol, asyncio.BufferedProtocol):
            # What the event loop does with a buffered protocol: read into its buffer.
            buffer = memoryview(protocol.get_buffer(len(data)))
            buffer[: len(data)] = data
            protocol.buffer_updated(len(data))
        else:
            protocol.data_received(data)

    async def until(self, *markers: bytes) -> None:
        """Wait until one of ``markers`` was written; forget what was written."""
        async with asyncio.timeout(10):
            while not any(m in self.buf for m in markers):
                self.changed.clear()
                await self.changed.wait()
        self.buf.clear()

    async def login(self, user: str) -> None:
        import base64

        self.send(HEADER)
        await self.until(b"</stream:features>")
        plain = base64.b64encode(f"\0{user}\0{PASSWORD}".encode())
        self.send(
            b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
            + plain
            + b"</auth>"
        )
        await self.until(b"<success")
        self.send(HEADER)
        await self.until(b"</stream:features>")
        self.send(
            b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            b"<resource>r</resource></bind></iq>"
        )
        await self.until(b"id='b'", b'id="b"')
        self.send(b"<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>")
        await self.until(b"id='r'", b'id="r"')
        self.send(b"<presence/><iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>")
        await self.until(b"id='p'", b'id="p"')


def capture_listeners() -> list[Callable[[], asyncio.Protocol]]:
    """The protocol factories of the listeners the server opens from now on in this
    event loop, in order (``factories[0]()`` is a new c2s connection's protocol)."""
    loop = asyncio.get_running_loop()
    factories: list[Callable[[], asyncio.Protocol]] = []
    create_server = loop.create_server

    async def capture(factory: Callable[[], asyncio.Protocol], *a: Any, **kw: Any) -> Any:
        factories.append(factory)
        return await create_server(factory, *a, **kw)

    loop.create_server = capture  # type: ignore[method-assign,assignment]
    return factories


async def measure(pairs: int, messages: int, rounds: int) -> list[float]:
    """µs of process CPU per delivered message, once per round."""
    from xmppd.config import load_config
    from xmppd.jid import JID
    from xmppd.server import Server

    factories = capture_listeners()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "xmppd.toml"
        # As the bench runs it: no input shaper (versions without one reject the key).
        path.write_text(CONFIG.format(dir=tmp, domain=DOMAIN, input_rate="input_rate = 0"))
        try:
            config = load_config(path)
        except Exception:
            path.write_text(CONFIG.format(dir=tmp, domain=DOMAIN, input_rate=""))
            config = load_config(path)
        server = Server(config)
        await server.start()
        try:
            users = [f"u{i}" for i in range(2 * pairs)]
            for user in users:
                await server.register_user(JID.parse(f"{user}@{DOMAIN}"), PASSWORD)
            clients = [Client(factories[0]()) for _ in users]
            for client, user in zip(clients, users, strict=True):
                await client.login(user)
            senders = clients[0::2]
            receivers = clients[1::2]
            wire = [
                b"<message type='chat' id='c' to='" + f"u{2 * i + 1}@{DOMAIN}".encode() + b"'>"
                b"<body>u" + str(2 * i + 1).encode() + b":0123456789abcdef</body></message>"
                for i in range(pairs)
            ]
            for client in clients:
                client.counting = True
            results = []
            for _ in range(rounds):
                per_sender = max(1, messages // pairs)
                expected = sum(r.messages for r in receivers) + per_sender * pairs
                # Outside what is counted: a full collection costs in proportion to
                # everything the process holds (all the code loaded), not to messages.
                gc.collect()
                _callgrind("on")
                started = time.process_time()
                for _ in range(per_sender):
                    for sender, data in zip(senders, wire, strict=True):
                        sender.send(data)
                    await asyncio.sleep(0)  # the next event-loop turn, as between reads
                while sum(r.messages for r in receivers) < expected:  # noqa: ASYNC110
                    await asyncio.sleep(0)  # polling: an event per write would cost more
                spent = time.process_time() - started
                _callgrind("off")
                results.append(spent / (per_sender * pairs) * 1e6)
            return results
        finally:
            await server.stop()


def compare(trees: list[str], reps: int, passthrough: list[str]) -> None:
    """Run the harness on each source tree in turn, ``reps`` times, interleaved (so
    that a busy spell on the machine hits every tree alike); print per-tree figures."""
    import os
    import subprocess

    rounds: dict[str, list[float]] = {tree: [] for tree in trees}
    medians: dict[str, list[float]] = {tree: [] for tree in trees}
    for rep in range(reps):
        for tree in trees:
            env = dict(os.environ, PYTHONPATH=tree)
            out = subprocess.run(
                [sys.executable, __file__, "--json", *passthrough],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            got = json.loads(out.strip().splitlines()[-1])["us_per_message"]
            rounds[tree].extend(got)
            medians[tree].append(statistics.median(got))
            print(f"rep {rep + 1} {tree}: median {statistics.median(got):.2f}", flush=True)
    base = trees[0]
    for tree in trees:
        med = statistics.median(medians[tree])
        low = min(rounds[tree])
        ratio = med / statistics.median(medians[base])
        low_ratio = low / min(rounds[base])
        print(
            f"{tree}: median of medians {med:.2f} µs ({ratio:.3f}x), "
            f"min {low:.2f} µs ({low_ratio:.3f}x)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__)
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--messages", type=int, default=20000, help="per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-uvloop", action="store_true", help="asyncio's own loop")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="TREE",
        help="source trees to compare (interleaved subprocesses; the first is the base)",
    )
    parser.add_argument("--reps", type=int, default=3, help="with --compare: runs per tree")
    args = parser.parse_args(argv)
    if args.compare:
        passthrough = ["--pairs", str(args.pairs), "--messages", str(args.messages)]
        passthrough += ["--rounds", str(args.rounds)] + (["--no-uvloop"] if args.no_uvloop else [])
        compare(args.compare, args.reps, passthrough)
        return 0
    if not args.no_uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    results = asyncio.run(measure(args.pairs, args.messages, args.rounds))
    import xmppd

    where = str(Path(xmppd.__file__).resolve().parent.parent)
    if args.json:
        print(json.dumps({"source": where, "us_per_message": results}))
    else:
        print(f"{where}: µs CPU per message, rounds: {[round(r, 2) for r in results]}")
        print(f"median {statistics.median(results):.2f} min {min(results):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
