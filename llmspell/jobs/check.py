"""Every mistake in a job spec, found before anything starts.

pydantic checks the shape of the spec; this module adds what needs the whole spec at once:
names that refer to other things (an agent's tools and handoffs, the agents a pattern runs,
pool tools, providers, hooks, host groups), templates that must parse, duplicates. It walks
the raw data leniently, so a spec with a shape error in one place still gets its reference
errors reported everywhere else, all in one list, by field path.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Any

import jinja2
from pydantic import ValidationError

from llmspell.agents.hooks import check as check_hooks
from llmspell.agents.templates import TEMPLATES
from llmspell.llm.registry import ProviderRegistry
from llmspell.runtime.validation import field_path
from llmspell.tools.builtin import builtin_registry

from .expressions import Expression, ExpressionError
from .patterns import PATTERN_KINDS

__all__ = ["check", "known_tools"]

_ENV = jinja2.Environment()
Errors = list[dict[str, str]]


def known_tools() -> set[str]:
    return set(builtin_registry().names())


def check(data: Any) -> Errors:
    """All problems of the raw spec `data`, as {"path", "message"}, in file order."""
    if not isinstance(data, dict):
        return [{"path": "(top level)", "message": "a job spec is a mapping (name, agents, "
                 f"pattern...), not {type(data).__name__}"}]
    errors = _shape(data)
    errors += _References(data).errors
    seen: set[tuple[str, str]] = set()
    unique = []
    for e in errors:
        if (e["path"], e["message"]) not in seen:
            seen.add((e["path"], e["message"]))
            unique.append(e)
    return unique


def _shape(data: dict[str, Any]) -> Errors:
    from .spec import JobSpec

    try:
        JobSpec.model_validate(data)
    except ValidationError as exc:
        return [{"path": _clean(e["loc"]), "message": _message(e)} for e in exc.errors()]
    return []


def _clean(loc: tuple[int | str, ...]) -> str:
    """A pydantic location as the spec writes it: without the union tags pydantic adds
    (`pattern.sequential.steps` -> `pattern.steps`, `branches.list[StepSpec]` -> `branches`)."""
    parts = [p for p in loc if not (isinstance(p, str) and (p in PATTERN_KINDS or "[" in p
                                                            or p.startswith("function-")))]
    return field_path(tuple(parts))


def _message(error: Any) -> str:
    message = str(error["msg"])
    if error["type"] == "extra_forbidden":
        return "unknown field"
    if error["type"] == "string_pattern_mismatch" and "{0,63}" in message:
        return "use a letter, then up to 63 letters, digits, _, . or -"
    if error["type"] == "union_tag_invalid":
        return f"unknown pattern kind; use one of {', '.join(PATTERN_KINDS)}"
    return message.removeprefix("Value error, ")


class _References:
    """Walks the raw spec, recording names that point nowhere."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.errors: Errors = []
        self.tools = known_tools()
        agents = data.get("agents")
        self.agent_list = agents if isinstance(agents, list) else []
        self.agents = [a.get("name") for a in self.agent_list if isinstance(a, dict)]
        self.remote = [r.get("name") for r in _dicts(data.get("remote_agents"))]
        self.mcp_prefixes = [_prefix(m) for m in _dicts(data.get("mcp_servers"))]
        models = data.get("models") if isinstance(data.get("models"), dict) else {}
        providers = models.get("providers") if isinstance(models, dict) else None
        self.providers = set(ProviderRegistry().names()) | set(
            providers if isinstance(providers, dict) else {})
        self._agents()
        self._remote_agents()
        self._pools()
        self._hosts()
        self._hooks()
        self._templates()
        if isinstance(models, dict) and isinstance(models.get("default"), str):
            self._model("models.default", models["default"])
        if isinstance(data.get("pattern"), dict):
            self._pattern("pattern", data["pattern"])
        elif "pattern" not in data and len(self.agents) > 1:
            self.add("pattern", f"the job has {len(self.agents)} agents: give a pattern that "
                     "runs them (or keep one agent)")

    def add(self, path: str, message: str) -> None:
        self.errors.append({"path": path, "message": message})

    def _unknown(self, path: str, kind: str, name: Any, known: set[str] | list[Any]) -> None:
        names = sorted({n for n in known if isinstance(n, str)})
        if not isinstance(name, str):
            return  # a shape error, reported by pydantic
        if name in names or (kind == "agent" and name in self.remote):
            return
        if kind == "tool" and any(name.startswith(p) for p in self.mcp_prefixes):
            return  # an MCP server's tool: checked against its list when the job starts
        hint = difflib.get_close_matches(name, names, n=1)
        self.add(path, f"unknown {kind} {name!r}"
                 + (f" (did you mean {hint[0]!r}?)" if hint else f"; known: {', '.join(names)}"
                    if len(names) <= 12 else ""))

    # -- sections ------------------------------------------------------------------------------

    def _agents(self) -> None:
        seen: set[str] = set()
        for i, agent in enumerate(self.agent_list):
            if not isinstance(agent, dict):
                continue
            name = agent.get("name")
            if isinstance(name, str) and name in seen:
                self.add(f"agents[{i}].name", f"agent {name!r} is declared twice")
            seen.add(name) if isinstance(name, str) else None
            template = agent.get("template")
            if template is not None:
                self._unknown(f"agents[{i}].template", "agent template", template, set(TEMPLATES))
            tools = agent.get("tools")
            for j, tool in enumerate(tools if isinstance(tools, list) else []):
                self._unknown(f"agents[{i}].tools[{j}]", "tool", tool, self.tools)
            handoffs = agent.get("handoffs")
            for j, target in enumerate(handoffs if isinstance(handoffs, list) else []):
                self._unknown(f"agents[{i}].handoffs[{j}]", "agent", target, self.agents)
            model = agent.get("model")
            if isinstance(model, dict):
                model = model.get("model")
            if isinstance(model, str):
                self._model(f"agents[{i}].model", model)

    def _remote_agents(self) -> None:
        for i, name in enumerate(self.remote):
            if isinstance(name, str) and name in self.agents:
                self.add(f"remote_agents[{i}].name", f"{name!r} is also an agent of the job")

    def _model(self, path: str, model: str) -> None:
        provider, sep, name = model.partition(":")
        if not sep or not provider or not name:
            self.add(path, f"model {model!r} must be written 'provider:model', for example "
                     "'openai:gpt-4o-mini'")
            return
        self._unknown(path, "provider", provider, self.providers)

    def _pools(self) -> None:
        self._groups("pools", _dicts(self.data.get("pools")), "tools", "tool", self.tools,
                     "in pool {owner!r}; a tool runs in one pool")

    def _hosts(self) -> None:
        hosts = self.data.get("hosts")
        groups = _dicts(hosts.get("groups")) if isinstance(hosts, dict) else []
        self._groups("hosts.groups", groups, "agents", "agent", self.agents,
                     "on host {owner!r}")

    def _groups(self, path: str, groups: list[dict[str, Any]], key: str, kind: str,
                known: set[str] | list[Any], taken: str) -> None:
        """Members of named groups (a pool's tools, a host's agents): each known, and in one
        group only."""
        owner: dict[str, str] = {}
        for i, group in enumerate(groups):
            members = group.get(key)
            for j, name in enumerate(members if isinstance(members, list) else []):
                where = f"{path}[{i}].{key}[{j}]"
                self._unknown(where, kind, name, known)
                if isinstance(name, str) and name in owner:
                    self.add(where, f"{kind} {name!r} is already "
                             + taken.format(owner=owner[name]))
                owner.setdefault(str(name), str(group.get("name")))

    def _hooks(self) -> None:
        hooks = self.data.get("hooks")
        if isinstance(hooks, list) and all(isinstance(h, dict) for h in hooks):
            self.errors += check_hooks(hooks, path="hooks")

    def _templates(self) -> None:
        if isinstance(self.data.get("input"), str):
            self._template("input", self.data["input"])

    def _template(self, path: str, text: str) -> None:
        try:
            _ENV.parse(text)
        except jinja2.TemplateSyntaxError as exc:
            self.add(path, f"template error at line {exc.lineno}: {exc.message}")

    def _expression(self, path: str, text: str) -> None:
        try:
            Expression(text, where=path)
        except ExpressionError as exc:
            self.add(path, str(exc).removeprefix(f"{path}: "))

    # -- the pattern tree ---------------------------------------------------------------------

    def _pattern(self, path: str, pattern: dict[str, Any]) -> None:
        if isinstance(pattern.get("until"), str):
            self._expression(f"{path}.until", pattern["until"])
        rules = pattern.get("when")
        for i, rule in enumerate(rules if isinstance(rules, list) else []):
            if isinstance(rule, dict) and isinstance(rule.get("if"), str):
                self._expression(f"{path}.when[{i}].if", rule["if"])
        for where, name in _agent_fields(path, pattern):
            self._unknown(where, "agent", name, self.agents)
        for where, step in _step_fields(path, pattern):
            self._step(where, step)

    def _step(self, path: str, step: Any) -> None:
        if isinstance(step, str):
            self._unknown(path, "agent", step, self.agents)
            return
        if not isinstance(step, dict):
            return
        if "agent" in step:
            self._unknown(f"{path}.agent", "agent", step["agent"], self.agents)
        if "tool" in step:
            self._unknown(f"{path}.tool", "tool", step["tool"], self.tools)
        if isinstance(step.get("pattern"), dict):
            self._pattern(f"{path}.pattern", step["pattern"])
        if isinstance(step.get("input"), str):
            self._template(f"{path}.input", step["input"])


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _prefix(server: dict[str, Any]) -> str:
    """The prefix of an MCP server's tool names ("" for bare names: any name may be one)."""
    prefix = server.get("prefix")
    return f"{server.get('name')}__" if prefix is None else str(prefix)


