"""Waiting in tests for a state to settle (an actor's death reaching Ray, a restart
finishing): a poll, used before an invariant is checked, never as the invariant itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

__all__ = ["until"]


async def until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.05
                ) -> Any:
    """Poll `check` (sync or async) until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(every)
