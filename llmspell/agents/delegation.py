"""Delegation's limits and records, shared by the two places a manager runs.

A manager agent delegates through `delegate_to_<specialist>` tools. Where the manager runs in
the driver, `llmspell.supervisors.delegation.Delegation` builds those tools; where it runs in an
agent host (an actor), the delegation travels with the run as a `DelegationPlan` (plain data)
and the host builds them for that run. Both count and refuse calls here, so a limit means the
same thing wherever the manager lives:

- depth: a delegation `max_depth` levels below a manager is refused (counted over the
  enclosing delegations, `LevelRef`s, which travel with a plan across processes);
- budget: calls, tokens and cost of one run's delegations at one level.

A refused call is a ToolError the manager reads, a `delegation.refused` event and a line in the
result's `breaches`; every call that ran is a `DelegationRecord` and a `delegation.result`
event. Control always comes back: a specialist that fails, hands off or runs out of turns is a
tool error naming its status, and the task stays with the manager.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field, SerializeAsAny, field_validator

from llmspell.agents.result import RunResult
from llmspell.runtime.errors import HookCancelled
from llmspell.tools.context import ToolContext
from llmspell.tools.errors import ToolError

__all__ = ["DELEGATE_PREFIX", "Budget", "DelegationPlan", "DelegationRecord",
           "DelegationResult", "Level", "LevelRef", "SpecialistRef", "delegate", "failure",
           "tool_name"]

DELEGATE_PREFIX = "delegate_to_"


def tool_name(specialist: str) -> str:
    """The tool a manager calls: providers allow letters, digits, _ and - in tool names."""
    return DELEGATE_PREFIX + re.sub(r"[^a-zA-Z0-9_-]", "_", specialist)


class Budget(BaseModel):
    """What one run's delegations may spend at one level (None: no limit). Tokens and cost
    are the specialists' (their own nested work included), counted as their runs return."""

    max_calls: int | None = Field(default=None, ge=0)
    max_tokens: int | None = Field(default=None, ge=0)
    max_cost_usd: float | None = Field(default=None, ge=0)


class DelegationRecord(BaseModel):
    """One delegated call: to whom, how it ended, what it cost, and when (ms since the
    delegation's run started, so overlapping calls can be seen)."""

    specialist: str
    input: str
    depth: int
    status: str  # a RunStatus, or "refused" (depth, budget or a hook)
    reason: str = ""
    tokens: int = 0
    cost_usd: float = 0.0
    started_ms: float = 0.0
    finished_ms: float = 0.0


