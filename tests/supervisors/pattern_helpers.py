"""What the pattern tests share: a team of agents on scripted models, with real job state.

Each agent answers from a ScriptedProvider of its own (so concurrent agents never take each
other's answers); a script item may be a function of the request, to answer by what the agent
was really sent. The job state is a LocalState over SQLite in the test's tmp_path; every event
of the agents and of the patterns is kept in `events`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmspell.agents import Agent, AgentEnv
from llmspell.llm.registry import ProviderRegistry
from llmspell.llm.scripted import ScriptedProvider
from llmspell.llm.types import LLMRequest, ToolCall
from llmspell.runtime.hooks import HookRegistry
from llmspell.runtime.state import SQLiteBackend, StateStore
from llmspell.runtime.state_client import LocalState
from llmspell.tools import ToolContext, ToolRegistry

JOB = "job-patterns"


def call(name: str, cid: str = "c1", **arguments: Any) -> ToolCall:
    return ToolCall(id=cid, name=name, arguments=arguments)


def last_user(request: LLMRequest) -> str:
    return next((m.text for m in reversed(request.messages) if m.role == "user"), "")


def tool_results(request: LLMRequest) -> list[str]:
    """The tool results the request carries since the last user message."""
    out: list[str] = []
    for m in request.messages:
        if m.role == "user":
            out = []
        out += [p.content for p in m.parts if p.kind == "tool_result"]
    return out


class Team:
    def __init__(self, tmp_path: Path | None = None) -> None:
        self.providers = ProviderRegistry()
        self.scripts: dict[str, ScriptedProvider] = {}
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.hooks = HookRegistry(emit=self.emit)
        self.store: StateStore | None = None
        self.state: LocalState | None = None
        if tmp_path is not None:
            self.store = StateStore(SQLiteBackend(str(tmp_path / "state.db")))
            self.state = LocalState(self.store, job_id=JOB)
        self.env = AgentEnv(providers=self.providers, tools=ToolRegistry(), emit=self.emit,
                            hooks=self.hooks, state=self.state, job_id=JOB)

    def emit(self, topic: str, payload: dict[str, Any]) -> None:
        self.events.append((topic, payload))

    def agent(self, name: str, *script: Any, **fields: Any) -> Agent:
        """An agent whose model answers from `script`, in order (then echoes)."""
        provider = ScriptedProvider(script, name=f"p-{name}")
        self.providers.register(f"p-{name}", provider)
        self.scripts[name] = provider
        fields.setdefault("model", f"p-{name}:m")
        fields.setdefault("stream", False)
        return Agent(env=self.env, name=name, **fields)

    def requests(self, name: str) -> list[LLMRequest]:
        return self.scripts[name].requests

    def ctx(self, **fields: Any) -> ToolContext:
        """A caller's context: the team's job, state, events and hooks."""
        return ToolContext(job_id=JOB, state=self.state, emit=self.emit, hooks=self.hooks,
                           **fields)

    def payloads(self, topic: str) -> list[dict[str, Any]]:
        return [p for t, p in self.events if t == topic]

    def topics(self) -> list[str]:
        return [t for t, _ in self.events]

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()
