"""Tool pool benchmark: throughput against the replica count, scale-up time, per-call overhead.

    python -m benchmarks.pool            # a table
    python -m benchmarks.pool --json     # one JSON object

On one embedded local Ray:

- throughput of a tool that waits 100 ms (asyncio.sleep) in pools of 1, 2, 4 and 8 replicas,
  each replica running one call at a time, with twice as many concurrent callers as replicas so
  that none idles; `pool_speedup_8_replicas` is the 8-replica throughput over the 1-replica one
  (linear would be 8; the target is 0.9 x 8 = 7.2);
- `pool_scale_up_s`: a pool of 1 replica (max 4) gets a backlog of 60 such calls at once; the
  time from then until every added replica has started serving a call (target < 3 s);
- per-call overhead: a no-op tool through the pool (executor -> router -> replica and back)
  against a raw Ray call to an actor running the same tool, one call at a time;
- Ray Serve, the alternative the pool could have been built on: its autoscaler's documented
  defaults (read from the installed Ray's source, since `ray.serve` needs fastapi, which
  `ray[default]` does not bring) against the pool's measured reaction.

`measure_pool(runtime)` returns the figures, for benchmarks/agents.py.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray

from llmspell import Runtime
from llmspell.actors.scaling import PoolConfig
from llmspell.runtime.messages import new_id
from llmspell.tools import Tool, ToolContext, tool

REPLICA_COUNTS = (1, 2, 4, 8)
DEFAULTS = PoolConfig(name="defaults")


@tool(timeout=30)
async def wait100(i: int) -> int:
    """Wait 100 ms (an I/O-bound tool)."""
    await asyncio.sleep(0.1)
    return i


@tool(timeout=30)
async def stamp(i: int) -> dict[str, float]:
    """Wait 100 ms; say which process served the call and when it started."""
    started = time.time()
    await asyncio.sleep(0.1)
    return {"pid": os.getpid(), "started": started}


@tool(timeout=30)
async def noop(i: int) -> int:
    """Return at once."""
    return i


class RawToolActor:
    """The baseline: a plain Ray actor running a tool, no router, no envelopes."""

    def __init__(self, hosted: Tool) -> None:
        self.tool = hosted

    async def call(self, arguments: dict[str, Any]) -> Any:
        return await self.tool.invoke(arguments, ToolContext())


async def run_calls(execute: Any, count: int, callers: int) -> float:
    """`count` calls with at most `callers` in flight; returns calls per second."""
    sem = asyncio.Semaphore(callers)

    async def one(i: int) -> None:
        async with sem:
            await execute(i)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    return count / (time.perf_counter() - started)


async def bench_throughput(rt: Runtime, job: str, replicas: int, calls_per_replica: int
                           ) -> float:
    pool = rt.spawn_pool(f"tp{replicas}-{new_id()[-6:]}", [wait100], job_id=job,
                         min_replicas=replicas, max_replicas=replicas, max_concurrency=1)
    await pool.wait_ready(timeout=120)
    executor = pool.executor()

    async def execute(i: int) -> None:
        await executor.execute(wait100, {"i": i}, ToolContext())

    await run_calls(execute, 2 * replicas, 2 * replicas)  # warm every replica
    rate = await run_calls(execute, calls_per_replica * replicas, 2 * replicas)
    await pool.stop()
    return rate


async def bench_scale_up(rt: Runtime, job: str, backlog: int = 60) -> dict[str, Any]:
    pool = rt.spawn_pool(f"scale-{new_id()[-6:]}", [stamp], job_id=job, min_replicas=1,
                         max_replicas=4, max_concurrency=1, idle_timeout_s=600)
    stats = await pool.wait_ready(timeout=120)
    first = stats["replica_list"][0]["pid"]
    executor = pool.executor()
    await executor.execute(stamp, {"i": -1}, ToolContext())
    appeared = time.time()
    results = await asyncio.gather(*(executor.execute(stamp, {"i": i}, ToolContext())
                                     for i in range(backlog)))
    serving: dict[int, float] = {}
    for r in results:
        if r["pid"] != first:
            serving[r["pid"]] = min(serving.get(r["pid"], r["started"]), r["started"])
    await pool.stop()
    added = sorted(t - appeared for t in serving.values())
    return {
        "pool_scale_up_s": round(added[-1], 3) if len(added) == 3 else None,
        "pool_scale_up_first_replica_s": round(added[0], 3) if added else None,
        "pool_scale_up_replicas_added": len(added),
    }


async def bench_overhead(rt: Runtime, job: str, n: int) -> dict[str, float]:
    pool = rt.spawn_pool(f"noop-{new_id()[-6:]}", [noop], job_id=job, min_replicas=1,
                         max_replicas=1)
    direct = rt.spawn_pool(f"noop-direct-{new_id()[-6:]}", [noop], job_id=job,
                           min_replicas=1, max_replicas=1, dispatch="direct")
    await pool.wait_ready(timeout=120)
    await direct.wait_ready(timeout=120)
    executor, direct_executor = pool.executor(), direct.executor()
    raw = ray.remote(RawToolActor).options(num_cpus=0).remote(noop)

    async def pool_call() -> None:
        await executor.execute(noop, {"i": 1}, ToolContext())

    async def direct_call() -> None:
        await direct_executor.execute(noop, {"i": 1}, ToolContext())

    async def raw_call() -> None:
        await raw.call.remote({"i": 1})

    pool_lat, direct_lat, raw_lat = [], [], []
    for _ in range(20):  # interleaved rounds: every path sees the same machine
        for call, samples in ((pool_call, pool_lat), (direct_call, direct_lat),
                              (raw_call, raw_lat)):
            for _ in range(max(1, n // 20)):
                started = time.perf_counter()
                await call()
                samples.append(time.perf_counter() - started)
    await pool.stop()
    await direct.stop()
    ray.kill(raw)
    pool_p50 = statistics.median(pool_lat[n // 10:]) * 1e3  # the first calls warm them
    direct_p50 = statistics.median(direct_lat[n // 10:]) * 1e3
    raw_p50 = statistics.median(raw_lat[n // 10:]) * 1e3
    return {"pool_call_p50_ms": round(pool_p50, 3), "ray_call_p50_ms": round(raw_p50, 3),
            "pool_call_overhead_ms": round(pool_p50 - raw_p50, 3),
            "pool_direct_call_p50_ms": round(direct_p50, 3),
            "pool_direct_call_overhead_ms": round(direct_p50 - raw_p50, 3)}


def serve_defaults() -> dict[str, Any]:
    """Ray Serve's autoscaling defaults in the installed Ray, without importing Serve."""
    figures: dict[str, Any] = {}
    spec = importlib.util.find_spec("ray")
    try:
        importlib.import_module("ray.serve")
        figures["serve_installed"] = True
    except ImportError:
        figures["serve_installed"] = False
    if spec is None or not spec.submodule_search_locations:
        return figures
    source = Path(next(iter(spec.submodule_search_locations))) / "serve" / "config.py"
    if not source.exists():
        return figures
    text = source.read_text()
    for field in ("upscale_delay_s", "downscale_delay_s", "look_back_period_s"):
        match = re.search(rf"\b{field}: \w+ = Field\(\s*default=([0-9.]+)", text)
        if match:
            figures[f"serve_default_{field}"] = float(match.group(1))
    return figures


