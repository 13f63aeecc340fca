"""From a JobSpec to the running parts of a job: pools, supervised agent hosts, the pattern.

`plan_hosts` is pure (which agent goes on which host); `Assembly` starts the actors and turns
the spec's pattern tree into llmspell.supervisors objects whose steps are handles on the
agents in those actors. Nothing here knows about the CLI.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from llmspell.actors.agent_actor import AgentHandle, AgentHost, HostSetup
from llmspell.actors.pool import ToolPoolRef
from llmspell.agents.env import AgentEnv
from llmspell.agents.result import RunResult
from llmspell.agents.spec import AgentSpec
from llmspell.llm.registry import ProviderRegistry, ProviderSettings
from llmspell.runtime.hooks import HookRegistry
from llmspell.runtime.runtime import Runtime
from llmspell.runtime.state_client import StateClient
from llmspell.supervisors.actor import ChildStart, SupervisorActor
from llmspell.supervisors.base import Bind, Pattern, Step
from llmspell.supervisors.consensus import Consensus
from llmspell.supervisors.delegation import Delegation
from llmspell.supervisors.hosted import with_its_agents
from llmspell.supervisors.saga import Saga
from llmspell.supervisors.supervisor import Intensity, SupervisorSpec
from llmspell.supervisors.swarm import Swarm, WorkerSwarm
from llmspell.supervisors.workflows import (
    Conditional,
    Loop,
    MapReduce,
    Parallel,
    Pipeline,
    Sequential,
)
from llmspell.supervisors.workflows.pipeline import Stage
from llmspell.tools.base import Tool
from llmspell.tools.builtin import builtin_registry
from llmspell.tools.context import ToolContext
from llmspell.tools.executor import RoutedExecutor
from llmspell.tools.registry import ToolRegistry

from . import patterns as p
from .expressions import Expression
from .spec import JobSpec, JobSpecError

__all__ = ["SPLITTERS", "Assembly", "even_parts", "hook_specs", "plan_hosts"]

SUPERVISOR = "supervisor"
# How long work in flight on a host that died waits for the supervisor's replacement (a restart
# takes well under 2 s here; past this, the cluster is short of room for it). A supervisor that
# gives up on the host ends a hosted run's wait sooner.
RESTART_WAIT_S = 30.0


def plan_hosts(spec: JobSpec) -> dict[str, list[AgentSpec]]:
    """Host name -> the agents it carries: the named groups, then the rest over as few hosts
    as carry at most `agents_per_host` each, evenly, in the order the spec lists them."""
    agents = {a.name: a for a in _with_swarm_handoffs(spec)}
    plan: dict[str, list[AgentSpec]] = {}
    for group in spec.hosts.groups:
        plan[group.name] = [agents.pop(n) for n in group.agents]
    for i, part in enumerate(even_parts(list(agents.values()), spec.hosts.agents_per_host)):
        plan[f"host-{i}"] = part
    return plan


T = TypeVar("T")


def even_parts(items: list[T], most: int) -> list[list[T]]:
    """`items` in order, in as few parts of at most `most` as will do, their sizes differing
    by one at most: 200 by 64 are 50 + 50 + 50 + 50, not 64 + 64 + 64 + 8. A Parallel over
    them spreads a share on each host (llmspell.supervisors.workflows.spread): even shares
    finish together."""
    count = -(-len(items) // most)
    if count == 0:
        return []
    size, extra = divmod(len(items), count)
    bounds = [i * size + min(i, extra) for i in range(count + 1)]
    return [items[a:b] for a, b in itertools.pairwise(bounds)]


def _with_swarm_handoffs(spec: JobSpec) -> list[AgentSpec]:
    """The job's agents; a swarm member that names no handoffs may hand off to every peer."""
    peers: dict[str, set[str]] = {}
    for swarm in _walk(spec.pattern):
        if isinstance(swarm, p.SwarmSpec):
            for name in swarm.agents:
                peers.setdefault(name, set()).update(n for n in swarm.agents if n != name)
    return [a.model_copy(update={"handoffs": sorted(peers[a.name])})
            if a.name in peers and not a.handoffs else a for a in spec.agents]


def _walk(pattern: Any) -> list[Any]:
    if pattern is None:
        return []
    found = [pattern]
    for _, step in p.steps_of(pattern):
        found += _walk(step.pattern)
    return found


