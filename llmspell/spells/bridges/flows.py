"""`Workflow` and `Pattern`: the Python workflows and patterns, built from Lua tables.

    local flow = Workflow.sequential{name = "brief", steps = {
      Workflow.parallel{name = "gather", branches = {web = scout, papers = reader}},
      function(input) return "Summary: " .. input end,   -- a Lua function is a step
      writer}}
    local r = flow:run("Ray actors")

A Lua table only records the recipe; `run` builds the Python pattern (starting agent hosts as
needed) and runs it in the driver with the spell's state, events and hooks, so the
workflow_step, delegation and handoff hooks fire there. Steps are agents, tools (by name or
table), other workflows and patterns, or Lua functions of the input. Predicates and reducers
are Lua functions too (a loop's `until` is a Lua keyword: write `["until"] = fn`, or
`stop_when = fn`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from llmspell.agents.result import RunResult
from llmspell.agents.spec import SpecError
from llmspell.spells.bridges._base import later, now
from llmspell.spells.bridges.agents import outcome, result_table
from llmspell.spells.bridges.tools import _AgentAsTool, resolve_tool
from llmspell.spells.context import SpellContext
from llmspell.spells.hosts import SpellAgent
from llmspell.spells.values import from_lua, is_lua_function, is_lua_table, to_lua
from llmspell.supervisors.base import Pattern
from llmspell.supervisors.consensus import Consensus
from llmspell.supervisors.delegation import Delegation
from llmspell.supervisors.swarm import Swarm
from llmspell.supervisors.workflows import (
    Conditional,
    Loop,
    MapReduce,
    Parallel,
    Pipeline,
    Sequential,
)

__all__ = ["FlowRecipe", "exports"]

KINDS = ("sequential", "parallel", "conditional", "loop", "map_reduce", "pipeline",
         "delegation", "swarm", "consensus")


class FlowRecipe:
    """A workflow or pattern as the spell described it; built into Python when it runs."""

    lua_name = "a Workflow or Pattern"

    def __init__(self, kind: str, spec: dict[str, Any]) -> None:
        if kind not in KINDS:
            raise SpecError(f"unknown workflow {kind!r}")
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise SpecError(f"{kind}: give it a name, e.g. {{name = \"{kind}\", ...}}")
        self.kind = kind
        self.name = name
        self.spec = spec


class Builder:
    """Builds the Python pattern of a recipe; its steps, recursively."""

    def __init__(self, spell: SpellContext) -> None:
        self.spell = spell
        self._functions = 0

    async def build(self, recipe: FlowRecipe) -> Pattern:
        s, name = recipe.spec, recipe.name
        common: dict[str, Any] = {"description": str(s.get("description", ""))}
        match recipe.kind:
            case "sequential":
                return Sequential(name, await self.steps(s.get("steps")), **common)
            case "parallel":
                branches = s.get("branches")
                built: Any = ({k: await self.step(v) for k, v in branches.items()}
                              if isinstance(branches, dict) else await self.steps(branches))
                return Parallel(name, built, concurrency=s.get("concurrency"),
                                join=s.get("join", "all"), k=int(s.get("k", 1)),
                                allow_partial=bool(s.get("allow_partial", False)), **common)
            case "conditional":
                branches = {str(k): await self.step(v)
                            for k, v in (s.get("branches") or {}).items()}
                router = s.get("router")
                return Conditional(name, branches, predicate=self.function(s.get("predicate")),
                                   router=None if router is None else await self.step(router),
                                   default=s.get("default"), **common)
            case "loop":
                return Loop(name, await self.step(s.get("body")),
                            until=self.function(s.get("until", s.get("stop_when")),
                                                result=True),
                            max_iterations=int(s.get("max_iterations", 10)), **common)
            case "map_reduce":
                reduce = s.get("reduce")
                return MapReduce(name, await self.step(s.get("mapper")),
                                 split=self.function(s.get("split")),
                                 reduce=(self.function(reduce) if is_lua_function(reduce)
                                         else None if reduce is None
                                         else await self.step(reduce)),
                                 concurrency=s.get("concurrency"), prefetch=s.get("prefetch"),
                                 allow_partial=bool(s.get("allow_partial", False)), **common)
            case "pipeline":
                return Pipeline(name, await self.steps(s.get("stages")),
                                queue_size=int(s.get("queue_size", 8)),
                                split=self.function(s.get("split")), **common)
            case "delegation":
                manager = self.spell.deref(s.get("manager"), SpellAgent)
                return Delegation(name, manager.spec, await self.steps(s.get("specialists")),
                                  env=self._env(), max_depth=int(s.get("max_depth", 3)),
                                  **common)
            case "swarm":
                return Swarm(name, await self.steps(s.get("agents")), entry=s.get("entry"),
                             max_handoffs=int(s.get("max_handoffs", 10)),
                             state_keys=list(s.get("state_keys") or []), **common)
            case _:  # consensus
                judge = s.get("judge")
                return Consensus(name, await self.steps(s.get("agents")),
                                 s.get("strategy", "majority"), rounds=int(s.get("rounds", 3)),
                                 threshold=float(s.get("threshold", 1.0)),
                                 weights=s.get("weights"),
                                 judge=None if judge is None else await self.step(judge),
                                 quorum=int(s.get("quorum", 1)), **common)

    async def steps(self, items: Any) -> list[Any]:
        if isinstance(items, dict) and not items:
            items = []
        if not isinstance(items, list):
            raise SpecError("give the steps as a list: {step1, step2, ...}")
        return [await self.step(item) for item in items]

    async def step(self, item: Any) -> Any:
        """An agent handle, a pattern, a tool, or a Lua function as a Python step."""
        if is_lua_function(item):
            return self.function(item, name=True)
        if isinstance(item, dict) and "__ref" in item:
            obj = self.spell.deref(item)
            if isinstance(obj, SpellAgent):
                return await self.spell.hosts.ready(obj)
            if isinstance(obj, FlowRecipe):
                return await self.build(obj)
            tool = resolve_tool(self.spell, item)
            return tool
        if isinstance(item, str):
            tool = resolve_tool(self.spell, item)
            if isinstance(tool, _AgentAsTool):
                return await self.spell.hosts.ready(tool.agent)
            return tool
        raise SpecError(f"cannot use a {type(item).__name__} as a step: give an agent, a "
                        "workflow, a tool or a function")

    def function(self, fn: Any, *, result: bool = False, name: bool = False
                 ) -> Callable[..., Awaitable[Any]] | None:
        """A Lua function as an async Python one (its arguments as Lua values, its result as
        Python data). `result`: the first argument is a RunResult (a loop's `until`)."""
        if fn is None:
            return None
        if not is_lua_function(fn):
            raise SpecError("expected a function")
        spell = self.spell

        def lua(value: Any) -> Any:
            return to_lua(spell.lua, result_table(value) if isinstance(value, RunResult)
                          else value)

        if result:
            async def until(result: RunResult, iteration: int) -> Any:
                return from_lua(await spell.scheduler.first(fn, lua(result), iteration))

            return until

        async def call(input: Any) -> Any:
            return from_lua(await spell.scheduler.first(fn, lua(input)))

        if name:
            self._functions += 1
            call.__name__ = f"lua_step_{self._functions}"
        return call

    def _env(self) -> Any:
        """The driver's agent environment (a delegation's manager runs in the driver, where
        the spell's hooks are)."""
        from llmspell.agents.env import AgentEnv
        from llmspell.llm.registry import ProviderRegistry

        env = getattr(self.spell, "_driver_env", None)
        if env is None:
            env = AgentEnv(providers=ProviderRegistry(self.spell.options.providers),
                           tools=self.spell.tools, hooks=self.spell.hooks, emit=self.spell.emit,
                           state=self.spell.state, job_id=self.spell.job_id,
                           sandbox=self.spell.options.sandbox,
                           default_model=self.spell.options.default_model)
            self.spell._driver_env = env  # type: ignore[attr-defined]
        return env


def exports(spell: SpellContext) -> dict[str, Callable[..., Any]]:
    builder = Builder(spell)

    def flow_new(kind: Any, table: Any) -> dict[str, Any]:
        if not is_lua_table(table):
            raise SpecError(f"Workflow.{kind} takes a table: {{name = ..., ...}}")
        recipe = FlowRecipe(str(kind), from_lua(table))
        return spell.ref(recipe, name=recipe.name, kind=recipe.kind)

    async def flow_run(this: Any, input: Any, options: Any) -> dict[str, Any]:
        recipe: FlowRecipe = spell.deref(this, FlowRecipe)
        opts = from_lua(options) or {}
        pattern = await builder.build(recipe)
        text = input if isinstance(input, str) else json.dumps(from_lua(input), default=str)
        result = await pattern.run(text, ctx=spell.tool_context(), inputs=opts.get("inputs"))
        return outcome(spell, result)

    return {"flow_new": now(spell, flow_new), "flow_run": later(spell, flow_run)}
