"""Load-generator worker process: many XMPP client connections on one asyncio+uvloop loop.

The orchestrator (:mod:`bench.generator`) talks to each worker over a multiprocessing pipe
with ``(command, args)`` tuples; every command gets exactly one reply dict.

Commands:

* ``login``: open and log in sessions for the given users with bounded concurrency.
* ``chat_step``: from ``start_at`` (a ``time.monotonic()`` instant, shared by all processes)
  send ``rate`` chat messages per second for ``duration`` seconds, round-robin over the
  sessions, each to its pair partner; then wait up to ``drain`` seconds for the messages to
  arrive and return their latencies.
* ``presence_start``: switch every session to the presence fast path.
* ``presence_step``: from ``start_at`` make ``rate`` sessions per second (round-robin) go
  offline and online again: ``<presence type='unavailable'>`` then ``<presence/>``, both
  with ``<status>SENDER:STEP:MICROSECONDS</status>``.
* ``presence_collect``: latencies and counters of a presence step.
* ``muc_join``: make sessions ``first .. first + count - 1`` (those not in the room yet)
  join a room, ``concurrency`` at a time; each join is timed from its presence to the
  self-presence (status 110), and the session then records the room's traffic.
* ``muc_step``: from ``start_at`` the first ``senders`` occupants send ``rate`` stamped
  groupchat messages per second in all (``<body>SENDER:STEP:MICROSECONDS</body>``).
* ``muc_collect``: delivery latencies of a step (every occupant's copy) and counters.
* ``mam_queries``: time XEP-0313 queries on the first session.
* ``register``: create accounts for the given users by in-band registration (XEP-0077)
  with bounded concurrency, each on a connection of its own, closed after.
* ``churn``: ``count`` logins and logouts of one account, ``concurrency`` at a time,
  each with a resource of its own (the ``soak`` scenario).
* ``quiesce``: wait until nothing was received for a while (lets a server work off a backlog).
* ``close``: close every session.  ``exit``: close and stop the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import traceback
from array import array
from multiprocessing.connection import Connection as Pipe
from typing import Any

from bench.certs import client_context
from bench.storm_fleet import Fleet
from bench.wsclient import WsClients
from bench.xmpp import (
    PLAIN,
    Connection,
    MucRecorder,
    PresenceRecorder,
    Recorder,
    login,
    register,
)

MESSAGE_SUFFIX = b"</body></message>"


class Worker:
    def __init__(self, pipe: Pipe, index: int) -> None:
        self.pipe = pipe
        self.index = index
        self.sessions: list[Connection] = []
        self.recorder = Recorder()
        self.presence = PresenceRecorder()
        self.muc = MucRecorder()
        #: sessions in the room, in join order
        self.occupants: list[Connection] = []
        #: ``storm`` scenario clients
        self.fleet = Fleet(index)
        #: WebSocket logins (``login`` with ``ws_url``)
        self.web = WsClients()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            command, args = await loop.run_in_executor(None, self.pipe.recv)
            try:
                reply = await self.dispatch(command, args)
            except Exception as exc:
                reply = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
            self.pipe.send(reply)
            if command == "exit":
                return

    async def dispatch(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        if command == "login":
            return await self.login(**args)
        if command == "register":
            return await self.register(**args)
        if command == "chat_step":
            return await self.chat_step(**args)
        if command == "quiesce":
            return await self.quiesce(**args)
        if command == "churn":
            return await self.churn(**args)
        if command == "presence_start":
            return self.presence_start()
        if command == "presence_step":
            return await self.presence_step(**args)
        if command == "presence_collect":
            return self.presence_collect(**args)
        if command == "muc_join":
            return await self.muc_join(**args)
        if command == "muc_step":
            return await self.muc_step(**args)
        if command == "muc_collect":
            return self.muc_collect(**args)
        if command == "mam_queries":
            return await self.mam_queries(**args)
        if command.startswith("storm_"):
            return await self.storm(command[6:], args)
        if command in ("close", "exit"):
            return await self.close()
        if command == "ping":
            return {"pid": os.getpid()}
        raise ValueError(f"unknown command {command!r}")

    async def login(
        self,
        host: str,
        port: int,
        domain: str,
        users: list[str],
        password: str,
        concurrency: int,
        timeout: float,
        pair_targets: list[str] | None = None,
        mechanism: str = PLAIN,
        tls: bool = False,
        ws_url: str = "",
    ) -> dict[str, Any]:
        """Log ``users`` in over TCP, or over the WebSocket at ``ws_url`` if given."""
        sem = asyncio.Semaphore(max(1, concurrency))
        context = client_context() if tls else None
        durations: list[float] = []
        errors: list[str] = []
        slots: list[Connection | None] = [None] * len(users)

        async def one(i: int, user: str) -> None:
            async with sem:
                t0 = time.monotonic()
                try:
                    if ws_url:
                        conn: Connection = await asyncio.wait_for(
                            self.web.login(
                                ws_url, domain, user, password, f"b{self.index}", mechanism
                            ),
                            timeout,
                        )
                    else:
                        conn = await asyncio.wait_for(
                            login(
                                host,
                                port,
                                domain,
                                user,
                                password,
                                f"b{self.index}",
                                mechanism=mechanism,
                                tls=context,
                            ),
                            timeout,
                        )
                except Exception as exc:
                    if len(errors) < 1000:
                        errors.append(f"{user}: {type(exc).__name__}: {exc}"[:400])
                    return
                durations.append(time.monotonic() - t0)
                slots[i] = conn

        started = time.monotonic()
        await asyncio.gather(*(one(i, u) for i, u in enumerate(users)))
        finished = time.monotonic()
        new = [c for c in slots if c is not None]
        if pair_targets is not None:
            for conn, target in zip(slots, pair_targets, strict=True):
                if conn is not None:
                    local = target.partition("@")[0].encode()
                    conn.prefix = (
                        b"<message type='chat' id='c' to='"
                        + target.encode()
                        + b"'><body>"
                        + local
                        + b":"
                    )
        self.sessions.extend(new)
        tls_info = sorted({f"{c.tls_version} {c.tls_cipher}" for c in new if c.tls_version})
        return {
            "tls": tls_info,
            "ok": len(new),
            "failed": len(users) - len(new),
            "errors": errors[:5],
            "error_count": len(errors),
            "started": started,
            "finished": finished,
            "durations": array("d", durations).tobytes(),
        }

    async def register(
        self,
        host: str,
        port: int,
        domain: str,
        users: list[str],
        password: str,
        concurrency: int,
        timeout: float,
        tls: bool = False,
    ) -> dict[str, Any]:
        """Register ``users`` in-band, ``concurrency`` at a time."""
        sem = asyncio.Semaphore(max(1, concurrency))
        context = client_context() if tls else None
        errors: list[str] = []
        ok = 0

        async def one(user: str) -> None:
            nonlocal ok
            async with sem:
                try:
                    await asyncio.wait_for(
                        register(host, port, domain, user, password, tls=context), timeout
                    )
                except Exception as exc:
                    if len(errors) < 1000:
                        errors.append(f"{user}: {type(exc).__name__}: {exc}"[:400])
                    return
                ok += 1

        started = time.monotonic()
        await asyncio.gather(*(one(u) for u in users))
        finished = time.monotonic()
        return {
            "ok": ok,
            "failed": len(users) - ok,
            "errors": errors[:5],
            "error_count": len(errors),
            "started": started,
            "finished": finished,
        }

    async def chat_step(
        self, step: int, rate: float, duration: float, start_at: float, drain: float
    ) -> dict[str, Any]:
        senders = [c for c in self.sessions if c.prefix and c.transport is not None]
        for conn in self.sessions:
            conn.recorder = self.recorder
        n = len(senders)
        if n == 0 or rate <= 0:
            return {
                "sent": 0,
                "received": 0,
                "lat": b"",
                "send_seconds": 0.0,
                "max_lag": 0.0,
                "errors": 0,
                "misrouted": 0,
            }
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        rec = self.recorder
        misrouted0, errors0 = rec.misrouted, rec.errors
        t0 = time.monotonic()
        end = t0 + duration
        total = int(rate * duration)
        sent = 0
        idx = 0
        max_lag = 0.0
        writes = [c.transport.write for c in senders if c.transport is not None]
        prefixes = [c.prefix for c in senders]
        suffix = MESSAGE_SUFFIX
        monotonic = time.monotonic
        last = t0
        while True:
            now = monotonic()
            due = total if now >= end else int((now - t0) * rate)
            if due > sent:
                lag = now - (t0 + (sent + 1) / rate)  # message n is due at (n + 1) / rate
                if lag > max_lag:
                    max_lag = lag
                stamp = int(now * 1_000_000)
                middle = b"%d:%d" % (step, stamp)
                while sent < due:
                    writes[idx](prefixes[idx] + middle + suffix)
                    idx += 1
                    if idx == n:
                        idx = 0
                    sent += 1
                last = monotonic()
            if sent >= total:
                break
            await asyncio.sleep(0.001)
        send_seconds = last - t0
        deadline = monotonic() + drain
        while True:
            if rec.count(step) >= sent or monotonic() >= deadline:
                break
            await asyncio.sleep(0.005)
        latencies = rec.lat.pop(step, [])
        return {
            "sent": sent,
            "received": len(latencies),
            "lat": array("q", latencies).tobytes(),
            "send_seconds": send_seconds,
            "max_lag": max_lag,
            "errors": rec.errors - errors0,
            "misrouted": rec.misrouted - misrouted0,
        }

    async def churn(
        self,
        host: str,
        port: int,
        domain: str,
        user: str,
        password: str,
        count: int,
        concurrency: int,
        tls: bool = True,
        mechanism: str = PLAIN,
    ) -> dict[str, Any]:
        """Log ``user`` in and out ``count`` times, ``concurrency`` at a time."""
        context = client_context() if tls else None
        numbers = iter(range(count))
        ok = failed = 0
        errors: list[str] = []

        async def runner() -> None:
            nonlocal ok, failed
            for i in numbers:
                try:
                    conn = await asyncio.wait_for(
                        login(
                            host,
                            port,
                            domain,
                            user,
                            password,
                            f"churn{self.index}-{i}",
                            mechanism=mechanism,
                            tls=context,
                        ),
                        60,
                    )
                except Exception as exc:
                    failed += 1
                    if len(errors) < 5:
                        errors.append(f"{type(exc).__name__}: {exc}"[:300])
                    continue
                conn.close()
                ok += 1

        t0 = time.monotonic()
        await asyncio.gather(*(runner() for _ in range(max(1, concurrency))))
        return {"ok": ok, "failed": failed, "errors": errors, "seconds": time.monotonic() - t0}

    async def quiesce(
        self, quiet: float, timeout: float, keep: bool = False, since: float = 0.0
    ) -> dict[str, Any]:
        """Wait until nothing arrived for ``quiet`` s (at most ``timeout``), counted
        from ``since`` (``time.monotonic()``) at the earliest: what was sent then may
        not have started arriving; unless ``keep``, forget the chat latencies of the
        late arrivals."""
        loop_deadline = time.monotonic() + timeout
        rec = self.recorder
        quiet_now = False
        while time.monotonic() < loop_deadline:
            last = max(rec.last_rx, self.presence.last_rx, self.muc.last_rx) / 1_000_000
            last = max(last, since)
            if time.monotonic() - last >= quiet:
                quiet_now = True
                break
            await asyncio.sleep(min(quiet, 0.05))
        if not keep:
            rec.lat.clear()
        last_rx = max(rec.last_rx, self.presence.last_rx, self.muc.last_rx) / 1_000_000
        return {"quiet": quiet_now, "last_rx": last_rx}

    async def storm(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        """``storm_*`` commands: see :class:`bench.storm_fleet.Fleet`."""
        fleet = self.fleet
        if command == "login":
            return await fleet.login(**args)
        if command == "mode":
            return fleet.set_mode(**args)
        if command == "chat_start":
            return fleet.chat_start(**args)
        if command == "chat_stop":
            return await fleet.chat_stop()
        if command == "drop":
            return await fleet.storm(**args)
        if command == "quiesce":
            return await fleet.quiesce(**args)
        if command == "count":
            return fleet.count(**args)
        if command == "close":
            return fleet.close()
        raise ValueError(f"unknown storm command {command!r}")

    # -- presence ---------------------------------------------------------------------

    def presence_start(self) -> dict[str, Any]:
        """Route every session's input to the presence fast path."""
        for conn in self.sessions:
            conn.index = int(conn.user[1:])
            conn.buf, conn.pos, conn.tail = b"", 0, b""
            conn.presence_rec = self.presence
        return {"sessions": len(self.sessions)}

    async def presence_step(
        self, step: int, rate: float, duration: float, start_at: float
    ) -> dict[str, Any]:
        """Offline/online cycles at ``rate`` per second, round-robin over the sessions."""
        conns = [c for c in self.sessions if c.transport is not None]
        if not conns or rate <= 0:
            return {"sent": 0, "send_seconds": 0.0, "max_lag": 0.0}
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        monotonic = time.monotonic
        t0 = monotonic()
        end = t0 + duration
        total = int(rate * duration)
        sent = idx = 0
        max_lag = 0.0
        last = t0
        n = len(conns)
        while sent < total:
            now = monotonic()
            due = total if now >= end else int((now - t0) * rate)
            if due > sent:
                max_lag = max(max_lag, now - (t0 + (sent + 1) / rate))
                while sent < due:
                    conn = conns[idx]
                    stamp = monotonic() * 1_000_000
                    status = b"<status>%d:%d:%d</status>" % (conn.index, step, stamp)
                    assert conn.transport is not None
                    conn.transport.write(
                        b"<presence type='unavailable'>"
                        + status
                        + b"</presence><presence>"
                        + status
                        + b"</presence>"
                    )
                    idx = idx + 1 if idx + 1 < n else 0
                    sent += 1
                last = monotonic()
            if sent < total:
                await asyncio.sleep(0.001)
        return {"sent": sent, "send_seconds": last - t0, "max_lag": max_lag}

    def presence_collect(self, step: int) -> dict[str, Any]:
        """The broadcast latencies of ``step`` and the counters so far (then reset)."""
        rec = self.presence
        latencies = rec.lat.pop(step, [])
        counters = rec.counters()
        self.presence = PresenceRecorder()
        self.presence.last_rx = rec.last_rx
        for conn in self.sessions:
            if conn.presence_rec is not None:
                conn.presence_rec = self.presence
        return {"lat": array("q", latencies).tobytes(), "last_rx": rec.last_rx, **counters}

    # -- group chat -------------------------------------------------------------------

    async def muc_join(
        self, room: str, first: int, count: int, concurrency: int, timeout: float
    ) -> dict[str, Any]:
        """Join ``room`` (a bare JID) with sessions ``first .. first + count - 1``, each
        under its account name as nickname; returns each join's seconds."""
        todo = [c for c in self.sessions[first : first + count] if c.muc_rec is None]
        sem = asyncio.Semaphore(max(1, concurrency))
        durations: list[float] = []
        errors: list[str] = []
        room_b = room.encode()

        async def one(conn: Connection) -> None:
            async with sem:
                t0 = time.monotonic()
                try:
                    await asyncio.wait_for(conn.join_room(room_b + b"/" + conn.user), timeout)
                except Exception as exc:
                    if len(errors) < 100:
                        errors.append(f"{conn.user.decode()}: {type(exc).__name__}: {exc}"[:400])
                    return
                durations.append(time.monotonic() - t0)
                conn.tail = b""
                conn.muc_rec = self.muc
                self.occupants.append(conn)

        started = time.monotonic()
        await asyncio.gather(*(one(c) for c in todo))
        return {
            "ok": len(durations),
            "failed": len(todo) - len(durations),
            "errors": errors[:5],
            "seconds": time.monotonic() - started,
            "durations": array("d", durations).tobytes(),
            "occupants": len(self.occupants),
        }

    async def muc_step(
        self, room: str, step: int, rate: float, duration: float, start_at: float, senders: int
    ) -> dict[str, Any]:
        """``rate`` groupchat messages per second in all, round-robin over the first
        ``senders`` occupants, for ``duration`` seconds from ``start_at``."""
        conns = [c for c in self.occupants[:senders] if c.transport is not None]
        if not conns or rate <= 0:
            return {"sent": 0, "send_seconds": 0.0, "max_lag": 0.0}
        prefix = b"<message type='groupchat' to='" + room.encode() + b"'><body>"
        writes = [c.transport.write for c in conns if c.transport is not None]
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        monotonic = time.monotonic
        t0 = monotonic()
        end = t0 + duration
        total = int(rate * duration)
        sent = idx = 0
        max_lag = 0.0
        last = t0
        n = len(writes)
        while sent < total:
            now = monotonic()
            due = total if now >= end else int((now - t0) * rate)
            if due > sent:
                max_lag = max(max_lag, now - (t0 + (sent + 1) / rate))
                middle = b"%d:%d:%d" % (idx, step, int(now * 1_000_000))
                while sent < due:
                    writes[idx](prefix + middle + MESSAGE_SUFFIX)
                    idx = idx + 1 if idx + 1 < n else 0
                    sent += 1
                last = monotonic()
            if sent < total:
                await asyncio.sleep(0.001)
        return {"sent": sent, "send_seconds": last - t0, "max_lag": max_lag}

    def muc_collect(self, step: int) -> dict[str, Any]:
        """The delivery latencies of ``step`` and the counters so far (then reset)."""
        rec = self.muc
        latencies = rec.lat.pop(step, [])
        out = {
            "lat": array("q", latencies).tobytes(),
            "last_rx": rec.last_rx,
            "presences": rec.presences,
            "errors": rec.errors,
            "occupants": len(self.occupants),
        }
        rec.presences = rec.errors = 0
        return out

    # -- archive queries --------------------------------------------------------------

    async def mam_queries(
        self, queries: dict[str, bytes], repeat: int, timeout: float
    ) -> dict[str, Any]:
        """Run every query ``repeat`` times (interleaved) on the first session.

        ``queries`` maps a name to an IQ with ``id='%s'``; returns, per name, the
        seconds from writing the IQ to reading its answer, and the number of results.
        """
        conn = self.sessions[0]
        times: dict[str, list[float]] = {name: [] for name in queries}
        results: dict[str, list[int]] = {name: [] for name in queries}
        errors: list[str] = []
        serial = 0
        for _ in range(repeat):
            for name, template in queries.items():
                serial += 1
                iq_id = b"mam%d" % serial
                t0 = time.monotonic()
                answer, count = await asyncio.wait_for(conn.query(template % iq_id, iq_id), timeout)
                times[name].append(time.monotonic() - t0)
                results[name].append(count)
                if b"'result'" not in answer and b'"result"' not in answer and len(errors) < 5:
                    errors.append(f"{name}: {answer[:300]!r}")
        return {"times": times, "results": results, "errors": errors}

    async def close(self) -> dict[str, Any]:
        n = len(self.sessions)
        for conn in self.sessions:
            with contextlib.suppress(Exception):
                conn.close()
        self.sessions.clear()
        self.occupants.clear()
        self.fleet.close()
        await self.web.close()
        self.recorder = Recorder()
        self.muc = MucRecorder()
        await asyncio.sleep(0.2)
        return {"closed": n}


def worker_main(pipe: Pipe, index: int, cpu: int | None) -> None:
    """Entry point of a worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the orchestrator decides when we stop
    if cpu is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})
    worker = Worker(pipe, index)
    try:
        import uvloop
    except ImportError:
        asyncio.run(worker.run())
    else:
        uvloop.run(worker.run())
