"""Jobs written in Python: a builder that produces the same JobSpec a YAML file does.

    job = (JobBuilder("triage")
           .input("ticket", required=True)
           .agent("router", model="openai:gpt-4o-mini", instructions="Answer billing or tech.")
           .agent("billing", model="openai:gpt-4o-mini")
           .agent("tech", model="openai:gpt-4o-mini")
           .pattern(conditional({"billing": "billing", "tech": "tech"}, router="router"))
           .build())                      # validated: every mistake listed by field path
    result = await llmspell.jobs.run(job, {"ticket": "I was charged twice"})

The pattern functions (sequential, parallel, ...) return the plain data of a spec's `pattern`
section, so a job built here and one read from a file are checked and run by the same code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .spec import JobSpec

__all__ = ["JobBuilder", "conditional", "consensus", "delegation", "loop", "map_reduce",
           "parallel", "pipeline", "saga", "sequential", "stage", "step", "swarm",
           "worker_swarm"]

Step = str | dict[str, Any]


class JobBuilder:
    def __init__(self, name: str, *, description: str = "") -> None:
        self.data: dict[str, Any] = {"name": name, "description": description, "agents": []}

    def _section(self, key: str) -> dict[str, Any]:
        section: dict[str, Any] = self.data.setdefault(key, {})
        return section

    def model(self, default: str) -> JobBuilder:
        """The model of agents that name none ('provider:model')."""
        self._section("models")["default"] = default
        return self

    def provider(self, name: str, **settings: Any) -> JobBuilder:
        """How to reach a provider (base_url, api_key_env, requests_per_minute...)."""
        self._section("models").setdefault("providers", {})[name] = settings
        return self

    def input(self, name: str, **declared: Any) -> JobBuilder:
        """A job input (type, default, required, description)."""
        self._section("inputs")[name] = declared
        return self

    def input_template(self, template: str) -> JobBuilder:
        """The root pattern's input, a template over the inputs (default `{{ input }}`)."""
        self.data["input"] = template
        return self

    def agent(self, name: str, **fields: Any) -> JobBuilder:
        """An agent: AgentSpec's fields, or `template=` and the fields to change."""
        self.data["agents"].append({"name": name, **fields})
        return self

    def pool(self, name: str, tools: Sequence[str], **options: Any) -> JobBuilder:
        """A tool pool (min_replicas, max_replicas, max_concurrency, resources, sandbox...)."""
        self.data.setdefault("pools", []).append({"name": name, "tools": list(tools),
                                                  **options})
        return self

    def host(self, name: str, agents: Sequence[str]) -> JobBuilder:
        """Put these agents together on one host actor."""
        self._section("hosts").setdefault("groups", []).append({"name": name,
                                                                "agents": list(agents)})
        return self

    def pattern(self, pattern: Mapping[str, Any]) -> JobBuilder:
        self.data["pattern"] = dict(pattern)
        return self

    def hook(self, name: str, *, priority: int | None = None, **options: Any) -> JobBuilder:
        entry: dict[str, Any] = {"name": name, "options": options}
        if priority is not None:
            entry["priority"] = priority
        self.data.setdefault("hooks", []).append(entry)
        return self

    def mcp_server(self, name: str, **config: Any) -> JobBuilder:
        self.data.setdefault("mcp_servers", []).append({"name": name, **config})
        return self

    def remote_agent(self, name: str, url: str, **config: Any) -> JobBuilder:
        self.data.setdefault("remote_agents", []).append({"name": name, "url": url, **config})
        return self

    def set(self, section: str, **fields: Any) -> JobBuilder:
        """Any other section: supervision, state, budgets, outputs, sandbox."""
        self._section(section).update(fields)
        return self

    def build(self) -> JobSpec:
        """The validated spec (JobSpecError listing every problem otherwise)."""
        return JobSpec.from_data(self.data, source=f"job {self.data['name']!r} (builder)")


def _named(kind: str, name: str | None, description: str, **fields: Any) -> dict[str, Any]:
    data = {"kind": kind, **{k: v for k, v in fields.items() if v is not None}}
    if name is not None:
        data["name"] = name
    if description:
        data["description"] = description
    return data


