"""The batcher: size and time triggers, order, one batch in flight, flush, errors, backpressure."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from llmspell.runtime.batching import Batcher


class Receiver:
    """The far side of a batcher: records batches; can be held shut or made to fail."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[Any]] = []
        self.delay = delay
        self.gate = asyncio.Event()
        self.gate.set()
        self.in_flight = 0
        self.max_in_flight = 0
        self.fail_next = 0
        self.calls = 0

    async def send(self, batch: list[Any]) -> None:
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self.gate.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.fail_next:
                self.fail_next -= 1
                raise ConnectionError("the far side is gone")
            self.batches.append(list(batch))
        finally:
            self.in_flight -= 1

    @property
    def items(self) -> list[Any]:
        return [item for batch in self.batches for item in batch]


async def settle(rounds: int = 5) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


async def test_a_batch_leaves_as_soon_as_it_holds_max_items() -> None:
    rx = Receiver()
    b: Batcher[int] = Batcher(rx.send, name="t", max_items=5, max_delay=10)
    for i in range(5):
        b.add(i)
    await settle()
    assert rx.batches == [[0, 1, 2, 3, 4]]  # no waiting for max_delay
    for i in range(5, 8):
        b.add(i)
    await asyncio.sleep(0.02)
    assert rx.batches == [[0, 1, 2, 3, 4]] and len(b) == 3  # under max_items: waits
    await b.flush()
    assert rx.batches == [[0, 1, 2, 3, 4], [5, 6, 7]]
    assert (b.sent_batches, b.sent_items) == (2, 8)
    await b.close()


async def test_max_batch_caps_a_single_call() -> None:
    rx = Receiver()
    b: Batcher[int] = Batcher(rx.send, name="t", max_items=5, max_batch=5, max_delay=10)
    for i in range(12):
        b.add(i)
    await settle()
    assert rx.batches == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    await b.flush()
    assert rx.batches[-1] == [10, 11]
    await b.close()


async def test_a_batch_may_carry_up_to_max_batch_items() -> None:
    rx = Receiver()
    b: Batcher[int] = Batcher(rx.send, name="t", max_items=5, max_delay=10)
    assert b.max_batch == 50
    for i in range(12):
        b.add(i)
    await settle()
    assert rx.batches == [list(range(12))]  # all that piled up leaves in one call
    await b.close()


async def test_the_timer_sends_a_partial_batch_after_max_delay() -> None:
    rx = Receiver()
    b: Batcher[str] = Batcher(rx.send, name="t", max_items=100, max_delay=0.03)
    loop = asyncio.get_running_loop()
    start = loop.time()
    b.add("a")
    b.add("b")
    await asyncio.sleep(0.01)
    assert rx.batches == []
    while not rx.batches:
        assert loop.time() - start < 1
        await asyncio.sleep(0.005)
    assert rx.batches == [["a", "b"]]
    assert loop.time() - start >= 0.025
    await b.close()


async def test_order_is_preserved_across_batches() -> None:
    rx = Receiver(delay=0.001)
    b: Batcher[int] = Batcher(rx.send, name="t", max_items=7, max_delay=0.002)
    rng = random.Random(3)
    for i in range(500):
        b.add(i)
        if rng.random() < 0.05:
            await asyncio.sleep(rng.choice([0, 0.001, 0.003]))
    await b.flush()
    assert rx.items == list(range(500))
    assert len(rx.batches) > 1 and max(len(x) for x in rx.batches) <= b.max_batch
    assert b.sent_items == 500 and b.failed_items == 0
    await b.close()


async def test_one_batch_in_flight_and_what_piles_up_leaves_next() -> None:
    rx = Receiver()
    rx.gate.clear()
    b: Batcher[int] = Batcher(rx.send, name="t", max_items=2, max_delay=0.001)
    b.add(0)
    b.add(1)
    await settle()
    assert rx.in_flight == 1
    for i in range(2, 9):
        b.add(i)
    await asyncio.sleep(0.02)
    assert rx.calls == 1 and rx.max_in_flight == 1  # the rest waits for the first call
    rx.gate.set()
    await b.flush()
    assert rx.batches == [[0, 1], list(range(2, 9))]
    assert rx.max_in_flight == 1
    await b.close()


async def test_flush_waits_for_everything_including_the_batch_in_flight() -> None:
    rx = Receiver(delay=0.02)
    b: Batcher[int] = Batcher(rx.send, name="t", max_items=3, max_delay=10)
    for i in range(3):
        b.add(i)
    await settle()
    assert rx.in_flight == 1 and len(b) == 0
    b.add(3)
    await b.flush()
    assert rx.items == [0, 1, 2, 3] and rx.in_flight == 0
    await b.flush()  # nothing pending: returns at once
    await b.close()


