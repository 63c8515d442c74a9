"""The cluster's Redis client, for each ``[cluster] redis_mode``: one Redis, Redis
Sentinel (the client follows the master after a failover), or a Redis Cluster (keys
sharded by slot; redis-py routes each command)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import urlsplit

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.sentinel import Sentinel

if TYPE_CHECKING:
    from xmppd.config import ClusterSection

RedisClient: TypeAlias = Any
"""``redis.asyncio.Redis`` or ``RedisCluster``. Typed loosely on purpose: redis-py
annotates its commands with unions of the sync and async return types, so every
await would need a cast."""

_TIMEOUTS: dict[str, Any] = {
    "socket_timeout": 5.0,
    "socket_connect_timeout": 2.0,
    "health_check_interval": 15,
}


def sentinel_addresses(url: str) -> tuple[list[tuple[str, int]], int, str | None]:
    """``redis://[:password@]h1:26379,h2:26379/db`` → the sentinels, the database
    number and the password."""
    parts = urlsplit(url)
    netloc = parts.netloc
    password = None
    if "@" in netloc:
        auth, netloc = netloc.rsplit("@", 1)
        password = auth.split(":", 1)[-1] or None
    hosts = []
    for item in netloc.split(","):
        host, _, port = item.rpartition(":")
        if not host:
            host, port = item, "26379"
        hosts.append((host.strip("[]"), int(port)))
    path = parts.path.strip("/")
    return hosts, int(path) if path else 0, password


def connect(section: ClusterSection, name: str = "xmppd") -> Redis | RedisCluster:
    """A client for the configured Redis (no connection is made until first use); its
    connections are named ``name`` (what Redis's ``CLIENT LIST`` shows: a node's are
    ``xmppd:<node>``)."""
    options = {**_TIMEOUTS, "client_name": name}
    if section.redis_mode == "cluster":
        return RedisCluster.from_url(section.redis_url, **options)
    if section.redis_mode == "sentinel":
        sentinels, db, password = sentinel_addresses(section.redis_url)
        sentinel = Sentinel(
            sentinels,
            sentinel_kwargs={"password": password, **_TIMEOUTS},
            password=password,
            db=db,
            **options,
        )
        client: Redis = sentinel.master_for(section.sentinel_service)
        return client
    return Redis.from_url(section.redis_url, **options)
