"""CLI: ``python -m bench SCENARIO`` (all, sessions, tls, chat, archive, presence,
archive-query, muc, storm, ws-sessions, ws-chat, upload, cluster, soak, beside,
echo-ceiling).

Every server under test runs pinned to core 0 (``taskset -c 0``); this process and the
generator workers run on core 1.  Results are printed as one JSON line per server and
scenario (and database, for the archive scenarios), followed by comparison tables; they are
also appended to ``bench/results/<timestamp>-<command>.jsonl`` (plus PNG charts of the
sweeps if matplotlib is installed).
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

from bench.archive import run_archive, run_archive_query
from bench.beside import beside_report, run_beside
from bench.certs import CertFiles, make_certificate
from bench.cluster import ClusterSettings, run_cluster
from bench.cluster import quick as cluster_quick
from bench.common import (
    DOMAIN,
    GENERATOR_CPU,
    NICE,
    PASSWORD,
    REPO_ROOT,
    RESULTS_DIR,
    SERVER_CPU,
    apply_nice,
    free_port,
    presence_rosters,
    user_name,
)
from bench.muc import LARGE_ROOM, run_muc
from bench.presence import run_presence
from bench.report import (
    archive_query_report,
    archive_report,
    chat_report,
    cluster_report,
    emit_json,
    muc_report,
    presence_report,
    sessions_report,
    storm_report,
    sweep_chart,
)
from bench.scenarios import Settings, run_chat, run_sessions, wait_idle
from bench.servers import SERVERS, Server, ServerUnavailable, make_server
from bench.soak import run_soak, soak_report
from bench.storm import run_storm
from bench.web import (
    WEB_SCENARIOS,
    WebSettings,
    run_upload,
    run_ws_chat,
    run_ws_sessions,
    upload_report,
    ws_chat_report,
    ws_sessions_report,
)
from bench.web import quick as web_quick

DEFAULT_SERVERS = "xmppd,prosody,ejabberd"
#: Every scenario, in the order ``all`` runs them.
SCENARIOS = ["sessions", "tls", "chat", "archive", "presence", "archive-query", "muc", "storm"]
SCENARIOS += WEB_SCENARIOS  # ws-sessions, ws-chat, upload (bench/web.py)
SCENARIOS += ["cluster"]  # xmppd only: two nodes and a Redis (bench/cluster.py)
SCENARIOS += ["soak"]  # xmppd only, not part of ``all``: memory over time (bench/soak.py)
SCENARIOS += ["beside"]  # not part of ``all``: chat beside a login storm (bench/beside.py)
#: Scenarios ``all`` leaves out (long runs of their own).
SEPARATE = ("soak", "beside")
#: Scenarios only xmppd has (the others have no such feature to compare).
XMPPD_ONLY = {
    "archive-query": "archive-query is measured for xmppd only",
    "cluster": "cluster is xmppd only (Prosody and ejabberd have no comparable Redis cluster)",
    "soak": "soak is measured for xmppd only (the goal is xmppd's own growth)",
}
#: Scenarios with an echo-server ceiling of their own (archive uses chat's).
ECHO_SCENARIOS = ("sessions", "tls", "chat", "presence")
#: Where ``--docs-charts`` copies the charts of the run.
DOCS_CHARTS = REPO_ROOT / "docs" / "benchmarks"


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
        choices=["all", *SCENARIOS, "echo-ceiling"],
        help="scenario(s) to run; each also measures the generator ceiling (echo server) "
        "where it has one",
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
    parser.add_argument("--tls-sessions", type=int, help="tls scenario size (default 1000)")
    parser.add_argument("--presence-users", type=int, help="presence accounts (1000)")
    parser.add_argument("--roster-size", type=int, help="contacts per presence account (100)")
    parser.add_argument("--presence-rates", type=_int_list, help="offline/online cycles/s")
    parser.add_argument("--presence-step-seconds", type=float, help="presence step length (3)")
    parser.add_argument("--archive-pairs", type=int, help="chat pairs with archive on (200)")
    parser.add_argument("--archive-rates", type=_int_list, help="archive sweep, msg/s")
    parser.add_argument("--archive-step-seconds", type=float, help="archive step length (2)")
    parser.add_argument(
        "--archive-backends",
        default="sqlite,postgresql",
        help="databases of the archive scenarios (sqlite,postgresql)",
    )
    parser.add_argument("--archive-messages", type=int, help="archive-query size (100000)")
    parser.add_argument("--archive-queries", type=int, help="archive-query repeats (20)")
    parser.add_argument("--muc-sizes", type=_int_list, help="muc: room sizes, occupants (100,500)")
    parser.add_argument(
        "--muc-large",
        action="store_true",
        help=f"muc: also a room of {LARGE_ROOM:,} (xmppd and ejabberd only)",
    )
    parser.add_argument(
        "--muc-rates", type=_int_list, help="muc sweep: offered deliveries/s, comma list"
    )
    parser.add_argument("--muc-step-seconds", type=float, help="muc step length (5)")
    parser.add_argument("--muc-senders", type=int, help="muc: occupants that send (5)")
    parser.add_argument(
        "--muc-join-concurrency", type=int, help="muc: joins in flight per generator (10)"
    )
    parser.add_argument("--ws-sessions", type=int, help="ws-sessions size (default 1000)")
    parser.add_argument("--ws-pairs", type=int, help="ws-chat online pairs (default 500)")
    parser.add_argument("--ws-rates", type=_int_list, help="ws-chat sweep rates, msg/s")
    parser.add_argument("--ws-step-seconds", type=float, help="ws-chat step length (5)")
    parser.add_argument("--upload-files", type=int, help="upload: parallel files (20)")
    parser.add_argument(
        "--upload-sizes", type=_int_list, help="upload: file sizes in bytes (1e6,1e7)"
    )
    parser.add_argument(
        "--storm-sessions", type=int, help="storm: sessions that drop and come back (10000)"
    )
    parser.add_argument(
        "--soak-churn", type=int, help="soak: logins and logouts of one account (100000)"
    )
    parser.add_argument("--soak-sessions", type=int, help="soak: TLS sessions online (10000)")
    parser.add_argument("--soak-rate", type=int, help="soak: chat messages/s in all (10000)")
    parser.add_argument("--soak-seconds", type=float, help="soak: chat duration (600)")
    parser.add_argument("--beside-rates", type=_int_list, help="beside: chat rates, msg/s (5000)")
    parser.add_argument(
        "--beside-logins", type=int, help="beside: logins in the storm of each step (10000)"
    )
    parser.add_argument("--storm-pairs", type=int, help="storm: chatting pairs among them (200)")
    parser.add_argument(
        "--storms",
        type=lambda v: [x.strip() for x in v.split(",") if x.strip()],
        help="storm: only these storms, drop/mode (cut/scram,cut/fast+resume,restart/fast...)",
    )
    parser.add_argument(
        "--no-storm-tls-resume",
        action="store_true",
        help="storm: clients never offer their last TLS session's ticket",
    )
    parser.add_argument("--storm-rate", type=int, help="storm: their messages/s in all (1000)")
    parser.add_argument("--cluster-pairs", type=int, help="cluster: chat pairs (200)")
    parser.add_argument("--cluster-rates", type=_int_list, help="cluster: rates, msg/s (2000,5000)")
    parser.add_argument("--cluster-step-seconds", type=float, help="cluster: step length (5)")
    parser.add_argument("--cluster-repeats", type=int, help="cluster: steps per rate (3)")
    parser.add_argument(
        "--cluster-idle-sessions", type=int, help="cluster: idle sessions for memory (2000)"
    )
    parser.add_argument(
        "--docs-charts",
        action="store_true",
        help=f"also copy the charts to {DOCS_CHARTS.relative_to(REPO_ROOT)}/ (final runs)",
    )
    parser.add_argument("--quick", action="store_true", help="small and short (~4 minutes)")
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
    backends = [b for b in args.archive_backends.split(",") if b]
    if not backends or any(b not in ("sqlite", "postgresql") for b in backends):
        parser.error("--archive-backends takes sqlite and/or postgresql")
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    s = Settings()
    if args.quick:
        s.sessions, s.pairs, s.tls_sessions = 200, 100, 200
        s.rates = [1000, 2000, 5000, 10000]
        s.echo_rates = [5000, 10000, 20000, 30000, 40000]
        s.step_seconds = 2.0
        s.presence_users = 200
        s.presence_rates = [25, 50, 100, 200]
        s.presence_echo_rates = [50, 100, 200, 400]
        s.presence_step_seconds = 2.0
        s.archive_pairs = 50
        s.archive_rates = [500, 1000, 2000, 5000]
        s.archive_step_seconds = 2.0
        s.archive_messages, s.archive_queries = 10_000, 5
        s.muc_sizes = [100]
        s.muc_rates = [5000, 10000, 20000, 40000, 60000, 80000, 100000]
        s.muc_step_seconds = 2.0
        s.storm_sessions, s.storm_pairs, s.storm_rate = 500, 50, 200
        s.storm_settle, s.storm_limit, s.storm_drain = 1.0, 120.0, 15.0
        s.storm_chat_baseline = 2.0
        s.soak_churn, s.soak_churn_warmup = 2_000, 200
        s.soak_sessions, s.soak_pairs, s.soak_rate = 1_000, 100, 2_000
        s.soak_seconds = 60.0
        s.beside_pairs, s.beside_logins, s.beside_step_seconds = 100, 2_000, 5.0
        s.beside_login_concurrency = 200
        s.beside_registrations = 100
    overrides = {
        "tls_sessions": args.tls_sessions,
        "presence_users": args.presence_users,
        "roster_size": args.roster_size,
        "presence_rates": args.presence_rates,
        "presence_step_seconds": args.presence_step_seconds,
        "archive_pairs": args.archive_pairs,
        "archive_rates": args.archive_rates,
        "archive_step_seconds": args.archive_step_seconds,
        "archive_messages": args.archive_messages,
        "archive_queries": args.archive_queries,
        "muc_sizes": args.muc_sizes,
        "muc_rates": args.muc_rates,
        "muc_step_seconds": args.muc_step_seconds,
        "muc_senders": args.muc_senders,
        "muc_join_concurrency": args.muc_join_concurrency,
        "storm_sessions": args.storm_sessions,
        "storm_pairs": args.storm_pairs,
        "storm_rate": args.storm_rate,
        "storm_only": args.storms,
        "storm_tls_resume": False if args.no_storm_tls_resume else None,
        "soak_churn": args.soak_churn,
        "soak_sessions": args.soak_sessions,
        "soak_rate": args.soak_rate,
        "soak_seconds": args.soak_seconds,
        "beside_rates": args.beside_rates,
        "beside_logins": args.beside_logins,
    }
    for name, value in overrides.items():
        if value is not None:
            setattr(s, name, value)
    s.muc_large = args.muc_large
    s.archive_backends = [b for b in args.archive_backends.split(",") if b]
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


def web_settings_from(args: argparse.Namespace) -> WebSettings:
    w = WebSettings()
    if args.quick:
        web_quick(w)
    overrides = {
        "ws_sessions": args.ws_sessions,
        "ws_pairs": args.ws_pairs,
        "ws_rates": args.ws_rates,
        "ws_step_seconds": args.ws_step_seconds,
        "upload_files": args.upload_files,
        "upload_sizes": args.upload_sizes,
    }
    for name, value in overrides.items():
        if value is not None:
            setattr(w, name, value)
    return w


def cluster_settings_from(args: argparse.Namespace) -> ClusterSettings:
    c = ClusterSettings()
    if args.quick:
        cluster_quick(c)
    overrides = {
        "pairs": args.cluster_pairs,
        "rates": args.cluster_rates,
        "step_seconds": args.cluster_step_seconds,
        "repeats": args.cluster_repeats,
        "idle_sessions": args.cluster_idle_sessions,
    }
    for name, value in overrides.items():
        if value is not None:
            setattr(c, name, value)
    return c


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
        self.web = web_settings_from(args)
        self.cluster = cluster_settings_from(args)
        if args.command == "all":
            self.scenarios = [s for s in SCENARIOS if s not in SEPARATE]
        elif args.command == "echo-ceiling":
            self.scenarios = list(ECHO_SCENARIOS)
        else:
            self.scenarios = [args.command]
        self.servers = [s for s in args.servers.split(",") if s and s != "echo"]
        self.workdir = Path(tempfile.mkdtemp(prefix="xmppd-bench-"))
        self.stamp = time.strftime("%Y%m%d-%H%M%S")
        args.out.mkdir(parents=True, exist_ok=True)
        self.sink = args.out / f"{self.stamp}-{args.command}.jsonl"
        self.results: dict[str, list[dict[str, Any]]] = {s: [] for s in SCENARIOS}
        self.ceiling: dict[str, dict[str, Any] | None] = {s: None for s in SCENARIOS}
        self.certs: CertFiles | None = None

    def run(self) -> int:
        started = time.monotonic()
        try:
            if any(s in self.scenarios for s in ("tls", "storm", "soak", "beside")):
                self.certs = make_certificate(self.workdir / "certs", DOMAIN)
            wants_echo = any(s in ECHO_SCENARIOS for s in self.scenarios)
            if wants_echo and (not self.args.no_echo or self.args.command == "echo-ceiling"):
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

    def _scenarios_for(self, name: str) -> list[str]:
        if name == "echo":
            return [s for s in self.scenarios if s in ECHO_SCENARIOS]
        if name == "xmppd":
            return self.scenarios
        for scenario, why in XMPPD_ONLY.items():
            if scenario in self.scenarios:
                log(f"{name}: {why}; skipped")
        return [s for s in self.scenarios if s not in XMPPD_ONLY]

    def _setup(self, server: Server, scenarios: list[str]) -> float:
        """Configure ``server`` and create its accounts; returns the seconds it took."""
        server.certs = self.certs
        server.configure()
        n_accounts = max(
            self.settings.accounts_needed(scenarios), self.web.accounts_needed(scenarios)
        )
        rosters = None
        if "presence" in scenarios:
            rosters = presence_rosters(self.settings.presence_users, self.settings.roster_size)
        users = [user_name(i) for i in range(n_accounts)] + list(rosters or ())
        t0 = time.monotonic()
        server.create_accounts(users, PASSWORD, rosters)
        seconds = round(time.monotonic() - t0, 1)
        items = sum(len(c) for c in (rosters or {}).values())
        log(f"{server.name}: {len(users)} accounts, {items} roster items ready in {seconds} s")
        return seconds

    def run_server(self, name: str) -> None:
        scenarios = self._scenarios_for(name)
        if not scenarios:
            return
        server = make_server(name, self.workdir, free_port())
        server.plain_storage = self.args.plain_storage
        try:
            server.check_available()
            meta = self._meta(server)
        except Exception as exc:
            if not isinstance(exc, ServerUnavailable):
                exc = ServerUnavailable(f"availability check failed: {exc}")
            log(f"{name}: unavailable: {exc}")
            for scenario in scenarios:
                self.record(scenario, {"scenario": scenario, "server": name, "error": str(exc)})
            return
        try:
            log(f"{name}: {meta['version']}; port {server.port}; dir {server.dir}")
            meta["account_setup_seconds"] = self._setup(server, scenarios)
        except Exception as exc:
            log(f"{name}: account setup failed: {exc}")
            for scenario in scenarios:
                self.record(
                    scenario, {"scenario": scenario, "server": name, "error": f"setup: {exc}"}
                )
            return
        for scenario in scenarios:
            if self.args.wait_idle > 0:
                wait_idle(self.args.wait_idle, log)
            try:
                results = self.run_scenario(scenario, server)
            except Exception as exc:
                log(f"{name}: {scenario} failed: {exc}")
                traceback.print_exc(file=sys.stderr)
                results = [{"scenario": scenario, "server": name, "error": str(exc)[:2000]}]
            finally:
                server.stop()
            for res in results:
                res.update(meta)
                self.record(scenario, res)

    def run_scenario(self, scenario: str, server: Server) -> list[dict[str, Any]]:
        echo = server.name == "echo"
        s = self.settings
        if scenario == "sessions":
            return [run_sessions(server, s, log)]
        if scenario == "tls":
            return [run_sessions(server, s, log, tls=True)]
        if scenario == "chat":
            return [run_chat(server, s, log, s.echo_rates if echo else s.rates)]
        if scenario == "presence":
            return [run_presence(server, s, log, s.presence_echo_rates if echo else None)]
        if scenario == "archive":
            return run_archive(server, s, log)
        if scenario == "archive-query":
            return run_archive_query(server, s, log)
        if scenario == "muc":
            return run_muc(server, s, log)
        if scenario == "storm":
            return run_storm(server, s, log)
        if scenario == "soak":
            return run_soak(server, s, log)
        if scenario == "beside":
            return run_beside(server, s, log)
        if scenario == "ws-sessions":
            return [run_ws_sessions(server, s, self.web, log)]
        if scenario == "ws-chat":
            return [run_ws_chat(server, s, self.web, log)]
        if scenario == "upload":
            return [run_upload(server, self.web, log)]
        if scenario == "cluster":
            return [run_cluster(server, s, self.cluster, log)]
        raise ValueError(f"unknown scenario {scenario!r}")

    def record(self, scenario: str, result: dict[str, Any]) -> None:
        if result["server"] == "echo":
            self.ceiling[scenario] = result
        else:
            ceiling = self.ceiling.get("chat" if scenario == "archive" else scenario)
            if ceiling is not None and "error" not in ceiling:
                key = "login_rate" if scenario in ("sessions", "tls") else "max_sustainable_rate"
                result["generator_ceiling"] = {key: ceiling.get(key)}
            self.results[scenario].append(result)
        emit_json(result, self.sink)

    def print_reports(self) -> None:
        s = self.settings
        reports = {
            "sessions": lambda: sessions_report(
                self.results["sessions"], self.ceiling["sessions"], s.sessions
            ),
            "tls": lambda: sessions_report(
                self.results["tls"], self.ceiling["tls"], s.tls_sessions, tls=True
            ),
            "chat": lambda: chat_report(self.results["chat"], self.ceiling["chat"], s.pairs),
            "archive": lambda: archive_report(
                self.results["archive"], self.ceiling["chat"], s.archive_pairs
            ),
            "presence": lambda: presence_report(
                self.results["presence"], self.ceiling["presence"], s
            ),
            "archive-query": lambda: archive_query_report(
                self.results["archive-query"], s.archive_messages
            ),
            "muc": lambda: muc_report(self.results["muc"]),
            "storm": lambda: storm_report(self.results["storm"]),
            "soak": lambda: soak_report(self.results["soak"]),
            "beside": lambda: beside_report(self.results["beside"]),
            "ws-sessions": lambda: ws_sessions_report(
                self.results["ws-sessions"], self.web.ws_sessions
            ),
            "ws-chat": lambda: ws_chat_report(self.results["ws-chat"], self.web.ws_pairs),
            "upload": lambda: upload_report(self.results["upload"]),
            "cluster": lambda: cluster_report(self.results["cluster"]),
        }
        print()
        for scenario in self.scenarios:
            print(reports[scenario]())
            print()
        if not self.args.no_chart:
            self.draw_charts()
        sys.stdout.flush()

    def draw_charts(self) -> None:
        charts = {
            "chat": ("1:1 chat latency vs offered rate", "offered rate (messages/s)"),
            "archive": (
                "1:1 chat with the archive on: latency vs offered rate",
                "offered rate (messages/s)",
            ),
            "presence": (
                "presence broadcast latency vs offline/online cycles",
                "offered rate (offline/online cycles per second)",
            ),
        }
        for scenario, (title, xlabel) in charts.items():
            if scenario not in self.scenarios:
                continue
            drawn = [r for r in self.results[scenario] if r.get("steps")]
            ceiling = self.ceiling["chat" if scenario == "archive" else scenario]
            if ceiling is not None and ceiling.get("steps") and scenario != "archive":
                drawn.append(ceiling)
            if not drawn:
                continue
            path = self.args.out / f"{self.stamp}-{scenario}.png"
            if sweep_chart(drawn, path, f"{title} (server on 1 core)", xlabel) is None:
                return
            print(f"chart: {path}")
            if self.args.docs_charts:
                DOCS_CHARTS.mkdir(parents=True, exist_ok=True)
                target = DOCS_CHARTS / f"{scenario}-latency.png"
                shutil.copyfile(path, target)
                print(f"chart copied to {target.relative_to(REPO_ROOT)}")


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
