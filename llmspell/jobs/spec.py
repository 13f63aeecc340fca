"""JobSpec: a multi-agent job described as data (YAML, JSON, or built in Python).

    spec = JobSpec.from_file("job.yaml")   # every mistake listed by field path, or a spec
    result = await llmspell.jobs.run(spec, {"topic": "Ray"})

The spec is plain data end to end: no API key is ever written in it (a provider names the
environment variable holding its key), so a spec file can be committed, logged and shipped to
a cluster as it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llmspell.agents.spec import AgentSpec
from llmspell.agents.templates import TEMPLATES
from llmspell.llm.registry import ProviderSettings
from llmspell.protocols.a2a_config import RemoteAgentConfig
from llmspell.protocols.mcp_config import MCPServerConfig
from llmspell.runtime.errors import LlmspellError
from llmspell.runtime.messages import new_id
from llmspell.runtime.validation import validation_lines
from llmspell.supervisors.supervisor import Strategy
from llmspell.tools.sandbox import Sandbox

from .patterns import NAME, PatternSpec

__all__ = ["BudgetSpec", "HostsSpec", "InputSpec", "JobSpec", "JobSpecError", "ModelsSpec",
           "OutputSpec", "PoolSpec", "ProviderSpec", "StateSpec", "SupervisionSpec", "new_job_id"]


class JobSpecError(LlmspellError, ValueError):
    """A job spec that cannot run. `errors` holds every problem as {"path", "message"}."""

    def __init__(self, errors: list[dict[str, str]], source: str = "job spec") -> None:
        self.errors = errors
        self.source = source
        lines = "\n".join(f"  {e['path']}: {e['message']}" for e in errors)
        count = f"{len(errors)} error{'s' if len(errors) != 1 else ''}"
        super().__init__(f"{source}: {count}\n{lines}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProviderSpec(_Strict):
    """How to reach one provider. The key is read from the environment variable `api_key_env`
    (default: the provider's usual one, e.g. OPENAI_API_KEY), never from the spec."""

    base_url: str | None = None
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    timeout: float = Field(default=60.0, gt=0)
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    scenario: str | None = None  # the scripted provider's scenario file

    def settings(self) -> ProviderSettings:
        return ProviderSettings(**self.model_dump())


class ModelsSpec(_Strict):
    default: str = "local:echo"  # the model of agents that name none
    providers: dict[str, ProviderSpec] = Field(default_factory=dict)


class InputSpec(_Strict):
    type: Literal["string", "integer", "number", "boolean", "list", "object"] = "string"
    default: Any = None
    required: bool = False
    description: str = ""

    def coerce(self, name: str, raw: Any) -> Any:
        """`raw` (a CLI string, or a value from Python) as this input's type."""
        if not isinstance(raw, str) or self.type == "string":
            value = raw
        elif self.type == "boolean":
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"input {name!r}: {raw!r} is not a boolean (true or false)")
            value = raw.lower() in ("true", "1", "yes")
        elif self.type in ("integer", "number"):
            try:
                value = int(raw) if self.type == "integer" else float(raw)
            except ValueError:
                raise ValueError(f"input {name!r}: {raw!r} is not an {self.type}") from None
        else:
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ValueError(f"input {name!r}: not JSON ({exc.msg})") from None
        expected = _TYPES[self.type]
        if not isinstance(value, expected) or (self.type != "boolean"
                                               and isinstance(value, bool)):
            raise ValueError(f"input {name!r}: expected {self.type}, got "
                             f"{type(value).__name__}")
        return value


_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str, "integer": int, "number": (int, float), "boolean": bool, "list": list,
    "object": dict}


class ResourcesSpec(_Strict):
    num_cpus: float = Field(default=0.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)
    custom: dict[str, float] = Field(default_factory=dict)  # Ray custom resources


