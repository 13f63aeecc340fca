"""The pool's logic without Ray: dispatch, caps, the queue, scaling with a fake clock, health,
deduplication by idempotency key, and errors on the wire."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llmspell.actors.pool import PoolQueueFull, error_from_wire, error_to_wire
from llmspell.actors.scaling import (
    Deduper,
    PoolConfig,
    QueueFull,
    ReplicaStatus,
    ScaleDecision,
    Scheduler,
)
from llmspell.runtime.errors import Cancelled
from llmspell.tools import ToolArgumentError, ToolError, ToolTimeout, ToolUnavailable


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def pool(clock: FakeClock | None = None, *, ready: int = 0, **options: Any) -> Scheduler:
    sched = Scheduler(PoolConfig(name="p", **options), clock or FakeClock())
    for i in range(ready):
        sched.add(f"r{i}")
        sched.ready(f"r{i}")
    return sched


def loads(sched: Scheduler) -> dict[str, int]:
    return {r.id: r.in_flight for r in sched.replicas()}


# -- dispatch -------------------------------------------------------------------------------------

def test_calls_go_to_the_least_loaded_replica_and_ties_rotate() -> None:
    sched = pool(ready=3, max_concurrency=4)
    placed = [sched.submit(f"c{i}") for i in range(6)]
    assert placed == ["r0", "r1", "r2", "r0", "r1", "r2"]
    sched.finish("c1")  # r1 now carries one call, the others two
    assert sched.submit("c6") == "r1"
    assert loads(sched) == {"r0": 2, "r1": 2, "r2": 2}


def test_the_cap_holds_and_the_queue_is_fifo() -> None:
    sched = pool(ready=2, max_concurrency=1, max_queue=10)
    assert sched.submit("a") == "r0" and sched.submit("b") == "r1"
    assert sched.submit("c") is None and sched.submit("d") is None
    assert sched.queue_depth == 2 and loads(sched) == {"r0": 1, "r1": 1}
    assert sched.finish("b") == [("c", "r1")]  # the freed slot goes to the oldest waiter
    assert sched.finish("a") == [("d", "r0")]
    assert sched.queue_depth == 0


def test_a_full_queue_refuses_new_calls_but_never_a_retry() -> None:
    sched = pool(ready=1, max_queue=2)
    sched.submit("running")
    sched.submit("w1")
    sched.submit("w2")
    with pytest.raises(QueueFull) as info:
        sched.submit("w3")
    assert info.value.waiting == 2 and "'p'" in str(info.value)
    assert sched.counters.rejected == 1
    assert sched.submit("retry", retry=True) is None  # admitted already: jumps the queue
    assert sched.finish("running") == [("retry", "r0")]


def test_a_call_that_gives_up_leaves_the_queue_or_returns_its_slot() -> None:
    sched = pool(ready=1)
    sched.submit("a")
    sched.submit("b")
    sched.submit("c")
    assert sched.withdraw("b") == []
    assert sched.finish("a") == [("c", "r0")]
    # "c" was just granted the slot as its deadline passed: withdrawing gives the slot back.
    sched.submit("d")
    assert sched.withdraw("c") == [("d", "r0")]


def test_starting_draining_and_hung_replicas_take_no_calls() -> None:
    sched = pool(ready=1, max_concurrency=2)
    sched.add("new")
    assert sched.submit("a") == "r0" and sched.submit("b") == "r0"
    assert sched.submit("c") is None
    assert sched.ready("new") == [("c", "new")]
    sched.mark_hung("r0")
    assert sched.submit("d") == "new"
    assert sched.submit("e") is None
    assert sched.replica("r0").status is ReplicaStatus.draining  # type: ignore[union-attr]


def test_a_removed_replica_takes_its_calls_with_it() -> None:
    sched = pool(ready=2, max_concurrency=2)
    for cid in "abcd":
        sched.submit(cid)
    lost = sched.evict("r0")
    assert sorted(lost) == ["a", "c"]
    assert sched.finish("a") == []  # its slot went with the replica
    assert sched.in_flight == 2 and sched.counters.replicas_failed == 1
    assert sched.evict("r0") == [] and sched.counters.replicas_failed == 1  # once
    sched.mark_hung("r1")
    sched.mark_hung("r1")
    sched.evict("r1")  # hung, then found dead: still one failure
    assert sched.counters.replicas_failed == 2


# -- scaling --------------------------------------------------------------------------------------

def test_the_minimum_is_filled_first() -> None:
    sched = pool()
    assert sched.decide() == ScaleDecision(0, 1, "below the minimum of 1 replicas")


def test_a_backlog_adds_replicas_for_what_is_not_already_coming() -> None:
    clock = FakeClock()
    sched = pool(clock, ready=1, max_replicas=8, max_concurrency=2)
    for i in range(7):
        sched.submit(f"c{i}")
    assert sched.queue_depth == 5
    decision = sched.decide()
    assert decision is not None
    assert (decision.current, decision.target) == (1, 4)  # ceil(5 / 2) more
    assert "backlog of 5" in decision.reason
    for i in range(3):
        sched.add(f"n{i}")
    assert sched.decide() is None  # the three starting replicas cover the backlog
    for i in range(7, 11):
        sched.submit(f"c{i}")
    assert sched.decide() == ScaleDecision(4, 6, "backlog of 9 call(s) waiting")


def test_scale_up_never_passes_the_maximum_and_may_wait_for_a_delay() -> None:
    clock = FakeClock()
    sched = pool(clock, ready=1, max_replicas=3, scale_up_delay_s=0.5)
    for i in range(20):
        sched.submit(f"c{i}")
    assert sched.decide() is None  # the backlog is fresh
    clock.advance(0.5)
    assert sched.decide() == ScaleDecision(1, 3, "backlog of 19 call(s) waiting")
    sched.add("n1")
    sched.add("n2")
    assert sched.decide() is None


def test_scale_down_follows_the_peak_of_the_idle_window_never_below_min() -> None:
    clock = FakeClock()
    sched = pool(clock, ready=4, min_replicas=1, max_replicas=4, idle_timeout_s=10)
    for i in range(4):
        sched.submit(f"c{i}")
    clock.advance(1)
    for i in range(2):
        sched.finish(f"c{i}")  # two calls still running
    clock.advance(9.5)
    assert sched.decide() is None  # four were needed 9.5 s ago
    clock.advance(1)
    decision = sched.decide()
    assert decision is not None and (decision.current, decision.target) == (4, 2)
    assert "idle" in decision.reason
    assert sorted(sched.drain(2)) == ["r0", "r1"]  # the idle ones, not the busy ones
    sched.finish("c2")
    sched.finish("c3")
    assert sorted(r.id for r in sched.drained()) == ["r0", "r1"]
    clock.advance(10.1)
    assert sched.decide() == ScaleDecision(2, 1, "idle: the peak demand of the last 10s "
                                                 "needed 1 replica(s)")


def test_a_busy_pool_does_not_scale_down_and_a_manual_scale_is_held() -> None:
    clock = FakeClock()
    sched = pool(clock, ready=2, min_replicas=1, max_replicas=4, idle_timeout_s=5)
    sched.submit("steady1")
    sched.submit("steady2")
    for _ in range(20):  # two long calls keep both replicas needed
        clock.advance(1)
        assert sched.decide() is None
    sched.hold(4)  # as after scale_to(4): kept for idle_timeout_s
    clock.advance(4.9)
    assert sched.recent_need() == 4
    clock.advance(0.2)
    assert sched.recent_need() == 2


def test_draining_prefers_starting_replicas_then_the_newest_idle_ones() -> None:
    sched = pool(ready=3, max_concurrency=2)
    sched.submit("a")  # on r0
    sched.add("late")
    assert sched.drain(1) == ["late"]
    assert sched.drain(1) == ["r2"]
    assert sched.active == 2


def test_failing_starts_back_off() -> None:
    clock = FakeClock()
    sched = pool(clock)
    for expected_delay in (0.5, 1.0, 2.0):
        decision = sched.decide()
        assert decision is not None and decision.target == 1
        sched.add("r")
        sched.start_failed("r")
        assert sched.decide() is None
        clock.advance(expected_delay)
    assert sched.decide() is not None
    sched.add("r")
    sched.ready("r")
    assert sched.counters.replicas_failed == 3 and sched.counters.replicas_started == 1


# -- health ---------------------------------------------------------------------------------------

def test_missed_pings_count_until_the_limit_and_an_answer_resets_them() -> None:
    sched = pool(ready=1, max_missed_pings=3)
    assert sched.ping_missed("r0") is False
    assert sched.ping_missed("r0") is False
    sched.ping_ok("r0")
    assert [sched.ping_missed("r0") for _ in range(3)] == [False, False, True]
    assert sched.ping_missed("gone") is False


def test_config_errors_name_the_pool_and_field() -> None:
    with pytest.raises(ValueError, match=r"pool 'p': max_replicas must be >= max\(1, "):
        PoolConfig(name="p", min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match="max_concurrency must be >= 1"):
        PoolConfig(name="p", max_concurrency=0)
    with pytest.raises(ValueError, match="idle_timeout_s must be > 0"):
        PoolConfig(name="p", idle_timeout_s=0)
    assert PoolConfig(name="p").router_concurrency == 4 * 1 + 256 + 32


# -- deduplication --------------------------------------------------------------------------------

async def test_deduper_runs_a_key_once_and_joins_repeats() -> None:
    dedupe: Deduper[int] = Deduper(capacity=2)
    runs = 0
    gate = asyncio.Event()

    async def work() -> int:
        nonlocal runs
        runs += 1
        await gate.wait()
        return runs

    first = asyncio.ensure_future(dedupe.run("k", work))
    second = asyncio.ensure_future(dedupe.run("k", work))  # joins the running one
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(first, second) == [1, 1]
    assert await dedupe.run("k", work) == 1  # completed: the stored result
    assert (runs, dedupe.hits) == (1, 2)
    assert await dedupe.run(None, work) == 2  # no key: always runs
    await dedupe.run("k2", work)
    await dedupe.run("k3", work)
    assert "k" not in dedupe  # the oldest key left the window


async def test_deduper_does_not_keep_failures() -> None:
    dedupe: Deduper[str] = Deduper()
    attempts = 0

    async def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("first try fails")
        return "ok"

    with pytest.raises(RuntimeError):
        await dedupe.run("k", flaky)
    assert await dedupe.run("k", flaky) == "ok"
    assert await dedupe.run("k", lambda: flaky(), keep=lambda _: False) == "ok"


# -- errors on the wire ---------------------------------------------------------------------------

def round_trip(exc: BaseException, tool: str = "t") -> Exception:
    return error_from_wire(error_to_wire(exc, tool))


def test_tool_errors_cross_the_wire_with_their_class_message_and_fields() -> None:
    bad = round_trip(ToolArgumentError("order", [{"path": "count", "message": "not an int"}]))
    assert isinstance(bad, ToolArgumentError)
    assert bad.tool == "order" and bad.errors == [{"path": "count", "message": "not an int"}]
    assert str(bad) == "tool 'order': invalid arguments: count: not an int"
    late = round_trip(ToolTimeout("nap", 1.5))
    assert isinstance(late, ToolTimeout) and late.timeout == 1.5 and "1.5s" in str(late)
    full = round_trip(PoolQueueFull("t", "job/p", 7))
    assert isinstance(full, PoolQueueFull) and isinstance(full, ToolUnavailable)
    assert full.waiting == 7 and "'job/p' is full" in str(full)


def test_a_tools_own_bug_and_a_cancellation_cross_the_wire() -> None:
    bug = round_trip(KeyError("missing"), tool="lookup")
    assert type(bug) is ToolError
    assert str(bug) == "tool 'lookup': failed: KeyError: 'missing'"

    class Custom(ToolError):
        pass

    custom = round_trip(Custom("t", "nope"))
    assert type(custom) is ToolError and custom.error_type == "Custom"  # type: ignore[attr-defined]
    cancelled = round_trip(Cancelled("budget spent"))
    assert isinstance(cancelled, Cancelled) and cancelled.reason == "budget spent"
