"""Scenario files for the local LLM server: ordered rules that decide what each request gets.

Kept free of HTTP so a scenario can be validated, matched and written (by record mode) in plain
Python. A scenario is YAML or JSON:

    latency_ms: 0            # before each response (a rule may override)
    chunk_latency_ms: 0      # between streamed chunks
    rules:
      - name: weather
        match: {contains: weather, tools: [get_weather], api: [chat, responses]}
        times: 1             # fires at most once, then later rules get the request
        reply:
          tool_calls:
            - {name: get_weather, arguments: {city: Paris}}
      - match: {after_tool_result: true}
        reply: "It is sunny in Paris."      # a string is short for {text: ...}
      - match: {regex: "^flaky"}
        fault: {kind: rate_limit, retry_after: 0.5}

Rules are tried in order; the first whose `match` holds and whose `times` is not used up answers.
With no matching rule the server echoes the last user message.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llmspell.runtime.validation import field_path

Api = Literal["chat", "responses", "messages"]
FaultKind = Literal["rate_limit", "server_error", "drop", "malformed"]


class ScenarioError(ValueError):
    """A scenario that cannot be used; the message names the file and the field path."""


class _Strict(BaseModel):
    """Unknown keys are errors: a typo in a scenario must not silently match everything."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ToolCallReply(_Strict):
    name: str = Field(min_length=1)
    # An object normally; a string is sent as the raw arguments text (say, to test a client
    # against arguments that are not valid JSON).
    arguments: dict[str, Any] | str = Field(default_factory=dict)
    # Record mode keeps the upstream's id so a replay answers with the very same calls.
    id: str | None = None


class Usage(_Strict):
    """Token counts put on the wire as given, in each API's own meaning (Anthropic's
    input_tokens excludes cache reads; OpenAI's prompt_tokens includes them). Unset input or
    output counts are estimated from the request and the reply."""

    input_tokens: int | None = Field(default=None, ge=0)
    output_tokens: int | None = Field(default=None, ge=0)
    cached_tokens: int = Field(default=0, ge=0)
    cache_creation_tokens: int = Field(default=0, ge=0)


_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Reply(_Strict):
    """What the model says: text, tool calls (several = parallel calls), or a JSON value for
    structured output (sent as the text, or as the forced tool's input on Anthropic)."""

    text: str | None = None
    tool_calls: list[ToolCallReply] = Field(default_factory=list)
    json_value: Any = Field(default=None, alias="json")
    usage: Usage | None = None

    def filled(self, groups: dict[str, str]) -> Reply:
        """The reply with `${name}` in its text and string tool arguments replaced by the
        named groups of the rule's regex (so a reply can quote a URL or a name it was given)."""
        if not groups:
            return self

        def fill(value: Any) -> Any:
            if isinstance(value, str):
                return _PLACEHOLDER.sub(lambda m: groups.get(m.group(1), m.group(0)), value)
            if isinstance(value, dict):
                return {k: fill(v) for k, v in value.items()}
            if isinstance(value, list):
                return [fill(v) for v in value]
            return value

        return Reply.model_validate(fill(self.model_dump(by_alias=True, exclude_none=True)))

    @model_validator(mode="after")
    def _has_content(self) -> Reply:
        if self.text is None and not self.tool_calls and self.json_value is None:
            raise ValueError("a reply needs text, tool_calls or json")
        if self.text is not None and self.json_value is not None:
            raise ValueError("a reply gives text or json, not both")
        return self


class Fault(_Strict):
    """A failure to inject instead of an answer."""

    kind: FaultKind
    retry_after: float = Field(default=1.0, ge=0,
                               description="rate_limit: seconds, sent as Retry-After")
    status: int | None = Field(default=None, ge=400, le=599,
                               description="rate_limit: 429; server_error: 500 unless set")
    after_chunks: int = Field(default=2, ge=0,
                              description="drop, streams: events sent before the cut")
    message: str | None = None

    @model_validator(mode="after")
    def _status_fits_kind(self) -> Fault:
        if self.status is not None and self.kind in ("drop", "malformed"):
            raise ValueError(f"status does not apply to a {self.kind} fault")
        return self

    @property
    def http_status(self) -> int:
        if self.status is not None:
            return self.status
        return 429 if self.kind == "rate_limit" else 500


class Match(_Strict):
    """Conditions that must all hold; an empty match matches every request."""

    equals: str | None = Field(default=None, description="the last user message, exactly")
    contains: str | None = Field(default=None, description="a substring of the last user message")
    regex: str | None = Field(default=None, description="re.search on the last user message")
    tools: list[str] | None = Field(default=None, description="every one of these tools is offered")
    model: str | None = Field(default=None, description="re.search on the requested model")
    api: list[Api] | None = None
    after_tool_result: bool | None = Field(
        default=None,
        description="the conversation ends with a tool result (the model's next turn)")
    structured: bool | None = Field(default=None,
                                    description="the request asks for JSON schema output")

    @field_validator("api", mode="before")
    @classmethod
    def _one_api_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("regex", "model")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    def matches(self, prompt: Prompt) -> bool:
        last = prompt.last_user
        checks = (
            self.equals is None or last == self.equals,
            self.contains is None or self.contains in last,
            self.regex is None or re.search(self.regex, last) is not None,
            self.tools is None or set(self.tools) <= set(prompt.tools),
            self.model is None or re.search(self.model, prompt.model) is not None,
            self.api is None or prompt.api in self.api,
            self.after_tool_result is None or self.after_tool_result == prompt.after_tool_result,
            self.structured is None or self.structured == prompt.structured,
        )
        return all(checks)


