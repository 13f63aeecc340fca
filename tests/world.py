"""An agent's world for tests without Ray: a scripted model, a tool registry, hooks, and every
event emitted (hook reports included: the registry emits to the same list)."""

from __future__ import annotations

from typing import Any

from llmspell.agents import Agent, AgentEnv
from llmspell.agents.hooks import SecretRedaction
from llmspell.llm.pricing import PriceTable
from llmspell.llm.registry import ProviderRegistry
from llmspell.llm.scripted import ScriptedProvider
from llmspell.llm.types import ToolCall
from llmspell.runtime.hooks import HookRegistry
from llmspell.tools import ToolRegistry, tool


def call(name: str, cid: str = "c1", **arguments: Any) -> ToolCall:
    return ToolCall(id=cid, name=name, arguments=arguments)


class World:
    def __init__(self, *script: Any, job_id: str = "job-1", prices: PriceTable | None = None,
                 redaction: SecretRedaction | None = None) -> None:
        self.provider = ScriptedProvider(script)
        providers = ProviderRegistry()
        providers.register("scripted", self.provider)
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.tools = ToolRegistry()
        emit = self.emit if redaction is None else redaction.wrap_emit(self.emit)
        self.hooks = HookRegistry(emit=emit)
        self.env = AgentEnv(providers=providers, tools=self.tools, hooks=self.hooks,
                            emit=emit, job_id=job_id, prices=prices or PriceTable())

    def emit(self, topic: str, payload: dict[str, Any]) -> None:
        self.events.append((topic, payload))

    def agent(self, **fields: Any) -> Agent:
        fields.setdefault("name", "a")
        fields.setdefault("model", "scripted:m")
        fields.setdefault("stream", False)
        return Agent(env=self.env, **fields)

    def topics(self) -> list[str]:
        return [t for t, _ in self.events]

    def payloads(self, topic: str) -> list[dict[str, Any]]:
        return [p for t, p in self.events if t == topic]

    def tool_results(self, request_index: int) -> list[Any]:
        msgs = self.provider.requests[request_index].messages
        return [p for m in msgs for p in m.parts if p.kind == "tool_result"]


@tool
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first
        b: the second
    """
    return a + b
