"""The web scenarios: ``ws-sessions``, ``ws-chat`` (XMPP over WebSocket) and ``upload``.

* ``ws-sessions``: N sessions logged in over WebSocket (RFC 7395, subprotocol ``xmpp``);
  server RSS before, after and after 12 s idle, login rate, as ``sessions`` does over TCP.
* ``ws-chat``: the ``chat`` sweep with every session on a WebSocket.
* ``upload``: XEP-0363 slots requested over XMPP (one TCP session), then ``files``
  parallel PUTs of ``size`` bytes and the same files fetched with parallel GETs (aiohttp,
  in the orchestrator process on the generator core); MB/s each way and the server's
  RSS sampled every 50 ms during each phase.  Run for each size of ``upload_sizes``: a
  server that streams to and from disk has the same peak at every size.
"""

from __future__ import annotations

import asyncio
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from bench.common import PASSWORD, free_port, user_name
from bench.generator import GeneratorPool, workers_for
from bench.report import _comparison, _error_lines, _max_rate, _num, steps_table
from bench.scenarios import (
    IDLE_SECONDS,
    REFERENCE_RATE,
    ChatPlan,
    Log,
    Settings,
    background_load,
    chat_sweep,
    login_sessions,
)
from bench.servers.base import Features, Server, upload_domain
from bench.xmpp import Connection, XmppError, attr, local_name, login

#: The web scenarios, in the order ``all`` runs them.
WEB_SCENARIOS = ["ws-sessions", "ws-chat", "upload"]

NS_UPLOAD = "urn:xmpp:http:upload:0"
#: Content type of every uploaded file.
CONTENT_TYPE = "application/octet-stream"
#: Interval of the RSS samples during the upload phases (seconds).
RSS_INTERVAL = 0.05
MB = 1_000_000


@dataclass
class WebSettings:
    """Sizes of the web scenarios (``--quick`` and the command line change them)."""

    ws_sessions: int = 1000
    ws_pairs: int = 500
    ws_rates: list[int] = field(
        default_factory=lambda: [1000, 2000, 3000, 5000, 7500, 10000, 15000, 20000]
    )
    ws_step_seconds: float = 5.0
    upload_files: int = 20
    upload_sizes: list[int] = field(default_factory=lambda: [1 * MB, 10 * MB])
    http_timeout: float = 300.0

    def accounts_needed(self, scenarios: Sequence[str]) -> int:
        need = 0
        if "ws-sessions" in scenarios:
            need = max(need, self.ws_sessions)
        if "ws-chat" in scenarios:
            need = max(need, 2 * self.ws_pairs)
        if "upload" in scenarios:
            need = max(need, 1)
        return need


def quick(s: WebSettings) -> None:
    """The ``--quick`` sizes: about a minute per server for the three scenarios."""
    s.ws_sessions, s.ws_pairs = 200, 100
    s.ws_rates = [1000, 2000, 5000]
    s.ws_step_seconds = 2.0
    s.upload_files = 10
    s.upload_sizes = [1 * MB, 4 * MB]


def _prepare(server: Server) -> Features:
    if not server.http_port:
        server.http_port = free_port()
    return Features(web=True)


# -- ws-sessions --------------------------------------------------------------------------


def run_ws_sessions(
    server: Server, settings: Settings, web: WebSettings, log: Log
) -> dict[str, Any]:
    """``web.ws_sessions`` sessions over WebSocket; memory per session, login rate."""
    background = background_load()
    with server.using(_prepare(server)):
        result = _ws_sessions(server, settings, web, log)
    result["background_busy_pct"] = background
    return result


