"""Built-in tools: the job's state (state_read, state_write).

Agents of one job share notes through its state: what a triage agent writes under `job:risk`
a reviewer it hands off to reads (and a swarm carries the keys it names along with the
handoff). Only the `job:` scope is open to the model: `app:` outlives the job and `agent:`
keys are each agent's own.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from llmspell.tools.base import SideEffects, Tool
from llmspell.tools.context import ToolContext
from llmspell.tools.errors import ToolError

from .utility import builtin_tool

__all__ = ["TOOLS"]

Key = Annotated[str, Field(pattern=r"^job:[A-Za-z0-9_.:-]{1,128}$",
                           description="a job-scoped key, e.g. job:findings")]


def _state(ctx: ToolContext, tool: str) -> Any:
    if ctx.state is None:
        raise ToolError(tool, "this call has no job state (run it inside a job)")
    return ctx.state


@builtin_tool(name="state_read", category="state")
async def state_read(key: Key, ctx: ToolContext) -> Any:
    """Read a value the job's agents share (null when nothing is stored under the key).

    Args:
        key: the job-scoped key, e.g. job:findings
    """
    return await _state(ctx, "state_read").get(key)


@builtin_tool(name="state_write", category="state", side_effects=SideEffects.local)
async def state_write(key: Key, value: Any, ctx: ToolContext) -> str:
    """Store a value (text, number, list or object) for the job's other agents to read.

    Args:
        key: the job-scoped key, e.g. job:findings
        value: what to store
    """
    await _state(ctx, "state_write").set(key, value)
    return f"stored {key}"


TOOLS: list[Tool] = [state_read, state_write]
