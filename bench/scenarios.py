"""The measured scenarios: ``sessions`` (memory and login rate) and ``chat`` (latency sweep)."""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.common import (
    GENERATOR_CPU,
    PASSWORD,
    SERVER_CPU,
    cpu_busy_pct,
    cpu_sample,
    cpu_seconds,
    user_name,
)
from bench.generator import GeneratorPool, split, workers_for
from bench.servers.base import Features, Server
from bench.xmpp import PLAIN, SCRAM_SHA1

#: A step passes when its p99 latency is below this and nothing was lost.
P99_LIMIT_MS = 100.0
#: The sweep always runs at least up to this rate (the "p99 at 5,000 msgs/s" figure).
REFERENCE_RATE = 5000


@dataclass
class Settings:
    sessions: int = 1000
    pairs: int = 500
    rates: list[int] = field(
        default_factory=lambda: [1000, 2000, 3000, 5000, 7500, 10000, 15000, 20000, 25000, 30000]
    )
    echo_rates: list[int] = field(
        default_factory=lambda: [10000, 20000, 40000, 60000, 100000, 150000]
    )
    step_seconds: float = 5.0
    drain_seconds: float = 2.0
    concurrency: int = 200
    chat_workers: int = 2
    login_timeout: float = 120.0
    #: ``tls``: sessions logged in over STARTTLS with SCRAM-SHA-1
    tls_sessions: int = 1000
    #: ``presence``: accounts online, contacts per roster, offline/online cycles per second
    presence_users: int = 1000
    roster_size: int = 100
    presence_rates: list[int] = field(
        default_factory=lambda: [25, 50, 100, 200, 300, 400, 600, 800, 1000]
    )
    presence_echo_rates: list[int] = field(default_factory=lambda: [100, 200, 400, 800, 1200, 1600])
    presence_step_seconds: float = 3.0
    #: ``archive``: chat pairs and sweep with every message archived, per database
    archive_pairs: int = 200
    archive_rates: list[int] = field(
        default_factory=lambda: [500, 1000, 2000, 3000, 5000, 7500, 10000, 15000]
    )
    archive_step_seconds: float = 2.0
    archive_backends: list[str] = field(default_factory=lambda: ["sqlite", "postgresql"])
    #: ``archive-query``: archive size of the one queried account, queries per kind
    archive_messages: int = 100_000
    archive_queries: int = 20
    #: ``muc``: room sizes, the 5,000-occupant room (xmppd and ejabberd), offered
    #: deliveries per second (messages/s x occupants), step length, senders, joins in flight
    muc_sizes: list[int] = field(default_factory=lambda: [100, 500])
    muc_large: bool = False
    muc_rates: list[int] = field(
        default_factory=lambda: [
            2000,
            5000,
            10000,
            20000,
            30000,
            50000,
            75000,
            100000,
            150000,
            200000,
            300000,
        ]
    )
    muc_step_seconds: float = 5.0
    muc_senders: int = 5
    muc_join_concurrency: int = 10
    #: ``storm``: sessions, chatting pairs among them and their messages/s in all; the
    #: clients' reconnect model (first wait drawn from [0, first), then exponential
    #: back-off with full jitter from ``backoff`` up to ``backoff_cap`` seconds); how
    #: long the chat runs before and after a storm, how long a storm may take and how
    #: long the senders wait for the last acknowledgements
    storm_sessions: int = 10_000
    storm_pairs: int = 200
    storm_rate: int = 1000
    storm_first_wait: float = 1.0
    storm_backoff: float = 1.0
    storm_backoff_cap: float = 30.0
    storm_settle: float = 2.0
    #: seconds of chat alone before each storm, read second by second (the median is
    #: the chat's CPU, subtracted from the storm's)
    storm_chat_baseline: float = 5.0
    storm_limit: float = 300.0
    storm_drain: float = 30.0
    #: the clients offer their last TLS session's ticket when they reconnect, as
    #: phones' TLS stacks do (only a server that issues tickets resumes)
    storm_tls_resume: bool = True
    #: run only these storms ("cut/scram", "restart/fast", "cut/fast+resume"...; None:
    #: every storm of :func:`bench.storm.storm_plan`)
    storm_only: list[str] | None = None
    #: ``soak`` (bench/soak.py): logins and logouts of one account (after a warm-up),
    #: logins in flight; then sessions online, chatting pairs among them, their
    #: messages/s in all, for how long, RSS read every ``soak_sample`` seconds
    soak_churn: int = 100_000
    soak_churn_warmup: int = 1_000
    soak_churn_concurrency: int = 50
    soak_sessions: int = 10_000
    soak_pairs: int = 500
    soak_rate: int = 10_000
    soak_seconds: float = 600.0
    soak_sample: float = 10.0
    #: ``beside`` (bench/beside.py): chat pairs over TLS, their rates, each step alone
    #: and beside a login storm of this many other accounts, so many in flight
    beside_pairs: int = 500
    beside_rates: list[int] = field(default_factory=lambda: [5000])
    beside_step_seconds: float = 10.0
    beside_logins: int = 10_000
    beside_login_concurrency: int = 1000
    beside_registrations: int = 500

    def accounts_needed(self, scenarios: Sequence[str]) -> int:
        need = 0
        if "sessions" in scenarios:
            need = max(need, self.sessions)
        if "tls" in scenarios:
            need = max(need, self.tls_sessions)
        if "chat" in scenarios:
            need = max(need, 2 * self.pairs)
        if "archive" in scenarios:
            need = max(need, 2 * self.archive_pairs)
        if "archive-query" in scenarios:
            need = max(need, ARCHIVE_PEERS + 1)
        if "storm" in scenarios:
            need = max(need, self.storm_sessions)
        if "soak" in scenarios:
            need = max(need, self.soak_sessions)
        if "beside" in scenarios:
            need = max(need, 2 * self.beside_pairs + self.beside_logins)
        if "muc" in scenarios:
            need = max(need, *self.muc_sizes, *([5000] if self.muc_large else []))
        return need


