"""`Agent`: agents from a table or a template, run in the spell's agent hosts.

    local scout = Agent.new{name = "scout", model = "openai:gpt-4.1", tools = {"web_search"}}
    local r = scout:run("What is Ray?")          -- suspends this coroutine, not the runtime
    print(r.text, r.usage.output_tokens)
    local lead = Agent.template("orchestrator", {name = "lead", tools = {scout}})

A run that is cancelled or fails raises `cancelled: ...` / `failed: ...` (pcall catches it);
`{timeout = s}` bounds a run, `{inputs = {...}}` fills its instructions template.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from llmspell.agents.result import RunResult, RunStatus
from llmspell.agents.spec import AgentSpec, SpecError
from llmspell.agents.templates import TEMPLATES, from_template
from llmspell.runtime.errors import AskTimeout
from llmspell.runtime.messages import new_id
from llmspell.spells.bridges._base import later, now
from llmspell.spells.context import SpellContext
from llmspell.spells.errors import SpellRunFailed
from llmspell.spells.hosts import SpellAgent
from llmspell.spells.values import from_lua, is_lua_table

__all__ = ["exports", "outcome", "result_table", "tool_names"]


def result_table(result: RunResult) -> dict[str, Any]:
    """A run's result as Lua sees it (the conversation left out: it is the agent's)."""
    data = result.model_dump(mode="json", exclude={"messages", "pending", "children"})
    data["children"] = [result_table(c) for c in result.children]
    data["ok"] = result.ok
    return data


def outcome(spell: SpellContext, result: RunResult) -> dict[str, Any]:
    """Record a finished run; its table, or SpellRunFailed when it was cancelled or failed."""
    spell.record(result)
    if result.status in (RunStatus.cancelled, RunStatus.failed):
        spell.failed_runs.append(result)
        raise SpellRunFailed(result)
    return result_table(result)


def tool_names(spell: SpellContext, tools: Any) -> list[str]:
    """A spec's `tools`: names, Tool tables or agents, as names the agent host resolves."""
    names = []
    for item in tools if isinstance(tools, list) else list((tools or {}).values()):
        if isinstance(item, dict) and "__ref" in item:
            obj = spell.deref(item)
            names.append(str(obj.name))
        elif isinstance(item, str):
            if item not in spell.tools and item not in spell.hosts.agents:
                close = spell.tools.suggest(item)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise SpecError(f"unknown tool {item!r}{hint}")
            names.append(item)
        else:
            raise SpecError(f"tools: give names, tools or agents, not {type(item).__name__}")
    return names


def _spec(spell: SpellContext, table: Any, template: str | None = None) -> AgentSpec:
    if not is_lua_table(table):
        raise SpecError("Agent.new takes a table: Agent.new{name = ..., model = ...}")
    fields = from_lua(table)
    if not isinstance(fields, dict):
        raise SpecError("Agent.new takes a table of fields, not a list")
    if "tools" in fields:
        fields["tools"] = tool_names(spell, fields["tools"])
    fields.setdefault("model", spell.options.default_model)
    if template is not None:
        return from_template(template, **fields)
    return AgentSpec.model_validate(fields)


def exports(spell: SpellContext) -> dict[str, Callable[..., Any]]:
    def agent_ref(agent: SpellAgent) -> dict[str, Any]:
        return spell.ref(agent, name=agent.name, kind="agent")

    def agent_new(table: Any) -> dict[str, Any]:
        return agent_ref(spell.hosts.add(_spec(spell, table)))

    def agent_template(template: str, table: Any) -> dict[str, Any]:
        return agent_ref(spell.hosts.add(_spec(spell, table, str(template))))

    async def agent_run(this: Any, input: Any, options: Any) -> dict[str, Any]:
        agent: SpellAgent = spell.deref(this, SpellAgent)
        opts = from_lua(options) or {}
        handle = await spell.hosts.ready(agent)
        run_id = new_id()
        try:
            result = await handle.run(_text(input), inputs=opts.get("inputs"), run_id=run_id,
                                      timeout=float(opts.get("timeout", 600.0)))
        except (asyncio.CancelledError, TimeoutError, AskTimeout):
            # The run goes on in its actor unless told: stop it there too.
            spell.spawn(_cancel(handle.cancel, run_id), f"cancel {run_id}")
            raise
        return outcome(spell, result)

    def agent_as_tool(this: Any, options: Any) -> dict[str, Any]:
        agent: SpellAgent = spell.deref(this, SpellAgent)
        return agent_ref(agent)  # an agent named among an agent's tools is its tool

    return {"agent_new": now(spell, agent_new), "agent_template": now(spell, agent_template),
            "agent_templates": now(spell, lambda: sorted(TEMPLATES)),
            "agent_run": later(spell, agent_run), "agent_as_tool": now(spell, agent_as_tool)}


async def _cancel(cancel: Callable[[str, str], Any], run_id: str) -> None:
    with contextlib.suppress(Exception):
        await cancel(run_id, "cancelled by the spell")


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    import json

    return json.dumps(from_lua(value), ensure_ascii=False, default=str)