def _ws_sessions(server: Server, settings: Settings, web: WebSettings, log: Log) -> dict[str, Any]:
    n = web.ws_sessions
    users = [user_name(i) for i in range(n)]
    workers = workers_for(n)
    url = server.ws_url()
    server.start()
    try:
        with GeneratorPool(workers) as pool:
            time.sleep(1.0)
            rss_before = server.rss_kb()
            log(f"{server.name}: logging in {n} sessions over {url} ({workers} processes)")
            result = login_sessions(pool, server, users, settings, ws_url=url)
            time.sleep(2.0)
            rss_after = server.rss_kb()
            time.sleep(IDLE_SECONDS - 2.0)
            rss_idle = server.rss_kb()
            log(
                f"{server.name}: {result['ok']}/{n} WebSocket sessions in "
                f"{result['seconds']}s, RSS {rss_before / 1024:.1f} -> {rss_after / 1024:.1f} "
                f"MiB, {rss_idle / 1024:.1f} MiB after {IDLE_SECONDS:.0f} s idle"
            )
            alive = server.running()
            pool.call_all("close", [{}] * len(pool))
    finally:
        server.stop()
    ok = result["ok"]
    return {
        "scenario": "ws-sessions",
        "server": server.name,
        "sessions": n,
        "transport": "websocket",
        "sessions_ok": ok,
        "login_failed": result["failed"],
        "login_errors": result["errors"],
        "concurrency": settings.concurrency,
        "generator_processes": workers,
        "rss_before_kb": rss_before,
        "rss_after_kb": rss_after,
        "kb_per_session": round((rss_after - rss_before) / ok, 2) if ok else None,
        "rss_idle_kb": rss_idle,
        "kb_per_idle_session": round((rss_idle - rss_before) / ok, 2) if ok else None,
        "login_rate": result["rate"],
        "login_seconds": result["seconds"],
        "login_p50_ms": result["p50_ms"],
        "login_p99_ms": result["p99_ms"],
        "server_cpu_pct": result["server_cpu_pct"],
        "generator_cpu_pct": result["generator_cpu_pct"],
        "server_alive_after": alive,
    }


# -- ws-chat ------------------------------------------------------------------------------


def run_ws_chat(server: Server, settings: Settings, web: WebSettings, log: Log) -> dict[str, Any]:
    """The chat sweep with every session over WebSocket."""
    with server.using(_prepare(server)):
        plan = ChatPlan(
            web.ws_pairs,
            list(web.ws_rates),
            web.ws_step_seconds,
            reference=min(REFERENCE_RATE, max(web.ws_rates)),
            scenario="ws-chat",
            ws_url=server.ws_url(),
        )
        return chat_sweep(server, settings, log, plan)


# -- upload -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Slot:
    """An upload slot (XEP-0363 §4): where to PUT (with which headers), where to GET."""

    put_url: str
    get_url: str
    headers: dict[str, str]


#: The only headers a slot may ask for (XEP-0363 §4).
SLOT_HEADERS = ("authorization", "cookie", "expires")


def slot_request(iq_id: str, service: str, filename: str, size: int) -> bytes:
    """The slot request IQ (built with ElementTree: the file name is escaped)."""
    iq = ET.Element("iq", {"type": "get", "id": iq_id, "to": service})
    ET.SubElement(
        iq,
        "request",
        {"xmlns": NS_UPLOAD, "filename": filename, "size": str(size), "content-type": CONTENT_TYPE},
    )
    return ET.tostring(iq)


def parse_slot(iq: bytes) -> Slot:
    """The slot in a result IQ; :class:`XmppError` for an error or a malformed answer.

    Headers other than the three XEP-0363 allows are dropped, newlines in their values
    too (as a client must).
    """
    try:
        root = ET.fromstring(iq)
    except ET.ParseError as exc:
        raise XmppError(f"slot answer is not XML: {exc}") from exc
    if root.get("type") != "result":
        raise XmppError(f"slot refused: {iq[:400]!r}")
    slot = root.find(f"{{{NS_UPLOAD}}}slot")
    if slot is None:
        raise XmppError(f"no slot in {iq[:400]!r}")
    put = slot.find(f"{{{NS_UPLOAD}}}put")
    get = slot.find(f"{{{NS_UPLOAD}}}get")
    put_url = put.get("url") if put is not None else None
    get_url = get.get("url") if get is not None else None
    if put is None or not put_url or not get_url:
        raise XmppError(f"slot without put/get url: {iq[:400]!r}")
    headers: dict[str, str] = {}
    for header in put.findall(f"{{{NS_UPLOAD}}}header"):
        name = (header.get("name") or "").strip()
        if name.lower() in SLOT_HEADERS:
            headers[name] = (header.text or "").replace("\r", "").replace("\n", "").strip()
    return Slot(put_url, get_url, headers)


