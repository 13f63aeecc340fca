"""Tools the pool tests run in replica processes (importable there, like actors.py).

`double` and `charge` append one line per run to an effect log: `<key> <kind> <pid>`, before
they wait, so the log shows every run that started, including those on a replica killed mid-call.
"""

from __future__ import annotations

import asyncio
import os
import time

from llmspell.tools import SideEffects, ToolContext, tool


def _log_effect(path: str | None, ctx: ToolContext, kind: str) -> None:
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(f"{ctx.idempotency_key} {kind} {os.getpid()}\n")


@tool(timeout=30)
async def double(x: int, ctx: ToolContext, effect_log: str | None = None,
                 seconds: float = 0.0) -> dict[str, int]:
    """Twice x, after `seconds` (idempotent: safe to run again)."""
    _log_effect(effect_log, ctx, "idempotent")
    await asyncio.sleep(seconds)
    return {"value": 2 * x, "pid": os.getpid()}


@tool(timeout=30, idempotent=False, side_effects=SideEffects.external)
async def charge(amount: int, ctx: ToolContext, effect_log: str | None = None,
                 seconds: float = 0.0) -> dict[str, int]:
    """Charge an amount (not idempotent: must never run twice)."""
    _log_effect(effect_log, ctx, "charge")
    await asyncio.sleep(seconds)
    return {"charged": amount, "pid": os.getpid()}


@tool(timeout=1.0)
async def nap(seconds: float) -> str:
    """Sleep, politely (an await): the tool's own timeout stops it."""
    await asyncio.sleep(seconds)
    return "rested"


@tool(timeout=1.0)
async def freeze(seconds: float) -> str:
    """Block the replica's event loop: nothing in that process answers until it ends."""
    time.sleep(seconds)  # noqa: ASYNC251 - the point of this tool
    return "thawed"


@tool
def pid() -> int:
    """The replica's process id."""
    return os.getpid()


@tool
def order(item: str, count: int, express: bool = False) -> str:
    """Order `count` of `item`."""
    return f"{count} x {item}{' (express)' if express else ''}"
