"""One node of the Kubernetes example, run as its pod runs it: the ConfigMap's
xmppd.toml (only ports, paths and the database's address changed), found through
``XMPPD_CONFIG`` by a bare ``xmppd run``, the PostgreSQL password only in
``PGPASSWORD``, ``server.key`` a read-only file in the data directory; and the
manifest's own probe commands, which must mean what docs/admin-guide.md says:
readiness fails while the database is down and comes back with it, liveness holds
throughout. The database is the test's own PostgreSQL, with password authentication,
so a wrong PGPASSWORD keeps the node from starting."""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.deploy_examples import (
    configmap_toml,
    create_xmppd_database,
    lost_its_port,
    xmppd_container,
)
from tests.support.pgcluster import PrivatePostgres, private_postgres
from tests.support.server import free_port
from xmppd.tls import generate_self_signed

PASSWORD = "not-in-the-config-" + secrets.token_hex(4)
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def password_postgres(pg: PrivatePostgres) -> None:
    """Role and database ``xmppd`` as the manifests expect, then TCP logins by
    password only (SCRAM), as in the postgres image."""
    create_xmppd_database(pg, PASSWORD)
    (pg.data / "pg_hba.conf").write_text(
        "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
    )
    pg.stop()
    pg.start()


def node_config(tmp_path: Path, pg_port: int) -> tuple[Path, int]:
    """The ConfigMap's xmppd.toml for a node on this machine, and its probe port."""
    text = configmap_toml()
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    generate_self_signed("example.org", cert, key)
    data = tmp_path / "data"
    data.mkdir()
    # server.key as the Secret mounts it: 64 hex digits, read-only
    (data / "server.key").write_text(secrets.token_hex(32) + "\n")
    (data / "server.key").chmod(0o440)
    replacements = {
        '"/var/lib/xmppd"': f'"{data}"',
        '"/etc/xmppd-tls/tls.crt"': f'"{cert}"',
        '"/etc/xmppd-tls/tls.key"': f'"{key}"',
        "@postgres:5432/": f"@127.0.0.1:{pg_port}/",
        '"redis://redis:6379/0"': '"redis://127.0.0.1:6379/0"',
    }
    for old, new in replacements.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    # The node listens on every address: ports free on all of them.
    ports = {int(p): free_port("0.0.0.0") for p in re.findall(r"^port = (\d+)$", text, re.M)}
    text = re.sub(r"^port = (\d+)$", lambda m: f"port = {ports[int(m.group(1))]}", text, flags=re.M)
    assert "key_prefix" not in text
    text = text.replace(
        'redis_mode = "single"\n', f'redis_mode = "single"\nkey_prefix = "t{free_port()}"\n'
    )
    config = tmp_path / "xmppd.toml"
    config.write_text(text)
    return config, ports[5280]


def probe(kind: str, port: int) -> int:
    """Run the manifest's probe command (its ``python`` is this one) against ``port``."""
    command = list(xmppd_container()[kind]["exec"]["command"])
    assert command[0] == "python"
    assert command[-1].count("127.0.0.1:5280/") == 1
    command = [sys.executable, *command[1:-1], command[-1].replace(":5280/", f":{port}/")]
    return subprocess.run(command, capture_output=True, timeout=15, check=False).returncode


def ready_or_exited(proc: subprocess.Popen[bytes], port: int) -> bool:
    return proc.poll() is not None or probe("readinessProbe", port) == 0


def wait_for(what: str, check: Callable[[], object], log: Path, timeout: float = 45) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)


@contextmanager
def node(config: Path, log: Path, pgpassword: str) -> Iterator[subprocess.Popen[bytes]]:
    """``xmppd run`` as the container runs it: the config from XMPPD_CONFIG."""
    env = {**os.environ, "XMPPD_CONFIG": str(config), "PGPASSWORD": pgpassword}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "xmppd", "run"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
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


@pytest.mark.timeout(240)
def test_a_node_of_the_example_is_probed_as_the_admin_guide_says(tmp_path: Path) -> None:
    with private_postgres() as pg:
        password_postgres(pg)
        for attempt in range(3):
            config, port = node_config(tmp_path, pg.port)
            log = tmp_path / f"xmppd-{attempt}.log"
            with node(config, log, PASSWORD) as proc:
                wait_for("ready", functools.partial(ready_or_exited, proc, port), log)
                if lost_its_port(proc, log):
                    continue
                assert proc.poll() is None, log.read_text()[-3000:]
                assert all(probe(kind, port) == 0 for kind in PROBES)
                # the node is in the cluster of the ConfigMap's redis_url (pointed here)
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready") as answer:
                    parts = {p["name"]: p["ready"] for p in json.load(answer)["parts"]}
                assert parts["cluster"] is True, parts
                pg.stop()
                not_ready = functools.partial(probe, "readinessProbe", port)
                wait_for("not ready without its database", not_ready, log)
                assert probe("livenessProbe", port) == 0  # alive: a restart would not help
                assert proc.poll() is None
                pg.start()
                wait_for("ready again", functools.partial(ready_or_exited, proc, port), log)
                assert proc.poll() is None, log.read_text()[-3000:]
                assert probe("livenessProbe", port) == 0
            break
        assert proc.returncode == 0, log.read_text()[-3000:]

        # The password is really the one from PGPASSWORD: a wrong one, no start.
        wrong = tmp_path / "wrong.log"
        with node(config, wrong, "wrong-" + PASSWORD) as proc:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pytest.fail("started with a wrong PGPASSWORD:\n" + wrong.read_text()[-3000:])
            assert proc.returncode != 0
            assert 'password authentication failed for user "xmppd"' in wrong.read_text()
            assert probe("livenessProbe", port) != 0
