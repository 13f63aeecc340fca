"""Steps from agents, tools and functions; Bind's state keys; a pattern as a tool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmspell.agents import RunResult, RunStatus
from llmspell.runtime.state import SQLiteBackend, StateStore
from llmspell.runtime.state_client import LocalState
from llmspell.supervisors.base import Bind, Pattern, as_step
from llmspell.tools import ToolContext, tool
from tests.world import World


@tool
def shout(text: str) -> str:
    """Upper-case a text."""
    return text.upper()


class Twice(Pattern):
    """Runs its step twice, feeding the first output into the second."""

    def __init__(self, name: str, step: Any) -> None:
        super().__init__(name)
        self.step = as_step(step)

    async def _run(self, input: str, ctx: ToolContext, inputs: dict[str, Any]) -> RunResult:
        first = await self.run_step(self.step, input, ctx, index=0)
        second = await self.run_step(self.step, first.text, ctx, index=1)
        return self.result(second.status, output=second.output, children=[first, second])


async def test_steps_from_agents_tools_and_functions() -> None:
    w = World("from the agent")
    assert (await as_step(w.agent()).run("x")).output == "from the agent"
    assert (await as_step(shout).run("hi")).output == "HI"
    assert (await as_step(shout).run('{"text": "json"}')).output == "JSON"
    assert (await as_step(lambda s: s[::-1]).run("abc")).output == "cba"

    async def fails(s: str) -> str:
        raise ValueError("bad input")

    failed = await as_step(fails).run("x")
    assert failed.status == RunStatus.failed and "ValueError: bad input" in failed.reason


async def test_a_pattern_nests_and_reports_its_children() -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    ctx = ToolContext(chain=("job",), emit=lambda t, p: events.append((t, p)))
    result = await Twice("twice", shout).run("hey", ctx=ctx)
    assert result.ok and result.output == "HEY" and len(result.children) == 2
    topics = [t for t, _ in events]
    assert topics[0] == "pattern.started" and topics[-1] == "pattern.finished"
    assert topics.count("workflow.step.finished") == 2
    assert all(p["branch"] == "job/twice" for _, p in events)
    outer = await Twice("outer", Twice("inner", shout)).run("a")
    assert outer.output == "A" and len(outer.children[0].children) == 2


async def test_bind_renders_its_input_and_writes_its_output_key(tmp_path: Path) -> None:
    store = StateStore(SQLiteBackend(str(tmp_path / "s.db")))
    state = LocalState(store, job_id="j")
    await state.set("job:topic", "ray")
    ctx = ToolContext(state=state)
    step = Bind(shout, input="{{ state.topic }} after {{ previous }}", output_key="job:loud",
                state_keys=["job:topic"])
    result = await step.run("ignored", ctx=ctx, previous="step one")
    assert result.output == "RAY AFTER STEP ONE"
    assert await state.get("job:loud") == "RAY AFTER STEP ONE"
    await store.close()


async def test_a_pattern_wraps_as_a_tool() -> None:
    t = Twice("twice", shout).as_tool()
    assert await t.invoke({"input": "yo"}, ToolContext(chain=("caller",))) == "YO"
