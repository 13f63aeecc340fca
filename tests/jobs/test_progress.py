"""The live view of `llmspell run` (llmspell.cli.progress.JobView), fed a job's events."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from llmspell.cli.progress import JobView
from llmspell.runtime.events import Event

HOST = "job-1/supervisor.host-0"


def view_after(*events: tuple[str, dict[str, Any]]) -> JobView:
    view = JobView("job-1")
    view.add_host("host-0", ["drafter", "editor"])
    for topic, payload in events:
        view.apply(Event(topic, payload, job_id="job-1", sender=HOST))
    return view


def shown(view: JobView) -> str:
    out = io.StringIO()
    Console(file=out, width=120, color_system=None).print(view.render())
    return out.getvalue()


def test_the_view_follows_agents_tokens_and_the_job() -> None:
    view = view_after(
        ("agent.run.started", {"agent": "drafter"}),
        ("agent.llm.response", {"agent": "drafter", "usage": {"input_tokens": 7,
                                                              "output_tokens": 5},
                                "cost_usd": 0.25}),
        ("agent.run.finished", {"agent": "drafter", "status": "completed"}),
        ("agent.run.started", {"agent": "editor"}),
        ("job.completed", {}))
    assert (view.tokens, view.cost_usd, view.status) == (12, 0.25, "completed")
    assert (view.agents["drafter"].status, view.agents["drafter"].tokens) == ("completed", 12)
    assert view.agents["editor"].status == "running"
    assert "tokens 12" in shown(view) and "$0.2500" in shown(view)


def test_the_view_says_when_a_host_died_was_restarted_and_the_pattern_resumed() -> None:
    lost = view_after(("workflow.hosted.lost", {"workflow": "review", "host": HOST,
                                                "attempt": 1, "cause": "ActorDiedError"}))
    assert lost.current == "review: its host died, waiting for the restart"
    resumed = view_after(
        ("workflow.hosted.lost", {"workflow": "review", "host": HOST, "attempt": 1}),
        ("supervisor.restarted", {"child": "host-0", "restarted": ["host-0"]}),
        ("workflow.hosted.resumed", {"workflow": "review", "host": HOST, "attempt": 1}))
    assert resumed.restarts == 1
    assert resumed.current == "review: resumed in the restarted host"
    text = shown(resumed)
    assert "supervisor  (1 restart)" in text and "resumed in the restarted host" in text
