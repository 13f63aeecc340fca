"""Agent: the user-facing object. A spec plus the runner that owns its conversation::

    researcher = Agent(name="researcher", instructions="Find facts.", model="openai:gpt-4.1",
                       tools=["web_fetch"])
    result = await researcher.run("What is Ray?")
    manager = Agent(name="manager", tools=[researcher.as_tool()])

Runs of one agent are serialised: one writer per conversation, never interleaved.
"""

from __future__ import annotations

import asyncio
from typing import Any

from llmspell.agents.env import AgentEnv
from llmspell.agents.loop import AgentRunner, Decision
from llmspell.agents.result import PendingApproval, RunResult
from llmspell.agents.spec import AgentSpec
from llmspell.tools.agent_tool import AgentTool
from llmspell.tools.base import Tool
from llmspell.tools.context import ToolContext

__all__ = ["Agent"]


class Agent:
    def __init__(self, spec: AgentSpec | None = None, *, env: AgentEnv | None = None,
                 **fields: Any) -> None:
        tools = fields.pop("tools", None)
        self.env = env or AgentEnv()
        if tools is not None:  # Tool objects are registered here; names are looked up
            names = []
            for t in tools:
                if isinstance(t, Tool):
                    self.env.tools.register(t, replace=True)
                    names.append(t.name)
                else:
                    names.append(str(t))
            fields["tools"] = names
        self.spec = spec or AgentSpec(**fields)
        self._runner: AgentRunner | None = None
        self._lock = asyncio.Lock()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def description(self) -> str:
        return self.spec.description

    @property
    def runner(self) -> AgentRunner:
        if self._runner is None:
            self._runner = AgentRunner(self.spec, self.env)
        return self._runner

    async def run(self, input: str, *, ctx: ToolContext | None = None,
                  inputs: dict[str, Any] | None = None) -> RunResult:
        async with self._lock:
            return await self.runner.run(input, ctx=ctx, inputs=inputs)

    async def resume(self, pending: PendingApproval, decisions: dict[str, Decision | bool]
                     ) -> RunResult:
        async with self._lock:
            return await self.runner.resume(pending, decisions)

    def as_tool(self, *, name: str | None = None, description: str | None = None,
                requires_approval: bool = False) -> AgentTool:
        return AgentTool(self, name=name, description=description,
                         requires_approval=requires_approval)

    def __repr__(self) -> str:
        return f"<Agent {self.name}>"
