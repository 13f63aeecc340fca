"""Tools the agent integration tests give to agents in actors (importable by Ray workers)."""

from __future__ import annotations

import asyncio
import os

from llmspell.tools import tool


@tool
async def get_weather(city: str) -> str:
    """The weather in a city.

    Args:
        city: the city name
    """
    await asyncio.sleep(0.01)
    return f"sunny in {city}"


@tool
def whoami() -> int:
    """The process id of the process running this tool."""
    return os.getpid()


@tool(requires_approval=True, side_effects="external", idempotent=False)
def transfer(amount: int, path: str) -> str:
    """Move money (records the effect in a file).

    Args:
        amount: how much
        path: where the effect is recorded
    """
    with open(path, "a") as f:
        f.write(f"transfer {amount}\n")
    return f"transferred {amount}"
