"""Agents: the spec, the loop, the lifecycle, and the Agent object users hold."""

from llmspell.agents.agent import Agent
from llmspell.agents.env import AgentEnv
from llmspell.agents.lifecycle import AgentStatus, IllegalTransition
from llmspell.agents.loop import AgentBusy, AgentRunner, Decision
from llmspell.agents.result import Handoff, PendingApproval, RunResult, RunStatus
from llmspell.agents.spec import AgentSpec, MemoryPolicy, SpecError
from llmspell.agents.templates import TEMPLATES, from_template

__all__ = [
    "TEMPLATES",
    "Agent",
    "AgentBusy",
    "AgentEnv",
    "AgentRunner",
    "AgentSpec",
    "AgentStatus",
    "Decision",
    "Handoff",
    "IllegalTransition",
    "MemoryPolicy",
    "PendingApproval",
    "RunResult",
    "RunStatus",
    "SpecError",
    "from_template",
]
