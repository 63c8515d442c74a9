"""Load-generator worker process: many XMPP client connections on one asyncio+uvloop loop.

The orchestrator (:mod:`bench.generator`) talks to each worker over a multiprocessing pipe
with ``(command, args)`` tuples; every command gets exactly one reply dict.

Commands:

* ``login``: open and log in sessions for the given users with bounded concurrency.
* ``chat_step``: from ``start_at`` (a ``time.monotonic()`` instant, shared by all processes)
  send ``rate`` chat messages per second for ``duration`` seconds, round-robin over the
  sessions, each to its pair partner; then wait up to ``drain`` seconds for the messages to
  arrive and return their latencies.
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

from bench.xmpp import Connection, Recorder, login

MESSAGE_SUFFIX = b"</body></message>"


class Worker:
    def __init__(self, pipe: Pipe, index: int) -> None:
        self.pipe = pipe
        self.index = index
        self.sessions: list[Connection] = []
        self.recorder = Recorder()

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
        if command == "chat_step":
            return await self.chat_step(**args)
        if command == "quiesce":
            return await self.quiesce(**args)
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
    ) -> dict[str, Any]:
        sem = asyncio.Semaphore(max(1, concurrency))
        durations: list[float] = []
        errors: list[str] = []
        slots: list[Connection | None] = [None] * len(users)

        async def one(i: int, user: str) -> None:
            async with sem:
                t0 = time.monotonic()
                try:
                    conn = await asyncio.wait_for(
                        login(host, port, domain, user, password, f"b{self.index}"), timeout
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
        return {
            "ok": len(new),
            "failed": len(users) - len(new),
            "errors": errors[:5],
            "error_count": len(errors),
            "started": started,
            "finished": finished,
            "durations": array("d", durations).tobytes(),
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
                lag = now - (t0 + sent / rate)
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

    async def quiesce(self, quiet: float, timeout: float) -> dict[str, Any]:
        loop_deadline = time.monotonic() + timeout
        rec = self.recorder
        while time.monotonic() < loop_deadline:
            idle = time.monotonic() - rec.last_rx / 1_000_000
            if idle >= quiet:
                rec.lat.clear()
                return {"quiet": True}
            await asyncio.sleep(min(quiet, 0.05))
        rec.lat.clear()
        return {"quiet": False}

    async def close(self) -> dict[str, Any]:
        n = len(self.sessions)
        for conn in self.sessions:
            with contextlib.suppress(Exception):
                conn.close()
        self.sessions.clear()
        self.recorder = Recorder()
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
