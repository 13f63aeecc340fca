"""Spells benchmark (issue 10): what driving llmspell from Lua adds over Python.

    python -m benchmarks.spells            # a table
    python -m benchmarks.spells --json     # one JSON object with the figures of issue 10

On an embedded local Ray, with the local LLM server (zero latency, echoing) in a process of its
own on 127.0.0.1, and one spell open in the driver. In one run:

1. A tool call from Lua (`Tool.call("echo", {text = ...})`) against the same call from Python:
   the hooked call the bridge makes (HookRegistry.call around Tool.invoke, with the spell's
   registry and context), awaited directly. A round is a batch of calls on one side (the Lua
   batch is one Lua function looping, so the coroutine's start is shared by the batch); rounds
   of the two sides alternate, the figure is the median over the rounds of each round's mean
   per call, and the overhead is Lua's minus Python's. Target: under 50 us added.
2. 100 agent runs started at once: from the spell (`Spell.all` over 100 `agent:run` closures, the
   100 agents in the spell's agent host) against 100 started from Python (asyncio.gather over the
   handles of the same 100 specs in a host of their own), both hosts started and warm. Rounds
   alternate; the figure is the ratio of the medians. Target: within 1.1x.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks.agents import ServerProcess
from llmspell import Runtime
from llmspell.actors.agent_actor import AgentHandle, HostSetup, spawn_host
from llmspell.runtime.hooks import HookContext, HookPoint, HookRegistry
from llmspell.runtime.messages import new_id
from llmspell.spells import SpellOptions
from llmspell.spells.bridges.tools import call_tool
from llmspell.spells.context import SpellContext
from llmspell.spells.runner import open_spell
from llmspell.spells.sandbox import LuaSandbox
from llmspell.tools import tool

TOOL_TARGET_US = 50.0
AGENTS_TARGET_RATIO = 1.1
MODEL = "local:bench"

# The spell's side: its agents, and the two batches the benchmark calls.
SPELL = """
local n_agents, model = ...
local agents = {}
for i = 1, n_agents do
  agents[i] = Agent.new{name = "lua-" .. i, model = model, stream = false}
end
local deltas = 0
Hook.register("on_stream_delta", function(ctx) deltas = deltas + 1 end)
local streamer = Agent.new{name = "streamer", model = model, stream = true}
local bench = {}
function bench.stream(text)
  deltas = 0
  local r = streamer:run(text)
  if r.text ~= "echo: " .. text then error("the streamer answered " .. r.text) end
  return deltas
end
function bench.tools(n)
  for _ = 1, n do
    local out = Tool.call("echo", {text = "hi"})
    if out ~= "hi" then error("echo answered " .. tostring(out)) end
  end
end
function bench.agents()
  local runs = {}
  for i, agent in ipairs(agents) do
    runs[i] = function() return agent:run("hello " .. i).text end
  end
  local texts = Spell.all(runs)
  for i, text in ipairs(texts) do
    if text ~= "echo: hello " .. i then error("agent " .. i .. " answered " .. text) end
  end
  return #texts
end
return bench
"""


@tool
def echo(text: str) -> str:
    """Answer with the text given."""
    return text


def watch_deltas(registry: HookRegistry) -> None:
    """The Python peer of the spell's Lua on_stream_delta hook, installed in its host."""
    def delta(ctx: HookContext) -> None:
        ctx.metadata["seen"] = True

    registry.register(HookPoint.on_stream_delta, delta)


Timed = Callable[[], Awaitable[float]]


async def alternate(sides: dict[str, Timed], rounds: int) -> dict[str, float]:
    """Rounds of each side in turn (the order flips each round, so neither always goes
    first); the median of each side's figures."""
    figures: dict[str, list[float]] = {name: [] for name in sides}
    order = list(sides)
    for i in range(rounds):
        for name in order if i % 2 == 0 else order[::-1]:
            figures[name].append(await sides[name]())
    return {name: statistics.median(values) for name, values in figures.items()}


