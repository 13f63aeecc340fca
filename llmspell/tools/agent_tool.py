"""AgentTool: an agent (or a workflow, or a pattern: anything that runs on an input) as a tool.

The call chain travels in the context: the wrapped agent runs one level down, so a chain that
comes back to an agent already on it, or grows past the depth limit, stops with RecursionLimit
naming the whole chain. A run that ends without an answer becomes a ToolError the calling model
reads (status and reason), never a silent empty string.
"""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel, Field

from llmspell.tools.base import SideEffects, Tool
from llmspell.tools.context import ToolContext
from llmspell.tools.errors import ToolError

__all__ = ["AgentTool", "Runnable"]


class Runnable(Protocol):
    """Anything an AgentTool can wrap. The result may be a RunResult-like object (with
    `status`, `reason` and `output`) or a plain value."""

    @property
    def name(self) -> str: ...

    async def run(self, input: str, *, ctx: ToolContext | None = None) -> Any: ...


class AgentInput(BaseModel):
    input: str = Field(description="the task or question for the agent, with all the context "
                                   "it needs")


class AgentTool(Tool):
    Args = AgentInput
    category = "agents"
    side_effects = SideEffects.external  # an agent may call tools with effects
    idempotent = False

    def __init__(self, target: Runnable, *, name: str | None = None,
                 description: str | None = None, requires_approval: bool = False,
                 timeout: float | None = 600.0) -> None:
        self.target = target
        self.name = name or target.name  # type: ignore[misc]
        self.description = description or (  # type: ignore[misc]
            getattr(target, "description", "") or f"Ask the agent {target.name!r}.")
        self.requires_approval = requires_approval  # type: ignore[misc]
        self.timeout = timeout  # type: ignore[misc]

    async def run(self, args: Any, ctx: ToolContext) -> Any:
        child = ctx.enter(self.target.name, tool=self.name)
        child.publish("agent.delegate", {"tool": self.name, "target": self.target.name})
        result = await self.target.run(args.input, ctx=child)
        status = str(getattr(result, "status", "completed"))
        if status != "completed":
            raise ToolError(self.name, f"agent {self.target.name!r} ended with status "
                                       f"{status}: {getattr(result, 'reason', '')}")
        if hasattr(result, "output"):
            return result.output
        return result
