"""A node that stalls (stopped by a signal here; a long pause of a VM or a process has
the same effect) for longer than ``node_timeout`` is taken for dead and cleaned up
after by the other node. It has seen no error from Redis, yet it must find out when it
runs again and publish its sessions again: its users stay reachable from the other
node without logging in again."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clients import Slix, register_account
from tests.support.cluster import ClusterNodes, chat_until_delivered, running_cluster, until

PW = "stall-pw"
_names = itertools.count()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterNodes]:
    with running_cluster(tmp_path, nodes=2) as nodes:
        yield nodes


@pytest.mark.timeout(120)
async def test_a_node_taken_for_dead_while_stalled_is_reachable_again(
    cluster: ClusterNodes,
) -> None:
    node1, node2 = cluster.nodes
    alice, bob = f"st{next(_names)}", f"st{next(_names)}"
    await register_account(node1, alice, PW)
    await register_account(node1, bob, PW)
    async with (
        Slix(node1, f"{alice}@localhost", PW) as a,
        Slix(node2, f"{bob}@localhost", PW) as b,
    ):
        await asyncio.sleep(0.5)
        b.xmpp.send_message(mto=a.jid, mbody="before the stall", mtype="chat")
        await a.next_message(lambda m: m["body"] == "before the stall")

        os.kill(node1.process.pid, signal.SIGSTOP)
        try:
            await until(
                lambda: "node node1 is dead" in node2.log_text(),
                timeout=30,
                what="node 2 never took the stalled node 1 for dead",
            )
        finally:
            os.kill(node1.process.pid, signal.SIGCONT)

        # Node 1 finds its heartbeat had expired and publishes alice's session again;
        # until then node 2 has no session of hers (a message would go offline, which
        # this server has no module for: it bounces). Keep trying for a while.
        await chat_until_delivered(b, a, within=20, each=2, what="alice is unreachable")
        a.xmpp.send_message(mto=b.jid, mbody="and back", mtype="chat")
        await b.next_message(lambda m: m["body"] == "and back", timeout=10)
        assert "heartbeat had expired" in node1.log_text()
    for node in cluster.nodes:
        assert node.process.poll() is None
