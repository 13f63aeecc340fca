"""What the workflow tests share: a world of scripted agents, a slow model, contexts and state
on a real SQLite file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from llmspell.llm.scripted import ScriptedProvider
from llmspell.llm.types import LLMRequest, Response
from llmspell.runtime.hooks import HookRegistry
from llmspell.runtime.state import SQLiteBackend, StateStore
from llmspell.runtime.state_client import LocalState
from llmspell.tools import ToolContext
from tests.agents.test_loop import World

__all__ = ["SlowProvider", "World", "ctx_for", "slow_world", "sqlite_state"]


class SlowProvider(ScriptedProvider):
    """The scripted model, taking `delay` seconds per answer (a model call to cancel)."""

    def __init__(self, delay: float, *script: Any) -> None:
        super().__init__(script, name="slow")
        self.delay = delay

    async def complete(self, request: LLMRequest) -> Response:
        await asyncio.sleep(self.delay)
        return await super().complete(request)


def slow_world(delay: float) -> World:
    """A world whose agents with model `slow:m` answer after `delay` seconds."""
    w = World()
    w.env.providers.register("slow", SlowProvider(delay))
    return w


def ctx_for(w: World, *, state: Any = None, hooks: HookRegistry | None = None,
            chain: tuple[str, ...] = ()) -> ToolContext:
    """A root context whose events land in the world's event list, beside the agents'."""
    return ToolContext(job_id="j", chain=chain, state=state, hooks=hooks,
                       emit=lambda t, p: w.events.append((t, p)))


@asynccontextmanager
async def sqlite_state(tmp_path: Path, job_id: str = "j") -> AsyncIterator[LocalState]:
    store = StateStore(SQLiteBackend(str(tmp_path / "state.db")))
    try:
        yield LocalState(store, job_id=job_id)
    finally:
        await store.close()
