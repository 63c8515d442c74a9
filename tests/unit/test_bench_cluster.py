"""The ``cluster`` benchmark's bookkeeping (``bench/cluster.py``): Redis ``INFO`` read into
commands, bytes, memory and keys; per-message costs between two samples (the bench's
own ``INFO`` calls left out); medians over repeated steps; the cross-node overhead; the
command line (``--quick``, overrides, xmppd only) and the report's table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.__main__ import XMPPD_ONLY, Runner, cluster_settings_from, parse_args
from bench.cluster import (
    ClusterNode,
    ClusterSettings,
    RedisSample,
    command_calls,
    key_count,
    overhead,
    step_costs,
    summarise,
)
from bench.report import cluster_report


def info(
    calls: dict[str, int], net_in: int, net_out: int, memory: int, keys: int
) -> dict[str, Any]:
    """What redis-py's ``info("all")`` returns, trimmed to the fields the bench reads."""
    out: dict[str, Any] = {
        "total_net_input_bytes": net_in,
        "total_net_output_bytes": net_out,
        "used_memory": memory,
        "db0": {"keys": keys, "expires": 1, "avg_ttl": 0},
        "redis_version": "7.0.15",
    }
    for name, n in calls.items():
        out[f"cmdstat_{name}"] = {"calls": n, "usec": 3 * n, "usec_per_call": 3.0}
    return out


def test_info_gives_calls_per_command_and_keys_of_every_database() -> None:
    raw = info({"xadd": 10, "xread": 4}, 1, 2, 3, 7)
    raw["db3"] = {"keys": 5, "expires": 0}
    assert command_calls(raw) == {"xadd": 10, "xread": 4}
    assert key_count(raw) == 12
    sample = RedisSample.of(raw)
    assert (sample.net_in, sample.net_out, sample.used_memory, sample.keys) == (1, 2, 3, 12)


def test_costs_per_message_leave_out_the_bench_own_info_calls() -> None:
    before = {
        "t": 10.0,
        "a": 1.0,
        "b": 2.0,
        "redis": 0.5,
        "info": RedisSample.of(info({"xadd": 100, "info": 5}, 1000, 2000, 0, 0)),
    }
    after = {
        "t": 12.5,
        "a": 1.2,
        "b": 2.3,
        "redis": 0.55,
        "info": RedisSample.of(
            info({"xadd": 1100, "xdel": 500, "xread": 520, "info": 6}, 401_000, 322_000, 0, 0)
        ),
    }
    costs = step_costs(before, after, 1000)
    assert costs["measured_seconds"] == 2.5
    assert costs["cpu_us_per_msg"] == 500.0  # (0.2 + 0.3) s / 1000 messages
    assert costs["cpu_us_per_msg_node_a"] == 200.0
    assert costs["cpu_us_per_msg_node_b"] == 300.0
    assert costs["cpu_us_per_msg_redis"] == 50.0
    assert costs["redis_commands"] == 2020
    assert costs["redis_commands_per_msg"] == 2.02
    assert costs["redis_commands_by_name_per_msg"] == {"xadd": 1.0, "xdel": 0.5, "xread": 0.52}
    assert costs["redis_net_in_bytes_per_msg"] == 400.0
    assert costs["redis_net_out_bytes_per_msg"] == 320.0
    assert step_costs(before, after, 0)["cpu_us_per_msg"] is None  # nothing delivered


def step(rate: int, cpu: float, p99: float, lost: int = 0) -> dict[str, Any]:
    return {
        "rate": rate,
        "sent": rate,
        "lost": lost,
        "p50_ms": p99 / 4,
        "p99_ms": p99,
        "cpu_us_per_msg": cpu,
        "cpu_us_per_msg_node_a": cpu / 2,
        "cpu_us_per_msg_node_b": cpu / 2,
        "cpu_us_per_msg_redis": None,
        "redis_commands_per_msg": 2.0,
        "redis_net_in_bytes_per_msg": 400.0,
        "redis_net_out_bytes_per_msg": 320.0,
        "core0_busy_pct": 50.0,
    }


