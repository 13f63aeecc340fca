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
runs in this process (an Agent, whose spec and env are reused with the delegation tools added,
or an AgentSpec), or in its agent host (an AgentHandle): then the delegation travels with the
manager's run as plain data (`DelegationPlan`), the host gives the manager its
`delegate_to_<name>` tools for that run and calls the specialists itself, which must then be
agents in actors too (or delegations whose managers are). Either way the limits, records,
events and hooks are the same (llmspell/agents/delegation.py).

Limits, per level: `max_depth` bounds how deep delegations nest below this manager (1: its
specialists may not delegate further; counted over nested Delegations, across actors too), and
`budget` bounds the calls, tokens and cost of one run's delegations at this level. A refused
call is a tool error the manager reads, a `delegation.refused` event and a line in the
result's `breaches`. before/after_delegation hooks run around every delegated call (in the
manager's process: the driver's hooks, or its host's).
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

from llmspell.actors.agent_actor import AgentHandle
from llmspell.agents.agent import Agent
from llmspell.agents.delegation import (
    DELEGATE_PREFIX,
    Budget,
    DelegationPlan,
    DelegationRecord,
    DelegationResult,
    Level,
    LevelRef,
    SpecialistRef,
    delegate,
    tool_name,
)
from llmspell.agents.env import AgentEnv
from llmspell.agents.result import RunResult, RunStatus
from llmspell.agents.spec import AgentSpec, SpecError
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
from llmspell.tools.registry import ToolRegistry

__all__ = ["DELEGATE_PREFIX", "Budget", "Delegation", "DelegationRecord", "DelegationResult",
           "tool_name"]


@dataclass(eq=False)
class _Level(Level):
    """One running delegation in this task's context (a nested one is one level deeper)."""

    delegation: Delegation | None = None


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


class _ActorManager:
    """A manager agent in an agent host, run with the delegation's plan: the host gives it
    the delegation tools for that run (as a step, so run_watched can cancel it by run id)."""

    def __init__(self, handle: AgentHandle, delegation: Delegation) -> None:
        self.handle = handle
        self.delegation = delegation
        self.name = handle.name
        self.inputs: dict[str, Any] | None = None

    async def run(self, input: str, *, ctx: ToolContext | None = None,
                  run_id: str | None = None) -> RunResult:
        outer = [lv.ref() for lv in _LEVELS.get()]
        return await self.handle.run(input, inputs=self.inputs, ctx=ctx, run_id=run_id,
                                     delegation=self.delegation.plan(outer))

    async def cancel(self, run_id: str, reason: str = "") -> bool:
        return await self.handle.cancel(run_id, reason)


