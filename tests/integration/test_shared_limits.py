"""A rate limit shared by several actors holds across all of them."""

from __future__ import annotations

import asyncio

import pytest

from llmspell import Runtime
from tests.integration.actors import LimitedCaller

pytestmark = pytest.mark.ray


async def test_shared_rate_limit_holds_across_actors(runtime: Runtime, job_id: str) -> None:
    callers = [runtime.spawn(LimitedCaller, f"caller{i}", job_id=job_id) for i in range(4)]
    limit, window = 6, 1.0
    spec = {"key": f"{job_id}-key", "rpm": limit, "window": window, "calls": 5}
    grants = sorted(t for ts in await asyncio.gather(
        *(c.ask("go", spec, timeout=60) for c in callers)) for t in ts)
    assert len(grants) == 20
    for i, start in enumerate(grants):  # no window of 1 s holds more than 6 grants
        assert len([t for t in grants[i:] if t < start + window]) <= limit
    assert grants[-1] - grants[0] >= 2.0  # 20 calls at 6 per second need at least 3 windows
