"""Hooks: order, isolation, and each result honoured by HookRegistry.call."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llmspell.runtime.errors import HookCancelled
from llmspell.runtime.hooks import (
    Cancel,
    Continue,
    HookContext,
    HookPoint,
    HookRegistry,
    Modify,
    Redirect,
    Replace,
    Retry,
)

B, A = HookPoint.before_tool_call, HookPoint.after_tool_call


class Recorder:
    """A real operation that records how it was called."""

    def __init__(self, fail_times: int = 0) -> None:
        self.calls: list[tuple[Any, str | None]] = []
        self.fail_times = fail_times

    async def __call__(self, payload: Any, target: str | None) -> Any:
        self.calls.append((payload, target))
        if len(self.calls) <= self.fail_times:
            raise ConnectionError(f"attempt {len(self.calls)} failed")
        return {"ran": payload, "on": target}


def registry() -> tuple[HookRegistry, list[tuple[str, dict[str, Any]]]]:
    reported: list[tuple[str, dict[str, Any]]] = []
    return HookRegistry(emit=lambda t, p: reported.append((t, p)), default_timeout=1.0), reported


async def test_priority_order_and_ties_in_registration_order() -> None:
    hooks, _ = registry()
    seen: list[str] = []
    for name, prio in (("low", -1), ("first-high", 5), ("mid", 0), ("second-high", 5)):
        hooks.register(B, lambda ctx, n=name: seen.append(n), priority=prio, name=name)
    await hooks.run(B, HookContext(B, None))
    assert seen == ["first-high", "second-high", "mid", "low"]
    assert [r.name for r in hooks.hooks(B)] == seen


async def test_modify_chains_through_the_hooks_and_into_the_operation() -> None:
    hooks, _ = registry()
    hooks.register(B, lambda ctx: Modify(ctx.payload + 1), priority=2)
    hooks.register(B, lambda ctx: Modify(ctx.payload * 10), priority=1)
    hooks.register(A, lambda ctx: Modify({**ctx.payload, "checked": True}))
    op = Recorder()
    result = await hooks.call(B, A, 1, op, target="calc")
    assert op.calls == [(20, "calc")]
    assert result == {"ran": 20, "on": "calc", "checked": True}


async def test_replace_short_circuits_the_operation() -> None:
    hooks, _ = registry()
    cache = {"q": "cached answer"}
    hooks.register(B, lambda ctx: Replace(cache[ctx.payload]) if ctx.payload in cache else None)
    seen_after: list[Any] = []
    hooks.register(A, lambda ctx: seen_after.append(ctx.payload))
    op = Recorder()
    assert await hooks.call(B, A, "q", op) == "cached answer"
    assert op.calls == [] and seen_after == ["cached answer"]
    assert await hooks.call(B, A, "miss", op) == {"ran": "miss", "on": None}


async def test_cancel_raises_with_the_hook_and_reason() -> None:
    hooks, reported = registry()
    hooks.register(B, lambda ctx: Cancel("budget exhausted"), name="budget")
    op = Recorder()
    with pytest.raises(HookCancelled) as info:
        await hooks.call(B, A, "x", op)
    assert info.value.hook == "budget" and info.value.reason == "budget exhausted"
    assert "budget exhausted" in str(info.value)
    assert op.calls == []
    assert reported == [("hook.cancelled", {"point": "before_tool_call", "hook": "budget",
                                            "reason": "budget exhausted"})]
    hooks2, _ = registry()
    hooks2.register(A, lambda ctx: Cancel("output not allowed"), name="guard")
    with pytest.raises(HookCancelled, match="output not allowed"):
        await hooks2.call(B, A, "x", op)


async def test_redirect_runs_against_another_target() -> None:
    hooks, _ = registry()
    hooks.register(B, lambda ctx: Redirect("backup") if ctx.target == "primary" else None)
    op = Recorder()
    assert await hooks.call(B, A, "x", op, target="primary") == {"ran": "x", "on": "backup"}
    assert op.calls == [("x", "backup")]


async def test_retry_from_an_after_hook_reruns_the_operation() -> None:
    hooks, _ = registry()
    hooks.register(A, lambda ctx: Retry(0.01) if len(op.calls) < 3 else None)
    retries: list[int] = []
    hooks.register(HookPoint.on_retry, lambda ctx: retries.append(ctx.attempt))
    op = Recorder()
    await hooks.call(B, A, "x", op)
    assert len(op.calls) == 3 and len(retries) == 2 and retries[0] < retries[1]


async def test_on_error_retry_recovers_a_flaky_operation() -> None:
    hooks, _ = registry()
    hooks.register(HookPoint.on_error,
                   lambda ctx: Retry(0) if isinstance(ctx.error, ConnectionError) else None)
    op = Recorder(fail_times=2)
    assert await hooks.call(B, A, "x", op) == {"ran": "x", "on": None}
    assert len(op.calls) == 3


async def test_on_error_replace_supplies_a_fallback() -> None:
    hooks, _ = registry()
    hooks.register(HookPoint.on_error, lambda ctx: Replace("fallback"))
    assert await hooks.call(B, A, "x", Recorder(fail_times=9)) == "fallback"


async def test_retries_are_bounded_and_the_last_error_propagates() -> None:
    hooks, _ = registry()
    hooks.register(HookPoint.on_error, lambda ctx: Retry(0))
    op = Recorder(fail_times=99)
    with pytest.raises(ConnectionError, match="attempt 3"):
        await hooks.call(B, A, "x", op, max_retries=2)
    assert len(op.calls) == 3


async def test_without_hooks_errors_propagate_unchanged() -> None:
    hooks, _ = registry()
    with pytest.raises(ConnectionError, match="attempt 1"):
        await hooks.call(B, A, "x", Recorder(fail_times=1))


async def test_a_raising_or_hanging_hook_is_isolated_and_reported() -> None:
    hooks, reported = registry()

    def broken(ctx: HookContext) -> None:
        raise RuntimeError("hook bug")

    async def hangs(ctx: HookContext) -> None:
        await asyncio.sleep(10)

    hooks.register(B, broken, priority=3, name="broken")
    hooks.register(B, hangs, priority=2, timeout=0.05, name="hangs")
    hooks.register(B, lambda ctx: Modify("still ran"), priority=1)
    assert await hooks.call(B, A, "x", Recorder()) == {"ran": "still ran", "on": None}
    assert [(t, p["hook"], p["error_type"]) for t, p in reported] == [
        ("hook.failed", "broken", "RuntimeError"), ("hook.failed", "hangs", "TimeoutError")]


async def test_async_hooks_and_a_wrong_return_type() -> None:
    hooks, reported = registry()

    async def async_hook(ctx: HookContext) -> Modify:
        await asyncio.sleep(0)
        return Modify(ctx.payload.upper())

    hooks.register(B, async_hook)
    hooks.register(B, lambda ctx: "not a result", priority=-1, name="wrong")  # type: ignore
    assert await hooks.call(B, A, "x", Recorder()) == {"ran": "X", "on": None}
    assert reported[0][1]["hook"] == "wrong" and reported[0][1]["error_type"] == "TypeError"


async def test_unregister_decorator_and_invalid_point() -> None:
    hooks, _ = registry()

    @hooks.on("before_tool_call")
    def cancel_all(ctx: HookContext) -> Cancel:
        return Cancel("no")

    with pytest.raises(HookCancelled):
        await hooks.call(B, A, "x", Recorder())
    hooks.hooks(B)[0].remove()
    assert await hooks.call(B, A, "x", Recorder()) == {"ran": "x", "on": None}
    with pytest.raises(ValueError, match="before_tool_call"):
        hooks.register("before_tool", lambda ctx: None)
    assert isinstance(await hooks.run(B, HookContext(B, 1)), Continue)


async def test_a_raising_emit_breaks_nothing() -> None:
    def emit(topic: str, payload: dict[str, Any]) -> None:
        raise OSError("bus down")

    hooks = HookRegistry(emit=emit)
    hooks.register(B, lambda ctx: 1 / 0)
    assert await hooks.call(B, A, "x", Recorder()) == {"ran": "x", "on": None}
