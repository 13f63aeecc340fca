"""Patterns benchmark (issue 5): workflows against their ideal, restarts, and the CPU fan-out.

    python -m benchmarks.patterns            # a table
    python -m benchmarks.patterns --json     # one JSON object with the figures of issue 5

With the event log, checkpoints and built-in hooks on, and the local LLM server (in a process
of its own) answering each call 50 ms after it arrived (its own work counts inside the 50 ms, as
a real API's does). Every client here, ours and the references', uses the SDK's default
transport of llmspell (`llmspell.llm.http`: aiohttp with no proxy set):

- MapReduce and Parallel makespans against their ideal (benchmarks/patterns_workflows.py).
- Restart: an agent host under a supervisor is killed; from its death to its first answer after
  the restore (the asker rides out the restart as an idempotent ask does), p50 of 10. With a
  warm standby (`standby: true`: the supervisor promotes a spare process it set up ahead; the
  next spare is up before the next kill, as failures come far apart) and, in the same run,
  without one (the supervisor starts a fresh actor; Ray's in-place restart waits about two
  seconds). The peers that bound it: Ray's own in-place restart of a bare actor (kill to first
  answer), and a fresh agent host from spawn to its first answer (the process, the imports of
  the agent code and the openai SDK, the setup): no replacement without a standby can answer
  sooner.
- The CPU fan-out: 200 items, 8 at once, each an agent that calls the model, calls a tool that
  spends 50 ms of pure-Python CPU holding the GIL, and calls the model again; then one reduce
  call. Floor: max(N x 50 ms / cores, ceil(N/8) x 150 ms + 50 ms). Three kinds of run: llmspell with
  the tool in a pool (one replica per core; `dispatch="direct"`: the agent host calls the
  replicas itself under leases from the router), the same job with the tool in-process, and a bare
  Ray version written here (asyncio tasks in the driver calling the SDK, the tool in plain Ray
  actors; no events, hooks or checkpoints). The pooled run twice: with the MapReduce where a
  job spec runs it (the headline figures: in the host of its agents, as they share one, its
  steps local messages there: llmspell.supervisors.hosted.with_its_agents) and in the driver
  (`cpu_fanout_driver_*`: a Ray call more per item).
  The pooled and bare figures are medians of ROUNDS rounds, each running all three in turn (one
  makespan wanders by ~5% on two shared cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import openai
import ray

from benchmarks.agents import ServerProcess
from llmspell import Runtime
from llmspell.actors.agent_actor import AgentHandle, AgentHost, HostSetup, spawn_host
from llmspell.agents import AgentSpec
from llmspell.llm.http import http_client
from llmspell.runtime import process
from llmspell.runtime.messages import new_id
from llmspell.runtime.state_client import StateClient
from llmspell.supervisors.actor import ChildStart, SupervisorActor, ask_supervised
from llmspell.supervisors.hosted import HostedWorkflow, with_its_agents
from llmspell.supervisors.supervisor import SupervisorSpec
from llmspell.supervisors.workflows import MapReduce
from llmspell.tools import ToolContext, tool

CALL_MS = 50
ROUNDS = 3  # one makespan wanders by ~5% from run to run on two shared cores
ITEMS, AT_ONCE, BURN_S = 200, 8, 0.05
HOOKS = [{"name": "logging"}, {"name": "metrics"}, {"name": "usage"}]
SCENARIO = {"rules": [
    {"match": {"tools": ["burn"], "after_tool_result": False},
     "reply": {"tool_calls": [{"name": "burn", "arguments": {}}]}},
    {"match": {"after_tool_result": True}, "reply": "done"},
]}


def spin(seconds: float) -> int:
    """Pure-Python work holding the GIL, as most real tool code does: `seconds` of this
    thread's CPU time (not wall time: two such threads in one process take twice as long)."""
    end, n = time.thread_time() + seconds, 0
    while time.thread_time() < end:
        n += 1
    return n


@tool(timeout=30)
def burn() -> str:
    """Spend 50 ms of CPU on the item."""
    return f"burnt {spin(BURN_S)}"


def cores() -> int:
    return os.cpu_count() or 1


# -- restart ------------------------------------------------------------------------------------

