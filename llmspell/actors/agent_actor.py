"""The Ray shells of agents: `AgentHost` carries many logical agents, `AgentActor` one.

Both only move messages into `HostCore` (llmspell/actors/host.py), where the logic lives, and
own the lifecycle: the conversations are snapshotted on stop (and every `snapshot_every`
messages) and restored after a crash. `spawn_agent` / `spawn_host` start them from a driver and
return handles with `run`, `resume`, `stream`, `status` and `cancel`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from llmspell.actors.base import ActorBase
from llmspell.actors.host import HostCore, RemoteAgent, resolve_agent
from llmspell.agents.delegation import DelegationPlan, DelegationResult
from llmspell.agents.env import AgentEnv
from llmspell.agents.result import RunResult
from llmspell.agents.spec import AgentSpec
from llmspell.llm.registry import ProviderRegistry, ProviderSettings
from llmspell.runtime.events import Event
from llmspell.runtime.hooks import HookRegistry
from llmspell.runtime.messages import Envelope, new_id
from llmspell.runtime.runtime import ActorRef, Runtime
from llmspell.runtime.supervised import ask_supervised
from llmspell.tools.agent_tool import AgentTool
from llmspell.tools.base import Tool
from llmspell.tools.context import ToolContext
from llmspell.tools.executor import RoutedExecutor, ToolExecutor
from llmspell.tools.registry import default_registry as default_tools
from llmspell.tools.sandbox import Sandbox

__all__ = ["AgentActor", "AgentHandle", "AgentHost", "HostSetup", "spawn_agent", "spawn_host"]

HookInstaller = Callable[[HookRegistry], None]
Emit = Callable[[str, dict[str, Any]], None]


class HostSetup:
    """What a host is built from; plain data and picklable objects (it crosses to the actor)."""

    def __init__(self, specs: Sequence[AgentSpec | dict[str, Any]], *,
                 providers: dict[str, ProviderSettings | dict[str, Any]] | None = None,
                 tools: Sequence[Tool] = (), pools: dict[str, str] | None = None,
                 directory: dict[str, str] | None = None, sandbox: Sandbox | None = None,
                 hooks: Sequence[HookInstaller] = (),
                 hook_specs: Sequence[dict[str, Any]] = (), default_model: str = "scripted:echo",
                 max_depth: int = 8) -> None:
        self.specs = [s if isinstance(s, AgentSpec) else AgentSpec.model_validate(s)
                      for s in specs]
        self.providers = {k: v if isinstance(v, ProviderSettings)
                          else ProviderSettings.model_validate(v)
                          for k, v in (providers or {}).items()}
        self.tools = list(tools)
        self.pools = dict(pools or {})  # tool name -> pool router address
        self.directory = dict(directory or {})  # agent name -> host address (other hosts)
        self.sandbox = sandbox or Sandbox()
        self.hooks = list(hooks)  # functions that register hooks (from Python)
        self.hook_specs = list(hook_specs)  # built-in hooks by name (from a job spec)
        self.default_model = default_model
        self.max_depth = max_depth


class AgentHost(ActorBase):
    def setup(self, setup: HostSetup) -> None:
        tools = default_tools.copy()
        for t in setup.tools:
            tools.register(t, replace=True)
        emit, hooks = self._hooks(setup)
        env = AgentEnv(providers=ProviderRegistry(setup.providers), tools=tools,
                       executor=self._executor(setup), hooks=hooks,
                       emit=emit, state=self.state, job_id=self.job_id,
                       sandbox=setup.sandbox, default_model=setup.default_model,
                       max_depth=setup.max_depth)
        self.core = HostCore(self.address, env, directory=setup.directory, remote=self.node,
                             mailbox_capacity=int(self.config.extra.get(
                                 "agent_mailbox_capacity", self.settings.mailbox_capacity)),
                             gap_timeout=self.settings.gap_timeout_s)
        self.core.add_all(setup.specs)

    def _hooks(self, setup: HostSetup) -> tuple[Emit, HookRegistry]:
        """The host's hooks; with secret redaction installed, every event of the host goes
        through it too (events the loop publishes before any hook has run included)."""
        from llmspell.agents.hooks import SecretRedaction, install

        sink: list[Emit] = [self.node.publish_nowait]

        def emit(topic: str, payload: dict[str, Any]) -> None:
            sink[0](topic, payload)  # late-bound: redaction, once installed, wraps the sink

        hooks = HookRegistry(emit=emit)
        for hook in install(hooks, setup.hook_specs, state=self.state):
            if isinstance(hook, SecretRedaction):
                sink[0] = hook.wrap_emit(sink[0])
        for installer in setup.hooks:
            installer(hooks)
        self.hooks = hooks
        self.state.hooks = hooks  # the agents' state writes run the host's state_write hooks
        return emit, hooks

    def _executor(self, setup: HostSetup) -> ToolExecutor:
        if not setup.pools:
            return RoutedExecutor()
        from llmspell.actors.pool import PoolExecutor

        return RoutedExecutor({tool: PoolExecutor(address, self.node)
                               for tool, address in setup.pools.items()})

    async def handle(self, msg: Envelope) -> Any:
        if msg.type == "host.agents":
            return sorted(self.core.slots)
        if msg.type == "host.add":
            specs = msg.payload if isinstance(msg.payload, list) else [msg.payload]
            self.core.add_all([AgentSpec.model_validate(spec) for spec in specs])
            return len(self.core.slots)
        if msg.type == "host.stats":
            return {"agents": len(self.core.slots), "local_messages": self.core.local_messages,
                    "running": sum(len(s.runs) for s in self.core.slots.values())}
        return await self.core.route(msg)

    def snapshot(self) -> Any:
        return self.core.snapshot()

    def restore(self, snapshot: Any) -> None:
        if isinstance(snapshot, dict):
            self.core.restore(snapshot)

    async def on_stop(self) -> None:
        await self.core.close()

    async def on_standby(self) -> None:
        """The agents' providers (SDK imports, clients): most of a first run's cost."""
        await self.core.env.providers.warm(
            model for slot in self.core.slots.values()
            for model in slot.runner.spec.model_config_.chain)


class AgentActor(AgentHost):
    """One agent per actor: its address is the agent's, messages need no agent name."""


