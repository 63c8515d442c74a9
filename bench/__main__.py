"""CLI: ``python -m bench all|sessions|chat|echo-ceiling [options]``.

Every server under test runs pinned to core 0 (``taskset -c 0``); this process and the
generator workers run on core 1.  Results are printed as one JSON line per server and
scenario, followed by comparison tables; they are also appended to
``bench/results/<timestamp>.jsonl`` (plus a PNG chart of the chat sweep if matplotlib is
installed).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from bench.common import (
    GENERATOR_CPU,
    NICE,
    PASSWORD,
    RESULTS_DIR,
    SERVER_CPU,
    apply_nice,
    free_port,
    user_name,
)
from bench.report import chat_chart, chat_report, emit_json, sessions_report
from bench.scenarios import Settings, run_chat, run_sessions, wait_idle
from bench.servers import SERVERS, Server, ServerUnavailable, make_server

DEFAULT_SERVERS = "xmppd,prosody,ejabberd"


def _int_list(text: str) -> list[int]:
    return [int(float(x)) for x in text.replace(" ", "").split(",") if x]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Compare xmppd with Prosody and ejabberd on loopback (server on core "
        f"{SERVER_CPU}, generator on core {GENERATOR_CPU}).",
    )
    parser.add_argument(
        "command",
        choices=["all", "sessions", "chat", "echo-ceiling"],
        help="scenario(s) to run; every one also measures the generator ceiling (echo server)",
    )
    parser.add_argument("--servers", default=DEFAULT_SERVERS, help="comma-separated list")
    parser.add_argument("--sessions", type=int, help="sessions scenario size (default 1000)")
    parser.add_argument("--pairs", type=int, help="online chat pairs (default 500)")
    parser.add_argument("--rates", type=_int_list, help="chat sweep rates in msg/s, comma list")
    parser.add_argument("--echo-rates", type=_int_list, help="sweep rates for the echo ceiling")
    parser.add_argument("--step-seconds", type=float, help="duration of a sweep step (5)")
    parser.add_argument("--drain-seconds", type=float, default=2.0, help="wait after a step")
    parser.add_argument("--concurrency", type=int, default=200, help="logins in flight")
    parser.add_argument("--workers", type=int, default=2, help="generator processes for chat")
    parser.add_argument("--quick", action="store_true", help="small and short (~2 minutes)")
    parser.add_argument("--no-echo", action="store_true", help="skip the echo ceiling")
    parser.add_argument("--no-chart", action="store_true", help="do not draw the PNG chart")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--plain-storage",
        action="store_true",
        help="store plaintext passwords in Prosody and ejabberd (xmppd always hashes); "
        "by default every server stores SCRAM-SHA-1 with 4096 iterations",
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each scenario wait up to SECONDS for both cores to be nearly idle "
        "(other people's processes on a shared machine)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness for the servers and the generator (e.g. -10 as root on a shared "
        "machine, so that unrelated processes disturb the measurement less)",
    )
    args = parser.parse_args(argv)
    unknown = [s for s in args.servers.split(",") if s and s not in SERVERS]
    if unknown:
        parser.error(f"unknown server(s): {', '.join(unknown)}")
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    s = Settings()
    if args.quick:
        s.sessions, s.pairs = 200, 100
        s.rates = [1000, 2000, 5000, 10000]
        s.echo_rates = [5000, 10000, 20000, 30000, 40000]
        s.step_seconds = 2.0
    if args.sessions is not None:
        s.sessions = args.sessions
    if args.pairs is not None:
        s.pairs = args.pairs
    if args.rates:
        s.rates = args.rates
    if args.echo_rates:
        s.echo_rates = args.echo_rates
    if args.step_seconds is not None:
        s.step_seconds = args.step_seconds
    s.drain_seconds = args.drain_seconds
    s.concurrency = args.concurrency
    s.chat_workers = args.workers
    return s


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _terminate_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt so every ``finally`` runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        del frame
        raise KeyboardInterrupt(f"signal {signum}")

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _set_nice(value: int) -> None:
    if value == 0:
        return
    NICE["value"] = value
    try:
        os.setpriority(os.PRIO_PROCESS, 0, value)
    except OSError as exc:
        log(f"warning: cannot set niceness {value}: {exc}")
        return
    apply_nice(os.getpid(), value)
    log(f"niceness {value} (process and autogroup) for the servers and the generator")


def _pin_generator() -> None:
    cpus = os.sched_getaffinity(0)
    if SERVER_CPU not in cpus or GENERATOR_CPU not in cpus:
        log(f"warning: cores {SERVER_CPU} and {GENERATOR_CPU} are not both available: {cpus}")
        return
    os.sched_setaffinity(0, {GENERATOR_CPU})


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.settings = settings_from(args)
        self.scenarios = (
            ["sessions", "chat"] if args.command in ("all", "echo-ceiling") else [args.command]
        )
        self.servers = [s for s in args.servers.split(",") if s and s != "echo"]
        self.workdir = Path(tempfile.mkdtemp(prefix="xmppd-bench-"))
        stamp = time.strftime("%Y%m%d-%H%M%S")
        args.out.mkdir(parents=True, exist_ok=True)
        self.sink = args.out / f"{stamp}-{args.command}.jsonl"
        self.chart = args.out / f"{stamp}-chat.png"
        self.results: dict[str, list[dict[str, Any]]] = {"sessions": [], "chat": []}
        self.ceiling: dict[str, dict[str, Any] | None] = {"sessions": None, "chat": None}

    def run(self) -> int:
        started = time.monotonic()
        try:
            if not self.args.no_echo or self.args.command == "echo-ceiling":
                self.run_server("echo")
            if self.args.command != "echo-ceiling":
                for name in self.servers:
                    self.run_server(name)
        finally:
            if self.args.keep:
                log(f"kept {self.workdir}")
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)
        self.print_reports()
        log(f"done in {time.monotonic() - started:.0f} s; results in {self.sink}")
        failed = any("error" in r for rs in self.results.values() for r in rs)
        return 1 if failed else 0

    def _meta(self, server: Server) -> dict[str, Any]:
        return {
            "version": server.version(),
            "cpu": SERVER_CPU,
            "generator_cpu": GENERATOR_CPU,
            "nice": self.args.nice,
            "credential_storage": server.credential_storage(),
        }

    def run_server(self, name: str) -> None:
        server = make_server(name, self.workdir, free_port())
        server.plain_storage = self.args.plain_storage
        try:
            server.check_available()
            meta = self._meta(server)
        except Exception as exc:
            if not isinstance(exc, ServerUnavailable):
                exc = ServerUnavailable(f"availability check failed: {exc}")
            log(f"{name}: unavailable: {exc}")
            for scenario in self.scenarios:
                self.record(scenario, {"scenario": scenario, "server": name, "error": str(exc)})
            return
        try:
            log(f"{name}: {meta['version']}; port {server.port}; dir {server.dir}")
            server.configure()
            n_accounts = self.settings.accounts_needed(self.scenarios)
            t0 = time.monotonic()
            server.create_accounts([user_name(i) for i in range(n_accounts)], PASSWORD)
            meta["account_setup_seconds"] = round(time.monotonic() - t0, 1)
            log(f"{name}: {n_accounts} accounts ready in {meta['account_setup_seconds']} s")
        except Exception as exc:
            log(f"{name}: account setup failed: {exc}")
            for scenario in self.scenarios:
                self.record(
                    scenario, {"scenario": scenario, "server": name, "error": f"setup: {exc}"}
                )
            return
        for scenario in self.scenarios:
            if self.args.wait_idle > 0:
                wait_idle(self.args.wait_idle, log)
            try:
                if scenario == "sessions":
                    res = run_sessions(server, self.settings, log)
                else:
                    rates = self.settings.echo_rates if name == "echo" else self.settings.rates
                    res = run_chat(server, self.settings, log, rates)
            except Exception as exc:
                log(f"{name}: {scenario} failed: {exc}")
                traceback.print_exc(file=sys.stderr)
                res = {"scenario": scenario, "server": name, "error": str(exc)[:2000]}
            finally:
                server.stop()
            res.update(meta)
            self.record(scenario, res)

    def record(self, scenario: str, result: dict[str, Any]) -> None:
        if result["server"] == "echo":
            self.ceiling[scenario] = result
        else:
            ceiling = self.ceiling.get(scenario)
            if ceiling is not None and "error" not in ceiling:
                key = "login_rate" if scenario == "sessions" else "max_sustainable_rate"
                result["generator_ceiling"] = {key: ceiling.get(key)}
            self.results[scenario].append(result)
        emit_json(result, self.sink)

    def print_reports(self) -> None:
        print()
        if "sessions" in self.scenarios:
            print(
                sessions_report(
                    self.results["sessions"], self.ceiling["sessions"], self.settings.sessions
                )
            )
            print()
        if "chat" in self.scenarios:
            print(chat_report(self.results["chat"], self.ceiling["chat"], self.settings.pairs))
            if not self.args.no_chart:
                drawn = [*self.results["chat"]]
                if self.ceiling["chat"] is not None:
                    drawn.append(self.ceiling["chat"])
                if any("steps" in r for r in drawn):
                    path = chat_chart(drawn, self.chart)
                    if path is not None:
                        print(f"\nchart: {path}")
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _pin_generator()
    _set_nice(args.nice)
    with _terminate_on_sigterm():
        try:
            return Runner(args).run()
        except KeyboardInterrupt:
            log("interrupted; servers and generator processes stopped")
            return 130


if __name__ == "__main__":
    sys.exit(main())
