"""The budget hook: a job (and optionally each agent) may spend so many tokens and dollars.

    BudgetHook(max_tokens=200_000, max_cost_usd=2.0).register(registry)

after_llm_call adds each Response's usage and cost to a ledger; before_llm_call refuses the
next model call once a limit is spent: Cancel("token budget of 200000 exceeded: used 201337").
In the agent loop that ends the run as `cancelled`, with the budget as `cancelled_by`.

The agents of a job may live in many actors, so the ledger can live in the state store: a
job-scoped key (`job:llmspell.budget`) updated with compare-and-set, so that concurrent
writers from every process add up instead of overwriting each other. `MemoryLedger` is the
in-process one.

A call is refused only once the budget is spent, so the job can overshoot by the calls that
were already running when it ran out (at most one per agent working at that moment).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import Field, model_validator

from llmspell.agents.hooks._common import (
    CACHE_HIT,
    HookResources,
    OptionError,
    Options,
    VersionedStore,
    operation,
)
from llmspell.llm.types import Response
from llmspell.runtime.errors import StateError, VersionConflict
from llmspell.runtime.hooks import Cancel, HookContext, HookPoint, HookRegistry, Registration
from llmspell.runtime.state import Versioned

__all__ = [
    "BudgetHook",
    "BudgetOptions",
    "Ledger",
    "MemoryLedger",
    "Spend",
    "StateLedger",
    "build",
]

LEDGER_KEY = "job:llmspell.budget"


class BudgetOptions(Options):
    max_tokens: int | None = Field(default=None, ge=1, description="tokens of the whole job")
    max_cost_usd: float | None = Field(default=None, gt=0, description="dollars of the job")
    per_agent_max_tokens: int | None = Field(default=None, ge=1)
    per_agent_max_cost_usd: float | None = Field(default=None, gt=0)
    ledger: Literal["memory", "state"] = "memory"
    """Where spending is counted: this process, or the job's state (shared by all actors)."""

    @model_validator(mode="after")
    def _some_limit(self) -> BudgetOptions:
        limits = (self.max_tokens, self.max_cost_usd, self.per_agent_max_tokens,
                  self.per_agent_max_cost_usd)
        if all(limit is None for limit in limits):
            raise ValueError("give at least one of max_tokens, max_cost_usd, "
                             "per_agent_max_tokens, per_agent_max_cost_usd")
        return self


@dataclass(frozen=True)
class Spend:
    """Tokens and dollars spent."""

    tokens: int = 0
    cost_usd: float = 0.0

    def plus(self, tokens: int, cost_usd: float) -> Spend:
        return Spend(self.tokens + tokens, self.cost_usd + cost_usd)


class Ledger(Protocol):
    """Where a budget counts spending. `agent` None asks for the whole job."""

    async def spent(self, job_id: str, agent: str | None) -> tuple[Spend, Spend]:
        """(the job's spend, the agent's spend)."""
        ...

    async def add(self, job_id: str, agent: str | None, tokens: int, cost_usd: float
                  ) -> None: ...


class MemoryLedger:
    """Spending counted in this process only (one actor, a script, a test)."""

    def __init__(self) -> None:
        self._jobs: dict[str, Spend] = {}
        self._agents: dict[tuple[str, str], Spend] = {}

    async def spent(self, job_id: str, agent: str | None) -> tuple[Spend, Spend]:
        agent_spend = self._agents.get((job_id, agent), Spend()) if agent else Spend()
        return self._jobs.get(job_id, Spend()), agent_spend

    async def add(self, job_id: str, agent: str | None, tokens: int, cost_usd: float
                  ) -> None:
        self._jobs[job_id] = self._jobs.get(job_id, Spend()).plus(tokens, cost_usd)
        if agent:
            key = (job_id, agent)
            self._agents[key] = self._agents.get(key, Spend()).plus(tokens, cost_usd)


