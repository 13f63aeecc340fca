"""Tools: the Tool base, `@tool`, the registry, the call context, the sandbox, AgentTool."""

from llmspell.tools.agent_tool import AgentTool
from llmspell.tools.base import Reconciled, SideEffects, Tool
from llmspell.tools.context import ToolContext
from llmspell.tools.decorator import FunctionTool, tool
from llmspell.tools.errors import (
    RecursionLimit,
    SandboxViolation,
    ToolArgumentError,
    ToolError,
    ToolNotFound,
    ToolTimeout,
    ToolUnavailable,
)
from llmspell.tools.executor import LocalExecutor, RoutedExecutor, ToolExecutor
from llmspell.tools.registry import ToolRegistry, default_registry
from llmspell.tools.sandbox import Sandbox

__all__ = [
    "AgentTool", "FunctionTool", "LocalExecutor", "Reconciled", "RecursionLimit",
    "RoutedExecutor", "Sandbox", "SandboxViolation", "SideEffects", "Tool", "ToolArgumentError",
    "ToolContext", "ToolError", "ToolExecutor", "ToolNotFound", "ToolRegistry", "ToolTimeout",
    "ToolUnavailable", "default_registry", "tool",
]