def _agent_fields(path: str, p: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """The agent names a pattern refers to outside its steps."""
    for key in ("manager", "router", "judge", "entry"):
        if key in p and p[key] is not None:
            yield f"{path}.{key}", p[key]
    for key in ("agents", "workers"):
        if isinstance(p.get(key), list):
            yield from ((f"{path}.{key}[{i}]", n) for i, n in enumerate(p[key]))
    if isinstance(p.get("weights"), dict):
        yield from ((f"{path}.weights.{n}", n) for n in p["weights"])


def _step_fields(path: str, p: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """A pattern's steps, wherever its kind keeps them."""
    for key in ("steps", "specialists", "mapper"):
        value = p.get(key)
        if isinstance(value, list):
            for i, step in enumerate(value):
                if p.get("kind") == "saga" and isinstance(step, dict) and "step" in step:
                    yield f"{path}.{key}[{i}].step", step["step"]
                    if step.get("compensate") is not None:
                        yield f"{path}.{key}[{i}].compensate", step["compensate"]
                else:
                    yield f"{path}.{key}[{i}]", step
        elif value is not None and key == "mapper":
            yield f"{path}.mapper", value
    branches = p.get("branches")
    if isinstance(branches, list):
        yield from ((f"{path}.branches[{i}]", s) for i, s in enumerate(branches))
    elif isinstance(branches, dict):
        yield from ((f"{path}.branches.{k}", s) for k, s in branches.items())
    for key in ("body", "reduce"):
        if key in p and p[key] not in ("concat", "list", None):
            yield f"{path}.{key}", p[key]
    stages = p.get("stages")
    for i, stage in enumerate(stages if isinstance(stages, list) else []):
        inner = stage.get("steps") if isinstance(stage, dict) and "steps" in stage else [stage]
        for j, step in enumerate(inner if isinstance(inner, list) else []):
            yield f"{path}.stages[{i}].steps[{j}]", step
