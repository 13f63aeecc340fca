"""Hooks: user code that watches or steers every operation of the runtime.

A hook is a sync or async callable that takes a `HookContext` and returns a `HookResult` (or
None, which means `Continue`). Hooks are registered on a `HookPoint` with a priority; the
registry runs them highest priority first, each under its own timeout::

    registry = HookRegistry(emit=bus_emit)

    @registry.on(HookPoint.before_llm_call, priority=10)
    async def cache(ctx: HookContext) -> HookResult | None:
        hit = await lookup(ctx.payload)
        return Replace(hit) if hit is not None else None

Every component wraps its operation in `registry.call(before, after, payload, fn)`, so the six
results mean the same thing everywhere: Modify changes the input (or the result), Replace
short-circuits (a cache hit, a fallback), Cancel stops with `HookCancelled`, Retry runs again
after a delay, Redirect sends the operation to another target.

A hook that raises or times out must never take the agent down with it: it is isolated (it
counts as Continue) and reported as a `hook.failed` event. Points with no hooks cost one dict
lookup, because most points have none on the hot path.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple, TypeVar

from llmspell.runtime.errors import HookCancelled

__all__ = [
    "CONTINUE",
    "Cancel",
    "Continue",
        "Emit",
    "Hook",
    "HookContext",
    "HookPoint",
    "HookRegistry",
    "HookResult",
    "Modify",
    "Outcome",
    "Redirect",
    "Registration",
    "Replace",
    "Retry",
]

_log = logging.getLogger(__name__)


class HookPoint(StrEnum):
    """Where a hook can be attached. The value is the name, so job specs can name points."""

    before_job = "before_job"
    after_job = "after_job"
    before_agent_run = "before_agent_run"
    after_agent_run = "after_agent_run"
    before_llm_call = "before_llm_call"
    after_llm_call = "after_llm_call"
    before_tool_call = "before_tool_call"
    after_tool_call = "after_tool_call"
    before_workflow_step = "before_workflow_step"
    after_workflow_step = "after_workflow_step"
    before_delegation = "before_delegation"
    after_delegation = "after_delegation"
    before_handoff = "before_handoff"
    after_handoff = "after_handoff"
    before_state_write = "before_state_write"
    after_state_write = "after_state_write"
    on_error = "on_error"
    on_retry = "on_retry"
    on_stream_delta = "on_stream_delta"


# --- results ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Continue:
    """Go on unchanged (what returning None means)."""


@dataclass(frozen=True, slots=True)
class Modify:
    """Replace the payload (the input before an operation, the result after) and go on."""

    payload: Any


@dataclass(frozen=True, slots=True)
class Replace:
    """Stop the chain and use `result` as the operation's result (a cache hit, a fallback)."""

    result: Any


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop the operation: the caller gets `HookCancelled` with this reason."""

    reason: str


@dataclass(frozen=True, slots=True)
class Retry:
    """Run again after `after` seconds (bounded by the caller's max_retries)."""

    after: float = 0.0


@dataclass(frozen=True, slots=True)
class Redirect:
    """Run the operation against another target (another model, tool or agent)."""

    target: str


HookResult = Continue | Modify | Replace | Cancel | Retry | Redirect
_RESULT_TYPES = (Continue, Modify, Replace, Cancel, Retry, Redirect)

CONTINUE = Continue()
"""The shared Continue: returned on the fast path, so an idle point allocates nothing."""


@dataclass(slots=True)
class HookContext:
    """What a hook sees. Hooks change `payload` by returning Modify, not by mutating it.

    `attempt` counts the retries so far in this operation (0 on the first try; an on_retry
    hook sees the number of the attempt about to start).

    `metadata` is shared by every context of one `call()`, so a before hook can leave a note
    (a cache key, a start time) for the after hook of the same operation.
    """

    point: HookPoint
    payload: Any
    job_id: str | None = None
    actor: str | None = None
    target: str | None = None
    attempt: int = 0
    error: BaseException | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


Hook = Callable[[HookContext], "HookResult | Awaitable[HookResult | None] | None"]
HookT = TypeVar("HookT", bound=Hook)
Emit = Callable[[str, dict[str, Any]], None]


class Outcome(NamedTuple):
    """What a chain decided: the result, and the hook whose result stopped the chain.

    `hook` is None when no hook stopped it (the result is then Continue or the final Modify).
    The caller needs the name to say which hook cancelled.
    """

    result: HookResult
    hook: str | None


_NOTHING = Outcome(CONTINUE, None)


@dataclass(eq=False, slots=True)
class Registration:
    """One registered hook. Keep it to unregister the hook later (`remove()`)."""

    point: HookPoint
    fn: Hook
    priority: int
    timeout: float
    name: str
    seq: int
    _registry: HookRegistry | None = field(default=None, repr=False)

    def remove(self) -> None:
        """Unregister the hook; removing twice is harmless."""
        if self._registry is not None:
            self._registry.unregister(self)


# --- registry -----------------------------------------------------------------------------


class HookRegistry:
    """The hooks of one process (or one job), by point, and the code that runs them.

    `emit(topic, data)` reports failures and cancellations (the runtime passes its event bus);
    its own errors are swallowed, since reporting must never break the operation it reports on.
    """

    def __init__(self, emit: Emit | None = None, default_timeout: float = 5.0) -> None:
        if default_timeout <= 0:
            raise ValueError(f"default_timeout must be positive, got {default_timeout}")
        self._emit = emit
        self.default_timeout = default_timeout
        self._seq = itertools.count()
        # Every valid point is a key (an unknown name is a KeyError, caught only off the fast
        # path); each value is an immutable snapshot in run order, replaced on every change,
        # so a chain that is running never sees hooks added or removed under it.
        self._hooks: dict[str, tuple[Registration, ...]] = {point: () for point in HookPoint}

    # registration

    def register(
        self,
        point: HookPoint | str,
        fn: Hook,
        *,
        priority: int = 0,
        timeout: float | None = None,
        name: str | None = None,
    ) -> Registration:
        """Add `fn` at `point`. Higher priority runs first; equal priorities run in order."""
        hook_point = _point(point)
        if timeout is not None and timeout <= 0:
            raise ValueError(f"hook timeout must be positive, got {timeout}")
        reg = Registration(
            point=hook_point,
            fn=fn,
            priority=priority,
            timeout=self.default_timeout if timeout is None else timeout,
            name=name or _name_of(fn),
            seq=next(self._seq),
            _registry=self,
        )
        ordered = sorted((*self._hooks[hook_point], reg), key=_run_order)
        self._hooks[hook_point] = tuple(ordered)
        return reg

    def on(
        self,
        point: HookPoint | str,
        *,
        priority: int = 0,
        timeout: float | None = None,
        name: str | None = None,
    ) -> Callable[[HookT], HookT]:
        """Decorator form of `register`; the function is returned unchanged."""
        hook_point = _point(point)  # fail at decoration time, not at first use

        def decorate(fn: HookT) -> HookT:
            self.register(hook_point, fn, priority=priority, timeout=timeout, name=name)
            return fn

        return decorate

    def unregister(self, reg: Registration) -> None:
        """Remove a registration; unknown or already removed ones are ignored."""
        current = self._hooks[reg.point]
        if any(r is reg for r in current):
            self._hooks[reg.point] = tuple(r for r in current if r is not reg)
        reg._registry = None

    def hooks(self, point: HookPoint | str) -> list[Registration]:
        """The registrations at `point`, in the order they run."""
        return list(self._hooks[_point(point)])

    def has_hooks(self, point: HookPoint | str) -> bool:
        """Whether any hook is registered at `point` (lets callers skip building a context)."""
        regs = self._hooks.get(point)
        if regs is None:
            _point(point)  # raises the helpful ValueError
        return bool(regs)

    # running

    async def run(self, point: HookPoint | str, ctx: HookContext) -> HookResult:
        """Run the chain at `point` and return its result (see `decide`)."""
        regs = self._hooks.get(point)
        if not regs:
            if regs is None:
                _point(point)
            return CONTINUE
        return (await self._chain(point, regs, ctx)).result

    async def decide(self, point: HookPoint | str, ctx: HookContext) -> Outcome:
        """Run the chain at `point`: its result, and the hook whose result stopped it.

        Modify replaces `ctx.payload` and goes on; Replace, Cancel, Retry and Redirect stop the
        chain. With no stopping result, the result is Modify(final payload) if any hook
        modified, else Continue. A point with no hooks returns a shared constant at once.
        """
        regs = self._hooks.get(point)
        if not regs:
            if regs is None:
                _point(point)
            return _NOTHING
        return await self._chain(point, regs, ctx)

    async def _chain(
        self, point: str, regs: tuple[Registration, ...], ctx: HookContext
    ) -> Outcome:
        modified = False
        for reg in regs:
            result = await self._invoke(point, reg, ctx)
            if result is None or isinstance(result, Continue):
                continue
            if isinstance(result, Modify):
                ctx.payload = result.payload
                modified = True
                continue
            if isinstance(result, Cancel):
                data = {"point": str(point), "hook": reg.name, "reason": result.reason}
                self._report("hook.cancelled", data)
            return Outcome(result, reg.name)
        return Outcome(Modify(ctx.payload), None) if modified else _NOTHING

    async def _invoke(self, point: str, reg: Registration, ctx: HookContext) -> HookResult | None:
        """Run one hook, isolated: an error, a timeout or a wrong return type is Continue."""
        try:
            out = reg.fn(ctx)
            if inspect.isawaitable(out):
                # Awaited in this task, not a new one: the timeout cancels the hook's own
                # coroutine. A sync hook runs inline and cannot be timed out.
                async with asyncio.timeout(reg.timeout):
                    out = await out
        except Exception as exc:
            self._report_failure(point, reg, exc)
            return None
        if out is None or isinstance(out, _RESULT_TYPES):
            return out
        self._report_failure(
            point, reg, TypeError(f"hook returned {type(out).__name__}, not a HookResult or None")
        )
        return None

    def _report_failure(self, point: str, reg: Registration, exc: Exception) -> None:
        message = str(exc)
        if isinstance(exc, TimeoutError) and not message:
            message = f"timed out after {reg.timeout:g}s"
        data = {
            "point": str(point),
            "hook": reg.name,
            "error": message,
            "error_type": type(exc).__name__,
        }
        if self._emit is None:
            _log.warning("hook %s failed at %s: %r", reg.name, point, exc)
        self._report("hook.failed", data)

    def report(self, topic: str, data: dict[str, Any]) -> None:
        """Publish an event through this registry's emitter (hooks report their decisions so:
        breaker.opened, guardrail.tripped); a failing emitter is logged, never raised."""
        self._report(topic, data)

    def _report(self, topic: str, data: dict[str, Any]) -> None:
        if self._emit is None:
            return
        try:
            self._emit(topic, data)
        except Exception:
            _log.warning("emit(%r) raised; the report was dropped", topic, exc_info=True)

    # the wrapper around operations

    async def call(
        self,
        point_before: HookPoint | str,
        point_after: HookPoint | str,
        payload: Any,
        fn: Callable[[Any, str | None], Awaitable[Any]],
        *,
        target: str | None = None,
        job_id: str | None = None,
        actor: str | None = None,
        max_retries: int = 3,
    ) -> Any:
        """Run `fn(payload, target)` between the before and after hooks, with error handling.

        Before hooks: Modify changes the input; Replace skips `fn` (the after hooks still see
        the result); Cancel raises HookCancelled; Redirect changes the target; Retry waits and
        runs the before hooks again. After hooks see the result as payload: Modify and Replace
        change it, Cancel raises, Retry (and Redirect, with a new target) run `fn` again. When
        `fn` raises, the on_error hooks decide: Retry (or Redirect) runs it again, Replace
        supplies a fallback, anything else lets the original exception propagate.

        Each retry runs the on_retry hooks first and counts against `max_retries` (shared by
        all phases of this call). Past the limit, the last error propagates, an after hook's
        Retry returns the last result, and a before hook's Retry raises HookCancelled.
        """
        before, after = _point(point_before), _point(point_after)
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        hooks = self._hooks
        if not (hooks[before] or hooks[after] or hooks[HookPoint.on_error]):
            return await fn(payload, target)
        op = _Call(self, before, after, payload, fn, target, job_id, actor, max_retries)
        return await op.run()


class _Call:
    """The state of one `HookRegistry.call`: input, target, attempt and shared metadata."""

    def __init__(
        self,
        registry: HookRegistry,
        before: HookPoint,
        after: HookPoint,
        payload: Any,
        fn: Callable[[Any, str | None], Awaitable[Any]],
        target: str | None,
        job_id: str | None,
        actor: str | None,
        max_retries: int,
    ) -> None:
        self.registry = registry
        self.before = before
        self.after = after
        self.original = payload
        self.payload = payload
        self.original_target = target
        self.target = target
        self.fn = fn
        self.job_id = job_id
        self.actor = actor
        self.max_retries = max_retries
        self.attempt = 0
        self.metadata: dict[str, Any] = {}

    async def run(self) -> Any:
        replaced, result = await self._before_phase()
        if not replaced:
            result = await self._execute()
        while True:
            ctx = self._ctx(self.after, result)
            decision = await self.registry.decide(self.after, ctx)
            match decision.result:
                case Modify(payload=value) | Replace(result=value):
                    return value
                case Cancel(reason=reason):
                    raise _cancelled(self.after, reason, decision.hook)
                case Retry(after=delay) if self._can_retry():
                    await self._retry(self.after, decision.hook, delay, None)
                case Redirect(target=target) if self._can_retry():
                    self.target = target
                    await self._retry(self.after, decision.hook, 0.0, None)
                case _:
                    # Continue, or a retry past the limit: the result as the hooks left it.
                    return ctx.payload
            result = await self._execute()

    async def _before_phase(self) -> tuple[bool, Any]:
        """Settle the input and target; (True, result) when a hook replaced the operation."""
        while True:
            # Every round starts from the caller's input: a retry repeats the whole phase.
            self.payload, self.target = self.original, self.original_target
            ctx = self._ctx(self.before, self.payload)
            decision = await self.registry.decide(self.before, ctx)
            self.payload = ctx.payload
            match decision.result:
                case Replace(result=result):
                    return True, result
                case Cancel(reason=reason):
                    raise _cancelled(self.before, reason, decision.hook)
                case Redirect(target=target):
                    self.target = target
                    return False, None
                case Retry(after=delay):
                    if not self._can_retry():
                        reason = f"still asked to retry after {self.max_retries} retries"
                        raise _cancelled(self.before, reason, decision.hook)
                    await self._retry(self.before, decision.hook, delay, None)
                case _:
                    return False, None

    async def _execute(self) -> Any:
        """Run `fn` until it returns or the on_error hooks give up on it."""
        while True:
            try:
                return await self.fn(self.payload, self.target)
            except Exception as exc:
                error = exc
            recovered, result = await self._on_error(error)
            if recovered:
                return result

    async def _on_error(self, error: Exception) -> tuple[bool, Any]:
        """(True, fallback) to recover, (False, None) to run again; otherwise re-raise."""
        ctx = self._ctx(HookPoint.on_error, self.payload, error=error)
        decision = await self.registry.decide(HookPoint.on_error, ctx)
        match decision.result:
            case Replace(result=result):
                return True, result
            case Retry(after=delay) if self._can_retry():
                await self._retry(HookPoint.on_error, decision.hook, delay, error)
                return False, None
            case Redirect(target=target) if self._can_retry():
                self.target = target
                await self._retry(HookPoint.on_error, decision.hook, 0.0, error)
                return False, None
        raise error

    def _can_retry(self) -> bool:
        return self.attempt < self.max_retries

    async def _retry(
        self, cause: HookPoint, hook: str | None, delay: float, error: Exception | None
    ) -> None:
        """Count the retry, tell the on_retry hooks (their results are ignored), then wait."""
        self.attempt += 1
        info = {"point": str(cause), "hook": hook, "after": delay, "payload": self.payload}
        await self.registry.run(HookPoint.on_retry, self._ctx(HookPoint.on_retry, info, error))
        if delay > 0:
            await asyncio.sleep(delay)

    def _ctx(
        self, point: HookPoint, payload: Any, error: BaseException | None = None
    ) -> HookContext:
        return HookContext(
            point=point,
            payload=payload,
            job_id=self.job_id,
            actor=self.actor,
            target=self.target,
            attempt=self.attempt,
            error=error,
            metadata=self.metadata,
        )


# --- helpers ------------------------------------------------------------------------------


def _point(point: HookPoint | str) -> HookPoint:
    """The HookPoint named `point`; a ValueError that lists the valid names otherwise."""
    try:
        return HookPoint(point)
    except ValueError:
        valid = ", ".join(p.value for p in HookPoint)
        raise ValueError(f"unknown hook point {point!r}; valid points: {valid}") from None


def _name_of(fn: Hook) -> str:
    name = getattr(fn, "__qualname__", None)
    return name if isinstance(name, str) else type(fn).__qualname__


def _run_order(reg: Registration) -> tuple[int, int]:
    return (-reg.priority, reg.seq)


def _cancelled(point: HookPoint, reason: str, hook: str | None) -> HookCancelled:
    return HookCancelled(str(point), reason, hook or "<unknown>")
