"""The `pattern` section of a job spec: a tree of workflows and patterns over named agents.

Each kind mirrors one class of llmspell.supervisors (Sequential, Parallel, ..., Saga) with the
options a file can hold; what Python passes as a function (a predicate, a split, a reduce) is
written here as a small expression or a named splitter. A step is an agent's name, or a table
naming an agent, a tool or a nested pattern, with its explicit state keys::

    pattern:
      kind: sequential
      steps:
        - researcher                      # an agent, fed the previous step's output
        - agent: writer
          input: "Write up: {{ previous }}"
          output_key: job:draft
        - pattern: {kind: consensus, agents: [judge-a, judge-b, judge-c]}
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmspell.agents.delegation import Budget

__all__ = ["PATTERN_KINDS", "SPLITS", "PatternSpec", "StepSpec", "steps_of"]

SPLITS = ("json", "lines", "paragraphs", "csv_rows")
Split = Literal["json", "lines", "paragraphs", "csv_rows"]
NAME = r"^[a-zA-Z][a-zA-Z0-9_.-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StepSpec(_Strict):
    """One step: exactly one of `agent`, `tool`, `pattern`."""

    agent: str | None = None
    tool: str | None = None
    pattern: PatternSpec | None = None
    name: str | None = Field(default=None, pattern=NAME)
    input: str | None = None  # a Jinja template over input, inputs, previous and state
    output_key: str | None = None
    state_keys: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, value: Any) -> Any:
        return {"agent": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_target(self) -> StepSpec:
        given = [k for k in ("agent", "tool", "pattern") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a step names exactly one of agent, tool or pattern"
                             + (f" (got {', '.join(given)})" if given else ""))
        return self


class _Pattern(_Strict):
    name: str | None = Field(default=None, pattern=NAME)  # default: the kind
    description: str = ""


class SequentialSpec(_Pattern):
    kind: Literal["sequential"]
    steps: list[StepSpec] = Field(min_length=1)


class ParallelSpec(_Pattern):
    kind: Literal["parallel"]
    branches: list[StepSpec] | dict[str, StepSpec] = Field(min_length=1)
    concurrency: int | None = Field(default=None, ge=1)
    join: Literal["all", "any", "first_k"] = "all"
    k: int = Field(default=1, ge=1)
    allow_partial: bool = False


class WhenRule(_Strict):
    if_: str = Field(alias="if")  # an expression over input, output, inputs and state
    then: str


class ConditionalSpec(_Pattern):
    kind: Literal["conditional"]
    branches: dict[str, StepSpec] = Field(min_length=1)
    router: str | None = None  # an agent that answers with a branch name
    when: list[WhenRule] = Field(default_factory=list)  # or rules, first true wins
    default: str | None = None
    state_keys: list[str] = Field(default_factory=list)  # read for the `when` expressions

    @model_validator(mode="after")
    def _router_or_rules(self) -> ConditionalSpec:
        if (self.router is None) == (not self.when):
            raise ValueError("give either a router agent or `when` rules")
        names = set(self.branches)
        for target in [r.then for r in self.when] + [self.default or next(iter(names))]:
            if target not in names:
                raise ValueError(f"{target!r} is not a branch ({', '.join(sorted(names))})")
        return self


class LoopSpec(_Pattern):
    kind: Literal["loop"]
    body: StepSpec
    until: str | None = None  # an expression over output, iteration and state
    max_iterations: int = Field(default=10, ge=1, le=10_000)
    state_keys: list[str] = Field(default_factory=list)


class MapReduceSpec(_Pattern):
    kind: Literal["map_reduce"]
    mapper: list[StepSpec] = Field(min_length=1)  # one or more agents doing the same work
    split: Split = "json"
    reduce: StepSpec | Literal["concat", "list"] = "list"
    concurrency: int | None = Field(default=None, ge=1)
    allow_partial: bool = False
    prefetch: int | None = Field(default=None, ge=0)  # None: 1 for agents (see MapReduce)

    @model_validator(mode="before")
    @classmethod
    def _one_mapper(cls, value: Any) -> Any:
        if isinstance(value, dict) and not isinstance(value.get("mapper"), list | None):
            value = {**value, "mapper": [value["mapper"]]}
        return value


class StageSpec(_Strict):
    steps: list[StepSpec] = Field(min_length=1)
    workers: int | None = Field(default=None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _one_step(cls, value: Any) -> Any:
        if isinstance(value, str) or (isinstance(value, dict) and "steps" not in value):
            return {"steps": [value]}
        return value


class PipelineSpec(_Pattern):
    kind: Literal["pipeline"]
    stages: list[StageSpec] = Field(min_length=1)
    split: Split = "json"
    queue_size: int = Field(default=8, ge=1)
    allow_partial: bool = False


class DelegationSpec(_Pattern):
    kind: Literal["delegation"]
    manager: str  # an agent of the job; it runs in the job's driver and gets the tools
    specialists: list[StepSpec] = Field(min_length=1)
    max_depth: int = Field(default=3, ge=1)
    budget: Budget = Field(default_factory=Budget)


class SwarmSpec(_Pattern):
    kind: Literal["swarm"]
    agents: list[str] = Field(min_length=1)
    entry: str | None = None
    max_handoffs: int = Field(default=10, ge=1)
    state_keys: list[str] = Field(default_factory=list)


class WorkerSwarmSpec(_Pattern):
    kind: Literal["worker_swarm"]
    workers: list[str] = Field(min_length=1)
    split: Split = "json"
    prefetch: int | None = Field(default=None, ge=0)  # None: 1 for agents (see WorkerSwarm)


class ConsensusSpec(_Pattern):
    kind: Literal["consensus"]
    agents: list[str] = Field(min_length=1)
    strategy: Literal["majority", "weighted", "judge", "ranked_choice", "debate"] = "majority"
    weights: dict[str, float] = Field(default_factory=dict)
    judge: str | None = None
    rounds: int = Field(default=3, ge=1)
    threshold: float = Field(default=1.0, gt=0, le=1)
    candidates: list[str] = Field(default_factory=list)
    quorum: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _judge(self) -> ConsensusSpec:
        if (self.strategy == "judge") != (self.judge is not None):
            raise ValueError("the judge strategy needs a `judge` agent, and only it takes one")
        return self


class SagaStepSpec(_Strict):
    step: StepSpec
    compensate: StepSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare(cls, value: Any) -> Any:
        if isinstance(value, str) or (isinstance(value, dict) and "step" not in value):
            return {"step": value}
        return value


class SagaSpec(_Pattern):
    kind: Literal["saga"]
    steps: list[SagaStepSpec] = Field(min_length=1)


PatternSpec = Annotated[
    SequentialSpec | ParallelSpec | ConditionalSpec | LoopSpec | MapReduceSpec | PipelineSpec
    | DelegationSpec | SwarmSpec | WorkerSwarmSpec | ConsensusSpec | SagaSpec,
    Field(discriminator="kind")]

PATTERN_KINDS = ("sequential", "parallel", "conditional", "loop", "map_reduce", "pipeline",
                 "delegation", "swarm", "worker_swarm", "consensus", "saga")

StepSpec.model_rebuild()


def steps_of(pattern: Any) -> list[tuple[str, StepSpec]]:
    """The steps a pattern holds directly, each with its path below the pattern."""
    if isinstance(pattern, SequentialSpec):
        return [(f"steps[{i}]", s) for i, s in enumerate(pattern.steps)]
    if isinstance(pattern, ParallelSpec):
        if isinstance(pattern.branches, dict):
            return [(f"branches.{k}", s) for k, s in pattern.branches.items()]
        return [(f"branches[{i}]", s) for i, s in enumerate(pattern.branches)]
    if isinstance(pattern, ConditionalSpec):
        return [(f"branches.{k}", s) for k, s in pattern.branches.items()]
    if isinstance(pattern, LoopSpec):
        return [("body", pattern.body)]
    if isinstance(pattern, MapReduceSpec):
        found = [(f"mapper[{i}]", s) for i, s in enumerate(pattern.mapper)]
        return found + ([("reduce", pattern.reduce)] if isinstance(pattern.reduce, StepSpec)
                        else [])
    if isinstance(pattern, PipelineSpec):
        return [(f"stages[{i}].steps[{j}]", s) for i, st in enumerate(pattern.stages)
                for j, s in enumerate(st.steps)]
    if isinstance(pattern, DelegationSpec):
        return [(f"specialists[{i}]", s) for i, s in enumerate(pattern.specialists)]
    if isinstance(pattern, SagaSpec):
        return [(f"steps[{i}].{part}", s) for i, st in enumerate(pattern.steps)
                for part, s in (("step", st.step), ("compensate", st.compensate))
                if s is not None]
    return []
