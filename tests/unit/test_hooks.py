"""Tests of llmspell.runtime.hooks: chain order, the six results through call(), isolation."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmspell.runtime.errors import HookCancelled
from llmspell.runtime.hooks import (
    CONTINUE,
    Cancel,
    Continue,
    HookContext,
    HookPoint,
    HookRegistry,
    HookResult,
    Modify,
    Outcome,
    Redirect,
    Replace,
    Retry,
)

BEFORE, AFTER = HookPoint.before_tool_call, HookPoint.after_tool_call
ON_ERROR, ON_RETRY = HookPoint.on_error, HookPoint.on_retry

Reports = list[tuple[str, dict[str, Any]]]


# --- helpers ------------------------------------------------------------------------------


class Operation:
    """A real async operation that records every call and fails its first `fail_times`."""

    def __init__(self, fail_times: int = 0) -> None:
        self.calls: list[tuple[Any, str | None]] = []
        self.fail_times = fail_times

    async def __call__(self, payload: Any, target: str | None) -> dict[str, Any]:
        self.calls.append((payload, target))
        await asyncio.sleep(0)
        if len(self.calls) <= self.fail_times:
            raise ConnectionError(f"call {len(self.calls)} failed")
        return {"input": payload, "target": target, "call": len(self.calls)}


def make_registry(**kwargs: Any) -> tuple[HookRegistry, Reports]:
    reports: Reports = []
    registry = HookRegistry(emit=lambda topic, data: reports.append((topic, data)), **kwargs)
    return registry, reports


def ctx(point: HookPoint = BEFORE, payload: Any = None) -> HookContext:
    return HookContext(point=point, payload=payload)


# --- order and chaining -------------------------------------------------------------------


async def test_higher_priority_runs_first_and_ties_keep_registration_order() -> None:
    registry, _ = make_registry()
    seen: list[str] = []

    def recorder(name: str) -> Any:
        return lambda c: seen.append(name)

    for name, priority in [("low", -5), ("tie-a", 3), ("default", 0), ("tie-b", 3), ("top", 9)]:
        registry.register(BEFORE, recorder(name), priority=priority, name=name)

    assert await registry.run(BEFORE, ctx()) is CONTINUE
    assert seen == ["top", "tie-a", "tie-b", "default", "low"]
    assert [reg.name for reg in registry.hooks(BEFORE)] == seen
    assert registry.hooks(AFTER) == []


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=-3, max_value=3), max_size=12))
def test_run_order_is_priority_then_registration_for_any_priorities(priorities: list[int]) -> None:
    registry = HookRegistry()
    for index, priority in enumerate(priorities):
        registry.register(BEFORE, lambda c: None, priority=priority, name=str(index))

    expected = sorted(range(len(priorities)), key=lambda i: (-priorities[i], i))
    assert [reg.name for reg in registry.hooks(BEFORE)] == [str(i) for i in expected]


async def test_modify_chains_each_hook_sees_the_previous_payload() -> None:
    registry, _ = make_registry()
    seen: list[Any] = []

    def add_one(c: HookContext) -> Modify:
        seen.append(c.payload)
        return Modify(c.payload + 1)

    def times_ten(c: HookContext) -> Modify:
        seen.append(c.payload)
        return Modify(c.payload * 10)

    registry.register(BEFORE, add_one, priority=2)
    registry.register(BEFORE, times_ten, priority=1)
    registry.register(BEFORE, lambda c: seen.append(c.payload))  # None: Continue

    context = ctx(payload=1)
    assert await registry.run(BEFORE, context) == Modify(20)
    assert seen == [1, 2, 20]
    assert context.payload == 20


async def test_a_stopping_result_ends_the_chain_and_names_its_hook() -> None:
    registry, _ = make_registry()
    later: list[str] = []
    registry.register(BEFORE, lambda c: Modify("changed"), priority=3)
    registry.register(BEFORE, lambda c: Redirect("elsewhere"), priority=2, name="router")
    registry.register(BEFORE, lambda c: later.append("ran"), priority=1)

    context = ctx(payload="original")
    outcome = await registry.decide(BEFORE, context)
    assert outcome == Outcome(Redirect("elsewhere"), "router")
    assert context.payload == "changed"
    assert later == []


async def test_an_idle_point_returns_shared_constants() -> None:
    registry, _ = make_registry()
    registry.register(AFTER, lambda c: Cancel("not this point"))

    assert await registry.run(BEFORE, ctx()) is CONTINUE
    first, second = await registry.decide(BEFORE, ctx()), await registry.decide(BEFORE, ctx())
    assert first is second and first == (CONTINUE, None)
    assert not registry.has_hooks(BEFORE) and registry.has_hooks(AFTER)


async def test_sync_and_async_hooks_run_in_one_chain() -> None:
    registry, _ = make_registry()

    async def shout(c: HookContext) -> HookResult:
        await asyncio.sleep(0)
        return Modify(c.payload.upper())

    def exclaim(c: HookContext) -> HookResult:
        return Modify(c.payload + "!")

    registry.register(BEFORE, shout, priority=1)
    registry.register(BEFORE, exclaim)
    assert await registry.run(BEFORE, ctx(payload="hi")) == Modify("HI!")


async def test_hooks_added_while_a_chain_runs_wait_for_the_next_run() -> None:
    registry, _ = make_registry()
    seen: list[str] = []

    def adds_another(c: HookContext) -> None:
        seen.append("first")
        registry.register(BEFORE, lambda c: seen.append("added"), priority=-1)

    reg = registry.register(BEFORE, adds_another, priority=1)
    await registry.run(BEFORE, ctx())
    assert seen == ["first"]
    reg.remove()
    await registry.run(BEFORE, ctx())
    assert seen == ["first", "added"]


# --- registration -------------------------------------------------------------------------


async def test_unregister_remove_and_the_decorator() -> None:
    registry, _ = make_registry()
    seen: list[str] = []

    @registry.on("before_tool_call", priority=1)
    def decorated(c: HookContext) -> None:
        seen.append("decorated")

    plain = registry.register(BEFORE, lambda c: seen.append("plain"), name="plain")
    decorated(ctx())  # the decorator returns the function unchanged
    assert [reg.name for reg in registry.hooks(BEFORE)] == [decorated.__qualname__, "plain"]

    registry.unregister(plain)
    plain.remove()  # a second removal is harmless
    await registry.run(BEFORE, ctx())
    assert seen == ["decorated", "decorated"]

    registry.hooks(BEFORE)[0].remove()
    await registry.run(BEFORE, ctx())
    assert seen == ["decorated", "decorated"]
    assert not registry.has_hooks(BEFORE)


def test_an_unknown_point_is_refused_with_the_valid_names() -> None:
    registry, _ = make_registry()
    with pytest.raises(ValueError, match="'before_tool'") as info:
        registry.register("before_tool", lambda c: None)
    assert "before_tool_call" in str(info.value) and "on_stream_delta" in str(info.value)
    with pytest.raises(ValueError, match="unknown hook point"):
        registry.on("after_everything")
    with pytest.raises(ValueError, match="unknown hook point"):
        registry.hooks("nope")
    with pytest.raises(ValueError, match="positive"):
        registry.register(BEFORE, lambda c: None, timeout=0)


async def test_run_and_call_refuse_an_unknown_point() -> None:
    registry, _ = make_registry()
    op = Operation()
    with pytest.raises(ValueError, match="unknown hook point"):
        await registry.run("before_nothing", ctx())
    with pytest.raises(ValueError, match="unknown hook point"):
        await registry.call(BEFORE, "after_nothing", 1, op)
    assert op.calls == []


def test_points_are_named_by_their_values() -> None:
    assert HookPoint("before_tool_call") is HookPoint.before_tool_call
    assert HookPoint.on_stream_delta == "on_stream_delta"
    assert len(HookPoint) == 19


# --- isolation and reporting --------------------------------------------------------------


async def test_raising_and_hanging_hooks_are_isolated_and_reported() -> None:
    registry, reports = make_registry()

    def broken(c: HookContext) -> None:
        raise RuntimeError("bug in hook")

    async def hangs(c: HookContext) -> None:
        await asyncio.sleep(10)

    registry.register(BEFORE, broken, priority=3, name="broken")
    registry.register(BEFORE, hangs, priority=2, timeout=0.05, name="hangs")
    registry.register(BEFORE, lambda c: Modify(c.payload + " and on"), priority=1)

    op = Operation()
    started = time.monotonic()
    result = await registry.call(BEFORE, AFTER, "went", op)
    assert time.monotonic() - started < 1.0
    assert result["input"] == "went and on"
    assert op.calls == [("went and on", None)]
    assert reports == [
        ("hook.failed", {"point": "before_tool_call", "hook": "broken",
                         "error": "bug in hook", "error_type": "RuntimeError"}),
        ("hook.failed", {"point": "before_tool_call", "hook": "hangs",
                         "error": "timed out after 0.05s", "error_type": "TimeoutError"}),
    ]


async def test_the_default_timeout_applies_to_every_async_hook() -> None:
    registry, reports = make_registry(default_timeout=0.05)

    async def slow(c: HookContext) -> HookResult:
        await asyncio.sleep(5)
        return Cancel("too late")

    registry.register(BEFORE, slow, name="slow")
    assert await registry.run(BEFORE, ctx()) is CONTINUE
    assert [(t, d["hook"], d["error_type"]) for t, d in reports] == [
        ("hook.failed", "slow", "TimeoutError")]


async def test_a_hook_returning_a_non_result_is_reported_and_ignored() -> None:
    registry, reports = make_registry()
    registry.register(BEFORE, lambda c: "yes please", name="confused")  # type: ignore[arg-type,return-value]
    registry.register(BEFORE, lambda c: Modify(2), priority=-1)

    assert await registry.run(BEFORE, ctx(payload=1)) == Modify(2)
    assert reports[0][1]["hook"] == "confused" and reports[0][1]["error_type"] == "TypeError"


async def test_an_emit_that_raises_breaks_nothing() -> None:
    def emit(topic: str, data: dict[str, Any]) -> None:
        raise OSError("event bus down")

    registry = HookRegistry(emit=emit)
    registry.register(BEFORE, lambda c: 1 / 0)  # type: ignore[arg-type,return-value]
    registry.register(AFTER, lambda c: Cancel("reported into the void"), name="guard")
    op = Operation()

    with pytest.raises(HookCancelled) as info:
        await registry.call(BEFORE, AFTER, "x", op)
    assert info.value.hook == "guard"
    assert op.calls == [("x", None)]


async def test_a_failure_without_emit_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    registry = HookRegistry()
    registry.register(BEFORE, lambda c: 1 / 0, name="divider")  # type: ignore[arg-type,return-value]
    assert await registry.run(BEFORE, ctx()) is CONTINUE
    assert "divider" in caplog.text and "ZeroDivisionError" in caplog.text


async def test_cancelling_the_caller_is_not_swallowed_by_the_isolation() -> None:
    registry, reports = make_registry(default_timeout=30)
    entered = asyncio.Event()

    async def waits(c: HookContext) -> None:
        entered.set()
        await asyncio.sleep(30)

    registry.register(BEFORE, waits)
    task = asyncio.create_task(registry.call(BEFORE, AFTER, "x", Operation()))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert reports == []


# --- call(): the six results --------------------------------------------------------------


async def test_call_without_hooks_just_runs_the_operation() -> None:
    registry, _ = make_registry()
    op = Operation()
    assert await registry.call(BEFORE, AFTER, 7, op, target="t") == {
        "input": 7, "target": "t", "call": 1}
    failing = Operation(fail_times=1)
    with pytest.raises(ConnectionError, match="call 1 failed"):
        await registry.call(BEFORE, AFTER, 7, failing)


async def test_call_modify_changes_the_input_and_then_the_result() -> None:
    registry, _ = make_registry()
    registry.register(BEFORE, lambda c: Modify(c.payload.strip()))
    registry.register(AFTER, lambda c: Modify({**c.payload, "checked": True}))
    op = Operation()

    result = await registry.call(BEFORE, AFTER, "  query ", op, target="search")
    assert op.calls == [("query", "search")]
    assert result == {"input": "query", "target": "search", "call": 1, "checked": True}


async def test_call_replace_is_a_cache_hit_that_skips_the_operation() -> None:
    registry, _ = make_registry()
    cache: dict[str, Any] = {"known": "cached answer"}
    after_saw: list[Any] = []

    def lookup(c: HookContext) -> HookResult | None:
        return Replace(cache[c.payload]) if c.payload in cache else None

    def store(c: HookContext) -> None:
        after_saw.append(c.payload)

    registry.register(BEFORE, lookup)
    registry.register(AFTER, store)
    op = Operation()

    assert await registry.call(BEFORE, AFTER, "known", op) == "cached answer"
    assert op.calls == []
    assert after_saw == ["cached answer"]
    fresh = await registry.call(BEFORE, AFTER, "new", op)
    assert op.calls == [("new", None)] and after_saw[-1] == fresh


async def test_call_replace_from_an_after_hook_changes_the_result() -> None:
    registry, _ = make_registry()
    registry.register(AFTER, lambda c: Replace("redacted"))
    op = Operation()
    assert await registry.call(BEFORE, AFTER, "secret", op) == "redacted"
    assert op.calls == [("secret", None)]


async def test_call_cancel_raises_with_the_hook_name_and_reason() -> None:
    registry, reports = make_registry()
    registry.register(BEFORE, lambda c: Cancel("budget exhausted"), name="budget")
    op = Operation()

    with pytest.raises(HookCancelled) as info:
        await registry.call(BEFORE, AFTER, "x", op)
    assert (info.value.point, info.value.hook, info.value.reason) == (
        "before_tool_call", "budget", "budget exhausted")
    assert op.calls == []
    assert reports == [("hook.cancelled", {"point": "before_tool_call", "hook": "budget",
                                           "reason": "budget exhausted"})]


async def test_call_cancel_from_an_after_hook_rejects_the_result() -> None:
    registry, _ = make_registry()
    registry.register(AFTER, lambda c: Cancel("output failed the guardrail"), name="guardrail")
    op = Operation()
    with pytest.raises(HookCancelled, match="guardrail") as info:
        await registry.call(BEFORE, AFTER, "x", op)
    assert info.value.point == "after_tool_call"
    assert op.calls == [("x", None)]


async def test_call_redirect_runs_the_operation_on_the_new_target() -> None:
    registry, _ = make_registry()
    seen_targets: list[str | None] = []
    registry.register(BEFORE, lambda c: Redirect("backup") if c.target == "primary" else None)
    registry.register(AFTER, lambda c: seen_targets.append(c.target))
    op = Operation()

    result = await registry.call(BEFORE, AFTER, "x", op, target="primary")
    assert op.calls == [("x", "backup")]
    assert result["target"] == "backup" and seen_targets == ["backup"]


async def test_call_redirect_from_an_after_hook_reruns_on_the_new_target() -> None:
    registry, _ = make_registry()
    registry.register(AFTER, lambda c: Redirect("bigger-model") if c.target == "small" else None)
    op = Operation()
    result = await registry.call(BEFORE, AFTER, "x", op, target="small")
    assert op.calls == [("x", "small"), ("x", "bigger-model")]
    assert result["target"] == "bigger-model"


async def test_call_retry_from_a_before_hook_reruns_the_before_hooks() -> None:
    registry, _ = make_registry()
    rounds: list[tuple[Any, int]] = []

    def rate_limit(c: HookContext) -> HookResult | None:
        rounds.append((c.payload, c.attempt))
        return Retry(0.01) if c.attempt < 2 else None

    registry.register(BEFORE, lambda c: Modify(c.payload * 2), priority=1)
    registry.register(BEFORE, rate_limit)
    op = Operation()

    result = await registry.call(BEFORE, AFTER, 5, op)
    # Each round starts from the caller's input, so the Modify is applied once, not thrice.
    assert rounds == [(10, 0), (10, 1), (10, 2)]
    assert op.calls == [(10, None)] and result["input"] == 10


async def test_call_before_retry_past_the_limit_cancels() -> None:
    registry, _ = make_registry()
    registry.register(BEFORE, lambda c: Retry(0), name="always-busy")
    op = Operation()
    with pytest.raises(HookCancelled, match="retry") as info:
        await registry.call(BEFORE, AFTER, "x", op, max_retries=2)
    assert info.value.hook == "always-busy"
    assert op.calls == []


async def test_call_retry_from_an_after_hook_reruns_the_operation() -> None:
    registry, _ = make_registry()
    registry.register(AFTER, lambda c: Retry(0.01) if c.payload["call"] < 3 else None)
    retry_attempts: list[int] = []
    registry.register(ON_RETRY, lambda c: retry_attempts.append(c.attempt))
    op = Operation()

    result = await registry.call(BEFORE, AFTER, "x", op)
    assert len(op.calls) == 3 and result["call"] == 3
    assert retry_attempts == [1, 2]


async def test_call_after_retry_past_the_limit_returns_the_last_result() -> None:
    registry, _ = make_registry()
    registry.register(AFTER, lambda c: Modify({**c.payload, "seen": True}), priority=1)
    registry.register(AFTER, lambda c: Retry(0))
    op = Operation()

    result = await registry.call(BEFORE, AFTER, "x", op, max_retries=2)
    assert len(op.calls) == 3
    # The last result as the hooks before the Retry left it.
    assert result == {"input": "x", "target": None, "call": 3, "seen": True}


async def test_call_on_error_retry_recovers_a_flaky_operation() -> None:
    registry, _ = make_registry()
    errors: list[str] = []

    def retry_connection_errors(c: HookContext) -> HookResult | None:
        errors.append(str(c.error))
        return Retry(0.01) if isinstance(c.error, ConnectionError) else None

    registry.register(ON_ERROR, retry_connection_errors)
    retries: list[dict[str, Any]] = []
    registry.register(ON_RETRY, lambda c: retries.append(c.payload))
    op = Operation(fail_times=2)

    result = await registry.call(BEFORE, AFTER, "x", op, target="api")
    assert result == {"input": "x", "target": "api", "call": 3}
    assert errors == ["call 1 failed", "call 2 failed"]
    assert [(r["point"], r["hook"], r["after"]) for r in retries] == [
        ("on_error", retry_connection_errors.__qualname__, 0.01)] * 2


async def test_call_on_error_replace_supplies_a_fallback() -> None:
    registry, _ = make_registry()
    registry.register(ON_ERROR, lambda c: Replace({"fallback": True}))
    after_saw: list[Any] = []
    registry.register(AFTER, lambda c: after_saw.append(c.payload))
    op = Operation(fail_times=99)

    assert await registry.call(BEFORE, AFTER, "x", op) == {"fallback": True}
    assert len(op.calls) == 1 and after_saw == [{"fallback": True}]


async def test_call_on_error_redirect_fails_over_to_another_target() -> None:
    registry, _ = make_registry()
    registry.register(ON_ERROR, lambda c: Redirect("replica-2"))
    op = Operation(fail_times=1)
    result = await registry.call(BEFORE, AFTER, "x", op, target="replica-1")
    assert op.calls == [("x", "replica-1"), ("x", "replica-2")]
    assert result["target"] == "replica-2"


async def test_call_retries_are_bounded_and_the_original_error_propagates() -> None:
    registry, _ = make_registry()
    registry.register(ON_ERROR, lambda c: Retry(0))
    op = Operation(fail_times=99)

    with pytest.raises(ConnectionError, match="call 3 failed"):
        await registry.call(BEFORE, AFTER, "x", op, max_retries=2)
    assert len(op.calls) == 3


async def test_call_unhandled_error_propagates_as_the_same_object() -> None:
    registry, _ = make_registry()
    raised: list[BaseException] = []

    async def fails(payload: Any, target: str | None) -> Any:
        error = KeyError("missing")
        raised.append(error)
        raise error

    registry.register(ON_ERROR, lambda c: Modify("ignored"))
    with pytest.raises(KeyError) as info:
        await registry.call(BEFORE, AFTER, "x", fails)
    assert info.value is raised[0]


async def test_call_contexts_carry_ids_and_share_metadata() -> None:
    registry, _ = make_registry()
    contexts: list[HookContext] = []

    def before(c: HookContext) -> None:
        contexts.append(c)
        c.metadata["started"] = "yes"

    def after(c: HookContext) -> None:
        contexts.append(c)

    registry.register(BEFORE, before)
    registry.register(AFTER, after)
    await registry.call(BEFORE, AFTER, "x", Operation(), target="t", job_id="j1", actor="a1")

    first, second = contexts
    assert (first.point, second.point) == (BEFORE, AFTER)
    assert {(c.job_id, c.actor, c.target, c.attempt) for c in contexts} == {("j1", "a1", "t", 0)}
    assert second.metadata == {"started": "yes"}


async def test_retry_waits_for_the_requested_delay() -> None:
    registry, _ = make_registry()
    registry.register(ON_ERROR, lambda c: Retry(0.1))
    op = Operation(fail_times=1)
    started = time.monotonic()
    await registry.call(BEFORE, AFTER, "x", op)
    assert time.monotonic() - started >= 0.09


async def test_the_result_types_compare_by_value() -> None:
    assert Continue() == CONTINUE and Modify(1) == Modify(1) and Retry() == Retry(0.0)
    assert Cancel("a") != Cancel("b") and Redirect("x") != Redirect("y")
    with pytest.raises(AttributeError):
        Modify(1).payload = 2  # type: ignore[misc]
