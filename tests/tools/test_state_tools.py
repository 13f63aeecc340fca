"""state_read and state_write: agents of a job share notes through its state."""

from __future__ import annotations

import pytest

from llmspell.runtime.state import MemoryBackend, StateStore
from llmspell.runtime.state_client import LocalState
from llmspell.tools import ToolContext
from llmspell.tools.builtin import builtin_registry
from llmspell.tools.errors import ToolArgumentError, ToolError


async def test_write_then_read_in_job_scope_only() -> None:
    tools = builtin_registry()
    ctx = ToolContext(job_id="j1", state=LocalState(StateStore(MemoryBackend()), job_id="j1"))
    assert await tools.get("state_write").invoke({"key": "job:risk", "value": {"level": 3}},
                                                 ctx) == "stored job:risk"
    assert await tools.get("state_read").invoke({"key": "job:risk"}, ctx) == {"level": 3}
    assert await tools.get("state_read").invoke({"key": "job:unset"}, ctx) is None
    with pytest.raises(ToolArgumentError, match="key"):
        await tools.get("state_write").invoke({"key": "app:global", "value": 1}, ctx)
    with pytest.raises(ToolError, match="no job state"):
        await tools.get("state_read").invoke({"key": "job:risk"}, ToolContext())
