"""Several xmppd nodes as one cluster for tests: shared PostgreSQL, shared Redis (a key
prefix of their own), and a TCP front that hands successive connections to the nodes
in turn, so the two parties of a test land on different nodes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.support.server import (
    XmppdServer,
    _stop,
    _wait_listening,
    free_port,
    postgres_database,
    service_unavailable,
    write_config,
)

if TYPE_CHECKING:
    from tests.support.clients import Slix

REDIS_URL = os.environ.get("XMPPD_TEST_REDIS", "redis://127.0.0.1:6379/0")


def redis_or_skip(url: str = REDIS_URL) -> None:
    """Skip (fail in CI) when Redis does not answer."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    # (A Redis Cluster node answers PING too.)
    try:
        client.ping()
    except (redis.ConnectionError, OSError) as exc:
        service_unavailable(f"Redis not reachable at {url}: {exc}")
    finally:
        client.close()


def delete_prefix(url: str, prefix: str) -> None:
    """Remove every key a test cluster left in the shared Redis."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        for key in list(client.scan_iter(match=f"{prefix}:*", count=1000)):
            client.delete(key)
    finally:
        client.close()


class TcpFront:
    """A round-robin TCP relay on loopback (bytes are passed through untouched, so
    TLS and channel binding are end to end), in a thread of the test process."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._servers: list[asyncio.Server] = []
        self._turn = itertools.count()
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.connections: list[int] = []
        """The backend index each connection went to, in order."""
        self.pinned: int | None = None
        """Send every new connection to this backend instead of taking turns."""
        self._thread.start()

    def add(self, backends: list[tuple[str, int]]) -> int:
        """Listen on a free port of 127.0.0.1; connection N goes to the (address, port)
        ``backends[N % len]`` (a shared turn counter across ports)."""
        port = free_port()

        async def serve() -> asyncio.Server:
            return await asyncio.start_server(
                lambda r, w: self._relay(r, w, backends), "127.0.0.1", port
            )

        server = asyncio.run_coroutine_threadsafe(serve(), self._loop).result(10)
        self._servers.append(server)
        return port

    async def _relay(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        backends: list[tuple[str, int]],
    ) -> None:
        index = self.pinned if self.pinned is not None else next(self._turn) % len(backends)
        self.connections.append(index)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*backends[index])
        except OSError:
            writer.transport.abort()
            self._writers.discard(writer)
            self._tasks.discard(task)
            return
        self._writers.add(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                if dst.can_write_eof():
                    try:
                        dst.write_eof()
                    except (ConnectionError, OSError):
                        dst.close()
                else:
                    dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.transport.abort()
                self._writers.discard(w)
            self._tasks.discard(task)

    def close(self) -> None:
        async def shutdown() -> None:
            for server in self._servers:
                server.close()
            for w in list(self._writers):
                w.transport.abort()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for server in self._servers:
                await server.wait_closed()
            for _ in range(3):  # let the aborted transports close their sockets
                await asyncio.sleep(0)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@dataclass
class ClusterNodes:
    """The nodes of a test cluster (``front`` is what clients connect to)."""

    front: XmppdServer
    nodes: list[XmppdServer]
    redis_url: str
    prefix: str
    relay: TcpFront
    logs: list[Path] = field(default_factory=list)


def cluster_extra(
    redis_url: str,
    prefix: str,
    node: str,
    *,
    timeout: float = 3.0,
    options: dict[str, Any] | None = None,
) -> str:
    from tests.support.server import _toml_value

    return (
        "\n[cluster]\n"
        f'redis_url = "{redis_url}"\n'
        f'key_prefix = "{prefix}"\n'
        f'node = "{node}"\n'
        f"heartbeat_interval = {timeout / 4}\n"
        f"node_timeout = {timeout}\n"
        + "".join(f"{k} = {_toml_value(v)}\n" for k, v in (options or {}).items())
    )


def shared_uploads(tmp: Path, modules: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Uploads on disk go to one directory all nodes share (what an NFS mount is in
    production): the first node's own, so tests find the files where one server
    keeps them."""
    options = modules.get("http_upload")
    if options is None or options.get("storage") == "s3" or options.get("directory"):
        return modules
    shared = tmp / "node1" / "data" / "mod_http_upload"
    return {**modules, "http_upload": {**options, "directory": str(shared)}}


@contextmanager
def running_cluster(
    tmp: Path,
    *,
    nodes: int = 2,
    redis_url: str = REDIS_URL,
    modules: dict[str, dict[str, Any]] | None = None,
    extra: str = "",
    domain: str = "localhost",
    admins: list[str] | None = None,
    auth: dict[str, Any] | None = None,
    http: bool = False,
    server: dict[str, Any] | None = None,
    hooks: dict[str, dict[str, Any]] | None = None,
    node_timeout: float = 3.0,
    components: dict[str, str] | None = None,
    cluster: dict[str, Any] | None = None,
    public_addresses: bool = False,
    node_extra: Callable[[int], str] | None = None,
    own_addresses: bool = False,
) -> Iterator[ClusterNodes]:
    """Start ``nodes`` xmppd processes forming one cluster on a fresh PostgreSQL
    database and the shared Redis (a key prefix of their own), behind a TCP front.
    ``node_extra(index)``: more configuration for one node (its own s2s listener).
    ``own_addresses``: node N listens on 127.0.0.N (Linux routes all of 127/8 to lo),
    as nodes on separate machines have addresses of their own; otherwise every node
    listens on 127.0.0.1."""
    from tests.support.server import DEFAULT_TEST_MODULES

    redis_or_skip(redis_url)
    modules = shared_uploads(tmp, DEFAULT_TEST_MODULES if modules is None else modules)
    prefix = f"t{uuid.uuid4().hex[:10]}"
    started: list[XmppdServer] = []
    logs: list[Any] = []
    relay = TcpFront()
    try:
        with postgres_database() as url:
            try:
                for index in range(nodes):
                    node_dir = tmp / f"node{index + 1}"
                    node_dir.mkdir(parents=True, exist_ok=True)
                    data_dir = node_dir / "data"
                    if started:  # one certificate (the secret is the database's)
                        shutil.copytree(started[0].data_dir / "certs", data_dir / "certs")
                    address = f"127.0.0.{index + 1}" if own_addresses else "127.0.0.1"
                    p1, p2 = free_port(address), free_port(address)
                    p4 = free_port(address) if http else None
                    p3 = free_port() if components else None
                    config_path = node_dir / "xmppd.toml"
                    log_path = node_dir / "xmppd.log"
                    write_config(
                        config_path,
                        data_dir=data_dir,
                        storage_url=url,
                        starttls_port=p1,
                        direct_tls_port=p2,
                        domain=domain,
                        modules=modules,
                        hooks=hooks,
                        extra=extra
                        + (node_extra(index) if node_extra is not None else "")
                        + cluster_extra(
                            redis_url,
                            prefix,
                            f"node{index + 1}",
                            timeout=node_timeout,
                            options={
                                **(cluster or {}),
                                **(
                                    {"public_address": f"{address}:{p1}"}
                                    if public_addresses
                                    else {}
                                ),
                                # the BOSH relay listener: loopback, a free port
                                **({"http_address": address} if http else {}),
                            },
                        ),
                        admins=admins,
                        auth=auth,
                        http_port=p4,
                        server=server,
                        component_port=p3,
                        components=components,
                        address=address,
                    )
                    log = log_path.open("ab")
                    logs.append(log)
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "xmppd", "--config", str(config_path), "run"],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                    srv = XmppdServer(
                        proc, data_dir, config_path, p1, p2, domain, "postgresql", log_path, url
                    )
                    srv.http_port = p4
                    srv.component_port = p3
                    srv.address = address
                    started.append(srv)
                    if index == 0:
                        # The first node makes the certificate, the schema and the secret;
                        # the others start together once it listens.
                        _wait_node(srv)
                for srv in started[1:]:
                    _wait_node(srv)
                if (server or {}).get("log_level", "debug") in ("debug", "info"):
                    wait_live(started)  # (read from the logs)
                first = started[0]
                front = XmppdServer(
                    first.process,
                    first.data_dir,
                    first.config_path,
                    relay.add([(n.address, n.starttls_port) for n in started]),
                    relay.add([(n.address, n.direct_tls_port) for n in started]),
                    domain,
                    "postgresql",
                    first.log_path,
                    url,
                )
                front.cluster_nodes = started
                if http:
                    front.http_port = relay.add([(n.address, n.http_port or 0) for n in started])
                yield ClusterNodes(
                    front, started, redis_url, prefix, relay, [n.log_path for n in started]
                )
            finally:
                for srv in started:
                    _stop(srv.process)
    finally:
        relay.close()
        for log in logs:
            log.close()
        with contextlib.suppress(Exception):  # a test may have stopped its own Redis
            delete_prefix(redis_url, prefix)


def _wait_node(node: XmppdServer) -> None:
    """Return once ``node`` listens on its ports."""
    ports = (node.starttls_port, node.direct_tls_port, node.http_port)
    _wait_listening(node.process, tuple(p for p in ports if p), node.log_path, node.address)
    if node.component_port:  # (components connect to 127.0.0.1: the listener's default)
        _wait_listening(node.process, (node.component_port,), node.log_path)


def start_node(node: XmppdServer) -> None:
    """Start a stopped or killed node again with its configuration and ports."""
    with node.log_path.open("ab") as log:
        node.process = subprocess.Popen(
            [sys.executable, "-m", "xmppd", "--config", str(node.config_path), "run"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    ports = (node.starttls_port, node.direct_tls_port, node.http_port)
    _wait_listening(node.process, tuple(p for p in ports if p), node.log_path, node.address)


class RedisProcess:
    """A redis-server of a test's own on a free loopback port (nothing kept on disk),
    which the test may stop and start again."""

    def __init__(self, tmp: Path) -> None:
        if shutil.which("redis-server") is None:
            service_unavailable("redis-server is not installed")
        self.port = free_port()
        self.dir = tmp
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
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
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import socket
        import time

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        """Kill it (what it held is gone: no persistence)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None


@contextmanager
def own_redis(tmp: Path) -> Iterator[RedisProcess]:
    redis = RedisProcess(tmp)
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


def cluster_node_port() -> int:
    """A free port for a Redis Cluster node: its cluster bus listens on the port +
    10000, which must exist (≤ 65535) and be free too."""
    import socket

    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


@contextmanager
def redis_cluster(tmp: Path, masters: int = 3) -> Iterator[str]:
    """A Redis Cluster of ``masters`` redis-server processes on free loopback ports
    (created with ``redis-cli --cluster create``); yields a URL of one of them."""
    import socket
    import time

    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        service_unavailable("redis-server / redis-cli are not installed")
    ports = [cluster_node_port() for _ in range(masters)]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            node_dir = tmp / f"redis-{port}"
            node_dir.mkdir(parents=True, exist_ok=True)
            processes.append(
                subprocess.Popen(
                    [
                        "redis-server",
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(node_dir / "nodes.conf"),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(node_dir),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in ports:
            deadline = time.monotonic() + 10
            while True:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 20
        while True:  # until every slot is served
            info = subprocess.run(
                ["redis-cli", "-p", str(ports[0]), "cluster", "info"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
            if "cluster_state:ok" in info:
                break
            assert time.monotonic() < deadline, info
            time.sleep(0.2)
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for process in processes:
            process.kill()
            process.wait()


def wait_live(
    nodes: list[XmppdServer], timeout: float = 15.0, since: dict[Path, int] | None = None
) -> None:
    """Wait until every node in ``nodes`` (all running) counts all of them as live (so
    placement is the same everywhere): the last ``live nodes`` line of each log (after
    its first ``since[log]`` characters, for nodes started again)."""
    names = ", ".join(sorted(node.log_path.parent.name for node in nodes))
    wanted = f"cluster: live nodes: {names}"
    deadline = time.monotonic() + timeout
    for node in nodes:
        while True:
            lines = [
                line
                for line in node.log_path.read_text(errors="replace")[
                    (since or {}).get(node.log_path, 0) :
                ].splitlines()
                if "cluster: live nodes: " in line
            ]
            if lines and lines[-1].endswith(wanted):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node.log_path}: never saw {wanted!r}")
            time.sleep(0.05)


@dataclass
class SentinelSetup:
    """A Redis master, a replica and one Sentinel watching them (service ``xmppd``)."""

    master: subprocess.Popen[bytes]
    replica: subprocess.Popen[bytes]
    sentinel: subprocess.Popen[bytes]
    master_port: int
    replica_port: int
    sentinel_port: int

    @property
    def url(self) -> str:
        """What ``[cluster] redis_url`` names in sentinel mode: the Sentinels."""
        return f"redis://127.0.0.1:{self.sentinel_port}/0"


@contextmanager
def redis_sentinel(tmp: Path) -> Iterator[SentinelSetup]:
    """Master, replica and Sentinel on free loopback ports; the Sentinel fails over
    within a few seconds of the master's death."""
    import socket
    import time

    if shutil.which("redis-server") is None:
        service_unavailable("redis-server is not installed")
    tmp.mkdir(parents=True, exist_ok=True)
    ports = [free_port() for _ in range(3)]
    master_port, replica_port, sentinel_port = ports
    base = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)]
    conf = tmp / "sentinel.conf"
    conf.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp}\n"
        f"sentinel monitor xmppd 127.0.0.1 {master_port} 1\n"
        "sentinel down-after-milliseconds xmppd 1000\n"
        "sentinel failover-timeout xmppd 5000\n"
    )
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    processes = [
        subprocess.Popen(["redis-server", "--port", str(master_port), *base], **quiet),  # type: ignore[call-overload]
        subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(replica_port),
                "--replicaof",
                "127.0.0.1",
                str(master_port),
                *base,
            ],
            **quiet,  # type: ignore[call-overload]
        ),
    ]
    try:
        for port in (master_port, replica_port):
            deadline = time.monotonic() + 10
            while True:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        processes.append(subprocess.Popen(["redis-server", str(conf), "--sentinel"], **quiet))  # type: ignore[call-overload]
        deadline = time.monotonic() + 15
        while True:  # until the Sentinel knows the master and its replica
            info = subprocess.run(
                ["redis-cli", "-p", str(sentinel_port), "sentinel", "replicas", "xmppd"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
            if str(replica_port) in info:
                break
            assert time.monotonic() < deadline, "the Sentinel did not find the replica"
            time.sleep(0.2)
        yield SentinelSetup(*processes, *ports)  # type: ignore[arg-type]
    finally:
        for process in processes:
            process.kill()
            process.wait()


async def until(
    predicate: Callable[[], object], timeout: float = 20, what: str = "timed out"
) -> None:
    """Poll ``predicate`` every 0.2 s until it holds; fail with ``what`` after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.2)


async def chat_until_delivered(
    sender: Slix, recipient: Slix, *, within: float, each: float, what: str
) -> None:
    """Send ``after 0``, ``after 1``... from ``sender`` until one reaches ``recipient``
    within ``each`` seconds: for a path between nodes that comes back after a failure
    (fails with ``what`` after ``within`` seconds)."""
    deadline = asyncio.get_running_loop().time() + within
    i = 0
    while True:
        assert asyncio.get_running_loop().time() < deadline, what
        sender.xmpp.send_message(mto=recipient.jid, mbody=f"after {i}", mtype="chat")
        try:
            await recipient.next_message(lambda m, i=i: m["body"] == f"after {i}", timeout=each)
            return
        except TimeoutError:
            i += 1
