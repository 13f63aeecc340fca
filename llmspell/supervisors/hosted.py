"""A workflow run in the host of its agents.

Run from the driver, a workflow whose steps are agents in actors sends each step to the agent's
host as a Ray call (about 2 ms of CPU between the two processes on a small machine, more than
the workflow's own work per step). `HostedWorkflow` sends the whole workflow to one host
instead: one call for the run, and there every step on that host's agents is a local mailbox
message, as calls between agents of one host already are; steps on other hosts are asks from
that host. The workflow is the same object either way, with the same events, hooks (the
host's), checkpoints and cancellation:

    flow = MapReduce("fanout", mappers, reduce=reducer, concurrency=8)
    result = await HostedWorkflow(flow, on=mappers[0]).run(items, ctx=ctx)

The workflow travels pickled (cloudpickle, so lambdas and local functions as splits, predicates
or routers go too); its agent handles become the agents themselves on arrival
(llmspell.actors.host.resolve_agent). A workflow holding something that does not pickle (a
Runtime, a lock, an open file) is refused when it is wrapped, naming what failed. It resumes
from the checkpoints of the same workflow run in the driver, and the other way round: the
records are keyed by the call chain and the position, which travel with it.

The host unpickles what it is sent, as Ray does the arguments of every call: only code inside
the cluster can send it (the MCP and A2A servers and spells never pass a message type through).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import structlog
from ray import cloudpickle  # Ray's own copy: what it pickles our calls with

from llmspell.actors.agent_actor import AgentHandle
from llmspell.actors.host import HOSTED_RUN, HOSTED_SIGNAL
from llmspell.agents.result import RunResult
from llmspell.agents.spec import SpecError
from llmspell.runtime.cancel import race
from llmspell.runtime.errors import ActorUnavailable, AskTimeout
from llmspell.runtime.messages import new_id
from llmspell.runtime.supervised import ChildGivenUp, until_back
from llmspell.supervisors.base import Pattern
from llmspell.supervisors.checkpoint import Position, at_position, current_position, resuming
from llmspell.tools.context import ToolContext

__all__ = ["HostedWorkflow", "with_its_agents"]

log = structlog.get_logger("llmspell.supervisors")


@dataclass
class _HostedRun:
    """What runs there: the workflow, and where it sits in the caller's enclosing workflows."""

    workflow: Pattern
    position: Position

    async def run(self, input: str, *, ctx: ToolContext, inputs: dict[str, Any] | None
                  ) -> RunResult:
        with at_position(self.position):
            return await self.workflow.run(input, ctx=ctx, inputs=inputs)


@dataclass
class _Packed:
    """What travels: the workflow pickled once, when its HostedWorkflow was made (a spread
    Parallel's share holds dozens of agent handles: ~0.7 ms a pickling), and the position of
    this run. Unpickled there, inside the host's `hosting` (its handles become its agents),
    it is the _HostedRun."""

    workflow: bytes
    position: Position

    def __reduce__(self) -> tuple[Any, ...]:
        return _unpack, (self.workflow, self.position)


def _unpack(workflow: bytes, position: Position) -> _HostedRun:
    return _HostedRun(cloudpickle.loads(workflow), position)


class _Hung(ActorUnavailable):
    """The host stopped answering pings: its process may still be running the steps."""


