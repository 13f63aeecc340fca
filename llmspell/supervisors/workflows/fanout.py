"""The workflows that fan out: Parallel (branches on one input) and MapReduce (items over a
pool of agents, then a reduce). Both run on a fixed set of workers (each free worker takes the
next branch or item), give every branch its own cancel token and merged view of the state
(see llmspell.supervisors.merge), and report failures per branch or item."""

from __future__ import annotations

import copy
import inspect
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from llmspell.agents.result import RunResult, RunStatus
from llmspell.agents.spec import SpecError
from llmspell.runtime.hooks import HookPoint
from llmspell.supervisors.base import Step, output_text
from llmspell.supervisors.checkpoint import Checkpoint
from llmspell.supervisors.merge import MergeRules
from llmspell.supervisors.workers import Slots, check_prefetch, prefetch_for, run_pool
from llmspell.supervisors.workflows._core import (
    Block,
    Workflow,
    _cancelled,
    is_function,
    item_text,
    join_reason,
    summarize,
    to_step,
)
from llmspell.supervisors.workflows.spread import plan_shares, run_shares
from llmspell.tools.context import ToolContext

__all__ = ["MapReduce", "Parallel", "Split", "split_items"]

Join = Literal["all", "any", "first_k"]
Rules = MergeRules | Mapping[str, Any] | None


def _rules(merge: Rules) -> MergeRules | None:
    return None if merge is None else MergeRules.of(merge)


