"""GroupCommit on its own: what is submitted in one turn of the event loop reaches the
write function as one batch, results go back to their callers in order, a row the
database refuses fails alone, any other failure reaches every caller of its batch, and
callers still waiting when the writer is cancelled hear that the server stops."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa

from xmppd.storage.groupcommit import GroupCommit
from xmppd.storage.retry import StorageUnavailable


class Recorder:
    """A write function that records its batches (and fails on request)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.refuse: set[int] = set()
        self.down = False

    async def write(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        await asyncio.sleep(0)  # a database that yields, as PostgreSQL does
        if self.down:
            raise ConnectionError("database down")
        if self.refuse & set(items):
            raise sa.exc.IntegrityError("INSERT", {}, Exception("duplicate key"))
        return [i * 10 for i in items]


async def test_one_turn_is_one_batch_and_results_go_back_in_order() -> None:
    rec = Recorder()
    commit = GroupCommit(rec.write)
    assert await asyncio.gather(*(commit.submit(i) for i in range(5))) == [0, 10, 20, 30, 40]
    assert rec.batches == [[0, 1, 2, 3, 4]]
    assert await commit.submit(7) == 70  # later: a batch of its own
    assert rec.batches[-1] == [7]


async def test_items_submitted_while_a_batch_is_written_form_the_next() -> None:
    rec = Recorder()
    commit = GroupCommit(rec.write)
    first = asyncio.ensure_future(commit.submit(1))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the writer has taken [1] and waits on the database
    later = [asyncio.ensure_future(commit.submit(i)) for i in (2, 3)]
    assert await asyncio.gather(first, *later) == [10, 20, 30]
    assert rec.batches == [[1], [2, 3]]


async def test_a_refused_row_fails_alone() -> None:
    rec = Recorder()
    rec.refuse = {2}
    commit = GroupCommit(rec.write)
    results = await asyncio.gather(*(commit.submit(i) for i in range(4)), return_exceptions=True)
    assert results[:2] == [0, 10] and results[3] == 30
    assert isinstance(results[2], sa.exc.IntegrityError)
    assert rec.batches == [[0, 1, 2, 3], [0], [1], [2], [3]]


async def test_an_unavailable_database_fails_every_caller_of_the_batch() -> None:
    rec = Recorder()
    rec.down = True
    commit = GroupCommit(rec.write)
    results = await asyncio.gather(*(commit.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    rec.down = False
    assert await commit.submit(5) == 50  # the writer goes on


@pytest.mark.parametrize(
    ("turns", "written"),
    [(1, []), (2, [[0, 1, 2]])],
    ids=["before-it-starts", "while-writing"],
)
async def test_callers_hear_when_the_writer_is_cancelled(
    turns: int, written: list[list[int]]
) -> None:
    rec = Recorder()
    commit = GroupCommit(rec.write)
    waiting = [asyncio.ensure_future(commit.submit(i)) for i in range(3)]
    for _ in range(turns):  # 1: queued, the writer created; 2: it waits on the database
        await asyncio.sleep(0)
    assert rec.batches == written
    writer = commit._task
    assert writer is not None
    writer.cancel()
    for w in waiting:
        with pytest.raises(StorageUnavailable):
            await w
    assert await commit.submit(4) == 40  # a new writer for what comes next


async def test_a_linger_gathers_a_burst_and_leaves_a_lone_write_alone() -> None:
    """After a quiet spell a write goes at once; one that follows a batch closely (a
    burst) waits the linger, and what is submitted meanwhile joins it."""
    rec = Recorder()
    commit = GroupCommit(rec.write, linger=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await commit.submit(1) == 10  # nothing before it: no wait
    assert loop.time() - started < 0.25
    second = asyncio.ensure_future(commit.submit(2))
    await asyncio.sleep(0.05)
    more = [asyncio.ensure_future(commit.submit(i)) for i in (3, 4)]
    assert await asyncio.gather(second, *more) == [20, 30, 40]
    assert rec.batches == [[1], [2, 3, 4]]
    await asyncio.sleep(0.2)  # longer than the burst window: quiet again
    started = loop.time()
    assert await commit.submit(5) == 50
    assert loop.time() - started < 0.25
    assert rec.batches[-1] == [5]
