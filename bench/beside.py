"""The ``beside`` scenario (issue #16, goal 3): 1:1 chat latency while a login storm,
or a wave of registrations, runs beside it.

Everything over STARTTLS with SCRAM-SHA-1, as phones connect: ``beside_pairs`` pairs
log in and chat at each of ``beside_rates`` messages/s in all, for
``beside_step_seconds`` per step, three times: once alone, then while a second
generator process logs ``beside_logins`` other accounts in, ``beside_login_concurrency``
logins in flight, started with the step (they stay online until the step's end, then
log out before the next one, which waits ``SETTLE_SECONDS`` for the server to end
them), then while that process registers
``beside_registrations`` new accounts in-band (XEP-0077, each on a connection of its
own after STARTTLS, all at once), started with the step. The second process runs at a
lower priority on the generator's core (``nice`` 10), so that the chat generator's
timestamps stay as exact as in the step alone; the logins go as fast as the rest of
that core allows. Reported per step: the chat's p50/p99/max and losses, the logins or
registrations done during the step and their rate, and the server's CPU share.

    python -m bench beside --servers xmppd,prosody,ejabberd
    python -m bench beside --quick        # 100 pairs, 2,000 logins, 5 s steps
"""

from __future__ import annotations

import os
import time
from typing import Any

from bench.common import PASSWORD, user_name
from bench.generator import GeneratorPool, split, workers_for
from bench.scenarios import Log, Settings, _chat_step, background_load, login_sessions
from bench.servers.base import Features, Server
from bench.xmpp import SCRAM_SHA1

LOGIN_NICE = 10
"""Niceness of the login generator (the chat generator's is the bench's own)."""
SETTLE_SECONDS = 5.0
"""Pause after the login storm's sessions logged out, before the next step."""


def run_beside(server: Server, settings: Settings, log: Log) -> list[dict[str, Any]]:
    background = background_load()
    with server.using(Features(tls=True, registration=True)):
        try:
            result = _beside(server, settings, log)
        except Exception as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        finally:
            server.stop()
    result["scenario"] = "beside"
    result["server"] = server.name
    result["background_busy_pct"] = background
    return [result]


def _beside(server: Server, settings: Settings, log: Log) -> dict[str, Any]:
    p = settings.beside_pairs
    chatting = [user_name(i) for i in range(2 * p)]
    targets = [f"{user_name(i ^ 1)}@{server.domain}" for i in range(2 * p)]
    others = [user_name(i) for i in range(2 * p, 2 * p + settings.beside_logins)]
    workers = max(settings.chat_workers, workers_for(2 * p, minimum=1))
    steps: list[dict[str, Any]] = []
    server.start()
    with GeneratorPool(workers) as pool, GeneratorPool(1) as logins:
        for proc in logins.procs:
            if proc.pid is not None:
                os.setpriority(os.PRIO_PROCESS, proc.pid, LOGIN_NICE)
        log(f"{server.name}: beside: logging in {2 * p} TLS sessions for {p} chat pairs")
        login = login_sessions(
            pool, server, chatting, settings, pair_targets=targets, mechanism=SCRAM_SHA1, tls=True
        )
        if login["failed"]:
            log(f"{server.name}: {login['failed']} logins failed: {login['errors'][:2]}")
        senders = login["per_worker_ok"]
        time.sleep(1.0)
        step = 0
        for rate in settings.beside_rates:
            for beside in ("none", "logins", "registrations"):
                storm = beside == "logins"
                step += 1
                chat_end = time.monotonic() + 0.3 + settings.beside_step_seconds
                if storm:
                    logins.send_all("login", [_login_args(server, others, settings)])
                elif beside == "registrations":
                    new = [f"new{step}x{i}" for i in range(settings.beside_registrations)]
                    logins.send_all("register", [_register_args(server, new, settings)])
                res = _chat_step(
                    server, pool, step, rate, senders, settings, settings.beside_step_seconds
                )
                res["storm"] = storm
                res["beside"] = beside
                if beside == "registrations":
                    done = logins.gather("register", timeout=settings.login_timeout + 600)[0]
                    res["registrations_ok"] = done["ok"]
                    res["registrations_failed"] = done["failed"]
                    res["registration_errors"] = done["errors"]
                    res["registration_seconds"] = round(done["finished"] - done["started"], 2)
                    pool.call_all("quiesce", [{"quiet": 1.0, "timeout": 60.0}] * len(pool))
                if storm:
                    done = logins.gather("login", timeout=settings.login_timeout + 600)[0]
                    res["storm_logins_ok"] = done["ok"]
                    res["storm_logins_failed"] = done["failed"]
                    res["storm_login_errors"] = done["errors"]
                    # The logins' own window (time.monotonic is system-wide on Linux).
                    res["storm_login_seconds"] = round(done["finished"] - done["started"], 2)
                    res["storm_covers_step"] = done["finished"] >= chat_end
                    logins.call_all("close", [{}])
                    pool.call_all("quiesce", [{"quiet": 1.0, "timeout": 60.0}] * len(pool))
                    # The storm's sessions all log out at once: let the server finish
                    # with them before the next step measures something else.
                    time.sleep(SETTLE_SECONDS)
                steps.append(res)
                log(
                    f"{server.name}: beside: {rate} msg/s beside {beside}: "
                    f"p99 {res['p99_ms']} ms, lost {res['lost']}, server CPU "
                    f"{res['server_cpu_pct']} %"
                    + (
                        f"; {res['storm_logins_ok']} logins in {res['storm_login_seconds']} s"
                        if storm
                        else ""
                    )
                    + (
                        f"; {res['registrations_ok']} registrations "
                        f"({res['registrations_failed']} failed) in "
                        f"{res['registration_seconds']} s"
                        if beside == "registrations"
                        else ""
                    )
                )
                if not server.running():
                    break
        alive = server.running()
        pool.call_all("close", [{}] * len(pool))
    return {
        "pairs": p,
        "sessions_ok": login["ok"],
        "login_failed": login["failed"],
        "logins_beside": settings.beside_logins,
        "login_concurrency": settings.beside_login_concurrency,
        "registrations_beside": settings.beside_registrations,
        "step_seconds": settings.beside_step_seconds,
        "steps": steps,
        "server_alive_after": alive,
    }


