"""An xmppd started with ``server.workers`` for tests: a supervisor and its workers on a
fresh PostgreSQL database and the shared Redis (a key prefix of their own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.cluster import REDIS_URL, cluster_extra, delete_prefix, redis_or_skip
from tests.support.server import (
    DEFAULT_TEST_MODULES,
    XmppdServer,
    _stop,
    _wait_listening,
    free_port,
    postgres_database,
    write_config,
)

NODE = "wk"
"""``[cluster] node`` of the test server: its workers are ``wk-w0``, ``wk-w1``..."""


@dataclass
class Workers:
    """The supervised server (``server.process`` is the supervisor)."""

    server: XmppdServer
    count: int
    redis_url: str
    prefix: str

    def node(self, index: int) -> str:
        return f"{NODE}-w{index}"

    def nodes(self) -> dict[str, dict[str, Any]]:
        """What each member of the cluster told about itself (``pid``...), from Redis."""
        import redis

        client = redis.Redis.from_url(
            self.redis_url, socket_connect_timeout=2, decode_responses=True
        )
        try:
            found: dict[str, str] = client.hgetall(f"{self.prefix}:nodes")  # type: ignore[assignment]
            live = {
                name: json.loads(info)
                for name, info in found.items()
                if client.exists(f"{self.prefix}:alive:{name}")
            }
        finally:
            client.close()
        return live

    def wait_nodes(self, expected: set[str], *, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until exactly ``expected`` are the live nodes; their info."""
        deadline = time.monotonic() + timeout
        while True:
            nodes = self.nodes()
            if set(nodes) == expected:
                return nodes
            if self.server.process.poll() is not None:
                raise RuntimeError(f"supervisor exited:\n{self.server.log_text()[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"live nodes {sorted(nodes)}, expected {sorted(expected)}")
            time.sleep(0.1)

    def component_node(self, domain: str) -> str | None:
        """The node an external component is connected to, as published in Redis."""
        import redis

        client = redis.Redis.from_url(
            self.redis_url, socket_connect_timeout=2, decode_responses=True
        )
        try:
            value = client.hget(f"{self.prefix}:components", domain)
        finally:
            client.close()
        return value if isinstance(value, str) else None

    def worker_pids(self) -> dict[str, int]:
        return {name: int(info["pid"]) for name, info in self.nodes().items()}


@contextmanager
def running_workers(
    tmp: Path,
    *,
    workers: int = 2,
    modules: dict[str, dict[str, Any]] | None = None,
    http: bool = False,
    node_timeout: float = 3.0,
    extra: str = "",
    components: dict[str, str] | None = None,
    cluster: str = "",
) -> Iterator[Workers]:
    """``xmppd run`` with ``server.workers = workers``; returns once every worker is a
    live node of its cluster. ``cluster``: more ``[cluster]`` lines."""
    redis_or_skip()
    prefix = f"t{uuid.uuid4().hex[:10]}"
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        with postgres_database() as url:
            data_dir = tmp / "data"
            config_path = tmp / "xmppd.toml"
            log_path = tmp / "xmppd.log"
            for attempt in range(3):
                # Fresh ports on each attempt: a port found free can be taken by
                # someone else before the workers bind it.
                p1, p2 = free_port(), free_port()
                p4 = free_port() if http else None
                p3 = free_port() if components else None
                write_config(
                    config_path,
                    data_dir=data_dir,
                    storage_url=url,
                    starttls_port=p1,
                    direct_tls_port=p2,
                    modules=DEFAULT_TEST_MODULES if modules is None else modules,
                    extra=extra
                    + cluster_extra(REDIS_URL, prefix, NODE, timeout=node_timeout)
                    + cluster,
                    http_port=p4,
                    component_port=p3,
                    components=components,
                    server={"workers": workers},
                )
                with log_path.open("ab") as log:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "xmppd", "--config", str(config_path), "run"],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    )
                try:
                    _wait_listening(proc, tuple(p for p in (p1, p2, p3, p4) if p), log_path)
                    break
                except RuntimeError:
                    _stop(proc)
                    if attempt == 2:
                        raise
            server = XmppdServer(
                proc, data_dir, config_path, p1, p2, "localhost", "postgresql", log_path, url
            )
            server.http_port = p4
            server.component_port = p3
            running = Workers(server, workers, REDIS_URL, prefix)
            try:
                running.wait_nodes({running.node(i) for i in range(workers)})
                yield running
            finally:
                _stop(server.process)
    finally:
        delete_prefix(REDIS_URL, prefix)
