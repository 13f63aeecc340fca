"""What every workflow shares: how one step runs, how a concurrent block is scoped, escalation.

A step runs through `Workflow.call`: restored from the checkpoint when resuming, else run under
the workflow_step hooks (`Pattern.run_step`, which publishes its events) while watching the
cancel token, then recorded in the checkpoint. A step never raises out of `call`: whatever
happens becomes a RunResult with a status and a reason.

Cancellation: the step's context carries a child of the workflow's token. Steps that watch
their token (agents, workflows and patterns in this process; agents in actors, which are told
to cancel their run by id) get `cancel_grace_s` to return their own cancelled result; other
steps (functions, tools) are interrupted at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import replace
from typing import Any

from llmspell.agents.agent import Agent
from llmspell.agents.result import RunResult, RunStatus
from llmspell.runtime.errors import Cancelled, HookCancelled
from llmspell.runtime.messages import new_id
from llmspell.supervisors.base import Bind, Pattern, Step, as_step, output_text
from llmspell.supervisors.checkpoint import (
    RESTORED,
    Checkpoint,
    resuming,
    step_position,
)
from llmspell.supervisors.merge import Conflict, MergedState, MergeRules
from llmspell.supervisors.workers import actor_agent
from llmspell.tools.base import Tool
from llmspell.tools.context import ToolContext

__all__ = ["Escalate", "Workflow", "escalate", "escalation"]

# The results of the steps before the running one, for a Conditional's predicate.
_PREVIOUS: ContextVar[tuple[RunResult, ...]] = ContextVar("llmspell_previous", default=())


# -- escalation -------------------------------------------------------------------------------

ESCALATE = "escalate"


class Escalate(Exception):  # a signal, like StopIteration, rather than an error
    """Raised by a function step to stop the enclosing Loop (or Sequential) early.

    Workflows turn it into the escalation marker `escalate(reason, **data)`, the output any
    step (an agent answering JSON, a tool) can also return: `{"escalate": true, ...}`.
    """

    def __init__(self, reason: str = "", **data: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.data = data


def escalate(reason: str = "", **data: Any) -> dict[str, Any]:
    """The output that stops a Loop: `{"escalate": True, "reason": ..., **data}`."""
    return {ESCALATE: True, "reason": reason, **data}


def escalation(result: RunResult) -> dict[str, Any] | None:
    """The escalation a step's output carries (a dict, or text that is such a JSON object)."""
    value = result.output
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if isinstance(value, dict) and value.get(ESCALATE) is True:
        return value
    return None


def to_step(target: Any, name: str | None = None) -> Step:
    """`as_step`, with plain functions raising `Escalate` returning the marker instead."""
    if isinstance(target, Tool) or (hasattr(target, "run") and hasattr(target, "name")) or \
            not callable(target):
        return as_step(target, name=name)
    fn = target

    @functools.wraps(fn)  # keeps the signature: as_step passes ctx if fn takes two arguments
    async def escalating(*args: Any) -> Any:
        try:
            value = fn(*args)
            return await value if inspect.isawaitable(value) else value
        except Escalate as exc:
            return escalate(exc.reason, **exc.data)

    return as_step(escalating, name=name or getattr(fn, "__name__", None))


# -- small helpers ----------------------------------------------------------------------------

def next_input(result: RunResult) -> str:
    """What a step hands the next one: its text, or its output rendered."""
    return result.text or output_text(result.output)


def item_text(item: Any) -> str:
    return item if isinstance(item, str) else json.dumps(item, default=str, ensure_ascii=False)