async def measure_restart(rt: Runtime, server: ServerProcess, rounds: int = 10
                          ) -> dict[str, Any]:
    """p50 and max, death to first answer, with a warm standby and without."""
    standby = await _restarts(rt, server, rounds, standby=True)
    fresh = await _restarts(rt, server, rounds, standby=False)
    return {"restart_p50_ms": _ms(statistics.median(standby)), "restart_max_ms": _ms(max(standby)),
            "restart_fresh_p50_ms": _ms(statistics.median(fresh)),
            "restart_fresh_max_ms": _ms(max(fresh)),
            **await restart_peers(rt, _host_setup(server))}


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 1)


def _host_setup(server: ServerProcess) -> HostSetup:
    return HostSetup([AgentSpec(name="a", model="openai-chat:m", stream=False)],
                     providers={"openai-chat": {"base_url": server.url, "api_key": "k"}},
                     hook_specs=HOOKS)


async def _restarts(rt: Runtime, server: ServerProcess, rounds: int, *, standby: bool
                    ) -> list[float]:
    job = f"bench-restart-{new_id()[-8:]}"
    spec = SupervisorSpec.model_validate({
        "name": "sup", "intensity": {"max_restarts": rounds + 5, "within_s": 600},
        "children": [{"name": "host", "idempotent": True, "standby": standby}]})
    start = ChildStart(spec.children[0], AgentHost, _host_setup(server),
                       options={"concurrency": 64})
    rt.spawn(SupervisorActor, "sup", spec, [start], job_id=job, concurrency=16)
    host = f"{job}/sup.host"
    try:
        await rt.lookup(f"{job}/sup").wait_ready()
        samples = []
        for i in range(rounds):
            await ask_supervised(rt.node, host, "agent.run", {"agent": "a", "input": "hi"},
                                 idempotent=True)
            if standby:  # failures far apart, as in life: the spare is up before the next
                await _spare_ready(rt, f"{job}/sup")
            t = time.perf_counter()
            ray.kill(rt.node.handle(host), no_restart=False)
            reply = await ask_supervised(rt.node, host, "agent.run",
                                         {"agent": "a", "input": f"after {i}"},
                                         idempotent=True)
            samples.append(time.perf_counter() - t)
            assert reply["status"] == "completed", reply
        return samples
    finally:
        rt.kill_job(job)


