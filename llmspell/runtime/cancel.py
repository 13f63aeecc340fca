"""CancelToken: one owner cancels, every task under it sees it.

A job, an agent run and a tool call each carry a token. Children get a child token: cancelling
the parent cancels them, cancelling a child leaves the parent running (as a trio cancel scope).
Work checks `raise_if_cancelled()` at its step boundaries and awaits `wait()` to stop early.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from llmspell.runtime.errors import Cancelled

__all__ = ["CancelToken", "race"]


class CancelToken:
    __slots__ = ("_children", "_event", "reason")

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None
        self._children: list[CancelToken] = []
        self.reason: str | None = None

    @property
    def cancelled(self) -> bool:
        return self.reason is not None

    def cancel(self, reason: str = "cancelled") -> None:
        if self.reason is not None:
            return
        self.reason = reason
        if self._event is not None:
            self._event.set()
        for child in self._children:
            child.cancel(reason)
        self._children.clear()

    def child(self) -> CancelToken:
        token = CancelToken()
        if self.reason is not None:
            token.cancel(self.reason)
        else:
            self._children.append(token)
        return token

    def raise_if_cancelled(self) -> None:
        if self.reason is not None:
            raise Cancelled(self.reason)

    async def wait(self) -> str:
        """Return the reason once cancelled."""
        if self.reason is None:
            if self._event is None:
                self._event = asyncio.Event()
            await self._event.wait()
        assert self.reason is not None
        return self.reason


async def race(*aws: Awaitable[Any]) -> list[asyncio.Future[Any]]:
    """Run `aws` side by side until the first one ends; the others are cancelled and awaited,
    so none outlives the call. Their futures, in order, to read each outcome from (one that
    lost is `cancelled()`)."""
    tasks: list[asyncio.Future[Any]] = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return tasks
