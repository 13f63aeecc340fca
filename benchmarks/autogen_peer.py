"""The AutoGen side of the same-host round-trip benchmark (autogen-core's in-process runtime).

No `from __future__ import annotations` here: AutoGen reads the handlers' type hints at class
creation, and postponed annotations of these module-level classes would not resolve."""

import statistics
import time
from dataclasses import dataclass

from autogen_core import (
    AgentId,
    MessageContext,
    RoutedAgent,
    SingleThreadedAgentRuntime,
    message_handler,
)


@dataclass
class Ping:
    n: int


@dataclass
class Start:
    count: int


class Pong(RoutedAgent):
    @message_handler
    async def on_ping(self, message: Ping, ctx: MessageContext) -> Ping:
        return message


class Caller(RoutedAgent):
    @message_handler
    async def on_start(self, message: Start, ctx: MessageContext) -> float:
        target = AgentId("pong", "default")
        t = time.perf_counter()
        for i in range(message.count):
            await self.send_message(Ping(i), target)
        return time.perf_counter() - t


async def roundtrips_per_s(n: int, rounds: int = 5) -> float:
    """Caller -> Pong -> Caller round trips, one at a time; the median of `rounds` rounds."""
    runtime = SingleThreadedAgentRuntime()
    await Pong.register(runtime, "pong", lambda: Pong("pong"))
    await Caller.register(runtime, "caller", lambda: Caller("caller"))
    runtime.start()
    caller = AgentId("caller", "default")
    await runtime.send_message(Start(1_000), caller)  # warm up
    rates = []
    for _ in range(rounds):
        elapsed = await runtime.send_message(Start(n // rounds), caller)
        rates.append((n // rounds) / elapsed)
    await runtime.stop()
    return statistics.median(rates)