class HostedWorkflow:
    """`workflow` (or any pattern), run in the host of the agent `on` (an AgentHandle). A step
    like an agent in an actor: it takes a run id, and `cancel(run_id)` stops the run where it
    is; unlike an agent, two runs of it go side by side. `timeout` bounds each run (None: no
    bound of its own, only the caller's deadline, as for a job's root). What runs there is
    the workflow as it was when this was made: it is pickled once, here."""

    runs_one_at_a_time = False  # so a worker pool gives it no queued item (prefetch 0)
    # While a run goes on, its host is pinged this often; one that does not answer within
    # `ping_timeout_s` (None: the runtime's ask timeout) is hung, and the run fails as if the
    # host had died. A run in the driver has each step's own timeout for that; a hosted run,
    # a job's whole run without a bound, would otherwise wait on a stuck host forever.
    ping_every_s = 5.0
    ping_timeout_s: float | None = None
    # A host that dies under a run this many times is not waited for again: the run fails (a
    # workflow that crashes its host would otherwise use up its supervisor's restarts).
    max_resumes = 2

    def __init__(self, workflow: Pattern, *, on: AgentHandle, timeout: float | None = 600.0
                 ) -> None:
        self.workflow = workflow
        self.runtime = on.runtime
        self.host = on.host
        self.name = workflow.name
        self.description = workflow.description
        self.timeout = timeout
        # From the handle: set when the host's supervisor restarts it and work in flight there
        # may run again (AgentHandle.restart_wait_s); None, a death fails the run.
        self.restart_wait_s = on.restart_wait_s
        self.supervisor = on.supervisor
        self._attempts: dict[str, str] = {}  # a caller's run id -> its attempt's, there
        self._signals: dict[str, list[tuple[str, Any]]] = {}  # sent to a run, by its run id
        try:  # refused now, what would fail at every run
            self._packed: bytes = cloudpickle.dumps(workflow)  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise SpecError(f"workflow {self.name!r} cannot be sent to host {self.host!r}: "
                            f"{type(exc).__name__}: {exc}") from None

    def _pack(self, position: Position) -> bytes:
        packed: bytes = cloudpickle.dumps(  # type: ignore[no-untyped-call]
            _Packed(self._packed, position))
        return packed

    async def run(self, input: str, *, ctx: ToolContext | None = None,
                  inputs: dict[str, Any] | None = None, run_id: str | None = None,
                  timeout: float | None = None, resume: bool | None = None) -> RunResult:
        """Run it there. `resume` as for Workflow.run; a cancel of `ctx` reaches the run in
        the host (it returns cancelled); the cancellation of this call, or its timeout (an
        AskTimeout, after `timeout` or the caller's deadline), cancels it there too. When the
        host dies under it and its supervisor brings it back (see `restart_wait_s`), the run
        resumes there from its checkpoints: its completed steps are not run again."""
        with resuming(resume) if resume is not None else contextlib.nullcontext():
            position = current_position()
        run_id = run_id or new_id()
        self._attempts[run_id] = run_id
        self._signals[run_id] = []
        # A resumed attempt takes back the steps this run did, not an earlier run's (those
        # recorded from a second before now: a clock elsewhere may run a little behind this one)
        since = position.since if position.resume else time.time() - 1.0
        lost = 0
        try:
            while True:
                try:
                    return await self._attempt(input, ctx, inputs, self._attempts[run_id],
                                               position, timeout, self._signals[run_id])
                except ActorUnavailable as exc:
                    if not self._resumable(exc, ctx):
                        raise
                    if lost == self.max_resumes:
                        raise ActorUnavailable(self.host, (
                            f"{exc.cause}; it died {lost + 1} times under this run: not "
                            "resumed again")) from None
                    lost += 1
                    await self._until_back(exc, lost, ctx)
                position = replace(position, resume=True, since=since)
                self._attempts[run_id] = f"{run_id}.{lost}"
        finally:
            del self._attempts[run_id], self._signals[run_id]

    def _resumable(self, exc: ActorUnavailable, ctx: ToolContext | None) -> bool:
        """A death (not a hang: that process may still be running the steps) under a host its
        supervisor restarts, while the caller still waits."""
        return (self.restart_wait_s is not None and not isinstance(exc, _Hung)
                and not (ctx is not None and ctx.cancel.cancelled))

    async def _until_back(self, exc: ActorUnavailable, attempt: int, ctx: ToolContext | None
                          ) -> None:
        """Wait for the host's replacement; the death's ActorUnavailable if none answers in
        `restart_wait_s` (or before the caller's deadline or cancel)."""
        assert self.restart_wait_s is not None
        ctx = ctx or ToolContext()  # no caller's context: no events, no cancel, no deadline
        remaining = ctx.remaining()
        wait = self.restart_wait_s if remaining is None else min(self.restart_wait_s, remaining)
        about = {"workflow": self.name, "host": self.host, "attempt": attempt}
        ctx.publish("workflow.hosted.lost", {**about, "cause": exc.cause})
        log.warning("hosted workflow lost its host", **about, cause=exc.cause)
        started = time.monotonic()
        back, _ = await race(until_back(self.runtime.node, self.host, started + wait,
                                        supervisor=self.supervisor), ctx.cancel.wait())
        failure = None if back.cancelled() else back.exception()
        if back.cancelled() or failure is not None:
            why = (ctx.cancel.reason if ctx.cancel.cancelled else
                   failure.cause if isinstance(failure, ChildGivenUp) else
                   f"not back within {wait:g}s")
            raise ActorUnavailable(self.host, f"{exc.cause}; {why}") from None
        ctx.publish("workflow.hosted.resumed", {
            **about, "pid": back.result(), "after_s": round(time.monotonic() - started, 3)})

    async def _attempt(self, input: str, ctx: ToolContext | None,
                       inputs: dict[str, Any] | None, run_id: str, position: Position,
                       timeout: float | None, signals: list[tuple[str, Any]]) -> RunResult:
        # A resumed attempt hears again what its run was told (a spread share, the slots
        # handed to it since it started)
        payload: dict[str, Any] = {"runnable": self._pack(position), "input": input,
                                   "inputs": inputs, "run_id": run_id,
                                   "signals": [list(signal) for signal in signals]}
        limit = timeout if timeout is not None else self.timeout
        if ctx is not None:
            payload["ctx"] = ctx.to_wire()  # the workflow enters its own name there, as here
            remaining = ctx.remaining()
            if remaining is not None:  # the caller's deadline, if sooner
                limit = remaining if limit is None else min(limit, remaining)
        ask = asyncio.ensure_future(self._ask_watched(payload, limit, run_id))
        try:
            if ctx is not None:
                await self._until_done_or_cancelled(ask, ctx, run_id)
            reply = await ask
        except asyncio.CancelledError:  # our caller gave up: the run must not go on there
            ask.cancel()
            await asyncio.shield(self._cancel_quietly(run_id, "its caller was cancelled"))
            raise
        except AskTimeout as exc:  # no answer in time: the run must not go on there either
            await self._cancel_quietly(run_id, f"its caller stopped waiting: {exc}")
            raise
        return RunResult.model_validate(reply)

    async def _ask_watched(self, payload: dict[str, Any], limit: float | None, run_id: str
                           ) -> Any:
        """The run's ask (its whole input and result: a large one), while the host answers
        pings; ActorUnavailable if it stops answering them."""
        ask = asyncio.ensure_future(self.runtime.ask(
            self.host, HOSTED_RUN, payload, timeout=math.inf if limit is None else limit,
            large=True))
        try:
            while not (await asyncio.wait({ask}, timeout=self.ping_every_s))[0]:
                await self._check_alive(run_id)
            return ask.result()
        finally:
            if not ask.done():
                ask.cancel()
                await asyncio.gather(ask, return_exceptions=True)

    async def _check_alive(self, run_id: str) -> None:
        timeout = self.ping_timeout_s or self.runtime.settings.ask_timeout_s
        try:
            await self.runtime.lookup(self.host).ping(timeout=timeout)
        except AskTimeout:
            reason = (f"hung: no answer to a ping within {timeout:g}s while running workflow "
                      f"{self.name!r}")
            # Told, not asked: it cannot answer now; if it comes back, the run stops there.
            with contextlib.suppress(Exception):
                await self.runtime.tell(self.host, "agent.cancel",
                                        {"run_id": run_id, "reason": reason})
            raise _Hung(self.host, reason) from None

    async def _until_done_or_cancelled(self, ask: asyncio.Future[Any], ctx: ToolContext,
                                       run_id: str) -> None:
        stop = asyncio.ensure_future(ctx.cancel.wait())
        try:
            await asyncio.wait({ask, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not ask.done():  # cancelled here: the run there returns, cancelled
            await self._cancel_quietly(run_id, ctx.cancel.reason or "cancelled")

    async def _cancel_quietly(self, run_id: str, reason: str) -> None:
        with contextlib.suppress(Exception):  # the host is gone, and the run with it
            await self.cancel(run_id, reason)

    async def cancel(self, run_id: str, reason: str = "") -> bool:
        done: bool = await self.runtime.ask(self.host, "agent.cancel", {
            "run_id": self._attempts.get(run_id, run_id), "reason": reason}, timeout=10.0)
        return done

    async def signal(self, run_id: str, name: str, data: Any = None) -> None:
        """Tell the run `run_id` in progress there something (llmspell.actors.host.RunSignals),
        without waiting: a run that is over drops it. Kept while the run lasts: an attempt
        resumed after its host's death is told again."""
        if run_id in self._signals:
            self._signals[run_id].append((name, data))
        await self.runtime.tell(self.host, HOSTED_SIGNAL, {
            "run_id": self._attempts.get(run_id, run_id), "name": name, "data": data})

    def __repr__(self) -> str:
        return f"<HostedWorkflow {self.name} on {self.host}>"


def with_its_agents(pattern: Pattern, agents: Sequence[Any], *, timeout: float | None = 600.0
                    ) -> Pattern | HostedWorkflow:
    """`pattern` hosted with `agents` (the agents it runs) when they all live in one host and
    it pickles; otherwise `pattern` itself, to run where it is called. Where a job runs its
    root pattern (llmspell.jobs.build), for patterns whose every step is an agent: a function
    step hosted elsewhere would act on copies of what it holds, so the caller decides."""
    hosts = {a.host if isinstance(a, AgentHandle) else None for a in agents}
    if len(hosts) != 1 or None in hosts:
        return pattern
    try:
        return HostedWorkflow(pattern, on=agents[0], timeout=timeout)
    except SpecError as exc:  # something in it does not pickle: it runs here
        log.warning("workflow runs where it is called", workflow=pattern.name, reason=str(exc))
        return pattern
