"""The compose cluster of config/compose.cluster.yaml, run without Docker: its
``xmppd-init`` command makes the shared secret and certificate, three nodes run its
xmppd.toml with their own command (which installs the shared ``server.key``), each
named after its service's ``hostname``, on the test's own PostgreSQL and the shared
Redis (a key prefix of its own), and its HAProxy configuration runs in front of them.
Only addresses, ports and paths are changed. Every node passes its compose health
check (ready, the cluster part included), HAProxy spreads connections over the three
nodes, and all three present the one shared certificate."""

from __future__ import annotations

import functools
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import REDIS_URL, delete_prefix, redis_or_skip
from tests.support.deploy_examples import (
    compose,
    compose_nodes,
    create_xmppd_database,
    lost_its_port,
)
from tests.support.pgcluster import private_postgres
from tests.support.server import free_port

SHARED = "/var/lib/xmppd-shared"
DATA = "/var/lib/xmppd"
STREAM = (
    "<?xml version='1.0'?><stream:stream to='example.org' xmlns='jabber:client' "
    "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
)


@contextmanager
def process(
    command: list[str], log: Path, env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_for(what: str, check: Callable[[], bool], logs: list[Path], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(what + "\n" + "\n".join(p.read_text()[-2000:] for p in logs))
        time.sleep(0.5)


def node_config(
    name: str, shared: Path, data: Path, pg_port: int, prefix: str
) -> tuple[str, dict[int, int]]:
    """The compose xmppd.toml for node ``name`` on this machine, and its port map."""
    text = compose()["configs"]["xmppd.toml"]["content"]
    for old, new in {
        f'"{DATA}"': f'"{data}"',
        "@db:5432/": f"@127.0.0.1:{pg_port}/",
        '"redis://redis:6379/0"': f'"{REDIS_URL}"',
        'redis_mode = "single"\n': f'redis_mode = "single"\nkey_prefix = "{prefix}"\nnode = "{name}"\n',
    }.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    text = text.replace(f'"{SHARED}/', f'"{shared}/')
    assert SHARED not in text
    # The nodes listen on every address: ports free on all of them.
    ports = {int(p): free_port("0.0.0.0") for p in re.findall(r"^port = (\d+)$", text, re.M)}
    text = re.sub(r"^port = (\d+)$", lambda m: f"port = {ports[int(m.group(1))]}", text, flags=re.M)
    return text, ports


def up(proc: subprocess.Popen[bytes], node: dict[str, object], http_port: int) -> bool:
    """The node passes its health check, or has exited."""
    return proc.poll() is not None or healthy(node, http_port)


def healthy(node: dict[str, object], http_port: int) -> bool:
    """The service's compose health check, run here against the node's HTTP port."""
    test = list(node["healthcheck"]["test"])
    assert test[:2] == ["CMD", "python"]
    script = test[-1]
    assert script.count("127.0.0.1:5280/") == 1
    command = [sys.executable, *test[2:-1], script.replace(":5280/", f":{http_port}/")]
    return subprocess.run(command, capture_output=True, timeout=15, check=False).returncode == 0


def haproxy_config(ports: dict[str, dict[int, int]]) -> tuple[str, dict[int, int]]:
    """HAProxy's configuration with the nodes' addresses and ports of this machine,
    and the front's ports (compose port → here)."""
    text = compose()["configs"]["haproxy.cfg"]["content"]
    front = {int(p): free_port() for p in re.findall(r"^\s+bind :(\d+)$", text, re.M)}
    text = re.sub(
        r"^(\s+)bind :(\d+)$",
        lambda m: f"{m.group(1)}bind 127.0.0.1:{front[int(m.group(2))]}",
        text,
        flags=re.M,
    )
    text = re.sub(
        r"^(\s+server (\S+)) (\S+):(\d+)$",
        lambda m: f"{m.group(1)} 127.0.0.1:{ports[m.group(3)][int(m.group(4))]}",
        text,
        flags=re.M,
    )
    return text, front


def certificate(port: int) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname="example.org") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


@pytest.mark.timeout(300)
def test_the_compose_cluster_runs_behind_its_haproxy(tmp_path: Path) -> None:
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (Debian package haproxy)")
    redis_or_skip()
    nodes = compose_nodes()
    prefix = f"compose-{uuid.uuid4().hex[:8]}"
    password = secrets.token_hex(8)
    shared = tmp_path / "shared"
    shared.mkdir()
    init = compose()["services"]["xmppd-init"]["command"]
    subprocess.run(
        [sys.executable, "-c", init[-1].replace(f'"{SHARED}"', f'"{shared}"')],
        check=True,
        timeout=60,
    )
    with private_postgres() as pg, ExitStack() as stack:
        stack.callback(delete_prefix, REDIS_URL, prefix)
        create_xmppd_database(pg, password)
        ports: dict[str, dict[int, int]] = {}
        logs: list[Path] = []
        procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        """Each service's node as last started, and its log."""

        def start(service: str, node: dict[str, Any], attempt: int) -> None:
            """Node ``service`` on fresh ports (its config and command as compose has
            them)."""
            name = str(node["hostname"])
            data = tmp_path / service
            data.mkdir(exist_ok=True)
            text, ports[name] = node_config(name, shared, data, pg.port, prefix)
            (tmp_path / f"{service}.toml").write_text(text)
            command = list(node["command"])
            script = command[-1].replace(f"{SHARED}/", f"{shared}/").replace(f"{DATA}/", f"{data}/")
            assert script.endswith("exec xmppd run")
            command[-1] = script.removesuffix("xmppd run") + f"{sys.executable} -m xmppd run"
            env = {
                **os.environ,
                "XMPPD_CONFIG": str(tmp_path / f"{service}.toml"),
                "PGPASSWORD": password,
            }
            log = tmp_path / f"{service}-{attempt}.log"
            logs.append(log)
            procs[service] = (stack.enter_context(process(command, log, env)), log)

        for service, node in nodes.items():
            start(service, node, 0)
        for service, node in nodes.items():
            # A port found free can be taken by another test before the node binds it
            # (the suite runs in parallel): then the node starts again on other ports.
            for attempt in range(1, 4):
                proc, log = procs[service]
                port = ports[str(node["hostname"])][5280]
                wait_for(f"{service} healthy", functools.partial(up, proc, node, port), logs)
                if not lost_its_port(proc, log):
                    break
                start(service, node, attempt)
            port = ports[str(node["hostname"])][5280]
            wait_for(f"{service} healthy", functools.partial(healthy, node, port), logs)
        # every node uses the shared secret
        key = (shared / "server.key").read_bytes()
        assert all((tmp_path / s / "server.key").read_bytes() == key for s in nodes)

        config, front = haproxy_config(ports)
        (tmp_path / "haproxy.cfg").write_text(config)
        haproxy_log = tmp_path / "haproxy.log"
        logs.append(haproxy_log)
        stack.enter_context(
            process(
                ["haproxy", "-db", "-f", str(tmp_path / "haproxy.cfg")],
                haproxy_log,
                dict(os.environ),
            )
        )

        def front_open() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", front[5222])) == 0

        wait_for("haproxy listening", front_open, logs, timeout=20)
        # three connections open at once: least-connections gives one to each node. On a
        # busy machine a health check can time out and take a node out for a moment:
        # then try again (a few rounds), and count the nodes any round reached.
        wanted = {str(n["hostname"]) for n in nodes.values()}
        used: set[str] = set()
        deadline = time.monotonic() + 30
        while used != wanted and time.monotonic() < deadline:
            before = haproxy_log.read_text().count(" c2s c2s/")
            with ExitStack() as conns:
                for _ in nodes:
                    sock = conns.enter_context(
                        socket.create_connection(("127.0.0.1", front[5222]), timeout=10)
                    )
                    sock.sendall(STREAM.encode())
                    got = b""
                    while b"</stream:features>" not in got:
                        chunk = sock.recv(4096)
                        assert chunk, got
                        got += chunk
                    assert b"urn:ietf:params:xml:ns:xmpp-tls" in got

            def logged(before: int = before) -> bool:
                return haproxy_log.read_text().count(" c2s c2s/") >= before + 3

            wait_for("haproxy logged the connections", logged, logs, timeout=10)
            used |= set(re.findall(r" c2s c2s/(\S+) ", haproxy_log.read_text()))
            if used != wanted:
                time.sleep(2)
        assert used == wanted
        # direct TLS through the front: the same certificate, whichever node answers
        assert len({certificate(front[5223]) for _ in range(6)}) == 1
        # and HTTP (BOSH, WebSocket) reaches a node
        with socket.create_connection(("127.0.0.1", front[5280]), timeout=10) as sock:
            sock.sendall(
                b"GET /health/live HTTP/1.1\r\nHost: example.org\r\nConnection: close\r\n\r\n"
            )
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
