"""The built-in hooks, and `install()` for hooks named in a job spec.

From Python, make a hook and register it::

    budget = BudgetHook(max_tokens=100_000)
    budget.register(env.hooks)

From a job spec, name it::

    hooks:
      - {name: budget, options: {max_tokens: 100000}, priority: 70}
      - {name: cache, options: {path: .llmspell/cache.db}}

    installed = install(env.hooks, spec["hooks"], state=job_state)

Default priorities put them in a sensible order (higher runs first): redaction 100 (everyone
else sees redacted data), guardrails 90, circuit breaker 80, budget 70, cache 65, rate limit
60; logging and metrics time everything (first at before points, last at after points); usage
counts last.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from llmspell.agents.guardrails import (
    GuardrailContext,
    GuardrailResult,
    Guardrails,
    InputGuardrail,
    OutputGuardrail,
    input_guardrail,
    output_guardrail,
)
from llmspell.agents.hooks import (
    breaker,
    budget,
    cache,
    guardrails,
    logs,
    metrics,
    ratelimit,
    redaction,
    usage,
)
from llmspell.agents.hooks._common import (
    BuiltinHook,
    Factory,
    HookResources,
    OptionError,
    VersionedStore,
)
from llmspell.agents.hooks.breaker import BreakerOptions, BreakerState, CircuitBreaker
from llmspell.agents.hooks.budget import (
    BudgetHook,
    BudgetOptions,
    MemoryLedger,
    StateLedger,
)
from llmspell.agents.hooks.cache import CacheOptions, ResponseCache, request_key
from llmspell.agents.hooks.logs import LoggingHook, LoggingOptions
from llmspell.agents.hooks.metrics import MetricsHook, MetricsOptions
from llmspell.agents.hooks.ratelimit import RateLimitHook, RateLimitOptions
from llmspell.agents.hooks.redaction import RedactionOptions, SecretRedaction, scrub
from llmspell.agents.hooks.usage import UsageHook, UsageOptions
from llmspell.runtime.errors import LlmspellError
from llmspell.runtime.hooks import HookRegistry
from llmspell.runtime.validation import field_path

__all__ = [
    "BUILTIN_HOOKS",
    "BreakerOptions",
    "BreakerState",
    "BudgetHook",
    "BudgetOptions",
    "BuiltinHook",
    "CacheOptions",
    "CircuitBreaker",
    "Factory",
    "GuardrailContext",
    "GuardrailResult",
    "Guardrails",
    "HookResources",
    "HookSpec",
    "HookSpecError",
    "InputGuardrail",
    "LoggingHook",
    "LoggingOptions",
    "MemoryLedger",
    "MetricsHook",
    "MetricsOptions",
    "OptionError",
    "OutputGuardrail",
    "RateLimitHook",
    "RateLimitOptions",
    "RedactionOptions",
    "ResponseCache",
    "SecretRedaction",
    "StateLedger",
    "UsageHook",
    "UsageOptions",
    "VersionedStore",
    "check",
    "input_guardrail",
    "install",
    "output_guardrail",
    "request_key",
    "scrub",
]

BUILTIN_HOOKS: dict[str, Factory] = {
    "logging": logs.build,
    "metrics": metrics.build,
    "usage": usage.build,
    "rate_limit": ratelimit.build,
    "cache": cache.build,
    "budget": budget.build,
    "circuit_breaker": breaker.build,
    "redaction": redaction.build,
    "guardrails": guardrails.build,
}
"""Hook name (as a job spec writes it) -> factory(options, resources) -> hook."""


class HookSpec(BaseModel):
    """One entry of a job spec's `hooks` list."""

    model_config = ConfigDict(extra="forbid")

    name: str
    options: dict[str, Any] = {}
    priority: int | None = None


class HookSpecError(LlmspellError, ValueError):
    """Hooks in a job spec that cannot be installed. `errors` holds one {"path", "message"}
    per problem, the path as the spec writes it (`hooks[1].options.max_tokens`)."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        lines = "\n".join(f"  {e['path']}: {e['message']}" for e in errors)
        super().__init__(f"invalid hooks ({len(errors)} problem"
                         f"{'s' if len(errors) != 1 else ''}):\n{lines}")
        self.errors = errors


def install(registry: HookRegistry, specs: Sequence[Mapping[str, Any] | HookSpec], *,
            state: VersionedStore | None = None, path: str = "hooks",
            hooks: Mapping[str, Factory] | None = None) -> list[BuiltinHook]:
    """Build and register the hooks `specs` names; return them (to read their metrics).

    Every entry is checked before any is registered, so a spec with a mistake changes
    nothing; all mistakes are reported at once, by field path under `path`. `state` is the
    job's state (a StateClient) for hooks that share data across actors; `hooks` replaces the
    table of known hooks (default BUILTIN_HOOKS).
    """
    table = BUILTIN_HOOKS if hooks is None else hooks
    resources = HookResources(state=state)
    built: list[tuple[BuiltinHook, int | None]] = []
    errors: list[dict[str, str]] = []
    for index, raw in enumerate(specs):
        where = f"{path}[{index}]"
        try:
            built.append(_build(raw, table, resources))
        except _SpecProblem as problem:
            errors += [{"path": f"{where}.{p}" if p else where, "message": m}
                       for p, m in problem.lines]
    if errors:
        raise HookSpecError(errors)
    for hook, priority in built:
        hook.register(registry, priority=priority)
    return [hook for hook, _ in built]


def check(specs: Sequence[Mapping[str, Any] | HookSpec], *, path: str = "hooks",
          state: VersionedStore | None = None) -> list[dict[str, str]]:
    """The mistakes `install` would report for `specs`, without installing anything (each hook
    is built and closed again, so no file or connection is left open)."""
    try:
        for hook in install(HookRegistry(), specs, state=state, path=path):
            close = getattr(hook, "close", None)
            if callable(close):
                close()
    except HookSpecError as exc:
        return exc.errors
    return []


class _SpecProblem(Exception):
    def __init__(self, lines: list[tuple[str, str]]) -> None:
        super().__init__(lines)
        self.lines = lines


def _build(raw: Mapping[str, Any] | HookSpec, table: Mapping[str, Factory],
           resources: HookResources) -> tuple[BuiltinHook, int | None]:
    try:
        spec = raw if isinstance(raw, HookSpec) else HookSpec.model_validate(raw)
    except ValidationError as exc:
        raise _SpecProblem(_lines(exc, "")) from None
    factory = table.get(spec.name)
    if factory is None:
        known = ", ".join(sorted(table))
        raise _SpecProblem([("name", f"unknown hook {spec.name!r}; known hooks: {known}")])
    try:
        return factory(spec.options, resources), spec.priority
    except ValidationError as exc:
        raise _SpecProblem(_lines(exc, "options")) from None
    except OptionError as exc:
        raise _SpecProblem([(f"options.{exc.field}", exc.message)]) from None
    except (ValueError, TypeError) as exc:  # a hook's own check of its options
        raise _SpecProblem([("options", str(exc))]) from None


def _lines(exc: ValidationError, prefix: str) -> list[tuple[str, str]]:
    out = []
    for error in exc.errors():
        loc = field_path(tuple(error["loc"])) if error["loc"] else ""
        where = ".".join(p for p in (prefix, loc) if p)
        out.append((where, error["msg"]))
    return out
