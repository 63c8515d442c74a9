"""Worker side of the ``storm`` scenario: one process's :class:`StormSession` clients.

:class:`Fleet` holds them, logs them in, runs the counted chat of the pairs in the
background, cuts or waits for the drop, reconnects everybody with the back-off model of
:class:`bench.storm_client.Backoff`, and counts what was lost.  Pairs (sessions ``2k``
and ``2k+1``) always live in one process, so loss is counted where both ends are.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from array import array
from typing import Any

from bench.certs import client_context
from bench.storm_client import Backoff, StormSession, reconnect


class Fleet:
    def __init__(self, index: int) -> None:
        self.index = index
        self.sessions: list[StormSession] = []
        self.chatters: list[StormSession] = []
        self.chat_task: asyncio.Task[None] | None = None
        self.rng = random.Random(index)

    async def login(
        self,
        host: str,
        port: int,
        domain: str,
        users: list[tuple[int, str, str | None]],
        password: str,
        concurrency: int,
        timeout: float,
        mode: str,
        resend: bool = True,
    ) -> dict[str, Any]:
        """First login of every session (``mode`` ``fast`` asks for a FAST token);
        ``resend``: send unacknowledged messages again on a new session."""
        context = client_context()
        sem = asyncio.Semaphore(max(1, concurrency))
        errors: list[str] = []

        async def one(s: StormSession) -> None:
            async with sem:
                try:
                    await asyncio.wait_for(s.connect(), timeout)
                except Exception as exc:
                    if len(errors) < 20:
                        errors.append(f"{s.user}: {type(exc).__name__}: {exc}"[:300])

        new = [
            StormSession(
                i,
                name,
                password,
                host=host,
                port=port,
                domain=domain,
                tls=context,
                mode=mode,
                resend=resend,
            )
            for i, name, _ in users
        ]
        for s, (_, _, peer) in zip(new, users, strict=True):
            s.peer = peer.encode() if peer else None
        started = time.monotonic()
        await asyncio.gather(*(one(s) for s in new))
        self.sessions.extend(new)
        self.chatters = [s for s in self.sessions if s.peer is not None]
        ok = sum(1 for s in new if s.conn is not None)
        return {
            "ok": ok,
            "failed": len(new) - ok,
            "errors": errors[:5],
            "seconds": time.monotonic() - started,
        }

    def set_mode(self, mode: str, resume: bool, tls_resume: bool = True) -> dict[str, Any]:
        for s in self.sessions:
            s.mode = mode
            s.resume = resume
            s.tls_resume = tls_resume
        return {"sessions": len(self.sessions)}

    # ------------------------------------------------------------------ chat
    def chat_start(self, rate: float) -> dict[str, Any]:
        """Send ``rate`` messages per second in all, round-robin over the senders that
        are online, with an ``<r/>`` after each tick's batch, until :meth:`chat_stop`."""
        if self.chat_task is None and rate > 0 and self.chatters:
            self.chat_task = asyncio.get_running_loop().create_task(self._chat(rate))
        return {"senders": len(self.chatters)}

    async def _chat(self, rate: float) -> None:
        senders = self.chatters
        n = len(senders)
        t0 = time.monotonic()
        due_total = 0
        idx = 0
        while True:
            await asyncio.sleep(0.01)
            due = int((time.monotonic() - t0) * rate)
            touched: set[int] = set()
            while due_total < due:
                s = senders[idx]
                idx = idx + 1 if idx + 1 < n else 0
                due_total += 1
                if s.send_message():  # an offline sender's turn passes: not sent
                    touched.add(id(s))
            for s in senders:
                if id(s) in touched:
                    s.request_ack()

    async def chat_stop(self) -> dict[str, Any]:
        task, self.chat_task = self.chat_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for s in self.chatters:
            s.request_ack()
        return {"sent": sum(s.sent for s in self.chatters)}

    # ------------------------------------------------------------------ the storm
    async def storm(
        self,
        cut: bool,
        concurrency: int,
        first: float,
        base: float,
        cap: float,
        timeout: float,
        limit: float,
    ) -> dict[str, Any]:
        """Cut every connection (``cut``) or wait for the server to drop them; then
        bring every session back.  Returns per-session reconnect times and counters."""
        sem = asyncio.Semaphore(max(1, concurrency))
        backoff = Backoff(first, base, cap, self.rng)
        cut_at = time.monotonic()
        if cut:
            for s in self.sessions:
                s.cut()
        deadline = time.monotonic() + limit
        durations: list[float] = []
        attempts: list[int] = []
        errors: list[str] = []
        resumed0 = sum(s.resumed for s in self.sessions)
        tls_resumed0 = sum(s.tls_resumed for s in self.sessions)

        async def one(s: StormSession) -> None:
            try:
                await asyncio.wait_for(s.dropped.wait(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                errors.append(f"{s.user}: never dropped")
                return
            seconds, tries, error = await reconnect(s, sem, backoff, timeout, deadline)
            attempts.append(tries)
            if error is None:
                durations.append(seconds)
            elif len(errors) < 20:
                errors.append(f"{s.user}: {error}")

        await asyncio.gather(*(one(s) for s in self.sessions))
        finished = time.monotonic()
        return {
            "cut_at": cut_at,
            "finished": finished,
            "ok": len(durations),
            "failed": len(self.sessions) - len(durations),
            "errors": errors[:5],
            "resumed": sum(s.resumed for s in self.sessions) - resumed0,
            "tls_resumed": sum(s.tls_resumed for s in self.sessions) - tls_resumed0,
            "attempts": sum(attempts),
            "durations": array("d", durations).tobytes(),
        }

    async def quiesce(self, timeout: float) -> dict[str, Any]:
        """Wait until every sender's messages are acknowledged (at most ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(not s.unacked for s in self.chatters):
                break
            for s in self.chatters:
                if s.unacked:
                    s.request_ack()
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)  # the last deliveries behind the last acknowledgement
        return {"unacked": sum(len(s.unacked) for s in self.chatters)}

    def count(self, reset: bool = True) -> dict[str, Any]:
        """Messages sent, acknowledged, received, lost and duplicated since the last
        count: ``lost`` are acknowledged ids the peer never received; ``late`` are
        messages of an earlier count that arrived for the first time only now (counted
        lost then), ``late_repeated`` copies of earlier messages received again."""
        by_name = {s.user: s for s in self.sessions}
        sent = acked = received = lost = duplicates = unacked = resent = errors = 0
        late = repeated = 0
        examples: list[str] = []
        for s in self.chatters:
            peer = by_name.get(s.peer.decode().partition("@")[0]) if s.peer else None
            if peer is None:
                continue
            sent += s.sent
            acked += len(s.acked)
            unacked += len(s.unacked)
            resent += s.resent
            mine = f"{s.index}-".encode()
            ours = s.sent_ids
            got = {k: v for k, v in peer.received.items() if k in ours}
            for k, times in peer.received.items():
                if k not in ours and k.startswith(mine):
                    if k in peer.history:
                        repeated += times
                    else:
                        late += 1
                        repeated += times - 1
            received += len(got)
            duplicates += sum(v - 1 for v in got.values())
            missing = [m for m in s.acked if m not in got]
            lost += len(missing)
            examples.extend(m.decode() for m in missing[:2])
            errors += peer.errors
        if reset:
            for s in self.sessions:
                s.sent = s.resent = s.errors = 0
                s.acked.clear()
                s.sent_ids.clear()
                s.history.update(s.received)
                s.received.clear()
        return {
            "sent": sent,
            "acked": acked,
            "received": received,
            "lost": lost,
            "duplicates": duplicates,
            "unacked": unacked,
            "resent": resent,
            "late": late,
            "late_repeated": repeated,
            "error_stanzas": errors,
            "lost_examples": examples[:5],
        }

    def close(self) -> dict[str, Any]:
        n = len(self.sessions)
        for s in self.sessions:
            s.close()
        self.sessions.clear()
        self.chatters.clear()
        return {"closed": n}
