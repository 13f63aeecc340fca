"""Guardrails: checks of what goes into an agent run and what comes out, that can stop it.

    @input_guardrail
    def no_account_numbers(ctx: GuardrailContext, text: str) -> GuardrailResult:
        found = ACCOUNT.search(text)
        return GuardrailResult(tripwire=found is not None, reason="asks about an account")

    @output_guardrail(name="on_topic")
    async def on_topic(ctx: GuardrailContext, output: Any) -> GuardrailResult:
        verdict = await judge(output)          # a guardrail may call a model itself
        return GuardrailResult(tripwire=not verdict.ok, info=verdict)

    Guardrails(input=[no_account_numbers], output=[on_topic]).register(env.hooks)

An input guardrail sees the input of a run before the model does (before_agent_run); an output
guardrail sees the output of a completed run (after_agent_run). A tripped wire stops the run:
the hook returns Cancel, so the run ends `cancelled`, with `cancelled_by` "guardrail:<name>" and
a reason naming the guardrail. Guardrails may be sync or async. A guardrail that raises or runs
past its timeout trips too (fail closed): a check that could not be made is not a pass.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar, overload

import regex

from llmspell.runtime.hooks import Cancel, HookContext, HookPoint, HookRegistry, Registration

__all__ = [
    "Guardrail",
    "GuardrailContext",
    "GuardrailResult",
    "Guardrails",
    "InputGuardrail",
    "OutputGuardrail",
    "deny_patterns",
    "input_guardrail",
    "max_length",
    "output_guardrail",
]

T = TypeVar("T")
DEFAULT_TIMEOUT = 10.0
_REGEX_TIMEOUT = 0.25  # seconds one denied pattern may take on one text


@dataclass(frozen=True, slots=True)
class GuardrailResult:
    """What a guardrail decided. `tripwire` True stops the run; `reason` says why (it becomes
    the run's reason); `info` is anything worth keeping about the check (reported in the
    `guardrail.tripped` event as text)."""

    tripwire: bool
    info: Any = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class GuardrailContext:
    """Where the checked run happens."""

    agent: str
    job_id: str | None
    run_id: str
    branch: str


GuardrailFn = Callable[[GuardrailContext, T], "GuardrailResult | Awaitable[GuardrailResult]"]
Kind = Literal["input", "output"]


@dataclass(frozen=True)
class Guardrail(Generic[T]):
    """A named check of a run's input (T = str) or output (T = the run's output)."""

    fn: GuardrailFn[T]
    name: str
    timeout: float = DEFAULT_TIMEOUT

    kind: Kind = "input"

    async def check(self, ctx: GuardrailContext, value: T) -> GuardrailResult:
        """Run the check; a wrong return type is an error, not a pass."""
        outcome = self.fn(ctx, value)
        if inspect.isawaitable(outcome):
            async with asyncio.timeout(self.timeout):
                outcome = await outcome
        if not isinstance(outcome, GuardrailResult):
            raise TypeError(f"guardrail {self.name!r} returned {type(outcome).__name__}, "
                            "not a GuardrailResult")
        return outcome


class InputGuardrail(Guardrail[str]):
    """Checks the input text of a run before the model sees it."""

    def __init__(self, fn: GuardrailFn[str], name: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(fn, name or _name_of(fn), timeout, "input")


class OutputGuardrail(Guardrail[Any]):
    """Checks the output of a completed run (text, or the parsed structured output)."""

    def __init__(self, fn: GuardrailFn[Any], name: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(fn, name or _name_of(fn), timeout, "output")


@overload
def input_guardrail(fn: GuardrailFn[str], /) -> InputGuardrail: ...


@overload
def input_guardrail(*, name: str | None = None, timeout: float = DEFAULT_TIMEOUT
                    ) -> Callable[[GuardrailFn[str]], InputGuardrail]: ...


def input_guardrail(fn: GuardrailFn[str] | None = None, /, *, name: str | None = None,
                    timeout: float = DEFAULT_TIMEOUT
                    ) -> InputGuardrail | Callable[[GuardrailFn[str]], InputGuardrail]:
    """Make an InputGuardrail of a sync or async function: `@input_guardrail` or
    `@input_guardrail(name=..., timeout=...)`."""
    if fn is not None:
        return InputGuardrail(fn, name, timeout)
    return lambda f: InputGuardrail(f, name, timeout)


@overload
def output_guardrail(fn: GuardrailFn[Any], /) -> OutputGuardrail: ...


@overload
def output_guardrail(*, name: str | None = None, timeout: float = DEFAULT_TIMEOUT
                     ) -> Callable[[GuardrailFn[Any]], OutputGuardrail]: ...


def output_guardrail(fn: GuardrailFn[Any] | None = None, /, *, name: str | None = None,
                     timeout: float = DEFAULT_TIMEOUT
                     ) -> OutputGuardrail | Callable[[GuardrailFn[Any]], OutputGuardrail]:
    """Make an OutputGuardrail of a sync or async function: `@output_guardrail` or
    `@output_guardrail(name=..., timeout=...)`."""
    if fn is not None:
        return OutputGuardrail(fn, name, timeout)
    return lambda f: OutputGuardrail(f, name, timeout)


class Guardrails:
    """The hook that runs guardrails around agent runs.

    `agents`: only runs of these agents are checked (None: every agent). Each guardrail is
    registered as its own hook, named "guardrail:<name>", so the run's `cancelled_by` and the
    `hook.cancelled` event name the guardrail that tripped.
    """

    name = "guardrails"
    default_priority = 90  # after redaction (100): guardrails see the redacted input

    def __init__(self, input: Sequence[Guardrail[Any] | GuardrailFn[str]] = (),
                 output: Sequence[Guardrail[Any] | GuardrailFn[Any]] = (), *,
                 agents: Iterable[str] | None = None) -> None:
        self.input: list[Guardrail[Any]] = [
            g if isinstance(g, Guardrail) else InputGuardrail(g) for g in input]
        self.output: list[Guardrail[Any]] = [
            g if isinstance(g, Guardrail) else OutputGuardrail(g) for g in output]
        _check_kinds(self.input, "input")
        _check_kinds(self.output, "output")
        self.agents = None if agents is None else frozenset(agents)
        self.tripped: list[tuple[str, str]] = []  # (guardrail, reason), in order
        self._registry: HookRegistry | None = None

    def register(self, registry: HookRegistry, *, priority: int | None = None
                 ) -> list[Registration]:
        self._registry = registry
        p = self.default_priority if priority is None else priority
        regs = [self._register(registry, HookPoint.before_agent_run, g, p) for g in self.input]
        regs += [self._register(registry, HookPoint.after_agent_run, g, p) for g in self.output]
        return regs

    def _register(self, registry: HookRegistry, point: HookPoint, guardrail: Guardrail[Any],
                  priority: int) -> Registration:
        async def hook(ctx: HookContext) -> Cancel | None:
            return await self._run(guardrail, ctx)

        # The guardrail keeps its own timeout, so that running late trips it; the hook's is
        # only a backstop (a hook cut off by the registry counts as Continue).
        return registry.register(point, hook, priority=priority,
                                 name=f"guardrail:{guardrail.name}",
                                 timeout=guardrail.timeout + 5.0)

    async def _run(self, guardrail: Guardrail[Any], ctx: HookContext) -> Cancel | None:
        subject = _subject(guardrail.kind, ctx)
        if subject is None:
            return None
        gctx, value = subject
        if self.agents is not None and gctx.agent not in self.agents:
            return None
        try:
            result = await guardrail.check(gctx, value)
        except Exception as exc:  # fail closed: a check that could not run is no pass
            error = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: "
            result = GuardrailResult(tripwire=True, reason=f"the check failed: {error}{exc}")
        if not result.tripwire:
            return None
        return self._trip(guardrail, gctx, result)

    def _trip(self, guardrail: Guardrail[Any], gctx: GuardrailContext, result: GuardrailResult
              ) -> Cancel:
        why = result.reason or (str(result.info) if result.info is not None else "tripped")
        self.tripped.append((guardrail.name, why))
        if self._registry is not None:
            # The registry's own reporter (as for hook.cancelled): it never raises.
            self._registry.report("guardrail.tripped", {
                "guardrail": guardrail.name, "kind": guardrail.kind, "agent": gctx.agent,
                "run_id": gctx.run_id, "branch": gctx.branch, "reason": why[:1000],
                "info": None if result.info is None else str(result.info)[:1000]})
        return Cancel(f"{guardrail.kind} guardrail {guardrail.name!r} tripped: {why}")


# --- ready-made guardrails (also what a job spec can name without Python code) -------------


def deny_patterns(patterns: Sequence[str], *, kind: Kind = "input", name: str | None = None,
                  ignore_case: bool = True) -> Guardrail[Any]:
    """Trips when the text (or the JSON of a structured output) matches any pattern.

    Patterns are compiled now, so a bad one fails at setup. They run on the `regex` engine
    with a time limit: a pattern that backtracks catastrophically trips the wire (fail
    closed) instead of hanging the agent.
    """
    flags = regex.IGNORECASE if ignore_case else 0
    compiled = [(p, regex.compile(p, flags)) for p in patterns]

    def check(ctx: GuardrailContext, value: Any) -> GuardrailResult:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        for pattern, rx in compiled:
            if rx.search(text, timeout=_REGEX_TIMEOUT) is not None:
                return GuardrailResult(tripwire=True, info={"pattern": pattern},
                                       reason=f"matches the denied pattern {pattern!r}")
        return GuardrailResult(tripwire=False)

    label = name or f"deny_{kind}"
    return InputGuardrail(check, label) if kind == "input" else OutputGuardrail(check, label)


def max_length(limit: int, *, kind: Kind = "input", name: str | None = None
               ) -> Guardrail[Any]:
    """Trips when the text (or the JSON of a structured output) is longer than `limit`."""
    if limit < 1:
        raise ValueError(f"max_length needs a limit of at least 1, got {limit}")

    def check(ctx: GuardrailContext, value: Any) -> GuardrailResult:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        if len(text) <= limit:
            return GuardrailResult(tripwire=False)
        return GuardrailResult(tripwire=True, info={"length": len(text)},
                               reason=f"{kind} has {len(text)} characters, more than {limit}")

    label = name or f"max_{kind}_length"
    return InputGuardrail(check, label) if kind == "input" else OutputGuardrail(check, label)


def _subject(kind: Kind, ctx: HookContext) -> tuple[GuardrailContext, Any] | None:
    """The guardrail's context and the value it checks; None when there is nothing to check
    (a resumed run has no new input; an output check only sees completed runs)."""
    payload = ctx.payload
    if kind == "input":
        if not isinstance(payload, dict) or "input" not in payload:
            return None
        gctx = GuardrailContext(agent=str(payload.get("agent") or ctx.actor or ""),
                                job_id=ctx.job_id, run_id=str(payload.get("run_id", "")),
                                branch=str(payload.get("branch", "")))
        return gctx, str(payload["input"])
    if str(getattr(payload, "status", "")) != "completed":
        return None
    gctx = GuardrailContext(agent=str(getattr(payload, "agent", None) or ctx.actor or ""),
                            job_id=ctx.job_id, run_id=str(getattr(payload, "run_id", "")),
                            branch="")
    return gctx, payload.output


def _check_kinds(guardrails: Sequence[Guardrail[Any]], kind: Kind) -> None:
    for g in guardrails:
        if g.kind != kind:
            raise TypeError(f"guardrail {g.name!r} is an {g.kind} guardrail, given as {kind}")


def _name_of(fn: Callable[..., Any]) -> str:
    return str(getattr(fn, "__name__", None) or type(fn).__name__)
