"""A Parallel over agents on several hosts, run as one share per host.

From the driver, each branch of a Parallel on an agent in an actor is a Ray call to the agent's
host and back: about 2.5 ms of CPU between the two processes per branch, more than the branch's
own work apart from its model call, and every branch's call goes through the driver's one
process. When every branch is such an agent and they live on two hosts or more, the Parallel
sends each host its share instead: the branches on that host, and a share of the concurrency
limit in proportion to their number (at least one each, never more than the limit in all).
There each branch is a local message (llmspell.supervisors.hosted), run by the same code as in
the driver (`Parallel.run_branches`): the same events (each branch with its index in the whole
Parallel), hooks (the host's, which a job installs there too), checkpoint records under the
same keys (a spread run resumes a run made in the driver, and the other way round), cancel and
deadline. The Parallel then joins the shares' results as it joins its branches'.

What changes: work does not flow between hosts, slots do. A branch runs on its agent's host,
so a host whose branches are slow (a longer answer, a slower model) would keep its share of
the limit to the end while the others' slots idle; instead, when a share finishes, the driver
hands its slots to the shares still running, in proportion to the branches each has beyond
its slots (a `workflow.spread.handover` event), and they start that many more at once
(`RunSignals`, llmspell.actors.host). A host that dies fails the branches of its share that
had not finished (the rest of them are in the checkpoint); from the driver, only the branches
sent to it while it is down would fail. Hence
only join "all" without `allow_partial` spreads: "any" and "first_k" stop every branch when the
join is met, across hosts, and `allow_partial` keeps what the other branches did. Nor does a
Parallel whose caller has workflow-step hooks of its own, unless told to (`Parallel(spread=)`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from llmspell.actors.agent_actor import AgentHandle
from llmspell.actors.host import run_signals
from llmspell.agents.result import RunResult, RunStatus
from llmspell.agents.spec import SpecError
from llmspell.runtime.messages import new_id
from llmspell.supervisors.base import Pattern, Step
from llmspell.supervisors.hosted import HostedWorkflow
from llmspell.supervisors.workers import Slots, actor_agent
from llmspell.supervisors.workflows._core import Block, _cancelled, join_reason
from llmspell.tools.context import ToolContext

if TYPE_CHECKING:
    from llmspell.supervisors.workflows.fanout import Parallel

__all__ = ["ParallelShare", "apportion", "plan_shares", "run_shares"]

log = structlog.get_logger("llmspell.supervisors")

Branch = tuple[int, str, Step]  # index in the whole Parallel, label, step


def apportion(sizes: Sequence[int], limit: int) -> list[int]:
    """`limit` slots over groups of `sizes` items, in proportion to their sizes (largest
    remainder), at least one each and never more than a group's size. Needs
    `limit >= len(sizes)`."""
    total = sum(sizes)
    if limit >= total:
        return list(sizes)
    exact = [limit * size / total for size in sizes]
    shares = [max(1, math.floor(e)) for e in exact]
    while sum(shares) > limit:  # the ones raised to one pushed it over: take from the largest
        j = max((j for j, s in enumerate(shares) if s > 1), key=lambda j: shares[j] - exact[j])
        shares[j] -= 1
    while sum(shares) < limit:
        j = max(range(len(shares)), key=lambda j: exact[j] - shares[j])
        shares[j] += 1
    return shares


SLOTS = "slots"  # the signal that gives a running share more slots: {"data": how many}


@dataclass
class _Share:
    host: str
    branches: list[Branch]
    concurrency: int  # its slots: its share of the limit, and those handed to it since
    hosted: HostedWorkflow  # the share, to run in that host
    run_id: str = ""

    def wants(self) -> int:
        """How many more slots it could use: a branch per slot at most."""
        return max(0, len(self.branches) - self.concurrency)


def plan_shares(parallel: Parallel) -> list[_Share] | None:
    """Each host's share of `parallel`, or None when it runs from here: not every branch an
    agent in an actor, a single host, a join other than "all", `allow_partial`, fewer slots
    than hosts, or a branch that cannot be sent to its host (logged)."""
    if parallel.join != "all" or parallel.allow_partial:
        return None
    by_host: dict[str, list[Branch]] = {}
    first: dict[str, AgentHandle] = {}
    for i, (label, step) in enumerate(parallel.branches):
        agent = actor_agent(step)
        if not isinstance(agent, AgentHandle):
            return None
        by_host.setdefault(agent.host, []).append((i, label, step))
        first.setdefault(agent.host, agent)
    if len(by_host) < 2 or parallel.concurrency < len(by_host):
        return None
    slots = apportion([len(b) for b in by_host.values()], parallel.concurrency)
    try:
        return [_Share(host, branches, n, HostedWorkflow(
                    ParallelShare(parallel, branches, n), on=first[host], timeout=None))
                for (host, branches), n in zip(by_host.items(), slots, strict=True)]
    except SpecError as exc:  # something in a branch does not pickle
        log.warning("parallel runs its branches from here", workflow=parallel.name,
                    reason=str(exc))
        return None


class ParallelShare(Pattern):
    """The branches of a Parallel that one host runs, as a part of that Parallel: in its
    context (its call chain, not one level down), under its checkpoint keys. Its result's
    children are its branches' results, in order; its output says which were taken and the
    state conflicts among them."""

    def __init__(self, parallel: Parallel, branches: list[Branch], concurrency: int) -> None:
        super().__init__(parallel.name, description=parallel.description)
        self.parallel = parallel.without_branches()  # what travels: this share, not them all
        self.branches = branches
        self.concurrency = concurrency

    async def run(self, input: str, *, ctx: ToolContext | None = None,
                  inputs: dict[str, Any] | None = None) -> RunResult:
        ctx = ctx or ToolContext(chain=(self.name,))
        parallel = self.parallel
        cp = await parallel.open_checkpoint(ctx)  # the whole Parallel's keys
        block = Block(ctx, parallel.merge)
        slots = Slots()
        signals = run_signals()
        if signals is not None:  # hosted (not when run in place, as in tests)
            signals.on(SLOTS, lambda n: slots.add(n if type(n) is int else 0))
        try:
            results, taken = await parallel.run_branches(
                self.branches, self.concurrency, input, ctx, inputs or {"input": input}, cp,
                block, slots)
        finally:
            await cp.flush()
        children = [results[i] if i in results else
                    _cancelled(label, f"not started: {block.token.reason}")
                    for i, label, _ in self.branches]
        return RunResult(status=RunStatus.completed, agent=self.name, children=children,
                         output={"taken": taken, "conflicts": block.note()})


async def run_shares(parallel: Parallel, shares: list[_Share], input: str, ctx: ToolContext,
                     inputs: dict[str, Any]) -> RunResult:
    """Run `parallel` as `shares`, each in its host, and join their results."""
    ctx.publish("workflow.spread", {"workflow": parallel.name, "shares": [
        {"host": s.host, "branches": len(s.branches), "concurrency": s.concurrency}
        for s in shares]})
    outcomes = await _run_all(parallel, shares, input, ctx, inputs)
    results: dict[int, RunResult] = {}
    taken: list[int] = []
    conflicts: list[str] = []
    for share, outcome in zip(shares, outcomes, strict=True):
        lost = _lost(share, outcome)
        if lost is not None:
            results.update((i, RunResult(status=RunStatus.failed, agent=label, reason=lost))
                           for i, label, _ in share.branches)
            continue
        assert isinstance(outcome, RunResult) and isinstance(outcome.output, dict)
        results.update((i, child) for (i, _, _), child in
                       zip(share.branches, outcome.children, strict=True))
        taken += outcome.output["taken"]
        conflicts.append(outcome.output["conflicts"])
    return parallel.outcome(ctx, results, taken, not_started=ctx.cancel.reason,
                            conflicts=join_reason(*conflicts))


async def _run_all(parallel: Parallel, shares: list[_Share], input: str, ctx: ToolContext,
                   inputs: dict[str, Any]) -> list[RunResult | BaseException]:
    """Each share's result (or what it raised), handing a finished share's slots over to the
    shares still running."""
    for share in shares:
        share.run_id = new_id()
    runs = {asyncio.ensure_future(s.hosted.run(input, ctx=ctx, inputs=inputs,
                                               run_id=s.run_id)): s for s in shares}
    try:
        running = set(runs)
        while running:
            done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            if running and not ctx.cancel.cancelled:
                await _hand_over(parallel, [runs[t] for t in done], [runs[t] for t in running],
                                 ctx)
    finally:  # cancelled: each run stops in its host (HostedWorkflow.run sees to it)
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
    return [_outcome(run) for run in runs]


def _outcome(run: asyncio.Future[RunResult]) -> RunResult | BaseException:
    if run.cancelled():
        return asyncio.CancelledError("its run was cancelled")
    return run.exception() or run.result()


async def _hand_over(parallel: Parallel, finished: list[_Share], running: list[_Share],
                     ctx: ToolContext) -> None:
    """The slots of the `finished` shares, to those `running` that could use more."""
    free = sum(s.concurrency for s in finished)
    for share in finished:
        share.concurrency = 0
    wanting = [s for s in running if s.wants()]
    if not free or not wanting:
        return
    if free >= len(wanting):
        given = apportion([s.wants() for s in wanting], free)
    else:  # fewer slots than shares: one each to those with the most branches left over
        most = sorted(range(len(wanting)), key=lambda j: -wanting[j].wants())[:free]
        given = [1 if j in most else 0 for j in range(len(wanting))]
    handed = []
    for share, n in zip(wanting, given, strict=True):
        if n:
            share.concurrency += n  # handed on in turn when it finishes, heard or not
            handed.append({"host": share.host, "slots": n})
            try:  # told, not asked: a host that hangs must not hold the others' results
                await share.hosted.signal(share.run_id, SLOTS, n)
            except Exception as exc:  # its host is gone: the share's own result says so
                log.info("spread share not given slots", host=share.host, error=str(exc))
    if handed:
        ctx.publish("workflow.spread.handover", {
            "workflow": parallel.name, "from": [s.host for s in finished], "to": handed})


def _lost(share: _Share, outcome: RunResult | BaseException) -> str | None:
    """Why a share's branches have no results of their own (its host failed it), or None."""
    if isinstance(outcome, BaseException):
        why = f"{type(outcome).__name__}: {outcome}"
    elif not outcome.ok or len(outcome.children) != len(share.branches) or \
            not isinstance(outcome.output, dict):
        why = f"it came back {outcome.status}: {outcome.reason or 'without its results'}"
    else:
        return None
    return f"its share of the branches on host {share.host!r} did not come back: {why}"[:2000]
