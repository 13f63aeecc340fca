"""Secret redaction: a secret goes into no model request, log line, event or event-log row.

    redaction = SecretRedaction(secrets=[db_password], env=["STRIPE_KEY"])
    redaction.register(registry)
    env = AgentEnv(..., emit=redaction.wrap_emit(bus_emit))

Registering tells `llmspell.runtime.logs` the secrets, so every structlog line shows
[REDACTED] instead (as it already does for provider API keys and anything shaped like one).
The hooks then replace secrets (Modify) wherever they flow through an operation: the input of
an agent run and its result, model requests and responses, tool arguments and results. They
run first among hooks (priority 100), so every other hook sees only redacted data.

Some events are published before any hook runs (the agent loop announces a tool call, with its
arguments, before the call's hooks), so the event emitter itself must redact too:
`wrap_emit` returns an emitter that redacts every string of a payload, however deeply nested.
Everything that emitter feeds (the bus, subscribers, the event log) is then clean.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator

from llmspell.agents.hooks._common import HookResources, OptionError, Options
from llmspell.runtime.hooks import HookContext, HookPoint, HookRegistry, Modify, Registration
from llmspell.runtime.logs import add_secret, redact

__all__ = ["RedactionOptions", "SecretRedaction", "build", "scrub"]

Emit = Callable[[str, dict[str, Any]], None]
MIN_SECRET_LENGTH = 6  # what llmspell.runtime.logs.add_secret accepts; shorter ones would leak


class RedactionOptions(Options):
    secrets: list[SecretStr] = Field(default_factory=list)
    """Secret values (kept as SecretStr, so they never show in a repr or a validation error)."""
    env: list[str] = Field(default_factory=list)
    """Names of environment variables whose values are secrets (each must be set)."""
    tool_arguments: bool = True
    """Redact tool arguments before the tool runs (a tool that needs a secret should read it
    from its own configuration, never from what the model wrote)."""

    @field_validator("secrets")
    @classmethod
    def _long_enough(cls, values: list[SecretStr]) -> list[SecretStr]:
        for value in values:
            if len(value.get_secret_value()) < MIN_SECRET_LENGTH:
                raise ValueError(f"a secret must have at least {MIN_SECRET_LENGTH} characters "
                                 "(shorter ones would match ordinary text)")
        return values


def scrub(value: Any) -> Any:
    """`value` with every known secret redacted, in strings at any depth.

    Returns the very same object when there is nothing to redact, so callers can tell (by
    identity) whether to Modify. Pydantic models are rebuilt from their redacted dump.
    """
    if isinstance(value, str):
        cleaned = redact(value)
        return value if cleaned == value else cleaned
    if isinstance(value, BaseModel):
        dumped = value.model_dump(by_alias=True)
        cleaned_dump = scrub(dumped)
        if cleaned_dump is dumped:
            return value
        try:
            return type(value).model_validate(cleaned_dump)
        except ValidationError:  # a model that does not take its own dump back: plain data
            return cleaned_dump
    if isinstance(value, dict):
        items = {k: scrub(v) for k, v in value.items()}
        changed = any(items[k] is not v for k, v in value.items())
        return items if changed else value
    if isinstance(value, list | tuple):
        cleaned_items = [scrub(v) for v in value]
        if all(c is v for c, v in zip(cleaned_items, value, strict=True)):
            return value
        return type(value)(cleaned_items) if isinstance(value, tuple) else cleaned_items
    return value


class SecretRedaction:
    name = "redaction"
    default_priority = 100

    def __init__(self, options: RedactionOptions | None = None, /, **fields: Any) -> None:
        self.options = options or RedactionOptions(**fields)
        self._secrets = [s.get_secret_value() for s in self.options.secrets]
        for index, var in enumerate(self.options.env):
            value = os.environ.get(var)
            if not value or len(value) < MIN_SECRET_LENGTH:
                raise OptionError(f"env[{index}]", f"environment variable {var!r} is not set "
                                  f"(or shorter than {MIN_SECRET_LENGTH} characters)")
            self._secrets.append(value)
        self.redacted = 0

    def register(self, registry: HookRegistry, *, priority: int | None = None
                 ) -> list[Registration]:
        for secret in self._secrets:
            add_secret(secret)
        p = self.default_priority if priority is None else priority
        points = [HookPoint.before_agent_run, HookPoint.after_agent_run,
                  HookPoint.before_llm_call, HookPoint.after_llm_call,
                  HookPoint.after_tool_call]
        if self.options.tool_arguments:
            points.append(HookPoint.before_tool_call)
        return [registry.register(point, self.hook, priority=p, name=self.name)
                for point in points]

    def hook(self, ctx: HookContext) -> Modify | None:
        cleaned = scrub(ctx.payload)
        if cleaned is ctx.payload:
            return None
        self.redacted += 1
        return Modify(cleaned)

    def wrap_emit(self, emit: Emit) -> Emit:
        """An emitter that redacts each payload before handing it to `emit`."""
        for secret in self._secrets:  # the emitter may be used before register()
            add_secret(secret)

        def redacting(topic: str, payload: dict[str, Any]) -> None:
            emit(topic, scrub(payload))

        return redacting


def build(options: Mapping[str, Any], resources: HookResources) -> SecretRedaction:
    return SecretRedaction(RedactionOptions.model_validate(options))
