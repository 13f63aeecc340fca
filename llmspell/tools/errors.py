"""The errors of tools. Each names the tool, and what is wrong with the call::

    ToolError                 a tool failed; the message goes back to the model as a tool error
    ├── ToolArgumentError     the arguments do not fit the tool's schema (one line per field path)
    ├── ToolNotFound          no tool of that name (with the closest names)
    ├── ToolTimeout           the tool ran past its timeout
    ├── ToolUnavailable       the tool's pool could not run it (and it is not safe to retry)
    ├── SandboxViolation      the call reached outside the job's sandbox
    └── RecursionLimit        an agent-as-tool chain went too deep or came back to itself
"""

from __future__ import annotations

from typing import Any

from llmspell.runtime.errors import LlmspellError


class ToolError(LlmspellError):
    """A tool call failed. The message is what the model is shown."""

    def __init__(self, tool: str, message: str) -> None:
        super().__init__(f"tool {tool!r}: {message}")
        self.tool = tool
        self.detail = message


class ToolArgumentError(ToolError):
    def __init__(self, tool: str, errors: list[dict[str, Any]]) -> None:
        lines = "; ".join(f"{e['path']}: {e['message']}" for e in errors)
        super().__init__(tool, f"invalid arguments: {lines}")
        self.errors = errors


class ToolNotFound(ToolError):
    def __init__(self, tool: str, suggestions: list[str] | None = None) -> None:
        hint = f" (did you mean {', '.join(repr(s) for s in suggestions)}?)" if suggestions else ""
        super().__init__(tool, f"no such tool{hint}")
        self.suggestions = suggestions or []


class ToolTimeout(ToolError):
    def __init__(self, tool: str, timeout: float) -> None:
        # To the millisecond: a call's deadline leaves the tool budgets like 0.979863 s.
        super().__init__(tool, f"no result within {round(timeout, 3):g}s")
        self.timeout = timeout


class ToolUnavailable(ToolError):
    """The pool lost the call (a replica died) and could not safely run it again."""


class SandboxViolation(ToolError):
    pass


class RecursionLimit(ToolError):
    def __init__(self, tool: str, chain: list[str], why: str) -> None:
        super().__init__(tool, f"{why} (call chain: {' -> '.join(chain)})")
        self.chain = chain