async def bench_tool_calls(spell: SpellContext, bench: Any, *, rounds: int, calls: int
                           ) -> dict[str, Any]:
    tool_ = spell.tools.get("echo")

    async def lua() -> float:
        started = time.perf_counter()
        await spell.scheduler.call(bench["tools"], calls)
        return (time.perf_counter() - started) / calls

    async def python() -> float:
        started = time.perf_counter()
        for _ in range(calls):
            out = await call_tool(spell, tool_, {"text": "hi"})
            if out != "hi":
                raise RuntimeError(f"echo answered {out!r}")
        return (time.perf_counter() - started) / calls

    for _ in range(3):  # warm-up
        await lua()
        await python()
    medians = await alternate({"lua": lua, "python": python}, rounds)
    lua_us, py_us = medians["lua"] * 1e6, medians["python"] * 1e6
    return {"lua_tool_call_us": round(lua_us, 1), "python_tool_call_us": round(py_us, 1),
            "lua_tool_call_overhead_us": round(lua_us - py_us, 1),
            "tool_rounds": rounds, "tool_calls_per_round": calls}


async def bench_agent_runs(rt: Runtime, spell: SpellContext, bench: Any, handles: list[AgentHandle],
                           *, rounds: int) -> dict[str, Any]:
    async def lua() -> float:
        started = time.perf_counter()
        done = await spell.scheduler.first(bench["agents"])
        elapsed = time.perf_counter() - started
        if done != len(handles):
            raise RuntimeError(f"the spell ran {done} agents")
        return elapsed

    async def python() -> float:
        started = time.perf_counter()
        results = await asyncio.gather(*(h.run(f"hello {i}") for i, h in
                                         enumerate(handles, start=1)))
        elapsed = time.perf_counter() - started
        for i, r in enumerate(results, start=1):
            if r.text != f"echo: hello {i}":
                raise RuntimeError(f"agent {i} answered {r.text!r}")
        return elapsed

    for _ in range(2):  # warm-up: both hosts started, their clients connected
        await lua()
        await python()
    medians = await alternate({"lua": lua, "python": python}, rounds)
    lua_s, py_s = medians["lua"], medians["python"]
    return {"lua_100_agent_runs_ms": round(lua_s * 1e3, 1),
            "python_100_agent_runs_ms": round(py_s * 1e3, 1),
            "lua_vs_python_agents_ratio": round(lua_s / py_s, 3), "agent_rounds": rounds,
            "agent_runs_per_round": len(handles)}


