"""Retries with exponential backoff and jitter, honouring Retry-After, within a deadline.

Only errors marked retryable are retried (429, 5xx, timeouts, broken connections and streams,
malformed answers); a bad request or an auth failure fails at once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from llmspell.llm.errors import LLMError, RateLimited

T = TypeVar("T")
OnRetry = Callable[[LLMError, int, float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 30.0
    jitter: float = 0.2  # up to this fraction is added at random, so callers do not stampede

    def delay(self, error: LLMError, attempt: int) -> float:
        """How long to wait before attempt `attempt + 1`. Retry-After is a floor, not a hint."""
        backoff = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        backoff *= 1 + random.uniform(0, self.jitter)
        if isinstance(error, RateLimited) and error.retry_after is not None:
            return max(error.retry_after, min(backoff, error.retry_after * (1 + self.jitter)))
        return backoff


async def with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    deadline: float | None = None,
    on_retry: OnRetry | None = None,
) -> T:
    """Run `call` until it succeeds, fails for good, runs out of attempts or of time.

    `deadline` is a time.monotonic() value; a retry that could not start before it is not made.
    """
    attempt = 1
    while True:
        try:
            return await call()
        except LLMError as exc:
            if not exc.retryable or attempt >= policy.max_attempts:
                raise
            wait = policy.delay(exc, attempt)
            if deadline is not None and time.monotonic() + wait >= deadline:
                raise
            if on_retry is not None:
                await on_retry(exc, attempt, wait)
            await asyncio.sleep(wait)
            attempt += 1
