"""The agent loop: plain Python, testable without Ray (the actors only host it).

One `AgentRunner` owns one agent's conversation. A run goes:

    before_agent_run hooks
    turn: memory policy -> LLM call (streamed deltas as events) -> the answer joins the history
          tool calls of the answer run in parallel (before/after_tool_call hooks around each);
          results join the history; a handoff call ends the run; a call that needs approval
          pauses it
    ... until a final answer (validated against the output schema, one repair retry),
    a handoff, a pause or the turn limit
    after_agent_run hooks

Every outcome is a RunResult with a status and a reason. Bad tool arguments, unknown tools and
failing tools go back to the model as tool errors it can correct; they never end the run.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

import jsonschema

from llmspell.agents.env import AgentEnv
from llmspell.agents.lifecycle import AgentStatus, Lifecycle
from llmspell.agents.memory import apply_memory, transcript, window
from llmspell.agents.result import Handoff, PendingApproval, RunResult, RunStatus
from llmspell.agents.spec import AgentSpec, SpecError, render_instructions
from llmspell.llm.client import LLM
from llmspell.llm.errors import LLMError
from llmspell.llm.types import Message, OutputSchema, Response, ToolCall, ToolSpec, Usage
from llmspell.runtime.cancel import CancelToken
from llmspell.runtime.errors import Cancelled, HookCancelled, LlmspellError
from llmspell.runtime.hooks import HookContext, HookPoint
from llmspell.runtime.messages import new_id
from llmspell.tools.base import Tool, render_result
from llmspell.tools.context import ToolContext
from llmspell.tools.errors import ToolError, ToolNotFound
from llmspell.tools.registry import ToolRegistry

__all__ = ["HANDOFF_PREFIX", "AgentBusy", "AgentRunner", "Decision"]

HANDOFF_PREFIX = "transfer_to_"
_S = AgentStatus


class AgentBusy(LlmspellError):
    """The agent cannot take a run now (it waits for an approval, or it is stopped)."""


@dataclass
class Decision:
    approved: bool
    reason: str = ""


@dataclass
class _Run:
    run_id: str
    ctx: ToolContext
    llm: LLM
    inputs: dict[str, Any]
    turn: int = 0
    repaired: bool = False
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    added: list[Message] = field(default_factory=list)
    tags: dict[str, Any] = field(default_factory=dict)
    tools: ToolRegistry | None = None  # with the run's own tools (a delegation's), else None
    tool_names: list[str] | None = None  # the tools this run may call, if not the spec's


class AgentRunner:
    def __init__(self, spec: AgentSpec, env: AgentEnv, *,
                 history: list[Message] | None = None) -> None:
        self.spec = spec
        self.env = env
        self.history: list[Message] = list(history or [])
        self.lifecycle = Lifecycle(spec.name, env.emit)
        self.lifecycle.to(_S.ready)
        self.pending: PendingApproval | None = None
        self.usage = Usage()
        self.cost_usd = 0.0
        self.runs = 0
        for name in spec.tools:  # a spec naming a tool nobody registered fails now, not mid-run
            env.tools.get(name)

    @property
    def status(self) -> AgentStatus:
        return self.lifecycle.status

    @property
    def model(self) -> str:
        model = self.spec.model_config_.model
        return model or self.env.default_model

    # -- public entry points ------------------------------------------------------------------

    async def run(self, input: str, *, inputs: dict[str, Any] | None = None,
                  ctx: ToolContext | None = None, run_id: str | None = None,
                  tools: list[Tool] | None = None) -> RunResult:
        """`tools`: tools for this run only, beside the spec's (a delegation gives a manager
        in an actor its delegate_to_ tools this way)."""
        clash = [t.name for t in tools or () if t.name in self.spec.tools]
        if clash:
            raise SpecError(f"agent {self.spec.name!r} already has tool(s) named "
                            f"{', '.join(clash)}; a run cannot add them again")
        self._enter_run()
        run = self._new_run(run_id or new_id(), ctx, inputs or {"input": input})
        if tools:
            run.tools = ToolRegistry(self.env.tools)
            for tool in tools:
                run.tools.register(tool, replace=True)
            run.tool_names = [*self.spec.tools, *(t.name for t in tools)]
        self._publish(run, "agent.run.started", {"input": input[:2000]})

        async def body(payload: dict[str, Any], _: str | None) -> RunResult:
            self._append(run, Message.user(str(payload.get("input", input))))
            return await self._turns(run)

        return await self._guarded(run, body, {"agent": self.spec.name, "input": input,
                                               "run_id": run.run_id, "branch": run.ctx.branch})

    async def resume(self, pending: PendingApproval, decisions: dict[str, Decision | bool], *,
                     ctx: ToolContext | None = None) -> RunResult:
        """Continue a paused run: approved calls run, rejected ones tell the model why."""
        if self.pending is None or self.pending.run_id != pending.run_id:
            if self.status not in (_S.ready, _S.waiting_approval):
                raise AgentBusy(f"agent {self.spec.name!r} cannot resume a run while "
                                f"{self.status}")
            self.restore(pending.messages, pending)  # resumed from stored state elsewhere
        missing = [c for c in pending.approvals_needed if c not in decisions]
        if missing:
            raise ValueError(f"run {pending.run_id}: no decision for call(s) {', '.join(missing)}")
        self.pending = None
        self.lifecycle.to(_S.running, "resumed")
        run = self._new_run(pending.run_id, ctx, {})
        run.turn, run.usage = pending.turn, pending.usage.model_copy()

        async def body(_: Any, __: str | None) -> RunResult:
            results = dict(pending.done)
            todo = []
            for call in pending.calls:
                if call.id in results:
                    continue
                d = decisions.get(call.id, True)
                d = d if isinstance(d, Decision) else Decision(bool(d))
                if d.approved:
                    todo.append(call)
                else:
                    results[call.id] = (f"the call was rejected by a human reviewer"
                                        f"{': ' + d.reason if d.reason else ''}", True)
            results.update(await self._run_tools(run, todo, approved=True))
            self._append_results(run, pending.calls, results)
            run.turn += 1
            return await self._turns(run)

        return await self._guarded(run, body, {"agent": self.spec.name, "resume": pending.run_id,
                                               "run_id": run.run_id})

    def restore(self, history: list[Message], pending: PendingApproval | None) -> None:
        """Take back a conversation (and a paused run) saved before a restart."""
        self.history = list(history)
        self.pending = pending
        if pending is not None:
            self.lifecycle = Lifecycle(self.spec.name, self.env.emit, _S.waiting_approval)

    def pause(self, reason: str = "paused") -> None:
        """Take no new runs until `unpause` (a supervisor's hold; a running run finishes)."""
        self.lifecycle.to(_S.paused, reason)

    def unpause(self) -> None:
        self.lifecycle.to(_S.ready, "unpaused")

    def stop(self, reason: str = "stopped") -> None:
        if self.status != _S.stopped:
            self.lifecycle.to(_S.stopped, reason)

    def reset(self) -> None:
        """Forget the conversation (a new session)."""
        self.history.clear()

    # -- the run ------------------------------------------------------------------------------

    def _enter_run(self) -> None:
        if self.status == _S.failed:
            self.lifecycle.to(_S.ready, "new run after a failure")
        if self.status == _S.waiting_approval:
            assert self.pending is not None
            raise AgentBusy(f"agent {self.spec.name!r} is waiting for approval of run "
                            f"{self.pending.run_id}; approve or reject it first")
        if self.status != _S.ready:
            raise AgentBusy(f"agent {self.spec.name!r} cannot start a run while {self.status}")
        self.lifecycle.to(_S.running)

    def _new_run(self, run_id: str, ctx: ToolContext | None, inputs: dict[str, Any]) -> _Run:
        if ctx is None:
            ctx = ToolContext(job_id=self.env.job_id, chain=(self.spec.name,),
                              sandbox=self.env.sandbox, state=self.env.state, emit=self.env.emit,
                              max_depth=self.env.max_depth, hooks=self.env.hooks)
        else:
            ctx = ctx.for_callee(self.spec.name)
        tags = {"agent": self.spec.name, "run_id": run_id, "branch": ctx.branch}
        return _Run(run_id=run_id, ctx=ctx, llm=self.env.llm(self.spec.name, tags),
                    inputs=inputs, tags=tags)

    async def _guarded(self, run: _Run, body: Any, payload: dict[str, Any]) -> RunResult:
        """Run `body` under the agent-run hooks; every way out becomes a RunResult."""
        started = time.perf_counter()
        try:
            result: RunResult = await self.env.hooks.call(
                HookPoint.before_agent_run, HookPoint.after_agent_run, payload, body,
                job_id=self.env.job_id, actor=self.spec.name)
            if not isinstance(result, RunResult):  # a hook replaced the run with a plain value
                result = self._result(run, RunStatus.completed, output=result, text=str(result))
        except HookCancelled as exc:
            result = self._result(run, RunStatus.cancelled, reason=str(exc), by=exc.hook)
        except Cancelled as exc:
            result = self._result(run, RunStatus.cancelled, reason=exc.reason)
        except (LLMError, SpecError) as exc:
            result = self._result(run, RunStatus.failed, reason=str(exc))
        except BaseException:
            self.lifecycle.to(_S.failed, "unexpected error") if self.lifecycle.can(
                _S.failed) else None
            raise
        self._finish(run, result, time.perf_counter() - started)
        return result

    def _finish(self, run: _Run, result: RunResult, elapsed: float) -> None:
        self.runs += 1
        self.usage = self.usage + run.usage
        self.cost_usd += run.cost_usd
        if result.status == RunStatus.paused:
            self.pending = result.pending
            self.lifecycle.to(_S.waiting_approval, "a tool call needs approval")
        elif result.status == RunStatus.failed:
            self.lifecycle.to(_S.failed, result.reason[:200])
        elif self.status != _S.ready:
            self.lifecycle.to(_S.ready, str(result.status))
        self._publish(run, "agent.run.finished", {
            "status": str(result.status), "reason": result.reason[:1000], "turns": result.turns,
            "usage": result.usage.model_dump(), "cost_usd": result.cost_usd,
            "elapsed_ms": round(elapsed * 1000, 3),
        })

    async def _turns(self, run: _Run) -> RunResult:
        while run.turn < self.spec.max_turns:
            run.ctx.cancel.raise_if_cancelled()
            response = await self._model_turn(run)
            self._append(run, response.message)
            calls = response.message.tool_calls
            if not calls:
                final = await self._final(run, response)
                if final is not None:
                    return final
                continue  # a repair turn for structured output
            handoff = next((c for c in calls if c.name.startswith(HANDOFF_PREFIX)
                            and c.name[len(HANDOFF_PREFIX):] in self.spec.handoffs), None)
            if handoff is not None:
                return self._handoff(run, calls, handoff)
            paused = await self._dispatch(run, calls)
            if paused is not None:
                return paused
            run.turn += 1
        return self._result(run, RunStatus.max_turns,
                            reason=f"no final answer within max_turns={self.spec.max_turns}")

    async def _model_turn(self, run: _Run) -> Response:
        await self._apply_memory(run)
        system = render_instructions(self.spec, run.inputs, await self._state_view())
        messages = [Message.system(system), *self.request_messages()]
        options: dict[str, Any] = {"tools": self._tool_specs(run),
                                   "max_tokens": self.spec.max_tokens,
                                   "temperature": self.spec.temperature}
        if run.tool_names or self.spec.tools or self.spec.handoffs:
            options["tool_choice"] = self.spec.tool_choice
        if self.spec.output_schema is not None:
            options["output_schema"] = OutputSchema(name=f"{self.spec.name}_output",
                                                    schema=self.spec.output_schema)
        model = self.spec.model_config_ if self.spec.model_config_.model else self.model
        self._publish(run, "agent.turn", {"turn": run.turn})
        if self.spec.stream:
            call = self._streamed(run, model, messages, options)
        else:
            call = run.llm.complete(model, messages, **options)
        response = await _until_cancelled(call, run.ctx.cancel)
        run.usage = run.usage + response.usage
        run.cost_usd += response.cost_usd or 0.0
        return response

    async def _streamed(self, run: _Run, model: Any, messages: list[Message],
                        options: dict[str, Any]) -> Response:
        hooks = self.env.hooks
        watch = hooks.has_hooks(HookPoint.on_stream_delta)
        final: Response | None = None
        async for chunk in run.llm.stream(model, messages, **options):
            if chunk.text:
                self._publish(run, "agent.llm.delta", {"text": chunk.text})
                if watch:
                    await hooks.run(HookPoint.on_stream_delta, HookContext(
                        HookPoint.on_stream_delta, chunk.text, self.env.job_id, self.spec.name))
            if chunk.response is not None:
                final = chunk.response
        if final is None:
            raise LLMError("llmspell", self.model, "the stream ended without a final response")
        return final

    async def _final(self, run: _Run, response: Response) -> RunResult | None:
        text = response.text
        if self.spec.output_schema is None:
            return self._result(run, RunStatus.completed, output=text, text=text)
        problem, parsed = _check_output(text, self.spec.output_schema)
        if problem is None:
            return self._result(run, RunStatus.completed, output=parsed, text=text)
        if run.repaired:
            return self._result(run, RunStatus.failed, text=text,
                                reason=f"output does not match the schema after one repair: "
                                       f"{problem}")
        run.repaired = True
        self._publish(run, "agent.output.repair", {"problem": problem[:500]})
        self._append(run, Message.user(
            f"Your reply does not match the required JSON schema: {problem}. "
            "Reply again with only a JSON value that matches the schema."))
        return None

    def _handoff(self, run: _Run, calls: list[ToolCall], call: ToolCall) -> RunResult:
        target = call.name[len(HANDOFF_PREFIX):]
        args = call.arguments or {}
        handoff = Handoff(target=target, reason=str(args.get("reason", "")),
                          summary=str(args.get("summary", "")), call_id=call.id)
        # Every call of the answer gets a result, so the history stays valid for the next agent.
        self._append_results(run, calls, {c.id: (f"handed off to {target}" if c is call else
                                                 "not run: the conversation was handed off", False)
                                          for c in calls})
        self._publish(run, "agent.handoff", handoff.model_dump())
        return self._result(run, RunStatus.handoff, reason=handoff.reason, handoff=handoff)

    # -- tools --------------------------------------------------------------------------------

    async def _dispatch(self, run: _Run, calls: list[ToolCall]) -> RunResult | None:
        registry, names = self._tools(run)
        need = [c.id for c in calls if c.name in registry and c.name in names
                and registry.get(c.name).requires_approval]
        now = [c for c in calls if c.id not in need]
        try:
            results = await self._run_tools(run, now)
        except (Cancelled, asyncio.CancelledError):
            # Every call of the answer gets a result, so the history stays valid for the next
            # run (a provider refuses a conversation with a tool call left unanswered).
            self._append_results(run, calls, {c.id: ("the run was cancelled before this call's "
                                                     "result came back", True) for c in calls})
            raise
        if need:
            pending = PendingApproval(run_id=run.run_id, agent=self.spec.name, turn=run.turn,
                                      calls=calls, approvals_needed=need,
                                      done={k: list(v) for k, v in results.items()},
                                      usage=run.usage, messages=list(self.history))
            self._publish(run, "agent.approval.requested", {
                "calls": [c.model_dump() for c in calls if c.id in need]})
            return self._result(run, RunStatus.paused, pending=pending,
                                reason=f"{len(need)} tool call(s) wait for approval")
        self._append_results(run, calls, results)
        return None

    async def _run_tools(self, run: _Run, calls: list[ToolCall], *, approved: bool = False
                         ) -> dict[str, tuple[str, bool]]:
        if not calls:
            return {}
        self.lifecycle.to(_S.waiting_tool, f"{len(calls)} tool call(s)")
        try:
            async with asyncio.TaskGroup() as group:
                tasks = {c.id: group.create_task(self._run_tool(run, c)) for c in calls}
        except BaseExceptionGroup as group_error:
            raise group_error.exceptions[0] from None  # a cancellation: the run stops
        finally:
            if self.status == _S.waiting_tool:
                self.lifecycle.to(_S.running)
        return {cid: task.result() for cid, task in tasks.items()}

    async def _run_tool(self, run: _Run, call: ToolCall) -> tuple[str, bool]:
        """(content, is_error) for one call. Only cancellation escapes."""
        started = time.perf_counter()
        self._publish(run, "agent.tool.call", {"tool": call.name, "call_id": call.id,
                                               "arguments": call.arguments})
        try:
            content, is_error = render_result(await self._call_tool(run, call)), False
        except (Cancelled, asyncio.CancelledError):
            raise
        except HookCancelled as exc:
            content, is_error = f"the call was refused: {exc.reason}", True
        except ToolError as exc:
            content, is_error = str(exc), True
        except Exception as exc:  # a tool's own bug goes back to the model, not up the stack
            content, is_error = f"tool {call.name!r} failed: {type(exc).__name__}: {exc}", True
        self._publish(run, "agent.tool.result", {
            "tool": call.name, "call_id": call.id, "is_error": is_error,
            "content": content[:2000],
            "elapsed_ms": round((time.perf_counter() - started) * 1e3, 3),
        })
        return content, is_error

    async def _call_tool(self, run: _Run, call: ToolCall) -> Any:
        registry, names = self._tools(run)
        if call.name not in names:
            raise ToolNotFound(call.name, [n for n in names if n in registry.suggest(call.name)]
                               or names[:5])
        tool = registry.get(call.name)
        if call.invalid_arguments is not None:
            arguments: dict[str, Any] | str = call.invalid_arguments
        else:
            arguments = call.arguments
        ctx = _call_ctx(run, call)

        async def execute(payload: dict[str, Any], target: str | None) -> Any:
            chosen = registry.get(target) if target and target != tool.name else tool
            return await self.env.executor.execute(chosen, payload["arguments"], ctx)

        return await self.env.hooks.call(
            HookPoint.before_tool_call, HookPoint.after_tool_call,
            {"tool": tool.name, "arguments": arguments, "call_id": call.id,
             "agent": self.spec.name, "branch": run.ctx.branch, "idempotent": tool.idempotent},
            execute, target=tool.name, job_id=self.env.job_id, actor=self.spec.name)

    def _tools(self, run: _Run) -> tuple[ToolRegistry, list[str]]:
        """The tools a run may call: the spec's, plus the run's own."""
        if run.tools is None or run.tool_names is None:
            return self.env.tools, self.spec.tools
        return run.tools, run.tool_names

    def _tool_specs(self, run: _Run) -> list[ToolSpec]:
        registry, names = self._tools(run)
        specs = registry.specs(names)
        for target in self.spec.handoffs:
            specs.append(ToolSpec(
                name=f"{HANDOFF_PREFIX}{target}",
                description=f"Hand the conversation over to {target}. Say why, and summarise "
                            "what is known so far.",
                parameters={"type": "object", "properties": {
                    "reason": {"type": "string"}, "summary": {"type": "string"}},
                    "required": ["reason"]}))
        return specs

    # -- history and memory -------------------------------------------------------------------

    def _append(self, run: _Run, message: Message) -> None:
        self.history.append(message)
        run.added.append(message)

    def _append_results(self, run: _Run, calls: list[ToolCall],
                        results: dict[str, Any]) -> None:
        for call in calls:
            content, is_error = results[call.id]
            self._append(run, Message.tool(call.id, content, is_error=bool(is_error)))

    async def _apply_memory(self, run: _Run) -> None:
        policy = self.spec.memory
        if policy.kind == "window":
            return  # the window is applied when the request is built, the history stays whole

        async def summarize(old: list[Message]) -> str:
            model = policy.summary_model or self.model
            response = await run.llm.complete(model, [
                Message.system("Summarise this conversation for the assistant who continues "
                               "it: keep facts, decisions, open questions and tool results."),
                Message.user(transcript(old))], max_tokens=512)
            run.usage = run.usage + response.usage
            return response.text

        kept, summarised = await apply_memory(self.history, policy, self.model, summarize)
        if summarised:
            dropped = len(self.history) - len(kept) + 2
            self.history = kept
            self._publish(run, "agent.memory.summarized", {"replaced_messages": dropped})

    async def _state_view(self) -> dict[str, Any]:
        """The state keys the instructions read, by their last name (job:plan -> plan)."""
        keys = self.spec.state_keys
        if not keys or self.env.state is None:
            return {}
        values = await asyncio.gather(*(self.env.state.get(k) for k in keys))
        return {k.rsplit(":", 1)[-1]: v for k, v in zip(keys, values, strict=True)}

    # -- results and events -------------------------------------------------------------------

    def _result(self, run: _Run, status: RunStatus, *, output: Any = None, text: str = "",
                reason: str = "", by: str | None = None, handoff: Handoff | None = None,
                pending: PendingApproval | None = None) -> RunResult:
        return RunResult(status=status, agent=self.spec.name, output=output, text=text,
                         reason=reason, cancelled_by=by, turns=run.turn + 1, usage=run.usage,
                         cost_usd=run.cost_usd, handoff=handoff, pending=pending,
                         run_id=run.run_id, messages=list(run.added))

    def _publish(self, run: _Run, topic: str, payload: dict[str, Any]) -> None:
        self.env.publish(topic, {**payload, **run.tags})

    def request_messages(self) -> list[Message]:
        """The history a turn sends (after the window)."""
        if self.spec.memory.kind == "window":
            return window(self.history, self.spec.memory.max_messages)
        return self.history


async def _until_cancelled(call: Coroutine[Any, Any, Response], token: CancelToken) -> Response:
    """Await a model call, abandoning it as soon as the run is cancelled (a cancelled run starts
    no further work and does not wait for a slow answer it will not use)."""
    task = asyncio.ensure_future(call)
    stop = asyncio.ensure_future(token.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise Cancelled(token.reason or "cancelled")


def _call_ctx(run: _Run, call: ToolCall) -> ToolContext:
    return replace(run.ctx, call_id=call.id, idempotency_key=f"{run.run_id}:{call.id}")


def _check_output(text: str, schema: dict[str, Any]) -> tuple[str | None, Any]:
    try:
        value = json.loads(_strip_fence(text))
    except json.JSONDecodeError as exc:
        return f"not valid JSON ({exc.msg} at char {exc.pos})", None
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(value),
                    key=lambda e: list(e.absolute_path))
    if errors:
        return "; ".join(f"{'/'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}"
                         for e in errors[:5]), None
    return None, value


def _strip_fence(text: str) -> str:
    t = text.strip()
    if t.startswith("```"):
        t = t.split("\n", 1)[1] if "\n" in t else ""
        t = t.rsplit("```", 1)[0]
    return t
