"""Where a job's root pattern runs (`hosts.run_pattern`): in the host of its agents when they
all share one and nothing in it belongs in the driver, else in the driver; checked by who sent
the workflow's events. A host that dies under a job's run is restarted and the run goes on there
(or the job fails at once, saying why, when its supervisor gives up on the host); a driver
killed takes its hosted run with it; resuming finishes the job without running its completed
step again."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml

from llmspell import Runtime
from llmspell.jobs import JobSpec, JobStatus, run
from llmspell.jobs.runner import JobRun, resume
from llmspell.llm.server import LocalLLMServer
from llmspell.runtime.messages import new_id
from tests.jobs.common import two_steps
from tests.jobs.test_cli import cli_env, llmspell
from tests.waiting import until

pytestmark = pytest.mark.ray

SCENARIO = {"rules": [
    {"match": {"model": "^drafter$", "contains": "SLOW"}, "reply": "SLOW draft"},
    {"match": {"model": "^drafter$"}, "reply": "draft one"},
    {"match": {"model": "^editor$", "contains": "SLOW"}, "latency_ms": 3000, "reply": "late"},
    {"match": {"model": "^editor$"}, "reply": "final text"},
]}
HOST = "supervisor.host-0"  # the job's only host, as plan_hosts names it


@pytest.fixture(scope="module")
def server() -> Iterator[LocalLLMServer]:
    with LocalLLMServer(SCENARIO) as s:
        yield s


def _senders(events: list[Any]) -> set[str]:
    return {e.sender for e in events if e.topic.startswith("workflow.")}


def _runs_in(events: list[Any]) -> set[str]:
    return {e.payload["pattern_runs_in"] for e in events if e.topic == "job.started"}


async def test_a_pattern_over_one_hosts_agents_runs_in_that_host(
        runtime: Runtime, job_id: str, server: LocalLLMServer) -> None:
    result = await run(JobSpec.from_data(two_steps(server)), {"topic": "Ray"},
                       runtime=runtime, job_id=job_id)
    assert result.ok and result.output == "final text", result.reason
    events = await result.events()
    assert _senders(events) == {f"{job_id}/{HOST}"} == _runs_in(events)
    assert [e.payload["status"] for e in events if e.topic == "workflow.finished"] == \
        ["completed"]


@pytest.mark.parametrize("change", ["driver", "two_hosts", "tool_step"])
async def test_a_pattern_that_cannot_travel_or_is_told_to_stay_runs_in_the_driver(
        runtime: Runtime, job_id: str, server: LocalLLMServer, change: str) -> None:
    data = two_steps(server)
    if change == "driver":
        data["hosts"] = {"run_pattern": "driver"}
    elif change == "two_hosts":  # one host per agent: no single host holds them all
        data["hosts"] = {"agents_per_host": 1}
    else:  # a tool step runs in the driver, so the pattern does too
        data["pattern"]["steps"].append({"tool": "text_transform",
                                         "input": '{"text": "{{ previous }}", '
                                                  '"operation": "upper"}'})
    result = await run(JobSpec.from_data(data), {"topic": "Ray"}, runtime=runtime,
                       job_id=job_id)
    assert result.ok, result.reason
    assert result.output == ("FINAL TEXT" if change == "tool_step" else "final text")
    events = await result.events()
    assert _senders(events) == {runtime.node.identity} and _runs_in(events) == {"driver"}


async def _kill_host_mid_edit(runtime: Runtime, job_id: str, server: LocalLLMServer,
                              host: str = HOST, **extra: Any) -> tuple[Any, list[Any]]:
    """Run the job and kill `host` while the editor's call (3 s) runs: the drafter's step is
    done and checkpointed by then. The job's result and its events."""
    spec = JobSpec.from_data(two_steps(server, input="SLOW {{ topic }}", **extra))
    seen = len(server.requests)
    job = JobRun(spec, runtime, job_id=job_id, inputs={"topic": "Ray"})
    try:
        await job.start()
        running = asyncio.ensure_future(job.execute())
        await until(lambda: any(r.model == "editor" and "SLOW" in str(r.body)
                                for r in server.requests[seen:]), 30, "the editor's call")
        ray.kill(ray.get_actor(f"{job_id}/{host}", namespace=runtime.settings.namespace),
                 no_restart=False)
        result = await asyncio.wait_for(running, 60)
        await job.flush()
        events = await runtime.replay(job_id)
    finally:
        await job.close()
    return result, events