def travelling_agents(spec: JobSpec) -> list[str] | None:
    """The agents the root pattern runs, if it can run in an agent host (see Assembly.root):
    None when it holds a step that belongs in the driver (a tool step, a delegation, whose
    manager runs there), names an agent no host of the job carries (a remote one), or lets
    branches fail (`allow_partial`: in the driver a host that dies fails the branches sent to
    it until it is back, and the later ones run; hosted, the whole run would go with it)."""
    if spec.pattern is None:
        return [spec.agents[0].name]
    names: list[str] = []
    for pattern in _walk(spec.pattern):
        if isinstance(pattern, p.DelegationSpec) or getattr(pattern, "allow_partial", False):
            return None
        for _, step in p.steps_of(pattern):
            if step.tool is not None:
                return None
            names += [step.agent] if step.agent is not None else []
        names += _named_agents(pattern)
    hosted = {a.name for a in spec.agents}
    return names if names and all(n in hosted for n in names) else None


def _named_agents(pattern: Any) -> list[str]:
    """The agents a pattern names outside its steps (members, workers, a router, a judge)."""
    names: list[str] = []
    for field_name in ("agents", "workers"):
        names += getattr(pattern, field_name, None) or []
    for field_name in ("router", "judge"):
        name = getattr(pattern, field_name, None)
        names += [name] if name is not None else []
    return names


def hook_specs(spec: JobSpec) -> list[dict[str, Any]]:
    """The spec's hooks, plus the budget hook its token and cost budgets imply (one ledger in
    the job's state, shared by every actor)."""
    hooks = [h.model_dump(exclude_none=True) for h in spec.hooks]
    budget = {k: v for k, v in (("max_tokens", spec.budgets.max_tokens),
                                ("max_cost_usd", spec.budgets.max_cost_usd)) if v is not None}
    if budget:
        hooks.append({"name": "budget", "options": {**budget, "ledger": "state"}})
    return hooks


# -- splitting an input into items (map-reduce, pipelines, worker swarms) -----------------------

def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _paragraphs(text: str) -> list[str]:
    return [part.strip() for part in re.split(r"\n\s*\n", text) if part.strip()]


def _csv_rows(text: str) -> list[str]:
    """Each row of a CSV with a header, as a JSON object (what a model reads best)."""
    return [json.dumps(row) for row in csv.DictReader(io.StringIO(text.strip()))]


SPLITTERS: dict[str, Callable[[str], list[str]] | None] = {
    "json": None, "lines": _lines, "paragraphs": _paragraphs, "csv_rows": _csv_rows}


def _concat(outputs: list[Any]) -> str:
    return "\n\n".join(str(o) for o in outputs)


def _as_list(outputs: list[Any]) -> list[Any]:
    return list(outputs)


# -- assembling ---------------------------------------------------------------------------------

