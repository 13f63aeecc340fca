"""What every workflow and pattern is built from.

`Pattern` is the base of workflows (Sequential, Parallel...) and patterns (delegation, swarm,
consensus, saga): like an agent it has a name and `run(input, ctx=...) -> RunResult`, so
patterns nest inside each other and wrap as tools (`as_tool`).

`as_step` turns anything runnable into a `Step`: an Agent (in this process), an AgentHandle
(an agent in an actor), another Pattern, a Tool, or a plain Python function. `Bind` adds the
explicit state keys of a step: its input rendered from a template over the run's inputs, the
previous step's output and chosen state keys; its output written to a key.

Plain Python: the same code runs in a test, in a driver, or inside a supervisor actor.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

import jinja2

from llmspell.agents.agent import Agent
from llmspell.agents.env import AgentEnv
from llmspell.agents.result import RunResult, RunStatus
from llmspell.agents.spec import SpecError, _compiled
from llmspell.llm.types import Usage
from llmspell.runtime.errors import Cancelled, HookCancelled
from llmspell.runtime.hooks import HookPoint
from llmspell.runtime.messages import new_id
from llmspell.supervisors.workers import is_actor_agent
from llmspell.tools.agent_tool import AgentTool
from llmspell.tools.base import Tool, render_result
from llmspell.tools.context import ToolContext

__all__ = ["Bind", "Pattern", "Step", "as_step", "env_context", "output_text", "root_context",
           "run_watched", "sum_usage"]

_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9_.-]{0,63}$")


@runtime_checkable
class Step(Protocol):
    """One unit of a pattern. `run` never raises for a failed run; it returns its result."""

    @property
    def name(self) -> str: ...

    async def run(self, input: str, *, ctx: ToolContext | None = None) -> RunResult: ...


def root_context(name: str, ctx: ToolContext | None) -> ToolContext:
    """The context a pattern runs in: its caller's, one level down, or a fresh root."""
    if ctx is None:
        return ToolContext(chain=(name,))
    return ctx.for_callee(name)


class Pattern:
    """Base class of workflows and patterns. Subclasses implement `_run`."""

    kind = "pattern"

    def __init__(self, name: str, *, description: str = "") -> None:
        if not _NAME.match(name):
            raise SpecError(f"{self.kind} name {name!r}: use a letter, then up to 63 letters, "
                            "digits, _, . or -")
        self.name = name
        self.description = description

    async def run(self, input: str, *, ctx: ToolContext | None = None,
                  inputs: dict[str, Any] | None = None) -> RunResult:
        ctx = root_context(self.name, ctx)
        started = time.perf_counter()
        ctx.publish(f"{self.kind}.started", {"name": self.name, "input": input[:2000]})
        try:
            result = await self._run(input, ctx, inputs or {"input": input})
        except Cancelled as exc:
            result = self.result(RunStatus.cancelled, reason=exc.reason)
        except HookCancelled as exc:
            result = self.result(RunStatus.cancelled, reason=str(exc))
            result.cancelled_by = exc.hook
        ctx.publish(f"{self.kind}.finished", {
            "name": self.name, "status": str(result.status), "reason": result.reason[:1000],
            "elapsed_ms": round((time.perf_counter() - started) * 1e3, 3)})
        return result

    async def _run(self, input: str, ctx: ToolContext, inputs: dict[str, Any]) -> RunResult:
        raise NotImplementedError

    def result(self, status: RunStatus, *, output: Any = None, reason: str = "",
               children: list[RunResult] | None = None) -> RunResult:
        children = children or []
        return RunResult(status=status, agent=self.name, output=output,
                         text=output_text(output), reason=reason, children=children,
                         usage=sum_usage(children),
                         cost_usd=sum(c.cost_usd for c in children))

    async def run_step(self, step: Step, input: str, ctx: ToolContext, *, index: int,
                       label: str | None = None) -> RunResult:
        """Run one step under the workflow_step hooks, with its events."""
        name = label or step.name
        payload = {"workflow": self.name, "step": name, "index": index, "input": input}

        async def call(p: dict[str, Any], _: str | None) -> RunResult:
            return await step.run(str(p.get("input", input)), ctx=ctx)

        ctx.publish("workflow.step.started", {"workflow": self.name, "step": name,
                                              "index": index})
        if ctx.hooks is not None:
            result: RunResult = await ctx.hooks.call(
                HookPoint.before_workflow_step, HookPoint.after_workflow_step, payload, call,
                job_id=ctx.job_id, actor=self.name)
        else:
            result = await call(payload, None)
        ctx.publish("workflow.step.finished", {
            "workflow": self.name, "step": name, "index": index, "status": str(result.status),
            "reason": result.reason[:500]})
        return result

    def as_tool(self, *, name: str | None = None, description: str | None = None,
                requires_approval: bool = False) -> AgentTool:
        return AgentTool(self, name=name, description=description or self.description or
                         f"Run the {self.kind} {self.name!r}.",
                         requires_approval=requires_approval)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