class DelegationResult(RunResult):
    delegations: list[DelegationRecord] = Field(default_factory=list)
    breaches: list[str] = Field(default_factory=list)  # refused calls, with why
    # A nested delegation's result keeps its records on the way back from an actor: dumped
    # with its own fields, read back as a DelegationResult.
    children: list[SerializeAsAny[RunResult]] = Field(default_factory=list)

    @field_validator("children", mode="before")
    @classmethod
    def _nested(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [DelegationResult.model_validate(v)
                    if isinstance(v, dict) and "delegations" in v else v for v in value]
        return value


class LevelRef(BaseModel):
    """An enclosing delegation, as far as the depth limit needs it."""

    name: str
    max_depth: int
    depth: int


class SpecialistRef(BaseModel):
    """A specialist of a manager in an actor: an agent on some host (`host` None: the
    manager's own host). With a `plan`, the specialist is a manager one level down."""

    name: str  # the name the manager knows it by (its tool is delegate_to_<name>)
    agent: str  # the agent that runs
    host: str | None = None
    description: str = ""
    plan: DelegationPlan | None = None


class DelegationPlan(BaseModel):
    """A delegation whose manager runs in an agent host, sent along with the manager's run."""

    name: str
    max_depth: int = Field(default=3, ge=1)
    budget: Budget = Field(default_factory=Budget)
    specialists: list[SpecialistRef]
    outer: list[LevelRef] = Field(default_factory=list)  # enclosing levels, outermost first

    def nested(self, specialist: SpecialistRef, here: LevelRef) -> DelegationPlan | None:
        """The plan a specialist runs under: its own, below this level."""
        if specialist.plan is None:
            return None
        return specialist.plan.model_copy(update={"outer": [*self.outer, here]})


@dataclass(eq=False)
class Level:
    """One running delegation: what its run has spent and recorded so far."""

    name: str
    max_depth: int
    budget: Budget
    depth: int
    started: float = field(default_factory=time.monotonic)
    calls: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    records: list[DelegationRecord] = field(default_factory=list)
    results: list[RunResult] = field(default_factory=list)
    breaches: list[str] = field(default_factory=list)

    def ms(self) -> float:
        return round((time.monotonic() - self.started) * 1e3, 3)

    def ref(self) -> LevelRef:
        return LevelRef(name=self.name, max_depth=self.max_depth, depth=self.depth)

    def refusal(self, outer: Sequence[LevelRef], specialist: str) -> str | None:
        """Why a call to `specialist` may not run now (None: it may). `outer` are the levels
        around this one, outermost first."""
        levels = [lv for lv in [*outer, self.ref()] if lv.depth <= self.depth]
        for lv in levels:
            depth = self.depth - lv.depth + 1
            if depth > lv.max_depth:
                chain = " -> ".join([*(x.name for x in levels if x.depth >= lv.depth),
                                     specialist])
                return (f"delegation depth {depth} below {lv.name!r} exceeds its "
                        f"max_depth={lv.max_depth} ({chain}); do this part yourself")
        return self._over_budget()

    def _over_budget(self) -> str | None:
        b, spent = self.budget, f"the delegation budget of {self.name!r} is spent"
        if b.max_calls is not None and self.calls >= b.max_calls:
            return f"{spent}: {self.calls} of max_calls={b.max_calls} calls made; " \
                   "answer with what you have"
        if b.max_tokens is not None and self.tokens >= b.max_tokens:
            return f"{spent}: {self.tokens} of max_tokens={b.max_tokens} tokens used; " \
                   "answer with what you have"
        if b.max_cost_usd is not None and self.cost_usd >= b.max_cost_usd:
            return f"{spent}: ${self.cost_usd:.4f} of max_cost_usd=${b.max_cost_usd:.4f} " \
                   "spent; answer with what you have"
        return None

    def refuse(self, tool: str, specialist: str, input: str, ctx: ToolContext,
               reason: str) -> None:
        self.breaches.append(f"{tool}: {reason}")
        now = self.ms()
        self.records.append(DelegationRecord(
            specialist=specialist, input=input, depth=self.depth, status="refused",
            reason=reason, started_ms=now, finished_ms=now))
        ctx.publish("delegation.refused", {"delegation": self.name, "tool": tool,
                                           "specialist": specialist, "reason": reason,
                                           "depth": self.depth})

    def record(self, specialist: str, input: str, result: RunResult, started: float,
               ctx: ToolContext) -> None:
        tokens = result.usage.total_tokens
        self.tokens += tokens
        self.cost_usd += result.cost_usd
        self.results.append(result)
        record = DelegationRecord(
            specialist=specialist, input=input, depth=self.depth, status=str(result.status),
            reason=result.reason, tokens=tokens, cost_usd=result.cost_usd, started_ms=started,
            finished_ms=self.ms())
        self.records.append(record)
        ctx.publish("delegation.result", {"delegation": self.name, **record.model_dump(
            exclude={"input"})})


Call = Callable[[str, ToolContext], Awaitable[RunResult]]


async def delegate(level: Level, outer: Sequence[LevelRef], tool: str, specialist: str,
                   input: str, ctx: ToolContext, call: Call) -> Any:
    """One call of a delegation tool: refused, or run to its end (`call(input, ctx)` in the
    specialist's context) and its output returned; a run that did not complete is a
    ToolError the manager reads."""
    refusal = level.refusal(outer, specialist)
    if refusal is not None:
        level.refuse(tool, specialist, input, ctx, refusal)
        raise ToolError(tool, refusal)
    level.calls += 1  # counted before the await: parallel calls see each other
    child = ctx.enter(specialist, tool=tool)
    started = level.ms()
    child.publish("agent.delegate", {"delegation": level.name, "tool": tool,
                                     "target": specialist, "depth": level.depth})
    try:
        result = await call(input, child)
    except HookCancelled as exc:
        level.refuse(tool, specialist, input, ctx, f"refused by hook {exc.hook!r}: {exc.reason}")
        raise
    level.record(specialist, input, result, started, child)
    if not result.ok:
        raise ToolError(tool, failure(result))
    return result.output


def failure(result: RunResult) -> str:
    why = f"the specialist {result.agent!r} ended with status {result.status}"
    if result.handoff is not None:
        why += f" (it tried to hand off to {result.handoff.target!r})"
    return f"{why}: {result.reason or 'no reason given'}; the task came back to you"
