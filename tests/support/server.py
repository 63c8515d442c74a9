"""Start a real xmppd process on loopback for tests, with SQLite or PostgreSQL storage."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.common import free_port as bench_free_port

PG_ADMIN_DSN = os.environ.get("XMPPD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
SESSION_REGISTRY = os.environ.get("XMPPD_TEST_SESSIONS", "memory")
"""The session registry the servers under test use (``[sessions] registry``): the
suite's second pass sets ``serialised``, the third ``cluster`` (see ``./dev test``)."""
CLUSTER_NODES = int(os.environ.get("XMPPD_TEST_CLUSTER_NODES", "3"))
"""Nodes of the cluster the cluster pass runs against."""


_HANDED_OUT: deque[int] = deque(maxlen=1024)
"""Ports :func:`free_port` returned lately: the kernel may offer a port again before
the server it was meant for has bound it (two listeners of one configuration were
once given the same port)."""


def free_port(address: str = "127.0.0.1") -> int:
    """A free TCP port on the loopback ``address`` (never one of this machine's service
    ports, nor one any test process on this machine handed out lately). A port free on
    127.0.0.1 may be taken on 127.0.0.2: a server listening on another loopback address
    asks for a port of that address."""
    port = bench_free_port(address, avoid=_HANDED_OUT)
    _HANDED_OUT.append(port)
    return port


