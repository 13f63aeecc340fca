"""Saga: steps with compensating actions, undone in reverse order when a later step fails.

    trip = Saga("trip", [
        SagaStep("flight", book_flight, compensate=cancel_flight),
        SagaStep("hotel", book_hotel, compensate=cancel_hotel),
        SagaStep("charge", charge_card),
    ])
    result = await trip.run("Lisbon, 3 nights")

Steps run in order, each given the previous step's output (the first gets the saga's input),
under the workflow_step hooks and with their events. When a step fails (or the run is
cancelled), the compensations of the steps that completed run in reverse order, each given
the output of the step it undoes, each recorded as a `saga.compensate` event with the step's
name and the outcome. Every compensation runs even if an earlier one failed, and a failing
compensation is reported in the result (`compensations`, and the reason) and its event, never
hidden. A cancelled saga still compensates: the rollback runs under a fresh cancel token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, Field

from llmspell.agents.result import RunResult, RunStatus
from llmspell.agents.spec import SpecError
from llmspell.runtime.cancel import CancelToken
from llmspell.runtime.errors import HookCancelled
from llmspell.supervisors.base import (
    Pattern,
    Step,
    as_step,
    env_context,
    output_text,
    run_watched,
)
from llmspell.tools.context import ToolContext

__all__ = ["Compensation", "Saga", "SagaResult", "SagaStep"]


@dataclass
class SagaStep:
    """A step and the action that undoes it (None: nothing to undo)."""

    name: str
    action: Any
    compensate: Any = None


class Compensation(BaseModel):
    step: str
    outcome: Literal["compensated", "failed", "skipped"]  # skipped: the step has none
    reason: str = ""
    output: Any = None


class SagaResult(RunResult):
    completed: list[str] = Field(default_factory=list)  # the steps that succeeded, in order
    failed_step: str | None = None
    error: str = ""  # the original failure
    compensations: list[Compensation] = Field(default_factory=list)  # in the order they ran
    outputs: dict[str, Any] = Field(default_factory=dict)


class _Watched:
    """A step run while watching the cancel token (an actor agent's run is cancelled too)."""

    def __init__(self, step: Step) -> None:
        self.step = step
        self.name = step.name

    async def run(self, input: str, *, ctx: ToolContext | None = None) -> RunResult:
        return await run_watched(self.step, input, ctx or ToolContext())


@dataclass
class _Planned:
    name: str
    action: Step
    compensate: Step | None


class Saga(Pattern):
    kind = "saga"

    def __init__(self, name: str, steps: Sequence[SagaStep | tuple[Any, ...] | Any], *,
                 description: str = "") -> None:
        super().__init__(name, description=description)
        self.steps = [self._plan(s) for s in steps]
        names = [s.name for s in self.steps]
        dup = sorted({n for n in names if names.count(n) > 1})
        if not names or dup:
            raise SpecError(f"saga {name!r} needs steps with distinct names"
                            + (f" ({', '.join(dup)} twice)" if dup else ""))

    @staticmethod
    def _plan(step: SagaStep | tuple[Any, ...] | Any) -> _Planned:
        if isinstance(step, tuple):  # (name, action) or (name, action, compensate)
            step = SagaStep(*step)
        if isinstance(step, SagaStep):
            compensate = as_step(step.compensate, name=f"undo_{step.name}") \
                if step.compensate is not None else None
            return _Planned(step.name, as_step(step.action, name=step.name), compensate)
        action = as_step(step)
        return _Planned(action.name, action, None)

    # -- the run ------------------------------------------------------------------------------

    async def run(self, input: str, *, ctx: ToolContext | None = None,
                  inputs: dict[str, Any] | None = None) -> RunResult:
        members = [s.action for s in self.steps] + [s.compensate for s in self.steps]
        return await super().run(input, ctx=ctx or env_context(members), inputs=inputs)

    async def _run(self, input: str, ctx: ToolContext, inputs: dict[str, Any]) -> RunResult:
        done: list[tuple[_Planned, RunResult]] = []
        children: list[RunResult] = []
        text = input
        failed: tuple[_Planned, RunResult] | None = None
        for index, step in enumerate(self.steps):
            if ctx.cancel.cancelled:
                failed = (step, RunResult(status=RunStatus.cancelled, agent=step.name,
                                          reason=ctx.cancel.reason or "cancelled"))
                break
            try:
                result = await self.run_step(_Watched(step.action), text, ctx, index=index,
                                             label=step.name)
            except HookCancelled as exc:  # a hook refused the step: what was done is undone
                result = RunResult(status=RunStatus.cancelled, agent=step.name,
                                   reason=str(exc), cancelled_by=exc.hook)
            children.append(result)
            if not result.ok:
                failed = (step, result)
                break
            done.append((step, result))
            text = result.text or output_text(result.output)
        if failed is None:
            return self._succeeded(done, children)
        undo = await self._compensate(done, ctx)
        return self._failed(failed, done, undo, children, cancelled=ctx.cancel.cancelled)

    async def _compensate(self, done: list[tuple[_Planned, RunResult]],
                          ctx: ToolContext) -> list[Compensation]:
        """Undo the completed steps, last first; every one is tried and reported."""
        if ctx.cancel.cancelled:  # the rollback must still run: it gets a token of its own
            ctx = replace(ctx, cancel=CancelToken())
        report: list[Compensation] = []
        for step, result in reversed(done):
            record = await self._undo(step, result, ctx)
            report.append(record)
            ctx.publish("saga.compensate", {"saga": self.name, "step": step.name,
                                            "outcome": record.outcome,
                                            "reason": record.reason[:1000]})
        return report

    async def _undo(self, step: _Planned, result: RunResult,
                    ctx: ToolContext) -> Compensation:
        if step.compensate is None:
            return Compensation(step=step.name, outcome="skipped",
                                reason="the step has no compensation")
        undone = await run_watched(step.compensate, result.text or output_text(result.output),
                                   ctx)
        if undone.ok:
            return Compensation(step=step.name, outcome="compensated", output=undone.output)
        return Compensation(step=step.name, outcome="failed",
                            reason=f"{undone.status}: {undone.reason or 'no reason given'}")

    # -- results ------------------------------------------------------------------------------

    def _succeeded(self, done: list[tuple[_Planned, RunResult]],
                   children: list[RunResult]) -> SagaResult:
        last = done[-1][1]
        base = self.result(RunStatus.completed, output=last.output, children=children)
        return SagaResult(**dict(base), completed=[s.name for s, _ in done],
                          outputs={s.name: r.output for s, r in done})

    def _failed(self, failed: tuple[_Planned, RunResult], done: list[tuple[_Planned, RunResult]],
                undo: list[Compensation], children: list[RunResult], *,
                cancelled: bool) -> SagaResult:
        step, result = failed
        error = f"step {step.name!r} ended with status {result.status}" + (
            f": {result.reason}" if result.reason else "")
        broken = [c for c in undo if c.outcome == "failed"]
        reason = error + "; " + _report(undo)
        if broken:
            reason += "; compensation FAILED for " + "; ".join(
                f"{c.step!r} ({c.reason})" for c in broken)
        status = RunStatus.cancelled if cancelled else RunStatus.failed
        base = self.result(status, reason=reason, children=children)
        return SagaResult(**dict(base), completed=[s.name for s, _ in done],
                          failed_step=step.name, error=error, compensations=undo,
                          outputs={s.name: r.output for s, r in done})


def _report(undo: list[Compensation]) -> str:
    if not undo:
        return "nothing to compensate"
    return "compensations, in reverse order: " + ", ".join(f"{c.step} {c.outcome}"
                                                           for c in undo)
