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


def sessions_report(results: Sequence[Result], ceiling: Result | None, n: int) -> str:
    ok = {r["server"]: r for r in results if "error" not in r and r["server"] in COMPARED}
    out = [f"== sessions: {n} sessions, logins with 200 in flight =="]
    out.append(_ceiling_line(ceiling, "sessions"))
    if ok:
        out.append(
            _comparison(
                ok,
                [
                    ("sessions established", lambda r: r["sessions_ok"], 0),
                    ("RSS before (MiB)", lambda r: r["rss_before_kb"] / 1024, 1),
                    ("RSS after (MiB)", lambda r: r["rss_after_kb"] / 1024, 1),
                    ("memory per session (KiB)", lambda r: r["kb_per_session"], 1),
                    (
                        "memory per idle session, 12 s later (KiB)",
                        lambda r: r["kb_per_idle_session"],
                        1,
                    ),
                    ("login rate (logins/s)", lambda r: r["login_rate"], 0),
                    ("login p99 (ms)", lambda r: r["login_p99_ms"], 1),
                    ("server CPU during logins (%)", lambda r: r["server_cpu_pct"], 0),
                    ("others' load before, core0 (%)", _bg, 0),
                ],
            )
        )
    out.extend(_error_lines(results))
    return "\n".join(out)


def chat_report(results: Sequence[Result], ceiling: Result | None, pairs: int) -> str:
    ok = {r["server"]: r for r in results if "error" not in r and r["server"] in COMPARED}
    out = [f"== chat: {pairs} online pairs, 1:1 messages, fixed-rate sweep =="]
    out.append(_ceiling_line(ceiling, "chat"))
    key = f"p99_at_{REFERENCE_RATE}_ms"

    def at_ref(r: Result, field: str) -> Any:
        step = next((s for s in r["steps"] if s["rate"] == REFERENCE_RATE), None)
        return step[field] if step else None

    if ok:
        out.append(
            _comparison(
                ok,
                [
                    ("max sustainable rate (msg/s)", lambda r: r["max_sustainable_rate"], 0),
                    (f"p50 @ {REFERENCE_RATE} msg/s (ms)", lambda r: at_ref(r, "p50_ms"), 1),
                    (f"p99 @ {REFERENCE_RATE} msg/s (ms)", lambda r: r[key], 1),
                    (f"max @ {REFERENCE_RATE} msg/s (ms)", lambda r: at_ref(r, "max_ms"), 1),
                    (f"lost @ {REFERENCE_RATE} msg/s", lambda r: at_ref(r, "lost"), 0),
                    (
                        f"server CPU @ {REFERENCE_RATE} (%)",
                        lambda r: at_ref(r, "server_cpu_pct"),
                        0,
                    ),
                    ("others' load before, core0 (%)", _bg, 0),
                ],
            )
        )
    for r in [*results, *([ceiling] if ceiling else [])]:
        if "error" in r or "steps" not in r:
            continue
        echo = r["server"] == "echo"
        out.append(f"\n{r['server']} steps{' (generator ceiling)' if echo else ''}:")
        out.append(steps_table(r["steps"], echo=echo))
    out.extend(_error_lines(results))
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


def chat_chart(results: Sequence[Result], path: Path) -> Path | None:
    """p50/p99 latency vs offered rate for every server; None if matplotlib is missing."""
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
    ax.set_xlabel("offered rate (messages/s)")
    ax.set_ylabel("latency (ms, log)")
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_title("1:1 chat latency vs offered rate (server on 1 core)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
