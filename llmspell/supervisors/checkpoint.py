"""Workflow positions in job state, so that a resumed run does not redo completed steps.

A workflow run records its completed steps in job state, in batches::

    job:__checkpoint__:<branch>[@<position>]::<batch id>
        {"schema": 2, "workflow": ..., "kind": ...,
         "steps": [{"step": ..., "input_sha": ..., "agent": ..., "output": ..., "text": ...,
                    "turns": ..., "usage": {...}, "cost_usd": ..., "at": <unix time>}, ...]}

Schema 2 added each step's usage and cost, so a resumed workflow's result still counts what
its restored steps cost (under schema 1 they counted as free). Batches of schema 1, written
before the upgrade, are still read: their steps restore with no usage recorded.

`<branch>` is the workflow's call chain (`ctx.branch`); `<position>` is the chain of step ids of
the enclosing workflows (`2.review|i3`: in the third iteration of the loop that is step 2), so
a workflow nested in a loop keeps one set of records per iteration, and the same workflow used
twice in a sequence keeps two.

Records are written behind the steps by one writer per run, which gathers the records of
`linger_s` (200 ms) into one write. A serial workflow thus writes one record per step as it
goes; a fan-out of 200 branches writes a few dozen batches instead of 200 keys (each write is a
call to the state service, a commit and a `state.changed` event). Batch ids
are unique (time-ordered), so writers never contend for a key, and a record is written once,
never rewritten; when several runs recorded the same step, the latest record wins.

Runs started with `resume=True` (or inside `with resuming():`, which a job runner uses for a
whole job) read the records first and reuse a step's stored result when the step is given the
same input as when it was recorded (`input_sha`), instead of running it again. A fresh run
ignores the records; its own records supersede them. `clear(state)` removes a job's records.

The position and the resume flag travel in context variables, because a step (an agent, a
tool, a pattern) only receives `(input, ctx)`: they follow every nested call made in this
process, tasks included. Records carry a schema version; a reader per version upgrades old
ones, and a batch of an unknown (newer) version is ignored, so its steps run again (with a
`workflow.checkpoint.unreadable` event naming the versions this code reads).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

from llmspell.agents.result import RunResult, RunStatus
from llmspell.llm.types import Usage
from llmspell.runtime.messages import new_id
from llmspell.tools.context import StateAccess

__all__ = [
    "KEY_PREFIX",
    "SCHEMA_VERSION",
    "Checkpoint",
    "Position",
    "StoredStep",
    "at_position",
    "clear",
    "current_position",
    "input_sha",
    "parse_record",
    "resuming",
    "step_position",
]

SCHEMA_VERSION = 2
KEY_PREFIX = "job:__checkpoint__:"
RESTORED = "restored from checkpoint"

Publish = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class Position:
    """Where the code running now sits inside enclosing workflow runs."""

    resume: bool = False
    path: tuple[str, ...] = ()
    # Records written before this (a unix time) are not reused: a fresh run resumed after its
    # host died (llmspell.supervisors.hosted) takes back its own steps, not an earlier run's.
    since: float = 0.0


_TOP = Position()  # frozen: sharing it as the default is safe
_POSITION: ContextVar[Position] = ContextVar("llmspell_workflow_position")


def current_position() -> Position:
    return _POSITION.get(_TOP)


@contextlib.contextmanager
def resuming(resume: bool = True) -> Iterator[None]:
    """Runs started inside reuse (or, with False, ignore) checkpointed steps."""
    with at_position(replace(current_position(), resume=resume)):
        yield


@contextlib.contextmanager
def at_position(position: Position) -> Iterator[None]:
    """Runs started inside sit at `position` (a workflow run in another process, which
    brought its caller's position along)."""
    token = _POSITION.set(position)
    try:
        yield
    finally:
        _POSITION.reset(token)


@contextlib.contextmanager
def step_position(step_id: str) -> Iterator[None]:
    """What a workflow sets while one of its steps runs, so nested workflows key their
    records under this step."""
    here = current_position()
    with at_position(replace(here, path=(*here.path, step_id))):
        yield


def input_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def storable(value: Any) -> Any:
    """A value the state store can pack (pydantic models as their JSON data)."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return value


@dataclass(frozen=True, slots=True)
class StoredStep:
    step: str
    input_sha: str
    agent: str
    output: Any
    text: str
    turns: int
    at: float = 0.0
    usage: Usage | None = None  # None: recorded by schema 1, which did not keep it
    cost_usd: float = 0.0

    def result(self) -> RunResult:
        return RunResult(status=RunStatus.completed, agent=self.agent, output=self.output,
                         text=self.text, turns=self.turns, reason=RESTORED,
                         usage=self.usage or Usage(), cost_usd=self.cost_usd)


def _read_v1(batch: dict[str, Any]) -> list[StoredStep]:
    return [StoredStep(step=str(r["step"]), input_sha=str(r["input_sha"]),
                       agent=str(r.get("agent", "")), output=r.get("output"),
                       text=str(r.get("text", "")), turns=int(r.get("turns", 0)),
                       at=float(r.get("at", 0.0)))
            for r in batch["steps"]]


def _read_v2(batch: dict[str, Any]) -> list[StoredStep]:
    """Schema 1 plus each step's usage and cost."""
    return [replace(stored, usage=Usage.model_validate(r["usage"]),
                    cost_usd=float(r["cost_usd"]))
            for stored, r in zip(_read_v1(batch), batch["steps"], strict=True)]


# A reader per schema version: a new format adds a reader here and keeps the old ones, so
# records written before an upgrade are still read by the new code.
_READERS: dict[int, Callable[[dict[str, Any]], list[StoredStep]]] = {1: _read_v1, 2: _read_v2}


def parse_record(value: Any) -> list[StoredStep] | None:
    """The step records of a stored batch, or None if this version cannot read it."""
    if not isinstance(value, dict):
        return None
    reader = _READERS.get(value.get("schema"))  # type: ignore[arg-type]
    if reader is None:
        return None
    try:
        return reader(value)
    except (KeyError, TypeError, ValueError):  # pydantic's ValidationError is a ValueError
        return None


async def clear(state: StateAccess, prefix: str = KEY_PREFIX) -> int:
    """Delete the checkpoint records under `prefix` (by default all of the job's); returns how
    many batches were deleted."""
    found = await state.list(prefix)
    deleted = await asyncio.gather(*(state.delete(key) for key in found))
    return sum(deleted)


class Checkpoint:
    """The records of one workflow run. `record` hands a step's record to the run's writer
    (a step does not wait for its checkpoint); `flush` waits until every record is written and
    is called before the workflow returns, so no write is left behind unseen."""

    # How long a record waits for others to share its write: a fan-out writes a batch per
    # interval instead of a key per step, and a record not yet written when the driver dies
    # only means that step runs again on resume. A serial workflow calls `sync` before its next
    # step instead, so a step it finished is never redone. A write costs ~3 ms of CPU over the
    # driver, the state service and the hub: at 0.2 s rather than 0.05, the CPU fan-out of
    # benchmarks/patterns.py writes ~35 batches instead of ~105 and its driver and state service
    # spend 1.3-1.5 ms less CPU per item. The event log lags as much (event_batch_delay_s).
    linger_s = 0.2

    def __init__(self, state: StateAccess | None, scope: str, *, workflow: str, kind: str,
                 resume: bool, publish: Publish, since: float = 0.0) -> None:
        self.state = state
        self.scope = scope
        self.workflow = workflow
        self.kind = kind
        self.resume = resume
        self.since = since
        self.publish = publish
        self.stored: dict[str, StoredStep] = {}
        self.written = 0  # records
        self.batches = 0
        self._buffer: list[dict[str, Any]] = []
        self._writer: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._hurry = False

    @classmethod
    async def open(cls, state: StateAccess | None, branch: str, *, workflow: str, kind: str,
                   enabled: bool, publish: Publish) -> Checkpoint:
        position = current_position()
        scope = KEY_PREFIX + branch + ("@" + "|".join(position.path) if position.path else "")
        cp = cls(state if enabled else None, scope, workflow=workflow, kind=kind,
                 resume=position.resume, publish=publish, since=position.since)
        if cp.state is not None and cp.resume:
            await cp._load()
        return cp

    @property
    def enabled(self) -> bool:
        return self.state is not None

    async def _load(self) -> None:
        assert self.state is not None
        try:
            found = await self.state.list(self.scope + "::")
        except Exception as exc:  # an unreadable checkpoint means redoing work, not failing
            self._failed("read", exc)
            return
        unreadable = 0
        for versioned in found.values():
            records = parse_record(versioned.value)
            if records is None:
                unreadable += 1
                continue
            for stored in records:
                if stored.at < self.since:
                    continue
                known = self.stored.get(stored.step)
                if known is None or stored.at >= known.at:  # the latest run's record wins
                    self.stored[stored.step] = stored
        if unreadable:
            self.publish("workflow.checkpoint.unreadable", {
                "workflow": self.workflow, "batches": unreadable,
                "reason": f"records of a schema other than {sorted(_READERS)}: their steps "
                          "run again"})

    def done(self, step_id: str, input: str) -> RunResult | None:
        """The stored result of `step_id` when resuming and it ran on the same input."""
        stored = self.stored.get(step_id)
        if stored is None or stored.input_sha != input_sha(input):
            return None
        return stored.result()

    def record(self, step_id: str, input: str, result: RunResult) -> None:
        if self.state is None or not result.ok or result.reason == RESTORED:
            return
        self._buffer.append({"step": step_id, "input_sha": input_sha(input),
                             "agent": result.agent, "output": storable(result.output),
                             "text": result.text, "turns": result.turns,
                             "usage": result.usage.model_dump(mode="json"),
                             "cost_usd": result.cost_usd, "at": time.time()})
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_all())

    async def _write_all(self) -> None:
        while self._buffer and self.state is not None:
            if self.linger_s and not self._closing.is_set() and not self._hurry:
                # let the records of parallel steps gather (a flush cuts the wait short)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), self.linger_s)
            batch, self._buffer = self._buffer, []
            value = {"schema": SCHEMA_VERSION, "workflow": self.workflow, "kind": self.kind,
                     "steps": batch}
            try:
                await self.state.set(f"{self.scope}::{new_id()}", value)
            except Exception as exc:  # the run goes on; a resume would redo these steps
                self._failed("write", exc, steps=[r["step"] for r in batch][:20])
                self.state = None  # one report, not one per step: the store refuses these
                return
            self.written += len(batch)
            self.batches += 1

    async def sync(self) -> None:
        """Wait until every record so far is written, without lingering."""
        self._hurry = True
        try:
            if self._buffer and (self._writer is None or self._writer.done()):
                self._writer = asyncio.get_running_loop().create_task(self._write_all())
            self._closing.set()  # cut a lingering writer's wait short
            while self._writer is not None and not self._writer.done():
                await asyncio.gather(self._writer, return_exceptions=True)
        finally:
            self._closing.clear()
            self._hurry = False

    async def flush(self) -> None:
        self._closing.set()
        while self._writer is not None and not self._writer.done():
            await asyncio.gather(self._writer, return_exceptions=True)

    def _failed(self, what: str, exc: Exception, **extra: Any) -> None:
        self.publish("workflow.checkpoint.failed", {
            "workflow": self.workflow, "operation": what,
            "error": f"{type(exc).__name__}: {exc}"[:500], **extra})
