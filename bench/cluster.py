"""Scenario ``cluster`` (xmppd only): what clustering through Redis costs per message and
per session.

Two xmppd nodes (A and B) share a PostgreSQL database (a fresh ``xmppd_bench_cluster_*``
on the system's service, dropped afterwards) and a Redis of their own, started here on a
free loopback port without persistence.  The nodes and Redis are all pinned to the server
core (core 0), the generator to core 1: on this two-core machine the scenario measures
costs (CPU time per message, Redis commands and bytes per message, memory per session),
not the throughput of a cluster.  Prosody and ejabberd have no comparable Redis-backed
cluster, so they are not run.

First, ``idle_sessions`` accounts log in on node B and stay idle: Redis's ``used_memory``
and key count before and after give bytes and keys per session, and the RSS of both
nodes before and after gives the memory of a session on the node that holds it (B) and
of its entry in every other node's view of the cluster (A), whose CPU time over the
logins is what a login elsewhere costs every node.  This comes first, on heaps
that no chat session has churned yet (freed memory would be reused and hide the cost).

Then, for each placement, P pairs are logged in (the sender of pair k on node A; its recipient
on node A for ``same-node``, on node B for ``cross-node``) and every sender sends its
share of a fixed rate to its partner for ``step_seconds`` (one direction only, so the
two placements carry exactly the same messages).  Per step: latency p50/p99 (timed by the
generator as in ``chat``), CPU time of node A, node B and Redis from just before the step
until every message arrived (µs per delivered message), and the deltas of Redis's
``INFO commandstats`` (commands, by name) and ``INFO stats`` (network bytes in and out)
per delivered message.  Redis's own background (heartbeats, blocking stream reads) is
measured while idle and reported as commands per second.  Every login uses SCRAM-SHA-1
(the server does no PBKDF2 per login, so logging in thousands of sessions is quick).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import pg
from bench.common import (
    PASSWORD,
    SERVER_CPU,
    cpu_seconds,
    free_port,
    tree_rss_kb,
    user_name,
    wait_port,
)
from bench.generator import GeneratorPool, workers_for
from bench.scenarios import Log, Settings, _chat_step, background_load, login_sessions
from bench.servers.base import Server, ServerUnavailable
from bench.servers.xmppd import XmppdServer
from bench.xmpp import SCRAM_SHA1
from xmppd.cluster.keys import Keys

#: The two placements of a pair's parties, in the order they run.
PLACEMENTS = ("same-node", "cross-node")
#: Key prefix of the cluster in its Redis.
KEY_PREFIX = "bench"
#: The session log every node tails (a stream capped at ~100,000 entries by the nodes:
#: its share of the memory per session does not grow with the cluster).
SESSION_LOG = Keys(KEY_PREFIX).session_log()


@dataclass
class ClusterSettings:
    """Sizes of the ``cluster`` scenario (``--quick`` makes them small)."""

    pairs: int = 200
    rates: list[int] = field(default_factory=lambda: [2000, 5000])
    step_seconds: float = 5.0
    #: steps per rate and placement (the report takes the median)
    repeats: int = 3
    idle_sessions: int = 2000


def quick(c: ClusterSettings) -> None:
    """``--quick``: about a minute in all."""
    c.pairs, c.rates, c.step_seconds, c.repeats, c.idle_sessions = 100, [2000, 5000], 2.0, 1, 1000


# ----------------------------------------------------------------------------- Redis


class RedisServer:
    """A ``redis-server`` of the run's own on a free loopback port, no persistence."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._client: Any = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def version(self) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServerUnavailable("redis-server is not installed (Debian package redis-server)")
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
        return out.stdout.strip().split(" sha=")[0]

    def start(self) -> None:
        self.version()
        with open(self.dir / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    "taskset",
                    "-c",
                    str(SERVER_CPU),
                    "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.dir),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_port(self.port, 20.0, self.proc, "redis-server")
        import redis

        self._client = redis.Redis(port=self.port, socket_timeout=30)

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def info(self) -> dict[str, Any]:
        """``INFO stats`` + ``memory`` + ``commandstats`` + ``keyspace`` in one call."""
        assert self._client is not None
        return dict(self._client.info("all"))

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid) if self.proc is not None else 0.0

    def key_bytes(self, key: str) -> int:
        """``MEMORY USAGE key SAMPLES 0`` (every element counted); 0 if it does not exist."""
        assert self._client is not None
        return int(self._client.memory_usage(key, samples=0) or 0)


