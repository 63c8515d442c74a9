"""The ``cluster`` benchmark (``python -m bench cluster``), tiny: two real xmppd nodes on a
fresh PostgreSQL database and a ``redis-server`` started by the bench on a free port;
idle sessions on node B show up in Redis (bytes and keys per session), and pairs chat on
one node and across nodes with nothing lost, the cross-node messages going through Redis
(one XADD to the recipient node's inbox per message) and costing both nodes CPU."""

from __future__ import annotations

import shutil
from pathlib import Path

from bench import pg
from bench.cluster import ClusterSettings, run_cluster
from bench.scenarios import Settings
from bench.servers.xmppd import XmppdServer
from tests.support.server import free_port, service_unavailable


def test_tiny_cluster_run(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        service_unavailable("redis-server is not installed")
    try:
        pg.create_database(probe := pg.new_name("probe"))
        pg.drop_database(probe)
    except pg.PostgresUnavailable as exc:
        service_unavailable(str(exc))
    server = XmppdServer(tmp_path, free_port())  # gives the run's directory and name only
    cs = ClusterSettings(pairs=10, rates=[200], step_seconds=1.0, repeats=1, idle_sessions=100)
    logged: list[str] = []
    res = run_cluster(server, Settings(), cs, logged.append)

    assert res["scenario"] == "cluster" and res["nodes_alive_after"]
    memory = res["memory"]
    assert memory["idle_sessions_ok"] == 100
    # Each session is a hash field of its account's key (one key per account) plus an
    # entry in the node's session set: hundreds of bytes to a few KiB each.
    assert 0.9 <= memory["redis_keys_per_session"] <= 1.1
    assert 100 < memory["redis_bytes_per_session"] < 20_000
    assert 0 < memory["redis_session_log_bytes_per_session"] < memory["redis_bytes_per_session"]
    assert memory["node_b_kb_per_local_session"] is not None

    same = res["placements"]["same-node"]
    cross = res["placements"]["cross-node"]
    for placement in (same, cross):
        assert placement["sessions_ok"] == 20
        row = placement["by_rate"]["200"]
        assert row["sent"] == 200 and row["lost"] == 0
        assert 0 < row["p50_ms"] <= row["p99_ms"] < 5000
        assert row["cpu_us_per_msg"] > 0
        (step,) = placement["steps"]
        assert step["misrouted"] == 0 and step["error_stanzas"] == 0
    # Same node: node B carries none of it; Redis sees only background (well under one
    # command per message).  Across nodes: each message is appended to B's inbox.
    assert same["by_rate"]["200"]["redis_commands_per_msg"] < 0.5
    (cross_step,) = cross["steps"]
    assert cross_step["redis_commands_by_name_per_msg"].get("xadd", 0) >= 0.99
    assert cross["by_rate"]["200"]["redis_net_in_bytes_per_msg"] > 100
    assert cross["by_rate"]["200"]["cpu_us_per_msg_node_b"] > 0
    assert set(res["cross_node_overhead"]) == {"200"}
    assert any("idle sessions on node B" in line for line in logged)
