"""ToolContext: what a tool call knows about where it runs.

The job, the call chain (who called whom, so agent-as-tool recursion is caught and nested events
carry their branch), the sandbox, the job's state, an event emitter and a cancel token. The
serialisable part (`to_wire` / `from_wire`) travels with a call to a pool replica; the replica
attaches its own state client and emitter there.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from llmspell.runtime.cancel import CancelToken
from llmspell.runtime.hooks import HookRegistry
from llmspell.runtime.state import ANY, Versioned
from llmspell.tools.errors import RecursionLimit
from llmspell.tools.sandbox import Sandbox

__all__ = ["DEFAULT_MAX_DEPTH", "Emit", "StateAccess", "ToolContext"]

DEFAULT_MAX_DEPTH = 8

Emit = Callable[[str, dict[str, Any]], None]


class StateAccess(Protocol):
    """A job's state as tools, agents and patterns use it: StateClient (through the state
    service) and LocalState (a StateStore in this process) both are one."""

    async def get(self, key: str) -> Any: ...

    async def get_versioned(self, key: str) -> Versioned | None: ...

    async def set(self, key: str, value: Any, *, expected_version: Any = ANY) -> int: ...

    async def compare_and_set(self, key: str, value: Any, expected_version: int | None
                              ) -> int: ...

    async def delete(self, key: str, *, expected_version: Any = ANY) -> bool: ...

    async def list(self, prefix: str) -> dict[str, Versioned]: ...


@dataclass
class ToolContext:
    job_id: str = ""
    chain: tuple[str, ...] = ()  # the callers, outermost first: ("manager", "researcher")
    call_id: str = ""
    idempotency_key: str | None = None
    sandbox: Sandbox = field(default_factory=Sandbox)
    state: StateAccess | None = None
    emit: Emit | None = None
    cancel: CancelToken = field(default_factory=CancelToken)
    deadline: float | None = None  # time.monotonic() in this process
    max_depth: int = DEFAULT_MAX_DEPTH
    hooks: HookRegistry | None = None  # patterns run workflow_step / delegation hooks here

    @property
    def branch(self) -> str:
        """The chain as one string, the tag nested events carry."""
        return "/".join(self.chain)

    def publish(self, topic: str, payload: dict[str, Any] | None = None) -> None:
        if self.emit is not None:
            self.emit(topic, {**(payload or {}), "branch": self.branch})

    def remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def enter(self, name: str, *, tool: str | None = None) -> ToolContext:
        """The context one level down (an agent called as a tool). Refuses a cycle or a chain
        deeper than `max_depth`, naming the whole chain."""
        chain = [*self.chain, name]
        if name in self.chain:
            raise RecursionLimit(tool or name, chain, f"{name!r} is already in its own call chain")
        if len(chain) > self.max_depth:
            raise RecursionLimit(tool or name, chain, f"call depth {len(chain)} exceeds the "
                                                      f"limit of {self.max_depth}")
        return replace(self, chain=tuple(chain), cancel=self.cancel.child())

    def for_callee(self, name: str) -> ToolContext:
        """The context `name` runs in: this one if the caller already entered it (the chain ends
        with `name`), else one level down."""
        return self if self.chain and self.chain[-1] == name else self.enter(name)

    def to_wire(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id, "chain": list(self.chain), "call_id": self.call_id,
            "idempotency_key": self.idempotency_key,
            "sandbox": self.sandbox.model_dump(), "remaining": self.remaining(),
            "max_depth": self.max_depth,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any], *, state: StateAccess | None = None,
                  emit: Emit | None = None, cancel: CancelToken | None = None,
                  hooks: HookRegistry | None = None) -> ToolContext:
        remaining = data.get("remaining")
        return cls(
            job_id=str(data.get("job_id", "")), chain=tuple(data.get("chain") or ()),
            call_id=str(data.get("call_id", "")), idempotency_key=data.get("idempotency_key"),
            sandbox=Sandbox.model_validate(data.get("sandbox") or {}), state=state, emit=emit,
            cancel=cancel or CancelToken(),
            deadline=None if remaining is None else time.monotonic() + float(remaining),
            max_depth=int(data.get("max_depth", DEFAULT_MAX_DEPTH)), hooks=hooks,
        )
