"""Actors the supervisor tests supervise (importable by Ray workers)."""

from __future__ import annotations

import time
from typing import Any

from llmspell import Envelope
from tests.integration.actors import Counter


class Worker(Counter):
    """A Counter (its count snapshotted at every change) that can be told to hang."""

    warmed = False

    async def on_standby(self) -> None:
        self.warmed = True

    async def handle(self, msg: Envelope) -> Any:
        if msg.type == "warmed":  # whether this process was prepared as a standby
            return self.warmed
        if msg.type == "hang":
            time.sleep(float(msg.payload))  # noqa: ASYNC251 - a hang: health checks go unanswered
            return "woke"
        return await super().handle(msg)