class PoolSpec(_Strict):
    """Tools run by a pool of replica actors, scaled between min and max on queue depth."""

    name: str = Field(pattern=NAME)
    tools: list[str] = Field(min_length=1)
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=4, ge=1)
    max_concurrency: int = Field(default=1, ge=1)  # calls one replica runs at once
    max_queue: int = Field(default=256, ge=1)
    idle_timeout_s: float = Field(default=30.0, gt=0)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    placement: Literal["spread", "default"] = "spread"
    # after the nodes offering `resources.custom` are lost, place replicas without them (True)
    # or wait for such a node to come back (False)
    resources_fallback: bool = True
    sandbox: Sandbox | None = None  # this pool's policy; default: the job's
    # "routed": each call goes through the pool's router; "direct": the agents' hosts take
    # leases on replica slots and call the replicas themselves (less CPU per call)
    dispatch: Literal["routed", "direct"] = "routed"

    @field_validator("max_replicas")
    @classmethod
    def _range(cls, value: int, info: Any) -> int:
        low = info.data.get("min_replicas", 0)
        if value < low:
            raise ValueError(f"max_replicas ({value}) is below min_replicas ({low})")
        return value


class HostGroup(_Strict):
    name: str = Field(pattern=NAME)
    agents: list[str] = Field(min_length=1)


class HostsSpec(_Strict):
    """How agents are packed onto host actors: named groups first, the rest by count."""

    agents_per_host: int = Field(default=64, ge=1)
    groups: list[HostGroup] = Field(default_factory=list)
    num_cpus: float = Field(default=0.0, ge=0)
    # Where the root pattern runs. "auto": in the host of its agents when they all share one
    # and nothing in it belongs in the driver (a tool step, a delegation's manager, a remote
    # agent, a pattern that lets branches fail): its steps are then local messages, not a Ray
    # call each. "driver": always in the driver.
    run_pattern: Literal["auto", "driver"] = "auto"


class SupervisionSpec(_Strict):
    strategy: Strategy = Strategy.one_for_one
    max_restarts: int = Field(default=3, ge=0)
    within_s: float = Field(default=60.0, gt=0)
    deadline_s: float | None = Field(default=None, gt=0)  # a host silent this long is hung
    # A spare process per host, set up ahead: a crashed host is replaced without a process
    # start (see ChildSpec.standby); costs one idle process per host and its resources.
    standby: bool = False
    # Work in flight on a host that dies is taken up again once the supervisor has restarted
    # it: the pattern resumes from its checkpoints (its completed steps are not run again) and
    # an agent's run starts over, its tool calls with it. False: that work fails, and the job
    # with it (`llmspell jobs resume` finishes it), for agents whose tools must not run twice.
    retry_in_flight: bool = True


class StateSpec(_Strict):
    """Where the job's state and checkpoints live. `sqlite` survives the driver, so that
    `llmspell jobs resume` can finish a job; `memory` does not."""

    backend: Literal["memory", "sqlite"] = "sqlite"
    path: str | None = None  # default: ~/.llmspell/<namespace>/state.db


class BudgetSpec(_Strict):
    max_tokens: int | None = Field(default=None, ge=1)
    max_cost_usd: float | None = Field(default=None, gt=0)
    wall_time_s: float | None = Field(default=None, gt=0)


class OutputSpec(_Strict):
    file: str | None = None  # written when the job completes (relative to the spec's folder)
    state_key: str | None = None
    format: Literal["text", "json"] = "text"


class HookEntry(_Strict):
    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    priority: int | None = None


