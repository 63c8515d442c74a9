"""Scenario ``muc``: one group chat room of N occupants (issue #11).

For each room size N (100 and 500 by default; 5,000 with ``--muc-large``, on xmppd and
ejabberd only) the server starts afresh with its MUC service at ``conference.<domain>``
(:attr:`bench.servers.base.Features.muc`) and:

1. N accounts log in (not in any room); once the server is quiet its RSS is read.
2. N - 1 of them join room ``benchN`` (``--muc-join-concurrency`` joins in flight per
   generator process; the first creates the room), each with its account name as nickname
   and no history.  A join is done when the self-presence (status 110) arrives.
3. Once the presence flood has been delivered, the last one joins alone: its time from
   join presence to self-presence is the **join time of the Nth occupant** (it receives
   the N - 1 occupants' presences first, and the N - 1 occupants get its presence).
4. With the room quiet, the RSS again: **memory per occupant** is the difference divided
   by N (the same N sessions, online outside the room before). Both readings come
   after the sessions were idle for ``IDLE_SECONDS`` (as the idle reading of
   ``sessions``).
5. A sweep of offered **deliveries per second**: each step the first ``--muc-senders``
   occupants send ``deliveries / N`` stamped groupchat messages per second in all, and
   every occupant (senders included: the room reflects their message) times the copy it
   gets.  A step passes when every copy arrived (N per message), no error came back,
   the server worked off its backlog and p99 < 100 ms.  The highest passing step is the
   **maximum sustainable deliveries/s**; its p50/p99 are the fan-out latency.
"""

from __future__ import annotations

import time
from array import array
from typing import Any

from bench.common import GENERATOR_CPU, SERVER_CPU, cpu_busy_pct, cpu_sample, user_name
from bench.generator import GeneratorPool, split, workers_for
from bench.scenarios import (
    IDLE_SECONDS,
    P99_LIMIT_MS,
    Log,
    Settings,
    Usage,
    background_load,
    fmt,
    login_sessions,
    percentile,
)
from bench.servers.base import Features, Server, muc_domain

#: The room size that only xmppd and ejabberd fill (``--muc-large``): about 12.5 million
#: presence deliveries, some 40 minutes on Prosody (issue #11).
LARGE_ROOM = 5000
LARGE_ROOM_SERVERS = ("xmppd", "ejabberd")
#: Seconds a server may take to work off its backlog after a step (else the step fails).
DRAIN_LIMIT = 10.0
#: Seconds the room may take to deliver a join flood before the timed join.
FLOOD_LIMIT = 600.0


def room_sizes(settings: Settings, server: str) -> list[int]:
    sizes = list(settings.muc_sizes)
    if settings.muc_large and server in LARGE_ROOM_SERVERS and LARGE_ROOM not in sizes:
        sizes.append(LARGE_ROOM)
    return sizes


def accounts_needed(settings: Settings) -> int:
    return max([*settings.muc_sizes, *([LARGE_ROOM] if settings.muc_large else [])])


def run_muc(server: Server, settings: Settings, log: Log) -> list[dict[str, Any]]:
    """One result per room size."""
    results = []
    for size in room_sizes(settings, server.name):
        try:
            results.append(_run_room(server, settings, log, size))
        except Exception as exc:
            log(f"{server.name}: room of {size} failed: {exc}")
            results.append(
                {"scenario": "muc", "server": server.name, "occupants": size, "error": str(exc)}
            )
        if server.name == "prosody" and size >= LARGE_ROOM:
            break
    return results


def _quiet(
    pool: GeneratorPool, quiet: float, timeout: float, since: float = 0.0
) -> tuple[bool, float]:
    """Wait until no generator process received anything for ``quiet`` s, counted
    from ``since`` at the earliest; returns whether that happened within ``timeout``
    and when the last data arrived (``time.monotonic()``, the same clock in every
    process)."""
    replies = pool.call_all(
        "quiesce",
        [{"quiet": quiet, "timeout": timeout, "keep": True, "since": since}] * len(pool),
        timeout=timeout + 60,
    )
    return all(r["quiet"] for r in replies), max(r["last_rx"] for r in replies)