class Parallel(Workflow):
    """Branches run on the same input, at most `concurrency` at once (None: all at once).

    `join`: "all" waits for every branch; "any" takes the first branch that completes and
    cancels the others; "first_k" takes the first `k`. The output maps branch name -> output
    of the branches taken (all that completed, for "all"). The status is completed when the
    join is met: every branch for "all", one for "any", k for "first_k"; with `allow_partial`,
    when at least one branch completed. The reason names every branch that did not complete,
    with its status and why, and the state conflicts of the block. Branches that write the
    same state key do it through `merge` rules (MergeRules; by default an undeclared key is
    last-writer with conflicts reported).

    `spread`: when every branch is an agent in an actor and they live on several hosts, each
    host runs its own share of the branches, and of `concurrency`, as local messages instead
    of a Ray call per branch from here (join "all" without `allow_partial` only; see
    llmspell.supervisors.workflows.spread). The workflow-step hooks are then the hosts' own.
    None (the default) spreads unless the caller's context has workflow-step hooks, which the
    hosts may not have; True spreads all the same (a job's hooks are installed in its hosts
    too); False keeps every branch's call here.
    """

    def __init__(self, name: str, branches: Mapping[str, Any] | Sequence[Any], *,
                 concurrency: int | None = None, join: Join = "all", k: int = 1,
                 allow_partial: bool = False, merge: Rules = None, description: str = "",
                 checkpoint: bool = True, spread: bool | None = None) -> None:
        super().__init__(name, description=description, checkpoint=checkpoint)
        self.branches = _labelled(name, branches)
        if join not in ("all", "any", "first_k"):
            raise SpecError(f"parallel {name!r}: join must be all, any or first_k, not {join!r}")
        if join == "first_k" and not 1 <= k <= len(self.branches):
            raise SpecError(f"parallel {name!r}: k={k} must be between 1 and the number of "
                            f"branches ({len(self.branches)})")
        if concurrency is not None and concurrency < 1:
            raise SpecError(f"parallel {name!r}: concurrency must be at least 1")
        self.concurrency = concurrency or len(self.branches)
        self.join: Join = join
        self.k = {"all": len(self.branches), "any": 1, "first_k": k}[join]
        self.allow_partial = allow_partial
        self.merge = _rules(merge)
        self.spread = spread

    async def _execute(self, input: str, ctx: ToolContext, inputs: dict[str, Any],
                       cp: Checkpoint) -> RunResult:
        shares = plan_shares(self) if self._spreads(ctx) else None
        if shares is not None:
            return await run_shares(self, shares, input, ctx, inputs)
        block = Block(ctx, self.merge)
        results, taken = await self.run_branches(
            [(i, label, step) for i, (label, step) in enumerate(self.branches)],
            self.concurrency, input, ctx, inputs, cp, block)
        return self.outcome(ctx, results, taken, not_started=block.token.reason,
                            conflicts=block.note())

    async def run_branches(self, todo: Sequence[tuple[int, str, Step]], concurrency: int,
                           input: str, ctx: ToolContext, inputs: dict[str, Any],
                           cp: Checkpoint, block: Block, slots: Slots | None = None
                           ) -> tuple[dict[int, RunResult], list[int]]:
        """Run the branches `todo` (index in the whole Parallel, label, step), at most
        `concurrency` at once (more as `slots` are added): their results by index, and the
        indexes of those taken (the completed ones, in the order they completed, up to the
        join)."""
        n = len(self.branches)
        results: dict[int, RunResult] = {}
        taken: list[int] = []
        failures = 0

        async def work(_: int, j: int) -> None:
            nonlocal failures
            i, label, step = todo[j]
            result = await self.call(step, input, block.branch(f"{self.name}.{label}"),
                                     index=i, step_id=f"b.{label}", cp=cp, label=label,
                                     inputs=inputs)
            results[i] = result
            if result.ok:
                if self.join == "all" or not block.stopped:  # not one past the join
                    taken.append(i)
                    if len(taken) == self.k and self.join != "all":
                        self._joined(ctx, block, taken)
            elif not block.stopped:
                failures += 1
                if self.join != "all" and n - failures < self.k:
                    block.stop(f"join {self.join} can no longer be met")

        await run_pool(len(todo), concurrency, work, block.token, slots=slots)
        return results, taken

    def _spreads(self, ctx: ToolContext) -> bool:
        if self.spread is not None:
            return self.spread
        hooks = ctx.hooks
        return hooks is None or not (hooks.has_hooks(HookPoint.before_workflow_step) or
                                     hooks.has_hooks(HookPoint.after_workflow_step))

    def without_branches(self) -> Parallel:
        """A copy holding no branches, for a share that brings its own (spread.py)."""
        bare = copy.copy(self)
        bare.branches = []
        return bare

    def _joined(self, ctx: ToolContext, block: Block, taken: list[int]) -> None:
        names = [self.branches[i][0] for i in taken]
        ctx.publish("workflow.join", {"workflow": self.name, "join": self.join,
                                      "taken": names})
        block.stop(f"join {self.join} met by {', '.join(names)}")

    def outcome(self, ctx: ToolContext, results: Mapping[int, RunResult], taken: list[int],
                *, not_started: str | None, conflicts: str) -> RunResult:
        """The Parallel's result from its branches' (a branch with no result never started,
        for `not_started`) and the state conflicts of its block(s)."""
        children = [results[i] if i in results else
                    _cancelled(label, f"not started: {not_started}")
                    for i, (label, _) in enumerate(self.branches)]
        output = {self.branches[i][0]: children[i].output for i in taken}
        took = set(taken)
        missed = [(label, children[i]) for i, (label, _) in enumerate(self.branches)
                  if i not in took]
        note = summarize(missed) if missed else ""
        if self.join == "all":
            note = f"{len(missed)} of {len(children)} branches did not complete: {note}" \
                if missed else ""
        if ctx.cancel.cancelled:
            status = RunStatus.cancelled
        elif len(taken) >= self.k or (self.allow_partial and taken):
            status = RunStatus.completed
        else:
            status = RunStatus.failed
        if status == RunStatus.failed and self.join != "all":
            note = f"{len(taken)} of the {self.k} branch(es) needed completed: {note}"
        if status == RunStatus.completed and self.join != "all":
            note = ""  # the branches cancelled once the join was met are not a problem
        return self.result(status, output=output, children=children,
                           reason=join_reason(note, conflicts))