class Rule(_Strict):
    name: str | None = None
    match: Match = Field(default_factory=Match)
    times: int | None = Field(default=None, ge=1, description="fire at most this many times")
    reply: Reply | None = None
    fault: Fault | None = None
    latency_ms: float | None = Field(default=None, ge=0)
    chunk_latency_ms: float | None = Field(default=None, ge=0)

    @field_validator("reply", mode="before")
    @classmethod
    def _text_shorthand(cls, value: Any) -> Any:
        return {"text": value} if isinstance(value, str) else value

    @field_validator("fault", mode="before")
    @classmethod
    def _kind_shorthand(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _reply_or_fault(self) -> Rule:
        if (self.reply is None) == (self.fault is None):
            raise ValueError("a rule needs exactly one of reply or fault")
        return self


class Scenario(_Strict):
    description: str | None = None
    latency_ms: float = Field(default=0, ge=0)
    chunk_latency_ms: float = Field(default=0, ge=0)
    rules: list[Rule] = Field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path) -> Scenario:
        """Read a YAML or JSON file; every problem becomes a ScenarioError naming the file."""
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ScenarioError(f"cannot read scenario file {path}: {exc}") from None
        except yaml.YAMLError as exc:
            raise ScenarioError(f"scenario file {path} is not valid YAML or JSON: {exc}") from None
        return cls.parse(raw, source=str(path))

    @classmethod
    def parse(cls, data: Any, *, source: str = "<scenario>") -> Scenario:
        """Validate already-parsed data, with errors like `rules[1].reply.tool_calls[0].name`."""
        if data is None:
            data = {}
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ScenarioError(_describe(exc, source)) from None

    def dump(self, path: str | Path) -> None:
        """Write as JSON for a .json path, else YAML; atomically, so a reader never sees half."""
        path = Path(path)
        data = self.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True)
        if path.suffix.lower() == ".json":
            text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        else:
            text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)


def _describe(exc: ValidationError, source: str) -> str:
    lines = [f"invalid scenario {source}:"]
    for error in exc.errors():
        lines.append(f"  {field_path(error['loc'])}: {error['msg']}")
    return "\n".join(lines)


def load_scenario(source: Scenario | str | Path | dict[str, Any] | None) -> Scenario:
    """Whatever a caller holds (nothing, a path, parsed data or a Scenario) as a Scenario."""
    if source is None:
        return Scenario()
    if isinstance(source, Scenario):
        return source
    if isinstance(source, dict):
        return Scenario.parse(source)
    return Scenario.load(source)


@dataclass(frozen=True)
class Prompt:
    """What rules look at in a request, the same for all three APIs."""

    api: Api
    model: str
    last_user: str
    tools: tuple[str, ...] = ()
    after_tool_result: bool = False
    structured: bool = False


@dataclass(frozen=True)
class Hit:
    """The rule that answers, and the name the request record shows for it."""

    index: int
    name: str
    rule: Rule


def _filled(rule: Rule, prompt: Prompt) -> Rule:
    if rule.reply is None or rule.match.regex is None:
        return rule
    found = re.search(rule.match.regex, prompt.last_user)
    groups = {k: v for k, v in (found.groupdict() if found else {}).items() if v is not None}
    return rule.model_copy(update={"reply": rule.reply.filled(groups)}) if groups else rule


class RuleBook:
    """A scenario plus how often each rule has fired. Locked because tests swap the scenario
    from their own thread while the server matches requests in its thread."""

    def __init__(self, scenario: Scenario | None = None) -> None:
        self._lock = threading.Lock()
        self._scenario = scenario or Scenario()
        self._fired: list[int] = [0] * len(self._scenario.rules)

    @property
    def scenario(self) -> Scenario:
        return self._scenario

    def replace(self, scenario: Scenario) -> None:
        """Use new rules from the next request on; their `times` count from zero."""
        with self._lock:
            self._scenario = scenario
            self._fired = [0] * len(scenario.rules)

    def pick(self, prompt: Prompt) -> Hit | None:
        """The first rule that matches and still has times left, counted as fired."""
        with self._lock:
            for i, rule in enumerate(self._scenario.rules):
                if rule.times is not None and self._fired[i] >= rule.times:
                    continue
                if rule.match.matches(prompt):
                    self._fired[i] += 1
                    return Hit(i, rule.name or f"rules[{i}]", _filled(rule, prompt))
        return None

    def fired(self) -> list[int]:
        with self._lock:
            return list(self._fired)