class AgentHandle:
    """A driver's handle on one agent, wherever it is hosted."""

    def __init__(self, runtime: Runtime, host: str, name: str, description: str = "", *,
                 restart_wait_s: float | None = None, supervisor: str | None = None) -> None:
        self.runtime = runtime
        self.host = host
        self.name = name
        self.description = description
        # Set when a supervisor restarts the host and work in flight there may run again (a
        # job's hosts, unless its spec says otherwise): a run whose host dies under it is sent
        # again once the host is back, within this many seconds. None: it fails with the cause.
        self.restart_wait_s = restart_wait_s
        self.supervisor = supervisor  # the host's, if known: a wait ends when it gives up

    @property
    def ref(self) -> ActorRef:
        return self.runtime.lookup(self.host)

    @property
    def job_id(self) -> str:
        return self.host.split("/", 1)[0]  # a host's address is "<job>/<name>"

    def __reduce__(self) -> tuple[Any, ...]:
        # Sent to an agent host inside a workflow (llmspell.supervisors.hosted), a handle
        # becomes the agent itself there, or one reached by an ask to its own host.
        return (resolve_agent, (self.host, self.name, self.description))

    async def run(self, input: str, *, inputs: dict[str, Any] | None = None,
                  ctx: ToolContext | None = None, run_id: str | None = None,
                  timeout: float | None = 600.0,
                  delegation: DelegationPlan | None = None) -> RunResult:
        """Run the agent on `input`. With `ctx` (a caller's context, e.g. a workflow step) the
        run joins its call chain, so its events carry the caller's branch. With `delegation`
        the agent manages that delegation for this run (a DelegationResult comes back)."""
        payload: dict[str, Any] = {"agent": self.name, "input": input, "inputs": inputs,
                                   "run_id": run_id}
        if ctx is not None:
            payload["ctx"] = ctx.for_callee(self.name).to_wire()
            timeout = _sooner(timeout, ctx.remaining())
        if delegation is not None:
            payload["delegation"] = delegation.model_dump(mode="json")
        if self.restart_wait_s is None:
            reply = await self.runtime.ask(self.host, "agent.run", payload, timeout=timeout)
        else:  # the agent comes back from its snapshot; its run starts over
            reply = await ask_supervised(
                self.runtime.node, self.host, "agent.run", payload, idempotent=True,
                timeout=self.runtime.settings.ask_timeout_s if timeout is None else timeout,
                restart_wait=self.restart_wait_s, job_id=self.job_id,
                supervisor=self.supervisor)
        if delegation is not None:
            return DelegationResult.model_validate(reply)
        return RunResult.model_validate(reply)

    async def resume(self, run_id: str, decisions: dict[str, bool | dict[str, Any]], *,
                     timeout: float | None = 600.0) -> RunResult:
        reply = await self.runtime.ask(self.host, "agent.resume", {
            "agent": self.name, "run_id": run_id, "decisions": decisions}, timeout=timeout)
        return RunResult.model_validate(reply)

    async def cancel(self, run_id: str, reason: str = "") -> bool:
        """Cancel a run, running or still queued (it then starts cancelled). Sent as a tell:
        the cancels a caller sends its runs on one host together (a cancelled pattern's) leave
        in one batch and land together, so a run queued behind a cancelled one cannot start
        in between. Delivered in order with this process's later messages to the host."""
        await self.runtime.tell(self.host, "agent.cancel", {"run_id": run_id, "reason": reason})
        return True

    async def status(self) -> dict[str, Any]:
        reply: dict[str, Any] = await self.runtime.ask(self.host, "agent.status",
                                                       {"agent": self.name})
        return reply

    async def history(self) -> list[dict[str, Any]]:
        reply: list[dict[str, Any]] = await self.runtime.ask(self.host, "agent.history",
                                                             {"agent": self.name})
        return reply

    async def stream(self, input: str, *, inputs: dict[str, Any] | None = None,
                     timeout: float | None = 600.0) -> AsyncIterator[Event | RunResult]:
        """The run's events as they happen, the sub-agents' and their tools' included (each
        tagged with its branch), then the RunResult."""
        run_id = new_id()
        sub = await self.runtime.subscribe("agent.**", job_id=self.job_id)
        task = asyncio.ensure_future(self.run(input, inputs=inputs, run_id=run_id,
                                              timeout=timeout))
        try:
            while True:
                for event in await sub.get_batch(timeout=0.05):
                    if _below(event, self.name):
                        yield event
                        if event.topic == "agent.run.finished" and \
                                event.payload.get("run_id") == run_id:
                            yield await task
                            return
                if task.done() and task.exception() is not None:
                    task.result()
        finally:
            if not task.done():
                task.cancel()
            await sub.close()

    def as_tool(self, *, name: str | None = None, description: str | None = None) -> AgentTool:
        remote = RemoteAgent(self.runtime, self.host, self.name, self.description)
        return AgentTool(remote, name=name, description=description)