async def _spare_ready(rt: Runtime, sup: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not (await rt.ask(sup, "supervisor.status"))["children"]["host"]["standby"]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no standby for {sup}.host within {timeout:g}s")
        await asyncio.sleep(0.05)


@ray.remote(num_cpus=0, max_restarts=-1)
class Bare:
    def ping(self) -> int:
        return os.getpid()


async def restart_peers(rt: Runtime, setup: HostSetup, rounds: int = 5) -> dict[str, Any]:
    """Ray's in-place restart of a bare actor, and a fresh agent host's start, p50 each."""
    bare = Bare.remote()  # type: ignore[attr-defined]
    pid = await bare.ping.remote()
    inplace = []
    for _ in range(rounds):
        t = time.perf_counter()
        ray.kill(bare, no_restart=False)
        while True:
            try:
                new = await asyncio.wait_for(bare.ping.remote(), 10)
            except Exception:  # dying or restarting: ask again
                await asyncio.sleep(0.01)
                continue
            if new != pid:
                break
            await asyncio.sleep(0.01)
        inplace.append(time.perf_counter() - t)
        pid = new
    ray.kill(bare)
    fresh = []
    for i in range(rounds):
        job = f"bench-fresh-{new_id()[-8:]}"
        t = time.perf_counter()
        [agent] = spawn_host(rt, f"fresh{i}", setup, job_id=job)
        reply = await agent.run("hi")
        fresh.append(time.perf_counter() - t)
        assert reply.ok, reply.reason
        rt.kill_job(job)
    return {"restart_ray_inplace_bare_p50_ms": round(statistics.median(inplace) * 1e3, 1),
            "restart_fresh_host_answer_p50_ms": round(statistics.median(fresh) * 1e3, 1)}


# -- the CPU fan-out ------------------------------------------------------------------------

def _agents(rt: Runtime, job: str, server: ServerProcess, pools: dict[str, str]
            ) -> list[AgentHandle]:
    specs = [AgentSpec(name=f"worker{i}", model="openai-chat:m", tools=["burn"], stream=False,
                       memory={"kind": "window", "max_messages": 4}) for i in range(AT_ONCE)]
    specs.append(AgentSpec(name="reducer", model="openai-chat:m", stream=False))
    return spawn_host(rt, "agents", HostSetup(
        specs, tools=[burn], pools=pools, hook_specs=HOOKS,
        providers={"openai-chat": {"base_url": server.url, "api_key": "k"}}), job_id=job)


async def fanout_llmspell(rt: Runtime, server: ServerProcess, *, pooled: bool,
                          in_driver: bool = False) -> float:
    """The fan-out's makespan: the tool in a pool or in the agents' host; the MapReduce where
    a job spec runs it (with its agents, as they share a host: with_its_agents) or, with
    `in_driver`, in the driver."""
    job = f"bench-fan-{new_id()[-8:]}"
    pools: dict[str, str] = {}
    try:
        if pooled:
            pool = rt.spawn_pool("burners", [burn], job_id=job, min_replicas=cores(),
                                 max_replicas=cores(), max_concurrency=1, dispatch="direct")
            await pool.wait_ready()
            pools = {"burn": pool.address}
        handles = _agents(rt, job, server, pools)
        await asyncio.gather(*(h.run("warm up", timeout=120) for h in handles[:AT_ONCE]))
        flow: MapReduce | HostedWorkflow = MapReduce(
            "fanout", handles[:AT_ONCE], reduce=handles[AT_ONCE], concurrency=AT_ONCE)
        if not in_driver:
            flow = with_its_agents(flow, handles)
            assert isinstance(flow, HostedWorkflow), "the agents share one host"
        ctx = ToolContext(job_id=job, state=StateClient(rt.node, job_id=job),
                          emit=lambda t, p: rt.node.publish_nowait(t, p, job_id=job))
        started = time.perf_counter()
        result = await flow.run(json.dumps([f"item {i}" for i in range(ITEMS)]), ctx=ctx)
        makespan = time.perf_counter() - started
        assert result.ok, result.reason
        return makespan
    finally:
        rt.kill_job(job)


class Burner:
    """The bare version's tool: a plain Ray actor."""

    def burn(self) -> str:
        return f"burnt {spin(BURN_S)}"


async def fanout_bare_ray(server: ServerProcess) -> float:
    burners = [ray.remote(Burner).options(num_cpus=0).remote() for _ in range(cores())]
    await asyncio.gather(*(b.burn.remote() for b in burners))
    free: asyncio.Queue[Any] = asyncio.Queue()
    for b in burners:
        free.put_nowait(b)
    client = openai.AsyncOpenAI(base_url=server.url, api_key="k", max_retries=0,
                                http_client=http_client(openai, "auto", 60.0))
    tools: Any = [{"type": "function", "function": {
        "name": "burn", "description": "Spend 50 ms of CPU on the item.",
        "parameters": {"type": "object", "properties": {}}}}]
    todo = iter(range(ITEMS))

    async def item(i: int) -> None:
        messages: list[Any] = [{"role": "user", "content": f"item {i}"}]
        first = await client.chat.completions.create(model="m", messages=messages,
                                                     tools=tools)
        call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
        burner = await free.get()
        try:
            output = await burner.burn.remote()
        finally:
            free.put_nowait(burner)
        messages += [first.choices[0].message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": output}]
        await client.chat.completions.create(model="m", messages=messages, tools=tools)

    async def worker() -> None:
        for i in todo:
            await item(i)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(AT_ONCE)))
    await client.chat.completions.create(model="m", messages=[
        {"role": "user", "content": json.dumps(["done"] * ITEMS)}])
    makespan = time.perf_counter() - started
    await client.close()
    for b in burners:
        ray.kill(b)
    return makespan