def direct_url(url: str, port: int) -> tuple[str, str]:
    """``url`` pointed at 127.0.0.1:``port`` (where the server under test listens), and the
    ``Host`` header that keeps the original host (Prosody routes HTTP by host; the
    upload host does not resolve here)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http URL: {url!r}")
    host = parts.hostname
    rewritten = urlunsplit(("http", f"127.0.0.1:{port}", parts.path, parts.query, ""))
    return rewritten, host


class RssSampler:
    """Server RSS (KiB) every :data:`RSS_INTERVAL` seconds in a thread, while active."""

    def __init__(self, read: Callable[[], int]) -> None:
        self.read = read
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.read())
            except (OSError, RuntimeError):
                return
            self._stop.wait(RSS_INTERVAL)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


async def request_slots(
    server: Server, count: int, size: int, tag: str, timeout: float
) -> list[Slot]:
    """``count`` slots for files of ``size`` bytes, asked by one TCP session."""
    conn = await asyncio.wait_for(
        login("127.0.0.1", server.port, server.domain, user_name(0), PASSWORD, "upload"), timeout
    )
    try:
        service = upload_domain(server.domain)
        slots = []
        for i in range(count):
            iq_id = f"slot{tag}-{i}"
            conn.send(slot_request(iq_id, service, f"bench-{tag}-{i}.bin", size))
            answer = await asyncio.wait_for(_iq_answer(conn, iq_id.encode()), timeout)
            slots.append(parse_slot(answer))
        return slots
    finally:
        conn.close()


async def _iq_answer(conn: Connection, iq_id: bytes) -> bytes:
    """The next IQ with ``iq_id`` (result or error), whole."""
    while True:
        element = await conn.next_element()
        if local_name(element) == b"iq" and attr(element, b"id") == iq_id:
            return element


async def _put_all(
    http: aiohttp.ClientSession, slots: Sequence[Slot], body: bytes, port: int
) -> tuple[float, list[str]]:
    errors: list[str] = []

    async def one(slot: Slot) -> None:
        url, host = direct_url(slot.put_url, port)
        headers = {**slot.headers, "Host": host, "Content-Type": CONTENT_TYPE}
        async with http.put(url, data=body, headers=headers) as resp:
            if resp.status not in (200, 201):
                errors.append(f"PUT {resp.status}: {(await resp.text())[:200]}")
            await resp.read()

    t0 = time.monotonic()
    await asyncio.gather(*(one(s) for s in slots))
    return time.monotonic() - t0, errors


async def _get_all(
    http: aiohttp.ClientSession, slots: Sequence[Slot], body: bytes, port: int
) -> tuple[float, list[str]]:
    errors: list[str] = []
    view = memoryview(body)

    async def one(slot: Slot) -> None:
        url, host = direct_url(slot.get_url, port)
        async with http.get(url, headers={"Host": host}) as resp:
            if resp.status != 200:
                errors.append(f"GET {resp.status}")
                return
            pos = 0
            async for chunk in resp.content.iter_chunked(1 << 20):
                if view[pos : pos + len(chunk)] != chunk:
                    errors.append(f"GET: content differs at byte {pos}")
                    return
                pos += len(chunk)
            if pos != len(body):
                errors.append(f"GET: {pos} bytes instead of {len(body)}")

    t0 = time.monotonic()
    await asyncio.gather(*(one(s) for s in slots))
    return time.monotonic() - t0, errors


def _peak_kb(samples: Sequence[int], base: int) -> int | None:
    """Highest sample above ``base`` (0 when RSS only fell: a collection ran)."""
    return max(0, max(samples) - base) if samples else None


async def _upload_size(server: Server, web: WebSettings, size: int, log: Log) -> dict[str, Any]:
    n = web.upload_files
    slots = await request_slots(server, n, size, str(size), web.http_timeout)
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    timeout = aiohttp.ClientTimeout(total=web.http_timeout)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        await asyncio.sleep(0.5)
        base = server.rss_kb()
        cpu0 = server.cpu_seconds()
        with RssSampler(server.rss_kb) as put_rss:
            put_seconds, put_errors = await _put_all(http, slots, body, server.http_port)
        cpu1 = server.cpu_seconds()
        after_put = server.rss_kb()
        with RssSampler(server.rss_kb) as get_rss:
            get_seconds, get_errors = await _get_all(http, slots, body, server.http_port)
        cpu2 = server.cpu_seconds()
    total = n * size
    put_rate = round(total / MB / put_seconds, 1) if put_seconds > 0 and not put_errors else None
    get_rate = round(total / MB / get_seconds, 1) if get_seconds > 0 and not get_errors else None
    step: dict[str, Any] = {
        "size": size,
        "files": n,
        "put_seconds": round(put_seconds, 3),
        "get_seconds": round(get_seconds, 3),
        "put_mb_s": put_rate,
        "get_mb_s": get_rate,
        "rss_base_kb": base,
        "rss_after_put_kb": after_put,
        "put_rss_peak_growth_kb": _peak_kb(put_rss.samples, base),
        "get_rss_peak_growth_kb": _peak_kb(get_rss.samples, base),
        "rss_samples": len(put_rss.samples) + len(get_rss.samples),
        "put_server_cpu_pct": round(100 * (cpu1 - cpu0) / put_seconds, 1) if put_seconds else None,
        "get_server_cpu_pct": round(100 * (cpu2 - cpu1) / get_seconds, 1) if get_seconds else None,
        "errors": (put_errors + get_errors)[:5],
    }
    log(
        f"{server.name}: {n} x {size / MB:g} MB: PUT {_num(put_rate)} MB/s, "
        f"GET {_num(get_rate)} MB/s; RSS {base / 1024:.1f} MiB, peak +"
        f"{_num((step['put_rss_peak_growth_kb'] or 0) / 1024)} MiB (PUT), +"
        f"{_num((step['get_rss_peak_growth_kb'] or 0) / 1024)} MiB (GET)"
        + (f"; errors: {step['errors'][:2]}" if step["errors"] else "")
    )
    return step


def run_upload(server: Server, web: WebSettings, log: Log) -> dict[str, Any]:
    """Slots over XMPP, then parallel PUTs and GETs for every size of ``upload_sizes``."""
    background = background_load()
    steps: list[dict[str, Any]] = []
    with server.using(_prepare(server)):
        server.start()
        try:
            for size in web.upload_sizes:
                steps.append(asyncio.run(_upload_size(server, web, size, log)))
        finally:
            server.stop()
    ok = [s for s in steps if not s["errors"]]
    main = max(ok, key=lambda s: s["size"]) if ok else None
    small = min(ok, key=lambda s: s["size"]) if ok else None
    peak = _peak_growth
    return {
        "scenario": "upload",
        "server": server.name,
        "files": web.upload_files,
        "sizes": list(web.upload_sizes),
        "steps": steps,
        "size": main["size"] if main else None,
        "put_mb_s": main["put_mb_s"] if main else None,
        "get_mb_s": main["get_mb_s"] if main else None,
        "rss_peak_growth_kb": peak(main),
        # The peak growth at the largest size less that at the smallest: about 0 when
        # files are streamed, (files x size difference) when they are held in memory.
        "rss_growth_with_size_kb": (
            peak(main) - peak(small)  # type: ignore[operator]
            if main is not small and peak(main) is not None and peak(small) is not None
            else None
        ),
        "errors": [e for s in steps for e in s["errors"]][:5],
        "background_busy_pct": background,
    }


def _peak_growth(step: dict[str, Any] | None) -> int | None:
    if step is None:
        return None
    values = [
        v for v in (step["put_rss_peak_growth_kb"], step["get_rss_peak_growth_kb"]) if v is not None
    ]
    return max(values) if values else None


# -- reports ------------------------------------------------------------------------------


def ws_sessions_report(results: Sequence[dict[str, Any]], n: int) -> str:
    ok = {r["server"]: r for r in results if "error" not in r}
    out = [f"== ws-sessions: {n} sessions over WebSocket, PLAIN, 200 logins in flight =="]
    metrics: list[tuple[str, Callable[[dict[str, Any]], Any], int]] = [
        ("sessions established", lambda r: r["sessions_ok"], 0),
        ("RSS before (MiB)", lambda r: r["rss_before_kb"] / 1024, 1),
        ("RSS after (MiB)", lambda r: r["rss_after_kb"] / 1024, 1),
        ("memory per session (KiB)", lambda r: r["kb_per_session"], 1),
        ("memory per idle session, 12 s later (KiB)", lambda r: r["kb_per_idle_session"], 1),
        ("login rate (logins/s)", lambda r: r["login_rate"], 0),
        ("login p99 (ms)", lambda r: r["login_p99_ms"], 1),
        ("server CPU during logins (%)", lambda r: r["server_cpu_pct"], 0),
    ]
    if ok:
        out.append(_comparison(ok, metrics))
    out.extend(_error_lines(results))
    out.extend(
        f"  {r['server']}: {r['login_failed']} logins failed: {r['login_errors'][:2]}"
        for r in ok.values()
        if r["login_failed"]
    )
    return "\n".join(out)


def ws_chat_report(results: Sequence[dict[str, Any]], pairs: int) -> str:
    ok = {r["server"]: r for r in results if "error" not in r}
    out = [f"== ws-chat: {pairs} online pairs over WebSocket, 1:1 messages, fixed-rate sweep =="]
    if ok:
        ref = next(iter(ok.values()))["reference_rate"]
        metrics: list[tuple[str, Callable[[dict[str, Any]], Any], int]] = [
            ("max sustainable rate (msg/s)", _max_rate, 0),
            (f"p99 @ {ref:,} msg/s (ms)", lambda r: r.get(f"p99_at_{ref}_ms"), 1),
            (f"lost @ {ref:,} msg/s", lambda r: r.get(f"loss_at_{ref}"), 0),
        ]
        out.append(_comparison(ok, metrics))
    for r in ok.values():
        out.append(f"\n{r['server']} steps:")
        out.append(steps_table(r["steps"]))
    out.extend(_error_lines(results))
    return "\n".join(out)


def upload_report(results: Sequence[dict[str, Any]]) -> str:
    ok = {r["server"]: r for r in results if "error" not in r}
    out = ["== upload: XEP-0363 slots, then parallel PUTs and GETs (MB = 10^6 bytes) =="]
    if ok:
        first = next(iter(ok.values()))
        size = (first.get("size") or 0) / MB
        out[0] += f"\n{first['files']} files in parallel; figures at {size:g} MB per file"
        metrics: list[tuple[str, Callable[[dict[str, Any]], Any], int]] = [
            ("PUT throughput (MB/s)", lambda r: r["put_mb_s"], 1),
            ("GET throughput (MB/s)", lambda r: r["get_mb_s"], 1),
            ("server RSS peak growth (MiB)", lambda r: _kb_mib(r["rss_peak_growth_kb"]), 1),
            (
                "peak growth, largest - smallest size (MiB)",
                lambda r: _kb_mib(r["rss_growth_with_size_kb"]),
                1,
            ),
        ]
        out.append(_comparison(ok, metrics))
        for r in ok.values():
            for s in r["steps"]:
                out.append(
                    f"  {r['server']}: {s['files']} x {s['size'] / MB:g} MB  "
                    f"PUT {_num(s['put_mb_s'])} MB/s "
                    f"(server CPU {_num(s['put_server_cpu_pct'], 0)}%)"
                    f"  GET {_num(s['get_mb_s'])} MB/s "
                    f"(server CPU {_num(s['get_server_cpu_pct'], 0)}%)"
                    f"  RSS +{_num(_kb_mib(s['put_rss_peak_growth_kb']))} / "
                    f"+{_num(_kb_mib(s['get_rss_peak_growth_kb']))} MiB"
                    + (f"  errors: {s['errors'][:2]}" if s["errors"] else "")
                )
    out.extend(_error_lines(results))
    return "\n".join(out)


def _kb_mib(value: int | None) -> float | None:
    return None if value is None else value / 1024
