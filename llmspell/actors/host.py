"""The agent host: many logical agents in one process, each with its own mailbox.

Plain Python (the Ray shell is `AgentHost` in agent_actor.py). An agent actor costs ~90 MB and a
quarter second to start; a logical agent costs a runner and a mailbox, so a job of 1,000 agents
fits on a laptop. Each agent's mailbox has one consumer: one writer per conversation, so
concurrent requests to one agent are serialised, never interleaved.

Messages between agents of one host never cross Ray: `ask_local` numbers them per sender and
recipient, puts them in the recipient's mailbox (order check, dedupe, capacity) and publishes
an event for each, like any other message.

A workflow can run here too (`run_hosted`, sent by llmspell.supervisors.hosted): unpickled
inside `hosting(core)`, its agent handles become `LocalAgent`s for the agents of this host and
`RemoteAgent`s for the others, so each step on this host is a local message, not a Ray call.
While it runs, its caller may signal it by its run id (`RunSignals`): a spread Parallel's share
is given more slots that way.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

from ray import cloudpickle  # Ray's own copy: what it pickles our calls with

from llmspell.agents.delegation import (
    DelegationPlan,
    DelegationResult,
    Level,
    SpecialistRef,
    delegate,
    tool_name,
)
from llmspell.agents.env import AgentEnv
from llmspell.agents.loop import AgentRunner, Decision
from llmspell.agents.result import PendingApproval, RunResult, RunStatus
from llmspell.agents.spec import AgentSpec
from llmspell.llm.types import Message
from llmspell.runtime.cancel import CancelToken
from llmspell.runtime.errors import Cancelled, HookCancelled, LlmspellError, MailboxClosed
from llmspell.runtime.hooks import HookPoint
from llmspell.runtime.mailbox import Mailbox
from llmspell.runtime.messages import Envelope, Kind
from llmspell.tools.agent_tool import AgentTool
from llmspell.tools.base import render_result
from llmspell.tools.context import ToolContext

__all__ = ["APPROVAL_KEY", "AgentSlot", "HostCore", "LocalAgent", "RunSignals", "UnknownAgent",
           "hosting", "resolve_agent", "run_signals"]

APPROVAL_KEY = "job:approvals:{run_id}"
Emit = Callable[[str, dict[str, Any]], None]


class UnknownAgent(LlmspellError):
    def __init__(self, host: str, name: str, known: list[str]) -> None:
        super().__init__(f"host {host!r} has no agent {name!r} (it has: "
                         f"{', '.join(known[:20]) or 'none'})")
        self.name = name


class Remote(Protocol):
    """How a host reaches agents on other hosts: its process's node (or a driver's runtime)."""

    async def ask(self, address: str, type: str, payload: Any = None, *,
                  timeout: float | None = None) -> Any: ...

    async def tell(self, address: str, type: str, payload: Any = None) -> None: ...


@dataclass
class AgentSlot:
    runner: AgentRunner
    mailbox: Mailbox
    consumer: asyncio.Task[None] | None = None
    runs: dict[str, CancelToken] = field(default_factory=dict)
    streams: dict[str, int] = field(default_factory=dict)  # local senders' next seq

    @property
    def name(self) -> str:
        return self.runner.spec.name


class HostCore:
    def __init__(self, address: str, env: AgentEnv, *, mailbox_capacity: int = 1_000,
                 directory: Mapping[str, str] | None = None,
                 remote: Remote | None = None, gap_timeout: float = 5.0) -> None:
        self.address = address
        self.env = env
        self.capacity = mailbox_capacity
        self.gap_timeout = gap_timeout
        self.directory = dict(directory or {})  # agent name -> host address, for other hosts
        self.remote = remote
        self.slots: dict[str, AgentSlot] = {}
        self.local_messages = 0
        self._ids = itertools.count(1)
        self._declared: set[str] = set()
        self._cancelled: dict[str, str] = {}  # run id -> reason, for runs not started yet
        self.hosted: dict[str, CancelToken] = {}  # run id -> token, of workflows running here
        self.signals: dict[str, RunSignals] = {}  # run id -> what those runs listen to

    # -- agents -------------------------------------------------------------------------------

    def add_all(self, specs: list[AgentSpec]) -> None:
        """Add agents that may name each other as tools, in any order."""
        self._declared.update(s.name for s in specs)
        for spec in specs:
            self.add(spec)

    def add(self, spec: AgentSpec, history: list[Message] | None = None) -> AgentSlot:
        if spec.name in self.slots:
            raise ValueError(f"host {self.address!r} already has an agent {spec.name!r}")
        self._agent_tools(spec)
        slot = AgentSlot(AgentRunner(spec, self.env, history=history),
                         Mailbox(f"{self.address}#{spec.name}", capacity=self.capacity,
                                 gap_timeout=self.gap_timeout))
        self.slots[spec.name] = slot
        return slot

    def _agent_tools(self, spec: AgentSpec) -> None:
        """Agents named among a spec's tools become AgentTools: local or on another host."""
        for name in spec.tools:
            if name in self.env.tools:
                continue
            if name in self.slots or name in self._declared or name in self.directory:
                self.env.tools.register(AgentTool(self.runnable(name)))

    def runnable(self, name: str) -> LocalAgent | RemoteAgent:
        if name in self.slots or name in self._declared:
            return LocalAgent(self, name)
        if name in self.directory and self.remote is not None:
            return RemoteAgent(self.remote, self.directory[name], name)
        raise UnknownAgent(self.address, name, sorted(self.slots))

    def slot(self, name: Any) -> AgentSlot:
        slot = self.slots.get(str(name))
        if slot is None:
            raise UnknownAgent(self.address, str(name), sorted(self.slots))
        return slot

    # -- messages -----------------------------------------------------------------------------

    async def route(self, env: Envelope) -> Any:
        """A message from outside the host (already ordered by the host's own mailbox)."""
        payload = env.payload if isinstance(env.payload, dict) else {}
        if env.type == "agent.cancel":
            return self.cancel(str(payload.get("run_id", "")), str(payload.get("reason", "")))
        if env.type == HOSTED_RUN:  # not an agent's message: it runs beside their mailboxes
            return await self.run_hosted(payload)
        if env.type == HOSTED_SIGNAL:
            signals = self.signals.get(str(payload.get("run_id", "")))
            return signals is not None and signals.deliver(str(payload.get("name", "")),
                                                           payload.get("data"))
        if env.type in ("agent.pause", "agent.unpause"):  # not queued behind a long run
            runner = self.slot(payload.get("agent")).runner
            runner.pause() if env.type == "agent.pause" else runner.unpause()
            return str(runner.status)
        name = payload.get("agent")
        if name is None and len(self.slots) == 1:
            name = next(iter(self.slots))
        slot = self.slot(name)
        inner = Envelope(type=env.type, payload=payload, kind=Kind.ASK, sender=env.sender,
                         recipient=slot.mailbox.owner, job_id=env.job_id, id=env.id,
                         idempotency_key=env.idempotency_key, deadline=env.deadline)
        return await self._through(slot, inner, external=True)

    async def ask_local(self, sender: str, target: str, type: str, payload: dict[str, Any]
                        ) -> Any:
        """A message from one agent of this host to another: no Ray, the same mailbox path."""
        slot = self.slot(target)
        seq = slot.streams.get(sender, 0) + 1
        slot.streams[sender] = seq
        env = Envelope(type=type, payload=payload, kind=Kind.ASK, sender=sender,
                       recipient=slot.mailbox.owner, job_id=self.env.job_id,
                       stream=f"{sender}>{target}", seq=seq)
        self.local_messages += 1
        self.env.publish("agent.message", {"from": sender, "to": target, "type": type,
                                           "seq": seq})
        return await self._through(slot, env, external=False)

    async def _through(self, slot: AgentSlot, env: Envelope, *, external: bool) -> Any:
        if slot.consumer is None:
            slot.consumer = asyncio.get_running_loop().create_task(
                self._consume(slot), name=f"{slot.mailbox.owner}:consumer")
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await slot.mailbox.put(env, reply)
        result = await reply
        if external and isinstance(result, RunResult):
            return result.model_dump(mode="json")
        return result

    async def _consume(self, slot: AgentSlot) -> None:
        while True:
            try:
                env, reply = await slot.mailbox.get()
            except MailboxClosed:
                return
            try:
                result = await self._handle(slot, env)
            except Exception as exc:  # the message fails, the agent lives on
                if reply is not None and not reply.done():
                    reply.set_exception(exc)
            else:
                if reply is not None and not reply.done():
                    reply.set_result(result)

    async def _handle(self, slot: AgentSlot, env: Envelope) -> Any:
        p = env.payload if isinstance(env.payload, dict) else {}
        runner = slot.runner
        match env.type:
            case "agent.run":
                return await self._run(slot, p)
            case "agent.resume":
                return await self._resume(slot, p)
            case "agent.ping":
                return p.get("data")
            case "agent.status":
                return {"agent": slot.name, "status": str(runner.status), "runs": runner.runs,
                        "usage": runner.usage.model_dump(), "cost_usd": runner.cost_usd,
                        "queued": len(slot.mailbox), "history": len(runner.history)}
            case "agent.history":
                return [m.model_dump(mode="json") for m in runner.history]
            case "agent.reset":
                runner.reset()
                return True
        raise ValueError(f"agent {slot.name!r} does not handle {env.type!r}")

    def _context(self, p: dict[str, Any], chain: tuple[str, ...]) -> ToolContext:
        """A run's context: its caller's (from the wire) or a fresh one at `chain`, under a
        token of its own that `cancel(run_id)` reaches; a run cancelled before it came here
        starts cancelled."""
        token = CancelToken()
        early = self._cancelled.pop(str(p.get("run_id") or ""), None)
        if early is not None:
            token.cancel(early)
        env = self.env
        if p.get("ctx"):
            return ToolContext.from_wire(p["ctx"], state=env.state, emit=env.emit,
                                         hooks=env.hooks, cancel=token)
        return ToolContext(job_id=env.job_id, chain=chain, sandbox=env.sandbox, state=env.state,
                           emit=env.emit, cancel=token, hooks=env.hooks, max_depth=env.max_depth)

    async def _run(self, slot: AgentSlot, p: dict[str, Any]) -> RunResult:
        ctx = self._context(p, (slot.name,))
        token = ctx.cancel
        run_id = str(p.get("run_id") or f"{slot.name}-{next(self._ids)}-{id(token):x}")
        level: Level | None = None
        tools: list[Any] | None = None
        if p.get("delegation"):  # a manager: its delegate_to_ tools for this run
            plan = DelegationPlan.model_validate(p["delegation"])
            level = Level(plan.name, plan.max_depth, plan.budget, depth=len(plan.outer) + 1)
            tools = [HostDelegateTool(self, plan, level, ref) for ref in plan.specialists]
        slot.runs[run_id] = token
        try:
            result = await slot.runner.run(str(p.get("input", "")), inputs=p.get("inputs"),
                                           ctx=ctx, run_id=run_id, tools=tools)
        finally:
            slot.runs.pop(run_id, None)
        if result.pending is not None:
            await self._store_pending(result.pending)
        if level is not None:
            return DelegationResult(**{**dict(result), "children": level.results},
                                    delegations=level.records, breaches=level.breaches)
        return result

    async def run_hosted(self, p: dict[str, Any]) -> dict[str, Any]:
        """Run a workflow sent here (pickled, see llmspell.supervisors.hosted): its steps on
        this host's agents are local messages. Cancelled by `cancel(run_id)` like a run."""
        run_id = str(p.get("run_id") or "")
        try:
            with hosting(self):
                runnable = cloudpickle.loads(p["runnable"])
        except Exception as exc:  # the sender checked it pickles; this side may still lack code
            raise ValueError(f"host {self.address!r} cannot load the workflow sent to it: "
                             f"{type(exc).__name__}: {exc}") from None
        ctx = self._context(p, ())  # the workflow enters its own name
        self.hosted[run_id] = ctx.cancel
        signals = self.signals[run_id] = RunSignals(
            [(str(n), d) for n, d in p.get("signals") or []])
        listening = _SIGNALS.set(signals)
        try:
            result: RunResult = await runnable.run(str(p.get("input", "")), ctx=ctx,
                                                   inputs=p.get("inputs"))
        finally:
            _SIGNALS.reset(listening)
            self.hosted.pop(run_id, None)
            self.signals.pop(run_id, None)
        return result.model_dump(mode="json")

    def specialist(self, ref: SpecialistRef) -> LocalAgent | RemoteAgent:
        """Where a delegation's specialist runs: an agent of this host, or one on another."""
        if ref.host in (None, self.address) and ref.agent in self.slots:
            return LocalAgent(self, ref.agent)
        if ref.host is None or self.remote is None:
            raise UnknownAgent(self.address, ref.agent, sorted(self.slots))
        return RemoteAgent(self.remote, ref.host, ref.agent, ref.description)

    async def _resume(self, slot: AgentSlot, p: dict[str, Any]) -> RunResult:
        run_id = str(p.get("run_id", ""))
        pending = slot.runner.pending
        if pending is None or pending.run_id != run_id:
            stored = await self.env.state.get(APPROVAL_KEY.format(run_id=run_id)) \
                if self.env.state is not None else None
            if stored is None:
                raise ValueError(f"agent {slot.name!r} has no paused run {run_id!r}")
            pending = PendingApproval.model_validate(stored)
        decisions: dict[str, Decision | bool] = {
            k: Decision(bool(v.get("approved")), str(v.get("reason", "")))
            if isinstance(v, dict) else Decision(bool(v))
            for k, v in dict(p.get("decisions") or {}).items()}
        result = await slot.runner.resume(pending, decisions)
        if self.env.state is not None:
            await self.env.state.set(APPROVAL_KEY.format(run_id=run_id), None)
        return result

    async def _store_pending(self, pending: PendingApproval) -> None:
        if self.env.state is not None:
            await self.env.state.set(APPROVAL_KEY.format(run_id=pending.run_id),
                                     pending.model_dump(mode="json"))

    def cancel(self, run_id: str, reason: str = "") -> bool:
        """Cancel a run. A run not started yet (still queued in its agent's mailbox) is
        remembered and starts cancelled, so a caller needs to ask once."""
        reason = reason or "cancelled by its caller"
        for runs in (*(s.runs for s in self.slots.values()), self.hosted):
            token = runs.get(run_id)
            if token is not None:
                token.cancel(reason)
                return True
        self._cancelled[run_id] = reason
        while len(self._cancelled) > 10_000:  # bounded: ids of runs that never came
            self._cancelled.pop(next(iter(self._cancelled)))
        return True

    def cancel_all(self, reason: str) -> int:
        tokens = [t for s in self.slots.values() for t in s.runs.values()]
        tokens += self.hosted.values()
        for token in tokens:
            token.cancel(reason)
        return len(tokens)

    # -- snapshots and shutdown ---------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {name: {
            "history": [m.model_dump(mode="json") for m in s.runner.history],
            "pending": s.runner.pending.model_dump(mode="json") if s.runner.pending else None,
        } for name, s in self.slots.items()}

    def restore(self, snapshot: dict[str, Any]) -> None:
        for name, saved in (snapshot or {}).items():
            slot = self.slots.get(name)
            if slot is None:
                continue
            pending = saved.get("pending")
            slot.runner.restore([Message.model_validate(m) for m in saved.get("history", [])],
                                PendingApproval.model_validate(pending) if pending else None)

    async def close(self, reason: str = "the host stopped") -> None:
        self.cancel_all(reason)
        for slot in self.slots.values():
            slot.mailbox.close(reason)
        tasks = [s.consumer for s in self.slots.values() if s.consumer is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.env.providers.aclose()


class LocalAgent:
    """An agent of this host, as something an AgentTool can call (through its mailbox)."""

    def __init__(self, core: HostCore, name: str) -> None:
        self.core = core
        self.name = name

    @property
    def description(self) -> str:
        slot = self.core.slots.get(self.name)
        return slot.runner.spec.description if slot else ""

    async def run(self, input: str, *, ctx: ToolContext | None = None,
                  inputs: dict[str, Any] | None = None, run_id: str | None = None,
                  delegation: DelegationPlan | None = None) -> RunResult:
        sender = ctx.chain[-2] if ctx is not None and len(ctx.chain) > 1 else "host"
        payload = _run_payload(input, ctx, inputs, run_id, delegation)
        result: RunResult = await self.core.ask_local(sender, self.name, "agent.run", payload)
        return result

    async def cancel(self, run_id: str, reason: str = "") -> bool:
        return self.core.cancel(run_id, reason)


class RemoteAgent:
    """An agent on another host, reached by actor messages."""

    def __init__(self, remote: Remote, host: str, name: str, description: str = "",
                 timeout: float | None = 600.0) -> None:
        self.remote = remote
        self.host = host
        self.name = name
        self.description = description
        self.timeout = timeout

    async def run(self, input: str, *, ctx: ToolContext | None = None,
                  inputs: dict[str, Any] | None = None, run_id: str | None = None,
                  delegation: DelegationPlan | None = None) -> RunResult:
        payload = {"agent": self.name, **_run_payload(input, ctx, inputs, run_id, delegation)}
        reply = await self.remote.ask(self.host, "agent.run", payload, timeout=self.timeout)
        if delegation is not None:
            return DelegationResult.model_validate(reply)
        return RunResult.model_validate(reply)

    async def cancel(self, run_id: str, reason: str = "") -> bool:
        """As AgentHandle.cancel: a tell, so a pattern's cancels to one host land together."""
        await self.remote.tell(self.host, "agent.cancel", {"run_id": run_id, "reason": reason})
        return True


def _run_payload(input: str, ctx: ToolContext | None, inputs: dict[str, Any] | None,
                 run_id: str | None, delegation: DelegationPlan | None) -> dict[str, Any]:
    payload: dict[str, Any] = {"input": input}
    if ctx is not None:
        payload["ctx"] = ctx.to_wire()
    if inputs is not None:
        payload["inputs"] = inputs
    if run_id is not None:
        payload["run_id"] = run_id
    if delegation is not None:
        payload["delegation"] = delegation.model_dump(mode="json")
    return payload


# -- workflows run in a host ------------------------------------------------------------------

HOSTED_RUN = "host.run_hosted"
HOSTED_SIGNAL = "host.signal"  # to a hosted run, by its run id: {"run_id", "name", "data"}
_HOSTING: ContextVar[HostCore | None] = ContextVar("llmspell_hosting", default=None)


class RunSignals:
    """What a workflow run in a host listens to while it runs (`HostedWorkflow.signal`): one
    handler per name, set by the workflow (`run_signals().on(...)`). A signal that comes
    before its handler is set waits for it (`heard` a resumed run's signals from the start);
    one sent once the run is over is dropped (asked rather than told, the reply is whether it
    was heard at once)."""

    max_waiting = 1_000  # signals nobody listens to yet, kept at most

    def __init__(self, heard: list[tuple[str, Any]] | None = None) -> None:
        self._handlers: dict[str, Callable[[Any], None]] = {}
        self._waiting: list[tuple[str, Any]] = list(heard or [])[-self.max_waiting:]

    def on(self, name: str, handler: Callable[[Any], None]) -> None:
        self._handlers[name] = handler
        for data in [d for n, d in self._waiting if n == name]:
            handler(data)
        self._waiting = [(n, d) for n, d in self._waiting if n != name]

    def deliver(self, name: str, data: Any) -> bool:
        handler = self._handlers.get(name)
        if handler is None:
            self._waiting = [*self._waiting[1 - self.max_waiting:], (name, data)]
            return False
        handler(data)
        return True


_SIGNALS: ContextVar[RunSignals | None] = ContextVar("llmspell_run_signals", default=None)


def run_signals() -> RunSignals | None:
    """The signals of the hosted run in progress in this task, or None outside one."""
    return _SIGNALS.get()


@contextmanager
def hosting(core: HostCore) -> Iterator[None]:
    """Agent handles unpickled inside resolve to this host's agents (see `resolve_agent`)."""
    token = _HOSTING.set(core)
    try:
        yield
    finally:
        _HOSTING.reset(token)


def resolve_agent(host: str, name: str, description: str = "") -> LocalAgent | RemoteAgent:
    """What a pickled AgentHandle becomes where it is unpickled: inside `hosting(core)`, a local
    agent if it lives on that host, else one reached by an ask to its own host."""
    core = _HOSTING.get()
    if core is None:
        raise TypeError(f"the handle of agent {name!r} (on {host!r}) can only be unpickled in "
                        "an agent host running a workflow sent to it")
    if host == core.address:
        if name not in core.slots:
            raise UnknownAgent(core.address, name, sorted(core.slots))
        return LocalAgent(core, name)
    if core.remote is None:
        raise UnknownAgent(core.address, name, sorted(core.slots))
    return RemoteAgent(core.remote, host, name, description)


class HostDelegateTool(AgentTool):
    """`delegate_to_<specialist>` for a manager agent of this host, for one run: the
    delegation's limits and records (llmspell.agents.delegation) with the before/after
    delegation hooks of this host around each call."""

    def __init__(self, core: HostCore, plan: DelegationPlan, level: Level,
                 ref: SpecialistRef) -> None:
        target = core.specialist(ref)
        about = ref.description or target.description
        super().__init__(target, name=tool_name(ref.name), description=about or (
            f"Delegate a task to the specialist {ref.name!r}; its answer comes back to you."))
        self.core = core
        self.plan = plan
        self.level = level
        self.ref = ref
        self.agent = target

    async def run(self, args: Any, ctx: ToolContext) -> Any:
        plan, ref = self.plan, self.ref
        nested = plan.nested(ref, self.level.ref())

        async def call(text: str, child: ToolContext) -> RunResult:
            payload = {"delegation": plan.name, "manager": child.chain[-2] if len(
                child.chain) > 1 else "", "specialist": ref.name, "input": text,
                "depth": self.level.depth, "branch": child.branch}

            async def go(p: dict[str, Any], target: str | None) -> RunResult:
                agent, plan_for = self.agent, nested
                other = next((r for r in plan.specialists if r.name == target), None)
                if other is not None and other is not ref:  # a hook's Redirect
                    agent = self.core.specialist(other)
                    plan_for = plan.nested(other, self.level.ref())
                try:
                    return await agent.run(str(p.get("input", text)), ctx=child,
                                           delegation=plan_for)
                except (Cancelled, HookCancelled):
                    raise
                except Exception as exc:  # a specialist's host gone: the manager reads it
                    return RunResult(status=RunStatus.failed, agent=ref.name,
                                     reason=f"{type(exc).__name__}: {exc}")

            if child.hooks is None:
                return await go(payload, None)
            value = await child.hooks.call(
                HookPoint.before_delegation, HookPoint.after_delegation, payload, go,
                target=ref.name, job_id=child.job_id, actor=plan.name)
            if isinstance(value, RunResult):
                return value
            return RunResult(status=RunStatus.completed, agent=ref.name, output=value,
                             text=value if isinstance(value, str) else render_result(value))

        return await delegate(self.level, plan.outer, self.name, ref.name, str(args.input),
                              ctx, call)
