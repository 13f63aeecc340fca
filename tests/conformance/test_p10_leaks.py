"""Promise 10, no leaks: after 50 jobs run through the job layer (JobSpec -> JobRun), some
completed, some cancelled, some crashed in different ways, nothing of them is left:

- no actor of any of those jobs in Ray's GCS actor table in any state but DEAD (alive,
  restarting, or pending creation because what it asked for is not free);
- no file descriptor, file or SQLite connection (its .db, -wal or -shm file) opened by the
  driver and not closed, and nothing held per actor of those jobs in the driver's node
  (handles, message streams, outboxes);
- Ray's available resources equal its total (every host and replica asks for CPU).

Each job has a pool of replicas and a host of agents looping model call -> tool call against
the local LLM server. The faults: JobRun.cancel() at a seeded random moment; Runtime.kill_job;
ray.kill of the agents' host (the supervisor restarts it, then the job is cancelled); ray.kill
of a replica (the pool replaces it); ray.kill of the supervisor (its hosts die with it); and a
pool scaled past what Ray has free, so that a replica waits for resources when the job ends.

Deaths reach the GCS a moment after they happen, so the checks poll for up to 30 s (a settle
margin, not part of the promise)."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import psutil
import pytest
import ray

from llmspell import Runtime
from llmspell.jobs import JobResult, JobRun, JobStatus
from llmspell.llm.server import LocalLLMServer
from llmspell.runtime.aliases import aliased
from llmspell.runtime.messages import new_id
from tests.conformance.jobs import SCENARIO, actors_of, alive, job_spec
from tests.waiting import until

pytestmark = pytest.mark.ray

# The promise's size: 50 jobs (each starts five or six processes; about 3 minutes here).
JOBS = 50
AT_ONCE = 5  # jobs running at the same time
JOB_TIMEOUT_S, SETTLE_S = 120.0, 30.0
FAULTS = ["none", "cancel", "kill_job", "kill_host", "kill_replica", "kill_supervisor",
          "pending"]


def plan(n: int, seed: int = 10) -> list[str]:
    """Every fault at least once (the first six jobs), then a seeded mix."""
    rng = random.Random(seed)
    return [FAULTS[i] if i < len(FAULTS) else rng.choice(FAULTS) for i in range(n)]


def pending(job_id: str) -> bool:
    return any(a["State"] != "ALIVE" and "/replica-" in a["Name"] for a in actors_of(job_id))


def driver_files() -> tuple[int, set[str]]:
    """The driver's open descriptors (files, sockets, pipes) and the paths of its open files."""
    me = psutil.Process()
    return me.num_fds(), {f.path for f in me.open_files()}


def known_addresses(runtime: Runtime) -> set[str]:
    """The actor addresses the driver's node holds something for."""
    node = runtime.node
    return set(node._handles) | set(node._streams) | set(node._outboxes)


def sqlite_files(paths: set[str]) -> set[str]:
    return {p for p in paths if p.endswith((".db", ".db-wal", ".db-shm", ".sqlite"))}


def calls_of(server: LocalLLMServer, tag: str) -> int:
    return sum(1 for r in server.requests if (r.model or "").endswith(tag))


def trace(*parts: Any) -> None:
    """Progress on stderr with -s (LLMSPELL_P10_TRACE=1): which job does what, when."""
    if os.environ.get("LLMSPELL_P10_TRACE"):
        import sys

        print(f"{time.monotonic():.1f}", *parts, file=sys.stderr, flush=True)


async def drive(runtime: Runtime, server: LocalLLMServer, i: int, fault: str,
                rng: random.Random) -> tuple[str, JobResult | None]:
    """One job from start to close(), with `fault` injected once it is at work."""
    tag = f"-{i}-{new_id()[-6:]}"
    model = ("done" if fault == "none" else "loop") + tag
    job_id = f"leak{i}-{new_id()[-8:].lower()}"
    pool: dict[str, Any] = {}
    if fault == "pending":
        # The pool starts empty and its first replica asks for a resource no node has: it
        # waits (pending creation) with the job's calls queued for it when the job is
        # cancelled. It must not outlive the job either.
        pool = {"min_replicas": 0, "max_replicas": 1,
                "resources": {"num_cpus": 0.05, "custom": {"conformance-nowhere": 1}}}
    # Every other job keeps a warm standby of its host: the spare (its own process and CPU
    # share) and its alias must go with the job too, whether it was promoted or not.
    supervision = {"standby": True} if i % 2 else {}
    spec = job_spec("leak", server.openai_base_url, model=model, agents=2 if i % 3 else 3,
                    pool=pool, supervision=supervision)
    job = JobRun(spec, runtime, job_id=job_id)
    result: JobResult | None = None
    trace(job_id, fault, "start")
    started = time.monotonic()
    try:
        async with asyncio.timeout(JOB_TIMEOUT_S):
            await job.start(save=False)
            running = asyncio.ensure_future(job.execute())
            if fault != "none":
                if fault == "pending":
                    await until(lambda: pending(job_id) or running.done(), 60,
                                f"job {job_id}'s replica waiting for resources")
                else:
                    await until(lambda: calls_of(server, tag) >= 3 or running.done(), 60,
                                f"job {job_id} at work")
                await asyncio.sleep(rng.uniform(0.0, 0.5))  # the random moment
                if not running.done():  # the check sees the job's actors while they live
                    assert len(alive(job_id)) >= 4, alive(job_id)
                trace(job_id, fault, "inject")
                await inject(runtime, job, fault)
            result = await running
            trace(job_id, fault, "ended", result.status, result.reason)
    finally:
        closing = time.monotonic()
        await asyncio.shield(job.close())
        trace(job_id, fault, "closed", f"run {closing - started:.1f}s",
              f"close {time.monotonic() - closing:.1f}s")
    return job_id, result


