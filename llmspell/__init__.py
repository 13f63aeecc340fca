"""llmspell: an actor-model multi-agent runtime on Ray."""

from typing import TYPE_CHECKING

from llmspell._lazy import lazy_names
from llmspell.runtime.errors import (
    ActorError,
    ActorNotFound,
    ActorUnavailable,
    AskTimeout,
    CodecError,
    HookCancelled,
    LlmspellError,
    MailboxClosed,
    MailboxError,
    MailboxFull,
    PatternError,
    RemoteError,
    StateError,
    VersionConflict,
)
from llmspell.runtime.events import Event
from llmspell.runtime.messages import Envelope, Kind, Priority, register_payload
from llmspell.runtime.settings import RuntimeSettings

if TYPE_CHECKING:  # what the lazy names below are, for type checkers and editors
    from llmspell.actors.agent_actor import HostSetup, spawn_agent, spawn_host
    from llmspell.actors.base import ActorBase
    from llmspell.agents import Agent, AgentSpec, RunResult, RunStatus, from_template
    from llmspell.jobs import JobResult, JobSpec, run
    from llmspell.llm import LLM, Message
    from llmspell.runtime.runtime import ActorRef, Runtime
    from llmspell.supervisors.base import Bind
    from llmspell.supervisors.consensus import Consensus
    from llmspell.supervisors.delegation import Delegation
    from llmspell.supervisors.hosted import HostedWorkflow
    from llmspell.supervisors.saga import Saga
    from llmspell.supervisors.swarm import Swarm, WorkerSwarm
    from llmspell.supervisors.workflows import (
        Conditional,
        Loop,
        MapReduce,
        Parallel,
        Pipeline,
        Sequential,
    )
    from llmspell.tools import Sandbox, Tool, ToolContext, tool

__version__ = "0.1.0"

# What needs Ray, and the layers above the runtime core, load on first use: an actor process
# that needs only the core (a tool replica, the event hub) starts without importing agents and
# patterns, and the commands that need no Ray (--help, validate, llm-server) without Ray.
_LAZY = {
    "ActorBase": "llmspell.actors.base", "ActorRef": "llmspell.runtime.runtime",
    "Runtime": "llmspell.runtime.runtime",
    "Agent": "llmspell.agents", "AgentSpec": "llmspell.agents", "RunResult": "llmspell.agents",
    "RunStatus": "llmspell.agents", "from_template": "llmspell.agents",
    "tool": "llmspell.tools", "Tool": "llmspell.tools", "ToolContext": "llmspell.tools",
    "Sandbox": "llmspell.tools", "LLM": "llmspell.llm", "Message": "llmspell.llm",
    "Sequential": "llmspell.supervisors.workflows", "Parallel": "llmspell.supervisors.workflows",
    "Conditional": "llmspell.supervisors.workflows", "Loop": "llmspell.supervisors.workflows",
    "MapReduce": "llmspell.supervisors.workflows", "Pipeline": "llmspell.supervisors.workflows",
    "Bind": "llmspell.supervisors.base", "Delegation": "llmspell.supervisors.delegation",
    "HostedWorkflow": "llmspell.supervisors.hosted",
    "Swarm": "llmspell.supervisors.swarm", "WorkerSwarm": "llmspell.supervisors.swarm",
    "Consensus": "llmspell.supervisors.consensus", "Saga": "llmspell.supervisors.saga",
    "spawn_agent": "llmspell.actors.agent_actor", "spawn_host": "llmspell.actors.agent_actor",
    "HostSetup": "llmspell.actors.agent_actor",
    "JobSpec": "llmspell.jobs", "JobResult": "llmspell.jobs", "run": "llmspell.jobs",
}

__getattr__ = lazy_names(__name__, _LAZY)

__all__ = [
    "LLM",
    "ActorBase",
    "ActorError",
    "ActorNotFound",
    "ActorRef",
    "ActorUnavailable",
    "Agent",
    "AgentSpec",
    "AskTimeout",
    "Bind",
    "CodecError",
    "Conditional",
    "Consensus",
    "Delegation",
    "Envelope",
    "Event",
    "HookCancelled",
    "HostSetup",
    "HostedWorkflow",
    "JobResult",
    "JobSpec",
    "Kind",
    "LlmspellError",
    "Loop",
    "MailboxClosed",
    "MailboxError",
    "MailboxFull",
    "MapReduce",
    "Message",
    "Parallel",
    "PatternError",
    "Pipeline",
    "Priority",
    "RemoteError",
    "RunResult",
    "RunStatus",
    "Runtime",
    "RuntimeSettings",
    "Saga",
    "Sandbox",
    "Sequential",
    "StateError",
    "Swarm",
    "Tool",
    "ToolContext",
    "VersionConflict",
    "WorkerSwarm",
    "__version__",
    "from_template",
    "register_payload",
    "run",
    "spawn_agent",
    "spawn_host",
    "tool",
]
