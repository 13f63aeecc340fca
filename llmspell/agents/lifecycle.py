"""An agent's lifecycle as an explicit state machine.

Every transition is checked against the table below (an illegal one raises IllegalTransition,
naming the agent and both states) and published as an `agent.state` event, so a progress view
and a supervisor read the same truth::

    created -> ready -> running <-> waiting_tool
                 ^        |  \\-> waiting_approval -> running
                 |        v
                 +---- (done) ; running -> failed -> ready ; ready <-> paused ; * -> stopped
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any

from llmspell.runtime.errors import LlmspellError

__all__ = ["AgentStatus", "IllegalTransition", "Lifecycle"]


class AgentStatus(StrEnum):
    created = "created"
    ready = "ready"
    running = "running"
    waiting_tool = "waiting_tool"
    waiting_approval = "waiting_approval"
    paused = "paused"
    failed = "failed"
    stopped = "stopped"


S = AgentStatus
ALLOWED: dict[AgentStatus, frozenset[AgentStatus]] = {
    S.created: frozenset({S.ready, S.stopped}),
    S.ready: frozenset({S.running, S.paused, S.stopped}),
    S.running: frozenset({S.ready, S.waiting_tool, S.waiting_approval, S.failed, S.stopped}),
    S.waiting_tool: frozenset({S.running, S.failed, S.stopped}),
    S.waiting_approval: frozenset({S.running, S.ready, S.stopped}),
    S.paused: frozenset({S.ready, S.stopped}),
    S.failed: frozenset({S.ready, S.stopped}),
    S.stopped: frozenset(),
}


class IllegalTransition(LlmspellError):
    def __init__(self, agent: str, current: AgentStatus, target: AgentStatus) -> None:
        allowed = ", ".join(sorted(ALLOWED[current])) or "none"
        super().__init__(f"agent {agent!r} cannot go from {current} to {target} "
                         f"(allowed from {current}: {allowed})")
        self.agent = agent
        self.current = current
        self.target = target


class Lifecycle:
    def __init__(self, agent: str, emit: Callable[[str, dict[str, Any]], None] | None = None,
                 status: AgentStatus = AgentStatus.created) -> None:
        self.agent = agent
        self.status = status
        self._emit = emit

    def to(self, target: AgentStatus, reason: str = "") -> None:
        if target not in ALLOWED[self.status]:
            raise IllegalTransition(self.agent, self.status, target)
        previous, self.status = self.status, target
        if self._emit is not None:
            self._emit("agent.state", {"agent": self.agent, "from": str(previous),
                                       "to": str(target), "reason": reason})

    def can(self, target: AgentStatus) -> bool:
        return target in ALLOWED[self.status]
