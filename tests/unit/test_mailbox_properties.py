"""Mailbox: ordering per stream and no loss under random interleavings (hypothesis), plus
bounds, priorities, duplicates, gaps and dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmspell.runtime.errors import MailboxClosed, MailboxError, MailboxFull
from llmspell.runtime.mailbox import Mailbox
from llmspell.runtime.messages import Envelope, Priority


def env(stream: str, seq: int, **kw: Any) -> Envelope:
    return Envelope(type="m", payload=(stream, seq), sender=stream, stream=stream, seq=seq, **kw)


async def drain(box: Mailbox, n: int) -> list[Envelope]:
    return [(await box.get())[0] for _ in range(n)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(counts=st.lists(st.integers(1, 25), min_size=1, max_size=5),
       capacity=st.integers(1, 20), seed=st.integers(0, 10_000))
def test_order_per_stream_and_no_loss_with_concurrent_producers(
        counts: list[int], capacity: int, seed: int) -> None:
    """Each message arrives as its own concurrent call after a random delay (as Ray
    delivers calls to an async actor), into a small blocking mailbox drained by one consumer:
    each stream is delivered in seq order and nothing is lost."""

    async def scenario() -> None:
        rng = random.Random(seed)
        box = Mailbox("m", capacity=capacity, overflow="block", gap_timeout=30)
        arrivals = [env(f"s{i}", seq) for i, n in enumerate(counts)
                    for seq in range(1, n + 1)]
        delays = [rng.randrange(0, 6) for _ in arrivals]

        async def arrive(e: Envelope, delay: int) -> None:
            for _ in range(delay):
                await asyncio.sleep(0)
            await box.put(e)

        chunks = [[(e, d)] for e, d in zip(arrivals, delays, strict=True)]

        async def produce(chunk: list[tuple[Envelope, int]]) -> None:
            for e, d in chunk:
                await arrive(e, d)

        consumer = asyncio.create_task(drain(box, len(arrivals)))
        await asyncio.wait_for(asyncio.gather(*(produce(c) for c in chunks)), 10)
        delivered = await asyncio.wait_for(consumer, 10)
        by_stream: dict[str, list[int]] = {}
        for e in delivered:
            by_stream.setdefault(e.stream, []).append(e.seq)
        assert by_stream == {f"s{i}": list(range(1, n + 1)) for i, n in enumerate(counts)}
        assert box.stats.accepted == len(arrivals) and box.stats.delivered == len(arrivals)

    asyncio.run(scenario())


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 30), missing=st.data(), seed=st.integers(0, 10_000))
def test_gaps_are_reported_and_nothing_is_silently_lost(n: int, missing: st.DataObject,
                                                        seed: int) -> None:
    """Some seqs never come: after the gap timeout every sent message is delivered (in order)
    and every missing one is reported in a gap."""
    lost = missing.draw(st.sets(st.integers(1, n - 1), max_size=n // 2))

    async def scenario() -> None:
        gaps: list[tuple[int, int]] = []
        box = Mailbox("m", gap_timeout=0.01, on_gap=lambda s, a, b: gaps.append((a, b)))
        sent = [env("s", seq) for seq in range(1, n + 1) if seq not in lost]
        random.Random(seed).shuffle(sent)
        for e in sent:
            await box.put(e)
        delivered = await asyncio.wait_for(drain(box, len(sent)), 5)
        assert [e.seq for e in delivered] == sorted(e.seq for e in sent)
        reported = {s for a, b in gaps for s in range(a, b + 1)}
        assert reported == lost
        assert box.stats.accepted + box.stats.rejected + box.stats.duplicates == len(sent)

    asyncio.run(scenario())


@settings(max_examples=30, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 12)), max_size=60),
       capacity=st.integers(1, 8))
def test_accounting_with_reject_policy_and_duplicates(ops: list[tuple[int, int]],
                                                     capacity: int) -> None:
    """Every offer is accepted, rejected or a duplicate; delivered + dead letters + queued
    equals accepted."""

    async def scenario() -> None:
        dead: list[str] = []
        box = Mailbox("m", capacity=capacity, overflow="reject", gap_timeout=30,
                      on_dead_letter=lambda e, r: dead.append(r))
        offered = delivered = 0
        for stream, seq in ops:
            offered += 1
            with contextlib.suppress(MailboxFull):
                box.put_nowait(env(f"s{stream}", seq))
            if seq % 3 == 0:
                delivered += box.get_nowait() is not None
        s = box.stats
        assert s.accepted + s.rejected + s.duplicates == offered
        queued = box.close()
        assert delivered + queued == s.accepted - (len(dead) - queued)
        assert s.delivered == delivered

    asyncio.run(scenario())


async def test_priorities_and_fifo_within_a_lane() -> None:
    box = Mailbox("m")
    for i in range(3):
        await box.put(Envelope(type=f"low{i}", priority=Priority.LOW))
    await box.put(Envelope(type="normal"))
    await box.put(Envelope(type="stop", priority=Priority.SYSTEM))
    assert [e.type for e in await drain(box, 5)] == ["stop", "normal", "low0", "low1", "low2"]


async def test_block_policy_waits_and_system_messages_bypass_the_bound() -> None:
    box = Mailbox("m", capacity=2, overflow="block")
    await box.put(Envelope(type="a"))
    await box.put(Envelope(type="b"))
    blocked = asyncio.create_task(box.put(Envelope(type="c")))
    await asyncio.sleep(0.01)
    assert not blocked.done()
    await box.put(Envelope(type="stop", priority=Priority.SYSTEM))  # never refused for room
    assert (await box.get())[0].type == "stop"
    assert (await box.get())[0].type == "a"
    await asyncio.wait_for(blocked, 1)
    assert [e.type for e in await drain(box, 2)] == ["b", "c"]


async def test_reject_policy_and_a_rejected_seq_does_not_stall_its_stream() -> None:
    box = Mailbox("m", capacity=1, overflow="reject", gap_timeout=30)
    await box.put(env("s", 1))
    with pytest.raises(MailboxFull, match="full"):
        await box.put(env("s", 2))
    await box.get()
    await box.put(env("s", 3))  # 2 was refused and used up: 3 is next, no waiting
    assert (await asyncio.wait_for(box.get(), 1))[0].seq == 3


async def test_duplicate_ask_gets_the_originals_reply() -> None:
    box = Mailbox("m")
    loop = asyncio.get_running_loop()
    first, second = loop.create_future(), loop.create_future()
    assert await box.put(Envelope(type="q", idempotency_key="k1"), first)
    assert not await box.put(Envelope(type="q", idempotency_key="k1"), second)
    _, reply = await box.get()
    assert reply is first
    first.set_result("answer")
    assert await asyncio.wait_for(second, 1) == "answer"
    assert box.stats.duplicates == 1 and len(box) == 0


async def test_expired_deadline_and_close_make_dead_letters() -> None:
    dead: list[tuple[str, str]] = []
    box = Mailbox("m", on_dead_letter=lambda e, r: dead.append((e.type, r)))
    reply = asyncio.get_running_loop().create_future()
    await box.put(Envelope(type="late", deadline=0.0), reply)
    await box.put(Envelope(type="queued"))
    assert (await box.get())[0].type == "queued"
    assert dead == [("late", "deadline expired before it was handled")]
    with pytest.raises(MailboxError, match="deadline"):
        await reply
    await box.put(env("s", 2))  # held, waiting for seq 1
    getter = asyncio.create_task(box.get())
    await asyncio.sleep(0)
    assert box.close("stopping") == 1
    assert dead[-1] == ("m", "stopping")
    with pytest.raises(MailboxClosed):
        await getter
    with pytest.raises(MailboxClosed):
        await box.put(Envelope(type="after"))


async def test_positions_carry_streams_across_a_restart() -> None:
    box = Mailbox("m")
    for seq in (1, 2, 3):
        await box.put(env("s", seq))
    restarted = Mailbox("m", gap_timeout=30)
    restarted.restore_positions(box.positions())
    await restarted.put(env("s", 4))  # continues at 4: no wait for 1..3 again
    assert (await asyncio.wait_for(restarted.get(), 1))[0].seq == 4
    assert not await restarted.put(env("s", 2))  # already handled before the restart