def _login_args(server: Server, users: list[str], settings: Settings) -> dict[str, Any]:
    (part,) = split(users, 1)
    return {
        "host": "127.0.0.1",
        "port": server.port,
        "domain": server.domain,
        "users": part,
        "password": PASSWORD,
        "concurrency": settings.beside_login_concurrency,
        "timeout": settings.login_timeout,
        "mechanism": SCRAM_SHA1,
        "tls": True,
    }


def _register_args(server: Server, users: list[str], settings: Settings) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": server.port,
        "domain": server.domain,
        "users": users,
        "password": PASSWORD,
        "concurrency": len(users),
        "timeout": settings.login_timeout,
        "tls": True,
    }


def beside_report(results: list[dict[str, Any]]) -> str:
    lines = ["== beside: 1:1 chat over TLS alone, beside a login storm, beside registrations =="]
    header = (
        f"{'server':<9} {'rate':>6} {'beside':>13} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
        f"{'lost':>5} {'srv cpu%':>8} {'gen lag ms':>10} {'done ok':>9} {'seconds':>8} "
        f"{'per s':>8}"
    )
    lines.append(header)
    lines.append("-" * len(header))
    for r in results:
        if "error" in r:
            lines.append(f"{r['server']:<9} error: {r['error']}")
            continue
        for s in r["steps"]:
            beside = s.get("beside", "logins" if s["storm"] else "none")
            ok = s.get("registrations_ok" if beside == "registrations" else "storm_logins_ok")
            seconds = s.get(
                "registration_seconds" if beside == "registrations" else "storm_login_seconds"
            )
            per_s = f"{ok / seconds:,.0f}" if ok and seconds else "-"
            lines.append(
                f"{r['server']:<9} {s['rate']:>6,} {beside:>13} "
                f"{_ms(s['p50_ms'])} {_ms(s['p99_ms'])} {_ms(s['max_ms'])} {s['lost']:>5} "
                f"{s['server_cpu_pct']:>8} {s['generator_max_lag_ms']:>10} "
                f"{ok if ok is not None else '-':>9} "
                f"{seconds if seconds is not None else '-':>8} {per_s:>8}"
            )
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return f"{'-' if value is None else f'{value:.1f}':>7}"
