"""Tool: a named operation a model can call, with a typed, validated argument schema.

A subclass sets the class attributes and implements `run`::

    class Add(Tool):
        name = "add"
        description = "Add two integers."
        class Args(BaseModel):
            a: int
            b: int
        async def run(self, args: Add.Args, ctx: ToolContext) -> int:
            return args.a + args.b

`invoke(raw_arguments, ctx)` is what callers use: it validates the model's arguments at this
trust boundary (a ToolArgumentError lists every bad field by path), honours the timeout and the
cancel token, and returns the result. `@tool` builds a Tool from a typed function.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError

from llmspell.llm.types import ToolSpec
from llmspell.runtime.errors import Cancelled
from llmspell.runtime.validation import validation_lines
from llmspell.tools.context import ToolContext
from llmspell.tools.errors import SandboxViolation, ToolArgumentError, ToolTimeout
from llmspell.tools.sandbox.rules import publish_refusal

__all__ = ["NoArgs", "Reconciled", "SideEffects", "Tool", "render_result"]


class SideEffects(StrEnum):
    none = "none"  # reads only: safe to retry, safe to cache
    local = "local"  # changes the sandbox (files, a local database)
    external = "external"  # changes the world (an HTTP POST, a webhook, an email)


class NoArgs(BaseModel):
    pass


@dataclass(frozen=True, slots=True)
class Reconciled:
    """What `Tool.reconcile` returns when it finds a call's effect already done: its result."""

    result: Any


class Tool:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    category: ClassVar[str] = "general"
    Args: ClassVar[type[BaseModel]] = NoArgs
    side_effects: ClassVar[SideEffects] = SideEffects.none
    idempotent: ClassVar[bool] = True  # running it twice with one key has the effect of once
    timeout: ClassVar[float | None] = 60.0
    requires_approval: ClassVar[bool] = False

    async def run(self, args: Any, ctx: ToolContext) -> Any:
        raise NotImplementedError(f"tool {self.name!r} has no run()")

    async def reconcile(self, args: Any, ctx: ToolContext) -> Reconciled | None:
        """Find out whether the call keyed `ctx.idempotency_key` already had its effect.

        Called before a retry whose first attempt's outcome is unknown (its replica died
        mid-call, perhaps after the effect committed and before the result came back).
        Return Reconciled(result) if the effect is found done (the call is not run again),
        None if it did not happen. A tool that implements this is safe to retry even when it
        is not idempotent: look the key up where the effect lands (a payment id, a row)."""
        return None

    @property
    def reconciles(self) -> bool:
        """Whether this tool can find a past call's effect (it overrides `reconcile`)."""
        return type(self).reconcile is not Tool.reconcile

    # -- what callers use -----------------------------------------------------------------------

    def spec(self) -> ToolSpec:
        cached: ToolSpec | None = self.__dict__.get("_spec")
        if cached is None or cached.name != self.name:  # a schema per turn costs ~0.4 ms
            schema = self.Args.model_json_schema()
            schema.pop("title", None)
            schema.setdefault("properties", {})
            cached = ToolSpec(name=self.name, description=self.description, parameters=schema)
            self.__dict__["_spec"] = cached
        return cached

    def validate(self, arguments: dict[str, Any] | str | None) -> BaseModel:
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as exc:
                raise ToolArgumentError(self.name, [{"path": "", "message":
                                        f"not valid JSON ({exc.msg} at char {exc.pos})"}]) from None
        if not isinstance(arguments, dict):
            raise ToolArgumentError(self.name, [{"path": "", "message":
                                    f"expected a JSON object, got {type(arguments).__name__}"}])
        try:
            return self.Args.model_validate(arguments)
        except ValidationError as exc:
            raise ToolArgumentError(self.name, validation_lines(exc)) from None

    async def invoke(self, arguments: dict[str, Any] | str | None, ctx: ToolContext) -> Any:
        """Validate and run under the tool's timeout (or the call's deadline, if sooner)."""
        ctx.cancel.raise_if_cancelled()
        args = self.validate(arguments)
        limit = _sooner(self.timeout, ctx.remaining())
        task = asyncio.ensure_future(self.run(args, ctx))
        cancel = asyncio.ensure_future(ctx.cancel.wait())
        try:
            done, _ = await asyncio.wait({task, cancel}, timeout=limit,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancel.cancel()
        if task in done:
            try:
                return task.result()
            except SandboxViolation as exc:  # every refusal is an event, whichever tool made it
                publish_refusal(ctx, exc)
                raise
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)  # the tool's own cleanup runs
        if ctx.cancel.cancelled:
            raise Cancelled(ctx.cancel.reason or "cancelled")
        raise ToolTimeout(self.name, limit or 0.0)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "category": self.category,
                "side_effects": str(self.side_effects), "idempotent": self.idempotent,
                "requires_approval": self.requires_approval, "parameters": self.spec().parameters}

    def __repr__(self) -> str:
        return f"<tool {self.name}>"


def render_result(value: Any) -> str:
    """A tool's result as the text a model reads."""
    if isinstance(value, str):
        return value
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    return json.dumps(value, default=str, ensure_ascii=False)


def _sooner(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else min(a, b)
