"""Pipeline: stages joined by bounded queues, items streamed through with backpressure."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmspell.agents.result import RunResult, RunStatus
from llmspell.agents.spec import SpecError
from llmspell.supervisors.base import Step
from llmspell.supervisors.checkpoint import Checkpoint
from llmspell.supervisors.workflows._core import (
    Block,
    Workflow,
    item_text,
    join_reason,
    next_input,
    summarize,
    to_step,
)
from llmspell.supervisors.workflows.fanout import Rules, Split, _rules
from llmspell.tools.context import ToolContext

__all__ = ["Pipeline", "Stage"]

_DONE = object()  # the end of a queue's items (one per worker of the stage reading it)


class Stage:
    """One stage: a step (or a list of steps, used by its workers in turn) and `workers`, how
    many items it works on at once (default: one per step)."""

    def __init__(self, step: Any, *, workers: int | None = None, name: str | None = None
                 ) -> None:
        steps = list(step) if isinstance(step, (list, tuple)) else [step]
        if not steps:
            raise SpecError("a pipeline stage needs at least one step")
        self.steps: list[Step] = [to_step(s) for s in steps]
        self.workers = workers or len(self.steps)
        if self.workers < 1:
            raise SpecError("a pipeline stage needs at least one worker")
        self.name = name or self.steps[0].name


@dataclass
class _Run:
    """What one pipeline run shares between its feeder and its workers."""

    ctx: ToolContext
    inputs: dict[str, Any]
    cp: Checkpoint
    block: Block
    queues: list[asyncio.Queue[Any]]
    stop: asyncio.Future[str]
    running: list[int]  # workers of each stage still running
    count: int = 0  # items fed so far
    problem: str = ""  # why the source stopped early
    final: dict[int, RunResult] = field(default_factory=dict)
    failed: dict[int, tuple[int, RunResult]] = field(default_factory=dict)  # item -> stage
    steps: list[tuple[int, int, RunResult]] = field(default_factory=list)  # item, stage, result


class Pipeline(Workflow):
    """Items flow through `stages` (steps or `Stage`s); a bounded queue of `queue_size` sits
    before each stage, so a slow stage blocks the one upstream once its queue is full, and the
    source is pulled only as the first queue has room.

    The items: `split(input)` (a list, any iterable, or an async iterable streamed in as it
    produces) or the input as a JSON list. Each stage's output for an item is the next stage's
    input. The output is the list of final outputs in input order (None for an item that
    failed). A failing item is reported (its index, stage and reason) and the others go on; the
    pipeline then fails, unless `allow_partial`.
    """

    def __init__(self, name: str, stages: Sequence[Any], *, queue_size: int = 8,
                 split: Split | None = None, allow_partial: bool = False, merge: Rules = None,
                 description: str = "", checkpoint: bool = True) -> None:
        super().__init__(name, description=description, checkpoint=checkpoint)
        if not stages:
            raise SpecError(f"pipeline {name!r}: give at least one stage")
        if queue_size < 1:
            raise SpecError(f"pipeline {name!r}: queue_size must be at least 1")
        self.stages = [s if isinstance(s, Stage) else Stage(s) for s in stages]
        self.queue_size = queue_size
        self.split = split
        self.allow_partial = allow_partial
        self.merge = _rules(merge)

    async def _execute(self, input: str, ctx: ToolContext, inputs: dict[str, Any],
                       cp: Checkpoint) -> RunResult:
        try:
            source = await self._source(input)
        except Exception as exc:
            return self.result(RunStatus.failed, reason=f"split: {exc}")
        block = Block(ctx, self.merge)
        run = _Run(ctx=ctx, inputs=inputs, cp=cp, block=block,
                   queues=[asyncio.Queue(self.queue_size) for _ in self.stages],
                   stop=asyncio.ensure_future(block.token.wait()),
                   running=[s.workers for s in self.stages])
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._feed(run, source))
                for s, stage in enumerate(self.stages):
                    for w in range(stage.workers):
                        group.create_task(self._work(run, s, w))
        finally:
            run.stop.cancel()
        return self._outcome(run)

    async def _source(self, input: str) -> AsyncIterator[Any]:
        if self.split is None:
            items = json.loads(input)
            if not isinstance(items, list):
                raise ValueError(f"pipeline {self.name!r}: the input is JSON "
                                 f"{type(items).__name__}, not a list, and there is no split")
            return _aiter(items)
        value = self.split(input)
        if inspect.isawaitable(value):
            value = await value
        if hasattr(value, "__aiter__"):
            return value  # type: ignore[no-any-return]
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise ValueError(f"pipeline {self.name!r}: split returned {type(value).__name__}")
        return _aiter(value)

    async def _feed(self, run: _Run, source: AsyncIterator[Any]) -> None:
        try:
            async for item in source:
                if not await _put(run.queues[0], (run.count, item_text(item)), run.stop):
                    return
                run.count += 1
        except Exception as exc:  # the items fed so far still go through, then it fails
            run.problem = f"the source failed after {run.count} item(s): " \
                          f"{type(exc).__name__}: {exc}"
        for _ in range(self.stages[0].workers):
            if not await _put(run.queues[0], _DONE, run.stop):
                return

    async def _work(self, run: _Run, s: int, w: int) -> None:
        stage = self.stages[s]
        step = stage.steps[w % len(stage.steps)]
        last = s == len(self.stages) - 1
        while True:
            got = await _get(run.queues[s], run.stop)
            if got is None:
                return  # cancelled
            if got is _DONE:
                break
            i, text = got
            result = await self.call(step, text, run.block.branch(f"{stage.name}[{i}]"),
                                     index=i, step_id=f"s{s}.{i}", cp=run.cp,
                                     label=f"{stage.name}", inputs=run.inputs)
            run.steps.append((i, s, result))
            if not result.ok:
                run.failed[i] = (s, result)
            elif last:
                run.final[i] = result
            elif not await _put(run.queues[s + 1], (i, next_input(result)), run.stop):
                return
        run.running[s] -= 1
        if run.running[s] == 0 and not last:  # the last worker out closes the next queue
            for _ in range(self.stages[s + 1].workers):
                if not await _put(run.queues[s + 1], _DONE, run.stop):
                    return

    def _outcome(self, run: _Run) -> RunResult:
        problem = run.problem
        children = [r for _, _, r in sorted(run.steps, key=lambda t: (t[0], t[1]))]
        output = [run.final[i].output if i in run.final else None for i in range(run.count)]
        failed = [(f"item {i} at stage {s} ({self.stages[s].name})", r)
                  for i, (s, r) in sorted(run.failed.items())]
        note = f"{len(failed)} of {run.count} items failed: {summarize(failed)}" \
            if failed else ""
        reason = join_reason(problem, note, run.block.note())
        if run.ctx.cancel.cancelled:
            return self.result(RunStatus.cancelled, output=output, children=children,
                               reason=join_reason(run.ctx.cancel.reason or "cancelled", reason))
        if problem or (failed and (not self.allow_partial or not run.final)):
            return self.result(RunStatus.failed, output=output, children=children,
                               reason=reason)
        return self.result(RunStatus.completed, output=output, children=children,
                           reason=reason)


async def _aiter(items: Iterable[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


async def _put(queue: asyncio.Queue[Any], item: Any, stop: asyncio.Future[str]) -> bool:
    """Put, waiting while the queue is full (the backpressure); False once cancelled."""
    if stop.done():
        return False
    if not queue.full():
        queue.put_nowait(item)
        return True
    put = asyncio.ensure_future(queue.put(item))
    await _first(put, stop)
    if put.done():
        return True
    put.cancel()
    return False


async def _get(queue: asyncio.Queue[Any], stop: asyncio.Future[str]) -> Any:
    """The next item, or None once cancelled."""
    if stop.done():
        return None
    if not queue.empty():
        return queue.get_nowait()
    get = asyncio.ensure_future(queue.get())
    await _first(get, stop)
    if get.done():
        return get.result()
    get.cancel()
    return None


async def _first(*futures: asyncio.Future[Any]) -> None:
    await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
