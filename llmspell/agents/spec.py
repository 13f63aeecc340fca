"""AgentSpec: everything that defines an agent, as validated data (from YAML, JSON or code)."""

from __future__ import annotations

import functools
import re
from typing import Any, Literal

import jinja2
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llmspell.llm.client import ModelConfig
from llmspell.runtime.errors import LlmspellError

__all__ = ["AgentSpec", "MemoryPolicy", "SpecError", "render_instructions"]

_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9_-]{0,63}$")
_templates = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)


class SpecError(LlmspellError, ValueError):
    """An agent spec (or its instructions template) is invalid; the message names the field."""


class MemoryPolicy(BaseModel):
    """How much of the conversation a turn sends: the last `max_messages`, or, with
    `summarize`, a summary of what came before once the history passes `token_budget`."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["window", "summarize"] = "window"
    max_messages: int = Field(default=50, ge=2)
    token_budget: int = Field(default=8_000, ge=100)
    keep_recent: int = Field(default=6, ge=1,
                             description="messages kept verbatim after a summary")
    summary_model: str | None = None  # defaults to the agent's model


class AgentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    instructions: str = "You are a helpful assistant."
    model: str | ModelConfig = "local:echo"
    tools: list[str] = Field(default_factory=list)
    handoffs: list[str] = Field(default_factory=list)
    output_schema: dict[str, Any] | None = None
    max_turns: int = Field(default=10, ge=1, le=1_000)
    memory: MemoryPolicy = Field(default_factory=MemoryPolicy)
    stream: bool = True
    max_tokens: int = Field(default=1024, ge=1)
    temperature: float | None = None
    tool_choice: str = "auto"
    template: str | None = None  # the template it was made from, if any
    state_keys: list[str] = Field(
        default_factory=list,
        description="scoped state keys (job:plan, app:style) the instructions read as "
                    "{{ state.plan }}; read at the start of every turn")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("use a letter, then up to 63 letters, digits, _ or -")
        return value

    @field_validator("instructions")
    @classmethod
    def _parses(cls, value: str) -> str:
        try:
            _templates.parse(value)
        except jinja2.TemplateSyntaxError as exc:
            raise ValueError(f"template error at line {exc.lineno}: {exc.message}") from None
        return value

    @field_validator("output_schema")
    @classmethod
    def _schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            import jsonschema

            try:
                jsonschema.Draft202012Validator.check_schema(value)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"not a valid JSON schema: {exc.message}") from None
        return value

    @field_validator("state_keys")
    @classmethod
    def _scoped(cls, value: list[str]) -> list[str]:
        for key in value:
            if key.split(":", 1)[0] not in ("app", "job", "agent", "temp") or ":" not in key:
                raise ValueError(f"{key!r}: a state key starts with its scope (app:, job:, "
                                 "agent:<name>:, temp:)")
        return value

    @model_validator(mode="after")
    def _no_clash(self) -> AgentSpec:
        dup = sorted({t for t in self.tools if self.tools.count(t) > 1})
        if dup:
            raise ValueError(f"tools listed twice: {', '.join(dup)}")
        return self

    @property
    def model_config_(self) -> ModelConfig:
        return self.model if isinstance(self.model, ModelConfig) else ModelConfig(model=self.model)


@functools.lru_cache(maxsize=1024)
def _compiled(source: str) -> jinja2.Template:
    return _templates.from_string(source)  # compiling costs more than a model call's overhead


def render_instructions(spec: AgentSpec, inputs: dict[str, Any], state: dict[str, Any]) -> str:
    """The system prompt: the instructions template over the run's inputs and job state."""
    if "{" not in spec.instructions:
        return spec.instructions
    try:
        text: str = _compiled(spec.instructions).render(
            inputs=inputs, state=state, agent=spec.name, **inputs)
        return text
    except jinja2.UndefinedError as exc:
        raise SpecError(f"agent {spec.name!r} instructions: {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise SpecError(f"agent {spec.name!r} instructions: {exc}") from None