def command_calls(info: Mapping[str, Any]) -> dict[str, int]:
    """Calls per command from ``INFO commandstats`` (``cmdstat_xadd`` → ``xadd``)."""
    out: dict[str, int] = {}
    for key, value in info.items():
        if key.startswith("cmdstat_") and isinstance(value, Mapping):
            out[key[len("cmdstat_") :]] = int(value.get("calls", 0))
    return out


def key_count(info: Mapping[str, Any]) -> int:
    """Keys of every database (``INFO keyspace``: ``db0: {keys: N, ...}``)."""
    return sum(
        int(v.get("keys", 0))
        for k, v in info.items()
        if k.startswith("db") and k[2:].isdigit() and isinstance(v, Mapping)
    )


@dataclass(frozen=True)
class RedisSample:
    calls: dict[str, int]
    net_in: int
    net_out: int
    used_memory: int
    keys: int

    @classmethod
    def of(cls, info: Mapping[str, Any]) -> RedisSample:
        return cls(
            command_calls(info),
            int(info.get("total_net_input_bytes", 0)),
            int(info.get("total_net_output_bytes", 0)),
            int(info.get("used_memory", 0)),
            key_count(info),
        )


def redis_delta(before: RedisSample, after: RedisSample) -> dict[str, Any]:
    """Commands (by name, without the bench's own ``info``) and network bytes between two
    samples."""
    names = set(before.calls) | set(after.calls)
    by_command = {
        n: after.calls.get(n, 0) - before.calls.get(n, 0) for n in sorted(names) if n != "info"
    }
    by_command = {n: c for n, c in by_command.items() if c}
    return {
        "commands": sum(by_command.values()),
        "by_command": by_command,
        "net_in_bytes": after.net_in - before.net_in,
        "net_out_bytes": after.net_out - before.net_out,
    }


def per(value: float | None, count: int, digits: int = 2) -> float | None:
    return round(value / count, digits) if value is not None and count else None


# ----------------------------------------------------------------------------- nodes


class ClusterNode(XmppdServer):
    """One xmppd node: the bench's xmppd configuration on PostgreSQL plus ``[cluster]``."""

    def __init__(self, workdir: Path, node: str, redis_url: str, database: str) -> None:
        super().__init__(workdir / node, free_port())
        self.node = node
        self.redis_url = redis_url
        self.database = database

    @property
    def storage_url(self) -> str:
        return pg.url(self.database)

    def configure(self) -> None:
        super().configure()
        with self.config_path.open("a") as fh:
            fh.write(cluster_section(self.redis_url, KEY_PREFIX, self.node))

    def adopt_identity(self, first: XmppdServer) -> None:
        """The cluster's nodes share one secret and certificate (the first node's)."""
        key = first.dir / "server.key"
        if key.exists():
            shutil.copy(key, self.dir / "server.key")
        certs = first.dir / "certs"
        if certs.is_dir():
            shutil.copytree(certs, self.dir / "certs", dirs_exist_ok=True)


def cluster_section(redis_url: str, prefix: str, node: str) -> str:
    return f'\n[cluster]\nredis_url = "{redis_url}"\nkey_prefix = "{prefix}"\nnode = "{node}"\n'


