"""Delegation: a manager agent that hands tasks to its specialists, as tools, and aggregates.

    team = Delegation("team", manager=lead, specialists=[researcher, writer],
                      max_depth=2, budget=Budget(max_calls=6))
    result = await team.run("Write a brief on Ray")

The manager gets one tool per specialist, `delegate_to_<name>`. The agent loop runs the calls
of one answer in parallel, so a manager that asks two specialists in one turn gets both at
once. Control always comes back: a specialist's run returns to the manager, as the tool's
result or as a tool error naming its status and reason (a specialist that hands off, fails or
runs out of turns never takes the task away from the manager).

Specialists are agents in this process, agents in actors (AgentHandle), or patterns; a nested
Delegation (or a manager agent with agents as tools) is a manager one level down. The manager
itself runs where the delegation runs: an Agent (its spec and env are reused, with the
delegation tools added) or an AgentSpec.

Limits, per level: `max_depth` bounds how deep delegations nest below this manager (1: its
specialists may not delegate further; counted over nested Delegations in this process), and
`budget` bounds the calls, tokens and cost of one run's delegations at this level. A refused
call is a tool error the manager reads, a `delegation.refused` event and a line in the
result's `breaches`. before/after_delegation hooks run around every delegated call.
"""

from __future__ import annotations

import re
import time
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import BaseModel, Field

from llmspell.agents.agent import Agent
from llmspell.agents.env import AgentEnv
from llmspell.agents.result import RunResult, RunStatus
from llmspell.agents.spec import AgentSpec, SpecError
from llmspell.runtime.errors import HookCancelled
from llmspell.runtime.hooks import HookPoint
from llmspell.supervisors.base import (
    Pattern,
    Step,
    as_step,
    env_context,
    output_text,
    run_watched,
)
from llmspell.tools.agent_tool import AgentTool
from llmspell.tools.context import ToolContext
from llmspell.tools.errors import ToolError
from llmspell.tools.registry import ToolRegistry

__all__ = ["DELEGATE_PREFIX", "Budget", "Delegation", "DelegationRecord", "DelegationResult"]

DELEGATE_PREFIX = "delegate_to_"


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


@dataclass(eq=False)
class _Level:
    """One running delegation in this task's context (a nested one is one level deeper)."""

    delegation: Delegation
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


# The delegations running around the current task, outermost first. A ContextVar: tasks the
# agent loop starts for parallel tool calls inherit it, and nothing leaks between runs.
_LEVELS: ContextVar[tuple[_Level, ...]] = ContextVar("llmspell_delegation_levels", default=())


class DelegateTool(AgentTool):
    """`delegate_to_<specialist>`: one delegated call, under the delegation's limits."""

    def __init__(self, delegation: Delegation, specialist: Step, description: str) -> None:
        super().__init__(specialist, name=tool_name(specialist.name), description=description)
        self.delegation = delegation
        self.specialist = specialist

    async def run(self, args: Any, ctx: ToolContext) -> Any:
        return await self.delegation.delegate(self, str(args.input), ctx)


def tool_name(specialist: str) -> str:
    """The tool a manager calls: providers allow letters, digits, _ and - in tool names."""
    return DELEGATE_PREFIX + re.sub(r"[^a-zA-Z0-9_-]", "_", specialist)


