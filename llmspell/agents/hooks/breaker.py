"""The circuit breaker: stop calling a tool or a provider that keeps failing.

    CircuitBreaker(failure_threshold=5, window_s=60, cooldown_s=30).register(registry)

One circuit per tool and one per provider (the part of "provider:model" before the colon):

    closed      calls go through; failures are counted over a sliding window of `window_s`;
                `failure_threshold` failures in the window open the circuit
    open        calls are refused at once (Cancel: "circuit open for tool 'x' until ...")
                for `cooldown_s`, instead of waiting on something that is down
    half_open   after the cool-down one trial call goes through (others are refused while
                it runs): a success closes the circuit, a failure opens it again

A failure is a call that raised (on_error) or a result that says it failed (a Response whose
finish_reason is "error", a tool result dict with "is_error": true). Errors of the caller's
making (bad arguments, an unknown tool, a sandbox refusal, a bad request, a cancellation)
say nothing about the tool's health and are not counted, unless `count_caller_errors`.

Every change of state is an event: breaker.opened, breaker.half_open, breaker.closed.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import Field

from llmspell.agents.hooks._common import CACHE_HIT, HookResources, Op, Options, operation, report
from llmspell.llm.errors import LLMBadRequest
from llmspell.llm.types import Response
from llmspell.runtime.errors import Cancelled, HookCancelled
from llmspell.runtime.hooks import Cancel, HookContext, HookPoint, HookRegistry, Registration
from llmspell.tools.errors import RecursionLimit, SandboxViolation, ToolArgumentError, ToolNotFound

__all__ = ["BreakerOptions", "BreakerState", "Circuit", "CircuitBreaker", "build"]

_CALLER_ERRORS = (ToolArgumentError, ToolNotFound, SandboxViolation, RecursionLimit,
                  LLMBadRequest, HookCancelled, Cancelled)
_TRIAL = "llmspell.breaker_trial"  # ctx.metadata: this call is the trial of a half-open circuit


class BreakerOptions(Options):
    failure_threshold: int = Field(default=5, ge=1)
    window_s: float = Field(default=60.0, gt=0)
    cooldown_s: float = Field(default=30.0, gt=0)
    trial_timeout_s: float = Field(default=120.0, gt=0)
    """A trial call that has not reported back by then is presumed lost; another may try."""
    tools: bool = True
    providers: bool = True
    count_caller_errors: bool = False


class BreakerState(StrEnum):
    closed = "closed"
    open = "open"
    half_open = "half_open"


@dataclass
class Circuit:
    """The state of one tool's or provider's circuit (times are time.monotonic())."""

    kind: str
    name: str
    state: BreakerState = BreakerState.closed
    failures: deque[float] = field(default_factory=deque)
    open_until: float = 0.0
    trial_started: float | None = None
    last_error: str = ""

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"


class CircuitBreaker:
    name = "circuit_breaker"
    default_priority = 80  # early: a refused call should not wait for a rate-limit slot

    def __init__(self, options: BreakerOptions | None = None, /, **fields: Any) -> None:
        self.options = options or BreakerOptions(**fields)
        self.circuits: dict[str, Circuit] = {}
        self.refused = 0
        self._registry: HookRegistry | None = None

    def register(self, registry: HookRegistry, *, priority: int | None = None
                 ) -> list[Registration]:
        self._registry = registry
        p = self.default_priority if priority is None else priority
        points: list[tuple[HookPoint, Any]] = []
        if self.options.tools:
            points += [(HookPoint.before_tool_call, self.before),
                       (HookPoint.after_tool_call, self.after)]
        if self.options.providers:
            points += [(HookPoint.before_llm_call, self.before),
                       (HookPoint.after_llm_call, self.after)]
        regs = [registry.register(point, fn, priority=p, name=self.name) for point, fn in points]
        regs.append(registry.register(HookPoint.on_error, self.error, priority=p, name=self.name))
        return regs

    def state(self, kind: str, name: str) -> BreakerState:
        """The state of a circuit ("tool", "search") or ("provider", "openai")."""
        circuit = self.circuits.get(f"{kind}:{name}")
        return BreakerState.closed if circuit is None else circuit.state

    # -- the hooks ----------------------------------------------------------------------------

    def before(self, ctx: HookContext) -> Cancel | None:
        circuit = self._circuit(operation(ctx))
        if circuit is None or circuit.state == BreakerState.closed:
            return None
        now = time.monotonic()
        if circuit.state == BreakerState.open and now < circuit.open_until:
            return self._refuse(f"circuit open for {circuit.kind} {circuit.name!r} until "
                                f"{_wall(circuit.open_until, now)} (retry in "
                                f"{circuit.open_until - now:.2f}s; last error: "
                                f"{circuit.last_error[:200]})")
        trial = circuit.trial_started
        if circuit.state == BreakerState.half_open and trial is not None \
                and now - trial < self.options.trial_timeout_s:
            return self._refuse(f"circuit half-open for {circuit.kind} {circuit.name!r}: a "
                                "trial call is in flight")
        self._half_open(circuit, now)
        ctx.metadata[_TRIAL] = circuit.key
        return None

    def after(self, ctx: HookContext) -> None:
        if ctx.metadata.get(CACHE_HIT):
            return  # no model ran: nothing was learnt about the provider
        circuit = self._circuit(operation(ctx))
        if circuit is None:
            return
        if _failed(ctx.payload):
            self._failure(circuit, ctx, "the result reports an error")
        else:
            self._success(circuit, ctx)

    def error(self, ctx: HookContext) -> None:
        op = operation(ctx)
        if op is None or op.kind not in ("tool", "llm"):
            return
        error = ctx.error
        if isinstance(error, _CALLER_ERRORS) and not self.options.count_caller_errors:
            return
        circuit = self._circuit(op)
        if circuit is not None:
            self._failure(circuit, ctx, f"{type(error).__name__}: {error}")

    # -- transitions --------------------------------------------------------------------------

    def _failure(self, circuit: Circuit, ctx: HookContext, why: str) -> None:
        now = time.monotonic()
        circuit.last_error = why
        if circuit.state == BreakerState.half_open:
            if ctx.metadata.get(_TRIAL) == circuit.key:
                self._open(circuit, now, f"the trial call failed: {why}")
            return
        if circuit.state == BreakerState.open:
            return  # a call from before the circuit opened; the cool-down stands
        circuit.failures.append(now)
        while circuit.failures and circuit.failures[0] <= now - self.options.window_s:
            circuit.failures.popleft()
        if len(circuit.failures) >= self.options.failure_threshold:
            self._open(circuit, now, f"{len(circuit.failures)} failures within "
                                     f"{self.options.window_s:g}s; last: {why}")

    def _success(self, circuit: Circuit, ctx: HookContext) -> None:
        if circuit.state == BreakerState.half_open and ctx.metadata.get(_TRIAL) == circuit.key:
            circuit.state = BreakerState.closed
            circuit.failures.clear()
            circuit.trial_started = None
            self._event("breaker.closed", circuit, {})

    def _open(self, circuit: Circuit, now: float, reason: str) -> None:
        circuit.state = BreakerState.open
        circuit.open_until = now + self.options.cooldown_s
        circuit.trial_started = None
        circuit.failures.clear()
        self._event("breaker.opened", circuit, {
            "reason": reason[:500], "cooldown_s": self.options.cooldown_s,
            "until": _wall(circuit.open_until, now)})

    def _half_open(self, circuit: Circuit, now: float) -> None:
        circuit.state = BreakerState.half_open
        circuit.trial_started = now
        self._event("breaker.half_open", circuit, {})

    def _refuse(self, reason: str) -> Cancel:
        self.refused += 1
        return Cancel(reason)

    def _circuit(self, op: Op | None) -> Circuit | None:
        if op is None or op.kind not in ("tool", "llm"):
            return None
        kind, name = ("tool", op.name) if op.kind == "tool" else ("provider", _provider(op.name))
        key = f"{kind}:{name}"
        circuit = self.circuits.get(key)
        if circuit is None:
            circuit = self.circuits[key] = Circuit(kind, name)
        return circuit

    def _event(self, topic: str, circuit: Circuit, data: dict[str, Any]) -> None:
        if self._registry is not None:
            report(self._registry, topic, {"kind": circuit.kind, "name": circuit.name,
                                           "state": str(circuit.state), **data})


def _failed(result: Any) -> bool:
    if isinstance(result, Response):
        return result.finish_reason == "error"
    return isinstance(result, dict) and result.get("is_error") is True


def _provider(model: str) -> str:
    return model.partition(":")[0]


def _wall(deadline: float, now: float) -> str:
    """A monotonic deadline as a wall-clock time a user can read (UTC, milliseconds)."""
    moment = datetime.fromtimestamp(time.time() + (deadline - now), UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build(options: Mapping[str, Any], resources: HookResources) -> CircuitBreaker:
    return CircuitBreaker(BreakerOptions.model_validate(options))
