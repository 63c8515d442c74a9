"""Scenario ``presence``: broadcast to 100-contact rosters while accounts go offline and
online again at a fixed rate.

N accounts (``p00000``...) each have ``roster_size`` contacts, all mutual (``both``): the
accounts sit on a ring and each has the ``roster_size / 2`` neighbours on either side
(:func:`bench.common.contact_indices`).  All N log in (the login rate with such rosters is
reported too), then each sweep step makes ``rate`` accounts per second (round-robin) send
``<presence type='unavailable'>`` immediately followed by ``<presence/>``, both carrying
``<status>SENDER:STEP:MICROSECONDS</status>``.  The server broadcasts each to the
account's online contacts (2 x roster_size deliveries per cycle) and, the available one
being an initial presence again (RFC 6121 section 4.2), answers the account's probes with
its contacts' current presences (roster_size more), plus copies to the account itself.

A receiver records the latency of every stamped presence the first time it sees that
(sender, type, stamp); repeats (probe answers carrying a presence it already has) are
counted, not timed.  A step passes when p99 < 100 ms, at least 98 % of the expected
broadcasts arrived (2 x roster_size per cycle) and the server drained its backlog.  The
2 % allow for contacts that are themselves between their unavailable and available
presence when a broadcast reaches them: a server rightly delivers nothing to them then,
and the probe answer they get next carries only the newest presence.
"""

from __future__ import annotations

import time
from array import array
from typing import Any

from bench.common import (
    GENERATOR_CPU,
    PRESENCE_PREFIX,
    SERVER_CPU,
    cpu_busy_pct,
    cpu_sample,
    user_name,
)
from bench.generator import GeneratorPool, workers_for
from bench.scenarios import (
    P99_LIMIT_MS,
    Log,
    Settings,
    Usage,
    background_load,
    fmt,
    login_sessions,
    percentile,
)
from bench.servers.base import Features, Server

#: The p50/p99 reported in the comparison table are those of this step (cycles/s).
PRESENCE_REFERENCE = 100
#: Seconds a server may take to work off its backlog after a step (else the step fails).
DRAIN_LIMIT = 10.0
#: Share of the expected broadcasts that must arrive for a step to pass.
MIN_DELIVERED = 0.98


def run_presence(
    server: Server, settings: Settings, log: Log, rates: list[int] | None = None
) -> dict[str, Any]:
    n = settings.presence_users
    k = settings.roster_size
    rates = rates or settings.presence_rates
    users = [user_name(i, PRESENCE_PREFIX) for i in range(n)]
    workers = workers_for(n)
    background = background_load()
    steps: list[dict[str, Any]] = []
    with server.using(Features()):
        server.start()
        with GeneratorPool(workers) as pool:
            log(f"{server.name}: logging in {n} accounts with {k} contacts each")
            login = login_sessions(pool, server, users, settings)
            if login["failed"]:
                log(f"{server.name}: {login['failed']} logins failed: {login['errors'][:2]}")
            # Let the login broadcasts and probe answers settle before measuring.
            pool.call_all("quiesce", [{"quiet": 1.0, "timeout": 20.0}] * len(pool), timeout=60)
            pool.call_all("presence_start", [{}] * len(pool))
            per_worker: list[int] = login["per_worker_ok"]
            for step, rate in enumerate(rates, start=1):
                res = _presence_step(server, pool, step, rate, per_worker, k, settings)
                steps.append(res)
                log(
                    f"{server.name}: {rate:>5} cycles/s  {res['delivered_per_s'] or 0:>9,.0f} "
                    f"presences/s  p50 {fmt(res['p50_ms'])}  p99 {fmt(res['p99_ms'])} ms  "
                    f"broadcasts {res['broadcast_pct']}%  cpu: server "
                    f"{res['server_cpu_pct']}% generator {res['generator_cpu_pct']}%  "
                    f"{'ok' if res['ok'] else 'FAIL'}"
                )
                if not res["ok"] and rate >= PRESENCE_REFERENCE:
                    break
                if not server.running():
                    log(f"{server.name}: server process died")
                    break
            pool.call_all("close", [{}] * len(pool))
    passing = [s for s in steps if s["ok"]]
    best = max(passing, key=lambda s: s["rate"]) if passing else None
    at_ref = next((s for s in steps if s["rate"] == PRESENCE_REFERENCE), None)
    return {
        "scenario": "presence",
        "server": server.name,
        "users": n,
        "roster_size": k,
        "sessions_ok": login["ok"],
        "login_failed": login["failed"],
        "login_errors": login["errors"],
        "login_rate": login["rate"],
        "login_p99_ms": login["p99_ms"],
        "login_server_cpu_pct": login["server_cpu_pct"],
        "generator_processes": workers,
        "step_seconds": settings.presence_step_seconds,
        "steps": steps,
        "max_sustainable_rate": best["rate"] if best else 0,
        "delivered_per_s_at_max": best["delivered_per_s"] if best else None,
        "reference_rate": PRESENCE_REFERENCE,
        "p50_at_reference_ms": at_ref["p50_ms"] if at_ref else None,
        "p99_at_reference_ms": at_ref["p99_ms"] if at_ref else None,
        "background_busy_pct": background,
    }


