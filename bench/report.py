"""Result output: JSON lines, comparison tables with xmppd ratios, optional PNG chart."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.scenarios import REFERENCE_RATE

Result = dict[str, Any]
COMPARED = ("xmppd", "prosody", "ejabberd")


def emit_json(result: Result, sink: Path | None) -> None:
    line = json.dumps(result, separators=(",", ":"), sort_keys=False)
    print(line, flush=True)
    if sink is not None:
        with sink.open("a") as fh:
            fh.write(line + "\n")


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _ratio(a: Any, b: Any) -> str:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not b:
        return "n/a"
    return f"{a / b:.2f}x"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for j, row in enumerate([header, *rows]):
        cells = [
            str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i])
            for i, c in enumerate(row)
        ]
        lines.append("  ".join(cells))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _comparison(
    by_server: dict[str, Result], metrics: Sequence[tuple[str, Callable[[Result], Any], int]]
) -> str:
    servers = [s for s in COMPARED if s in by_server]
    header = ["metric", *servers, "xmppd/prosody", "xmppd/ejabberd"]
    rows = []
    for label, getter, digits in metrics:
        values = {s: getter(by_server[s]) for s in servers}
        x = values.get("xmppd")
        rows.append(
            [
                label,
                *(_num(values[s], digits) for s in servers),
                _ratio(x, values.get("prosody")),
                _ratio(x, values.get("ejabberd")),
            ]
        )
    return _table(header, rows)


def _bg(result: Result) -> Any:
    return (result.get("background_busy_pct") or {}).get("core0")


def _error_lines(results: Sequence[Result]) -> list[str]:
    return [f"  {r['server']}: {r['error']}" for r in results if "error" in r]


def sessions_report(
    results: Sequence[Result], ceiling: Result | None, n: int, tls: bool = False
) -> str:
    ok = {r["server"]: r for r in results if "error" not in r and r["server"] in COMPARED}
    if tls:
        out = [f"== tls: {n} sessions over STARTTLS, SCRAM-SHA-1, 200 logins in flight =="]
    else:
        out = [f"== sessions: {n} sessions, PLAIN without TLS, 200 logins in flight =="]
    out.append(_ceiling_line(ceiling, "sessions"))
    metrics: list[tuple[str, Callable[[Result], Any], int]] = [
        ("sessions established", lambda r: r["sessions_ok"], 0),
        ("RSS before (MiB)", lambda r: r["rss_before_kb"] / 1024, 1),
        ("RSS after (MiB)", lambda r: r["rss_after_kb"] / 1024, 1),
        ("memory per session (KiB)", lambda r: r["kb_per_session"], 1),
    ]
    metrics.append(
        ("memory per idle session, 12 s later (KiB)", lambda r: r["kb_per_idle_session"], 1)
    )
    metrics += [
        ("login rate (logins/s)", lambda r: r["login_rate"], 0),
        ("login p99 (ms)", lambda r: r["login_p99_ms"], 1),
        ("server CPU during logins (%)", lambda r: r["server_cpu_pct"], 0),
        ("generator CPU during logins (%)", lambda r: r["generator_cpu_pct"], 0),
        ("others' load before, core0 (%)", _bg, 0),
    ]
    if ok:
        out.append(_comparison(ok, metrics))
    if tls:
        for name, r in ok.items():
            out.append(f"  {name}: {', '.join(r.get('tls') or ['?'])}")
    out.extend(_error_lines(results))
    return "\n".join(out)


def chat_report(results: Sequence[Result], ceiling: Result | None, pairs: int) -> str:
    ok = {r["server"]: r for r in results if "error" not in r and r["server"] in COMPARED}
    out = [f"== chat: {pairs} online pairs, 1:1 messages, fixed-rate sweep =="]
    out.append(_ceiling_line(ceiling, "chat"))
    if ok:
        out.append(_comparison(ok, _chat_metrics(REFERENCE_RATE)))
    for r in [*results, *([ceiling] if ceiling else [])]:
        if "error" in r or "steps" not in r:
            continue
        echo = r["server"] == "echo"
        out.append(f"\n{r['server']} steps{' (generator ceiling)' if echo else ''}:")
        out.append(steps_table(r["steps"], echo=echo))
    out.extend(_error_lines(results))
    return "\n".join(out)


def _at(r: Result, rate: int, field: str) -> Any:
    step = next((s for s in r.get("steps", []) if s["rate"] == rate), None)
    return step.get(field) if step else None


def _step_field(rate: int, field: str) -> Callable[[Result], Any]:
    return lambda r: _at(r, rate, field)


def _max_rate(r: Result) -> Any:
    """The max sustainable rate, or "<R" when even the first rate R of the sweep failed."""
    best = r["max_sustainable_rate"]
    steps = r.get("steps") or []
    return best if best or not steps else f"<{steps[0]['rate']:,}"


def _chat_metrics(ref: int) -> list[tuple[str, Callable[[Result], Any], int]]:
    return [
        ("max sustainable rate (msg/s)", _max_rate, 0),
        (f"p50 @ {ref:,} msg/s (ms)", lambda r: _at(r, ref, "p50_ms"), 1),
        (f"p99 @ {ref:,} msg/s (ms)", lambda r: _at(r, ref, "p99_ms"), 1),
        (f"max @ {ref:,} msg/s (ms)", lambda r: _at(r, ref, "max_ms"), 1),
        (f"lost @ {ref:,} msg/s", lambda r: _at(r, ref, "lost"), 0),
        (f"server CPU @ {ref:,} (%)", lambda r: _at(r, ref, "server_cpu_pct"), 0),
        ("others' load before, core0 (%)", _bg, 0),
    ]


def archive_report(results: Sequence[Result], ceiling: Result | None, pairs: int) -> str:
    """One comparison per database, then every sweep."""
    out = [f"== archive: {pairs} online pairs, every message archived for both parties =="]
    if ceiling is None:
        out.append("generator ceiling: that of the chat scenario (echo server; not run here)")
    else:
        out.append(_ceiling_line(ceiling, "chat") + " (the chat scenario's)")
    backends = sorted({r.get("backend", "?") for r in results})
    for backend in backends:
        of_backend = [r for r in results if r.get("backend") == backend]
        ok = {r["server"]: r for r in of_backend if "error" not in r and r["server"] in COMPARED}
        if not ok:
            continue
        ref = next(iter(ok.values()))["reference_rate"]
        metrics = _chat_metrics(ref)
        metrics[-1:-1] = [
            (f"database CPU @ {ref:,} (%)", _step_field(ref, "db_cpu_pct"), 0),
            ("archive rows per message sent (2 = all)", lambda r: r["archived_per_message"], 2),
        ]
        out.append(f"\n-- archive in {backend} --")
        out.append(_comparison(ok, metrics))
        warnings = [
            f"  {r['server']}: {r['archive_warning']}"
            for r in ok.values()
            if r.get("archive_warning")
        ]
        out.extend(warnings)
    for r in results:
        if "error" in r or "steps" not in r:
            continue
        out.append(f"\n{r['server']} [{r.get('backend')}] steps:")
        out.append(steps_table(r["steps"]))
    out.extend(
        f"  {r['server']} [{r.get('backend')}]: {r['error']}" for r in results if "error" in r
    )
    return "\n".join(out)


def presence_report(results: Sequence[Result], ceiling: Result | None, settings: Any) -> str:
    ok = {r["server"]: r for r in results if "error" not in r and r["server"] in COMPARED}
    out = [
        f"== presence: {settings.presence_users} accounts online, {settings.roster_size} "
        "mutual contacts each; accounts go offline and online again at a fixed rate =="
    ]
    if ceiling is None or "error" in ceiling:
        out.append(_ceiling_line(ceiling, "presence"))
    else:
        out.append(
            "generator ceiling (echo server fanning presence out): "
            f"{_num(ceiling.get('max_sustainable_rate'), 0)} cycles/s, "
            f"{_num(ceiling.get('delivered_per_s_at_max'), 0)} presences/s delivered"
        )
    ref = next((r["reference_rate"] for r in ok.values()), 0)
    if ok:
        out.append(
            _comparison(
                ok,
                [
                    ("max sustainable rate (cycles/s)", _max_rate, 0),
                    (
                        "presences delivered/s at that rate",
                        lambda r: r["delivered_per_s_at_max"],
                        0,
                    ),
                    (f"p50 @ {ref} cycles/s (ms)", lambda r: r["p50_at_reference_ms"], 1),
                    (f"p99 @ {ref} cycles/s (ms)", lambda r: r["p99_at_reference_ms"], 1),
                    (
                        f"server CPU @ {ref} cycles/s (%)",
                        lambda r: _at(r, ref, "server_cpu_pct"),
                        0,
                    ),
                    ("login rate with rosters (logins/s)", lambda r: r["login_rate"], 0),
                    ("others' load before, core0 (%)", _bg, 0),
                ],
            )
        )
    for r in [*results, *([ceiling] if ceiling else [])]:
        if "error" in r or "steps" not in r:
            continue
        echo = r["server"] == "echo"
        out.append(f"\n{r['server']} steps{' (generator ceiling)' if echo else ''}:")
        out.append(presence_steps_table(r["steps"]))
    out.extend(_error_lines(results))
    return "\n".join(out)


def presence_steps_table(steps: Sequence[Result]) -> str:
    header = [
        "cycles/s",
        "presences/s",
        "timed",
        "broadcast %",
        "repeats",
        "p50 ms",
        "p99 ms",
        "max ms",
        "srv cpu%",
        "gen cpu%",
        "gen lag ms",
        "pass",
    ]
    rows = [
        [
            _num(s["rate"]),
            _num(s["delivered_per_s"], 0),
            _num(s["broadcasts_timed"]),
            _num(s["broadcast_pct"], 2),
            _num(s["repeated"]),
            _num(s["p50_ms"]),
            _num(s["p99_ms"]),
            _num(s["max_ms"]),
            _num(s["server_cpu_pct"], 0),
            _num(s["generator_cpu_pct"], 0),
            _num(s["generator_max_lag_ms"]),
            "yes" if s["ok"] else "NO",
        ]
        for s in steps
    ]
    return _table(header, rows)


def archive_query_report(results: Sequence[Result], messages: int) -> str:
    """Query times per database (columns) and kind of query (rows)."""
    out = [f"== archive-query: one account with a {messages:,}-message archive, pages of 50 =="]
    ok = [r for r in results if "queries" in r]
    if ok:
        header = ["query"]
        for r in ok:
            header += [f"{r['server']} {r['backend']} median ms", "p95 ms", "results"]
        kinds = list(ok[0]["queries"])
        rows = []
        for kind in kinds:
            row = [kind]
            for r in ok:
                q = r["queries"].get(kind, {})
                row += [
                    _num(q.get("median_ms"), 2),
                    _num(q.get("p95_ms"), 2),
                    ",".join(str(c) for c in q.get("results", [])),
                ]
            rows.append(row)
        out.append(_table(header, rows))
    out.extend(
        f"  {r['server']} [{r.get('backend')}]: {r['error']}" for r in results if "error" in r
    )
    out.extend(
        f"  {r['server']} [{r.get('backend')}]: query errors {r['query_errors']}"
        for r in ok
        if r.get("query_errors")
    )
    return "\n".join(out)


def steps_table(steps: Sequence[Result], echo: bool = False) -> str:
    """Per-step table; the echo server answers the sender, so routing is not checked."""
    header = [
        "rate",
        "achieved",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "lost",
        "misrouted",
        "srv cpu%",
        "core0%",
        "gen cpu%",
        "core1%",
        "gen lag ms",
        "pass",
    ]
    rows = [
        [
            _num(s["rate"]),
            _num(s["achieved_rate"], 0),
            _num(s["p50_ms"]),
            _num(s["p90_ms"]),
            _num(s["p99_ms"]),
            _num(s["max_ms"]),
            _num(s["lost"]),
            "n/a" if echo else _num(s.get("misrouted")),
            _num(s["server_cpu_pct"], 0),
            _num(s["core0_busy_pct"], 0),
            _num(s["generator_cpu_pct"], 0),
            _num(s["core1_busy_pct"], 0),
            _num(s["generator_max_lag_ms"]),
            "yes" if s["ok"] else "NO",
        ]
        for s in steps
    ]
    return _table(header, rows)


def _ceiling_line(ceiling: Result | None, scenario: str) -> str:
    if ceiling is None:
        return "generator ceiling (echo server): not measured"
    if "error" in ceiling:
        return f"generator ceiling (echo server): failed: {ceiling['error']}"
    if scenario == "sessions":
        return (
            f"generator ceiling (echo server): {_num(ceiling.get('login_rate'), 0)} logins/s "
            f"for {ceiling.get('sessions')} sessions"
        )
    return (
        f"generator ceiling (echo server): {_num(ceiling.get('max_sustainable_rate'), 0)} msg/s "
        f"sustained (p99 < 100 ms, no loss; highest rate tried "
        f"{_num(max((s['rate'] for s in ceiling.get('steps', [])), default=None), 0)})"
    )


def sweep_chart(results: Sequence[Result], path: Path, title: str, xlabel: str) -> Path | None:
    """p50/p99 latency vs offered rate for every result with steps (an archive result is
    labelled with its database); None if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no chart)", file=sys.stderr)
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in results:
        if "error" in r or not r.get("steps"):
            continue
        rates = [s["rate"] for s in r["steps"] if s["p99_ms"] is not None]
        p99 = [s["p99_ms"] for s in r["steps"] if s["p99_ms"] is not None]
        p50 = [s["p50_ms"] for s in r["steps"] if s["p50_ms"] is not None]
        name = "echo (generator ceiling)" if r["server"] == "echo" else r["server"]
        if r.get("backend"):
            name += f" ({r['backend']})"
        (line,) = ax.plot(rates, p99, marker="o", label=f"{name} p99")
        ax.plot(
            rates,
            p50,
            marker=".",
            linestyle="--",
            color=line.get_color(),
            label=f"{name} p50",
        )
    ax.axhline(100, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("latency (ms, log)")
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def muc_report(results: Sequence[Result]) -> str:
    """One comparison per room size, then every server's sweep."""
    out = [
        "== muc: one room of N occupants; the first occupants send stamped groupchat "
        "messages, every occupant times its copy =="
    ]
    sizes = sorted({r["occupants"] for r in results})
    for n in sizes:
        ok = {
            r["server"]: r
            for r in results
            if r["occupants"] == n and "error" not in r and r["server"] in COMPARED
        }
        if not ok:
            continue
        out.append(f"\nroom of {n:,} occupants:")
        out.append(
            _comparison(
                ok,
                [
                    ("max sustainable deliveries/s (offered)", _max_rate, 0),
                    (
                        "deliveries/s received at that rate",
                        lambda r: r["delivered_per_s_at_max"],
                        0,
                    ),
                    ("p50 fan-out latency at that rate (ms)", lambda r: r["p50_at_max_ms"], 1),
                    ("p99 fan-out latency at that rate (ms)", lambda r: r["p99_at_max_ms"], 1),
                    (f"join of occupant {n:,} (ms)", lambda r: r["join_last_ms"], 1),
                    ("memory per occupant (KiB)", lambda r: r["kb_per_occupant"], 2),
                    ("room filled, flood delivered (s)", lambda r: r["flood_seconds"], 1),
                    ("others' load before, core0 (%)", _bg, 0),
                ],
            )
        )
    for r in results:
        if "error" in r or not r.get("steps"):
            continue
        out.append(f"\n{r['server']} room of {r['occupants']:,} steps:")
        out.append(muc_steps_table(r["steps"]))
    out.extend(
        f"  {r['server']} (room of {r.get('occupants')}): {r['error']}"
        for r in results
        if "error" in r
    )
    return "\n".join(out)


def muc_steps_table(steps: Sequence[Result]) -> str:
    header = [
        "deliveries/s",
        "msg/s",
        "received/s",
        "lost",
        "errors",
        "p50 ms",
        "p99 ms",
        "max ms",
        "srv cpu%",
        "gen cpu%",
        "gen lag ms",
        "pass",
    ]
    rows = [
        [
            _num(s["rate"]),
            _num(s["message_rate"]),
            _num(s["delivered_per_s"], 0),
            _num(s["lost"]),
            _num(s["errors"]),
            _num(s["p50_ms"]),
            _num(s["p99_ms"]),
            _num(s["max_ms"]),
            _num(s["server_cpu_pct"], 0),
            _num(s["generator_cpu_pct"], 0),
            _num(s["generator_max_lag_ms"]),
            "yes" if s["ok"] else "NO",
        ]
        for s in steps
    ]
    return _table(header, rows)


def storm_report(results: Sequence[Result]) -> str:
    """One comparison per (drop, mode) the servers share, then every storm's row."""
    out = [
        "== storm: every session drops at once (cut = TCP reset while the server runs, "
        "restart = server stop + start) and reconnects; lost = acknowledged by XEP-0198 "
        "to its sender, never received =="
    ]
    ok = [r for r in results if "error" not in r]
    for drop, mode in sorted({(r["drop"], r["mode"]) for r in ok}):
        by_server = {
            r["server"]: r
            for r in ok
            if r["drop"] == drop and r["mode"] == mode and r["server"] in COMPARED
        }
        if len(by_server) < 2:
            continue
        out.append(f"\n{drop}, {mode}:")
        out.append(
            _comparison(
                by_server,
                [
                    ("seconds until all back", lambda r: r["all_back_seconds"], 2),
                    ("server CPU per re-login (ms)", lambda r: r["cpu_ms_per_relogin"], 2),
                    ("p50 reconnect (ms)", lambda r: r["reconnect_p50_ms"], 0),
                    ("p99 reconnect (ms)", lambda r: r["reconnect_p99_ms"], 0),
                    ("messages lost", lambda r: r["lost"], 0),
                ],
            )
        )
    header = [
        "server",
        "drop",
        "mode",
        "back",
        "resumed",
        "TLS resumed",
        "all back s",
        "re-logins/s",
        "cpu ms/login",
        "p50 ms",
        "p99 ms",
        "sent",
        "acked",
        "lost",
        "dup",
        "late",
        "RSS MiB before/after",
    ]
    rows = []
    for r in ok:
        rss_after = r["rss_after_kb"]
        rows.append(
            [
                r["server"],
                r["drop"],
                r["mode"],
                f"{r['back']}/{r['sessions']}",
                _num(r["resumed"]),
                _num(r.get("tls_resumed")),
                _num(r["all_back_seconds"], 2),
                _num(r["relogin_rate"], 0),
                _num(r["cpu_ms_per_relogin"], 2),
                _num(r["reconnect_p50_ms"], 0),
                _num(r["reconnect_p99_ms"], 0),
                _num(r["sent"]),
                _num(r["acked"]),
                _num(r["lost"]),
                _num(r["duplicates"]),
                _num(r.get("late")),
                f"{r['rss_before_kb'] / 1024:.1f} / "
                + ("-" if rss_after is None else f"{rss_after / 1024:.1f}"),
            ]
        )
    if rows:
        out.append("\nevery storm:")
        out.append(_table(header, rows))
    out.extend(_error_lines(results))
    return "\n".join(out)


def cluster_report(results: Sequence[Result]) -> str:
    """Same-node against cross-node per rate (medians over the repeats), Redis memory per
    session and the nodes' memory per local and remote session."""
    out = [
        "== cluster (xmppd only: two nodes, one Redis; Prosody and ejabberd have no "
        "comparable Redis cluster); CPU = nodes A + B, per delivered message =="
    ]
    for r in results:
        if "error" in r:
            continue
        out.append(
            f"{r['pairs']} pairs, {r['step_seconds']} s steps x {r['repeats']}; "
            f"{r['placement_of_processes']}; {r['redis']}"
        )
        header = [
            "placement",
            "rate",
            "p50 ms",
            "p99 ms",
            "lost",
            "CPU µs/msg",
            "A",
            "B",
            "Redis",
            "Redis cmd/msg",
            "Redis B in/msg",
            "Redis B out/msg",
            "core0 %",
        ]
        rows = []
        for placement, data in r["placements"].items():
            for rate, row in data["by_rate"].items():
                rows.append(
                    [
                        placement,
                        _num(int(rate)),
                        _num(row["p50_ms"], 2),
                        _num(row["p99_ms"], 2),
                        _num(row["lost"]),
                        _num(row["cpu_us_per_msg"]),
                        _num(row["cpu_us_per_msg_node_a"]),
                        _num(row["cpu_us_per_msg_node_b"]),
                        _num(row["cpu_us_per_msg_redis"]),
                        _num(row["redis_commands_per_msg"], 2),
                        _num(row["redis_net_in_bytes_per_msg"], 0),
                        _num(row["redis_net_out_bytes_per_msg"], 0),
                        _num(row["core0_busy_pct"], 0),
                    ]
                )
        out.append(_table(header, rows))
        for rate, o in r["cross_node_overhead"].items():
            out.append(
                f"cross-node overhead at {int(rate):,} msg/s: "
                f"+{_num(o['extra_cpu_us_per_msg'])} µs/msg ({_num(o['cpu_ratio'], 2)}x)"
            )
        idle = {p: d["redis_idle_commands_per_s"] for p, d in r["placements"].items()}
        out.append(f"Redis commands/s while idle (heartbeats, blocking reads): {idle}")
        m = r["memory"]
        out.append(
            f"{m['idle_sessions_ok']:,} idle sessions on node B: Redis "
            f"{_num(m['redis_bytes_per_session'], 0)} B/session (session log "
            f"{_num(m.get('redis_session_log_bytes_per_session'), 0)} B of it), "
            f"{_num(m['redis_keys_per_session'], 2)} keys/session; RSS per session: node B "
            f"(holds it) {_num(m['node_b_kb_per_local_session'], 2)} KiB, node A (its view) "
            f"{_num(m['node_a_kb_per_remote_session'], 3)} KiB and "
            f"{_num(m.get('node_a_cpu_us_per_remote_login'))} µs CPU per login on B"
        )
    out.extend(_error_lines(results))
    return "\n".join(out)
