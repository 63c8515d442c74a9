"""The ``soak`` scenario (issue #16, goal 5: nothing grows): memory over time.

Two phases, xmppd only (the goal is about xmppd's own growth; the anchors' figures
would add nothing a reader could act on):

* **churn**: ``soak_churn`` logins and logouts of **one** account (STARTTLS +
  SCRAM-SHA-1, ``soak_churn_concurrency`` in flight, each login with a new resource,
  each ending with ``</stream:stream>``). RSS after a warm-up of
  ``soak_churn_warmup`` logins is the baseline; the growth after the rest, per login,
  is what a login leaves behind (goal: nothing).
* **chat**: ``soak_sessions`` sessions over STARTTLS + SCRAM-SHA-1, of which
  ``soak_pairs`` pairs chat at ``soak_rate`` messages/s in all for ``soak_seconds``,
  in steps of ``soak_sample`` seconds; RSS after every step. Goal: RSS at the end
  within 5 % of RSS after the first minute, nothing lost.

The reconnect storm's RSS before and after is in the ``storm`` scenario's results.

    python -m bench soak                  # 100,000 logins; 10,000 sessions, 10 minutes
    python -m bench soak --quick          # 2,000 logins; 1,000 sessions, 1 minute
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import PASSWORD, user_name
from bench.generator import GeneratorPool, split, workers_for
from bench.scenarios import Log, Settings, _chat_step, background_load, login_sessions
from bench.servers.base import Features, Server
from bench.xmpp import SCRAM_SHA1

CHURN_CHUNKS = 10
"""Parts of the churn after the warm-up, with an RSS reading after each."""
GROWTH_LIMIT = 0.05
"""Goal: RSS at the end of the chat soak within 5 % of RSS after the first minute."""


def run_soak(server: Server, settings: Settings, log: Log) -> list[dict[str, Any]]:
    background = background_load()
    results = []
    with server.using(Features(tls=True)):
        for phase in (_churn, _chat_soak):
            try:
                result = phase(server, settings, log)
            except Exception as exc:
                result = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            finally:
                server.stop()
            result.setdefault("scenario", "soak")
            result["server"] = server.name
            result["background_busy_pct"] = background
            results.append(result)
    return results


def _churn(server: Server, settings: Settings, log: Log) -> dict[str, Any]:
    total, warmup = settings.soak_churn, min(settings.soak_churn_warmup, settings.soak_churn)
    workers = 2
    server.start()
    with GeneratorPool(workers) as pool:
        time.sleep(1.0)

        def churn(count: int) -> dict[str, Any]:
            counts = [len(part) for part in split(list(range(count)), workers)]
            args = [
                {
                    "host": "127.0.0.1",
                    "port": server.port,
                    "domain": server.domain,
                    "user": user_name(0),
                    "password": PASSWORD,
                    "count": n,
                    "concurrency": max(1, settings.soak_churn_concurrency // workers),
                    "tls": True,
                    "mechanism": SCRAM_SHA1,
                }
                for n in counts
            ]
            replies = pool.call_all("churn", args, timeout=3600 * 3)
            return {
                "ok": sum(r["ok"] for r in replies),
                "failed": sum(r["failed"] for r in replies),
                "errors": [e for r in replies for e in r["errors"]][:5],
                "seconds": max(r["seconds"] for r in replies),
            }

        first = churn(warmup)
        time.sleep(2.0)
        rss_base = server.rss_kb()
        log(f"{server.name}: churn: {warmup} logins to warm up, RSS {rss_base / 1024:.1f} MiB")
        # The rest in CHURN_CHUNKS parts with an RSS reading after each: a leak grows
        # the series linearly, a high-water mark (a larger burst in flight) steps once.
        series: list[dict[str, Any]] = []
        rest: dict[str, Any] = {"ok": 0, "failed": 0, "errors": [], "seconds": 0.0}
        remaining = total - warmup
        for part in range(CHURN_CHUNKS, 0, -1):
            count = remaining // part
            remaining -= count
            done = churn(count)
            for key in ("ok", "failed", "seconds"):
                rest[key] += done[key]
            rest["errors"] += done["errors"]
            time.sleep(2.0)
            series.append({"logins": warmup + rest["ok"], "rss_kb": server.rss_kb()})
        rss_end = series[-1]["rss_kb"]
        alive = server.running()
    logins = rest["ok"]
    growth = rss_end - rss_base
    half = series[len(series) // 2]
    second_half = rss_end - half["rss_kb"]
    log(
        f"{server.name}: churn: {logins} more logins and logouts of one account in "
        f"{rest['seconds']:.0f} s ({rest['failed']} failed), RSS {rss_base / 1024:.1f} -> "
        f"{rss_end / 1024:.1f} MiB ({growth:+d} KiB; {second_half:+d} KiB in the second half)"
    )
    return {
        "phase": "churn",
        "logins": first["ok"] + logins,
        "failed": first["failed"] + rest["failed"],
        "errors": first["errors"] + rest["errors"],
        "login_rate": round(logins / rest["seconds"], 1) if rest["seconds"] else None,
        "rss_after_warmup_kb": rss_base,
        "rss_end_kb": rss_end,
        "growth_kb": growth,
        "bytes_per_login": round(1024 * growth / logins, 2) if logins else None,
        "growth_second_half_kb": second_half,
        "bytes_per_login_second_half": (
            round(1024 * second_half / (logins + warmup - half["logins"]), 2)
            if logins + warmup > half["logins"]
            else None
        ),
        "series": series,
        "server_alive_after": alive,
    }


def _chat_soak(server: Server, settings: Settings, log: Log) -> dict[str, Any]:
    n, p = settings.soak_sessions, min(settings.soak_pairs, settings.soak_sessions // 2)
    chatting = [user_name(i) for i in range(2 * p)]
    targets = [f"{user_name(i ^ 1)}@{server.domain}" for i in range(2 * p)]
    idle = [user_name(i) for i in range(2 * p, n)]
    workers = max(settings.chat_workers, workers_for(n, minimum=1))
    server.start()
    samples: list[dict[str, Any]] = []
    with GeneratorPool(workers) as pool:
        log(f"{server.name}: soak: logging in {n} TLS sessions, {p} pairs chat")
        login = login_sessions(
            pool, server, chatting, settings, pair_targets=targets, mechanism=SCRAM_SHA1, tls=True
        )
        senders = login["per_worker_ok"]
        if idle:
            more = login_sessions(pool, server, idle, settings, mechanism=SCRAM_SHA1, tls=True)
            login["ok"] += more["ok"]
            login["failed"] += more["failed"]
        time.sleep(1.0)
        rss_start = server.rss_kb()
        steps = max(1, round(settings.soak_seconds / settings.soak_sample))
        t0 = time.monotonic()
        for step in range(1, steps + 1):
            res = _chat_step(
                server, pool, step, settings.soak_rate, senders, settings, settings.soak_sample
            )
            rss = server.rss_kb()
            samples.append(
                {
                    "t": round(time.monotonic() - t0, 1),
                    "rss_kb": rss,
                    "sent": res["sent"],
                    "lost": res["lost"],
                    "p99_ms": res["p99_ms"],
                    "achieved_rate": res["achieved_rate"],
                    "server_cpu_pct": res["server_cpu_pct"],
                }
            )
            if step % 6 == 0 or step == steps:
                log(
                    f"{server.name}: soak: {samples[-1]['t']:.0f} s, RSS {rss / 1024:.1f} MiB, "
                    f"p99 {res['p99_ms']} ms, lost {res['lost']}"
                )
        alive = server.running()
        pool.call_all("close", [{}] * len(pool))
    minute = next((s for s in samples if s["t"] >= 60), samples[0])
    end = samples[-1]
    growth = (end["rss_kb"] - minute["rss_kb"]) / minute["rss_kb"] if minute["rss_kb"] else None
    return {
        "phase": "chat",
        "sessions": n,
        "sessions_ok": login["ok"],
        "login_failed": login["failed"],
        "pairs": p,
        "rate": settings.soak_rate,
        "seconds": settings.soak_seconds,
        "rss_after_login_kb": rss_start,
        "rss_after_first_minute_kb": minute["rss_kb"],
        "rss_end_kb": end["rss_kb"],
        "growth_after_first_minute_pct": round(100 * growth, 2) if growth is not None else None,
        "goal_met": growth is not None and growth <= GROWTH_LIMIT,
        "sent": sum(s["sent"] for s in samples),
        "lost": sum(s["lost"] for s in samples),
        "worst_p99_ms": max((s["p99_ms"] or 0) for s in samples),
        "samples": samples,
        "server_alive_after": alive,
    }


def soak_report(results: list[dict[str, Any]]) -> str:
    lines = ["== soak: memory over time (xmppd) =="]
    for r in results:
        if "error" in r:
            lines.append(f"{r.get('phase', '?')}: error: {r['error']}")
        elif r["phase"] == "churn":
            lines.append(
                f"churn: {r['logins']:,} logins and logouts of one account "
                f"({r['failed']} failed, {r['login_rate']}/s): RSS "
                f"{r['rss_after_warmup_kb'] / 1024:.1f} -> {r['rss_end_kb'] / 1024:.1f} MiB, "
                f"{r['growth_kb']:+,} KiB, {r['bytes_per_login']} bytes per login; second "
                f"half {r['growth_second_half_kb']:+,} KiB, "
                f"{r['bytes_per_login_second_half']} bytes per login"
            )
        else:
            lines.append(
                f"chat: {r['sessions_ok']:,} TLS sessions, {r['pairs']} pairs at "
                f"{r['rate']:,} msg/s for {r['seconds']:.0f} s: RSS "
                f"{r['rss_after_first_minute_kb'] / 1024:.1f} MiB after a minute -> "
                f"{r['rss_end_kb'] / 1024:.1f} MiB at the end "
                f"({r['growth_after_first_minute_pct']:+.2f} %, goal <= +5 %: "
                f"{'met' if r['goal_met'] else 'NOT met'}); sent {r['sent']:,}, "
                f"lost {r['lost']}, worst step p99 {r['worst_p99_ms']} ms"
            )
    return "\n".join(lines)