# -- adapters ---------------------------------------------------------------------------------

class _RunnableStep:
    """An Agent, AgentHandle, LocalAgent or RemoteAgent: anything with run(input, ctx=)."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.name = str(target.name)

    async def run(self, input: str, *, ctx: ToolContext | None = None) -> RunResult:
        result = await self.target.run(input, ctx=ctx)
        if isinstance(result, RunResult):
            return result
        return RunResult.model_validate(result) if isinstance(result, dict) else RunResult(
            status=RunStatus.completed, agent=self.name, output=result,
            text=output_text(result))


class _ToolStep:
    """A tool as a step: the input is its JSON arguments (or, for one-field tools, the value)."""

    def __init__(self, tool: Tool) -> None:
        self.tool = tool
        self.name = tool.name

    async def run(self, input: str, *, ctx: ToolContext | None = None) -> RunResult:
        ctx = ctx or ToolContext()
        try:
            value = await self.tool.invoke(self._arguments(input), ctx)
        except Cancelled:
            raise
        except Exception as exc:  # a failing step is a failed result, never a crash
            return RunResult(status=RunStatus.failed, agent=self.name, reason=str(exc))
        return RunResult(status=RunStatus.completed, agent=self.name, output=value,
                         text=render_result(value))

    def _arguments(self, input: str) -> dict[str, Any] | str:
        try:
            parsed = json.loads(input)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            return parsed
        fields = list(self.tool.Args.model_fields)
        return {fields[0]: input} if len(fields) == 1 else input


class _FunctionStep:
    """A Python function of (input) or (input, ctx), sync or async, as a step."""

    def __init__(self, fn: Callable[..., Any], name: str | None = None) -> None:
        self.fn = fn
        self.name: str = name or str(getattr(fn, "__name__", "function"))
        params = inspect.signature(fn).parameters
        self._wants_ctx = len(params) >= 2

    async def run(self, input: str, *, ctx: ToolContext | None = None) -> RunResult:
        args: tuple[Any, ...] = (input, ctx or ToolContext()) if self._wants_ctx else (input,)
        try:
            value = self.fn(*args)
            if inspect.isawaitable(value):
                value = await value
        except (Cancelled, asyncio.CancelledError):
            raise
        except Exception as exc:
            return RunResult(status=RunStatus.failed, agent=self.name,
                             reason=f"{type(exc).__name__}: {exc}")
        if isinstance(value, RunResult):
            return value
        return RunResult(status=RunStatus.completed, agent=self.name, output=value,
                         text=output_text(value))


def as_step(target: Any, *, name: str | None = None) -> Step:
    """Anything runnable as a Step (see the module docstring)."""
    if isinstance(target, Bind | Pattern | _RunnableStep | _ToolStep | _FunctionStep):
        return target
    if isinstance(target, Tool):
        return _ToolStep(target)
    if hasattr(target, "run") and hasattr(target, "name"):
        return _RunnableStep(target)
    if callable(target):
        return _FunctionStep(target, name)
    raise TypeError(f"cannot use {target!r} as a step: give an agent, an agent handle, a "
                    "workflow or pattern, a tool or a function")


class Bind:
    """A step with explicit state: its input from a template, its output to a state key.

    The template (Jinja2, sandboxed) sees `input` (what the workflow passed), `inputs` (the
    job's inputs), `previous` (the previous step's output) and `state` (the keys named in
    `state_keys`, by their last name). The output is written to `output_key` when the step
    completes, so later steps, other agents and a resumed job find it there.
    """

    def __init__(self, step: Any, *, input: str | None = None, output_key: str | None = None,
                 state_keys: list[str] | None = None, name: str | None = None) -> None:
        self.step = as_step(step)
        self.name = name or self.step.name
        self.template = input
        self.output_key = output_key
        self.state_keys = list(state_keys or [])
        if input is not None:
            try:
                _compiled(input)
            except jinja2.TemplateSyntaxError as exc:
                raise SpecError(f"step {self.name!r} input template, line {exc.lineno}: "
                                f"{exc.message}") from None

    async def run(self, input: str, *, ctx: ToolContext | None = None,
                  previous: Any = None, inputs: dict[str, Any] | None = None) -> RunResult:
        ctx = ctx or ToolContext()
        text = input
        if self.template is not None:
            text = await self.render(input, ctx, previous, inputs or {"input": input})
        result = await self.step.run(text, ctx=ctx)
        if result.ok and self.output_key is not None and ctx.state is not None:
            await ctx.state.set(self.output_key, _storable(result.output))
        return result

    async def render(self, input: str, ctx: ToolContext, previous: Any,
                     inputs: dict[str, Any]) -> str:
        state: dict[str, Any] = {}
        if self.state_keys and ctx.state is not None:
            values = await asyncio.gather(*(ctx.state.get(k) for k in self.state_keys))
            state = {k.rsplit(":", 1)[-1]: v for k, v in zip(self.state_keys, values,
                                                                strict=True)}
        try:
            return str(_compiled(self.template or "").render(
                input=input, inputs=inputs, previous=previous, state=state))
        except jinja2.TemplateError as exc:
            raise SpecError(f"step {self.name!r} input template: {exc}") from None


# -- running members of a pattern ---------------------------------------------------------------

def env_context(members: Any) -> ToolContext | None:
    """A root context for a pattern run without one: the env of its first in-process agent (job,
    state, events, hooks), so the pattern's events and state go where its agents' go."""
    for member in members:
        env = getattr(getattr(member, "target", member), "env", None)
        if isinstance(env, AgentEnv):
            return ToolContext(job_id=env.job_id, sandbox=env.sandbox, state=env.state,
                               emit=env.emit, hooks=env.hooks, max_depth=env.max_depth)
    return None


async def run_watched(step: Step, input: str, ctx: ToolContext, *,
                      grace: float = 2.0) -> RunResult:
    """Run a member of a pattern while watching `ctx.cancel`; every outcome is a RunResult.

    An agent in an actor (its run takes a run id, it has `cancel`) runs under a run id and is
    told to cancel that run when the token fires, since the token does not cross processes.
    Steps that stop by themselves when the token fires (agents, patterns, actor agents) then
    get `grace` seconds to return their own cancelled result; other steps (functions, tools)
    are interrupted at once. A raised error (an actor that died, a timeout) becomes a failed
    result.
    """
    target = getattr(step, "target", None)
    run_id = new_id() if is_actor_agent(target) else None
    task = asyncio.ensure_future(_run_member(step, target, run_id, input, ctx))
    stop = asyncio.ensure_future(ctx.cancel.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done() and (run_id is not None or _cooperative(step)):
            await _cancel_remote(target, run_id, ctx.cancel.reason)
            await asyncio.wait({task}, timeout=grace)
    except asyncio.CancelledError:  # our caller was interrupted: the remote run stops too
        await asyncio.shield(_cancel_remote(target, run_id, ctx.cancel.reason or "interrupted"))
        task.cancel()
        raise
    finally:
        stop.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return RunResult(status=RunStatus.cancelled, agent=step.name,
                         reason=ctx.cancel.reason or "cancelled")
    return _member_result(step.name, task)


async def _run_member(step: Step, target: Any, run_id: str | None, input: str,
                      ctx: ToolContext) -> RunResult:
    if run_id is None:
        return await step.run(input, ctx=ctx)
    return await _RunnableStep(_WithRunId(target, run_id)).run(input, ctx=ctx)


class _WithRunId:
    def __init__(self, target: Any, run_id: str) -> None:
        self.target, self.run_id, self.name = target, run_id, target.name

    async def run(self, input: str, *, ctx: ToolContext | None = None) -> Any:
        return await self.target.run(input, ctx=ctx, run_id=self.run_id)


def _member_result(name: str, task: asyncio.Future[RunResult]) -> RunResult:
    try:
        return task.result()
    except Cancelled as exc:
        return RunResult(status=RunStatus.cancelled, agent=name, reason=exc.reason)
    except HookCancelled as exc:
        return RunResult(status=RunStatus.cancelled, agent=name, reason=str(exc),
                         cancelled_by=exc.hook)
    except Exception as exc:
        return RunResult(status=RunStatus.failed, agent=name,
                         reason=f"{type(exc).__name__}: {exc}")


async def _cancel_remote(target: Any, run_id: str | None, reason: str | None) -> None:
    if run_id is not None:
        with contextlib.suppress(Exception):  # the actor may be gone, and its run with it
            await target.cancel(run_id, reason or "cancelled by its caller")


def _cooperative(step: Any) -> bool:
    """An agent or a pattern in this process: it watches its cancel token."""
    inner = step.step if isinstance(step, Bind) else step
    return isinstance(inner, Pattern) or isinstance(getattr(inner, "target", None), Agent)


# -- small helpers ----------------------------------------------------------------------------

def output_text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else render_result(value)


def sum_usage(results: list[RunResult]) -> Usage:
    total = Usage()
    for r in results:
        total = total + r.usage
    return total


def _storable(value: Any) -> Any:
    """A value the state store can pack (pydantic models as their JSON data)."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return value


StepFn = Callable[[str], Awaitable[Any] | Any]
