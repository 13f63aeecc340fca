"""Workflow figures for benchmarks/patterns.py (issue 5): MapReduce and Parallel makespans
against their ideal, with the local LLM server answering each call after 50 ms.

    python -m benchmarks.patterns_workflows          # its own server and Ray; prints JSON

As a user would run them: agents in actors (packed onto hosts as a job spec packs them by
default), the workflow where a job spec runs it (with its agents when they share one host, as
MapReduce's 9 do: llmspell.supervisors.hosted.with_its_agents; in the driver when they do not,
as Parallel's 200 on four hosts, where it runs a share of its branches on each host:
llmspell.supervisors.workflows.spread), its events in the job's event log, its steps
checkpointed in the state service, and the built-in logging, metrics and usage hooks installed
on the agents.

- `measure_mapreduce`: 200 items over 8 agents (a worker pool of 8), one model call per item,
  then one reduce call. Ideal: ceil(200 / 8) x 50 ms + 50 ms.
- `measure_parallel`: 200 branches (200 agents), at most 20 at once, one call each.
  Ideal: ceil(200 / 20) x 50 ms.

Efficiency is ideal / makespan (target >= 0.85). Each agent answers once before the clock
starts, so the figure measures the workflow, not actor start-up or the first HTTP connection.
On two shared cores one makespan wanders by 10% from run to run, so each figure is the median of
`ROUNDS` rounds, each round running the workflow and its references one after the other (after
a first round not counted: the first workflow sent to a host loads its code there).
In the same run, the reference: the same calls made straight from the driver with the openai
SDK (asyncio tasks, the same concurrency, no agents, actors, events, hooks or checkpoints):
`*_bare_sdk_efficiency` is the most this machine allows with the server and the client sharing
its cores. For the Parallel, whose spread runs its calls from four hosts, also the same calls
from four plain processes (`parallel_bare_sdk_spread_efficiency`: 5 at a time each, the hosts'
shares of the limit, through the SDK's cheapest path, the one our provider takes): the ceiling
of a spread run with no runtime at all. The machine's speed moves with the hour (the same code
made 0.72 and 0.84 of ideal an hour apart, its ceiling 0.85 and 0.92), so each is also given as
a share of its reference's efficiency, round by round (`mapreduce_of_bare_sdk`,
`parallel_of_ceiling`: the two ran back to back), which the hour moves far less. And between
the two, `*_agents_only_efficiency`: the
same agents in the same actor driven by a plain asyncio worker pool (no workflow: no step
events, hooks or checkpoints), which separates the cost of the agent layer from the cost of
the workflow. And the other placement
of each: `mapreduce_driver_efficiency`, the MapReduce run in the driver (a Ray call from it per
step); `parallel_driver_efficiency`, the Parallel not spread (`spread=False`: a Ray call from
the driver per branch); and `parallel_hosted_efficiency`, the Parallel run in the host of its
first agent (its steps there local messages, the other hosts' asks from that host).
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

from llmspell import Runtime
from llmspell.actors.agent_actor import AgentHandle, HostSetup, spawn_host
from llmspell.agents import AgentSpec
from llmspell.jobs.build import even_parts
from llmspell.jobs.spec import HostsSpec
from llmspell.llm.http import http_client
from llmspell.runtime import process
from llmspell.runtime.messages import new_id
from llmspell.runtime.state_client import StateClient
from llmspell.supervisors.base import Pattern
from llmspell.supervisors.hosted import HostedWorkflow, with_its_agents
from llmspell.supervisors.workflows import MapReduce, Parallel
from llmspell.tools import ToolContext

__all__ = ["CALL_MS", "measure_mapreduce", "measure_parallel"]

CALL_MS = 50  # the server's latency per call, which the ideal figures assume
ROUNDS = 5
HOOKS = [{"name": "logging"}, {"name": "metrics"}, {"name": "usage"}]


def _host(runtime: Runtime, job: str, server_url: str, names: Sequence[str]
          ) -> list[AgentHandle]:
    """The agents, packed onto hosts as a job spec packs them by default (at most
    `agents_per_host`, 64, evenly: llmspell.jobs.build.even_parts): 9 agents share one host,
    200 get four of 50. `server_url` is the OpenAI base URL of the local LLM server (ending in
    /v1)."""
    specs = [AgentSpec.model_validate({"name": n, "model": "openai-chat:m", "stream": False,
                                       "memory": {"kind": "window", "max_messages": 4}})
             for n in names]
    providers: dict[str, Any] = {"openai-chat": {"base_url": server_url,
                                                 "api_key": "sk-bench"}}
    parts = even_parts(specs, HostsSpec().agents_per_host)
    return [handle for i, part in enumerate(parts)
            for handle in spawn_host(runtime, f"agents-{i}", HostSetup(
                part, providers=providers, hook_specs=HOOKS), job_id=job)]


def _ctx(runtime: Runtime, job: str) -> ToolContext:
    return ToolContext(job_id=job, state=StateClient(runtime.node, job_id=job),
                       emit=lambda t, p: runtime.node.publish_nowait(t, p, job_id=job))


async def _warm(agents: Sequence[AgentHandle], concurrency: int = 20) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(agent: AgentHandle) -> None:
        async with gate:
            result = await agent.run("warm up", timeout=120)
            assert result.ok, result.reason

    await asyncio.gather(*(one(a) for a in agents))


async def _bare_sdk(server_url: str, calls: int, concurrency: int, then: int = 0) -> float:
    """The makespan of `calls` SDK calls, `concurrency` at a time, then `then` more calls."""
    import openai

    client = openai.AsyncOpenAI(base_url=server_url, api_key="sk-bench", max_retries=0,
                                http_client=http_client(openai, "auto", 60.0))
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": f"item {i}"}])

    try:
        await asyncio.gather(*(one(i) for i in range(concurrency)))  # warm the connections
        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(calls)))
        for i in range(then):
            await one(i)
        return time.perf_counter() - started
    finally:
        await client.close()


class SpreadSDK:
    """`procs` processes making SDK calls, told to start at once: a round's makespan is from
    the word go to the last one's end. Started (and their connections warmed) before the
    clock, as the agents are."""

    def __init__(self, server_url: str, procs: int) -> None:
        context = multiprocessing.get_context("spawn")  # the driver runs threads: no fork
        self._pipes = []
        self._procs = []
        for _ in range(procs):
            here, there = context.Pipe()
            proc = context.Process(target=_spread_worker, args=(there, server_url), daemon=True)
            proc.start()
            self._pipes.append(here)
            self._procs.append(proc)
        for pipe in self._pipes:
            assert pipe.recv() == "ready"

    async def makespan(self, calls: int, concurrency: int) -> float:
        """`calls` calls spread evenly over the processes, `concurrency` at once in all."""
        share = (calls // len(self._pipes), concurrency // len(self._pipes))
        started = time.perf_counter()  # CLOCK_MONOTONIC: the same clock in every process
        for pipe in self._pipes:
            pipe.send(share)
        ends: list[float] = [await asyncio.to_thread(pipe.recv) for pipe in self._pipes]
        return max(ends) - started

    def close(self) -> None:
        for pipe in self._pipes:
            pipe.send(None)
        for proc in self._procs:
            proc.join(10)


def _spread_worker(pipe: Any, server_url: str) -> None:
    """One of SpreadSDK's processes: for each (calls, lanes) it is sent, that many calls, that
    many at a time; replies with the time the last one ended."""
    import openai

    async def serve() -> None:
        client = openai.AsyncOpenAI(base_url=server_url, api_key="sk-bench", max_retries=0,
                                    http_client=http_client(openai, "auto", 60.0))
        body = {"model": "m", "messages": [{"role": "user", "content": "answer this"}]}

        async def call() -> None:
            await client.post("/chat/completions", body=body, cast_to=object,
                              options={"security": {"bearer_auth": True}})

        async def lane(todo: Iterator[int]) -> None:
            for _ in todo:
                await call()

        await asyncio.gather(*(call() for _ in range(5)))  # warm the connections
        pipe.send("ready")
        while (share := await asyncio.to_thread(pipe.recv)) is not None:
            calls, lanes = share
            todo = iter(range(calls))
            await asyncio.gather(*(lane(todo) for _ in range(lanes)))
            pipe.send(time.perf_counter())
        await client.close()

    process.run(serve())


async def _agents_only(workers: Sequence[AgentHandle], inputs: list[str],
                       then: AgentHandle | None = None) -> float:
    """The makespan of running `inputs` on a pool of `workers` (worker w always uses agent
    w), then one call to `then`: what MapReduce and Parallel do, without a workflow."""
    todo = iter(inputs)

    async def worker(agent: AgentHandle) -> None:
        for text in todo:
            assert (await agent.run(text, timeout=120)).ok

    started = time.perf_counter()
    await asyncio.gather(*(worker(a) for a in workers))
    if then is not None:
        assert (await then.run("reduce", timeout=120)).ok
    return time.perf_counter() - started


async def _rounds(*runs: Callable[[int], Awaitable[float]]) -> list[list[float]]:
    """Each of `runs`' makespans over ROUNDS rounds; a round runs each of them once, in turn.
    A first round is not counted: the first workflow sent to a host loads its code there."""
    samples: list[list[float]] = [[] for _ in runs]
    for round_ in range(-1, ROUNDS):
        for i, run in enumerate(runs):
            makespan = await run(round_)
            if round_ >= 0:
                samples[i].append(makespan)
    return samples


def _medians(samples: list[list[float]]) -> list[float]:
    return [statistics.median(s) for s in samples]


def _of_reference(ours: list[float], reference: list[float]) -> float:
    """Our efficiency as a share of the reference's, round by round (the two ran back to back,
    at the same moment of the machine), median: a figure the machine's hour moves far less
    than either efficiency."""
    return round(statistics.median(r / o for o, r in zip(ours, reference, strict=True)), 3)


async def measure_mapreduce(runtime: Runtime, server_url: str, *, items: int = 200,
                            agents: int = 8) -> dict[str, Any]:
    job = f"bench-mr-{new_id()[-10:]}"
    handles = _host(runtime, job, server_url, [f"mapper{i}" for i in range(agents)] +
                    ["reducer"])
    texts = [f"item {i}" for i in range(items)]

    async def workflow(round_: int, in_driver: bool = False) -> float:
        mr = MapReduce(f"mapreduce{round_}{'d' if in_driver else ''}", handles[:agents],
                       reduce=handles[agents], concurrency=agents)
        return await _timed(runtime, job, mr if in_driver else with_its_agents(mr, handles),
                            json.dumps(texts))

    try:
        await _warm(handles)
        samples = await _rounds(
            workflow, lambda r: workflow(r, in_driver=True),
            lambda _: _bare_sdk(server_url, items, agents, then=1),
            lambda _: _agents_only(handles[:agents], texts, then=handles[agents]))
        makespan, driver, bare, direct = _medians(samples)
        ideal = (math.ceil(items / agents) + 1) * CALL_MS / 1000
        return {"mapreduce_efficiency": round(ideal / makespan, 3),
                "mapreduce_makespan_s": round(makespan, 3),
                "mapreduce_driver_efficiency": round(ideal / driver, 3),
                "mapreduce_ideal_s": round(ideal, 3),
                "mapreduce_agents_only_efficiency": round(ideal / direct, 3),
                "mapreduce_bare_sdk_efficiency": round(ideal / bare, 3),
                "mapreduce_of_bare_sdk": _of_reference(samples[0], samples[2])}
    finally:
        runtime.kill_job(job)


async def measure_parallel(runtime: Runtime, server_url: str, *, branches: int = 200,
                           concurrency: int = 20) -> dict[str, Any]:
    job = f"bench-par-{new_id()[-10:]}"
    handles = _host(runtime, job, server_url, [f"branch{i}" for i in range(branches)])

    async def workflow(round_: int, place: str = "job") -> float:
        par = Parallel(f"parallel{round_}{place}", {h.name: h for h in handles},
                       concurrency=concurrency, spread=place != "driver")
        placed = HostedWorkflow(par, on=handles[0]) if place == "hosted" else \
            with_its_agents(par, handles)
        return await _timed(runtime, job, placed, "answer this")

    spread_sdk = SpreadSDK(server_url, len({h.host for h in handles}))
    try:
        await _warm(handles)
        samples = await _rounds(
            workflow, lambda r: workflow(r, "driver"), lambda r: workflow(r, "hosted"),
            lambda _: _bare_sdk(server_url, branches, concurrency),
            lambda _: spread_sdk.makespan(branches, concurrency),
            lambda _: _parallel_agents_only(handles, concurrency))
        makespan, driver, hosted, bare, spread, direct = _medians(samples)
        ideal = math.ceil(branches / concurrency) * CALL_MS / 1000
        return {"parallel_efficiency": round(ideal / makespan, 3),
                "parallel_makespan_s": round(makespan, 3),
                "parallel_driver_efficiency": round(ideal / driver, 3),
                "parallel_hosted_efficiency": round(ideal / hosted, 3),
                "parallel_ideal_s": round(ideal, 3),
                "parallel_agents_only_efficiency": round(ideal / direct, 3),
                "parallel_bare_sdk_efficiency": round(ideal / bare, 3),
                "parallel_bare_sdk_spread_efficiency": round(ideal / spread, 3),
                "parallel_of_ceiling": _of_reference(samples[0], samples[4])}
    finally:
        spread_sdk.close()
        runtime.kill_job(job)


async def _timed(runtime: Runtime, job: str, flow: Pattern | HostedWorkflow, input: str
                 ) -> float:
    started = time.perf_counter()
    result = await flow.run(input, ctx=_ctx(runtime, job))
    makespan = time.perf_counter() - started
    assert result.ok, result.reason
    await runtime.flush()
    return makespan


async def _parallel_agents_only(agents: Sequence[AgentHandle], concurrency: int) -> float:
    gate = asyncio.Semaphore(concurrency)

    async def one(agent: AgentHandle) -> None:
        async with gate:
            assert (await agent.run("answer this", timeout=120)).ok

    started = time.perf_counter()
    await asyncio.gather(*(one(a) for a in agents))
    return time.perf_counter() - started


async def _measure(url: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        async with Runtime(job_id="bench", namespace=f"bench-{new_id()[-8:]}",
                           event_log_path=os.path.join(tmp, "events.db"),
                           state_path=os.path.join(tmp, "state.db")) as rt:
            return {**await measure_mapreduce(rt, url), **await measure_parallel(rt, url)}


def main() -> dict[str, Any]:
    """Both figures, with the local LLM server in a process of its own (it must not share the
    driver's GIL) answering after CALL_MS."""
    from benchmarks.agents import free_port

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "llmspell", "llm-server", "--port", str(port),
         "--latency-ms", str(CALL_MS)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port)
        return process.run(_measure(f"http://127.0.0.1:{port}/v1"))  # as `llmspell run` runs
    finally:
        server.terminate()
        server.wait(10)


def _wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the local LLM server did not start")


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
