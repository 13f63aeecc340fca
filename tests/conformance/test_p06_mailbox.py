"""Promise 6, bounded mailboxes: 100,000 messages to a slow agent with a mailbox of 1,000 and
the reject policy. Nothing grows without bound (the queue never passes its capacity, the
agent's memory stays flat) and nothing is lost unaccounted: accepted + rejected = sent, as
both the sender and the agent count them, and every accepted message is handled."""

from __future__ import annotations

import asyncio

import psutil
import pytest

from llmspell import Runtime
from tests.conformance.fakes import Sink
from tests.waiting import until

pytestmark = pytest.mark.ray

SENT, CAPACITY = 100_000, 1_000
MEMORY_GROWTH_MB = 100  # a queue of 100,000 payloads would be far above; noise stays below


async def test_a_flood_to_a_slow_agent_is_bounded_and_accounted_for(
        runtime: Runtime, job_id: str) -> None:
    sink = runtime.spawn(Sink, "slow", 0.001, job_id=job_id, mailbox_capacity=CAPACITY,
                         mailbox_overflow="reject")
    info = await sink.wait_ready()
    process = psutil.Process(info["pid"])
    baseline = process.memory_info().rss
    samples: list[tuple[int, int]] = []  # (queued, rss)
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            ping = await sink.ping()
            samples.append((ping["queued"], process.memory_info().rss))
            await asyncio.sleep(0.1)

    sampler = asyncio.ensure_future(sample())
    for i in range(SENT):
        await runtime.tell(sink.address, "item", i, job_id=job_id)
    await runtime.flush()
    done.set()
    await sampler

    stats = (await sink.ping())["mailbox"]
    rejected_at_sender = runtime.node.rejected.get(sink.address, 0)
    assert stats["accepted"] + stats["rejected"] == SENT
    assert rejected_at_sender == stats["rejected"] > 0
    assert max(q for q, _ in samples) <= CAPACITY
    growth_mb = (max(rss for _, rss in samples) - baseline) / 2**20
    assert growth_mb < MEMORY_GROWTH_MB, growth_mb
    # Every accepted message is handled (none dropped silently behind the bound).
    await until(lambda: _count_is(sink, stats["accepted"]), 120, "accepted messages handled")
    handled = await sink.ask("dump", timeout=60)
    numbers = [payload for _, payload in handled]
    assert numbers == sorted(numbers) and len(set(numbers)) == stats["accepted"]


async def _count_is(sink: object, n: int) -> bool:
    return int(await sink.ask("count", timeout=30)) >= n  # type: ignore[attr-defined]
