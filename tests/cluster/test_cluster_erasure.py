"""Scheduled erasures (GDPR, ``xmppd erase --grace``) in a cluster: one node sweeps,
the owner of the sweeper's key by rendezvous hashing, not every node."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clients import register_account
from tests.support.cluster import ClusterNodes, running_cluster, start_node, wait_live
from xmppd.cluster.membership import rendezvous_owner
from xmppd.datarights import SWEEPER_KEY

ERASED = "erased account gone@localhost (grace period over)"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterNodes]:
    with running_cluster(tmp_path, nodes=2) as nodes:
        yield nodes


@pytest.mark.timeout(150)
async def test_one_node_runs_the_due_erasures(cluster: ClusterNodes) -> None:
    names = [node.log_path.parent.name for node in cluster.nodes]
    owner_name = rendezvous_owner(SWEEPER_KEY, names)
    owner = next(n for n in cluster.nodes if n.log_path.parent.name == owner_name)
    other = next(n for n in cluster.nodes if n is not owner)
    await register_account(other, "gone", "gone-password")
    made = other.cli("erase", "gone@localhost", "--grace", "2s")
    assert made.returncode == 0, made.stdout + made.stderr
    await asyncio.sleep(3)  # due now
    # The other node starts again: a sweeper runs at start-up, but not on this node.
    other.process.send_signal(signal.SIGTERM)
    assert other.process.wait(timeout=40) == 0
    start_node(other)
    wait_live(cluster.nodes)
    # The owner's sweeper erases it at its next look (at most a minute).
    deadline = time.monotonic() + 75
    while ERASED not in owner.log_text():
        assert time.monotonic() < deadline, "the owner never erased the account"
        assert ERASED not in other.log_text(), "the node that does not sweep erased it"
        await asyncio.sleep(0.5)
    await asyncio.sleep(1)
    assert ERASED not in other.log_text()
    assert "Traceback" not in owner.log_text() + other.log_text()
