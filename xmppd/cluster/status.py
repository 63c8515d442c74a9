"""``xmppd cluster status``: the cluster as Redis sees it — each node, whether its
heartbeat is current, how many sessions it has bound, and what it told about itself.

Read straight from Redis with the configuration's ``[cluster]`` section, so it works
from any machine that can reach Redis, whether or not a server runs there.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from xmppd.cluster.keys import Keys
from xmppd.cluster.redisconn import connect
from xmppd.cluster.writer import OUTAGE_ERRORS

if TYPE_CHECKING:
    from xmppd.cluster.redisconn import RedisClient
    from xmppd.config import ClusterSection, ServerConfig


@dataclass(slots=True)
class NodeStatus:
    """One member of the cluster's node list."""

    node: str
    live: bool
    """Its heartbeat key exists (it renewed it within ``node_timeout``)."""
    heartbeat_age: float | None
    """Seconds since its last heartbeat (``None``: expired)."""
    sessions: int
    """Client sessions it has bound (its ``nodesess`` set)."""
    pid: int | None
    host: str
    up_since: float | None
    """When this run of the node announced itself first (Unix time)."""


async def read_status(redis: RedisClient, keys: Keys, now: float | None = None) -> list[NodeStatus]:
    """Every node in the node list, sorted by name."""
    now = time.time() if now is None else now
    members = await redis.hgetall(keys.nodes())
    names = sorted(_text(name) for name in members)
    if not names:
        return []
    pipe = redis.pipeline(transaction=False)
    for name in names:
        pipe.get(keys.heartbeat(name))
        pipe.scard(keys.node_sessions(name))
    replies = await pipe.execute()
    infos = {_text(k): v for k, v in members.items()}
    found = []
    for index, name in enumerate(names):
        beat, sessions = replies[2 * index], replies[2 * index + 1]
        age: float | None = None
        if beat is not None:
            try:
                age = max(0.0, now - float(_text(beat).rpartition(":")[2]))
            except ValueError:
                age = 0.0
        info = _info(infos.get(name))
        pid = info.get("pid")
        since = info.get("since")
        found.append(
            NodeStatus(
                node=name,
                live=beat is not None,
                heartbeat_age=age,
                sessions=int(sessions or 0),
                pid=pid if isinstance(pid, int) else None,
                host=str(info.get("host", "")),
                up_since=float(since) if isinstance(since, int | float) else None,
            )
        )
    return found


async def cluster_status(section: ClusterSection) -> list[NodeStatus]:
    redis = connect(section)
    try:
        return await read_status(redis, Keys(section.key_prefix))
    finally:
        await redis.aclose()


def format_table(nodes: list[NodeStatus], now: float | None = None) -> str:
    """The nodes as an aligned text table, with a summary line first."""
    now = time.time() if now is None else now
    live = [n for n in nodes if n.live]
    lines = [
        f"{len(live)} live node{'s' if len(live) != 1 else ''}"
        + (
            f", {len(nodes) - len(live)} dead (not yet cleaned up)"
            if len(live) < len(nodes)
            else ""
        )
        + f", {sum(n.sessions for n in nodes)} sessions"
    ]
    rows = [("NODE", "STATE", "SESSIONS", "HEARTBEAT", "PID", "HOST", "UP")]
    for n in nodes:
        rows.append(
            (
                n.node,
                "live" if n.live else "dead",
                str(n.sessions),
                f"{n.heartbeat_age:.1f}s ago" if n.heartbeat_age is not None else "expired",
                str(n.pid) if n.pid is not None else "-",
                n.host or "-",
                _duration(now - n.up_since) if n.up_since is not None else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def status_command(config: ServerConfig, *, as_json: bool = False) -> int:
    """``xmppd cluster status``: the exit status (1: Redis unreachable; 2: no cluster
    configured)."""
    section = config.cluster
    if not section.enabled:
        print("no cluster: [cluster] redis_url is not set in the configuration", file=sys.stderr)
        return 2
    try:
        nodes = asyncio.run(cluster_status(section))
    except OUTAGE_ERRORS as exc:
        print(f"cannot reach Redis at {section.redis_url}: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps({"nodes": [asdict(n) for n in nodes]}, indent=2))
    elif not nodes:
        print(f"no node of cluster {section.key_prefix!r} is running")
    else:
        print(format_table(nodes))
    return 0


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _info(value: Any) -> dict[str, Any]:
    try:
        info = json.loads(_text(value)) if value is not None else {}
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
