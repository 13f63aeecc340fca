"""Fixtures of the conformance suite: a history file per test, and a poll for invariants that
settle (an actor's death reaching Ray's state API, a restart finishing)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conformance.history import init


@pytest.fixture
def history(tmp_path: Path) -> str:
    return init(str(tmp_path / "history.db"))


async def until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.05
                ) -> Any:
    """Poll `check` (sync or async) until it returns something truthy. Used only to wait for
    a state to settle before the invariant is checked, never as the invariant itself."""
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