async def call_flex(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a user function with as many of `args` as it takes (so `lambda r: ...` and
    `def until(result, iteration, state)` both work), awaiting it if async."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        count = len(args)
    else:
        if any(p.kind == p.VAR_POSITIONAL for p in params):
            count = len(args)
        else:
            count = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
    value = fn(*args[:count])
    return await value if inspect.isawaitable(value) else value


def status_of(result: RunResult) -> str:
    return f"{result.status}: {result.reason}" if result.reason else str(result.status)


def summarize(failed: Iterable[tuple[str, RunResult]], limit: int = 10) -> str:
    items = list(failed)
    shown = "; ".join(f"{label} ({status_of(r)[:300]})" for label, r in items[:limit])
    return shown + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def _cooperative(step: Any) -> bool:
    """Whether a step stops by itself, with a result, when its cancel token fires."""
    inner = step.step if isinstance(step, Bind) else step
    if isinstance(inner, Pattern):
        return True
    return isinstance(getattr(inner, "target", None), Agent) or actor_agent(inner) is not None


# -- one step ---------------------------------------------------------------------------------

class _Call:
    """A step as `run_step` invokes it, with what some steps take beyond (input, ctx): a Bind
    its `previous` and `inputs`, a workflow the job inputs, an actor agent a run id (so that
    the run can be cancelled in its actor, where our cancel token does not reach)."""

    def __init__(self, step: Step, *, previous: Any, inputs: dict[str, Any] | None,
                 history: tuple[RunResult, ...]) -> None:
        self.step = step
        self.name = step.name
        self.previous = previous
        self.inputs = inputs
        self.history = history
        self.remote = actor_agent(step)
        self.run_id = new_id() if self.remote is not None else ""

    async def run(self, input: str, *, ctx: ToolContext | None = None) -> RunResult:
        token = _PREVIOUS.set(self.history)
        try:
            return await self._run(input, ctx or ToolContext())
        finally:
            _PREVIOUS.reset(token)

    async def _run(self, input: str, ctx: ToolContext) -> RunResult:
        step = self.step
        if isinstance(step, Bind):
            return await step.run(input, ctx=ctx, previous=self.previous, inputs=self.inputs)
        if isinstance(step, Pattern):
            return await step.run(input, ctx=ctx, inputs=self.inputs)
        if self.remote is not None:
            result = await self.remote.run(input, ctx=ctx, run_id=self.run_id)
            return result if isinstance(result, RunResult) else RunResult.model_validate(result)
        return await step.run(input, ctx=ctx)

    async def cancel_remote(self, running: asyncio.Future[Any], reason: str) -> None:
        """Tell the actor to cancel the run (a run still queued there starts cancelled)."""
        if self.remote is not None and not running.done():
            with contextlib.suppress(Exception):  # the actor is gone, and its run with it
                await self.remote.cancel(self.run_id, reason)


class Workflow(Pattern):
    """The base of the workflows: a Pattern whose steps run through `call`.

    `checkpoint` (on by default) records completed steps in job state when the run's context
    has a state; `run(..., resume=True)` reuses them (see llmspell.supervisors.checkpoint).
    """

    kind = "workflow"
    durable_steps = False  # serial workflows: a step's checkpoint is written before the next
    cancel_grace_s = 2.0  # how long a step that watches its token has to return by itself

    def __init__(self, name: str, *, description: str = "", checkpoint: bool = True) -> None:
        super().__init__(name, description=description)
        self.checkpoint = checkpoint

    async def run(self, input: str, *, ctx: ToolContext | None = None,
                  inputs: dict[str, Any] | None = None, resume: bool | None = None
                  ) -> RunResult:
        """Run the workflow. `resume=True` reuses the steps a previous run of this workflow in
        this job completed on the same input; None inherits from an enclosing run."""
        if resume is None:
            return await super().run(input, ctx=ctx, inputs=inputs)
        with resuming(resume):
            return await super().run(input, ctx=ctx, inputs=inputs)

    async def _run(self, input: str, ctx: ToolContext, inputs: dict[str, Any]) -> RunResult:
        cp = await self.open_checkpoint(ctx)
        try:
            return await self._execute(input, ctx, inputs, cp)
        finally:
            await cp.flush()

    async def open_checkpoint(self, ctx: ToolContext) -> Checkpoint:
        """This run's checkpoint, at the call chain of `ctx` and the current position."""
        state = MergedState.raw(ctx.state) if ctx.state is not None else None
        return await Checkpoint.open(state, ctx.branch, workflow=self.name,
                                     kind=type(self).__name__, enabled=self.checkpoint,
                                     publish=ctx.publish)

    async def _execute(self, input: str, ctx: ToolContext, inputs: dict[str, Any],
                       cp: Checkpoint) -> RunResult:
        raise NotImplementedError

    async def call(self, step: Step, input: str, ctx: ToolContext, *, index: int, step_id: str,
                   cp: Checkpoint, label: str | None = None, previous: Any = None,
                   inputs: dict[str, Any] | None = None,
                   history: Iterable[RunResult] = ()) -> RunResult:
        """Run one step (see the module docstring); never raises but for our own cancellation."""
        label = label or step.name
        restored = cp.done(step_id, input)
        if restored is not None:
            ctx.publish("workflow.step.skipped", {"workflow": self.name, "step": label,
                                                  "index": index, "reason": RESTORED})
            return restored
        if ctx.cancel.cancelled:
            return _cancelled(label, ctx.cancel.reason)
        call = _Call(step, previous=previous, inputs=inputs, history=tuple(history))
        with step_position(step_id):
            result = await self._watched(call, input, ctx, index=index, label=label)
        cp.record(step_id, input, result)
        if self.durable_steps:
            await cp.sync()
        return result

    async def _wind_down(self, call: _Call, task: asyncio.Future[Any], reason: str) -> None:
        """Give a step that watches its token the grace time to return its cancelled result
        (an actor agent is told to cancel its run meanwhile)."""
        stopping = asyncio.ensure_future(call.cancel_remote(task, reason))
        try:
            await asyncio.wait({task}, timeout=self.cancel_grace_s)
        finally:
            stopping.cancel()
            await asyncio.gather(stopping, return_exceptions=True)

    async def _watched(self, call: _Call, input: str, ctx: ToolContext, *, index: int,
                       label: str) -> RunResult:
        task = asyncio.ensure_future(self.run_step(call, input, ctx, index=index, label=label))
        stop = asyncio.ensure_future(ctx.cancel.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done() and _cooperative(call.step):
                await self._wind_down(call, task, ctx.cancel.reason or "cancelled")
        finally:
            stop.cancel()
            if not task.done():
                task.cancel()  # our caller was cancelled, or the step ignores its token
        try:
            result = await task
        except asyncio.CancelledError:
            if not ctx.cancel.cancelled:
                raise  # this workflow itself is being cancelled by asyncio: let it unwind
            ctx.publish("workflow.step.finished", {
                "workflow": self.name, "step": label, "index": index,
                "status": str(RunStatus.cancelled), "reason": ctx.cancel.reason or ""})
            return _cancelled(label, ctx.cancel.reason)
        except Cancelled as exc:
            return _cancelled(label, exc.reason)
        except HookCancelled as exc:
            cancelled = _cancelled(label, str(exc))
            cancelled.cancelled_by = exc.hook
            return cancelled
        except Exception as exc:  # a step that raised (an actor gone, a timeout): a failure
            return RunResult(status=RunStatus.failed, agent=label,
                             reason=f"{type(exc).__name__}: {exc}")
        if not isinstance(result, RunResult):  # a workflow_step hook replaced it by a value
            return RunResult(status=RunStatus.completed, agent=label, output=result,
                             text=output_text(result))
        return result


def _cancelled(label: str, reason: str | None) -> RunResult:
    return RunResult(status=RunStatus.cancelled, agent=label, reason=reason or "cancelled")


def previous_results() -> tuple[RunResult, ...]:
    return _PREVIOUS.get()


# -- concurrent blocks ------------------------------------------------------------------------

class Block:
    """The branches (or items) of one concurrent block: one cancel scope under the workflow's,
    and one merged view of the state per branch, sharing the block's start versions and
    collecting its conflicts."""

    def __init__(self, ctx: ToolContext, rules: MergeRules | None) -> None:
        self.ctx = ctx
        self.token = ctx.cancel.child()
        inherited = ctx.state.rules if isinstance(ctx.state, MergedState) else None
        self.rules = rules or inherited or MergeRules()
        self.start: dict[str, int | None] = {}
        self.conflicts: list[Conflict] = []

    def branch(self, writer: str) -> ToolContext:
        ctx = replace(self.ctx, cancel=self.token.child())
        if self.ctx.state is not None:
            ctx.state = MergedState(self.ctx.state, self.rules, writer=writer,
                                    publish=ctx.publish, start=self.start,
                                    conflicts=self.conflicts)
        return ctx

    @property
    def stopped(self) -> bool:
        return self.token.cancelled

    def stop(self, reason: str) -> None:
        self.token.cancel(reason)

    def note(self) -> str:
        """The conflicts of the block, for its result's reason."""
        if not self.conflicts:
            return ""
        shown = "; ".join(c.describe() for c in self.conflicts[:5])
        more = f" and {len(self.conflicts) - 5} more" if len(self.conflicts) > 5 else ""
        return f"{len(self.conflicts)} state conflict(s): {shown}{more}"


def join_reason(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def is_function(target: Any) -> bool:
    """A plain Python function (not an agent, handle, workflow or tool)."""
    return callable(target) and not isinstance(target, Tool) and not (
        hasattr(target, "run") and hasattr(target, "name"))
