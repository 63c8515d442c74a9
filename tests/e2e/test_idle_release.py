"""What an idle client connection costs: after ``c2s.idle_release`` without input, a
session's stream holds neither its XML parser nor a task waiting for its input, and the
next stanza the client sends is handled as if nothing had been freed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.support.e2e import PASSWORD, new_account
from tests.support.inprocess import inprocess_server
from tests.support.xmlclient import XmlClient

PING = "<ping xmlns='urn:xmpp:ping'/>"


def input_workers() -> int:
    """Tasks of this process that handle a stream's input (the server runs in it)."""
    return sum(
        1
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "") == "StreamMachine._drain"
    )


async def test_an_idle_session_holds_no_input_task_and_answers_afterwards(
    tmp_path: Path,
) -> None:
    async with inprocess_server(tmp_path, extra="[c2s]\nidle_release = 1\n") as srv:
        clients = [
            await XmlClient.login(srv, await new_account(srv, "idler"), PASSWORD)  # type: ignore[arg-type]
            for _ in range(5)
        ]
        try:
            for client in clients:
                assert (await client.iq("get", PING, to=srv.domain)).get("type") == "result"
            # Right after a stanza each stream keeps the task that handled it, waiting
            # for the next read.
            assert input_workers() >= len(clients)
            async with asyncio.timeout(10):
                while input_workers():  # noqa: ASYNC110 (polls the task list)
                    await asyncio.sleep(0.1)
            # Idle: none left; the next stanza starts one again, and is answered.
            for client in clients:
                assert (await client.iq("get", PING, to=srv.domain)).get("type") == "result"
            assert input_workers() >= len(clients)
        finally:
            for client in clients:
                await client.close()
