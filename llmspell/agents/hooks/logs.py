"""The logging hook: one structured log line per model call, tool call and agent run.

    LoggingHook(level="info").register(registry)

Each line names the operation, the agent, the job and the duration. Arguments and answers are
not logged (they are large, and may hold what redaction has not been told about): events carry
content, logs carry facts. The line goes through structlog's processors, which redact secrets.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

from llmspell.agents.hooks._common import (
    HookResources,
    Op,
    Options,
    TimingObserver,
    failure_kind,
    operation,
)
from llmspell.llm.types import Response
from llmspell.runtime.hooks import HookContext
from llmspell.runtime.logs import get_logger, redact

__all__ = ["LoggingHook", "LoggingOptions", "build"]

_FINE = frozenset({"ok", "completed", "handoff", "paused"})  # run statuses that are no failure


class LoggingOptions(Options):
    level: Literal["debug", "info", "warning"] = "info"
    """The level of lines for operations that succeeded (failures are warnings)."""


class LoggingHook(TimingObserver):
    """Logs every operation with its duration. An observer: it never changes anything."""

    name = "logging"

    def __init__(self, options: LoggingOptions | None = None, /, *, logger: Any = None,
                 **fields: Any) -> None:
        self.options = options or LoggingOptions(**fields)
        self.log = logger if logger is not None else get_logger(component="hooks")
        super().__init__()

    def after(self, ctx: HookContext) -> None:
        op = operation(ctx)
        if op is None:
            return
        status = _status(op, ctx.payload)
        method = self.options.level if status in _FINE else "warning"
        if not _enabled(self.log, method):  # the line would be dropped: skip building it
            return
        getattr(self.log, method)(f"{op.kind}.done", status=status, **self._fields(ctx, op),
                                  **_details(op, ctx.payload))

    def error(self, ctx: HookContext) -> None:
        op = operation(ctx)
        if op is None:
            return
        error = ctx.error
        status = "cancelled" if failure_kind(error) == "cancelled" else "error"
        self.log.warning(f"{op.kind}.failed", status=status, **self._fields(ctx, op),
                         error_type=type(error).__name__,
                         error=redact(str(error))[:500])

    def _fields(self, ctx: HookContext, op: Op) -> dict[str, Any]:
        elapsed = self.elapsed_ms(ctx)
        duration = None if elapsed is None else round(elapsed, 3)
        return {"op": op.kind, "target": op.name, "agent": op.agent, "job_id": ctx.job_id,
                "attempt": ctx.attempt, "duration_ms": duration}


def _enabled(log: Any, method: str) -> bool:
    """Whether `log` writes lines at `method` ("info", ...); a logger that cannot tell does."""
    check = getattr(log, "is_enabled_for", None)
    return check is None or bool(check(logging.getLevelNamesMapping()[method.upper()]))


def _status(op: Op, result: Any) -> str:
    if op.kind == "agent":
        return str(getattr(result, "status", "ok"))
    if isinstance(result, Response) and result.finish_reason == "error":
        return "error"
    if isinstance(result, dict) and result.get("is_error") is True:
        return "error"
    return "ok"


def _details(op: Op, result: Any) -> dict[str, Any]:
    """A few numbers worth a log line: tokens and cost of a model call, turns of a run."""
    if isinstance(result, Response):
        return {"input_tokens": result.usage.input_tokens,
                "output_tokens": result.usage.output_tokens, "cost_usd": result.cost_usd,
                "finish_reason": result.finish_reason}
    if op.kind == "agent" and hasattr(result, "turns"):
        return {"turns": result.turns, "reason": str(getattr(result, "reason", ""))[:200]}
    return {}


def build(options: Mapping[str, Any], resources: HookResources) -> LoggingHook:
    return LoggingHook(LoggingOptions.model_validate(options))
