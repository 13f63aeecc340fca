"""run_pool, the worker loop under MapReduce, Parallel and worker swarms: every index once,
a worker's prefetch queued behind the index it works on, the last indexes to free workers."""

from __future__ import annotations

import asyncio

from llmspell.runtime.cancel import CancelToken
from llmspell.supervisors.workers import Slots, run_pool


async def _pool_trace(count: int, workers: int, prefetch: int, cancel_at: int | None = None
                      ) -> tuple[list[int], dict[int, int], int, int]:
    """run_pool over workers that each run one index at a time (as an agent in an actor does):
    the indexes done, how many each index found its worker holding when it was taken, and the
    most any worker held and ran at once."""
    token = CancelToken()
    locks = [asyncio.Lock() for _ in range(workers)]
    holding, running = [0] * workers, [0] * workers
    done: list[int] = []
    found: dict[int, int] = {}
    peak_held = peak_running = 0

    async def work(w: int, i: int) -> None:
        nonlocal peak_held, peak_running
        found[i] = holding[w]
        holding[w] += 1
        peak_held = max(peak_held, holding[w])
        async with locks[w]:
            running[w] += 1
            peak_running = max(peak_running, running[w])
            await asyncio.sleep(0.002)
            running[w] -= 1
        holding[w] -= 1
        done.append(i)
        if i == cancel_at:
            token.cancel("enough")

    await run_pool(count, workers, work, token, prefetch=lambda w: prefetch)
    return done, found, peak_held, peak_running


async def test_run_pool_prefetch_queues_one_behind_each_worker_but_not_the_last_items() -> None:
    done, found, held, ran = await _pool_trace(count=30, workers=4, prefetch=1)
    assert sorted(done) == list(range(30))  # each index once
    assert held == 2 and ran == 1  # one queued behind the one running, never two running
    assert any(found[i] for i in range(26))  # some were queued behind another
    # Fewer than 4 left: each went to a worker holding nothing.
    assert [found[i] for i in range(27, 30)] == [0, 0, 0]
    done, found, held, ran = await _pool_trace(count=30, workers=4, prefetch=0)
    assert sorted(done) == list(range(30)) and held == 1 and not any(found.values())
    done, found, held, _ = await _pool_trace(count=30, workers=2, prefetch=3)
    assert sorted(done) == list(range(30)) and held == 4


async def test_run_pool_prefetch_takes_nothing_new_once_cancelled() -> None:
    done, _, _, _ = await _pool_trace(count=40, workers=4, prefetch=1, cancel_at=5)
    # What was already taken (at most 2 per worker) finishes; nothing after it starts.
    assert 6 <= len(done) <= 5 + 1 + 2 * 4 and max(done) < 15


async def test_slots_added_while_a_pool_runs_start_that_many_more_workers() -> None:
    """A spread Parallel's share given another share's slots: more at once, never more
    workers than items left, and slots given after the pool ended go nowhere."""
    gates = [asyncio.Event() for _ in range(6)]
    running, peak, done = 0, 0, []
    slots = Slots()

    async def work(_: int, i: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await gates[i].wait()
        running -= 1
        done.append(i)

    pool = asyncio.ensure_future(run_pool(6, 2, work, CancelToken(), slots=slots))
    await asyncio.sleep(0.01)
    assert (running, peak) == (2, 2)  # items 0 and 1
    slots.add(2)
    await asyncio.sleep(0.01)
    assert running == 4  # items 2 and 3 started beside them
    for i in range(4):
        gates[i].set()
    await asyncio.sleep(0.01)
    assert running == 2  # the last two items, taken by workers set free
    slots.add(5)  # no item left to take: no worker starts
    await asyncio.sleep(0.01)
    assert running == 2 and peak == 4
    gates[4].set()
    gates[5].set()
    await pool
    assert sorted(done) == list(range(6))
    slots.add(3)  # after the end: dropped
    assert slots.added == 10


async def test_slots_added_before_the_pool_starts_count_from_its_start() -> None:
    slots = Slots()
    slots.add(2)
    slots.add(0)
    slots.add(-1)  # nothing
    running, peak = 0, 0

    async def work(_: int, i: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1

    await run_pool(8, 1, work, CancelToken(), slots=slots)
    assert peak == 3


async def test_slots_are_not_used_once_the_pool_is_cancelled() -> None:
    token = CancelToken()
    started: list[int] = []
    slots = Slots()

    async def work(_: int, i: int) -> None:
        started.append(i)
        await asyncio.sleep(0.05)

    pool = asyncio.ensure_future(run_pool(10, 1, work, token, slots=slots))
    await asyncio.sleep(0.01)
    token.cancel("stop")
    slots.add(4)
    await pool
    assert started == [0]
