"""Jobs through the real job layer (JobSpec -> JobRun) for the conformance suite, and what the
suite looks up about them in Ray: which of their actors are still there.

The agents talk to the local LLM server; a model named `loop-*` asks for a tool call on every
turn (a job that runs until it is stopped), `done-*` asks for one tool call and then answers.
The model name carries the job's tag, so the server's request record says which job called."""

from __future__ import annotations

from typing import Any

import ray

from llmspell.jobs import JobSpec

# Every job's agents call `calculator`, a built-in tool (a spec names only the tools the job
# has), run by the job's pool of replicas.
TOOL = "calculator"
CALL = {"name": TOOL, "arguments": {"expression": "6 * 7"}}
SCENARIO: dict[str, Any] = {"latency_ms": 20, "rules": [
    {"match": {"model": "^done-", "after_tool_result": True}, "reply": "42"},
    {"match": {"model": "^(done|loop)-"}, "reply": {"tool_calls": [CALL]}},
]}


def job_spec(name: str, base_url: str, *, model: str, agents: int = 2, replicas: int = 2,
             max_replicas: int | None = None, cpus: float = 0.05,
             pool: dict[str, Any] | None = None, **extra: Any) -> JobSpec:
    """A job of `agents` agents (in parallel, on one host) whose tool calls go to a pool of
    `replicas` replicas. Hosts and replicas ask for `cpus` each, so that Ray's resource
    accounting has something to give back."""
    names = [f"agent{i}" for i in range(agents)]
    data: dict[str, Any] = {
        "name": name,
        "models": {"providers": {"local": {"base_url": base_url}}},
        "agents": [{"name": n, "model": f"local:{model}", "stream": False, "tools": [TOOL],
                    "max_turns": 1_000} for n in names],
        "pools": [{"name": "compute", "tools": [TOOL], "min_replicas": replicas,
                   "max_replicas": max_replicas or replicas, "max_concurrency": 2,
                   "resources": {"num_cpus": cpus}, "placement": "default",
                   **(pool or {})}],
        "hosts": {"num_cpus": cpus},
        "state": {"backend": "memory"},
        **extra,
    }
    if agents > 1:
        data["pattern"] = {"kind": "parallel", "branches": names}
    return JobSpec.from_data(data)


def actors_of(job_id: str) -> list[dict[str, Any]]:
    """The job's actors in any state but DEAD (alive, restarting, pending creation, whatever
    resources they asked for), from the GCS actor table: the session's Ray runs without the
    dashboard that the `ray.util.state` client talks to, and the table is what it serves."""
    table = ray._private.state.actors()
    return [a for a in table.values()
            if a["State"] != "DEAD" and (a["Name"] or "").startswith(f"{job_id}/")]


def alive(job_id: str) -> list[str]:
    return sorted(a["Name"] for a in actors_of(job_id))
