"""`Tool`: list, describe and call the job's tools, and define tools in Lua.

    for _, t in ipairs(Tool.list("math")) do print(t.name) end
    local sum = Tool.call("calculator", {expression = "2 + 2"})
    local shout = Tool.define{name = "shout", description = "Upper-case a text.",
        parameters = {type = "object", properties = {text = {type = "string"}},
                      required = {"text"}},
        fn = function(args) return args.text:upper() end}

`Tool.call` goes through the spell's before/after_tool_call hooks, like an agent's tool call.
A Lua tool runs in the spell's Lua state: called by an agent in an actor, it comes back
through the relay (see relay.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jsonschema
from pydantic import BaseModel, ConfigDict

from llmspell.llm.types import ToolSpec
from llmspell.runtime.hooks import HookPoint
from llmspell.spells.bridges._base import later, now
from llmspell.spells.context import SpellContext
from llmspell.spells.hosts import SpellAgent
from llmspell.spells.relay import relay_call
from llmspell.spells.values import from_lua, is_lua_function, plain
from llmspell.tools.base import Tool
from llmspell.tools.context import ToolContext
from llmspell.tools.errors import ToolArgumentError

__all__ = ["LuaTool", "exports"]

LocalCall = Callable[[dict[str, Any]], Any]


class LuaArgs(BaseModel):
    """A Lua tool's arguments: checked against its JSON schema, kept as they came."""

    model_config = ConfigDict(extra="allow")


class LuaTool(Tool):
    """A tool whose body is a Lua function of the spell. In the driver it calls the function
    directly; pickled into an agent host, it calls it through the spell's relay."""

    lua_name = "a Tool"
    relayed = True

    def __init__(self, name: str, description: str, parameters: dict[str, Any], *,
                 relay: str, namespace: str, local: LocalCall | None = None) -> None:
        jsonschema.Draft202012Validator.check_schema(parameters)
        self.name = name  # type: ignore[misc]
        self.description = description  # type: ignore[misc]
        self.category = "spell"  # type: ignore[misc]
        self.parameters = parameters
        self.relay = relay
        self.namespace = namespace
        self._local = local

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_local": None}  # the Lua function stays in the driver

    def spec(self) -> ToolSpec:
        return ToolSpec(name=self.name, description=self.description,
                        parameters=self.parameters)

    def validate(self, arguments: dict[str, Any] | str | None) -> BaseModel:
        args = super().validate(arguments)  # JSON text and non-objects are refused here
        data = args.model_dump()
        errors = sorted(jsonschema.Draft202012Validator(self.parameters).iter_errors(data),
                        key=lambda e: list(e.absolute_path))
        if errors:
            raise ToolArgumentError(self.name, [
                {"path": ".".join(str(p) for p in e.absolute_path), "message": e.message}
                for e in errors])
        return args

    Args = LuaArgs

    async def run(self, args: Any, ctx: ToolContext) -> Any:
        data = args.model_dump()
        if self._local is not None:
            return await self._local(data)
        return await relay_call(self.relay, self.namespace, "tool", self.name, data,
                                {"branch": ctx.branch, "job_id": ctx.job_id})


def resolve_tool(spell: SpellContext, value: Any) -> Tool:
    """A tool by name, a Tool table, or an agent (as its tool)."""
    if isinstance(value, str):
        if value in spell.tools:
            return spell.tools.get(value)
        agent = spell.hosts.agents.get(value)
        if agent is None:
            spell.tools.get(value)  # raises ToolNotFound with suggestions
        value = agent
    else:
        value = spell.deref(value, (Tool, SpellAgent))
    if isinstance(value, SpellAgent):
        return _AgentAsTool(spell, value)
    assert isinstance(value, Tool)
    return value


class _AgentAsTool(Tool):
    """An agent called with Tool.call: its host is started on first use."""

    Args = LuaArgs

    def __init__(self, spell: SpellContext, agent: SpellAgent) -> None:
        self.name = agent.name  # type: ignore[misc]
        self.description = agent.spec.description  # type: ignore[misc]
        self.spell, self.agent = spell, agent

    async def run(self, args: Any, ctx: ToolContext) -> Any:
        handle = await self.spell.hosts.ready(self.agent)
        return await handle.as_tool().invoke(args.model_dump(), ctx)


async def call_tool(spell: SpellContext, tool: Tool, arguments: Any,
                    ctx: ToolContext | None = None) -> Any:
    """Run a tool under the spell's tool-call hooks (the payload an agent's call has)."""
    ctx = ctx or spell.tool_context()

    async def execute(payload: dict[str, Any], target: str | None) -> Any:
        chosen = resolve_tool(spell, target) if target and target != tool.name else tool
        return await chosen.invoke(payload["arguments"], ctx)

    payload = {"tool": tool.name, "arguments": arguments, "call_id": "", "agent": spell.name,
               "branch": ctx.branch, "idempotent": tool.idempotent}
    return await spell.hooks.call(HookPoint.before_tool_call, HookPoint.after_tool_call,
                                  payload, execute, target=tool.name, job_id=spell.job_id,
                                  actor=spell.name)


def exports(spell: SpellContext) -> dict[str, Callable[..., Any]]:
    def tool_list(category: Any = None) -> list[dict[str, Any]]:
        tools = spell.tools.by_category(str(category)) if category else list(spell.tools)
        return [{"name": t.name, "description": t.description, "category": t.category}
                for t in sorted(tools, key=lambda t: t.name)]

    def tool_get(name: Any) -> dict[str, Any]:
        return resolve_tool(spell, name).describe()

    async def tool_call(name: Any, arguments: Any) -> Any:
        tool = resolve_tool(spell, name)
        return plain(await call_tool(spell, tool, from_lua(arguments)))

    def tool_define(table: Any) -> dict[str, Any]:
        spec = from_lua(table)
        if not isinstance(spec, dict) or not is_lua_function(spec.get("fn")):
            raise ValueError("Tool.define takes {name = ..., description = ..., "
                             "parameters = <JSON schema>, fn = function(args) ... end}")
        fn = spec["fn"]
        parameters = spec.get("parameters") or {"type": "object", "properties": {}}
        if parameters.get("properties") == []:
            parameters["properties"] = {}

        async def local(args: dict[str, Any]) -> Any:
            return from_lua(await spell.scheduler.first(fn, spell.lua.table_from(
                plain(args), recursive=True)))

        tool = LuaTool(str(spec.get("name", "")), str(spec.get("description", "")),
                       parameters, relay=spell.relay.address, namespace=spell.relay.namespace,
                       local=local)
        if not tool.name:
            raise ValueError("Tool.define: give the tool a name")
        spell.tools.register(tool, replace=True)
        return spell.ref(tool, name=tool.name, kind="tool")

    async def serve(key: str, payload: Any, info: dict[str, Any]) -> Any:
        """A Lua tool called by an agent in an actor, through the relay."""
        tool = spell.tools.get(key)
        assert isinstance(tool, LuaTool) and tool._local is not None
        return await tool._local(payload)

    spell.handlers["tool"] = serve
    return {"tool_list": now(spell, tool_list), "tool_get": now(spell, tool_get),
            "tool_call": later(spell, tool_call), "tool_define": now(spell, tool_define)}