#: Conversation partners of the account whose archive is queried (``archive-query``).
ARCHIVE_PEERS = 50


Log = Callable[[str], None]


def percentile(sorted_values: Sequence[int], q: float) -> float | None:
    if not sorted_values:
        return None
    rank = max(0, min(len(sorted_values) - 1, round(q / 100.0 * len(sorted_values)) - 1))
    return sorted_values[rank] / 1000.0  # microseconds -> milliseconds


class Usage:
    """CPU time used by the server and by the generator workers over an interval."""

    def __init__(self, server: Server, pool: GeneratorPool) -> None:
        self.server = server
        self.worker_pids = [p.pid for p in pool.procs if p.pid is not None]
        self.t0 = time.monotonic()
        self.s0 = server.cpu_seconds()
        self.g0 = sum(cpu_seconds(pid) for pid in self.worker_pids)

    def percent(self) -> tuple[float | None, float | None]:
        wall = time.monotonic() - self.t0
        if wall <= 0:
            return None, None
        s = self.server.cpu_seconds() - self.s0
        g = sum(cpu_seconds(pid) for pid in self.worker_pids) - self.g0
        return round(100 * s / wall, 1), round(100 * g / wall, 1)


def login_sessions(
    pool: GeneratorPool,
    server: Server,
    users: list[str],
    settings: Settings,
    pair_targets: list[str] | None = None,
    mechanism: str = PLAIN,
    tls: bool = False,
    ws_url: str = "",
) -> dict[str, Any]:
    """Log ``users`` in through the pool (pairs kept in one worker); aggregate the replies.

    ``ws_url``: over XMPP over WebSocket at this URL instead of TCP."""
    n = len(pool)
    user_parts = split(users, n, chunk=2)
    target_parts = split(pair_targets, n, chunk=2) if pair_targets is not None else None
    per_worker = max(1, settings.concurrency // n)
    args = []
    for i in range(n):
        arg: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": server.port,
            "domain": server.domain,
            "users": user_parts[i],
            "password": PASSWORD,
            "concurrency": per_worker,
            "timeout": settings.login_timeout,
            "mechanism": mechanism,
            "tls": tls,
        }
        if ws_url:
            arg["ws_url"] = ws_url
        if target_parts is not None:
            arg["pair_targets"] = target_parts[i]
        args.append(arg)
    before = cpu_sample()
    usage = Usage(server, pool)
    replies = pool.call_all("login", args, timeout=settings.login_timeout + 3600)
    after = cpu_sample()
    server_pct, generator_pct = usage.percent()
    ok = sum(r["ok"] for r in replies)
    started = min(r["started"] for r in replies)
    finished = max(r["finished"] for r in replies)
    durations: list[float] = []
    for r in replies:
        d = array("d")
        d.frombytes(r["durations"])
        durations.extend(d)
    durations.sort()
    elapsed = finished - started
    errors = [e for r in replies for e in r["errors"]][:5]
    return {
        "tls": sorted({t for r in replies for t in r["tls"]}),
        "ok": ok,
        "per_worker_ok": [r["ok"] for r in replies],
        "failed": len(users) - ok,
        "errors": errors,
        "seconds": round(elapsed, 3),
        "rate": round(ok / elapsed, 1) if elapsed > 0 else None,
        "p50_ms": round(durations[len(durations) // 2] * 1000, 1) if durations else None,
        "p99_ms": (
            round(durations[min(len(durations) - 1, int(len(durations) * 0.99))] * 1000, 1)
            if durations
            else None
        ),
        "server_cpu_pct": server_pct,
        "generator_cpu_pct": generator_pct,
        "core0_busy_pct": cpu_busy_pct(before, after, SERVER_CPU),
        "core1_busy_pct": cpu_busy_pct(before, after, GENERATOR_CPU),
    }


def background_load(seconds: float = 1.0) -> dict[str, float | None]:
    """Busy share of both cores while nothing of ours runs (others' processes)."""
    before = cpu_sample()
    time.sleep(seconds)
    after = cpu_sample()
    return {
        "core0": cpu_busy_pct(before, after, SERVER_CPU),
        "core1": cpu_busy_pct(before, after, GENERATOR_CPU),
    }


def wait_idle(limit: float, log: Log, threshold: float = 20.0) -> None:
    """Wait (at most ``limit`` s) until both cores are below ``threshold`` % busy."""
    deadline = time.monotonic() + limit
    while True:
        load = background_load(0.5)
        if all(v is not None and v < threshold for v in load.values()):
            return
        if time.monotonic() >= deadline:
            log(f"machine still busy after {limit:.0f} s ({load}); measuring anyway")
            return


IDLE_SECONDS = 12.0
"""How long sessions stay idle before the second memory reading."""


def run_sessions(server: Server, settings: Settings, log: Log, tls: bool = False) -> dict[str, Any]:
    """N sessions logged in with ``concurrency`` logins in flight; RSS before/after.

    ``tls`` (the ``tls`` scenario): over STARTTLS with SCRAM-SHA-1 instead of plain TCP
    with PLAIN; the server runs with :attr:`Features.tls`.
    """
    background = background_load()
    with server.using(Features(tls=tls)):
        result = _sessions(server, settings, log, tls)
    result["background_busy_pct"] = background
    return result


def _sessions(server: Server, settings: Settings, log: Log, tls: bool) -> dict[str, Any]:
    n = settings.tls_sessions if tls else settings.sessions
    mechanism = SCRAM_SHA1 if tls else PLAIN
    users = [user_name(i) for i in range(n)]
    workers = workers_for(n)
    server.start()
    try:
        with GeneratorPool(workers) as pool:
            time.sleep(1.0)
            rss_before = server.rss_kb()
            log(
                f"{server.name}: logging in {n} sessions ({workers} generator processes, "
                f"{mechanism}{', STARTTLS' if tls else ''})"
            )
            login = login_sessions(pool, server, users, settings, mechanism=mechanism, tls=tls)
            time.sleep(2.0)  # let the server settle (GC, buffers) before reading RSS
            rss_after = server.rss_kb()
            # The same sessions after IDLE_SECONDS without traffic: what an idle
            # authenticated session costs once the server has had time to notice.
            time.sleep(IDLE_SECONDS - 2.0)
            rss_idle: int | None = server.rss_kb()
            idle = "" if rss_idle is None else f", {rss_idle / 1024:.1f} MiB after "
            log(
                f"{server.name}: {login['ok']}/{n} sessions in {login['seconds']}s, "
                f"RSS {rss_before / 1024:.1f} -> {rss_after / 1024:.1f} MiB"
                + (f"{idle}{IDLE_SECONDS:.0f} s idle" if idle else "")
            )
            alive = server.running()
            pool.call_all("close", [{}] * len(pool))
    finally:
        server.stop()
    ok = login["ok"]
    return {
        "scenario": "tls" if tls else "sessions",
        "server": server.name,
        "sessions": n,
        "mechanism": mechanism,
        "tls": login["tls"] if tls else None,
        "sessions_ok": ok,
        "login_failed": login["failed"],
        "login_errors": login["errors"],
        "concurrency": settings.concurrency,
        "generator_processes": workers,
        "rss_before_kb": rss_before,
        "rss_after_kb": rss_after,
        "kb_per_session": round((rss_after - rss_before) / ok, 2) if ok else None,
        "rss_idle_kb": rss_idle,
        "kb_per_idle_session": (
            round((rss_idle - rss_before) / ok, 2) if ok and rss_idle is not None else None
        ),
        "login_rate": login["rate"],
        "login_seconds": login["seconds"],
        "login_p50_ms": login["p50_ms"],
        "login_p99_ms": login["p99_ms"],
        "server_cpu_pct": login["server_cpu_pct"],
        "generator_cpu_pct": login["generator_cpu_pct"],
        "core0_busy_pct": login["core0_busy_pct"],
        "core1_busy_pct": login["core1_busy_pct"],
        "server_alive_after": alive,
    }


def _chat_step(
    server: Server,
    pool: GeneratorPool,
    step: int,
    rate: int,
    senders_per_worker: list[int],
    settings: Settings,
    step_seconds: float,
    echo: bool = False,
) -> dict[str, Any]:
    total_senders = sum(senders_per_worker)
    start_at = time.monotonic() + 0.3
    args = [
        {
            "step": step,
            "rate": rate * k / total_senders if total_senders else 0.0,
            "duration": step_seconds,
            "start_at": start_at,
            "drain": settings.drain_seconds,
        }
        for k in senders_per_worker
    ]
    pool.send_all("chat_step", args)
    # CPU use of both cores over the sending window (the orchestrator itself sleeps).
    time.sleep(max(0.0, start_at - time.monotonic()))
    before = cpu_sample()
    usage = Usage(server, pool)
    time.sleep(step_seconds)
    after = cpu_sample()
    server_pct, generator_pct = usage.percent()
    replies = pool.gather("chat_step", timeout=settings.drain_seconds + 120)
    lat = array("q")
    for r in replies:
        part = array("q")
        part.frombytes(r["lat"])
        lat.extend(part)
    values = sorted(lat)
    sent = sum(r["sent"] for r in replies)
    received = len(values)
    send_seconds = max(r["send_seconds"] for r in replies)
    loss = max(0, sent - received)
    p99 = percentile(values, 99)
    result = {
        "rate": rate,
        "sent": sent,
        "received": received,
        "lost": loss,
        "loss_pct": round(100.0 * loss / sent, 3) if sent else None,
        "achieved_rate": round(sent / send_seconds, 1) if send_seconds > 0 else None,
        "p50_ms": percentile(values, 50),
        "p90_ms": percentile(values, 90),
        "p99_ms": p99,
        "max_ms": values[-1] / 1000.0 if values else None,
        "generator_max_lag_ms": round(max(r["max_lag"] for r in replies) * 1000, 1),
        "error_stanzas": sum(r["errors"] for r in replies),
        "misrouted": sum(r["misrouted"] for r in replies),
        "server_cpu_pct": server_pct,
        "generator_cpu_pct": generator_pct,
        "core0_busy_pct": cpu_busy_pct(before, after, SERVER_CPU),
        "core1_busy_pct": cpu_busy_pct(before, after, GENERATOR_CPU),
    }
    # The echo server returns every message to its sender, so only real servers are held
    # to delivering each message to the addressed session.
    routed = echo or result["misrouted"] == 0
    result["ok"] = bool(sent and loss == 0 and routed and p99 is not None and p99 < P99_LIMIT_MS)
    return result


@dataclass(frozen=True)
class ChatPlan:
    """One chat sweep: pairs online, offered rates, step length, the reference rate
    (always run; its p99 is reported), and the scenario name of the result."""

    pairs: int
    rates: list[int]
    step_seconds: float
    reference: int = REFERENCE_RATE
    scenario: str = "chat"
    warmup_seconds: float = 0.0
    """Traffic at the first rate before the sweep, not recorded (connection pools,
    prepared statements and caches of a database get going)."""
    drain_limit: float = 20.0
    """Seconds a server may take to work off a failed step's backlog before the next step;
    the sweep stops when it takes longer."""
    ws_url: str = ""
    """Sessions over XMPP over WebSocket at this URL (``ws-chat``); empty: TCP."""


def chat_plan(settings: Settings, rates: Sequence[int] | None = None) -> ChatPlan:
    return ChatPlan(settings.pairs, list(rates or settings.rates), settings.step_seconds)


def run_chat(
    server: Server, settings: Settings, log: Log, rates: Sequence[int] | None = None
) -> dict[str, Any]:
    """P pairs online; fixed-rate sweep of 1:1 chat messages; latency and loss per step."""
    with server.using(Features()):
        return chat_sweep(server, settings, log, chat_plan(settings, rates))


def chat_sweep(
    server: Server,
    settings: Settings,
    log: Log,
    plan: ChatPlan,
    db_usage: Callable[[], float | None] | None = None,
) -> dict[str, Any]:
    """The chat sweep on ``server`` as configured now (started and stopped here).

    ``db_usage`` (archive on PostgreSQL) returns the database's CPU seconds so far; each
    step then also reports the database's CPU share.
    """
    rates = plan.rates
    p = plan.pairs
    users = [user_name(i) for i in range(2 * p)]
    # user 2k talks to 2k+1 and back; a pair always lives in one generator process
    targets = [f"{user_name(i ^ 1)}@{server.domain}" for i in range(2 * p)]
    workers = max(settings.chat_workers, workers_for(2 * p, minimum=1))
    steps: list[dict[str, Any]] = []
    background = background_load()
    server.start()
    try:
        with GeneratorPool(workers) as pool:
            log(f"{server.name}: logging in {2 * p} sessions for {p} chat pairs")
            login = login_sessions(
                pool, server, users, settings, pair_targets=targets, ws_url=plan.ws_url
            )
            if login["failed"]:
                log(f"{server.name}: {login['failed']} logins failed: {login['errors'][:2]}")
            senders_per_worker: list[int] = login["per_worker_ok"]
            time.sleep(1.0)
            warmup_sent = 0
            if plan.warmup_seconds > 0:
                warmup = _chat_step(
                    server, pool, 0, rates[0], senders_per_worker, settings, plan.warmup_seconds
                )
                warmup_sent = warmup["sent"]
                pool.call_all(
                    "quiesce", [{"quiet": 0.5, "timeout": plan.drain_limit}] * len(pool), timeout=60
                )
            for step, rate in enumerate(rates, start=1):
                db0 = db_usage() if db_usage else None
                t0 = time.monotonic()
                res = _chat_step(
                    server,
                    pool,
                    step,
                    rate,
                    senders_per_worker,
                    settings,
                    plan.step_seconds,
                    echo=server.name == "echo",
                )
                db1 = db_usage() if db_usage else None
                if db0 is not None and db1 is not None:
                    res["db_cpu_pct"] = round(100 * (db1 - db0) / (time.monotonic() - t0), 1)
                steps.append(res)
                log(
                    f"{server.name}: {rate:>6} msg/s  p50 {fmt(res['p50_ms'])}  "
                    f"p99 {fmt(res['p99_ms'])}  max {fmt(res['max_ms'])} ms  "
                    f"lost {res['lost']}  misrouted {res['misrouted']}  "
                    f"cpu: server {res['server_cpu_pct']}% "
                    f"(core0 {res['core0_busy_pct']}%) generator {res['generator_cpu_pct']}% "
                    f"(core1 {res['core1_busy_pct']}%)  {'ok' if res['ok'] else 'FAIL'}"
                )
                if not res["ok"] and rate >= plan.reference:
                    break  # the sweep ends here: no need to wait for the backlog
                if not server.running():
                    log(f"{server.name}: server process died")
                    break
                quiet = pool.call_all(
                    "quiesce", [{"quiet": 0.5, "timeout": plan.drain_limit}] * len(pool), timeout=60
                )
                if not all(q["quiet"] for q in quiet):
                    log(
                        f"{server.name}: still receiving a backlog {plan.drain_limit:.0f} s "
                        "after the step; stop"
                    )
                    break
            pool.call_all("close", [{}] * len(pool))
    finally:
        server.stop()
    passing = [s["rate"] for s in steps if s["ok"]]
    at_ref = next((s for s in steps if s["rate"] == plan.reference), None)
    return {
        "scenario": plan.scenario,
        "server": server.name,
        "pairs": p,
        "sessions_ok": login["ok"],
        "login_failed": login["failed"],
        "login_errors": login["errors"],
        "generator_processes": workers,
        "step_seconds": plan.step_seconds,
        "warmup_sent": warmup_sent,
        "steps": steps,
        "max_sustainable_rate": max(passing) if passing else 0,
        "reference_rate": plan.reference,
        f"p99_at_{plan.reference}_ms": at_ref["p99_ms"] if at_ref else None,
        f"loss_at_{plan.reference}": at_ref["lost"] if at_ref else None,
        "background_busy_pct": background,
    }


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:7.1f}"