def _durations(replies: list[dict[str, Any]]) -> list[float]:
    out: list[float] = []
    for r in replies:
        d = array("d")
        d.frombytes(r["durations"])
        out.extend(d)
    return sorted(out)


def _run_room(server: Server, settings: Settings, log: Log, n: int) -> dict[str, Any]:
    room = f"bench{n}@{muc_domain(server.domain)}"
    users = [user_name(i) for i in range(n)]
    workers = workers_for(n)
    background = background_load()
    steps: list[dict[str, Any]] = []
    join_timeout = settings.login_timeout
    with server.using(Features(muc=True)):
        server.start()
        with GeneratorPool(workers) as pool:
            log(f"{server.name}: room of {n}: logging in {n} sessions")
            login = login_sessions(pool, server, users, settings)
            if login["failed"]:
                raise RuntimeError(f"{login['failed']} logins failed: {login['errors'][:2]}")
            per_worker: list[int] = login["per_worker_ok"]
            _quiet(pool, 1.0, 30.0)
            # Both readings after the same idle time, as `sessions` takes its idle one:
            # parsers of idle clients released, the heap trimmed (with 2 s, a trim
            # between the readings could make the difference negative).
            time.sleep(IDLE_SECONDS)
            rss_outside = server.rss_kb()

            def join(first: list[int], count: list[int], concurrency: int) -> list[Any]:
                args = [
                    {
                        "room": room,
                        "first": first[i],
                        "count": count[i],
                        "concurrency": concurrency,
                        "timeout": join_timeout,
                    }
                    for i in range(len(pool))
                ]
                replies = pool.call_all("muc_join", args, timeout=join_timeout + FLOOD_LIMIT)
                failed = sum(r["failed"] for r in replies)
                if failed:
                    errors = [e for r in replies for e in r["errors"]][:3]
                    raise RuntimeError(f"{failed} joins failed: {errors}")
                return replies

            zeros = [0] * len(pool)
            # The first occupant creates the room; the last (worker 0's last session)
            # joins alone at the end, timed.
            join([0, *zeros[1:]], [1, *zeros[1:]], 1)
            t0 = time.monotonic()
            usage = Usage(server, pool)
            counts = [per_worker[0] - 2, *per_worker[1:]]
            fill = join([1, *zeros[1:]], counts, max(1, settings.muc_join_concurrency))
            fill_seconds = time.monotonic() - t0
            flood_quiet, flood_end = _quiet(pool, 1.0, FLOOD_LIMIT)
            flood_seconds = max(fill_seconds, flood_end - t0)
            fill_server_pct, _ = usage.percent()
            fill_joins = _durations(fill)
            log(
                f"{server.name}: {n - 1} occupants joined in {fill_seconds:.1f} s, presence "
                f"flood delivered after {flood_seconds:.1f} s"
                + ("" if flood_quiet else " (still arriving)")
            )
            last = join([per_worker[0] - 1, *zeros[1:]], [1, *zeros[1:]], 1)
            join_last = _durations(last)[0]
            _quiet(pool, 1.0, 60.0)
            time.sleep(IDLE_SECONDS)
            rss_inside = server.rss_kb()
            kb_per_occupant = round((rss_inside - rss_outside) / n, 2)
            log(
                f"{server.name}: join of occupant {n}: {join_last * 1000:.1f} ms; RSS "
                f"{rss_outside / 1024:.1f} MiB outside -> {rss_inside / 1024:.1f} MiB in the "
                f"room ({kb_per_occupant} KiB per occupant)"
            )
            senders = min(settings.muc_senders, n)
            senders_per_worker = [len(p) for p in split(list(range(senders)), len(pool))]
            for step, deliveries in enumerate(settings.muc_rates, start=1):
                res = _muc_step(
                    server, pool, room, step, deliveries, n, senders_per_worker, settings
                )
                steps.append(res)
                log(
                    f"{server.name}: room {n}: {deliveries:>7} deliveries/s offered "
                    f"({res['message_rate']} msg/s)  {res['delivered_per_s'] or 0:>9,.0f}/s "
                    f"p50 {fmt(res['p50_ms'])}  p99 {fmt(res['p99_ms'])} ms  lost "
                    f"{res['lost']}  cpu: server {res['server_cpu_pct']}% generator "
                    f"{res['generator_cpu_pct']}%  {'ok' if res['ok'] else 'FAIL'}"
                )
                if not res["ok"]:
                    break
                if not server.running():
                    log(f"{server.name}: server process died")
                    break
            pool.call_all("close", [{}] * len(pool))
    passing = [s for s in steps if s["ok"]]
    best = max(passing, key=lambda s: s["rate"]) if passing else None
    return {
        "scenario": "muc",
        "server": server.name,
        "occupants": n,
        "room": room,
        "sessions_ok": login["ok"],
        "login_rate": login["rate"],
        "generator_processes": workers,
        "join_concurrency": settings.muc_join_concurrency,
        "fill_seconds": round(fill_seconds, 2),
        "flood_seconds": round(flood_seconds, 2),
        "flood_delivered": flood_quiet,
        "fill_server_cpu_pct": fill_server_pct,
        "fill_join_p50_ms": round(fill_joins[len(fill_joins) // 2] * 1000, 1)
        if fill_joins
        else None,
        "join_last_ms": round(join_last * 1000, 1),
        "rss_outside_kb": rss_outside,
        "rss_inside_kb": rss_inside,
        "kb_per_occupant": kb_per_occupant,
        "senders": senders,
        "step_seconds": settings.muc_step_seconds,
        "steps": steps,
        "max_sustainable_rate": best["rate"] if best else 0,
        "delivered_per_s_at_max": best["delivered_per_s"] if best else None,
        "p50_at_max_ms": best["p50_ms"] if best else None,
        "p99_at_max_ms": best["p99_ms"] if best else None,
        "background_busy_pct": background,
    }


def _muc_step(
    server: Server,
    pool: GeneratorPool,
    room: str,
    step: int,
    deliveries: int,
    occupants: int,
    senders_per_worker: list[int],
    settings: Settings,
) -> dict[str, Any]:
    duration = settings.muc_step_seconds
    message_rate = deliveries / occupants
    total_senders = sum(senders_per_worker)
    start_at = time.monotonic() + 0.3
    args = [
        {
            "room": room,
            "step": step,
            "rate": message_rate * k / total_senders,
            "duration": duration,
            "start_at": start_at,
            "senders": k,
        }
        for k in senders_per_worker
    ]
    pool.send_all("muc_step", args)
    time.sleep(max(0.0, start_at - time.monotonic()))
    before = cpu_sample()
    usage = Usage(server, pool)
    time.sleep(duration)
    after = cpu_sample()
    server_pct, generator_pct = usage.percent()
    sent_replies = pool.gather("muc_step", timeout=duration + 60)
    # Quiet counted from the last send: at a message or two per second, the previous
    # arrival was long enough ago to look quiet while the last message is on its way.
    drained, _ = _quiet(pool, 0.5, DRAIN_LIMIT, since=time.monotonic())
    collected = pool.call_all("muc_collect", [{"step": step}] * len(pool))
    lat = array("q")
    for r in collected:
        part = array("q")
        part.frombytes(r["lat"])
        lat.extend(part)
    values = sorted(lat)
    sent = sum(r["sent"] for r in sent_replies)
    in_room = sum(r["occupants"] for r in collected)
    expected = sent * in_room
    received = len(values)
    last_rx = max((r["last_rx"] for r in collected), default=0) / 1_000_000
    span = max(duration, last_rx - start_at - 0.5 if drained else last_rx - start_at)
    p99 = percentile(values, 99)
    errors = sum(r["errors"] for r in collected)
    lost = max(0, expected - received)
    return {
        "rate": deliveries,
        "message_rate": round(message_rate, 1),
        "sent": sent,
        "expected": expected,
        "received": received,
        "lost": lost,
        "errors": errors,
        "delivered_per_s": round(received / span, 1) if span > 0 else None,
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
            sent
            and drained
            and lost == 0
            and errors == 0
            and p99 is not None
            and p99 < P99_LIMIT_MS
        ),
    }