async def bench_stream_deltas(spell: SpellContext, bench: Any, streamer: AgentHandle, *,
                              rounds: int, words: int) -> dict[str, Any]:
    """A streamed answer of `words` words, each chunk seen by an on_stream_delta hook: in Lua
    (the hook is relayed to the driver and awaited, chunk by chunk) and in Python (in the
    agent's host)."""
    text = " ".join(f"w{i}" for i in range(words))
    chunks: list[int] = []

    async def lua() -> float:
        started = time.perf_counter()
        chunks.append(await spell.scheduler.first(bench["stream"], text))
        return time.perf_counter() - started

    async def python() -> float:
        started = time.perf_counter()
        result = await streamer.run(text)
        elapsed = time.perf_counter() - started
        if result.text != f"echo: {text}":
            raise RuntimeError(f"the streamer answered {result.text!r}")
        return elapsed

    await lua()
    await python()
    medians = await alternate({"lua": lua, "python": python}, rounds)
    per_run = statistics.median(chunks)
    return {"lua_stream_run_ms": round(medians["lua"] * 1e3, 1),
            "python_stream_run_ms": round(medians["python"] * 1e3, 1),
            "stream_chunks": per_run,
            "lua_stream_delta_hook_us_per_chunk": round(
                (medians["lua"] - medians["python"]) / per_run * 1e6, 1)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess({"rules": []}, tmp)
        try:
            async with Runtime(job_id="bench", namespace=f"bench-{new_id()[-8:]}",
                               event_log_path=os.path.join(tmp, "events.db"),
                               state_path=os.path.join(tmp, "state.db")) as rt:
                providers = {"local": {"base_url": server.url, "api_key": "k"}}
                options = SpellOptions(providers=providers, default_model=MODEL)
                box = LuaSandbox(print_line=lambda line: None)
                spell = open_spell(box, runtime=rt, job_id="bench-spell", inputs={},
                                   options=options, name="bench")
                try:
                    spell.tools.register(echo)
                    chunk = box.compile(SPELL, "bench.lua")
                    bench = (await spell.scheduler.call(chunk, args.agents, MODEL))[0]
                    results.update(await bench_tool_calls(spell, bench, rounds=args.rounds,
                                                          calls=args.calls))
                    specs = [{"name": f"py-{i}", "model": MODEL, "stream": False}
                             for i in range(1, args.agents + 1)]
                    handles = spawn_host(rt, "python-agents",
                                         HostSetup(specs, providers=providers),
                                         job_id="bench-python")
                    await handles[0].ref.wait_ready()
                    results.update(await bench_agent_runs(rt, spell, bench, handles,
                                                          rounds=args.agent_rounds))
                    streamer = spawn_host(rt, "python-streamer", HostSetup(
                        [{"name": "py-streamer", "model": MODEL, "stream": True}],
                        providers=providers, hooks=[watch_deltas]), job_id="bench-python")[0]
                    await streamer.ref.wait_ready()
                    results.update(await bench_stream_deltas(spell, bench, streamer,
                                                             rounds=args.agent_rounds,
                                                             words=args.words))
                finally:
                    await spell.close()
                    rt.kill_job("bench-python")
        finally:
            server.stop()
    results["tool_target_us"] = TOOL_TARGET_US
    results["agents_target_ratio"] = AGENTS_TARGET_RATIO
    return results


def table(r: dict[str, Any]) -> str:
    rows = [
        ("tool call, per call (us)", r["python_tool_call_us"], r["lua_tool_call_us"],
         f"+{r['lua_tool_call_overhead_us']} us (target < {r['tool_target_us']:g})"),
        (f"{r['agent_runs_per_round']} agent runs at once (ms)", r["python_100_agent_runs_ms"],
         r["lua_100_agent_runs_ms"],
         f"{r['lua_vs_python_agents_ratio']}x (target <= {r['agents_target_ratio']:g}x)"),
        (f"stream, {r['stream_chunks']:g} deltas hooked (ms)", r["python_stream_run_ms"],
         r["lua_stream_run_ms"], f"+{r['lua_stream_delta_hook_us_per_chunk']} us a delta "
         "(the Lua hook is relayed)"),
    ]
    out = [f"{'measure':30} {'Python':>10} {'Lua':>10}  note"]
    out += [f"{name:30} {a!s:>10} {b!s:>10}  {c}" for name, a, b, c in rows]
    out.append(f"medians over {r['tool_rounds']} rounds of {r['tool_calls_per_round']} tool "
               f"calls and {r['agent_rounds']} rounds of agent runs a side, interleaved; "
               "local LLM server at zero latency")
    return "\n".join(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="a fifth of the work")
    parser.add_argument("--rounds", type=int, default=20, help="tool-call rounds a side")
    parser.add_argument("--calls", type=int, default=500, help="tool calls a round")
    parser.add_argument("--agents", type=int, default=100, help="agent runs a round")
    parser.add_argument("--agent-rounds", type=int, default=10, help="agent rounds a side")
    parser.add_argument("--words", type=int, default=100, help="words of the streamed answer")
    parsed = parser.parse_args()
    if parsed.quick:
        parsed.calls = max(1, parsed.calls // 5)
        parsed.agent_rounds = max(2, parsed.agent_rounds // 5)
    figures = asyncio.run(main(parsed))
    print(json.dumps(figures) if parsed.json else table(figures))
