"""What mirroring stream-management sessions to Redis costs per message (cluster mode).

``python -m bench.cluster_sm [--pairs N] [--messages M]``: a ``redis-server`` of its
own on a free loopback port, two xmppd nodes (``tests/support/cluster.py``), N pairs
(sender on node 1, recipient on node 2) with XEP-0198 enabled, each sender sending M
chat messages (an ``<r/>`` after every 5th, as mobile clients do; both sides answer
the server's ``<r/>``). Run twice with the same traffic: stream management without
resumption (no mirror) and with ``resume='true'`` (mirrored). Per delivered message:
the deltas of Redis's ``INFO commandstats`` by command, of its network bytes in and
out and of its CPU time, for recipients on the other node and on the same node; the
idle background (heartbeats, blocking reads) measured beforehand and taken off.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from tests.support.clients import register_account
from tests.support.cluster import running_cluster
from tests.support.rawstream import RawClient
from tests.support.server import XmppdServer, free_port

SM = "urn:xmpp:sm:3"
PW = "bench-sm-pw"


def _cpu(client: redis.Redis) -> float:
    cpu = client.info("cpu")
    return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


def _sample(client: redis.Redis) -> tuple[dict[str, int], int, int]:
    stats = client.info("commandstats")
    calls = {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in stats.items()
        if isinstance(value, dict)
    }
    net = client.info("stats")
    return calls, int(net["total_net_input_bytes"]), int(net["total_net_output_bytes"])


def _delta(
    before: tuple[dict[str, int], int, int], after: tuple[dict[str, int], int, int]
) -> tuple[dict[str, int], int, int]:
    calls = {
        name: after[0].get(name, 0) - before[0].get(name, 0)
        for name in after[0]
        if name != "info" and after[0].get(name, 0) - before[0].get(name, 0) > 0
    }
    return calls, after[1] - before[1], after[2] - before[2]


class Party:
    """A raw client with stream management that answers ``<r/>`` and counts bodies."""

    def __init__(self, client: RawClient) -> None:
        self.client = client
        self.handled = 0
        self.bodies = 0
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        reader = self.client.reader
        assert reader is not None
        buffer = b""
        rx = re.compile(
            rb"<message[^>]*>.*?</message>|<presence[^>]*/>|<r [^>]*/>|<a [^>]*/>", re.S
        )
        while chunk := await reader.read(65536):
            buffer += chunk
            while (match := rx.search(buffer)) is not None:
                item, buffer = match.group(0), buffer[match.end() :]
                if item.startswith(b"<r "):
                    self.client.send(f"<a xmlns='{SM}' h='{self.handled}'/>")
                elif item.startswith(b"<message") or item.startswith(b"<presence"):
                    self.handled += 1
                    if b"<body>" in item:
                        self.bodies += 1


async def _party(node: XmppdServer, name: str, resume: bool) -> Party:
    client = RawClient(node)
    await client.connect()
    await client.login(name, PW, resource="bench")
    resumable = " resume='true'" if resume else ""
    client.send(f"<enable xmlns='{SM}'{resumable}/>")
    await client.read_until(b"<enabled[^>]*>")
    client.send("<presence/>")
    return Party(client)


async def _run(
    nodes: list[XmppdServer],
    url: str,
    pairs: int,
    messages: int,
    resume: bool,
    tag: str,
    same_node: bool,
) -> dict[str, Any]:
    r = redis.Redis.from_url(url)
    senders = [await _party(nodes[0], f"{tag}s{i}", resume) for i in range(pairs)]
    home = nodes[0] if same_node else nodes[1]
    recipients = [await _party(home, f"{tag}r{i}", resume) for i in range(pairs)]
    await asyncio.sleep(2.0)
    idle_before, t0, idle_cpu = _sample(r), time.monotonic(), _cpu(r)
    await asyncio.sleep(2.0)
    idle = _delta(idle_before, _sample(r))
    idle_cpu = _cpu(r) - idle_cpu
    idle_seconds = time.monotonic() - t0
    before, start, cpu = _sample(r), time.monotonic(), _cpu(r)
    for n in range(messages):
        for i, sender in enumerate(senders):
            sender.client.send(
                f"<message type='chat' to='{tag}r{i}@localhost'><body>m{n}</body></message>"
            )
            if n % 5 == 4:
                sender.client.send(f"<r xmlns='{SM}'/>")
        await asyncio.sleep(0.01)
    total = pairs * messages
    for _ in range(600):  # until all arrived (at most 60 s)
        if sum(p.bodies for p in recipients) >= total:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(3.0)  # the last acks
    after, seconds = _sample(r), time.monotonic() - start
    cpu = _cpu(r) - cpu
    calls, bytes_in, bytes_out = _delta(before, after)
    scale = seconds / idle_seconds
    cpu -= idle_cpu * scale
    for name, count in idle[0].items():
        calls[name] = calls.get(name, 0) - round(count * scale)
    bytes_in -= round(idle[1] * scale)
    bytes_out -= round(idle[2] * scale)
    delivered = sum(p.bodies for p in recipients)
    for party in senders + recipients:
        party.task.cancel()
        await party.client.close()
    r.close()
    return {
        "placement": "same-node" if same_node else "cross-node",
        "resume": resume,
        "redis_cpu_us_per_msg": round(cpu * 1e6 / delivered, 1),
        "delivered": delivered,
        "commands_per_msg": {k: round(v / delivered, 3) for k, v in sorted(calls.items()) if v > 0},
        "commands_total_per_msg": round(sum(max(0, v) for v in calls.values()) / delivered, 2),
        "bytes_in_per_msg": round(bytes_in / delivered),
        "bytes_out_per_msg": round(bytes_out / delivered),
    }


RUNS = ("cross", "cross+resume", "same", "same+resume")


async def _measure(
    nodes: list[XmppdServer], url: str, pairs: int, messages: int, names: list[str]
) -> None:
    runs = [(name.startswith("same"), name.endswith("+resume")) for name in names]
    for k in range(len(runs)):
        for i in range(pairs):
            await register_account(nodes[0], f"u{k}s{i}", PW)
            await register_account(nodes[0], f"u{k}r{i}", PW)
    for k, (same, resume) in enumerate(runs):
        print(await _run(nodes, url, pairs, messages, resume, f"u{k}", same), flush=True)


def _main(workdir: Path, url: str, pairs: int, messages: int, names: list[str]) -> None:
    with running_cluster(
        workdir, nodes=2, redis_url=url, extra="[c2s]\nresume_timeout = '60s'\n"
    ) as cluster:
        asyncio.run(_measure(list(cluster.nodes), url, pairs, messages, names))
        for node in cluster.nodes:  # a node taken for dead would spoil the figures
            text = node.log_path.read_text(errors="replace")
            for line in text.splitlines():
                if "is dead" in line or "mirrored sessions" in line:
                    print(f"{node.log_path.parent.name}: {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--runs", default=",".join(RUNS), help="of: " + ", ".join(RUNS))
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-cluster-sm-") as tmp:
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            cwd=tmp,
            stdout=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.5)
            names = [n for n in args.runs.split(",") if n in RUNS]
            _main(Path(tmp), f"redis://127.0.0.1:{port}/0", args.pairs, args.messages, names)
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
