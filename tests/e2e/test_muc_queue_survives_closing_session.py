"""A room handles its stanzas one at a time: a message that arrives while the room is
busy waits in the room's queue, and its sender is done with it (its stream goes on,
and acknowledges it). The queue used to be worked through by whichever session's task
found the room idle; when that session closed, its task was cancelled in the middle of
another sender's message, which nobody got and nobody heard of. Here a test module
makes messages starting with "slow" take a second in the room, and the session whose
task is working the queue goes away while it handles someone else's message: that
message still reaches the room, and the room goes on."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.muc import create_room, groupchat, next_groupchat, user_in_room
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, running_server

SLOW_MODULE = """
import asyncio

from xmppd.api import Element, Module, ModuleContext, Options
from xmppd_modules.mod_muc.hooks import GROUPCHAT_MESSAGE, GroupchatContext

module = Module("slowroom", "test: groupchat messages starting with 'slow' take a second")


@module.fold(GROUPCHAT_MESSAGE)
async def slow(ctx: ModuleContext[Options], stanza: Element, room: GroupchatContext) -> Element:
    if (stanza.findtext("body") or "").startswith("slow"):
        await asyncio.sleep(1.0)
    return stanza
"""


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    tmp: Path = tmp_path_factory.mktemp("slowroom")
    (tmp / "modules").mkdir()
    (tmp / "modules" / "mod_slowroom.py").write_text(SLOW_MODULE)
    with running_server(
        tmp,
        modules={**DEFAULT_TEST_MODULES, "slowroom": {}},
        server={"module_paths": [str(tmp / "modules")]},
    ) as srv:
        yield srv


async def test_a_queued_message_survives_the_session_working_the_queue(
    slow_server: XmppdServer,
) -> None:
    owner, room, _ = await create_room(slow_server)
    alice, _, _ = await user_in_room(slow_server, room, "alice")
    bob, _, _ = await user_in_room(slow_server, room, "bob")
    try:
        # Alice's message keeps the room busy for a second, in Alice's stream's task;
        # Bob's waits in the queue, and that task takes it up next.
        await groupchat(alice, room, "slow from alice")
        await asyncio.sleep(0.3)
        await groupchat(bob, room, "slow from bob")
        await next_groupchat(owner, room, "slow from alice")
        await asyncio.sleep(0.4)  # the room is inside Bob's message now
        alice.abort()  # her stream ends: its task is cancelled
        await next_groupchat(owner, room, "slow from bob")
        await next_groupchat(bob, room, "slow from bob")  # the sender's echo
        await groupchat(bob, room, "and on")
        await next_groupchat(owner, room, "and on")
    finally:
        for client in (owner, alice, bob):
            await client.close()