async def measure_fanout(rt: Runtime, server: ServerProcess, rounds: int = ROUNDS
                         ) -> dict[str, Any]:
    """The pooled runs (the workflow where a job runs it, and in the driver) and the bare Ray
    one, median of `rounds` rounds (each runs all three in turn, so that they see the same
    moments of a shared machine); the in-process run once."""
    floor = max(ITEMS * BURN_S / cores(),
                math.ceil(ITEMS / AT_ONCE) * 3 * CALL_MS / 1e3 + CALL_MS / 1e3)
    samples: dict[str, list[float]] = {"job": [], "driver": [], "bare": []}
    for _ in range(rounds):
        samples["job"].append(await fanout_llmspell(rt, server, pooled=True))
        samples["driver"].append(await fanout_llmspell(rt, server, pooled=True,
                                                       in_driver=True))
        samples["bare"].append(await fanout_bare_ray(server))
    pooled, driver, bare = (statistics.median(samples[k]) for k in ("job", "driver", "bare"))
    inprocess = await fanout_llmspell(rt, server, pooled=False)
    return {"cpu_fanout_floor_s": round(floor, 3),
            "cpu_fanout_makespan_s": round(pooled, 3),
            "cpu_fanout_efficiency": round(floor / pooled, 3),
            "cpu_fanout_inprocess_makespan_s": round(inprocess, 3),
            "cpu_fanout_bare_ray_makespan_s": round(bare, 3),
            "cpu_fanout_vs_bare_ray": round(pooled / bare, 3),
            "cpu_fanout_driver_makespan_s": round(driver, 3),
            "cpu_fanout_driver_efficiency": round(floor / driver, 3),
            "cpu_fanout_driver_vs_bare_ray": round(driver / bare, 3),
            "cpu_fanout_rounds": rounds}


# -- main -------------------------------------------------------------------------------------

async def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(SCENARIO, tmp, latency_ms=CALL_MS)
        try:
            async with Runtime(job_id="bench", namespace=f"bench-{new_id()[-8:]}",
                               event_log_path=os.path.join(tmp, "events.db"),
                               state_path=os.path.join(tmp, "state.db")) as rt:
                if not args.skip_workflows:
                    from benchmarks.patterns_workflows import measure_mapreduce, measure_parallel
                    results.update(await measure_mapreduce(rt, server.url))
                    results.update(await measure_parallel(rt, server.url))
                results.update(await measure_restart(rt, server))
                results.update(await measure_fanout(rt, server))
        finally:
            server.stop()
    return results


def table(r: dict[str, Any]) -> str:
    def get(key: str) -> Any:
        return r.get(key, "n/a")

    rows = [
        ("mapreduce 200 items / 8 agents, efficiency", get("mapreduce_efficiency"), ">= 0.85"),
        ("  of the bare SDK's, round by round", get("mapreduce_of_bare_sdk"), ""),
        ("parallel 200 branches / 20, efficiency", get("parallel_efficiency"), ">= 0.85"),
        ("  bare SDK calls from the driver", get("parallel_bare_sdk_efficiency"), ""),
        ("  bare SDK calls from 4 processes (ceiling)",
         get("parallel_bare_sdk_spread_efficiency"), ""),
        ("  of the ceiling's, round by round", get("parallel_of_ceiling"), ""),
        ("restart: death to first answer, p50 ms", get("restart_p50_ms"), "< 1000"),
        ("  same, no standby (a fresh process), p50 ms", get("restart_fresh_p50_ms"), ""),
        ("  Ray's in-place restart, bare actor, p50 ms",
         get("restart_ray_inplace_bare_p50_ms"), ""),
        ("  fresh agent host to first answer, p50 ms",
         get("restart_fresh_host_answer_p50_ms"), ""),
        ("cpu fan-out makespan, tool in a pool (s)", get("cpu_fanout_makespan_s"),
         f"floor {get('cpu_fanout_floor_s')}"),
        ("cpu fan-out efficiency (floor / makespan)", get("cpu_fanout_efficiency"), ">= 0.65"),
        ("  same job, tool in-process (s)", get("cpu_fanout_inprocess_makespan_s"), ""),
        ("  bare Ray version (s)", get("cpu_fanout_bare_ray_makespan_s"), ""),
        ("  llmspell / bare Ray", get("cpu_fanout_vs_bare_ray"), "<= 1.1"),
        ("  workflow run in the driver (s)", get("cpu_fanout_driver_makespan_s"), ""),
        ("  in the driver: floor / makespan", get("cpu_fanout_driver_efficiency"), ""),
        ("  in the driver / bare Ray", get("cpu_fanout_driver_vs_bare_ray"), ""),
    ]
    out = [f"{'measure':46} {'llmspell':>10}  target"]
    out += [f"{name:46} {value!s:>10}  {target}" for name, value, target in rows]
    return "\n".join(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--skip-workflows", action="store_true",
                        help="only the restart and the CPU fan-out")
    # The driver runs as `llmspell run` runs a job: uvloop, a settled collector.
    figures = process.run(main(parser.parse_args()))
    print(json.dumps(figures) if "--json" in sys.argv else table(figures))
