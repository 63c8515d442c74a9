"""The ``storm`` scenario: every connection drops at once and every client comes back.

N sessions are logged in over STARTTLS with XEP-0198 stream management (resumable) and
``P`` pairs among them chat at a steady rate, every message counted by id.  Then, for
each way of dropping and each way of coming back (see :func:`storm_plan`):

* ``cut``: every TCP connection is reset by the clients while the server runs (a
  network blip: the server keeps the sessions resumable);
* ``restart``: the server is stopped (SIGTERM) and started again on the same data;

and every client reconnects as a phone does (:class:`bench.storm_client.Backoff`: a
first wait drawn from ``[0, first)``, then exponential back-off with full jitter),
offering the ticket of its last TLS session (``--no-storm-tls-resume``: never), at
most ``concurrency`` logins in flight across the generator, with

* ``scram``: STARTTLS + SCRAM-SHA-1, bind, SM enable (every server);
* ``scram+resume``: STARTTLS + SCRAM-SHA-1, then XEP-0198 ``<resume/>`` (``cut`` only);
* ``fast``: STARTTLS + SASL2 with a FAST token and Bind 2 (xmppd);
* ``fast+resume``: STARTTLS + SASL2 with a FAST token and inline ``<resume/>`` (xmppd,
  ``cut`` only).

The chat keeps going through the storm (offline senders skip their turn).  A message is
*lost* when the server acknowledged it to its sender (XEP-0198 ``<a/>``) and the
recipient never got it: not live, not from offline storage, not on resumption.  Messages
not acknowledged when a connection dropped are sent again on the new session, as real
clients do; a copy received twice counts as a duplicate.
"""

from __future__ import annotations

import statistics
import time
from array import array
from dataclasses import dataclass
from typing import Any

from bench.common import PASSWORD, user_name
from bench.generator import GeneratorPool, split, workers_for
from bench.scenarios import Log, Settings, background_load, percentile
from bench.servers.base import Features, Server


@dataclass(frozen=True)
class Storm:
    drop: str  # "cut" or "restart"
    mode: str  # "scram" or "fast"
    resume: bool

    @property
    def name(self) -> str:
        return self.mode + ("+resume" if self.resume else "")


def storm_plan(server: str, only: list[str] | None = None) -> list[Storm]:
    """The storms run on ``server`` in order (FAST is xmppd's; resumption needs a
    session the server kept, hence ``cut`` only); ``only``: those named
    ``drop/mode`` (``cut/fast+resume``) among them."""
    modes = ["scram", "fast"] if server == "xmppd" else ["scram"]
    plan = [Storm("cut", m, r) for m in modes for r in (False, True)]
    plan += [Storm("restart", m, False) for m in modes]
    if only is not None:
        plan = [p for p in plan if f"{p.drop}/{p.name}" in only]
    return plan


def run_storm(server: Server, settings: Settings, log: Log) -> list[dict[str, Any]]:
    background = background_load()
    with server.using(Features(tls=True, mobile=True)):
        results = _storms(server, settings, log)
    for r in results:
        r["background_busy_pct"] = background
    return results