class Delegation(Pattern):
    kind = "delegation"

    def __init__(self, name: str, manager: Agent | AgentSpec | AgentHandle | dict[str, Any],
                 specialists: list[Any], *, max_depth: int = 3, budget: Budget | None = None,
                 env: AgentEnv | None = None, description: str = "") -> None:
        super().__init__(name, description=description)
        if max_depth < 1:
            raise SpecError(f"delegation {name!r}: max_depth must be at least 1")
        self.max_depth = max_depth
        self.budget = budget or Budget()
        self.specialists = self._specialists(specialists)
        self.manager: Agent | _ActorManager
        if isinstance(manager, AgentHandle):
            self.manager = _ActorManager(manager, self)
            self.plan([])  # refuse specialists the manager's host could not reach, now
        else:
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
            raise SpecError(f"delegation {self.name!r}: give the manager as an Agent, an "
                            f"AgentSpec or an agent handle (an agent in an actor), not "
                            f"{manager!r}")
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

    def plan(self, outer: list[LevelRef]) -> DelegationPlan:
        """This delegation as plain data, for a manager in an actor. Its specialists must be
        agents in actors too (or delegations whose managers are): the manager's host calls
        them itself."""
        refs = []
        for step in self.specialists.values():
            target = getattr(step, "target", step)
            if isinstance(target, AgentHandle):
                refs.append(SpecialistRef(name=step.name, agent=target.name, host=target.host,
                                          description=_describe(step)))
            elif isinstance(target, Delegation) and isinstance(target.manager, _ActorManager):
                refs.append(SpecialistRef(
                    name=step.name, agent=target.manager.name, host=target.manager.handle.host,
                    description=_describe(step), plan=target.plan([])))
            else:
                raise SpecError(
                    f"delegation {self.name!r}: its manager runs in an actor, which calls its "
                    f"specialists itself; {step.name!r} is not an agent in an actor (nor a "
                    "delegation whose manager is): give agent handles, or run the manager "
                    "in this process (an Agent)")
        return DelegationPlan(name=self.name, max_depth=self.max_depth, budget=self.budget,
                              specialists=refs, outer=outer)

    # -- the run ------------------------------------------------------------------------------

    async def run(self, input: str, *, ctx: ToolContext | None = None,
                  inputs: dict[str, Any] | None = None) -> RunResult:
        return await super().run(input, ctx=ctx or env_context([self.manager]), inputs=inputs)

    async def _run(self, input: str, ctx: ToolContext, inputs: dict[str, Any]) -> RunResult:
        if isinstance(self.manager, _ActorManager):
            return await self._run_in_actor(self.manager, input, ctx, inputs)
        levels = _LEVELS.get()
        level = _Level(self.name, self.max_depth, self.budget, depth=len(levels) + 1,
                       delegation=self)
        token = _LEVELS.set((*levels, level))
        try:
            managed = await self.manager.run(input, ctx=ctx, inputs=inputs)
        finally:
            _LEVELS.reset(token)
        return self._result(managed, level.results, level.records, level.breaches)

    async def _run_in_actor(self, manager: _ActorManager, input: str, ctx: ToolContext,
                            inputs: dict[str, Any]) -> RunResult:
        """The manager's host runs the delegation: its limits, records and events are kept
        there and come back with the manager's result."""
        manager.inputs = inputs or None
        managed = await run_watched(as_step(manager), input, ctx)
        if isinstance(managed, DelegationResult):
            return self._result(managed, managed.children, managed.delegations,
                                managed.breaches)
        return self._result(managed, [], [], [])  # the run never reached the host

    def _result(self, managed: RunResult, results: list[RunResult],
                records: list[DelegationRecord], breaches: list[str]) -> DelegationResult:
        lead = managed.model_copy(update={"children": []}) if isinstance(
            managed, DelegationResult) else managed
        base = self.result(managed.status, output=managed.output, reason=managed.reason,
                           children=[RunResult(**dict(lead)), *results])
        base.text = managed.text or base.text
        base.cancelled_by = managed.cancelled_by
        return DelegationResult(**dict(base), delegations=records, breaches=breaches)

    async def delegate(self, tool: DelegateTool, input: str, ctx: ToolContext) -> Any:
        """One call of a delegation tool: refused, or run to its end and returned."""
        level = self._level()
        outer = [lv.ref() for lv in _LEVELS.get() if lv is not level]

        async def call(text: str, child: ToolContext) -> RunResult:
            return await self._call(tool, text, child, level)

        return await delegate(level, outer, tool.name, tool.specialist.name, input, ctx, call)

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

    def _level(self) -> _Level:
        """This delegation's innermost running level (a new one if its tool is called outside
        a run of the delegation, so the limits still hold)."""
        levels = _LEVELS.get()
        for level in reversed(levels):
            if level.delegation is self:
                return level
        return _Level(self.name, self.max_depth, self.budget, depth=len(levels) + 1,
                      delegation=self)


def _describe(step: Step) -> str:
    about = str(getattr(step, "description", "") or
                getattr(getattr(step, "target", None), "description", "") or "")
    return (f"Delegate a task to the specialist {step.name!r}"
            f"{': ' + about if about else ''}. Give it the whole task and the context it "
            "needs; its answer comes back to you. Call several specialists at once when the "
            "tasks are independent.")
