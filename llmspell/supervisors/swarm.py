"""Swarms: peers that hand a conversation to each other, and workers that share a queue.

`Swarm` runs one agent at a time. Its peers hold handoff tools (`transfer_to_<peer>`, from
their spec's `handoffs`); a run that ends with a handoff passes the task to the target with a
brief: the reason, the summary, the chosen state keys with their values, and the conversation
so far as a transcript, so the next agent (in this process or in an actor) really sees it.
Control comes back: the swarm returns to its caller as soon as an agent gives a final answer.

The active agent and the handoff history live in job state (`job:swarm:<name>:active`,
`...:history`, `...:status`), written with compare-and-set, so two drivers cannot clobber
each other silently and a resumed job knows who is active: a run of the same task whose
previous run did not finish (it was cancelled, or its driver died) continues with the active
agent instead of starting over. State keys chosen per swarm (`state_keys`) or per handoff
(`handoff_keys`, by target or by "from->to") travel with each handoff; an agent's private keys
(`agent:<from>:x`) are copied to the target's scope (`agent:<to>:x`).

Ping-pong is stopped twice over: a handoff that would repeat the cycle just completed
(A -> B -> A -> B -> A) fails with the cycle named, and `max_handoffs` bounds every run.
before/after_handoff hooks run around each handoff; each is a `swarm.handoff` event.

`WorkerSwarm` is the other kind: N workers pull subtasks from one queue until it is empty; the
results are merged in the order of the tasks.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field

from llmspell.agents.result import Handoff, RunResult, RunStatus
from llmspell.agents.spec import SpecError
from llmspell.llm.types import Message
from llmspell.runtime.errors import Cancelled, HookCancelled, StateError
from llmspell.runtime.hooks import HookPoint
from llmspell.supervisors.base import (
    Pattern,
    Step,
    as_step,
    env_context,
    output_text,
    run_watched,
)
from llmspell.supervisors.workers import check_prefetch, prefetch_for, run_pool
from llmspell.tools.context import StateAccess, ToolContext

__all__ = ["HandoffRecord", "Swarm", "SwarmResult", "WorkerSwarm", "WorkerSwarmResult"]

RUNNING, DONE = "running", "done"


class HandoffRecord(BaseModel):
    """One handoff, as kept in job state and published as an event."""

    index: int  # 1 for the first handoff of a run
    source: str
    target: str
    reason: str = ""
    summary: str = ""
    state_keys: list[str] = Field(default_factory=list)
    state: dict[str, Any] = Field(default_factory=dict)  # the carried keys' values


class SwarmResult(RunResult):
    path: list[str] = Field(default_factory=list)  # the agents in the order they were active
    handoffs: list[HandoffRecord] = Field(default_factory=list)
    active: str = ""  # who had the conversation last
    resumed: bool = False  # the run continued an unfinished run of the same task


@dataclass
class _Run:
    """One swarm run: who is active, what was said, and what the state keys' versions were."""

    task: str
    active: str
    path: list[str]
    handoffs: list[HandoffRecord] = field(default_factory=list)
    transcript: list[str] = field(default_factory=list)
    next_input: str = ""
    versions: dict[str, int | None] = field(default_factory=dict)
    children: list[RunResult] = field(default_factory=list)
    resumed: bool = False