def _presence_step(
    server: Server,
    pool: GeneratorPool,
    step: int,
    rate: int,
    per_worker: list[int],
    roster_size: int,
    settings: Settings,
) -> dict[str, Any]:
    total = sum(per_worker)
    duration = settings.presence_step_seconds
    start_at = time.monotonic() + 0.3
    args = [
        {
            "step": step,
            "rate": rate * k / total if total else 0.0,
            "duration": duration,
            "start_at": start_at,
        }
        for k in per_worker
    ]
    pool.send_all("presence_step", args)
    time.sleep(max(0.0, start_at - time.monotonic()))
    before = cpu_sample()
    usage = Usage(server, pool)
    time.sleep(duration)
    after = cpu_sample()
    server_pct, generator_pct = usage.percent()
    sent_replies = pool.gather("presence_step", timeout=duration + 60)
    quiet = pool.call_all(
        "quiesce", [{"quiet": 0.5, "timeout": DRAIN_LIMIT, "keep": True}] * len(pool), timeout=60
    )
    drained = all(q["quiet"] for q in quiet)
    collected = pool.call_all("presence_collect", [{"step": step}] * len(pool))
    lat = array("q")
    for r in collected:
        part = array("q")
        part.frombytes(r["lat"])
        lat.extend(part)
    values = sorted(lat)
    cycles = sum(r["sent"] for r in sent_replies)
    received = sum(r["received"] for r in collected)
    last_rx = max((r["last_rx"] for r in collected), default=0) / 1_000_000
    span = max(duration, last_rx - start_at - 0.5 if drained else last_rx - start_at)
    expected = 2 * roster_size * cycles
    p99 = percentile(values, 99)
    ratio = len(values) / expected if expected else None
    return {
        "rate": rate,
        "cycles": cycles,
        "achieved_rate": round(cycles / duration, 1),
        "presences_received": received,
        "delivered_per_s": round(received / span, 1) if span > 0 else None,
        "broadcasts_timed": len(values),
        "broadcasts_expected": expected,
        "broadcast_pct": round(100 * ratio, 2) if ratio is not None else None,
        "repeated": sum(r["repeated"] for r in collected),
        "own": sum(r["own"] for r in collected),
        "without_status": sum(r["without_status"] for r in collected),
        "p50_ms": percentile(values, 50),
        "p90_ms": percentile(values, 90),
        "p99_ms": p99,
        "max_ms": values[-1] / 1000.0 if values else None,
        "generator_max_lag_ms": round(max(r["max_lag"] for r in sent_replies) * 1000, 1),
        "drained": drained,
        "server_cpu_pct": server_pct,
        "generator_cpu_pct": generator_pct,
        "core0_busy_pct": cpu_busy_pct(before, after, SERVER_CPU),
        "core1_busy_pct": cpu_busy_pct(before, after, GENERATOR_CPU),
        "ok": bool(
            cycles
            and drained
            and ratio is not None
            and ratio >= MIN_DELIVERED
            and p99 is not None
            and p99 < P99_LIMIT_MS
        ),
    }