@contextlib.contextmanager
def running_cluster(workdir: Path, users: list[str], log: Log) -> Iterator[tuple[Any, ...]]:
    """Redis, a fresh PostgreSQL database with ``users``, nodes A and B started."""
    redis = RedisServer(workdir)
    database = pg.new_name("cluster")
    pg.create_database(database)
    a = ClusterNode(workdir, "node-a", redis.url, database)
    b = ClusterNode(workdir, "node-b", redis.url, database)
    try:
        redis.start()
        a.configure()
        b.configure()
        t0 = time.monotonic()
        a.create_accounts(users, PASSWORD)
        log(f"cluster: {len(users)} accounts in {time.monotonic() - t0:.1f} s; starting nodes")
        a.start()
        b.adopt_identity(a)
        b.start()
        time.sleep(1.0)  # both nodes have joined and read each other's (empty) view
        yield redis, a, b, database
    finally:
        b.stop()
        a.stop()
        redis.stop()
        with contextlib.suppress(pg.PostgresUnavailable):
            pg.drop_database(database)


# ----------------------------------------------------------------------------- steps


def _sample(redis: RedisServer, a: ClusterNode, b: ClusterNode) -> dict[str, Any]:
    return {
        "t": time.monotonic(),
        "a": a.cpu_seconds(),
        "b": b.cpu_seconds(),
        "redis": redis.cpu_seconds(),
        "info": RedisSample.of(redis.info()),
    }


def step_costs(
    before: Mapping[str, Any], after: Mapping[str, Any], messages: int
) -> dict[str, Any]:
    """CPU µs and Redis commands/bytes per delivered message between two samples."""
    cpu = {k: after[k] - before[k] for k in ("a", "b", "redis")}
    delta = redis_delta(before["info"], after["info"])
    return {
        "measured_seconds": round(after["t"] - before["t"], 3),
        "cpu_us_per_msg": per(1e6 * (cpu["a"] + cpu["b"]), messages, 1),
        "cpu_us_per_msg_node_a": per(1e6 * cpu["a"], messages, 1),
        "cpu_us_per_msg_node_b": per(1e6 * cpu["b"], messages, 1),
        "cpu_us_per_msg_redis": per(1e6 * cpu["redis"], messages, 1),
        "redis_commands": delta["commands"],
        "redis_commands_per_msg": per(delta["commands"], messages, 3),
        "redis_commands_by_name_per_msg": {
            n: per(c, messages, 3) for n, c in delta["by_command"].items()
        },
        "redis_net_in_bytes_per_msg": per(delta["net_in_bytes"], messages, 1),
        "redis_net_out_bytes_per_msg": per(delta["net_out_bytes"], messages, 1),
    }


def _placement(
    pool: GeneratorPool,
    redis: RedisServer,
    a: ClusterNode,
    b: ClusterNode,
    placement: str,
    cs: ClusterSettings,
    settings: Settings,
    log: Log,
) -> dict[str, Any]:
    p = cs.pairs
    senders = [user_name(2 * k) for k in range(p)]
    recipients = [user_name(2 * k + 1) for k in range(p)]
    targets = [f"{r}@{a.domain}" for r in recipients]
    home = a if placement == "same-node" else b
    # Sender k and recipient k land in the same generator process (same dealing).
    sent_login = login_sessions(
        pool, a, senders, settings, pair_targets=targets, mechanism=SCRAM_SHA1
    )
    recv_login = login_sessions(pool, home, recipients, settings, mechanism=SCRAM_SHA1)
    failed = sent_login["failed"] + recv_login["failed"]
    if failed:
        log(f"cluster {placement}: {failed} logins failed: {sent_login['errors'][:2]}")
    time.sleep(1.0)  # every session announced to the other node
    idle0 = _sample(redis, a, b)
    time.sleep(1.0)
    idle1 = _sample(redis, a, b)
    idle = redis_delta(idle0["info"], idle1["info"])
    idle_seconds = idle1["t"] - idle0["t"]
    steps = []
    number = 0
    for rate in cs.rates:
        for _ in range(cs.repeats):
            number += 1
            before = _sample(redis, a, b)
            res = _chat_step(
                a, pool, number, rate, sent_login["per_worker_ok"], settings, cs.step_seconds
            )
            after = _sample(redis, a, b)
            res.pop("server_cpu_pct", None)
            res.update(step_costs(before, after, res["received"]))
            steps.append(res)
            log(
                f"cluster {placement}: {rate:>6} msg/s  p50 {res['p50_ms']} p99 {res['p99_ms']} ms"
                f"  lost {res['lost']}  CPU {res['cpu_us_per_msg']} µs/msg (A "
                f"{res['cpu_us_per_msg_node_a']}, B {res['cpu_us_per_msg_node_b']}, Redis "
                f"{res['cpu_us_per_msg_redis']})  Redis {res['redis_commands_per_msg']} cmd, "
                f"{res['redis_net_in_bytes_per_msg']} B in / "
                f"{res['redis_net_out_bytes_per_msg']} B out per msg  (core0 "
                f"{res['core0_busy_pct']}%)"
            )
            pool.call_all("quiesce", [{"quiet": 0.5, "timeout": 20.0}] * len(pool), timeout=60)
    pool.call_all("close", [{}] * len(pool))
    time.sleep(1.0)  # sessions gone from the registry before the next placement
    return {
        "placement": placement,
        "sessions_ok": sent_login["ok"] + recv_login["ok"],
        "login_failed": failed,
        "redis_idle_commands_per_s": round(idle["commands"] / idle_seconds, 1),
        "redis_idle_by_name_per_s": {
            n: round(c / idle_seconds, 1) for n, c in idle["by_command"].items()
        },
        "steps": steps,
        "by_rate": summarise(steps),
    }


