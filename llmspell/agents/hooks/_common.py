"""What every built-in hook shares: the operation a hook context is about, option models,
the resources `install()` hands to factories, and reporting events through the registry.

Hooks see four kinds of operation, told apart by the hook point (and, for `on_error`, by the
payload the failing operation carried):

    llm     payload LLMRequest, target "provider:model", the after hook sees a Response
    tool    payload {"tool", "arguments", ...}, target the tool name
    agent   payload {"agent", "input", "run_id", ...}, the after hook sees a RunResult
    state   payload {"key", "value", ...}, target the key
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict

from llmspell.llm.types import LLMRequest
from llmspell.runtime.errors import Cancelled, HookCancelled
from llmspell.runtime.hooks import HookContext, HookPoint, HookRegistry, Registration
from llmspell.runtime.state import Versioned

__all__ = [
    "CACHE_HIT",
    "BuiltinHook",
    "Factory",
    "HookResources",
    "Op",
    "OpKind",
    "OptionError",
    "Options",
    "VersionedStore",
    "failure_kind",
    "operation",
    "report",
]

OpKind = Literal["llm", "tool", "agent", "state"]

CACHE_HIT = "llmspell.cache_hit"
"""Set in ctx.metadata by the cache hook when it answered a model call from the cache, so the
hooks after it know that no model ran (no tokens spent, nothing to store, no failure)."""


class Op(NamedTuple):
    """One operation as hooks see it: its kind, its name (model, tool, agent or key) and the
    agent that runs it (None when no agent is involved)."""

    kind: OpKind
    name: str
    agent: str | None


_KIND_OF_POINT: dict[HookPoint, OpKind] = {
    HookPoint.before_llm_call: "llm",
    HookPoint.after_llm_call: "llm",
    HookPoint.before_tool_call: "tool",
    HookPoint.after_tool_call: "tool",
    HookPoint.before_agent_run: "agent",
    HookPoint.after_agent_run: "agent",
    HookPoint.before_state_write: "state",
    HookPoint.after_state_write: "state",
}


def operation(ctx: HookContext) -> Op | None:
    """The operation `ctx` belongs to, or None for points no built-in hook watches."""
    kind = _KIND_OF_POINT.get(ctx.point)
    if kind is None and ctx.point == HookPoint.on_error:
        kind = _kind_of_payload(ctx.payload)
    if kind is None:
        return None
    return Op(kind, _name(kind, ctx), ctx.actor)


def failure_kind(error: BaseException | None) -> str:
    """The outcome of a failed operation: "cancelled" when a hook or its owner stopped it,
    "errors" when it failed."""
    return "cancelled" if isinstance(error, HookCancelled | Cancelled) else "errors"


def _kind_of_payload(payload: Any) -> OpKind | None:
    # on_error gets the payload of the operation that failed; its shape says which one it was.
    if isinstance(payload, LLMRequest):
        return "llm"
    if isinstance(payload, dict):
        if "tool" in payload and "arguments" in payload:
            return "tool"
        if "agent" in payload and "run_id" in payload:
            return "agent"
        if "key" in payload and "value" in payload:
            return "state"
    return None


def _name(kind: OpKind, ctx: HookContext) -> str:
    if kind == "agent" and isinstance(ctx.payload, dict):
        return str(ctx.payload.get("agent") or ctx.actor or "?")
    if kind == "agent":  # the after hook sees a RunResult, whose agent is the actor
        return str(getattr(ctx.payload, "agent", None) or ctx.actor or "?")
    if ctx.target:
        return ctx.target
    if kind == "llm" and isinstance(ctx.payload, LLMRequest):
        return ctx.payload.model
    return "?"


class Options(BaseModel):
    """Base of every hook's options: unknown fields are errors, so typos are caught."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class OptionError(ValueError):
    """An option that validated but cannot work here (a resource it needs is missing, an
    import path that does not resolve). `field` is its path inside the options."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class VersionedStore(Protocol):
    """The part of a state store a shared ledger needs, bound to one job.

    `llmspell.runtime.state_client.StateClient` is one; `LocalState` adapts the in-process
    `StateStore`. A lost compare-and-set raises `VersionConflict`.
    """

    async def get_versioned(self, key: str) -> Versioned | None: ...

    async def compare_and_set(self, key: str, value: Any, expected_version: int | None
                              ) -> int: ...


@dataclass
class HookResources:
    """What hooks named in a job spec may need from the process that installs them."""

    state: VersionedStore | None = None


class BuiltinHook(Protocol):
    """A built-in hook: an object that registers its functions on a registry."""

    name: str

    def register(self, registry: HookRegistry, *, priority: int | None = None
                 ) -> list[Registration]: ...


Factory = Callable[[Mapping[str, Any], HookResources], BuiltinHook]


def report(registry: HookRegistry, topic: str, data: dict[str, Any]) -> None:
    """Publish an event through the registry's emitter (the runtime's bus), never raising."""
    registry.report(topic, data)


class TimingObserver:
    """Base of the observers that time operations (logging, metrics): registered first at the
    before points (so calls a later hook refuses are timed too) and last at the after points
    (to see the result as the other hooks left it); subclasses implement `after` and `error`."""

    name = "timing"
    default_priority = 1000

    def __init__(self) -> None:
        self._started = f"llmspell.{self.name}.{id(self)}"  # this instance's note in metadata

    def register(self, registry: HookRegistry, *, priority: int | None = None
                 ) -> list[Registration]:
        p = self.default_priority if priority is None else priority
        regs = [registry.register(point, self.before, priority=p, name=self.name)
                for point in TIMED_BEFORE]
        regs += [registry.register(point, self.after, priority=-p, name=self.name)
                 for point in TIMED_AFTER]
        regs.append(registry.register(HookPoint.on_error, self.error, priority=-p,
                                      name=self.name))
        return regs

    def before(self, ctx: HookContext) -> None:
        ctx.metadata[self._started] = time.perf_counter()

    def after(self, ctx: HookContext) -> None:
        raise NotImplementedError

    def error(self, ctx: HookContext) -> None:
        raise NotImplementedError

    def elapsed_ms(self, ctx: HookContext) -> float | None:
        started = ctx.metadata.get(self._started)
        return None if started is None else (time.perf_counter() - started) * 1e3


TIMED_BEFORE = (HookPoint.before_llm_call, HookPoint.before_tool_call,
                HookPoint.before_agent_run)
TIMED_AFTER = (HookPoint.after_llm_call, HookPoint.after_tool_call,
               HookPoint.after_agent_run)