def _labelled(name: str, branches: Mapping[str, Any] | Sequence[Any]) -> list[tuple[str, Step]]:
    if isinstance(branches, Mapping):
        pairs = [(str(k), to_step(v)) for k, v in branches.items()]
    else:
        steps = [to_step(b) for b in branches]
        pairs = [(s.name, s) for s in steps]
    if not pairs:
        raise SpecError(f"{name!r}: give at least one branch")
    seen: set[str] = set()
    for label, _ in pairs:
        if label in seen:
            raise SpecError(f"{name!r}: two branches are called {label!r}; give the branches "
                            "as a dict of distinct names")
        seen.add(label)
    return pairs


Split = Callable[[str], Any]


async def split_items(input: str, split: Split | None, owner: str) -> list[Any]:
    """The items of an input: `split(input)` (sync or async, any iterable), or the input as a
    JSON list. Raises ValueError saying what was wrong."""
    if split is not None:
        value = split(input)
        if inspect.isawaitable(value):
            value = await value
        if hasattr(value, "__aiter__"):
            return [item async for item in value]
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise ValueError(f"{owner}: split returned {type(value).__name__}, not a list")
        return list(value)
    try:
        value = json.loads(input)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{owner}: the input is not a JSON list ({exc.msg}) and there is no "
                         "split function") from None
    if not isinstance(value, list):
        raise ValueError(f"{owner}: the input is JSON {type(value).__name__}, not a list, and "
                         "there is no split function")
    return value


class _ReduceFunction:
    """A plain function as the reduce step: it gets the mapped outputs themselves, not JSON."""

    def __init__(self, fn: Callable[[list[Any]], Any], outputs: list[Any]) -> None:
        self.name = str(getattr(fn, "__name__", "reduce"))
        self.fn = fn
        self.outputs = outputs

    async def run(self, input: str, *, ctx: ToolContext | None = None) -> RunResult:
        try:
            value = self.fn(self.outputs)
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:
            return RunResult(status=RunStatus.failed, agent=self.name,
                             reason=f"{type(exc).__name__}: {exc}")
        return RunResult(status=RunStatus.completed, agent=self.name, output=value,
                         text=output_text(value))


