"""Scenarios ``archive`` (1:1 chat with every message archived) and ``archive-query``
(XEP-0313 query times on a 100,000-message archive).

``archive``: the chat sweep of :func:`bench.scenarios.chat_sweep` (fewer pairs, shorter
steps, reference rate 1,000 msg/s) with the server's message archive on for every account,
once per database (SQLite, PostgreSQL).  Each run starts from an empty archive in a
database of its own; after it the archive's rows are counted (two per delivered message:
the sender's and the recipient's copy), so a configuration that silently archives nothing
shows up.  PostgreSQL is the system's shared service, not pinned: the CPU time of the
backends serving the run's database is reported separately (``db_cpu_pct``).

``archive-query`` (xmppd): the archive of one account is filled directly in the database
(``archive_messages`` chat messages with 50 peers, one minute apart), then the account logs
in and times, ``archive_queries`` times each, interleaved: the last page (RSM ``max`` 50,
``<before/>``), a page from the middle (``after-id`` = the id of the middle message), the
last page with one peer (``with``), and a full-text search for a word in ~0.5 % of the
messages (XEP-0431).  Time = from writing the IQ to reading its result, i.e. with the 50
result messages before it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from bench import pg
from bench.common import PASSWORD, user_name
from bench.generator import GeneratorPool
from bench.scenarios import (
    ARCHIVE_PEERS,
    ChatPlan,
    Log,
    Settings,
    background_load,
    chat_sweep,
    login_sessions,
)
from bench.servers.base import ArchiveBackend, Features, Server, ServerUnavailable
from bench.xmppd_data import MARKER

#: The p99 of the archive sweep is reported at this rate.
ARCHIVE_REFERENCE = 1000
RSM = "http://jabber.org/protocol/rsm"
MAM = "urn:xmpp:mam:2"
PAGE = 50


def run_archive(
    server: Server, settings: Settings, log: Log, rates: list[int] | None = None
) -> list[dict[str, Any]]:
    """One chat sweep with the archive on per backend of ``settings.archive_backends``."""
    plan = ChatPlan(
        settings.archive_pairs,
        rates or settings.archive_rates,
        settings.archive_step_seconds,
        reference=ARCHIVE_REFERENCE,
        scenario="archive",
        warmup_seconds=1.0,
        drain_limit=10.0,
    )
    users = [user_name(i) for i in range(2 * plan.pairs)]
    results = []
    for backend in settings.archive_backends:
        assert backend in ("sqlite", "postgresql")
        try:
            res = _archive_run(server, settings, log, plan, users, backend)  # type: ignore[arg-type]
        except Exception as exc:
            log(f"{server.name}: archive on {backend} failed: {exc}")
            res = {"scenario": "archive", "server": server.name, "error": str(exc)[:2000]}
        res["backend"] = backend
        results.append(res)
    return results


def _archive_run(
    server: Server,
    settings: Settings,
    log: Log,
    plan: ChatPlan,
    users: list[str],
    backend: ArchiveBackend,
) -> dict[str, Any]:
    log(f"{server.name}: archive on {backend}")
    with server.using(Features(archive=backend), users, PASSWORD):
        usage: Callable[[], float | None] | None = None
        if server.pg_database is not None:
            usage = pg.BackendCpu(server.pg_database).seconds
        res = chat_sweep(server, settings, log, plan, db_usage=usage)
        delivered = sum(s["received"] for s in res["steps"])
        rows = server.archive_rows()
    sent = sum(s["sent"] for s in res["steps"]) + res["warmup_sent"]
    res["archived_rows"] = rows
    res["sent_messages"] = sent
    res["delivered_messages"] = delivered
    # 2.0 when every message sent was archived for both parties (a server that was
    # still working off a backlog when it was stopped archived fewer).
    res["archived_per_message"] = round(rows / sent, 3) if rows is not None and sent else None
    if (rows or 0) < 1.9 * delivered:
        res["archive_warning"] = f"only {rows} archive rows for {delivered} messages"
        log(f"{server.name}: {res['archive_warning']}")
    return res


# ----------------------------------------------------------------------------- queries


def _form(fields: dict[str, str]) -> bytes:
    out = (
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
        f"<value>{MAM}</value></field>"
    )
    for var, value in fields.items():
        out += f"<field var='{var}'><value>{value}</value></field>"
    return (out + "</x>").encode()


def _query(fields: dict[str, str], rsm: str) -> bytes:
    """An IQ template (``%s``: its id) for a MAM query."""
    return (
        b"<iq type='set' id='%s'><query xmlns='"
        + MAM.encode()
        + b"' queryid='q'>"
        + (_form(fields) if fields else b"")
        + f"<set xmlns='{RSM}'><max>{PAGE}</max>{rsm}</set>".encode()
        + b"</query></iq>"
    )


def archive_queries(domain: str, ids: list[int]) -> dict[str, bytes]:
    """The four timed queries (see the module docstring)."""
    return {
        "last page": _query({}, "<before/>"),
        "middle page (after-id)": _query({"after-id": str(ids[len(ids) // 2])}, ""),
        "with one peer, last page": _query({"with": f"{user_name(7)}@{domain}"}, "<before/>"),
        "full text, last page": _query({"{urn:xmpp:fulltext:0}fulltext": MARKER}, "<before/>"),
    }


def run_archive_query(server: Server, settings: Settings, log: Log) -> list[dict[str, Any]]:
    """Query times per backend of ``settings.archive_backends`` (xmppd only)."""
    results = []
    for backend in settings.archive_backends:
        assert backend in ("sqlite", "postgresql")
        try:
            res = _query_run(server, settings, log, backend)  # type: ignore[arg-type]
        except ServerUnavailable as exc:
            res = {"scenario": "archive-query", "server": server.name, "skipped": str(exc)}
        except Exception as exc:
            log(f"{server.name}: archive-query on {backend} failed: {exc}")
            res = {"scenario": "archive-query", "server": server.name, "error": str(exc)[:2000]}
        res["backend"] = backend
        results.append(res)
    return results


def _query_run(
    server: Server, settings: Settings, log: Log, backend: ArchiveBackend
) -> dict[str, Any]:
    owner = user_name(0)
    peers = [user_name(i) for i in range(1, ARCHIVE_PEERS + 1)]
    background = background_load()
    with server.using(Features(archive=backend), [owner, *peers], PASSWORD):
        t0 = time.monotonic()
        ids = server.fill_archive(owner, peers, settings.archive_messages)
        fill_seconds = round(time.monotonic() - t0, 1)
        log(f"{server.name}: {len(ids)} archived messages written in {fill_seconds} s")
        queries = archive_queries(server.domain, ids)
        server.start()
        with GeneratorPool(1) as pool:
            login = login_sessions(pool, server, [owner], settings)
            if not login["ok"]:
                raise RuntimeError(f"login failed: {login['errors']}")
            reply = pool.call_all(
                "mam_queries",
                [{"queries": queries, "repeat": settings.archive_queries, "timeout": 120.0}],
                timeout=3600,
            )[0]
            pool.call_all("close", [{}])
    kinds = {}
    for name, times in reply["times"].items():
        ms = sorted(t * 1000 for t in times)
        counts = reply["results"][name]
        kinds[name] = {
            "median_ms": round(statistics.median(ms), 2),
            "p95_ms": round(ms[min(len(ms) - 1, round(0.95 * len(ms)) - 1)], 2),
            "min_ms": round(ms[0], 2),
            "results": sorted(set(counts)),
        }
        log(
            f"{server.name} [{backend}]: {name}: median {kinds[name]['median_ms']} ms, "
            f"p95 {kinds[name]['p95_ms']} ms, {counts[0]} results"
        )
    return {
        "scenario": "archive-query",
        "server": server.name,
        "archive_messages": len(ids),
        "archive_fill_seconds": fill_seconds,
        "queries_per_kind": settings.archive_queries,
        "queries": kinds,
        "query_errors": reply["errors"],
        "background_busy_pct": background,
    }