class _Stop(Exception):  # a reason to end the run early, with its status
    def __init__(self, status: RunStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Swarm(Pattern):
    kind = "swarm"

    def __init__(self, name: str, agents: Sequence[Any], entry: str | None = None, *,
                 max_handoffs: int = 10, state_keys: Sequence[str] = (),
                 handoff_keys: dict[str, list[str]] | None = None, resume: bool = True,
                 description: str = "") -> None:
        super().__init__(name, description=description)
        self.members: dict[str, Step] = {}
        for target in agents:
            step = as_step(target)
            if step.name in self.members:
                raise SpecError(f"swarm {name!r}: two members named {step.name!r}")
            self.members[step.name] = step
        self.entry = entry or next(iter(self.members), "")
        if self.entry not in self.members:
            raise SpecError(f"swarm {name!r}: the entry agent {self.entry!r} is not a member "
                            f"(members: {', '.join(self.members) or 'none'})")
        if max_handoffs < 0:
            raise SpecError(f"swarm {name!r}: max_handoffs must be >= 0")
        self.max_handoffs = max_handoffs
        self.state_keys = list(state_keys)
        self.handoff_keys = dict(handoff_keys or {})
        self.resume = resume
        self._check_handoffs()

    def _check_handoffs(self) -> None:
        """Agents in this process declare their handoffs: each must name a member."""
        for name, step in self.members.items():
            spec = getattr(getattr(step, "target", None), "spec", None)
            for target in getattr(spec, "handoffs", None) or []:
                if target not in self.members:
                    raise SpecError(f"swarm {self.name!r}: {name!r} hands off to {target!r}, "
                                    f"which is not a member ({', '.join(self.members)})")

    def key(self, part: str) -> str:
        """Where the swarm keeps `part` (active, history, status, task) in job state."""
        return f"job:swarm:{self.name}:{part}"

    # -- the run ------------------------------------------------------------------------------

    async def run(self, input: str, *, ctx: ToolContext | None = None,
                  inputs: dict[str, Any] | None = None) -> RunResult:
        ctx = ctx or env_context(self.members.values())
        return await super().run(input, ctx=ctx, inputs=inputs)

    async def _run(self, input: str, ctx: ToolContext, inputs: dict[str, Any]) -> RunResult:
        try:
            run = await self._start(input, ctx)
        except StateError as exc:
            return self._result(_Run(input, self.entry, []), RunStatus.failed,
                                f"swarm state could not be read: {exc}")
        try:
            while True:
                ctx.cancel.raise_if_cancelled()
                result = await run_watched(self.members[run.active], run.next_input, ctx)
                run.children.append(result)
                self._hear(run, result)
                if result.status != RunStatus.handoff or result.handoff is None:
                    return await self._finish(run, result, ctx)
                await self._hand_off(run, result.handoff, ctx)
        except _Stop as stop:
            await self._save(ctx, run, status=DONE, quiet=True)
            return self._result(run, stop.status, stop.reason)
        except Cancelled as exc:  # the state still says running: the task can be resumed
            return self._result(run, RunStatus.cancelled, exc.reason)
        except HookCancelled as exc:  # a hook refused the handoff: a decision, not resumable
            await self._save(ctx, run, status=DONE, quiet=True)
            result = self._result(run, RunStatus.cancelled, str(exc))
            result.cancelled_by = exc.hook
            return result
        except StateError as exc:  # a version conflict: another writer moved the swarm on
            return self._result(run, RunStatus.failed, f"swarm state changed under this run: "
                                                       f"{exc}")

    async def _start(self, input: str, ctx: ToolContext) -> _Run:
        run = _Run(task=input, active=self.entry, path=[self.entry], next_input=input,
                   transcript=[f"user: {input}"])
        if ctx.state is None:
            return run
        stored = await self._read_all(ctx.state, run)
        unfinished = stored.get("status") == RUNNING and stored.get("task") == input
        if self.resume and unfinished and stored.get("active") in self.members:
            self._resume(run, stored, ctx)
        await self._save(ctx, run, status=RUNNING)
        return run

    def _resume(self, run: _Run, stored: dict[str, Any], ctx: ToolContext) -> None:
        """Continue an unfinished run of the same task: the active agent gets the last brief."""
        run.resumed = True
        run.handoffs = [HandoffRecord.model_validate(h) for h in stored.get("history") or []]
        run.active = str(stored["active"])
        run.transcript = [str(line) for line in stored.get("transcript") or run.transcript]
        if run.handoffs:
            run.path = [run.handoffs[0].source, *(h.target for h in run.handoffs)]
            run.next_input = self._brief(run, run.handoffs[-1])
        ctx.publish("swarm.resumed", {"swarm": self.name, "active": run.active,
                                      "handoffs": len(run.handoffs)})

    async def _read_all(self, state: StateAccess, run: _Run) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for part in ("status", "task", "active", "history", "transcript"):
            versioned = await state.get_versioned(self.key(part))
            run.versions[part] = None if versioned is None else versioned.version
            found[part] = None if versioned is None else versioned.value
        return found

    async def _save(self, ctx: ToolContext, run: _Run, *, status: str,
                    quiet: bool = False) -> None:
        """Write the run's position, each key compare-and-set against the version this run
        last saw (a VersionConflict means another writer moved this swarm)."""
        if ctx.state is None:
            return
        values = {"status": status, "task": run.task, "active": run.active,
                  "history": [h.model_dump(mode="json") for h in run.handoffs],
                  "transcript": run.transcript}
        try:
            for part, value in values.items():
                run.versions[part] = await ctx.state.compare_and_set(
                    self.key(part), value, run.versions.get(part))
        except StateError:
            if not quiet:
                raise

    def _hear(self, run: _Run, result: RunResult) -> None:
        """Add what the active agent said (not the brief it was given) to the transcript."""
        messages = result.messages
        if messages and messages[0].role == "user":
            messages = messages[1:]
        run.transcript.extend(_lines(run.active, messages))

    async def _finish(self, run: _Run, result: RunResult, ctx: ToolContext) -> SwarmResult:
        resumable = result.status in (RunStatus.cancelled, RunStatus.paused)
        await self._save(ctx, run, status=RUNNING if resumable else DONE)
        reason = result.reason
        if not result.ok:
            reason = f"agent {run.active!r} ended with status {result.status}" + (
                f": {result.reason}" if result.reason else "")
        out = self._result(run, result.status, reason, output=result.output)
        out.text = result.text or out.text
        out.cancelled_by = result.cancelled_by
        out.pending = result.pending
        return out

    def _result(self, run: _Run, status: RunStatus, reason: str,
                output: Any = None) -> SwarmResult:
        base = self.result(status, output=output, reason=reason, children=run.children)
        base.messages = [m for c in run.children for m in c.messages]
        return SwarmResult(**dict(base), path=run.path, handoffs=run.handoffs,
                           active=run.active, resumed=run.resumed)

    # -- handoffs -----------------------------------------------------------------------------

    async def _hand_off(self, run: _Run, handoff: Handoff, ctx: ToolContext) -> None:
        self._check(run, handoff.target)
        keys = self._keys_for(run.active, handoff.target)
        state = await _read_keys(ctx.state, keys)
        payload = {"swarm": self.name, "from": run.active, "to": handoff.target,
                   "reason": handoff.reason, "summary": handoff.summary, "state_keys": keys,
                   "state": state}

        async def perform(p: dict[str, Any], target: str | None) -> HandoffRecord:
            to = target or str(p.get("to", handoff.target))
            if to != handoff.target:
                self._check(run, to)  # a hook redirected the handoff
            record = HandoffRecord(index=len(run.handoffs) + 1, source=run.active, target=to,
                                   reason=str(p.get("reason", "")),
                                   summary=str(p.get("summary", "")), state_keys=keys,
                                   state=dict(p.get("state") or {}))
            await self._commit(run, record, ctx)
            return record

        if ctx.hooks is None:
            await perform(payload, None)
        else:
            await ctx.hooks.call(HookPoint.before_handoff, HookPoint.after_handoff, payload,
                                 perform, target=handoff.target, job_id=ctx.job_id,
                                 actor=self.name)

    async def _commit(self, run: _Run, record: HandoffRecord, ctx: ToolContext) -> None:
        """The handoff happens: carried private keys, job state, the event, the next brief."""
        await _copy_private(ctx.state, record)
        run.handoffs.append(record)
        run.active = record.target
        run.path.append(record.target)
        run.transcript.append(f"[{record.source} handed off to {record.target}: "
                              f"{record.reason}]")
        run.next_input = self._brief(run, record)
        await self._save(ctx, run, status=RUNNING)
        ctx.publish("swarm.handoff", {
            "swarm": self.name, "index": record.index, "from": record.source,
            "to": record.target, "reason": record.reason, "summary": record.summary[:1000],
            "state_keys": record.state_keys, "state": _capped(record.state)})

    def _check(self, run: _Run, target: str) -> None:
        """Refuse a handoff to a stranger, one that repeats the last cycle, or one too many."""
        if target not in self.members:
            raise _Stop(RunStatus.failed, f"agent {run.active!r} handed off to {target!r}, "
                                          f"which is not a member of swarm {self.name!r} "
                                          f"(members: {', '.join(self.members)})")
        repeated = _repeated_cycle(run.path, target)
        if repeated is not None:
            raise _Stop(RunStatus.failed, f"handoff ping-pong stopped: the cycle {repeated} "
                                          f"came round a second time (path: "
                                          f"{_arrow([*run.path, target])})")
        if len(run.handoffs) >= self.max_handoffs:
            cycle = _last_cycle(run.path, target)
            raise _Stop(RunStatus.max_turns, f"handoff limit max_handoffs={self.max_handoffs} "
                                             f"reached (path: {_arrow([*run.path, target])})"
                                             + (f"; cycle {cycle}" if cycle else ""))

    def _keys_for(self, source: str, target: str) -> list[str]:
        keys = [*self.state_keys, *self.handoff_keys.get(target, []),
                *self.handoff_keys.get(f"{source}->{target}", [])]
        return list(dict.fromkeys(keys))

    def _brief(self, run: _Run, record: HandoffRecord) -> str:
        """What the next agent is given: why, what is known, the state, the conversation."""
        lines = [f"You are taking over a conversation from {record.source} (handoff "
                 f"{record.index} in swarm {self.name}).", f"Reason: {record.reason or '-'}"]
        if record.summary:
            lines.append(f"Summary: {record.summary}")
        if record.state:
            lines.append("State carried with the handoff:")
            lines += [f"- {k} = {json.dumps(v, default=str, ensure_ascii=False)}"
                      for k, v in record.state.items()]
        lines += ["Conversation so far:", *run.transcript, "",
                  "Continue the task from here and answer the user."]
        return "\n".join(lines)


# -- worker swarms ----------------------------------------------------------------------------

Tasks = Sequence[str] | Callable[[str], Sequence[str]] | None
Merge = Callable[[list[RunResult]], Any]


class WorkerSwarmResult(RunResult):
    tasks: list[str] = Field(default_factory=list)
    workers: list[str] = Field(default_factory=list)  # who ran each task, in task order
    failed: list[int] = Field(default_factory=list)  # indexes of the tasks that failed


class WorkerSwarm(Pattern):
    """N workers pull subtasks from a shared queue until it is empty. `tasks` is a list, a
    function of the input, or None (the input is a JSON array, or one task per line).
    The output is the outputs in task order, or `merge(results)`.

    `prefetch`: tasks a worker holds queued behind the one it runs (None: 1 for an agent in an
    actor, whose runs queue in its mailbox; 0 for any other worker). See MapReduce."""

    kind = "swarm"

    def __init__(self, name: str, workers: Sequence[Any], tasks: Tasks = None, *,
                 merge: Merge | None = None, description: str = "",
                 prefetch: int | None = None) -> None:
        super().__init__(name, description=description)
        self.workers = [as_step(w) for w in workers]
        names = [w.name for w in self.workers]
        if not names or len(set(names)) != len(names):
            raise SpecError(f"worker swarm {name!r} needs workers with distinct names, "
                            f"got {names}")
        check_prefetch(f"worker swarm {name!r}", prefetch)
        self.tasks = tasks
        self.merge = merge
        self.prefetch = prefetch

    async def run(self, input: str, *, ctx: ToolContext | None = None,
                  inputs: dict[str, Any] | None = None) -> RunResult:
        return await super().run(input, ctx=ctx or env_context(self.workers), inputs=inputs)

    async def _run(self, input: str, ctx: ToolContext, inputs: dict[str, Any]) -> RunResult:
        tasks = self._tasks(input)
        results: list[RunResult | None] = [None] * len(tasks)
        who = [""] * len(tasks)

        async def work(w: int, index: int) -> None:
            results[index] = await self._work(self.workers[w], tasks[index], index, who, ctx)

        await run_pool(len(tasks), len(self.workers), work, ctx.cancel, prefetch=self._prefetch)
        ctx.cancel.raise_if_cancelled()
        done = [r for r in results if r is not None]
        failed = [i for i, r in enumerate(results) if r is None or not r.ok]
        output = self.merge(done) if self.merge else [r.output if r else None for r in results]
        status = RunStatus.completed if not failed else RunStatus.failed
        reason = "" if not failed else f"{len(failed)} of {len(tasks)} task(s) failed: " + \
            "; ".join(_task_failure(i, who[i], results[i]) for i in failed[:10])
        base = self.result(status, output=output, reason=reason, children=done)
        return WorkerSwarmResult(**dict(base), tasks=tasks, workers=who, failed=failed)

    def _prefetch(self, worker: int) -> int:
        return prefetch_for(self.workers[worker], self.prefetch)

    async def _work(self, worker: Step, task: str, index: int, who: list[str],
                    ctx: ToolContext) -> RunResult:
        who[index] = worker.name
        ctx.publish("swarm.task.started", {"swarm": self.name, "worker": worker.name,
                                           "index": index})
        result = await run_watched(worker, task, ctx)
        ctx.publish("swarm.task.finished", {"swarm": self.name, "worker": worker.name,
                                            "index": index, "status": str(result.status),
                                            "reason": result.reason[:500]})
        return result

    def _tasks(self, input: str) -> list[str]:
        if callable(self.tasks):
            return [str(t) for t in self.tasks(input)]
        if self.tasks is not None:
            return [str(t) for t in self.tasks]
        try:
            parsed = json.loads(input)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list):
            return [t if isinstance(t, str) else output_text(t) for t in parsed]
        return [line.strip() for line in input.splitlines() if line.strip()]