#: Per-step fields summarised (median over the repeats of a rate).
SUMMARY_FIELDS = (
    "p50_ms",
    "p99_ms",
    "cpu_us_per_msg",
    "cpu_us_per_msg_node_a",
    "cpu_us_per_msg_node_b",
    "cpu_us_per_msg_redis",
    "redis_commands_per_msg",
    "redis_net_in_bytes_per_msg",
    "redis_net_out_bytes_per_msg",
    "core0_busy_pct",
)


def median(values: list[float]) -> float | None:
    vals = sorted(values)
    if not vals:
        return None
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else round((vals[mid - 1] + vals[mid]) / 2, 3)


def summarise(steps: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Rate (as a string, JSON keys) → median of each :data:`SUMMARY_FIELDS` over its steps,
    with messages sent and lost summed."""
    out: dict[str, dict[str, Any]] = {}
    for rate in sorted({s["rate"] for s in steps}):
        mine = [s for s in steps if s["rate"] == rate]
        row: dict[str, Any] = {
            "steps": len(mine),
            "sent": sum(s["sent"] for s in mine),
            "lost": sum(s["lost"] for s in mine),
        }
        for name in SUMMARY_FIELDS:
            row[name] = median([s[name] for s in mine if s.get(name) is not None])
        out[str(rate)] = row
    return out


def _idle_sessions(
    pool: GeneratorPool,
    redis: RedisServer,
    a: ClusterNode,
    b: ClusterNode,
    cs: ClusterSettings,
    settings: Settings,
    log: Log,
) -> dict[str, Any]:
    """N idle sessions on node B: Redis memory and keys, B's and A's RSS, per session."""
    n = cs.idle_sessions
    users = [user_name(2 * cs.pairs + i) for i in range(n)]
    time.sleep(1.0)
    info0 = RedisSample.of(redis.info())
    log0 = redis.key_bytes(SESSION_LOG)
    rss_a0, rss_b0 = tree_rss_kb(a.pid), tree_rss_kb(b.pid)
    cpu_a0 = a.cpu_seconds()
    login = login_sessions(pool, b, users, settings, mechanism=SCRAM_SHA1)
    ok = login["ok"]
    time.sleep(3.0)  # A has read the session log; allocator settled
    info1 = RedisSample.of(redis.info())
    log1 = redis.key_bytes(SESSION_LOG)
    rss_a1, rss_b1 = tree_rss_kb(a.pid), tree_rss_kb(b.pid)
    cpu_a1 = a.cpu_seconds()
    pool.call_all("close", [{}] * len(pool))
    res = {
        "idle_sessions": n,
        "idle_sessions_ok": ok,
        "login_rate": login["rate"],
        "redis_used_memory_before": info0.used_memory,
        "redis_used_memory_after": info1.used_memory,
        "redis_bytes_per_session": per(info1.used_memory - info0.used_memory, ok, 1),
        "redis_session_log_bytes_per_session": per(log1 - log0, ok, 1),
        "redis_keys_before": info0.keys,
        "redis_keys_after": info1.keys,
        "redis_keys_per_session": per(info1.keys - info0.keys, ok, 3),
        "node_b_rss_kb": [rss_b0, rss_b1],
        "node_b_kb_per_local_session": per(rss_b1 - rss_b0, ok, 2),
        "node_a_rss_kb": [rss_a0, rss_a1],
        "node_a_kb_per_remote_session": per(rss_a1 - rss_a0, ok, 3),
        # What a login elsewhere costs every other node (reading the session log into
        # its view), heartbeats of the same seconds included.
        "node_a_cpu_us_per_remote_login": per(1e6 * (cpu_a1 - cpu_a0), ok, 1),
    }
    log(
        f"cluster: {ok}/{n} idle sessions on node B: Redis "
        f"{res['redis_bytes_per_session']} B (session log "
        f"{res['redis_session_log_bytes_per_session']} B) and "
        f"{res['redis_keys_per_session']} keys per session; RSS per session: "
        f"B (holds it) {res['node_b_kb_per_local_session']} KiB, "
        f"A (view) {res['node_a_kb_per_remote_session']} KiB and "
        f"{res['node_a_cpu_us_per_remote_login']} µs of CPU"
    )
    return res


def run_cluster(
    server: Server, settings: Settings, cs: ClusterSettings, log: Log
) -> dict[str, Any]:
    """The whole scenario (``server`` only gives the run's directory and version)."""
    workdir = server.dir.parent / "cluster"
    users = [user_name(i) for i in range(2 * cs.pairs + cs.idle_sessions)]
    background = background_load()
    workers = max(settings.chat_workers, workers_for(2 * cs.pairs, minimum=1))
    with running_cluster(workdir, users, log) as (redis, a, b, _database):
        redis_version = redis.version()
        with GeneratorPool(workers) as pool:
            # Memory first, on heaps that no chat session has churned yet.
            memory = _idle_sessions(pool, redis, a, b, cs, settings, log)
            placements = {
                placement: _placement(pool, redis, a, b, placement, cs, settings, log)
                for placement in PLACEMENTS
            }
        alive = a.running() and b.running()
    result: dict[str, Any] = {
        "scenario": "cluster",
        "server": server.name,
        "nodes": 2,
        "redis": redis_version,
        "placement_of_processes": f"nodes A and B and Redis on core {SERVER_CPU}",
        "pairs": cs.pairs,
        "rates": cs.rates,
        "step_seconds": cs.step_seconds,
        "repeats": cs.repeats,
        "placements": placements,
        "memory": memory,
        "cross_node_overhead": overhead(placements),
        "nodes_alive_after": alive,
        "background_busy_pct": background,
    }
    return result


def overhead(placements: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per rate: cross-node minus same-node CPU µs per message, and the ratio."""
    out: dict[str, dict[str, float | None]] = {}
    same = placements.get("same-node", {}).get("by_rate", {})
    cross = placements.get("cross-node", {}).get("by_rate", {})
    for rate, c in cross.items():
        s = same.get(rate)
        if s is None or s.get("cpu_us_per_msg") is None or c.get("cpu_us_per_msg") is None:
            continue
        out[rate] = {
            "extra_cpu_us_per_msg": round(c["cpu_us_per_msg"] - s["cpu_us_per_msg"], 1),
            "cpu_ratio": round(c["cpu_us_per_msg"] / s["cpu_us_per_msg"], 2)
            if s["cpu_us_per_msg"]
            else None,
        }
    return out
