"""The pacer behind the local LLM server's latencies: every waiter wakes at its deadline and never
before it, in deadline order, whatever order they came in; a waiter that gives up takes nothing
with it; closed (or on another loop), it still never wakes anyone early."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

from llmspell.llm.pacing import Pacer


async def _wake_times(pacer: Pacer, deadlines: list[float]) -> list[float]:
    async def one(deadline: float) -> float:
        await pacer.until(deadline)
        return time.monotonic()

    return list(await asyncio.gather(*(one(d) for d in deadlines)))


async def test_waiters_wake_at_their_deadlines_never_before() -> None:
    rng = random.Random(7)
    now = time.monotonic()
    deadlines = [now + rng.uniform(0.001, 0.04) for _ in range(60)] + [now - 1.0, now]
    pacer = Pacer().open()
    try:
        woke = await _wake_times(pacer, deadlines)
    finally:
        pacer.close()
    assert all(w >= d for w, d in zip(woke, deadlines, strict=True))
    by_deadline = [w for _, w in sorted(zip(deadlines, woke, strict=True))]
    assert by_deadline == sorted(by_deadline)  # in deadline order, not arrival order


async def test_a_waiter_that_gives_up_leaves_the_others_on_time() -> None:
    pacer = Pacer().open()
    try:
        now = time.monotonic()
        early = asyncio.ensure_future(pacer.until(now + 0.01))  # the fd is armed for this one
        await asyncio.sleep(0)
        early.cancel()
        woke = await _wake_times(pacer, [now + 0.02, now + 0.03])
        assert woke[0] >= now + 0.02 and woke[1] >= now + 0.03
    finally:
        pacer.close()


async def test_closed_or_never_opened_it_falls_back_to_the_loop_and_is_never_early() -> None:
    pacer = Pacer().open()
    pacer.close()
    for idle in (pacer, Pacer()):
        now = time.monotonic()
        deadlines = [now + 0.005 * i for i in range(1, 6)]
        woke = await _wake_times(idle, deadlines)
        assert all(w >= d for w, d in zip(woke, deadlines, strict=True))


async def test_close_cancels_the_waiters_it_holds() -> None:
    pacer = Pacer().open()
    assert pacer.precise  # Linux: a timerfd
    waiting = asyncio.ensure_future(pacer.until(time.monotonic() + 60))
    await asyncio.sleep(0)
    pacer.close()
    assert not pacer.precise
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(waiting, 5)
    assert waiting.cancelled()
