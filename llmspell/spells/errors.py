"""The errors of spells. Each carries what a user needs to fix the spell: the file, the line,
the Lua traceback.

    SpellError
    ├── SpellSyntaxError         the spell does not compile: file, line and Lua's message
    ├── SpellRuntimeError        the spell raised and did not catch it: message and Lua traceback
    │   └── SpellLimitExceeded   the instruction or memory limit stopped a runaway spell
    └── SpellRunFailed           a run the spell started was cancelled or failed
"""

from __future__ import annotations

from llmspell.agents.result import RunResult
from llmspell.runtime.errors import LlmspellError

__all__ = ["SpellError", "SpellLimitExceeded", "SpellRunFailed", "SpellRuntimeError",
           "SpellSyntaxError"]


class SpellError(LlmspellError):
    """Base class of the errors of a spell."""


class SpellSyntaxError(SpellError):
    """The spell does not compile. `str()` reads `spell.lua:3: unexpected symbol near 'x'`."""

    def __init__(self, file: str, line: int | None, message: str) -> None:
        super().__init__(message)
        self.file = file
        self.line = line
        self.message = message


class SpellRuntimeError(SpellError):
    """An error the spell did not catch, with the Lua traceback of the spell's lines."""

    def __init__(self, message: str, traceback: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.traceback = traceback

    def __str__(self) -> str:
        return f"{self.message}\n{self.traceback}" if self.traceback else self.message


class SpellLimitExceeded(SpellRuntimeError):
    """The spell ran past its instruction or memory limit."""


class SpellRunFailed(SpellError):
    """A run the spell started (an agent, a workflow, a pattern) was cancelled or failed. It
    reaches Lua as the error `cancelled: <reason>` or `failed: <reason>`; uncaught, it decides
    how the job ends (a budget hook's cancel is a budget stop)."""

    def __init__(self, result: RunResult) -> None:
        super().__init__(f"{result.status}: {result.reason or 'no reason given'}")
        self.result = result