async def test_a_host_dying_under_a_hosted_root_is_restarted_and_the_run_resumes_there(
        runtime: Runtime, job_id: str, server: LocalLLMServer) -> None:
    seen = len(server.requests)
    result, events = await _kill_host_mid_edit(runtime, job_id, server)
    assert result.status == JobStatus.completed and result.output == "late", result.reason
    models = [r.model for r in server.requests[seen:]]
    assert models.count("drafter") == 1  # restored from its checkpoint, not run again
    assert models.count("editor") == 2  # the call in flight when the host died, then again
    host = f"{job_id}/{HOST}"
    lost = [e.payload for e in events if e.topic == "workflow.hosted.lost"]
    resumed = [e.payload for e in events if e.topic == "workflow.hosted.resumed"]
    assert [(p["host"], p["attempt"]) for p in lost] == [(host, 1)]
    assert "ActorDiedError" in lost[0]["cause"]
    assert [(p["host"], p["attempt"]) for p in resumed] == [(host, 1)]
    restarted = [e.payload["child"] for e in events if e.topic == "supervisor.restarted"]
    assert restarted == ["host-0"], restarted
    after = [(e.topic, e.payload["step"]) for e in events if e.seq > lost_seq(events)
             and e.topic in ("workflow.step.skipped", "workflow.step.finished")]
    assert after == [("workflow.step.skipped", "drafter"), ("workflow.step.finished", "editor")]


@pytest.mark.parametrize("run_pattern", ["auto", "driver"])
async def test_a_run_whose_supervisor_gives_up_on_its_host_fails_at_once(
        runtime: Runtime, job_id: str, server: LocalLLMServer, run_pattern: str) -> None:
    """One restart allowed: the first death is ridden out, the second ends the supervisor's
    patience, and the run fails then, not at the end of its 30 s restart wait: the hosted
    root's, or (run from the driver) the editor's run sent again to its host."""
    spec = JobSpec.from_data(two_steps(server, input="SLOW {{ topic }}",
                                       supervision={"max_restarts": 1},
                                       hosts={"run_pattern": run_pattern}))
    seen = len(server.requests)
    job = JobRun(spec, runtime, job_id=job_id, inputs={"topic": "Ray"})
    try:
        await job.start()
        running = asyncio.ensure_future(job.execute())
        for death in (1, 2):  # under each attempt's editor call
            await until(lambda n=death: sum(r.model == "editor" for r in
                                            server.requests[seen:]) == n, 30,
                        f"attempt {death}'s editor call")
            killed = time.monotonic()
            ray.kill(ray.get_actor(f"{job_id}/{HOST}", namespace=runtime.settings.namespace),
                     no_restart=False)
        result = await asyncio.wait_for(running, 60)
        assert time.monotonic() - killed < 15  # well inside the 30 s wait
    finally:
        await job.close()
    assert result.status == JobStatus.failed
    assert "its supervisor gave up on it" in result.reason, result.reason