def service_unavailable(reason: str) -> None:
    """Skip a storage test whose service is missing; in CI that is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"service test cannot run in CI: {reason}")
    pytest.skip(reason)


@dataclass
class XmppdServer:
    """A running server: its ports, data directory and CA certificate for clients."""

    process: subprocess.Popen[bytes]
    data_dir: Path
    config_path: Path
    starttls_port: int
    direct_tls_port: int
    domain: str
    backend: str
    log_path: Path
    storage_url: str
    component_port: int | None = None
    """The XEP-0114 listener, when the server was started with ``components``."""
    http_port: int | None = None
    """The ``kind = "http"`` listener, when the server was started with ``http``."""
    http_tls: bool = False
    """That listener is HTTPS."""
    address: str = "127.0.0.1"
    """The loopback address it listens on (a cluster node may have one of its own)."""
    cluster_nodes: list[XmppdServer] | None = None
    """When this is the front of a test cluster (the cluster pass): its nodes."""

    @property
    def http_url(self) -> str:
        """``http://<address>:<port>`` (or https) of the HTTP listener."""
        assert self.http_port is not None, "started without http"
        return f"{'https' if self.http_tls else 'http'}://{self.address}:{self.http_port}"

    @property
    def cafile(self) -> Path:
        return self.data_dir / "certs" / f"{self.domain}.crt"

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``xmppd --config ... <args>`` against this server's configuration."""
        return subprocess.run(
            [sys.executable, "-m", "xmppd", "--config", str(self.config_path), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def write_config(
    path: Path,
    *,
    data_dir: Path,
    storage_url: str,
    starttls_port: int,
    direct_tls_port: int,
    domain: str = "localhost",
    modules: dict[str, dict[str, Any]] | None = None,
    hooks: dict[str, dict[str, Any]] | None = None,
    extra: str = "",
    component_port: int | None = None,
    components: dict[str, str] | None = None,
    admins: list[str] | None = None,
    auth: dict[str, Any] | None = None,
    http_port: int | None = None,
    http_tls: bool = False,
    server: dict[str, Any] | None = None,
    address: str = "127.0.0.1",
) -> None:
    # Hashing at normal priority: the suite's servers share one session with busy test
    # workers, against which niceness 19 would slow every registration (2x measured).
    auth_options = {"failures_before_delay": 1000, "hashing_niceness": 0, **(auth or {})}
    server_options = {"log_level": "debug", **(server or {})}
    lines = [
        "[server]",
        f"data_dir = {_toml_value(str(data_dir))}",
        *(f"{k} = {_toml_value(v)}" for k, v in server_options.items()),
        "[storage]",
        f"url = {_toml_value(storage_url)}",
        "[auth]",
        *(f"{k} = {_toml_value(v)}" for k, v in auth_options.items()),
        "[accounts]",
        "min_password_length = 4",
        "[sessions]",
        f"registry = {_toml_value('memory' if SESSION_REGISTRY == 'cluster' else SESSION_REGISTRY)}",
        "[[listeners]]",
        f"address = {_toml_value(address)}",
        f"port = {starttls_port}",
        'tls = "starttls"',
        "[[listeners]]",
        f"address = {_toml_value(address)}",
        f"port = {direct_tls_port}",
        'tls = "direct"',
    ]
    if http_port is not None:
        lines += [
            "[[listeners]]",
            'kind = "http"',
            *([f"address = {_toml_value(address)}"] if address != "127.0.0.1" else []),
            f"port = {http_port}",
            f"tls = {_toml_value('direct' if http_tls else 'none')}",
        ]
    if components:
        assert component_port is not None
        lines += ["[[listeners]]", 'kind = "component"', f"port = {component_port}"]
        for component_domain, secret in components.items():
            lines += [
                "[[components]]",
                f"domain = {_toml_value(component_domain)}",
                f"secret = {_toml_value(secret)}",
            ]
    lines.append(f'[hosts."{domain}"]')
    if admins:
        lines.append(f"admins = {_toml_value(admins)}")
    if modules is not None:
        lines.append("[modules]")
        for name, opts in modules.items():
            lines.append(f"{name} = {_toml_value(opts)}")
    if hooks:
        lines.append("[hooks]")
        for name, opts in hooks.items():
            lines.append(f"{name} = {_toml_value(opts)}")
    path.write_text("\n".join(lines) + "\n" + extra)


DEFAULT_TEST_MODULES: dict[str, dict[str, Any]] = {
    "roster": {},
    "presence": {},
    "disco": {},
    "ping": {},
    "version": {},
    "time": {},
    "last": {},
    "register": {"allow_registration": True},
    "muc": {},
}


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one server; dropped afterwards."""
    try:
        import asyncpg  # noqa: F401
    except ImportError:  # pragma: no cover
        service_unavailable("asyncpg is not installed")
    name = f"xmppd_test_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        _run(admin(f'CREATE DATABASE "{name}"'))
    except (TimeoutError, OSError) as exc:
        service_unavailable(f"PostgreSQL not reachable at {PG_ADMIN_DSN}: {exc}")
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        _run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _run(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` to completion from synchronous code, also when that code is called
    from a test's running event loop (a test that starts a server of its own): then
    in a thread with a loop of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coro)
        return
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()


@contextmanager
def running_server(
    tmp: Path,
    *,
    backend: str = "sqlite",
    modules: dict[str, dict[str, Any]] | None = None,
    hooks: dict[str, dict[str, Any]] | None = None,
    extra: str = "",
    domain: str = "localhost",
    components: dict[str, str] | None = None,
    admins: list[str] | None = None,
    auth: dict[str, Any] | None = None,
    http: bool = False,
    http_tls: bool = False,
    server: dict[str, Any] | None = None,
) -> Iterator[XmppdServer]:
    """Start ``python -m xmppd run`` and stop it (SIGTERM, then kill) afterwards.

    ``components`` (domain → secret) adds a loopback XEP-0114 listener and those
    external components (``XmppdServer.component_port``); ``admins``, the host's
    administrators (bare JIDs); ``server``, extra ``[server]`` options (``log_level``
    is ``debug`` unless given)."""
    tmp.mkdir(parents=True, exist_ok=True)
    if SESSION_REGISTRY == "cluster" and not components and not http_tls:
        # The suite's cluster pass: three nodes, each on a loopback address of its own
        # (127.0.0.1-3), behind a round-robin front, so the two parties of a test land
        # on different nodes.
        from tests.support.cluster import running_cluster

        with running_cluster(
            tmp,
            nodes=CLUSTER_NODES,
            own_addresses=True,
            modules=modules,
            hooks=hooks,
            extra=extra,
            domain=domain,
            admins=admins,
            auth=auth,
            http=http,
            server=server,
        ) as cluster:
            yield cluster.front
        return
    with _storage(tmp, backend) as url:
        data_dir = tmp / "data"
        config_path = tmp / "xmppd.toml"
        log_path = tmp / "xmppd.log"
        for attempt in range(3):
            # Fresh ports on each attempt: a port found free can be taken by someone else
            # before the server binds it.
            p1, p2 = free_port(), free_port()
            p3 = free_port() if components else None
            p4 = free_port() if http or http_tls else None
            write_config(
                config_path,
                data_dir=data_dir,
                storage_url=url,
                starttls_port=p1,
                direct_tls_port=p2,
                domain=domain,
                modules=DEFAULT_TEST_MODULES if modules is None else modules,
                hooks=hooks,
                extra=extra,
                component_port=p3,
                components=components,
                admins=admins,
                auth=auth,
                http_port=p4,
                http_tls=http_tls,
                server=server,
            )
            log = log_path.open("ab")
            proc = subprocess.Popen(
                [sys.executable, "-m", "xmppd", "--config", str(config_path), "run"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                ports = tuple(p for p in (p1, p2, p3, p4) if p is not None)
                _wait_listening(proc, ports, log_path)
                break
            except BaseException as exc:
                # Also on a test timeout or an interrupt: no server is left running.
                _stop(proc)
                log.close()
                if attempt == 2 or not isinstance(exc, RuntimeError):
                    raise
        server = XmppdServer(
            proc, data_dir, config_path, p1, p2, domain, backend, log_path, url, p3, p4, http_tls
        )
        try:
            yield server
        finally:
            _stop(server.process)
            log.close()


def restart(server: XmppdServer) -> None:
    """Stop the server (SIGTERM: a clean shutdown) and start it again with the same
    configuration, ports and database; returns once it listens again.

    The front of a test cluster (the cluster pass): restarting "the server" means
    every node, all stopped before any starts (what a test of a restart checks is
    what the database keeps, not what another running node holds in memory)."""
    if server.cluster_nodes is not None:
        from tests.support.cluster import start_node, wait_live

        for node in server.cluster_nodes:
            _stop(node.process)
        logged = {node.log_path: len(node.log_text()) for node in server.cluster_nodes}
        for node in server.cluster_nodes:
            start_node(node)
        wait_live(server.cluster_nodes, since=logged)
        server.process = server.cluster_nodes[0].process
        return
    _stop(server.process)
    with server.log_path.open("ab") as log:
        server.process = subprocess.Popen(
            [sys.executable, "-m", "xmppd", "--config", str(server.config_path), "run"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    ports = (server.starttls_port, server.direct_tls_port)
    if server.component_port is not None:
        ports += (server.component_port,)
    _wait_listening(server.process, ports, server.log_path)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def _storage(tmp: Path, backend: str) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp / 'xmppd.sqlite3'}"
    elif backend == "postgresql":
        with postgres_database() as url:
            yield url
    else:
        raise ValueError(backend)


def _wait_listening(
    proc: subprocess.Popen[bytes], ports: tuple[int, ...], log: Path, address: str = "127.0.0.1"
) -> None:
    deadline = time.monotonic() + 60
    pending = set(ports)
    while pending:
        if proc.poll() is not None:
            raise RuntimeError(f"xmppd exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"xmppd did not start listening:\n{log.read_text()[-4000:]}")
        for port in list(pending):
            with socket.socket() as s:
                s.settimeout(0.2)
                if s.connect_ex((address, port)) == 0:
                    pending.discard(port)
        if pending:
            time.sleep(0.05)
