"""Actors the supervisor tests supervise (importable by Ray workers)."""

from __future__ import annotations

import os
import time
from typing import Any

from llmspell import ActorBase, Envelope


class Worker(ActorBase):
    """Counts what it is given (snapshotted at every change); can be told to hang."""

    def setup(self) -> None:
        self.count = 0

    async def handle(self, msg: Envelope) -> Any:
        if msg.type == "add":
            self.count += int(msg.payload)
            await self.checkpoint()
            return self.count
        if msg.type == "get":
            return {"count": self.count, "pid": os.getpid()}
        if msg.type == "hang":
            time.sleep(float(msg.payload))  # noqa: ASYNC251 - a hang: health checks go unanswered
            return "woke"
        raise ValueError(msg.type)

    def snapshot(self) -> Any:
        return {"count": self.count}

    def restore(self, snapshot: Any) -> None:
        if snapshot:
            self.count = int(snapshot["count"])