def _storms(server: Server, settings: Settings, log: Log) -> list[dict[str, Any]]:
    n = settings.storm_sessions
    pairs = min(settings.storm_pairs, n // 2)
    domain = server.domain
    users = [
        (i, user_name(i), f"{user_name(i ^ 1)}@{domain}" if i < 2 * pairs else None)
        for i in range(n)
    ]
    workers = workers_for(n)
    parts = split(users, workers, chunk=2)
    first_mode = "fast" if server.name == "xmppd" else "scram"
    results: list[dict[str, Any]] = []
    server.start()
    try:
        with GeneratorPool(workers) as pool:
            log(f"{server.name}: logging in {n} sessions ({pairs} chatting pairs), {first_mode}")
            per_worker = max(1, settings.concurrency // workers)
            replies = pool.call_all(
                "storm_login",
                [
                    {
                        "host": "127.0.0.1",
                        "port": server.port,
                        "domain": domain,
                        "users": part,
                        "password": PASSWORD,
                        "concurrency": per_worker,
                        "timeout": settings.login_timeout,
                        "mode": first_mode,
                    }
                    for part in parts
                ],
                timeout=settings.login_timeout + 600,
            )
            ok = sum(r["ok"] for r in replies)
            if ok < n:
                errors = [e for r in replies for e in r["errors"]][:3]
                raise RuntimeError(f"only {ok}/{n} sessions logged in: {errors}")
            chatters = [sum(1 for u in part if u[2] is not None) for part in parts]
            for storm in storm_plan(server.name, settings.storm_only):
                res = _one_storm(server, pool, settings, log, storm, n, chatters)
                res["pairs"] = pairs
                res["generator_processes"] = workers
                results.append(res)
                if not server.running():
                    log(f"{server.name}: server process died")
                    break
            pool.call_all("storm_close", [{}] * len(pool))
    finally:
        server.stop()
    return results


def _one_storm(
    server: Server,
    pool: GeneratorPool,
    settings: Settings,
    log: Log,
    storm: Storm,
    n: int,
    chatters: list[int],
) -> dict[str, Any]:
    workers = len(pool)
    total_chatters = sum(chatters) or 1
    mode = {"mode": storm.mode, "resume": storm.resume, "tls_resume": settings.storm_tls_resume}
    pool.call_all("storm_mode", [mode] * workers)
    pool.call_all(
        "storm_chat_start",
        [{"rate": settings.storm_rate * c / total_chatters} for c in chatters],
    )
    time.sleep(settings.storm_settle)
    chat_cpu_per_s = chat_cpu(server, settings.storm_chat_baseline)
    rss_before = server.rss_kb()
    drop_args = {
        "cut": storm.drop == "cut",
        "concurrency": max(1, settings.concurrency // workers),
        "first": settings.storm_first_wait,
        "base": settings.storm_backoff,
        "cap": settings.storm_backoff_cap,
        "timeout": settings.login_timeout,
        "limit": settings.storm_limit,
    }
    log(f"{server.name}: storm {storm.drop}/{storm.name}: {n} sessions drop")
    start_seconds: float | None = None
    stop_seconds: float | None = None
    start_cpu: float | None = None
    cpu_before = server.cpu_seconds()
    generator_before = pool.cpu_seconds()
    dropped_at = time.monotonic()
    pool.send_all("storm_drop", [drop_args] * workers)
    cpu_used = 0.0
    if storm.drop == "restart":
        cpu_used = server.cpu_seconds() - cpu_before
        t_stop = time.monotonic()
        server.stop()
        stop_seconds = round(time.monotonic() - t_stop, 2)
        t_start = time.monotonic()
        server.start()
        start_seconds = round(time.monotonic() - t_start, 2)
        start_cpu = server.cpu_seconds()  # the new process's start-up, not counted below
        cpu_before = start_cpu
    replies = pool.gather("storm_drop", timeout=settings.storm_limit + 120)
    all_back = max(r["finished"] for r in replies) - dropped_at
    # How busy the generator's core was: near 100 % the storm's time is the clients'.
    generator_cpu = pool.cpu_seconds() - generator_before
    cpu_used += server.cpu_seconds() - cpu_before
    window = time.monotonic() - dropped_at
    durations = array("d")
    for r in replies:
        part = array("d")
        part.frombytes(r["durations"])
        durations.extend(part)
    # The chat goes on for the sessions already back: its CPU scales with the share of
    # the window the sessions were online, which is subtracted.
    online = window - (sum(durations) / len(durations) if durations else window)
    relogin_cpu = max(0.0, cpu_used - chat_cpu_per_s * online)
    micro = sorted(int(d * 1_000_000) for d in durations)
    back = sum(r["ok"] for r in replies)
    time.sleep(settings.storm_settle)  # the chat goes on with everybody back
    pool.call_all("storm_chat_stop", [{}] * workers)
    quiet = pool.call_all(
        "storm_quiesce", [{"timeout": settings.storm_drain}] * workers, timeout=300
    )
    counts = pool.call_all("storm_count", [{}] * workers)
    time.sleep(settings.storm_settle)
    rss_after = server.rss_kb() if server.running() else None

    def total(key: str) -> int:
        return int(sum(c[key] for c in counts))

    result: dict[str, Any] = {
        "scenario": "storm",
        "server": server.name,
        "drop": storm.drop,
        "mode": storm.name,
        "sessions": n,
        "back": back,
        "not_back": n - back,
        "errors": [e for r in replies for e in r["errors"]][:5],
        "resumed": sum(r["resumed"] for r in replies),
        "tls_resumed": sum(r["tls_resumed"] for r in replies),
        "attempts": sum(r["attempts"] for r in replies),
        "all_back_seconds": round(all_back, 3),
        "relogin_rate": round(back / all_back, 1) if all_back > 0 else None,
        "server_stop_seconds": stop_seconds,
        "server_start_seconds": start_seconds,
        "server_start_cpu_seconds": None if start_cpu is None else round(start_cpu, 3),
        "server_cpu_seconds": round(cpu_used, 3),
        "chat_cpu_pct": round(100 * chat_cpu_per_s, 1),
        "generator_cpu_pct": round(100 * generator_cpu / window, 1) if window > 0 else None,
        "server_cpu_pct": round(100 * cpu_used / window, 1) if window > 0 else None,
        "cpu_ms_per_relogin": round(1000 * relogin_cpu / back, 3) if back else None,
        "reconnect_p50_ms": percentile(micro, 50),
        "reconnect_p99_ms": percentile(micro, 99),
        "reconnect_max_ms": percentile(micro, 100),
        "chat_rate": settings.storm_rate,
        "sent": total("sent"),
        "acked": total("acked"),
        "received": total("received"),
        "lost": total("lost"),
        "duplicates": total("duplicates"),
        "resent": total("resent"),
        "late": total("late"),
        "late_repeated": total("late_repeated"),
        "unacked_at_end": sum(q["unacked"] for q in quiet),
        "error_stanzas": total("error_stanzas"),
        "lost_examples": [e for c in counts for e in c["lost_examples"]][:5],
        "rss_before_kb": rss_before,
        "rss_after_kb": rss_after,
        "first_wait_s": settings.storm_first_wait,
        "backoff_s": settings.storm_backoff,
        "backoff_cap_s": settings.storm_backoff_cap,
        "concurrency": settings.concurrency,
        "tls_resume_offered": settings.storm_tls_resume,
    }
    log(
        f"{server.name}: {storm.drop}/{storm.name}: {back}/{n} back in {all_back:.2f} s "
        f"(resumed {result['resumed']}, TLS resumed {result['tls_resumed']}), "
        f"p50 {fmt_ms(result['reconnect_p50_ms'])} p99 {fmt_ms(result['reconnect_p99_ms'])} ms, "
        f"{result['cpu_ms_per_relogin']} ms CPU/re-login (server core "
        f"{result['server_cpu_pct']} % busy, generator's {result['generator_cpu_pct']} %); "
        f"messages sent {result['sent']} "
        f"acked {result['acked']} lost {result['lost']} dup {result['duplicates']} "
        f"late {result['late']} (+{result['late_repeated']} repeated)"
        + (
            f"; server stop {stop_seconds} s, start {start_seconds} s"
            if start_seconds is not None
            else ""
        )
    )
    return result


def chat_cpu(server: Server, seconds: float) -> float:
    """What the chat alone costs the server (cores), subtracted from a storm's CPU:
    the median of one-second readings, so that a stretch of the previous storm's
    aftermath (a collection, hibernated sessions expiring) does not count as chat."""
    readings = []
    for _ in range(max(1, round(seconds))):
        c0, t0 = server.cpu_seconds(), time.monotonic()
        time.sleep(1.0)
        readings.append((server.cpu_seconds() - c0) / (time.monotonic() - t0))
    return float(statistics.median(readings))


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"
