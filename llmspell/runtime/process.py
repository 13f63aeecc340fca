"""How our processes run: an actor's garbage collector tuned for a long-lived message loop
(`settle_gc`), and a command's work on uvloop (`run`).

An actor allocates and drops thousands of small objects per message. With Python's default
(a young collection every 700 net allocations) the objects that live across an await, such as
a model call's request and its futures, survive a few collections and reach the old generation;
every few hundred agent runs a full collection then walks every object of the process, the
~250k of the imported libraries included (about 100 ms on the benchmark machine, while every
message waits). Measured on an agent host: the collector took 6% of its CPU.

So each actor shell calls `settle_gc` at the end of its constructor: what is alive after the
imports and the shell's own setup (modules, classes, clients) is frozen out of collection
(`gc.freeze`), and the young threshold is raised so that short-lived objects are freed by their
reference counts before any collection sees them. Cycles are still collected, less often.
The driver's process is a user's program, left as its user set it, except where it is our own
command line: `run` drives a command's work on the loop Ray's workers use (uvloop, where it is
installed) in a settled process.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any, TypeVar

from llmspell.runtime.settings import RuntimeSettings

__all__ = ["run", "settle_gc"]

T = TypeVar("T")

_settled = False


def settle_gc(young_threshold: int | None) -> None:
    """Once per process; `young_threshold` None leaves Python's collector as it is."""
    global _settled
    if _settled or young_threshold is None:
        return
    _settled = True
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, old)


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` for a command of ours: on uvloop's event loop where it is installed
    (Ray runs its async actors on it too), in a process whose collector is settled."""
    settle_gc(RuntimeSettings().gc_young_threshold)
    try:
        import uvloop
    except ImportError:  # Windows, or an install without it: asyncio's own loop
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
