"""The rate-limit hook: calls per minute per tool and per agent.

    RateLimitHook(tool_calls_per_minute=60, tools={"web_search": 10},
                  agent_calls_per_minute=120).register(registry)

A call over the limit waits for its turn before it runs (nothing fails), unless `max_wait_s`
is set: then a call that would wait longer is refused (Cancel) at once. With `shared_key` the
windows live in the runtime's limiter actor (`llmspell.llm.ratelimit.SharedRateLimiter`), so
the limit holds across every actor of a job or a cluster, not per process.

Tool limits count tool calls; agent limits count an agent's tool calls and model calls
together (model calls are also limited per provider by the model layer itself).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from pydantic import Field, PositiveInt, model_validator

from llmspell.agents.hooks._common import HookResources, Options, operation
from llmspell.llm.ratelimit import Limits, RateLimiter, SharedRateLimiter, limiter_service
from llmspell.runtime.hooks import Cancel, HookContext, HookPoint, HookRegistry, Registration

__all__ = ["RateLimitHook", "RateLimitOptions", "build"]

Limiter = RateLimiter | SharedRateLimiter
_NO_LIMIT_TIMEOUT = 24 * 3600.0  # a waiting hook must not be cut short by the hook timeout


class RateLimitOptions(Options):
    tool_calls_per_minute: int | None = Field(default=None, ge=1,
                                              description="the limit of each tool")
    tools: dict[str, PositiveInt] = Field(default_factory=dict,
                                  description="per-tool limits, overriding the default")
    agent_calls_per_minute: int | None = Field(default=None, ge=1,
                                               description="the limit of each agent")
    agents: dict[str, PositiveInt] = Field(default_factory=dict,
                                   description="per-agent limits, overriding the default")
    window_s: float = Field(default=60.0, gt=0, description="the window the limits count over")
    max_wait_s: float | None = Field(default=None, ge=0,
                                     description="refuse a call that would wait longer")
    shared_key: str | None = Field(default=None, min_length=1,
                                   description="share the windows across the cluster under "
                                               "this key (needs a running runtime)")

    @model_validator(mode="after")
    def _some_limit(self) -> RateLimitOptions:
        if not (self.tool_calls_per_minute or self.tools or self.agent_calls_per_minute
                or self.agents):
            raise ValueError("give at least one of tool_calls_per_minute, tools, "
                             "agent_calls_per_minute, agents")
        return self


class RateLimitHook:
    name = "rate_limit"
    default_priority = 60

    def __init__(self, options: RateLimitOptions | None = None, /, *,
                 service: Any = None, **fields: Any) -> None:
        """`service`: the limiter actor for shared limits (by default the runtime's)."""
        self.options = options or RateLimitOptions(**fields)
        self._service = service
        self._limiters: dict[tuple[str, str], Limiter | None] = {}
        self.waited_s = 0.0
        self.refused = 0

    def register(self, registry: HookRegistry, *, priority: int | None = None
                 ) -> list[Registration]:
        p = self.default_priority if priority is None else priority
        o = self.options
        timeout = _NO_LIMIT_TIMEOUT if o.max_wait_s is None else o.max_wait_s + 5.0
        regs = [registry.register(HookPoint.before_tool_call, self.before, priority=p,
                                  timeout=timeout, name=self.name)]
        if o.agent_calls_per_minute or o.agents:
            regs.append(registry.register(HookPoint.before_llm_call, self.before, priority=p,
                                          timeout=timeout, name=self.name))
        return regs

    async def before(self, ctx: HookContext) -> Cancel | None:
        op = operation(ctx)
        if op is None:
            return None
        keys = [("agent", op.agent)] if op.agent is not None else []
        if op.kind == "tool":
            keys.append(("tool", op.name))
        for kind, name in keys:
            refusal = await self._take(kind, name)
            if refusal is not None:
                return refusal
        return None

    async def _take(self, kind: str, name: str) -> Cancel | None:
        limiter = self._limiter(kind, name)
        if limiter is None:
            return None
        max_wait = self.options.max_wait_s
        if isinstance(limiter, RateLimiter):
            waited = await _acquire_local(limiter, max_wait)
        else:
            waited = await _acquire_shared(limiter, max_wait)
        if waited is None:
            self.refused += 1
            return Cancel(f"rate limit for {kind} {name!r}: the call would wait more than "
                          f"max_wait_s={max_wait:g}")
        self.waited_s += waited
        return None

    def _limiter(self, kind: str, name: str) -> Limiter | None:
        key = (kind, name)
        if key not in self._limiters:
            self._limiters[key] = self._new_limiter(kind, name)
        return self._limiters[key]

    def _new_limiter(self, kind: str, name: str) -> Limiter | None:
        o = self.options
        if kind == "tool":
            rpm = o.tools.get(name, o.tool_calls_per_minute)
        else:
            rpm = o.agents.get(name, o.agent_calls_per_minute)
        if rpm is None:
            return None
        limits = Limits(requests_per_minute=rpm, window=o.window_s)
        if o.shared_key is None:
            return RateLimiter(limits)
        return SharedRateLimiter(f"{o.shared_key}:{kind}:{name}", limits, self._shared())

    def _shared(self) -> Any:
        if self._service is None:
            import ray  # only shared limits need Ray; local ones work without it

            self._service = limiter_service(ray.get_runtime_context().namespace)
        return self._service


async def _acquire_local(limiter: RateLimiter, max_wait: float | None) -> float | None:
    """Wait for a slot; the seconds waited, or None when the wait would pass `max_wait`.

    The window says how long the wait will be, so a refusal comes at once, not after waiting.
    """
    if max_wait is None:
        return await limiter.acquire()
    waited = 0.0
    while (wait := limiter.window.try_acquire(1, 0, time.monotonic())) > 0:
        if waited + wait > max_wait:
            return None
        await asyncio.sleep(wait)
        waited += wait
    limiter.waited += waited
    return waited


async def _acquire_shared(limiter: SharedRateLimiter, max_wait: float | None
                          ) -> float | None:
    # The lease service does not predict waits, so a bounded wait is a timeout on acquire.
    if max_wait is None:
        return await limiter.acquire()
    try:
        async with asyncio.timeout(max_wait):
            return await limiter.acquire()
    except TimeoutError:
        return None


def build(options: Mapping[str, Any], resources: HookResources) -> RateLimitHook:
    return RateLimitHook(RateLimitOptions.model_validate(options))
