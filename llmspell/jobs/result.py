"""What a job returns: its output, how it ended, what it spent, and where its events are.

`JobResult` is the same whether the job came from a YAML spec, the builder, or a Lua spell,
so the CLI prints, exits and reports in one way for all of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any

from llmspell.agents.result import RunResult, RunStatus
from llmspell.llm.types import Usage
from llmspell.runtime.events import Event

__all__ = ["ExitCode", "JobResult", "JobStatus"]


class JobStatus(StrEnum):
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"
    budget_exceeded = "budget_exceeded"


class ExitCode(IntEnum):
    """The CLI's exit codes: each way a job can end has its own."""

    ok = 0
    failed = 1
    bad_spec = 2
    budget_exceeded = 3
    cancelled = 130  # as a shell reports a process ended by SIGINT


_EXIT = {JobStatus.completed: ExitCode.ok, JobStatus.failed: ExitCode.failed,
         JobStatus.cancelled: ExitCode.cancelled,
         JobStatus.budget_exceeded: ExitCode.budget_exceeded}

Replay = Callable[[int, str], Awaitable[list[Event]]]


@dataclass
class JobResult:
    job_id: str
    status: JobStatus
    output: Any = None
    text: str = ""
    reason: str = ""
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    duration_s: float = 0.0
    run: RunResult | None = None  # the root pattern's result, with its children
    _replay: Replay | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == JobStatus.completed

    @property
    def exit_code(self) -> ExitCode:
        return _EXIT[self.status]

    async def events(self, from_seq: int = 0, pattern: str = "**") -> list[Event]:
        """The job's event log, in sequence order (while its runtime is still connected)."""
        if self._replay is None:
            raise RuntimeError(f"job {self.job_id}: its runtime is closed; open the event log "
                               "with Runtime.replay instead")
        return await self._replay(from_seq, pattern)

    def to_json(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "status": str(self.status), "output": self.output,
                "text": self.text, "reason": self.reason,
                "usage": self.usage.model_dump(), "total_tokens": self.usage.total_tokens,
                "cost_usd": round(self.cost_usd, 6), "duration_s": round(self.duration_s, 3)}

    @classmethod
    def from_run(cls, job_id: str, run: RunResult, *, duration_s: float = 0.0,
                 budget_hooks: tuple[str, ...] = ("budget",),
                 replay: Replay | None = None) -> JobResult:
        """A job's result from its root run: a run cancelled by the budget hook is a budget
        stop, not a cancellation by the user."""
        if run.status == RunStatus.completed:
            status = JobStatus.completed
        elif run.status == RunStatus.cancelled:
            by = run.cancelled_by or ""
            status = (JobStatus.budget_exceeded if by in budget_hooks or "budget" in run.reason
                      else JobStatus.cancelled)
        else:
            status = JobStatus.failed
        return cls(job_id=job_id, status=status, output=run.output, text=run.text,
                   reason=run.reason, usage=run.usage, cost_usd=run.cost_usd,
                   duration_s=duration_s, run=run, _replay=replay)