def _sooner(a: float | None, b: float | None) -> float | None:
    return b if a is None else (a if b is None else min(a, b))


def _below(event: Event, agent: str) -> bool:
    payload = event.payload if isinstance(event.payload, dict) else {}
    branch = str(payload.get("branch", ""))
    return branch == agent or branch.startswith(agent + "/")


def spawn_host(runtime: Runtime, name: str, setup: HostSetup, *, job_id: str | None = None,
               max_restarts: int = 0, concurrency: int = 256, snapshot_every: int = 0,
               num_cpus: float = 0) -> list[AgentHandle]:
    """Start a host actor carrying `setup.specs`; one handle per agent."""
    ref = runtime.spawn(AgentHost, name, setup, job_id=job_id, max_restarts=max_restarts,
                        concurrency=concurrency, snapshot_every=snapshot_every,
                        num_cpus=num_cpus)
    return [AgentHandle(runtime, ref.address, s.name, s.description) for s in setup.specs]


def spawn_agent(runtime: Runtime, spec: AgentSpec | dict[str, Any], *,
                job_id: str | None = None, max_restarts: int = 0, **setup: Any) -> AgentHandle:
    """Start one agent in an actor of its own (named after it)."""
    spec = spec if isinstance(spec, AgentSpec) else AgentSpec.model_validate(spec)
    ref = runtime.spawn(AgentActor, spec.name, HostSetup([spec], **setup), job_id=job_id,
                        max_restarts=max_restarts, concurrency=64)
    return AgentHandle(runtime, ref.address, spec.name, spec.description)
