"""The usage hook: token and cost totals per agent, per model and per job.

    usage = UsageHook()
    usage.register(registry)
    ...
    usage.snapshot()["jobs"]["job-1"]  # {"calls": 3, "input_tokens": ..., "cost_usd": ...}

It reads what the model layer measured: each after_llm_call Response carries its usage and
its cost (priced by the client's PriceTable; None when the model has no price). Every call
is also a `usage.updated` event carrying what that call spent: a job's bill is the sum of its
events, which a progress view adds up as they come. (The events carry no running totals: a
job's agents may live in several hosts, each with a hook of its own that sees only its calls.)
A cache hit spent nothing and is counted apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llmspell.agents.hooks._common import CACHE_HIT, HookResources, Options, operation, report
from llmspell.llm.types import Response, Usage
from llmspell.runtime.hooks import HookContext, HookPoint, HookRegistry, Registration

__all__ = ["Totals", "UsageHook", "UsageOptions", "build"]


class UsageOptions(Options):
    emit_events: bool = True
    """Publish `usage.updated` after every model call."""


@dataclass
class Totals:
    """What a set of calls spent. `unpriced` counts calls whose model had no price."""

    calls: int = 0
    cached_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    unpriced: int = 0

    def add(self, usage: Usage, cost: float | None) -> None:
        self.calls += 1
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.cached_tokens += usage.cached_tokens
        if cost is None:
            self.unpriced += 1
        else:
            self.cost_usd += cost

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def as_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "cached_calls": self.cached_calls,
                "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cached_tokens": self.cached_tokens, "total_tokens": self.total_tokens,
                "cost_usd": round(self.cost_usd, 8), "unpriced_calls": self.unpriced}


class UsageHook:
    """Totals by job, agent and model, from the responses of model calls."""

    name = "usage"
    default_priority = -1000  # an observer of after_llm_call: last, sees the final Response

    def __init__(self, options: UsageOptions | None = None, /, **fields: Any) -> None:
        self.options = options or UsageOptions(**fields)
        self.jobs: dict[str, Totals] = {}
        self.agents: dict[str, Totals] = {}
        self.models: dict[str, Totals] = {}
        self._registry: HookRegistry | None = None

    def register(self, registry: HookRegistry, *, priority: int | None = None
                 ) -> list[Registration]:
        self._registry = registry
        p = self.default_priority if priority is None else priority
        return [registry.register(HookPoint.after_llm_call, self.after, priority=p,
                                  name=self.name)]

    def after(self, ctx: HookContext) -> None:
        response = ctx.payload
        op = operation(ctx)
        if not isinstance(response, Response) or op is None:
            return
        job, agent, model = ctx.job_id or "", op.agent or "", _model_of(response, op.name)
        books = (_get(self.jobs, job), _get(self.agents, agent), _get(self.models, model))
        for totals in books:
            if ctx.metadata.get(CACHE_HIT):
                totals.cached_calls += 1
            else:
                totals.add(response.usage, response.cost_usd)
        if self.options.emit_events and self._registry is not None:
            report(self._registry, "usage.updated", {
                "job_id": job, "agent": agent, "model": model,
                "cached": bool(ctx.metadata.get(CACHE_HIT)),
                "usage": response.usage.model_dump(), "cost_usd": response.cost_usd})

    def snapshot(self) -> dict[str, Any]:
        """{"jobs": {...}, "agents": {...}, "models": {...}}, each name -> totals."""
        return {"jobs": {k: v.as_dict() for k, v in self.jobs.items()},
                "agents": {k: v.as_dict() for k, v in self.agents.items()},
                "models": {k: v.as_dict() for k, v in self.models.items()}}


def _get(book: dict[str, Totals], key: str) -> Totals:
    totals = book.get(key)
    if totals is None:
        totals = book[key] = Totals()
    return totals


def _model_of(response: Response, target: str) -> str:
    """The model that answered: after a fallback it is not the one that was asked."""
    if response.provider and response.model:
        return f"{response.provider}:{response.model}"
    return target


def build(options: Mapping[str, Any], resources: HookResources) -> UsageHook:
    return UsageHook(UsageOptions.model_validate(options))