# -- helpers ----------------------------------------------------------------------------------

def _lines(speaker: str, messages: list[Message]) -> list[str]:
    """A run's messages as transcript lines, the assistant speaking as `speaker`."""
    out = []
    for m in messages:
        if m.role == "assistant":
            text = m.text.strip()
            calls = ", ".join(f"{c.name}({json.dumps(c.arguments, ensure_ascii=False)})"
                              for c in m.tool_calls)
            said = [text, f"[called {calls}]" if calls else ""]
            out.append(f"{speaker}: " + " ".join(x for x in said if x))
        elif m.role == "tool":
            out += [f"  (tool result: {getattr(p, 'content', '')[:500]})" for p in m.parts]
        elif m.role == "user":
            out.append(f"user: {m.text}")
    return out


async def _read_keys(state: StateAccess | None, keys: list[str]) -> dict[str, Any]:
    if state is None or not keys:
        return {}
    values = await asyncio.gather(*(state.get(k) for k in keys))
    return {k: v for k, v in zip(keys, values, strict=True) if v is not None}


async def _copy_private(state: StateAccess | None, record: HandoffRecord) -> None:
    """The source agent's private keys (agent:<source>:x) land in the target's scope."""
    if state is None:
        return
    head = f"agent:{record.source}:"
    for key, value in record.state.items():
        if key.startswith(head):
            await state.set(f"agent:{record.target}:{key[len(head):]}", value)


def _repeated_cycle(path: list[str], target: str) -> str | None:
    """The cycle that handing to `target` would complete a second time in a row, if any:
    A -> B -> A -> B then A repeats A -> B -> A."""
    if target not in path:
        return None
    start = len(path) - 1 - path[::-1].index(target)
    length = len(path) - start
    if start - length >= 0 and path[start - length:start] == path[start:]:
        return _arrow([*path[start:], target])
    return None


def _last_cycle(path: list[str], target: str) -> str | None:
    if target not in path:
        return None
    start = len(path) - 1 - path[::-1].index(target)
    return _arrow([*path[start:], target])


def _arrow(names: list[str]) -> str:
    return " -> ".join(names)


def _capped(state: dict[str, Any], limit: int = 2000) -> dict[str, Any]:
    """State values for an event: large ones are cut (the event log is not the state store)."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        text = json.dumps(value, default=str, ensure_ascii=False)
        out[key] = value if len(text) <= limit else text[:limit] + "..."
    return out


def _task_failure(index: int, worker: str, result: RunResult | None) -> str:
    if result is None:
        return f"#{index} (not run)"
    return f"#{index} ({worker}: {result.status}: {result.reason[:200]})"