class JobSpec(_Strict):
    version: Literal[1] = 1
    name: str = Field(pattern=NAME)
    description: str = ""
    models: ModelsSpec = Field(default_factory=ModelsSpec)
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    # the root pattern's input: a template over the inputs; by default the input named
    # `input`, or the job's only input, or all of them as JSON
    input: str | None = None
    agents: list[AgentSpec] = Field(min_length=1)
    pools: list[PoolSpec] = Field(default_factory=list)
    hosts: HostsSpec = Field(default_factory=HostsSpec)
    pattern: PatternSpec | None = None  # none: the job's only agent answers the input
    supervision: SupervisionSpec = Field(default_factory=SupervisionSpec)
    hooks: list[HookEntry] = Field(default_factory=list)
    state: StateSpec = Field(default_factory=StateSpec)
    budgets: BudgetSpec = Field(default_factory=BudgetSpec)
    outputs: OutputSpec = Field(default_factory=OutputSpec)
    sandbox: Sandbox = Field(default_factory=Sandbox)
    mcp_servers: list[MCPServerConfig] = Field(default_factory=list)  # their tools join the job
    remote_agents: list[RemoteAgentConfig] = Field(default_factory=list)  # A2A agents, by name
    base_dir: str | None = Field(default=None, exclude=True)  # the spec file's folder

    @field_validator("agents", mode="before")
    @classmethod
    def _templates(cls, value: Any) -> Any:
        """An agent may start from a template (research, code...): its fields fill in what the
        entry leaves out."""
        if not isinstance(value, list):
            return value
        return [{**TEMPLATES[a["template"]], **a} if isinstance(a, dict)
                and isinstance(a.get("template"), str) and a["template"] in TEMPLATES else a
                for a in value]

    # -- loading --------------------------------------------------------------------------------

    @classmethod
    def from_data(cls, data: Any, *, source: str = "job spec",
                  base_dir: str | None = None) -> JobSpec:
        """Validate `data` completely: every structural and reference mistake at once."""
        from .check import check

        errors = check(data)
        if errors:
            raise JobSpecError(errors, source)
        try:
            spec = cls.model_validate(data)
        except ValidationError as exc:  # what check() lets through, pydantic still catches
            raise JobSpecError(validation_lines(exc), source) from None
        spec.base_dir = base_dir
        return spec

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "job spec",
                  base_dir: str | None = None) -> JobSpec:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
            raise JobSpecError([{"path": where, "message": f"not valid YAML: "
                                 f"{getattr(exc, 'problem', None) or exc}"}], source) from None
        return cls.from_data(data, source=source, base_dir=base_dir)

    @classmethod
    def from_file(cls, path: str | Path) -> JobSpec:
        """A spec from a .yaml, .yml or .json file; relative paths in it are the file's."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise JobSpecError([{"path": "(file)", "message": f"cannot read: "
                                 f"{exc.strerror or exc}"}], str(path)) from None
        base = str(path.resolve().parent)
        if path.suffix == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise JobSpecError([{"path": f"line {exc.lineno}, column {exc.colno}",
                                     "message": f"not valid JSON: {exc.msg}"}],
                                   str(path)) from None
            return cls.from_data(data, source=str(path), base_dir=base)
        return cls.from_yaml(text, source=str(path), base_dir=base)

    def to_yaml(self) -> str:
        return str(yaml.safe_dump(self.model_dump(mode="json", exclude_defaults=True),
                                  sort_keys=False))

    def using_model(self, model: str) -> JobSpec:
        """The same job with every agent on `model` (e.g. a real one instead of a scenario)."""
        data = self.model_dump(mode="json")
        data["models"]["default"] = model
        for agent in data["agents"]:
            agent["model"] = model
        return JobSpec.from_data(data, source=f"job {self.name!r} on {model}",
                                 base_dir=self.base_dir)

    def using_local_llm(self, base_url: str) -> JobSpec:
        """The same job with its `local` provider pointed at a local LLM server."""
        providers = {**self.models.providers, "local": ProviderSpec(base_url=base_url)}
        models = self.models.model_copy(update={"providers": providers})
        return self.model_copy(update={"models": models})

    # -- reading ------------------------------------------------------------------------------

    def agent(self, name: str) -> AgentSpec:
        for spec in self.agents:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def resolve_inputs(self, given: dict[str, Any]) -> dict[str, Any]:
        """The job's inputs: `given` checked against the declared ones, defaults filled in.
        Raises JobSpecError listing every problem."""
        errors: list[dict[str, str]] = []
        values: dict[str, Any] = {}
        if self.inputs:
            unknown = sorted(set(given) - set(self.inputs))
            errors += [{"path": f"inputs.{k}", "message": "not an input of this job (inputs: "
                        f"{', '.join(self.inputs)})"} for k in unknown]
        for name, declared in self.inputs.items():
            if name in given:
                try:
                    values[name] = declared.coerce(name, given[name])
                except ValueError as exc:
                    errors.append({"path": f"inputs.{name}", "message": str(exc)})
            elif declared.required:
                errors.append({"path": f"inputs.{name}", "message": "required; give it with "
                               f"-i {name}=..."})
            else:
                values[name] = declared.default
        if not self.inputs:
            values = dict(given)
        if errors:
            raise JobSpecError(errors, f"job {self.name!r} inputs")
        return values


def new_job_id(spec: JobSpec) -> str:
    """A fresh id for a run of `spec`: its name and a random suffix."""
    return f"{spec.name}-{new_id()[-10:].lower()}"
