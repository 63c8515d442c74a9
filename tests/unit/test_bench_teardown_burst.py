"""bench.teardown_burst in miniature: sessions with contacts all lose their connection
in one turn; every teardown finishes, every user's last seen is written (one batch per
turn), and the figures the benchmark reports are there."""

from __future__ import annotations

import asyncio

from bench.teardown_burst import _rosters, measure


def test_rosters_are_mutual() -> None:
    users = [f"u{i}" for i in range(7)]
    rosters = _rosters(users, 4)
    for user, contacts in rosters.items():
        assert len(contacts) == 4 and user not in contacts
        for contact in contacts:
            assert user in rosters[contact]


async def test_a_burst_of_ends_is_torn_down_in_full() -> None:
    async with asyncio.timeout(60):  # a teardown left waiting would never end
        result = await measure(sessions=60, contacts=4, per_turn=2)
    assert result["last_seen_rows"] == 60
    assert result["longest_turn_ms"] > 0 and result["all_done_ms"] >= result["longest_turn_ms"]
    assert result["cpu_us_per_session"] > 0
