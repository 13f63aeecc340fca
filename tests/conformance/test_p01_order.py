"""Promise 1, per-sender order: 8 senders x 1,000 numbered messages, sent with seeded random
pauses, to one actor: each sender's messages are handled in increasing order, none lost, none
twice (Ray keeps no order between calls to an async actor; the mailbox's seq numbers do)."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest

from llmspell import Runtime
from tests.conformance.fakes import OrderedSender, Sink

pytestmark = pytest.mark.ray

SENDERS, MESSAGES = 8, 1_000


async def test_each_senders_messages_are_handled_in_order(runtime: Runtime, job_id: str
                                                          ) -> None:
    sink = runtime.spawn(Sink, "sink", job_id=job_id)
    senders = [runtime.spawn(OrderedSender, f"sender{i}", job_id=job_id) for i in range(SENDERS)]
    await asyncio.gather(sink.wait_ready(), *(s.wait_ready() for s in senders))
    sent = await asyncio.gather(*(
        s.ask("send", {"target": sink.address, "count": MESSAGES, "seed": i}, timeout=120)
        for i, s in enumerate(senders)))
    assert sent == [MESSAGES] * SENDERS
    # Tells are one-way: wait until all have been handled, then read the history.
    await _handled(sink, SENDERS * MESSAGES)
    handled: dict[str, list[int]] = defaultdict(list)
    for sender, payload in await sink.ask("dump", timeout=60):
        handled[sender].append(payload)
    assert sorted(handled) == sorted(s.address for s in senders)
    for sender, numbers in handled.items():
        assert numbers == list(range(MESSAGES)), f"{sender}: out of order, lost or repeated"
    stats = (await sink.ping())["mailbox"]
    assert stats["gaps"] == 0 and stats["duplicates"] == 0 and stats["dead_letters"] == 0


async def _handled(sink: object, total: int) -> None:
    from tests.waiting import until

    async def done() -> bool:
        return int(await sink.ask("count", timeout=30)) >= total  # type: ignore[attr-defined]

    await until(done, 120, f"{total} messages handled")
