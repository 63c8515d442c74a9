"""Every session ending in one event-loop turn (a network blip), in one process.

``python -m bench.teardown_burst`` starts xmppd's ``Server`` in this process (the
in-process harness of :mod:`bench.hotpath`: the c2s listener's own protocol objects on
fake transports, no sockets), with ``last`` loaded as in the example configuration;
gives ``--sessions`` accounts ``--contacts`` contacts each (mutual subscriptions,
neighbours on a ring), logs them all in with their initial presence, then loses every
connection in one callback, as an epoll batch after a blip delivers them. It reports:

* **longest turn**: the longest the event loop went without turning (a timer task
  measures every turn from the drop until everything is done): what a logged-in user's
  message would have waited behind the teardowns;
* **all done**: until every ended session's ``resource_unbound`` hooks finished (the
  unavailable presence to each contact, last activity written);
* **CPU per session**: process CPU over that time, divided by ``--sessions``;
* **last seen rows**: every user must have one (nothing lost by the batching).

Point ``PYTHONPATH`` at another checkout to measure it (with a ``xmppd_modules`` link
to its ``modules/`` first on the path: the installed one is this checkout's).
``--teardowns-per-turn`` sets ``c2s.teardowns_per_turn`` (versions without it reject
the key: leave it out for them).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.hotpath import CONFIG, DOMAIN, PASSWORD, Client, capture_listeners
from bench.xmppd_data import copy_accounts

LOGINS_AT_ONCE = 100


def _rosters(users: list[str], contacts: int) -> dict[str, list[str]]:
    """Each user's ``contacts`` nearest neighbours on a ring (so every item is mutual)."""
    n = len(users)
    half = min(contacts // 2, (n - 1) // 2)
    return {
        user: [users[(i + d) % n] for d in range(1, half + 1)]
        + [users[(i - d) % n] for d in range(1, half + 1)]
        for i, user in enumerate(users)
    }


async def measure(sessions: int, contacts: int, per_turn: int | None) -> dict[str, Any]:
    from xmppd.config import load_config
    from xmppd.jid import JID
    from xmppd.server import Server

    factories = capture_listeners()
    with tempfile.TemporaryDirectory() as tmp:
        c2s = "input_rate = 0" + ("" if per_turn is None else f"\nteardowns_per_turn = {per_turn}")
        text = CONFIG.format(dir=tmp, domain=DOMAIN, input_rate=c2s)
        path = Path(tmp) / "xmppd.toml"
        text = text.replace("ping = {}", "ping = {}\nlast = {}")
        # The logins' PLAIN checks at normal priority (the default lowers it: slower
        # beside other busy processes, and the hashing pool is one per process).
        path.write_text(text.replace("[auth]", "[auth]\nhashing_niceness = 0"))
        server = Server(load_config(path))
        await server.start()
        try:
            users = [f"u{i}" for i in range(sessions)]
            await server.register_user(JID.parse(f"{users[0]}@{DOMAIN}"), PASSWORD)
            url = f"sqlite+aiosqlite:///{tmp}/xmppd.sqlite3"
            rosters = _rosters(users, contacts)
            await asyncio.to_thread(copy_accounts, url, DOMAIN, users[0], users, rosters)
            clients = [Client(factories[0]()) for _ in users]
            for start in range(0, sessions, LOGINS_AT_ONCE):
                batch = list(zip(clients, users, strict=True))[start : start + LOGINS_AT_ONCE]
                await asyncio.gather(*(client.login(user) for client, user in batch))
            await asyncio.sleep(0.5)
            gc.collect()
            result = await _drop_all(server, clients)
            db = sqlite3.connect(f"{tmp}/xmppd.sqlite3")
            try:
                result["last_seen_rows"] = db.execute(
                    "SELECT count(*) FROM mod_last__seen"
                ).fetchone()[0]
            finally:
                db.close()
        finally:
            await server.stop()
    return {"sessions": sessions, "contacts": contacts, "teardowns_per_turn": per_turn, **result}


async def _drop_all(server: Any, clients: list[Client]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    turns: list[float] = []
    done = False

    async def time_turns() -> None:
        while not done:
            started = time.perf_counter()
            await asyncio.sleep(0)
            turns.append(time.perf_counter() - started)

    timer = asyncio.create_task(time_turns())
    await asyncio.sleep(0.01)
    turns.clear()
    cpu, wall = time.process_time(), time.perf_counter()

    def drop_all() -> None:  # one callback: as one epoll batch of closed connections
        for client in clients:
            client.protocol.connection_lost(None)

    loop.call_soon(drop_all)

    def busy() -> bool:
        tasks = asyncio.all_tasks()
        return len(server.sessions) > 0 or any(t.get_name() == "resource_unbound" for t in tasks)

    while busy():  # noqa: ASYNC110 (polls the server's state)
        await asyncio.sleep(0.001)
    spent_wall, spent_cpu = time.perf_counter() - wall, time.process_time() - cpu
    done = True
    await timer
    return {
        "longest_turn_ms": round(max(turns) * 1000, 1),
        "all_done_ms": round(spent_wall * 1000, 1),
        "cpu_us_per_session": round(spent_cpu / len(clients) * 1e6, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.teardown_burst", description=__doc__)
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--contacts", type=int, default=20, help="per user")
    parser.add_argument("--teardowns-per-turn", type=int, help="c2s.teardowns_per_turn")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    result = asyncio.run(measure(args.sessions, args.contacts, args.teardowns_per_turn))
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['sessions']} sessions, {result['contacts']} contacts each: longest "
            f"turn {result['longest_turn_ms']} ms, all done {result['all_done_ms']} ms, "
            f"{result['cpu_us_per_session']} µs CPU per session, "
            f"last seen rows {result['last_seen_rows']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
