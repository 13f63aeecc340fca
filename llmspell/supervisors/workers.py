"""Running a pattern's items on a fixed set of workers.

`run_pool` is the loop under MapReduce, Parallel and worker swarms: each free worker takes the
next item. An agent in an actor (`actor_agent`) runs its messages one at a time, so a worker
may hold its next item queued behind the one it runs (`prefetch`) and go straight from one to
the next instead of idling for the round trip to the caller.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from llmspell.agents.spec import SpecError
from llmspell.runtime.cancel import CancelToken

__all__ = [
    "Slots",
    "actor_agent",
    "check_prefetch",
    "is_actor_agent",
    "prefetch_for",
    "queues_runs",
    "run_pool",
]

_ACTOR_AGENT: dict[type, bool] = {}  # by target class: inspecting a signature per step costs


def is_actor_agent(target: Any) -> bool:
    """An agent in an actor (an AgentHandle): its run takes a run id and it has `cancel`, so a
    run can be stopped across processes."""
    kind = type(target)
    if kind not in _ACTOR_AGENT:
        try:
            _ACTOR_AGENT[kind] = callable(getattr(target, "cancel", None)) and \
                "run_id" in inspect.signature(target.run).parameters
        except (AttributeError, TypeError, ValueError):
            _ACTOR_AGENT[kind] = False
    return _ACTOR_AGENT[kind]


def actor_agent(step: Any) -> Any:
    """The agent in an actor behind a step, or None."""
    target = getattr(step, "target", None)
    return target if target is not None and is_actor_agent(target) else None


def queues_runs(step: Any) -> bool:
    """True for an agent in an actor: it runs its messages one at a time, so a second run sent
    to it waits in its mailbox instead of running alongside the first. (A workflow hosted in
    an actor is cancelled the same way but runs its runs side by side: False.)"""
    agent = actor_agent(step)
    return agent is not None and getattr(agent, "runs_one_at_a_time", True)


def prefetch_for(step: Any, prefetch: int | None) -> int:
    """A worker's prefetch: as given, else 1 for an agent in an actor (its runs queue in its
    mailbox) and 0 for any other step (a second call would run alongside the first)."""
    if prefetch is not None:
        return prefetch
    return 1 if queues_runs(step) else 0


def check_prefetch(what: str, prefetch: Any) -> None:
    """Raise SpecError naming `what` (e.g. "map-reduce 'mr'") unless prefetch is None or a
    whole number, at least 0."""
    if prefetch is not None and (type(prefetch) is not int or prefetch < 0):
        raise SpecError(f"{what}: prefetch must be a whole number, at least 0; "
                        f"got {prefetch!r}")


class Slots:
    """More workers for a pool while it runs: `add(n)` starts n more (a spread Parallel's
    share is given the slots of a share that has finished). Slots added before the pool starts
    start with it; after it has ended, or beyond the items left, they are not used."""

    def __init__(self) -> None:
        self.added = 0
        self._start: Callable[[int], None] | None = None

    def add(self, n: int) -> None:
        if n <= 0:
            return
        self.added += n
        if self._start is not None:
            self._start(n)


async def run_pool(count: int, concurrency: int, work: Callable[[int, int], Awaitable[None]],
                   token: CancelToken, *, prefetch: Callable[[int], int] | None = None,
                   slots: Slots | None = None) -> None:
    """`work(worker, index)` for every index on `concurrency` workers: each free worker takes
    the next index, until none is left or the token is cancelled.

    `prefetch(worker)`: how many more indexes the worker may hold, queued behind the one it is
    working on, so that it never waits for its next one (an agent in an actor runs its
    messages one at a time, and without a queued one it idles for the round trip between two).
    While fewer than `concurrency` indexes are left, a worker takes one only when it holds
    none: the last ones go to whichever worker is free, not behind a busy one.

    `slots`: workers added while it runs (`Slots.add`), on top of `concurrency`."""
    workers = max(1, min(concurrency + (slots.added if slots else 0), count))
    taken = 0
    held = [0] * workers

    def take(w: int) -> int | None:
        nonlocal taken
        if token.cancelled or taken >= count or (held[w] and count - taken < workers):
            return None
        taken += 1
        held[w] += 1
        return taken - 1

    async def lane(w: int) -> None:
        while (i := take(w)) is not None:
            try:
                await work(w, i)
            finally:
                held[w] -= 1

    try:
        async with asyncio.TaskGroup() as group:
            def start(w: int) -> None:
                for _ in range(1 + (prefetch(w) if prefetch is not None else 0)):
                    group.create_task(lane(w))

            def more(n: int) -> None:
                nonlocal workers
                for _ in range(min(n, count - taken)):  # a worker more than the items left idles
                    if token.cancelled:
                        return
                    held.append(0)
                    workers += 1
                    start(workers - 1)

            for w in range(workers):
                start(w)
            if slots is not None:
                slots._start = more
    finally:  # ended, or a worker raised: slots given from now on go nowhere
        if slots is not None:
            slots._start = None