class MapReduce(Workflow):
    """Split the input into items, map each over a pool of workers, then reduce.

    `split`: a function of the input returning the items (sync or async), or None for a JSON
    list input. `mapper`: a step, or a list of steps (agents) used as a worker pool:
    `concurrency` workers (default: one per step), worker w always uses step w % len, and each
    free worker takes the next item. An item's input is the item (JSON for non-strings).
    `reduce`: a step that receives the mapped outputs as a JSON list, or a plain function of
    the list; None returns the list. A failed item is reported by index with its reason; the
    workflow then fails without reducing, unless `allow_partial` (reduce what completed).

    `prefetch`: items a worker holds queued behind the one it runs, so that it goes straight
    from one item to the next instead of idling for the round trip to this workflow (about 6 ms
    an item here, 10% of a 50 ms model call). None: 1 for an agent in an actor (its runs queue
    in its mailbox, so at most `concurrency` items still run at once), 0 for any other step
    (a second call would run alongside the first). The last `concurrency` items are never
    queued: they go to whichever worker is free. A queued item's `workflow.step.started` is
    published when it is sent, and its wait counts toward the run's timeout. On a cancel, a
    queued item starts cancelled in its actor: its cancel lands with that of the item ahead of
    it (AgentHandle.cancel), so it never reaches the model.
    """

    def __init__(self, name: str, mapper: Any, *, split: Split | None = None,
                 reduce: Any = None, concurrency: int | None = None,
                 allow_partial: bool = False, merge: Rules = None, description: str = "",
                 checkpoint: bool = True, prefetch: int | None = None) -> None:
        super().__init__(name, description=description, checkpoint=checkpoint)
        pool = list(mapper) if isinstance(mapper, (list, tuple)) else [mapper]
        if not pool:
            raise SpecError(f"map-reduce {name!r}: give at least one mapper")
        if concurrency is not None and concurrency < 1:
            raise SpecError(f"map-reduce {name!r}: concurrency must be at least 1")
        check_prefetch(f"map-reduce {name!r}", prefetch)
        self.mappers: list[Step] = [to_step(m) for m in pool]
        self.split = split
        self.reduce = reduce
        self.reduce_step = to_step(reduce) if reduce is not None and not is_function(reduce) \
            else None
        self.concurrency = concurrency or len(self.mappers)
        self.allow_partial = allow_partial
        self.merge = _rules(merge)
        self.prefetch = prefetch

    def _prefetch(self, worker: int) -> int:
        return prefetch_for(self.mappers[worker % len(self.mappers)], self.prefetch)

    async def _execute(self, input: str, ctx: ToolContext, inputs: dict[str, Any],
                       cp: Checkpoint) -> RunResult:
        try:
            items = await split_items(input, self.split, f"map-reduce {self.name!r}")
        except Exception as exc:
            return self.result(RunStatus.failed, reason=f"split: {exc}")
        ctx.publish("workflow.split", {"workflow": self.name, "items": len(items)})
        block = Block(ctx, self.merge)
        results = await self._map(items, ctx, inputs, cp, block)
        if ctx.cancel.cancelled:
            return self.result(RunStatus.cancelled, children=results,
                               reason=ctx.cancel.reason or "cancelled")
        failed = [(f"item {i}", r) for i, r in enumerate(results) if not r.ok]
        note = f"{len(failed)} of {len(items)} items failed: {summarize(failed)}" \
            if failed else ""
        if failed and (not self.allow_partial or len(failed) == len(items)):
            return self.result(RunStatus.failed, children=results,
                               reason=join_reason(note, block.note()))
        outputs = [r.output for r in results if r.ok]
        reduced = await self._reduce(outputs, ctx, inputs, cp, index=len(items))
        children = [*results, reduced] if reduced is not None else results
        if reduced is None:
            return self.result(RunStatus.completed, output=outputs, children=children,
                               reason=join_reason(note, block.note()))
        reason = join_reason(note, block.note())
        if not reduced.ok:
            reason = join_reason(f"reduce {reduced.agent!r} {reduced.status}: {reduced.reason}",
                                 reason)
        return self.result(reduced.status, output=reduced.output, children=children,
                           reason=reason)

    async def _map(self, items: list[Any], ctx: ToolContext, inputs: dict[str, Any],
                   cp: Checkpoint, block: Block) -> list[RunResult]:
        results: list[RunResult | None] = [None] * len(items)

        async def work(w: int, i: int) -> None:
            step = self.mappers[w % len(self.mappers)]
            results[i] = await self.call(step, item_text(items[i]),
                                         block.branch(f"{step.name}[{i}]"), index=i,
                                         step_id=f"m{i}", cp=cp, inputs=inputs)

        await run_pool(len(items), self.concurrency, work, block.token, prefetch=self._prefetch)
        return [r if r is not None else _cancelled(f"item {i}", "not started: "
                                                   f"{block.token.reason}")
                for i, r in enumerate(results)]

    async def _reduce(self, outputs: list[Any], ctx: ToolContext, inputs: dict[str, Any],
                      cp: Checkpoint, *, index: int) -> RunResult | None:
        if self.reduce is None:
            return None
        step = self.reduce_step or _ReduceFunction(self.reduce, outputs)
        text = json.dumps(outputs, default=str, ensure_ascii=False)
        return await self.call(step, text, ctx, index=index, step_id="reduce", cp=cp,
                               inputs=inputs)
