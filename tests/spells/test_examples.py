"""Each example spell, run as `llmspell run` runs it, against the local LLM server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmspell import Runtime
from llmspell.jobs.result import JobStatus
from llmspell.llm.server import LocalLLMServer
from llmspell.spells import SpellOptions, run_spell

pytestmark = pytest.mark.ray

EXAMPLES = Path(__file__).parents[2] / "examples" / "spells"


@pytest.fixture(scope="module")
def examples_llm() -> Iterator[LocalLLMServer]:
    with LocalLLMServer(EXAMPLES / "scenario.yaml") as server:
        yield server


async def run_example(name: str, runtime: Runtime, job_id: str, llm: LocalLLMServer,
                      **inputs: Any) -> Any:
    options = SpellOptions(providers={"local": {"base_url": llm.openai_base_url}})
    return await run_spell(EXAMPLES / name, inputs=inputs, runtime=runtime, job_id=job_id,
                           options=options, print_line=lambda line: None)


async def events(runtime: Runtime, job_id: str, topic: str) -> list[dict[str, Any]]:
    return [e.payload for e in await runtime.replay(job_id, pattern=topic)]


async def test_tool_agent_uses_a_builtin_and_a_lua_tool(
        runtime: Runtime, job_id: str, examples_llm: LocalLLMServer) -> None:
    result = await run_example("tool_agent.lua", runtime, job_id, examples_llm,
                               question="What is 6 * 7?")
    assert result.ok, result.reason
    assert result.output == "6 * 7 = 42 (forty-two)."
    results = {p["tool"]: p for p in await events(runtime, job_id, "agent.tool.result")}
    assert set(results) == {"calculator", "to_words"}
    assert result.usage.total_tokens > 0


async def test_research_fans_out_and_the_lua_hook_sees_every_step(
        runtime: Runtime, job_id: str, examples_llm: LocalLLMServer) -> None:
    result = await run_example("research.lua", runtime, job_id, examples_llm, topic="Ray")
    assert result.ok, result.reason
    assert result.output["summary"] == ("Ray has stateful actors, stateless tasks and a "
                                        "shared object store.")
    assert {"gather", "writer", "research-actors", "research-tasks",
            "research-objects"} <= set(result.output["steps"])
    ran = {p["agent"] for p in await events(runtime, job_id, "agent.run.finished")}
    assert ran == {"research-actors", "research-tasks", "research-objects", "writer"}


async def test_vote_reaches_a_majority_with_its_dissent(
        runtime: Runtime, job_id: str, examples_llm: LocalLLMServer) -> None:
    result = await run_example("vote.lua", runtime, job_id, examples_llm)
    assert result.ok, result.reason
    assert result.output == {"decision": "Paris", "agreement": 0.75, "dissent": ["voter-4"]}


async def test_budget_hook_stops_the_agent_and_logs_every_tool_call(
        runtime: Runtime, job_id: str, examples_llm: LocalLLMServer) -> None:
    result = await run_example("budget.lua", runtime, job_id, examples_llm, budget="150")
    assert result.ok, result.reason
    rounds = result.output["rounds"]
    assert 1 <= rounds < 10 and result.output["spent"] >= 150
    assert result.output["tool_calls"] == ["calculator"] * rounds
    logged = await events(runtime, job_id, "spell.tool_logged")
    assert [p["tool"] for p in logged] == ["calculator"] * rounds


async def test_an_uncaught_budget_stop_ends_the_job_as_budget_exceeded(
        runtime: Runtime, job_id: str, examples_llm: LocalLLMServer, tmp_path: Path) -> None:
    spell = tmp_path / "strict.lua"
    spell.write_text((EXAMPLES / "budget.lua").read_text().replace(
        "pcall(worker.run, worker,", "true, worker:run("))
    options = SpellOptions(providers={"local": {"base_url": examples_llm.openai_base_url}})
    result = await run_spell(spell, inputs={"budget": "1"}, runtime=runtime, job_id=job_id,
                             options=options, print_line=lambda line: None)
    assert result.status == JobStatus.budget_exceeded, result.reason
    assert result.exit_code == 3 and "budget of 1 tokens spent" in result.reason