@dataclass
class Assembly:
    """The running parts of one job, owned by the runner that started them."""

    spec: JobSpec
    runtime: Runtime
    job_id: str
    handles: dict[str, Any] = field(default_factory=dict)  # agent handles, remote agents
    pools: dict[str, ToolPoolRef] = field(default_factory=dict)
    supervisor: str = ""
    external_tools: list[Tool] = field(default_factory=list)  # the MCP servers' tools

    async def load_tools(self) -> None:
        """List the MCP servers' tools, then check every tool name the spec uses against the
        tools the job really has (a server's list is only known now)."""
        if self.spec.mcp_servers:
            from llmspell.protocols.mcp_tools import load_mcp_tools

            self.external_tools = list(await load_mcp_tools(self.spec.mcp_servers))
        known = self.registry()
        used = [(f"agents[{i}].tools[{j}]", t) for i, a in enumerate(self.spec.agents)
                for j, t in enumerate(a.tools)]
        used += [(f"pools[{i}].tools[{j}]", t) for i, p in enumerate(self.spec.pools)
                 for j, t in enumerate(p.tools)]
        errors = [{"path": path, "message": f"unknown tool {name!r}"
                   + (f" (did you mean {known.suggest(name)[0]!r}?)" if known.suggest(name)
                      else " (not offered by the job's MCP servers either)")}
                  for path, name in used if name not in known]
        if errors:
            raise JobSpecError(errors, f"job {self.spec.name!r}")

    def registry(self) -> ToolRegistry:
        registry = builtin_registry()
        for tool in self.external_tools:
            registry.register(tool, replace=True)
        return registry

    # -- actors --------------------------------------------------------------------------------

    def providers(self) -> dict[str, ProviderSettings]:
        return {name: ps.settings() for name, ps in self.spec.models.providers.items()}

    def tools_for(self, agents: list[AgentSpec]) -> list[Tool]:
        wanted = {t for a in agents for t in a.tools}
        registry = self.registry()
        return [registry.get(name) for name in sorted(wanted) if name in registry]

    def pool_routes(self) -> dict[str, str]:
        return {tool: ref.address for name, ref in self.pools.items()
                for tool in self.spec_pool(name).tools}

    def spec_pool(self, name: str) -> Any:
        return next(pool for pool in self.spec.pools if pool.name == name)

    def start_pools(self) -> None:
        registry = self.registry()
        for pool in self.spec.pools:
            options: dict[str, Any] = {
                "max_queue": pool.max_queue, "idle_timeout_s": pool.idle_timeout_s,
                "num_cpus": pool.resources.num_cpus, "num_gpus": pool.resources.num_gpus,
                "resources": pool.resources.custom, "placement": pool.placement,
                "resources_fallback": pool.resources_fallback, "sandbox": pool.sandbox,
                "dispatch": pool.dispatch}
            self.pools[pool.name] = self.runtime.spawn_pool(
                pool.name, [registry.get(t) for t in pool.tools], job_id=self.job_id,
                min_replicas=pool.min_replicas, max_replicas=pool.max_replicas,
                max_concurrency=pool.max_concurrency, **options)

    def start_hosts(self) -> None:
        """One supervisor for the job; each host of agents is a child it restarts."""
        plan = plan_hosts(self.spec)
        address = f"{self.job_id}/{SUPERVISOR}"
        where = {a.name: f"{address}.{host}" for host, agents in plan.items() for a in agents}
        sup = self.spec.supervision
        starts = [ChildStart({"name": host, "deadline_s": sup.deadline_s,
                              "standby": sup.standby}, AgentHost,
                             self.host_setup(agents, where),
                             options={"concurrency": 256, "num_cpus": self.spec.hosts.num_cpus})
                  for host, agents in plan.items()]
        spec = SupervisorSpec(name=SUPERVISOR, strategy=sup.strategy,
                              intensity=Intensity(max_restarts=sup.max_restarts,
                                                  within_s=sup.within_s),
                              children=[s.spec for s in starts])
        self.supervisor = self.runtime.spawn(SupervisorActor, SUPERVISOR, spec, starts,
                                             job_id=self.job_id, concurrency=64).address
        wait = RESTART_WAIT_S if sup.retry_in_flight and sup.max_restarts else None
        for agents in plan.values():
            for agent in agents:
                self.handles[agent.name] = AgentHandle(
                    self.runtime, where[agent.name], agent.name, agent.description,
                    restart_wait_s=wait, supervisor=self.supervisor)
        if self.spec.remote_agents:
            from llmspell.protocols.a2a_client import A2AAgent

            for config in self.spec.remote_agents:
                self.handles[config.name] = A2AAgent(config)

    def host_setup(self, agents: list[AgentSpec], where: dict[str, str]) -> HostSetup:
        here = {a.name for a in agents}
        # agents on other hosts, reached by name for handoffs and agents-as-tools
        directory = {name: host for name, host in where.items() if name not in here}
        return HostSetup(agents, providers=dict(self.providers()), tools=self.tools_for(agents),
                         pools=self.pool_routes(), directory=directory,
                         sandbox=self.spec.sandbox, hook_specs=hook_specs(self.spec),
                         default_model=self.spec.models.default)

    async def wait_ready(self, timeout: float = 120.0) -> None:
        await self.runtime.lookup(self.supervisor).wait_ready(timeout=timeout)
        for pool in self.pools.values():
            await pool.wait_ready(timeout=timeout)

    # -- the driver's side ---------------------------------------------------------------------

    def context(self) -> ToolContext:
        """The driver's side of the job: its state, its events, and the spec's hooks (so the
        budget and the rest see the calls made here too, a delegation's manager's)."""
        from llmspell.agents.hooks import SecretRedaction, install

        node, job = self.runtime.node, self.job_id
        sink: list[Callable[[str, dict[str, Any]], None]] = [
            lambda topic, payload: node.publish_nowait(topic, payload, job_id=job)]

        def emit(topic: str, payload: dict[str, Any]) -> None:
            sink[0](topic, payload)

        state = StateClient(node, job_id=job)
        hooks = HookRegistry(emit=emit)
        for hook in install(hooks, hook_specs(self.spec), state=state):
            if isinstance(hook, SecretRedaction):
                sink[0] = hook.wrap_emit(sink[0])
        return ToolContext(job_id=job, chain=(job,), state=state, emit=emit, hooks=hooks,
                           sandbox=self.spec.sandbox)

    def env(self, ctx: ToolContext) -> AgentEnv:
        """Where the agents that run in the driver (a delegation's manager) find their world."""
        from llmspell.actors.pool import PoolExecutor

        assert ctx.hooks is not None
        executor = RoutedExecutor({tool: PoolExecutor(address, self.runtime.node)
                                   for tool, address in self.pool_routes().items()})
        return AgentEnv(providers=ProviderRegistry(self.providers()),
                        tools=ToolRegistry(self.tools_for(self.spec.agents)), executor=executor,
                        hooks=ctx.hooks, emit=ctx.emit, state=ctx.state, job_id=self.job_id,
                        sandbox=self.spec.sandbox, default_model=self.spec.models.default)

    # -- the pattern ---------------------------------------------------------------------------

    def root(self, env: AgentEnv) -> Step:
        if self.spec.pattern is None:  # one agent: a one-step workflow cancels and resumes it
            root: Step = Sequential(self.spec.name, [self.handles[self.spec.agents[0].name]])
        else:
            root = self.pattern(self.spec.pattern, env)
        return self._placed(root)

    def _placed(self, root: Step) -> Step:
        """The root pattern, run in the host of its agents when they all share one (every step
        there is then a local message instead of a Ray call from the driver: see
        llmspell.supervisors.hosted) and `hosts.run_pattern` allows; otherwise in the driver.
        The job's hooks are installed in its hosts too, so they see the same steps."""
        names = travelling_agents(self.spec)
        if self.spec.hosts.run_pattern == "driver" or names is None \
                or not isinstance(root, Pattern):
            return root
        # no time limit of its own: the job's wall time budget cancels it
        placed: Step = with_its_agents(root, [self.handles[n] for n in names], timeout=None)
        return placed

    def step(self, s: p.StepSpec, env: AgentEnv) -> Any:
        if s.agent is not None:
            target: Any = self.handles[s.agent]
        elif s.tool is not None:
            target = self.registry().get(s.tool)
        else:
            assert s.pattern is not None
            target = self.pattern(s.pattern, env)
        if s.input is None and s.output_key is None and not s.state_keys and s.name is None:
            return target
        return Bind(target, input=s.input, output_key=s.output_key, state_keys=s.state_keys,
                    name=s.name)

    def pattern(self, spec: Any, env: AgentEnv) -> Any:
        name = spec.name or spec.kind.replace("_", "-")
        build = getattr(self, f"_{spec.kind}")
        return build(spec, name, env)

    def _steps(self, steps: list[p.StepSpec], env: AgentEnv) -> list[Any]:
        return [self.step(s, env) for s in steps]

    def _agents(self, names: list[str]) -> list[Any]:
        return [self.handles[n] for n in names]

    def _sequential(self, s: p.SequentialSpec, name: str, env: AgentEnv) -> Sequential:
        return Sequential(name, self._steps(s.steps, env), description=s.description)

    def _parallel(self, s: p.ParallelSpec, name: str, env: AgentEnv) -> Parallel:
        branches: Any = ({k: self.step(v, env) for k, v in s.branches.items()}
                         if isinstance(s.branches, dict) else self._steps(s.branches, env))
        return Parallel(name, branches, concurrency=s.concurrency, join=s.join, k=s.k,
                        allow_partial=s.allow_partial, description=s.description,
                        spread=self.spec.hosts.run_pattern == "auto")

    def _conditional(self, s: p.ConditionalSpec, name: str, env: AgentEnv) -> Conditional:
        branches = {k: self.step(v, env) for k, v in s.branches.items()}
        if s.router is not None:
            return Conditional(name, branches, router=self.handles[s.router], default=s.default,
                               description=s.description)
        rules = [(Expression(r.if_, where=f"{name}.when[{i}]"), r.then)
                 for i, r in enumerate(s.when)]
        keys = s.state_keys

        async def predicate(input: str, state: Any, history: list[RunResult]) -> str:
            names = {"input": input, "output": history[-1].output if history else None,
                     "state": await _read(state, keys)}
            for rule, then in rules:
                if rule.truth(names):
                    return then
            return s.default or ""

        return Conditional(name, branches, predicate=predicate, default=s.default,
                           description=s.description)

    def _loop(self, s: p.LoopSpec, name: str, env: AgentEnv) -> Loop:
        until = None
        if s.until is not None:
            check, keys = Expression(s.until, where=f"{name}.until"), s.state_keys

            async def until(result: RunResult, iteration: int, state: Any) -> bool:
                return check.truth({"output": result.output, "text": result.text,
                                    "iteration": iteration, "state": await _read(state, keys)})

        return Loop(name, self.step(s.body, env), until=until, max_iterations=s.max_iterations,
                    description=s.description)

    def _map_reduce(self, s: p.MapReduceSpec, name: str, env: AgentEnv) -> MapReduce:
        reduce: Any = {"concat": _concat, "list": _as_list}.get(s.reduce) if isinstance(
            s.reduce, str) else self.step(s.reduce, env)
        return MapReduce(name, self._steps(s.mapper, env), split=SPLITTERS[s.split],
                         reduce=reduce, concurrency=s.concurrency, prefetch=s.prefetch,
                         allow_partial=s.allow_partial, description=s.description)

    def _pipeline(self, s: p.PipelineSpec, name: str, env: AgentEnv) -> Pipeline:
        stages = [Stage(self._steps(st.steps, env), workers=st.workers) for st in s.stages]
        return Pipeline(name, stages, queue_size=s.queue_size, split=SPLITTERS[s.split],
                        allow_partial=s.allow_partial, description=s.description)

    def _delegation(self, s: p.DelegationSpec, name: str, env: AgentEnv) -> Delegation:
        return Delegation(name, self.spec.agent(s.manager), self._steps(s.specialists, env),
                          max_depth=s.max_depth, budget=s.budget, env=env,
                          description=s.description)

    def _swarm(self, s: p.SwarmSpec, name: str, env: AgentEnv) -> Swarm:
        return Swarm(name, self._agents(s.agents), entry=s.entry, max_handoffs=s.max_handoffs,
                     state_keys=s.state_keys, description=s.description)

    def _worker_swarm(self, s: p.WorkerSwarmSpec, name: str, env: AgentEnv) -> WorkerSwarm:
        split = SPLITTERS[s.split]
        return WorkerSwarm(name, self._agents(s.workers),
                           tasks=split if split is not None else _json_tasks,
                           prefetch=s.prefetch, description=s.description)

    def _consensus(self, s: p.ConsensusSpec, name: str, env: AgentEnv) -> Consensus:
        judge = self.handles[s.judge] if s.judge is not None else None
        return Consensus(name, self._agents(s.agents), s.strategy, weights=s.weights or None,
                         judge=judge, rounds=s.rounds, threshold=s.threshold,
                         candidates=s.candidates, quorum=s.quorum, description=s.description)

    def _saga(self, s: p.SagaSpec, name: str, env: AgentEnv) -> Saga:
        steps = [(self.step(st.step, env), self.step(st.compensate, env))
                 if st.compensate is not None else self.step(st.step, env) for st in s.steps]
        return Saga(name, steps, description=s.description)


def _json_tasks(text: str) -> list[str]:
    value = json.loads(text)
    if not isinstance(value, list):
        raise ValueError(f"the input is JSON {type(value).__name__}, not a list of tasks")
    return [v if isinstance(v, str) else json.dumps(v) for v in value]


async def _read(state: Any, keys: list[str]) -> dict[str, Any]:
    """The named state keys, by their last name (`job:plan` -> `plan`), for expressions."""
    if state is None or not keys:
        return {}
    return {key.rsplit(":", 1)[-1]: await state.get(key) for key in keys}
