"""Where a spell's agents run: in agent host actors, like a job's.

`Agent.new` only records the spec. When one of the recorded agents first runs, every agent
recorded since the last host started goes into one new host actor (an actor is a process:
agents are packed, not one process each). A later host finds the earlier hosts' agents through
its directory, so an agent can call any agent created before it as a tool.

Lua hooks at the points that fire inside agents, and Lua tools, reach the host through the
spell's relay (see relay.py), installed when the host starts.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from llmspell.actors.agent_actor import AgentHandle, HostSetup, spawn_host
from llmspell.agents.spec import AgentSpec, SpecError
from llmspell.runtime.hooks import HookPoint
from llmspell.spells.relay import RelayedHookSpec, RelayHooks
from llmspell.tools.base import Tool

if TYPE_CHECKING:
    from llmspell.spells.context import SpellContext

__all__ = ["AGENT_POINTS", "AgentHosts", "SpellAgent"]

# The hook points that fire inside an agent's actor (the agent loop, its model client, and its
# state writes).
AGENT_POINTS = frozenset({
    HookPoint.before_agent_run, HookPoint.after_agent_run, HookPoint.before_llm_call,
    HookPoint.after_llm_call, HookPoint.before_tool_call, HookPoint.after_tool_call,
    HookPoint.on_stream_delta, HookPoint.on_error, HookPoint.on_retry,
    HookPoint.before_state_write, HookPoint.after_state_write})


class SpellAgent:
    """An agent of the spell: its spec, and its handle once its host runs."""

    lua_name = "an Agent"

    def __init__(self, spec: AgentSpec) -> None:
        self.spec = spec
        self.handle: AgentHandle | None = None

    @property
    def name(self) -> str:
        return self.spec.name


class AgentHosts:
    def __init__(self, spell: SpellContext) -> None:
        self.spell = spell
        self.agents: dict[str, SpellAgent] = {}
        self.hosted_points: set[str] = set()  # points every running host relays
        self._pending: list[SpellAgent] = []
        self._hosts: list[str] = []
        self._directory: dict[str, str] = {}
        self._lock = asyncio.Lock()
        spell.on_close(self.close)

    def add(self, spec: AgentSpec) -> SpellAgent:
        if spec.name in self.agents:
            raise SpecError(f"an agent named {spec.name!r} already exists in this spell")
        agent = self.agents[spec.name] = SpellAgent(spec)
        self._pending.append(agent)
        return agent

    @property
    def started(self) -> bool:
        return bool(self._hosts)

    async def ready(self, agent: SpellAgent) -> AgentHandle:
        """The agent's handle, starting its host if it has none yet."""
        if agent.handle is None:
            # Shielded: a caller timing out must not leave a host half started.
            await asyncio.shield(self.start_pending())
        assert agent.handle is not None
        return agent.handle

    async def start_pending(self) -> None:
        async with self._lock:
            if not self._pending:
                return
            batch, self._pending = self._pending, []
            relayed = self._relayed_hooks()
            tools = self._tools(batch)
            if relayed.hooks or any(getattr(t, "relayed", False) for t in tools):
                await self.spell.relay.start()
            providers: dict[str, Any] = dict(self.spell.options.providers)
            setup = HostSetup([a.spec for a in batch], providers=providers,
                              tools=tools, directory=dict(self._directory),
                              sandbox=self.spell.options.sandbox,
                              hooks=[relayed] if relayed.hooks else [],
                              hook_specs=self.spell.options.hook_specs,
                              default_model=self.spell.options.default_model)
            name = f"spell-agents-{len(self._hosts) + 1}"
            handles = spawn_host(self.spell.runtime, name, setup, job_id=self.spell.job_id)
            await handles[0].ref.wait_ready()
            self._hosts.append(handles[0].host)
            points = {spec.point for spec in relayed.hooks}
            self.hosted_points = points if len(self._hosts) == 1 else \
                self.hosted_points & points
            for agent, handle in zip(batch, handles, strict=True):
                agent.handle = handle
                self._directory[agent.name] = handle.host
            self.spell.log.info("spell agents started", host=handles[0].host,
                                agents=[a.name for a in batch], relayed_hooks=len(relayed.hooks))

    def _relayed_hooks(self) -> RelayHooks:
        from llmspell.spells.bridges.hooks import LuaHook

        relayed = RelayHooks(self.spell.relay.address, self.spell.relay.namespace)
        for point in sorted(AGENT_POINTS):
            for reg in self.spell.hooks.hooks(point):
                if isinstance(reg.fn, LuaHook):
                    relayed.hooks.append(RelayedHookSpec(str(point), reg.priority,
                                                         reg.timeout, reg.fn.number, reg.name))
        return relayed

    def _tools(self, batch: list[SpellAgent]) -> list[Tool]:
        """The tools the batch names that are not agents (agents are found by name)."""
        tools: dict[str, Tool] = {}
        for agent in batch:
            for name in agent.spec.tools:
                if name not in self.agents and name in self.spell.tools:
                    tools[name] = self.spell.tools.get(name)
        return list(tools.values())

    async def close(self) -> None:
        """Stop the hosts (their agents' conversations are snapshotted, their events sent)."""
        for address in reversed(self._hosts):
            with contextlib.suppress(Exception):
                await self.spell.runtime.lookup(address).stop("the spell has ended")
        self._hosts.clear()
