"""What an agent run returns: always a result with a status and a reason, never a swallowed
exception. A run that stops for approval carries a `PendingApproval`, which is plain data: it
can be stored and resumed in another process."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from llmspell.llm.types import Message, ToolCall, Usage

__all__ = ["Handoff", "PendingApproval", "RunResult", "RunStatus"]


class RunStatus(StrEnum):
    completed = "completed"  # a final answer (validated against the output schema, if any)
    handoff = "handoff"  # the model handed the conversation to another agent
    max_turns = "max_turns"  # the turn limit came first
    paused = "paused"  # waiting for a human to approve tool calls
    cancelled = "cancelled"  # by its owner, a hook (budget, guardrail) or a deadline
    failed = "failed"  # the model failed for good, or the output never validated


class Handoff(BaseModel):
    target: str
    reason: str = ""
    summary: str = ""
    call_id: str = ""


class PendingApproval(BaseModel):
    """A paused run: the conversation so far and the calls that wait for a decision."""

    run_id: str
    agent: str
    turn: int
    calls: list[ToolCall]
    approvals_needed: list[str]  # ids of the calls that need a decision
    done: dict[str, Any] = Field(default_factory=dict)  # call id -> (content, is_error) so far
    usage: Usage = Field(default_factory=Usage)
    messages: list[Message] = Field(default_factory=list)  # the conversation at the pause


class RunResult(BaseModel):
    status: RunStatus
    agent: str
    output: Any = None  # text, or the parsed object when the agent has an output schema
    text: str = ""
    reason: str = ""
    cancelled_by: str | None = None  # the hook that cancelled the run, when one did
    turns: int = 0
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float = 0.0
    handoff: Handoff | None = None
    pending: PendingApproval | None = None
    run_id: str = ""
    messages: list[Message] = Field(default_factory=list)  # what this run added
    children: list[RunResult] = Field(default_factory=list)  # a pattern's steps or branches

    @property
    def ok(self) -> bool:
        return self.status == RunStatus.completed