class Delegation(Pattern):
    kind = "delegation"

    def __init__(self, name: str, manager: Agent | AgentSpec | dict[str, Any],
                 specialists: list[Any], *, max_depth: int = 3, budget: Budget | None = None,
                 env: AgentEnv | None = None, description: str = "") -> None:
        super().__init__(name, description=description)
        if max_depth < 1:
            raise SpecError(f"delegation {name!r}: max_depth must be at least 1")
        self.max_depth = max_depth
        self.budget = budget or Budget()
        self.specialists = self._specialists(specialists)
        self.manager = self._manager(manager, env)

    # -- construction -------------------------------------------------------------------------

    def _specialists(self, specialists: list[Any]) -> dict[str, Step]:
        steps: dict[str, Step] = {}
        for target in specialists:
            step = as_step(target)
            if step.name in steps:
                raise SpecError(f"delegation {self.name!r}: two specialists named {step.name!r}")
            steps[step.name] = step
        if not steps:
            raise SpecError(f"delegation {self.name!r} has no specialists")
        return steps

    def _manager(self, manager: Agent | AgentSpec | dict[str, Any],
                 env: AgentEnv | None) -> Agent:
        """A manager agent of our own: the given spec plus one delegation tool per specialist
        (the caller's Agent object is left as it was)."""
        if isinstance(manager, Agent):
            spec, env = manager.spec, env or manager.env
        elif isinstance(manager, AgentSpec | dict):
            spec = manager if isinstance(manager, AgentSpec) else AgentSpec.model_validate(manager)
            env = env or AgentEnv()
        else:
            raise SpecError(f"delegation {self.name!r}: the manager runs where the delegation "
                            f"runs, so give an Agent or an AgentSpec, not {manager!r} (its "
                            "specialists may be agent handles or patterns)")
        tools = ToolRegistry(env.tools)
        added = []
        for step in self.specialists.values():
            tool = DelegateTool(self, step, _describe(step))
            if tool.name in spec.tools or tool.name in added:
                raise SpecError(f"delegation {self.name!r}: the manager already has a tool "
                                f"named {tool.name!r}")
            tools.register(tool, replace=True)
            added.append(tool.name)
        spec = spec.model_copy(update={"tools": [*spec.tools, *added]})
        return Agent(spec, env=replace(env, tools=tools))

    # -- the run ------------------------------------------------------------------------------

    async def run(self, input: str, *, ctx: ToolContext | None = None,
                  inputs: dict[str, Any] | None = None) -> RunResult:
        return await super().run(input, ctx=ctx or env_context([self.manager]), inputs=inputs)

    async def _run(self, input: str, ctx: ToolContext, inputs: dict[str, Any]) -> RunResult:
        levels = _LEVELS.get()
        level = _Level(self, depth=len(levels) + 1)
        token = _LEVELS.set((*levels, level))
        try:
            managed = await self.manager.run(input, ctx=ctx, inputs=inputs)
        finally:
            _LEVELS.reset(token)
        base = self.result(managed.status, output=managed.output, reason=managed.reason,
                           children=[managed, *level.results])
        base.text = managed.text or base.text
        base.cancelled_by = managed.cancelled_by
        return DelegationResult(**dict(base), delegations=level.records,
                                breaches=level.breaches)

    async def delegate(self, tool: DelegateTool, input: str, ctx: ToolContext) -> Any:
        """One call of a delegation tool: refused, or run to its end and returned."""
        level = self._level()
        refusal = self._refusal(level, tool.specialist.name)
        if refusal is not None:
            self._refuse(level, tool, input, ctx, refusal)
            raise ToolError(tool.name, refusal)
        level.calls += 1  # counted before the await: parallel calls see each other
        child = ctx.enter(tool.specialist.name, tool=tool.name)
        started = level.ms()
        child.publish("agent.delegate", {"delegation": self.name, "tool": tool.name,
                                         "target": tool.specialist.name, "depth": level.depth})
        try:
            result = await self._call(tool, input, child, level)
        except HookCancelled as exc:
            self._refuse(level, tool, input, ctx, f"refused by hook {exc.hook!r}: {exc.reason}")
            raise
        self._record(level, tool.specialist.name, input, result, started, child)
        if not result.ok:
            raise ToolError(tool.name, _failure(result))
        return result.output

    async def _call(self, tool: DelegateTool, input: str, ctx: ToolContext,
                    level: _Level) -> RunResult:
        payload = {"delegation": self.name, "manager": self.manager.name,
                   "specialist": tool.specialist.name, "input": input, "depth": level.depth,
                   "branch": ctx.branch}

        async def call(p: dict[str, Any], target: str | None) -> RunResult:
            step = self.specialists.get(target or "", tool.specialist)  # a hook's Redirect
            return await run_watched(step, str(p.get("input", input)), ctx)

        if ctx.hooks is None:
            return await call(payload, None)
        value = await ctx.hooks.call(HookPoint.before_delegation, HookPoint.after_delegation,
                                     payload, call, target=tool.specialist.name,
                                     job_id=ctx.job_id, actor=self.name)
        if isinstance(value, RunResult):
            return value
        return RunResult(status=RunStatus.completed, agent=tool.specialist.name, output=value,
                         text=output_text(value))  # a hook replaced the call (a cache hit)

    # -- limits and records -------------------------------------------------------------------

    def _level(self) -> _Level:
        """This delegation's innermost running level (a new one if its tool is called outside
        a run of the delegation, so the limits still hold)."""
        levels = _LEVELS.get()
        for level in reversed(levels):
            if level.delegation is self:
                return level
        return _Level(self, depth=len(levels) + 1)

    def _refusal(self, level: _Level, specialist: str) -> str | None:
        levels = _LEVELS.get()
        outer = [lv for lv in levels if lv.depth <= level.depth] or [level]
        for lv in outer:
            depth = level.depth - lv.depth + 1
            if depth > lv.delegation.max_depth:
                chain = " -> ".join([*(x.delegation.name for x in outer if x.depth >= lv.depth),
                                     specialist])
                return (f"delegation depth {depth} below {lv.delegation.name!r} exceeds its "
                        f"max_depth={lv.delegation.max_depth} ({chain}); do this part yourself")
        return self._over_budget(level)

    def _over_budget(self, level: _Level) -> str | None:
        b, spent = self.budget, f"the delegation budget of {self.name!r} is spent"
        if b.max_calls is not None and level.calls >= b.max_calls:
            return f"{spent}: {level.calls} of max_calls={b.max_calls} calls made; " \
                   "answer with what you have"
        if b.max_tokens is not None and level.tokens >= b.max_tokens:
            return f"{spent}: {level.tokens} of max_tokens={b.max_tokens} tokens used; " \
                   "answer with what you have"
        if b.max_cost_usd is not None and level.cost_usd >= b.max_cost_usd:
            return f"{spent}: ${level.cost_usd:.4f} of max_cost_usd=${b.max_cost_usd:.4f} " \
                   "spent; answer with what you have"
        return None

    def _refuse(self, level: _Level, tool: DelegateTool, input: str, ctx: ToolContext,
                reason: str) -> None:
        level.breaches.append(f"{tool.name}: {reason}")
        now = level.ms()
        level.records.append(DelegationRecord(
            specialist=tool.specialist.name, input=input, depth=level.depth, status="refused",
            reason=reason, started_ms=now, finished_ms=now))
        ctx.publish("delegation.refused", {"delegation": self.name, "tool": tool.name,
                                           "specialist": tool.specialist.name, "reason": reason,
                                           "depth": level.depth})

    def _record(self, level: _Level, specialist: str, input: str, result: RunResult,
                started: float, ctx: ToolContext) -> None:
        tokens = result.usage.total_tokens
        level.tokens += tokens
        level.cost_usd += result.cost_usd
        level.results.append(result)
        record = DelegationRecord(
            specialist=specialist, input=input, depth=level.depth, status=str(result.status),
            reason=result.reason, tokens=tokens, cost_usd=result.cost_usd, started_ms=started,
            finished_ms=level.ms())
        level.records.append(record)
        ctx.publish("delegation.result", {"delegation": self.name, **record.model_dump(
            exclude={"input"})})


def _describe(step: Step) -> str:
    about = str(getattr(step, "description", "") or
                getattr(getattr(step, "target", None), "description", "") or "")
    return (f"Delegate a task to the specialist {step.name!r}"
            f"{': ' + about if about else ''}. Give it the whole task and the context it "
            "needs; its answer comes back to you. Call several specialists at once when the "
            "tasks are independent.")


def _failure(result: RunResult) -> str:
    why = f"the specialist {result.agent!r} ended with status {result.status}"
    if result.handoff is not None:
        why += f" (it tried to hand off to {result.handoff.target!r})"
    return f"{why}: {result.reason or 'no reason given'}; the task came back to you"