class StateLedger:
    """Spending counted in a job's state, shared by every actor of the job.

    The value at `key` is {"tokens", "cost_usd", "agents": {name: {"tokens", "cost_usd"}}};
    `add` reads it, adds and writes it back with compare-and-set, retrying on a conflict.
    `store` is bound to one job (a StateClient, or a LocalState over an in-process StateStore),
    so the `job_id` arguments only have to match it.
    """

    def __init__(self, store: VersionedStore, *, key: str = LEDGER_KEY,
                 max_attempts: int = 100) -> None:
        self.store = store
        self.key = key
        self.max_attempts = max_attempts
        self.conflicts = 0

    async def spent(self, job_id: str, agent: str | None) -> tuple[Spend, Spend]:
        value = _ledger_value(await self.store.get_versioned(self.key))
        agent_value = value["agents"].get(agent, {}) if agent else {}
        return _spend(value), _spend(agent_value)

    async def add(self, job_id: str, agent: str | None, tokens: int, cost_usd: float
                  ) -> None:
        for attempt in range(self.max_attempts):
            found = await self.store.get_versioned(self.key)
            value = _ledger_value(found)
            value.update(_added(value, tokens, cost_usd))
            if agent:
                value["agents"][agent] = _added(value["agents"].get(agent, {}), tokens, cost_usd)
            try:
                await self.store.compare_and_set(self.key, value,
                                                 None if found is None else found.version)
                return
            except VersionConflict:
                self.conflicts += 1
                # Writers that collided would collide again in lockstep: spread them out.
                await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
        raise StateError(f"budget ledger {self.key!r}: gave up after {self.max_attempts} "
                         "conflicting writes")


def _ledger_value(found: Versioned | None) -> dict[str, Any]:
    value = dict(found.value) if found is not None and isinstance(found.value, dict) else {}
    value.setdefault("tokens", 0)
    value.setdefault("cost_usd", 0.0)
    value["agents"] = dict(value.get("agents") or {})
    return value


def _added(entry: Mapping[str, Any], tokens: int, cost_usd: float) -> dict[str, Any]:
    return {"tokens": int(entry.get("tokens", 0)) + tokens,
            "cost_usd": float(entry.get("cost_usd", 0.0)) + cost_usd}


def _spend(entry: Mapping[str, Any]) -> Spend:
    return Spend(int(entry.get("tokens", 0)), float(entry.get("cost_usd", 0.0)))


class BudgetHook:
    name = "budget"
    default_priority = 70  # before the cache and the rate limit: a spent job waits for nothing

    def __init__(self, options: BudgetOptions | None = None, /, *,
                 ledger: Ledger | None = None, **fields: Any) -> None:
        self.options = options or BudgetOptions(**fields)
        self.ledger: Ledger = ledger if ledger is not None else MemoryLedger()
        self.refused = 0

    def register(self, registry: HookRegistry, *, priority: int | None = None
                 ) -> list[Registration]:
        p = self.default_priority if priority is None else priority
        return [
            registry.register(HookPoint.before_llm_call, self.before, priority=p,
                              name=self.name),
            # Last among after hooks: count the Response as the others left it.
            registry.register(HookPoint.after_llm_call, self.after, priority=-p,
                              name=self.name),
        ]

    async def before(self, ctx: HookContext) -> Cancel | None:
        op = operation(ctx)
        agent = op.agent if op is not None else None
        job_spend, agent_spend = await self.ledger.spent(ctx.job_id or "", agent)
        reason = self._over(job_spend, agent_spend, agent)
        if reason is None:
            return None
        self.refused += 1
        return Cancel(reason)

    async def after(self, ctx: HookContext) -> None:
        response = ctx.payload
        if not isinstance(response, Response) or ctx.metadata.get(CACHE_HIT):
            return
        op = operation(ctx)
        await self.ledger.add(ctx.job_id or "", op.agent if op is not None else None,
                              response.usage.total_tokens, response.cost_usd or 0.0)

    def _over(self, job: Spend, agent: Spend, name: str | None) -> str | None:
        """The reason to refuse, naming the budget that is spent; None while there is room."""
        o = self.options
        if o.max_tokens is not None and job.tokens >= o.max_tokens:
            return f"token budget of {o.max_tokens} exceeded: used {job.tokens}"
        if o.max_cost_usd is not None and job.cost_usd >= o.max_cost_usd:
            return (f"cost budget of ${o.max_cost_usd:g} exceeded: "
                    f"spent ${job.cost_usd:.6f}")
        if name is None:
            return None
        if o.per_agent_max_tokens is not None and agent.tokens >= o.per_agent_max_tokens:
            return (f"token budget of {o.per_agent_max_tokens} for agent {name!r} exceeded: "
                    f"used {agent.tokens}")
        if o.per_agent_max_cost_usd is not None and agent.cost_usd >= o.per_agent_max_cost_usd:
            return (f"cost budget of ${o.per_agent_max_cost_usd:g} for agent {name!r} "
                    f"exceeded: spent ${agent.cost_usd:.6f}")
        return None


def build(options: Mapping[str, Any], resources: HookResources) -> BudgetHook:
    parsed = BudgetOptions.model_validate(options)
    if parsed.ledger == "memory":
        return BudgetHook(parsed)
    if resources.state is None:
        raise OptionError("ledger", "'state' needs the job's state store, and install() "
                          "was given none (pass state=...)")
    return BudgetHook(parsed, ledger=StateLedger(resources.state))