def step(*, agent: str | None = None, tool: str | None = None,
         pattern: Mapping[str, Any] | None = None, input: str | None = None,
         output_key: str | None = None, state_keys: Sequence[str] = (),
         name: str | None = None) -> dict[str, Any]:
    """One step with its explicit state: its input template and the key its output goes to."""
    fields = {"agent": agent, "tool": tool, "pattern": dict(pattern) if pattern else None,
              "input": input, "output_key": output_key, "name": name,
              "state_keys": list(state_keys) or None}
    return {k: v for k, v in fields.items() if v is not None}


def sequential(*steps: Step, name: str | None = None, description: str = "") -> dict[str, Any]:
    return _named("sequential", name, description, steps=list(steps))


def parallel(branches: Sequence[Step] | Mapping[str, Step], *, join: str = "all", k: int = 1,
             concurrency: int | None = None, allow_partial: bool = False,
             name: str | None = None, description: str = "") -> dict[str, Any]:
    value = dict(branches) if isinstance(branches, Mapping) else list(branches)
    return _named("parallel", name, description, branches=value, join=join, k=k,
                  concurrency=concurrency, allow_partial=allow_partial)


def conditional(branches: Mapping[str, Step], *, router: str | None = None,
                when: Sequence[tuple[str, str]] = (), default: str | None = None,
                state_keys: Sequence[str] = (), name: str | None = None,
                description: str = "") -> dict[str, Any]:
    """Route by an agent (`router`) or by rules: (`expression`, `branch`), first true wins."""
    return _named("conditional", name, description, branches=dict(branches), router=router,
                  when=[{"if": cond, "then": then} for cond, then in when] or None,
                  default=default, state_keys=list(state_keys) or None)


def loop(body: Step, *, until: str | None = None, max_iterations: int = 10,
         state_keys: Sequence[str] = (), name: str | None = None,
         description: str = "") -> dict[str, Any]:
    return _named("loop", name, description, body=body, until=until,
                  max_iterations=max_iterations, state_keys=list(state_keys) or None)


def map_reduce(mapper: Step | Sequence[Step], *, split: str = "json",
               reduce: Step = "list", concurrency: int | None = None,
               allow_partial: bool = False, name: str | None = None,
               description: str = "") -> dict[str, Any]:
    mappers = list(mapper) if isinstance(mapper, list | tuple) else [mapper]
    return _named("map_reduce", name, description, mapper=mappers, split=split, reduce=reduce,
                  concurrency=concurrency, allow_partial=allow_partial)


def stage(*steps: Step, workers: int | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"steps": list(steps)}
    if workers is not None:
        data["workers"] = workers
    return data


def pipeline(*stages: dict[str, Any] | Step, split: str = "json", queue_size: int = 8,
             allow_partial: bool = False, name: str | None = None,
             description: str = "") -> dict[str, Any]:
    return _named("pipeline", name, description, stages=list(stages), split=split,
                  queue_size=queue_size, allow_partial=allow_partial)


def delegation(manager: str, specialists: Sequence[Step], *, max_depth: int = 3,
               budget: Mapping[str, Any] | None = None, name: str | None = None,
               description: str = "") -> dict[str, Any]:
    return _named("delegation", name, description, manager=manager,
                  specialists=list(specialists), max_depth=max_depth,
                  budget=dict(budget) if budget else None)


def swarm(agents: Sequence[str], *, entry: str | None = None, max_handoffs: int = 10,
          state_keys: Sequence[str] = (), name: str | None = None,
          description: str = "") -> dict[str, Any]:
    return _named("swarm", name, description, agents=list(agents), entry=entry,
                  max_handoffs=max_handoffs, state_keys=list(state_keys) or None)


def worker_swarm(workers: Sequence[str], *, split: str = "json", name: str | None = None,
                 description: str = "") -> dict[str, Any]:
    return _named("worker_swarm", name, description, workers=list(workers), split=split)


def consensus(agents: Sequence[str], strategy: str = "majority", *, rounds: int = 3,
              threshold: float = 1.0, judge: str | None = None,
              weights: Mapping[str, float] | None = None, quorum: int = 1,
              name: str | None = None, description: str = "") -> dict[str, Any]:
    return _named("consensus", name, description, agents=list(agents), strategy=strategy,
                  rounds=rounds, threshold=threshold, judge=judge,
                  weights=dict(weights) if weights else None, quorum=quorum)


def saga(*steps: Step | tuple[Step, Step], name: str | None = None,
         description: str = "") -> dict[str, Any]:
    """Steps, each alone or as (step, compensation)."""
    planned = [{"step": s[0], "compensate": s[1]} if isinstance(s, tuple) else s for s in steps]
    return _named("saga", name, description, steps=planned)
