"""Login work paced per event-loop turn (``c2s.login_reads_per_turn``): with a budget
of one login read per turn, 40 clients that log in at once (STARTTLS, SASL, bind) all
get their session, and a bound pair chatting meanwhile receives every message, in
order. Held reads are handled later, never dropped."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.support.clients import Slix, register_account
from tests.support.rawstream import RawClient
from tests.support.server import running_server

PW = "pacing-pw"
LOGINS = 40


async def test_a_login_burst_on_a_budget_of_one_read_per_turn(tmp_path: Path) -> None:
    with running_server(tmp_path, extra="[c2s]\nlogin_reads_per_turn = 1\n") as server:
        for name in ("pa", "pb", *(f"burst{i}" for i in range(LOGINS))):
            await register_account(server, name, PW)
        async with (
            Slix(server, "pa@localhost", PW) as a,
            Slix(server, "pb@localhost", PW) as b,
        ):
            clients = [RawClient(server) for _ in range(LOGINS)]
            for client in clients:
                await client.connect()

            async def chat() -> None:
                for i in range(20):
                    a.xmpp.send_message(mto=b.jid, mbody=f"during {i}", mtype="chat")
                    await asyncio.sleep(0.05)

            jids, _ = await asyncio.wait_for(
                asyncio.gather(
                    asyncio.gather(
                        *(c.login(f"burst{i}", PW, resource=f"r{i}") for i, c in enumerate(clients))
                    ),
                    chat(),
                ),
                timeout=90,
            )
            assert jids == [f"burst{i}@localhost/r{i}" for i in range(LOGINS)]
            bodies = [
                (await b.next_message(lambda m: m["body"].startswith("during"), timeout=10))["body"]
                for _ in range(20)
            ]
            assert bodies == [f"during {i}" for i in range(20)]
            for client in clients:
                await client.close()
