"""AgentEnv: what an agent run needs from the world, shared by every agent of a process.

The model layer (providers, prices, rate limiters), the tools and where they run, the hooks,
an event emitter, the job's state and sandbox. An actor builds one for all the agents it hosts;
a test or a script builds one by hand.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from llmspell.llm.client import LLM, Limiters
from llmspell.llm.pricing import PriceTable
from llmspell.llm.registry import ProviderRegistry
from llmspell.llm.registry import default_registry as default_providers
from llmspell.runtime.hooks import HookRegistry
from llmspell.tools.context import Emit, StateAccess
from llmspell.tools.executor import LocalExecutor, ToolExecutor
from llmspell.tools.registry import ToolRegistry
from llmspell.tools.registry import default_registry as default_tools
from llmspell.tools.sandbox import Sandbox

__all__ = ["AgentEnv"]


@dataclass
class AgentEnv:
    providers: ProviderRegistry = field(default_factory=lambda: default_providers)
    tools: ToolRegistry = field(default_factory=default_tools.copy)
    executor: ToolExecutor = field(default_factory=LocalExecutor)
    hooks: HookRegistry = field(default_factory=HookRegistry)
    emit: Emit | None = None
    state: StateAccess | None = None
    job_id: str = ""
    sandbox: Sandbox = field(default_factory=Sandbox)
    prices: PriceTable = field(default_factory=PriceTable)
    limiters: Limiters | None = None
    default_model: str = "scripted:echo"
    max_depth: int = 8

    def __post_init__(self) -> None:
        if self.limiters is None:
            self.limiters = Limiters(self.providers)

    def llm(self, caller: str, tags: dict[str, Any]) -> LLM:
        """A model client whose events carry `tags` (the agent and its branch)."""
        return LLM(registry=self.providers, prices=self.prices, limiters=self.limiters,
                   hooks=self.hooks, job_id=self.job_id, caller=caller,
                   publish=self._tagged(tags))

    def publish(self, topic: str, payload: dict[str, Any]) -> None:
        if self.emit is not None:
            self.emit(topic, payload)

    def _tagged(self, tags: dict[str, Any]) -> Callable[[str, dict[str, Any]], Awaitable[None]]:
        async def publish(topic: str, payload: dict[str, Any]) -> None:
            if self.emit is not None:
                self.emit(topic, {**payload, **tags})
        return publish
