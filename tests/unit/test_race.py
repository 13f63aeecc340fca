"""`race`: the first of several awaitables to end wins; the others are cancelled and awaited
before it returns, and a cancelled caller takes all of them down with it."""

from __future__ import annotations

import asyncio

import pytest

from llmspell.runtime.cancel import race


async def test_the_first_to_end_wins_and_the_others_are_cancelled_before_it_returns() -> None:
    cleaned: list[str] = []

    async def slow() -> str:
        try:
            await asyncio.sleep(30)
        finally:
            cleaned.append("slow")
        return "never"

    async def quick() -> str:
        await asyncio.sleep(0.01)
        return "quick"

    won, lost = await race(quick(), slow())
    assert won.result() == "quick" and lost.cancelled() and cleaned == ["slow"]


async def test_an_error_ends_the_race_too_and_stays_readable() -> None:
    async def boom() -> None:
        raise ValueError("boom")

    failed, waiting = await race(boom(), asyncio.Event().wait())
    assert isinstance(failed.exception(), ValueError) and waiting.cancelled()


async def test_a_cancelled_caller_leaves_no_task_running() -> None:
    started = asyncio.Event()
    ended: list[str] = []

    async def forever(name: str) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            ended.append(name)

    outer = asyncio.ensure_future(race(forever("a"), forever("b")))
    await started.wait()
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert sorted(ended) == ["a", "b"]