@pytest.mark.parametrize("run_pattern", ["auto", "driver"])
async def test_a_host_dying_under_a_parallel_branch_is_restarted_and_the_branch_run_again(
        runtime: Runtime, job_id: str, server: LocalLLMServer, run_pattern: str) -> None:
    """One agent a host: spread, the editor's share resumes in its restarted host; run from
    the driver, the editor's run is sent again once its host is back."""
    seen = len(server.requests)
    result, events = await _kill_host_mid_edit(
        runtime, job_id, server, "supervisor.host-1",
        hosts={"agents_per_host": 1, "run_pattern": run_pattern},
        pattern={"kind": "parallel", "branches": ["drafter", "editor"]})
    assert result.status == JobStatus.completed, result.reason
    assert result.output == {"drafter": "SLOW draft", "editor": "late"}
    models = [r.model for r in server.requests[seen:]]
    assert (models.count("drafter"), models.count("editor")) == (1, 2)
    lost = [e.payload["host"] for e in events if e.topic == "workflow.hosted.lost"]
    assert lost == ([f"{job_id}/supervisor.host-1"] if run_pattern == "auto" else [])
    assert [e.payload["child"] for e in events if e.topic == "supervisor.restarted"] == \
        ["host-1"]


def lost_seq(events: list[Any]) -> int:
    return next(e.seq for e in events if e.topic == "workflow.hosted.lost")


async def test_a_host_dying_under_a_hosted_root_fails_the_job_when_told_and_resume_finishes_it(
        runtime: Runtime, job_id: str, server: LocalLLMServer) -> None:
    drafted = sum(r.model == "drafter" for r in server.requests)
    result, events = await _kill_host_mid_edit(runtime, job_id, server,
                                               supervision={"retry_in_flight": False})
    assert result.status == JobStatus.failed
    assert f"{job_id}/{HOST}" in result.reason and "resum" in result.reason
    assert not [e for e in events if e.topic.startswith("workflow.hosted.")]

    again = await resume(job_id, runtime=runtime)
    assert again.status == JobStatus.completed, again.reason
    assert sum(r.model == "drafter" for r in server.requests) - drafted == 1  # not run again


async def test_a_killed_driver_takes_its_hosted_run_with_it_and_resume_finishes_the_job(
        runtime: Runtime, server: LocalLLMServer, tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(two_steps(server, input="SLOW {{ topic }}")))
    job = f"killed-{new_id()[-8:]}"
    seen = len(server.requests)
    env = cli_env(runtime)
    driver = llmspell("run", str(path), "--json", "-i", "topic=Ray", "--job-id", job, env=env,
                      cwd=tmp_path)
    try:
        await until(lambda: any(r.model == "editor" for r in server.requests[seen:])
                    or driver.poll() is not None, 120, "the hosted run's second step")
        assert driver.poll() is None, driver.communicate()
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.communicate(timeout=30)
    await until(lambda: not [a for a in ray.util.list_named_actors() if a.startswith(job)],
                60, "the job's host, run and all, gone with its driver")

    resumed = llmspell("jobs", "resume", job, "--json", env=env, cwd=tmp_path)
    out, err = await asyncio.to_thread(resumed.communicate, timeout=180)
    assert resumed.returncode == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["status"] == "completed"
    assert sum(r.model == "drafter" for r in server.requests[seen:]) == 1  # not run again


@pytest.mark.parametrize("run_pattern", ["auto", "driver"])
async def test_a_parallel_over_several_hosts_runs_a_share_on_each_unless_told_to_stay(
        runtime: Runtime, job_id: str, server: LocalLLMServer, run_pattern: str) -> None:
    data = two_steps(server, hosts={"agents_per_host": 1, "run_pattern": run_pattern})
    data["pattern"] = {"kind": "parallel", "branches": ["drafter", "editor"]}
    result = await run(JobSpec.from_data(data), {"topic": "Ray"}, runtime=runtime,
                       job_id=job_id)
    assert result.ok and result.output == {"drafter": "draft one", "editor": "final text"}
    events = await result.events()
    steps = {e.sender for e in events if e.topic.startswith("workflow.step.")}
    spread = [e.payload["shares"] for e in events if e.topic == "workflow.spread"]
    if run_pattern == "auto":
        assert steps == {f"{job_id}/supervisor.host-0", f"{job_id}/supervisor.host-1"}
        assert [[s["branches"] for s in shares] for shares in spread] == [[1, 1]]
    else:
        assert steps == {runtime.node.identity} and spread == []