async def inject(runtime: Runtime, job: JobRun, fault: str) -> None:
    ns = runtime.settings.namespace
    if fault in ("cancel", "pending"):
        job.cancel("cancelled by the test")
    elif fault == "kill_job":
        runtime.kill_job(job.job_id)
    elif fault in ("kill_host", "kill_replica"):
        part = "supervisor.host" if fault == "kill_host" else "compute/replica-"
        names = [a["Name"] for a in actors_of(job.job_id)
                 if part in a["Name"] and "@" not in a["Name"]]  # not a host's idle spare
        # A crash, as the machine would make it: Ray may restart a host (its supervisor wants
        # it back), and the pool replaces a lost replica.
        ray.kill(ray.get_actor(names[0], namespace=ns), no_restart=False)
        await asyncio.sleep(0.5)
        job.cancel("cancelled after a crash")
    elif fault == "kill_supervisor":
        ray.kill(ray.get_actor(job.parts.supervisor, namespace=ns), no_restart=True)
        await asyncio.sleep(0.5)
        job.cancel("cancelled after its supervisor died")


async def settled(check: Callable[[], Any], what: str) -> Any:
    return await until(check, SETTLE_S, what, every=0.5)


async def test_jobs_cancelled_and_crashed_leave_no_actor_file_or_resource(
        runtime: Runtime) -> None:
    jobs = JOBS
    rng = random.Random(10)
    faults = plan(jobs)
    with LocalLLMServer(SCENARIO) as server:
        # A first job warms the driver up: what it opens once for good (Ray's connections,
        # an HTTP pool) is not a leak of the jobs after it.
        warm_id, warm = await drive(runtime, server, -1, "none", rng)
        assert warm is not None and warm.status == JobStatus.completed, warm
        await settled(lambda: not alive(warm_id), "the warm-up job gone")
        fds_before, files_before = driver_files()

        gate = asyncio.Semaphore(AT_ONCE)

        async def one(i: int, fault: str) -> tuple[str, JobResult | None]:
            async with gate:
                return await drive(runtime, server, i, fault, rng)

        outcomes = await asyncio.gather(*(one(i, f) for i, f in enumerate(faults)))

        job_ids = [job_id for job_id, _ in outcomes]
        await settled(lambda: not [j for j in job_ids if alive(j)],
                      "no actor of the jobs left")
        left = {j: alive(j) for j in job_ids if alive(j)}
        assert not left, left
        # Nor an alias of a promoted standby (kept in the cluster's KV store).
        ns = runtime.settings.namespace
        assert not [a for j in job_ids for a in aliased(ns, f"{j}/")]

        total = ray.cluster_resources()
        await settled(lambda: ray.available_resources() == ray.cluster_resources(),
                      "every resource back")
        assert ray.available_resources() == total

        def no_new_descriptors() -> bool:
            fds, files = driver_files()
            return fds <= fds_before and files <= files_before

        await settled(no_new_descriptors, "the driver's descriptors back to where they were")
        fds_after, files_after = driver_files()
        # Nor does the driver keep anything per actor of theirs (handles, streams, outboxes).
        held = known_addresses(runtime)
        assert not [a for a in held if a.split("/", 1)[0] in job_ids], held

    assert fds_after <= fds_before, (fds_before, fds_after)
    assert files_after <= files_before, files_after - files_before
    assert not sqlite_files(files_after) - sqlite_files(files_before)
    # How each job ended (a crash fails the job; that is not what is checked here).
    ended = Counter((f, str(r.status) if r else "none") for f, (_, r) in
                    zip(faults, outcomes, strict=True))
    expected = {"none": JobStatus.completed, "cancel": JobStatus.cancelled,
                "pending": JobStatus.cancelled}
    # Each job that ended otherwise, with its reason: a failure here must say why.
    unexpected = [(job_id, f, str(r.status) if r else "none", r.reason[:500] if r else "")
                  for f, (job_id, r) in zip(faults, outcomes, strict=True)
                  if f in expected and (r is None or r.status != expected[f])]
    assert not unexpected, (ended, unexpected)
