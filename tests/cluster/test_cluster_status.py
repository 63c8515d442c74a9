"""``xmppd cluster status``: the nodes of a running two-node cluster, their sessions and
heartbeat age, read from Redis by a separate process with a node's configuration."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clients import Slix, register_account
from tests.support.cluster import ClusterNodes, running_cluster

pytestmark = pytest.mark.timeout(180)

PW = "s3cret-pw"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterNodes]:
    with running_cluster(tmp_path_factory.mktemp("status"), nodes=2) as nodes:
        yield nodes


async def test_status_lists_nodes_sessions_and_heartbeats(cluster: ClusterNodes) -> None:
    node1, node2 = cluster.nodes
    await register_account(node1, "st1", PW)
    await register_account(node1, "st2", PW)
    async with (
        Slix(node1, "st1@localhost", PW),
        Slix(node1, "st2@localhost", PW),
    ):
        done = node2.cli("cluster", "status", "--json")
        assert done.returncode == 0, done.stderr
        nodes = {n["node"]: n for n in json.loads(done.stdout)["nodes"]}
        assert set(nodes) == {"node1", "node2"}
        assert nodes["node1"]["sessions"] == 2
        assert nodes["node2"]["sessions"] == 0
        for name, node in nodes.items():
            assert node["live"], name
            assert 0 <= node["heartbeat_age"] < 3.0  # node_timeout of the test cluster
        assert nodes["node1"]["pid"] == node1.process.pid
        assert nodes["node2"]["pid"] == node2.process.pid

        table = node1.cli("cluster", "status")
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert lines[0] == "2 live nodes, 2 sessions"
        assert lines[1].split() == ["NODE", "STATE", "SESSIONS", "HEARTBEAT", "PID", "HOST", "UP"]
        rows = {line.split()[0]: line.split() for line in lines[2:]}
        assert rows["node1"][1:3] == ["live", "2"]
        assert rows["node2"][1:3] == ["live", "0"]


def test_status_without_a_cluster_or_redis(tmp_path: Path) -> None:
    import subprocess
    import sys

    def status(text: str) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "x.toml"
        path.write_text(text)
        return subprocess.run(
            [sys.executable, "-m", "xmppd", "--config", str(path), "cluster", "status"],
            capture_output=True,
            text=True,
            timeout=60,
        )

    alone = status(f'[server]\ndata_dir = "{tmp_path}"\n')
    assert alone.returncode == 2
    assert "[cluster] redis_url is not set" in alone.stderr
    # Port 1: nothing listens there.
    down = status(
        f'[server]\ndata_dir = "{tmp_path}"\n[cluster]\nredis_url = "redis://127.0.0.1:1/0"\n'
    )
    assert down.returncode == 1
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in down.stderr
