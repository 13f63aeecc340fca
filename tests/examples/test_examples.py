"""Every example job runs offline against its own scenario, to a checked result, and its event
log proves the pattern really ran (a scripted model makes a right answer cheap; the events do
not lie)."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmspell import Runtime
from llmspell.jobs import JobResult, JobSpec, run
from llmspell.llm.server import LocalLLMServer
from llmspell.runtime.events import Event
from llmspell.tools.sandbox import Sandbox
from tests.loopback import serving

pytestmark = pytest.mark.ray

EXAMPLES = Path(__file__).parents[2] / "examples"


async def run_example(name: str, runtime: Runtime, job_id: str, inputs: dict[str, Any],
                      **changes: Any) -> tuple[JobResult, list[Event], LocalLLMServer]:
    folder = EXAMPLES / name
    with LocalLLMServer(folder / "scenario.yaml", latency_ms=0) as server:
        spec = JobSpec.from_file(folder / "job.yaml").using_local_llm(server.openai_base_url)
        spec = spec.model_copy(update=changes)
        result = await run(spec, inputs, runtime=runtime, job_id=job_id)
    assert result.ok, f"{name}: {result.status} {result.reason}"
    return result, await result.events(), server


def payloads(events: list[Event], topic: str) -> list[dict[str, Any]]:
    return [e.payload for e in events if e.topic == topic]


def pool_runs(events: list[Event], job_id: str, pool: str) -> list[str]:
    return [e.sender for e in events if e.topic == "actor.message.handled"
            and e.payload["type"] == "pool.run" and e.sender.startswith(f"{job_id}/{pool}/")]


PAGE = (b"<html><body><main><h1>Actor model</h1><p>An actor has private state and a "
        b"mailbox, and handles one message at a time.</p></main></body></html>")


@pytest.fixture
def page() -> Iterator[str]:
    with serving(PAGE, "text/html") as url:
        yield f"{url}/actors.html"


async def test_research_report_delegates_and_reads_the_source_in_the_web_pool(
        runtime: Runtime, job_id: str, page: str, tmp_path: Path) -> None:
    # the only change for the test: the source is a page on this machine, which the default
    # sandbox refuses (private network), so it is allowed by name
    result, events, _ = await run_example(
        "research-report", runtime, job_id, {"sources": page},
        sandbox=Sandbox(allowed_private_hosts=["127.0.0.1"]), base_dir=str(tmp_path))
    assert result.text.startswith("Report: in the actor model")
    assert [d["specialist"] for d in payloads(events, "delegation.result")] == [
        "reader", "critic"]
    fetched = [r for r in payloads(events, "agent.tool.result") if r["tool"] == "web_fetch"]
    assert len(fetched) == 1 and not fetched[0]["is_error"]
    assert "handles one message at a time" in fetched[0]["content"]  # the page was read
    assert len(pool_runs(events, job_id, "web")) == 1
    assert (tmp_path / "out" / "report.md").read_text().startswith("Report:")


async def test_code_review_is_a_swarm_whose_handoffs_carry_the_noted_risk(
        runtime: Runtime, job_id: str) -> None:
    diff = (EXAMPLES / "code-review" / "change.diff").read_text()
    result, events, _ = await run_example("code-review", runtime, job_id, {"diff": diff})
    assert result.text.startswith("Request changes.")
    handoffs = payloads(events, "swarm.handoff")
    assert [(h["from"], h["to"]) for h in handoffs] == [("triage", "security"),
                                                        ("security", "style")]
    risk = "get_user builds SQL with % formatting of user_id"
    assert all(h["state_keys"] == ["job:risk"] and h["state"] == {"job:risk": risk}
               for h in handoffs)
    read = [r for r in payloads(events, "agent.tool.result") if r["tool"] == "state_read"]
    assert read and read[0]["agent"] == "style" and risk in read[0]["content"]


async def test_sales_analysis_maps_each_csv_row_and_reduces_once(
        runtime: Runtime, job_id: str) -> None:
    data = (EXAMPLES / "sales-analysis" / "sales.csv").read_text()
    result, events, _ = await run_example("sales-analysis", runtime, job_id, {"data": data})
    assert "East leads the quarter" in result.text
    finished = [p["agent"] for p in payloads(events, "agent.run.finished")]
    assert finished.count("analyst") == 4 and finished.count("summarizer") == 1
    margins = sorted(r["content"] for r in payloads(events, "agent.tool.result")
                     if r["tool"] == "calculator")
    assert len(margins) == 4 and any("37.1" in m for m in margins)  # East's, computed
    assert len(pool_runs(events, job_id, "math")) == 4


async def test_support_triage_routes_each_ticket_and_the_python_job_is_the_same(
        runtime: Runtime, job_id: str) -> None:
    result, events, _ = await run_example("support-triage", runtime, job_id,
                                          {"ticket": "I was charged twice for order 1182"})
    assert "refunded the second payment" in result.text
    routes = payloads(events, "workflow.route")
    assert [(r["route"], r["by"]) for r in routes] == [("billing", "router")]

    spec_path = EXAMPLES / "support-triage" / "triage.py"
    module_spec = importlib.util.spec_from_file_location("triage_example", spec_path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    built: JobSpec = module.triage_job()
    from_yaml = JobSpec.from_file(EXAMPLES / "support-triage" / "job.yaml")
    assert [a.name for a in built.agents] == [a.name for a in from_yaml.agents]
    assert built.pattern is not None and from_yaml.pattern is not None
    assert built.pattern.model_dump() | {"description": ""} == \
        from_yaml.pattern.model_dump() | {"description": ""}
    with LocalLLMServer(EXAMPLES / "support-triage" / "scenario.yaml") as server:
        python_run = await run(built.using_local_llm(server.openai_base_url),
                               {"ticket": "The app shows error 500 on login"},
                               runtime=runtime, job_id=f"{job_id}-py")
    assert python_run.ok and python_run.text.startswith("Please clear the app's cache")


async def test_fact_check_debates_to_agreement_with_votes_from_each_checker(
        runtime: Runtime, job_id: str) -> None:
    result, events, _ = await run_example("fact-check", runtime, job_id, {})
    assert str(result.output).lower().startswith("false")
    rounds = [(r["round"], r["agreement"]) for r in payloads(events, "consensus.round")]
    assert rounds == [(1, round(2 / 3, 6)), (2, 1.0)]
    voters = [v["agent"] for v in payloads(events, "consensus.vote")]
    assert sorted(set(voters)) == ["checker-a", "checker-b", "checker-c"]
    decided = payloads(events, "consensus.decided")
    assert len(decided) == 1 and decided[0]["dissent"] == []


async def test_doc_pipeline_streams_paragraphs_and_its_pool_scales_up(
        runtime: Runtime, job_id: str, tmp_path: Path) -> None:
    document = (EXAMPLES / "doc-pipeline" / "handbook.md").read_text()
    _, events, _ = await run_example("doc-pipeline", runtime, job_id,
                                          {"document": document}, base_dir=str(tmp_path))
    summaries = json.loads((tmp_path / "out" / "digest.json").read_text())
    assert len(summaries) == 5 and summaries[0].startswith("Summary: Our on-call rotation")
    assert len(pool_runs(events, job_id, "text")) == 10  # two measures per paragraph
    scaled = payloads(events, "pool.scaled")
    assert any(s["to"] > s["from"] >= 1 for s in scaled), scaled  # up under the backlog
