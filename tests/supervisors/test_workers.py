"""run_pool, the worker loop under MapReduce, Parallel and worker swarms: every index once,
a worker's prefetch queued behind the index it works on, the last indexes to free workers."""

from __future__ import annotations

import asyncio

from llmspell.runtime.cancel import CancelToken
from llmspell.supervisors.workers import run_pool


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