async def measure_pool(runtime: Runtime, *, quick: bool = False) -> dict[str, Any]:
    """The pool's figures on `runtime` (an async function: await it)."""
    job = f"bench-pool-{new_id()[-8:]}"
    results: dict[str, Any] = {}
    try:
        for replicas in REPLICA_COUNTS:
            rate = await bench_throughput(runtime, job, replicas, 10 if quick else 30)
            results[f"pool_calls_per_s_{replicas}_replicas"] = round(rate, 2)
        one = results["pool_calls_per_s_1_replicas"]
        results["pool_speedup_8_replicas"] = round(results["pool_calls_per_s_8_replicas"] / one,
                                                   3)
        results.update(await bench_scale_up(runtime, job))
        results.update(await bench_overhead(runtime, job, 200 if quick else 1000))
        results.update(serve_defaults())
    finally:
        runtime.kill_job(job)
    return results


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        rt = Runtime(job_id="bench", namespace=f"bench-{new_id()[-8:]}",
                     event_log_path=os.path.join(tmp, "events.db"))
        async with rt:
            return await measure_pool(rt, quick=args.quick)


def table(results: dict[str, Any]) -> str:
    one = results["pool_calls_per_s_1_replicas"]
    out = [f"{'replicas':>8} {'calls/s':>9} {'speedup':>8} {'of linear':>10}"]
    for n in REPLICA_COUNTS:
        rate = results[f"pool_calls_per_s_{n}_replicas"]
        out.append(f"{n:>8} {rate:>9.1f} {rate / one:>7.2f}x {rate / one / n:>9.0%}")
    out.append("")
    out.append(f"{'measure':52} {'llmspell':>9} {'Ray Serve':>14}")
    scale = results["pool_scale_up_s"]
    rows = [
        ("scale-up: backlog to all 3 added replicas serving, s",
         "n/a" if scale is None else f"{scale:.2f}",
         f"{results.get('serve_default_upscale_delay_s', '?')} (delay)"),
        ("scale-up: backlog to first added replica serving, s",
         results["pool_scale_up_first_replica_s"], ""),
        ("scale-down after idle, s (default setting)", f"{DEFAULTS.idle_timeout_s:g}",
         f"{results.get('serve_default_downscale_delay_s', '?')}"),
        ("no-op call p50, ms (pool vs a raw Ray actor call)", results["pool_call_p50_ms"],
         f"{results['ray_call_p50_ms']} (raw)"),
        ("  same, dispatch direct (leases), ms", results["pool_direct_call_p50_ms"], ""),
    ]
    out += [f"{name:52} {a!s:>9} {b!s:>14}" for name, a, b in rows]
    if not results.get("serve_installed"):
        out.append("(Ray Serve is not installed: its figures are the documented defaults of "
                   "the installed Ray's AutoscalingConfig)")
    return "\n".join(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="fewer calls")
    figures = asyncio.run(main(parser.parse_args()))
    print(json.dumps(figures) if "--json" in sys.argv else table(figures))
