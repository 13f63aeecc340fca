"""What travels between a pool's processes: its message types, and call outcomes as data.

A tool's error reaches the caller as the same ToolError subclass, fields included, whether the
call was routed through the pool's router or run on a leased replica directly.
"""

from __future__ import annotations

from typing import Any

import msgpack

from llmspell.runtime.errors import Cancelled
from llmspell.tools.errors import (
    RecursionLimit,
    SandboxViolation,
    ToolArgumentError,
    ToolError,
    ToolNotFound,
    ToolTimeout,
    ToolUnavailable,
)

__all__ = ["CALL", "LEASE", "NO_DEADLINE_S", "RELEASE", "RUN", "SCALE", "STATS", "WITHDRAW",
           "Outcome", "PoolQueueFull", "error_from_wire", "error_to_wire", "failure",
           "gave_up", "hung", "lost_not_retried", "make_tool_error", "packable",
           "queue_timeout"]

Outcome = dict[str, Any]

CALL = "pool.call"
RUN = "pool.run"
STATS = "pool.stats"
WITHDRAW = "pool.withdraw"  # a caller gave up on a call (or a lease request), by its key
SCALE = "pool.scale_to"
LEASE = "pool.lease"  # a direct pool's caller asks for a slot to call a replica on itself
RELEASE = "pool.release"  # ... and gives it back, with the outcomes of the calls it ran there
# A call with no deadline at all (a tool without timeout) still gets an ask timeout: a day.
NO_DEADLINE_S = 86_400.0


class PoolQueueFull(ToolUnavailable):
    """Every replica is at its cap and the pool's queue is full."""

    def __init__(self, tool: str, pool: str, waiting: int) -> None:
        super().__init__(tool, f"pool {pool!r} is full: {waiting} calls already wait for a "
                               "replica; try again later, or raise max_queue or max_replicas")
        self.pool = pool
        self.waiting = waiting


_ERRORS: dict[str, type[ToolError]] = {cls.__name__: cls for cls in (
    ToolError, ToolArgumentError, ToolNotFound, ToolTimeout, ToolUnavailable, SandboxViolation,
    RecursionLimit, PoolQueueFull)}


def make_tool_error(cls: type[ToolError], tool: str, detail: str, **attrs: Any) -> ToolError:
    """An error of any ToolError subclass with this exact message (their constructors differ;
    the message and fields are what the caller reads)."""
    error = cls.__new__(cls)
    ToolError.__init__(error, tool, detail)
    error.__dict__.update(attrs)
    return error


def error_to_wire(exc: BaseException, tool: str) -> dict[str, Any]:
    """How a failed call travels back: the error's class name, tool, message and fields."""
    if isinstance(exc, ToolError):
        attrs = {k: v for k, v in vars(exc).items()
                 if k not in ("tool", "detail") and packable(v)}
        return {"type": type(exc).__name__, "tool": exc.tool, "detail": exc.detail,
                "attrs": attrs}
    if isinstance(exc, Cancelled):
        return {"type": "Cancelled", "tool": tool, "detail": exc.reason, "attrs": {}}
    # A tool's own bug: reported the way the agent loop reports one that ran in process.
    return {"type": "ToolError", "tool": tool, "detail": f"failed: {type(exc).__name__}: {exc}",
            "attrs": {"error_type": type(exc).__name__}}


def error_from_wire(data: dict[str, Any]) -> Exception:
    tool, detail = str(data.get("tool", "?")), str(data.get("detail", ""))
    if data.get("type") == "Cancelled":
        return Cancelled(detail)
    cls = _ERRORS.get(str(data.get("type")), ToolError)
    raw = data.get("attrs")
    attrs: dict[str, Any] = raw if isinstance(raw, dict) else {}
    if cls is ToolError and data.get("type") != "ToolError":
        attrs = {**attrs, "error_type": data.get("type")}  # a user's own ToolError subclass
    return make_tool_error(cls, tool, detail, **attrs)


def failure(exc: BaseException, tool: str) -> Outcome:
    return {"ok": False, "error": error_to_wire(exc, tool)}


def packable(value: Any) -> bool:
    try:
        msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


# -- the failures of the pool machinery, in the same words whoever dispatched the call ---------

def lost_not_retried(tool: str, replica: str) -> ToolUnavailable:
    return ToolUnavailable(tool, f"replica {replica!r} died during the call; not retried "
                                 f"because tool {tool!r} is not idempotent")


def gave_up(tool: str, attempts: int) -> ToolUnavailable:
    return ToolUnavailable(tool, f"{attempts} replicas died under this call; giving up")


def hung(tool: str, seconds: float, replica: str) -> ToolError:
    return make_tool_error(ToolTimeout, tool, f"no result within {seconds:g}s (replica "
                           f"{replica!r} did not answer; it leaves rotation)", timeout=seconds)


def queue_timeout(tool: str, budget: float | None, pool: str, lost_on: str | None) -> ToolError:
    retried = f" (retried after replica {lost_on!r} was lost under it)" if lost_on else ""
    return make_tool_error(
        ToolTimeout, tool, f"no result within {budget or 0:g}s: the deadline passed while the "
        f"call waited for a free replica of pool {pool!r}{retried}", timeout=budget)