def test_medians_per_rate_and_the_cross_node_overhead() -> None:
    same = summarise([step(2000, 100.0, 1.0), step(2000, 140.0, 9.0), step(2000, 120.0, 2.0)])
    assert same["2000"]["cpu_us_per_msg"] == 120.0
    assert same["2000"]["p99_ms"] == 2.0
    assert same["2000"]["cpu_us_per_msg_redis"] is None  # no sample: no median
    assert same["2000"]["sent"] == 6000 and same["2000"]["steps"] == 3
    cross = summarise([step(2000, 300.0, 3.0, lost=1), step(2000, 260.0, 5.0)])
    assert cross["2000"]["cpu_us_per_msg"] == 280.0  # even count: mean of the middle two
    assert cross["2000"]["lost"] == 1
    placements = {"same-node": {"by_rate": same}, "cross-node": {"by_rate": cross}}
    assert overhead(placements) == {"2000": {"extra_cpu_us_per_msg": 160.0, "cpu_ratio": 2.33}}


def test_command_line_quick_and_overrides() -> None:
    quick = cluster_settings_from(parse_args(["cluster", "--quick"]))
    default = ClusterSettings()
    assert quick.pairs < default.pairs and quick.step_seconds < default.step_seconds
    assert quick.idle_sessions < default.idle_sessions
    args = parse_args(
        ["cluster", "--quick", "--cluster-rates", "1000,3e3", "--cluster-idle-sessions", "50"]
    )
    c = cluster_settings_from(args)
    assert c.rates == [1000, 3000] and c.idle_sessions == 50 and c.pairs == quick.pairs


def test_only_xmppd_runs_the_cluster(tmp_path: Path) -> None:
    runner = Runner(parse_args(["cluster", "--out", str(tmp_path)]))
    try:
        assert "cluster" in XMPPD_ONLY
        assert runner._scenarios_for("xmppd") == ["cluster"]
        assert runner._scenarios_for("prosody") == []
        assert runner._scenarios_for("ejabberd") == []
    finally:
        runner.workdir.rmdir()


def test_a_node_configuration_has_the_cluster_section(tmp_path: Path) -> None:
    node = ClusterNode(tmp_path, "node-a", "redis://127.0.0.1:7777/0", "xmppd_bench_cluster_x")
    node.configure()
    text = node.config_path.read_text()
    assert 'url = "postgresql+asyncpg://postgres@127.0.0.1:5432/xmppd_bench_cluster_x"' in text
    assert text.endswith(
        '[cluster]\nredis_url = "redis://127.0.0.1:7777/0"\nkey_prefix = "bench"\nnode = "node-a"\n'
    )
    import tomllib

    assert tomllib.loads(text)["cluster"]["node"] == "node-a"


def test_the_report_has_one_row_per_placement_and_rate() -> None:
    same = summarise([step(2000, 120.0, 2.0)])
    cross = summarise([step(2000, 280.0, 4.0)])
    placements = {
        "same-node": {"by_rate": same, "redis_idle_commands_per_s": 4.0},
        "cross-node": {"by_rate": cross, "redis_idle_commands_per_s": 11.0},
    }
    result = {
        "scenario": "cluster",
        "server": "xmppd",
        "pairs": 10,
        "step_seconds": 1.0,
        "repeats": 1,
        "placement_of_processes": "nodes A and B and Redis on core 0",
        "redis": "Redis server v=7.0.15",
        "placements": placements,
        "cross_node_overhead": overhead(placements),
        "memory": {
            "idle_sessions_ok": 100,
            "redis_bytes_per_session": 1787.0,
            "redis_session_log_bytes_per_session": 300.0,
            "redis_keys_per_session": 1.01,
            "node_b_kb_per_local_session": 30.5,
            "node_a_kb_per_remote_session": 1.25,
            "node_a_cpu_us_per_remote_login": 80.0,
        },
    }
    text = cluster_report([result, {"scenario": "cluster", "server": "xmppd", "error": "boom"}])
    lines = text.splitlines()
    assert any(line.startswith("same-node ") and "120.0" in line for line in lines)
    assert any(line.startswith("cross-node") and "280.0" in line for line in lines)
    assert "cross-node overhead at 2,000 msg/s: +160.0 µs/msg (2.33x)" in text
    assert (
        "Redis 1,787 B/session (session log 300 B of it)" in text
        and "node A (its view) 1.250 KiB and 80.0 µs CPU" in text
    )
    assert "xmppd: boom" in text
