"""Rate limits (requests and tokens per minute) shared by every caller of a provider key.

A sliding window counts what was granted in the last `window` seconds; a grant that would take
either count over its limit waits. Within one process `RateLimiter` does this directly. Across
the actors of a job or a cluster one `LimiterService` actor owns the windows and hands out
*leases*: a process takes a few requests' worth at a time and spends them locally, so that a
call costs no Ray round trip, while every grant still counts in the one window at the moment
it was leased. Unused leases are never returned: the limit can be undershot, never exceeded.

A lease is good for `ttl` seconds from the moment it was asked for (which is before it was
granted), and the service counts grants over the window plus that ttl: so however late a lease
is spent, no window of the limit's length sees more than the limit.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from llmspell.runtime.errors import ActorNotFound

LIMITER_NAME = "llmspell.limiter"


@dataclass(frozen=True, slots=True)
class Limits:
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    window: float = 60.0


class SlidingWindow:
    """Grants within limits over a sliding window. Plain logic: `now` is passed in."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._grants: deque[tuple[float, int, int]] = deque()
        self._requests = 0
        self._tokens = 0

    def _expire(self, now: float) -> None:
        horizon = now - self.limits.window
        while self._grants and self._grants[0][0] <= horizon:
            _, r, t = self._grants.popleft()
            self._requests -= r
            self._tokens -= t

    def try_acquire(self, requests: int, tokens: int, now: float) -> float:
        """Grant and return 0.0, or grant nothing and return how long to wait before asking
        again. A single ask larger than a limit is granted alone in an empty window (so that
        one oversized call is slow, not stuck forever)."""
        self._expire(now)
        rpm, tpm = self.limits.requests_per_minute, self.limits.tokens_per_minute
        over_r = rpm is not None and self._requests + requests > rpm and self._requests > 0
        over_t = tpm is not None and self._tokens + tokens > tpm and self._tokens > 0
        if not (over_r or over_t):
            self._grants.append((now, requests, tokens))
            self._requests += requests
            self._tokens += tokens
            return 0.0
        return max(0.001, self._grants[0][0] + self.limits.window - now)

    def room(self, now: float) -> tuple[int | None, int | None]:
        """Requests and tokens that could be granted now (None: unlimited)."""
        self._expire(now)
        rpm, tpm = self.limits.requests_per_minute, self.limits.tokens_per_minute
        return (None if rpm is None else max(0, rpm - self._requests),
                None if tpm is None else max(0, tpm - self._tokens))


class RateLimiter:
    """The limiter of one process."""

    def __init__(self, limits: Limits) -> None:
        self.window = SlidingWindow(limits)
        self.waited = 0.0

    async def acquire(self, tokens: int = 0) -> float:
        """Wait until one request of `tokens` tokens may go. Returns the seconds waited."""
        waited = 0.0
        while (wait := self.window.try_acquire(1, tokens, time.monotonic())) > 0:
            await asyncio.sleep(wait)
            waited += wait
        self.waited += waited
        return waited


class LimiterService:
    """The Ray shell owning every shared window of a runtime (named `llmspell.limiter`)."""

    def __init__(self) -> None:
        self.windows: dict[str, SlidingWindow] = {}

    async def lease(self, key: str, rpm: int | None, tpm: int | None, requests: int,
                    tokens: int, window_s: float = 60.0) -> tuple[int, int, float]:
        """Grant up to `requests` requests and `tokens` tokens at once: (requests, tokens,
        0.0), or (0, 0, seconds to wait)."""
        limits = Limits(rpm, tpm, window_s)
        window = self.windows.get(key)
        if window is None or window.limits != limits:
            window = self.windows[key] = SlidingWindow(limits)
        now = time.monotonic()
        room_r, room_t = window.room(now)
        grant_r = requests if room_r is None else max(1, min(requests, room_r))
        grant_t = tokens if room_t is None else max(0, min(tokens, room_t))
        wait = window.try_acquire(grant_r, grant_t, now)
        return (0, 0, wait) if wait else (grant_r, grant_t, 0.0)

    async def ping(self) -> str:
        return "limiter"


class SharedRateLimiter:
    """A process's view of a shared limit: spends leases locally, renews them from the
    service. `lease_size` requests are leased at a time (small limits lease one by one)."""

    def __init__(self, key: str, limits: Limits, service: Any, *, lease_size: int = 4) -> None:
        self.key = key
        self.limits = limits
        self.ttl = min(1.0, limits.window / 20)
        self._service = service
        self._expires = 0.0
        self._lease_size = max(1, min(lease_size, (limits.requests_per_minute or 1000) // 20))
        self._requests = 0
        self._tokens = 0
        self._lock = asyncio.Lock()
        self.waited = 0.0

    async def acquire(self, tokens: int = 0) -> float:
        waited = 0.0
        async with self._lock:  # one renewal at a time; the others then spend its lease
            while True:
                if time.monotonic() >= self._expires:
                    self._requests = self._tokens = 0  # an expired lease is never spent
                if self._requests >= 1 and (self.limits.tokens_per_minute is None
                                            or self._tokens >= tokens):
                    break
                asked = time.monotonic()
                want_t = max(tokens, tokens * self._lease_size)
                r, t, wait = await self._service.lease.remote(
                    self.key, self.limits.requests_per_minute, self.limits.tokens_per_minute,
                    self._lease_size, want_t, self.limits.window + self.ttl)
                if wait:
                    await asyncio.sleep(wait)
                    waited += wait
                    continue
                self._requests, self._tokens = r, t
                self._expires = asked + self.ttl
            self._requests -= 1
            self._tokens -= tokens
        self.waited += waited
        return waited


def limiter_service(namespace: str) -> Any:
    """The runtime's limiter actor, created on first use."""
    import ray

    try:
        return ray.get_actor(LIMITER_NAME, namespace=namespace)
    except ValueError:
        pass
    try:
        return ray.remote(LimiterService).options(
            name=LIMITER_NAME, namespace=namespace, get_if_exists=True, lifetime="detached",
            num_cpus=0, max_concurrency=1000).remote()
    except ValueError as exc:  # pragma: no cover - a race with another creator
        raise ActorNotFound(LIMITER_NAME, namespace) from exc