async def test_flush_of_an_unused_batcher_returns() -> None:
    b: Batcher[int] = Batcher(Receiver().send, name="t")
    await asyncio.wait_for(b.flush(), 1)
    await b.close()


async def test_a_failing_send_is_reported_and_the_batcher_keeps_working() -> None:
    rx = Receiver()
    rx.fail_next = 1
    errors: list[tuple[BaseException, int]] = []
    b: Batcher[int] = Batcher(rx.send, name="t", max_items=3, max_delay=10,
                              on_error=lambda exc, n: errors.append((exc, n)))
    for i in range(3):
        b.add(i)
    await b.flush()
    assert len(errors) == 1
    assert isinstance(errors[0][0], ConnectionError) and errors[0][1] == 3
    assert b.failed_items == 3 and b.sent_items == 0
    for i in range(3, 5):
        b.add(i)
    await b.flush()
    assert rx.batches == [[3, 4]] and b.sent_items == 2 and b.sent_batches == 1
    await b.close()


async def test_a_failing_send_without_on_error_is_logged_and_survived() -> None:
    rx = Receiver()
    rx.fail_next = 1
    b: Batcher[int] = Batcher(rx.send, name="t", max_items=1, max_delay=10)
    b.add(1)
    await b.flush()
    b.add(2)
    await b.flush()
    assert b.failed_items == 1 and rx.batches == [[2]]
    await b.close()


async def test_wait_room_makes_producers_wait_past_max_pending() -> None:
    rx = Receiver()
    rx.gate.clear()
    b: Batcher[int] = Batcher(rx.send, name="t", max_items=2, max_delay=10, max_pending=5)
    b.add(0)
    b.add(1)
    await settle()
    assert rx.in_flight == 1  # the flusher is busy with [0, 1]
    await asyncio.wait_for(b.wait_room(), 1)  # under the bound: no wait
    for i in range(2, 7):
        b.add(i)
    assert b.full and len(b) == 5
    waiter = asyncio.create_task(b.wait_room())
    await asyncio.sleep(0.02)
    assert not waiter.done()
    rx.gate.set()
    await asyncio.wait_for(waiter, 1)
    assert not b.full
    await b.flush()
    assert rx.items == list(range(7))
    await b.close()


async def test_close_sends_what_is_pending_and_stops() -> None:
    rx = Receiver()
    b: Batcher[int] = Batcher(rx.send, name="t", max_items=100, max_delay=10)
    for i in range(4):
        b.add(i)
    await b.close()
    assert rx.items == [0, 1, 2, 3]
    assert b._task is None
    with pytest.raises(RuntimeError, match="closed"):
        b.add(4)
    await b.close()  # idempotent
    assert rx.items == [0, 1, 2, 3]


async def test_the_batcher_restarts_after_going_idle() -> None:
    rx = Receiver()
    b: Batcher[int] = Batcher(rx.send, name="t", max_items=2, max_delay=0.005)
    for round_ in range(3):
        b.add(round_)
        await asyncio.sleep(0.02)  # the timer sends it; the flusher goes idle
        assert rx.items == list(range(round_ + 1))
    await b.close()


async def test_a_raising_error_reporter_does_not_kill_the_flusher() -> None:
    from llmspell.runtime.batching import Batcher

    sent: list[list[int]] = []

    async def send(items: list[int]) -> None:
        if items[0] == 0:
            raise ConnectionError("peer gone")
        sent.append(items)

    def report(exc: BaseException, count: int) -> None:
        raise RuntimeError("reporter broken")

    batcher: Batcher[int] = Batcher(send, name="t", max_items=1, max_delay=0, on_error=report)
    batcher.add(0)
    await asyncio.wait_for(batcher.flush(), 2)
    batcher.add(1)
    await asyncio.wait_for(batcher.flush(), 2)
    assert sent == [[1]] and batcher.failed_items == 1
    await batcher.close()


def test_the_runtime_services_batch_their_events_longer_than_agents_and_drivers() -> None:
    from llmspell.actors.agent_actor import AgentHost
    from llmspell.actors.pool import PoolReplica, PoolRouter
    from llmspell.runtime.node import Node
    from llmspell.runtime.settings import RuntimeSettings

    settings = RuntimeSettings(event_batch_delay_s=0.2, service_event_batch_delay_s=1.5)
    assert Node(settings, identity="driver").hub_batcher().max_delay == 0.2
    assert Node(settings, identity="svc", service=True).hub_batcher().max_delay == 1.5
    assert PoolReplica.service and PoolRouter.service  # bookkeeping: they wait longer
    assert not AgentHost.service  # agents' events (tokens among them) go out at the usual pace
