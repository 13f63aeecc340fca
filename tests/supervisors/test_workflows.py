"""The workflows in plain Python: scripted agents, functions and tools as steps, the job state on
a real SQLite file. No Ray."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from llmspell.agents import RunResult, RunStatus, SpecError
from llmspell.runtime.hooks import Cancel, HookContext, HookPoint, HookRegistry, Replace
from llmspell.supervisors.base import Bind
from llmspell.supervisors.checkpoint import (
    KEY_PREFIX,
    SCHEMA_VERSION,
    Position,
    at_position,
    clear,
    input_sha,
    parse_record,
)
from llmspell.supervisors.workflows import (
    Conditional,
    Escalate,
    Loop,
    MapReduce,
    Parallel,
    Pipeline,
    Sequential,
    Stage,
    escalate,
    match_branch,
)
from llmspell.tools import ToolContext, tool
from tests.supervisors.helpers import World, ctx_for, slow_world, sqlite_state


@tool
def shout(text: str) -> str:
    """Upper-case a text."""
    return text.upper()


def topics(w: World, prefix: str = "workflow.") -> list[tuple[str, str, str]]:
    """(topic, branch, step) of the workflow events, in order."""
    return [(t, p.get("branch", ""), str(p.get("step", p.get("name", ""))))
            for t, p in w.events if t.startswith(prefix)]


class Counter:
    """Counts the calls of function steps by name."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def hit(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1


# -- Sequential -------------------------------------------------------------------------------

async def test_sequential_chains_agents_tools_and_functions_under_hooks(tmp_path: Path) -> None:
    w = World()
    hooks = HookRegistry()
    seen: list[str] = []

    def before(ctx: HookContext) -> None:
        seen.append(ctx.payload["step"])

    hooks.register(HookPoint.before_workflow_step, before)
    async with sqlite_state(tmp_path) as state:
        await state.set("job:topic", "ray")
        seq = Sequential("seq", [
            w.agent(name="writer"),
            shout,
            Bind(lambda s: f"{s} / {len(s)}", input="{{ state.topic }}: {{ previous }}",
                 state_keys=["job:topic"], output_key="job:final", name="measure"),
        ])
        result = await seq.run("hello", ctx=ctx_for(w, state=state, hooks=hooks))
        rendered = "ray: ECHO: HELLO"
        assert result.ok and result.output == f"{rendered} / {len(rendered)}"
        assert [c.agent for c in result.children] == ["writer", "shout", "<lambda>"]
        assert await state.get("job:final") == result.output
    assert seen == ["writer", "shout", "measure"]
    steps = [(t, b, s) for t, b, s in topics(w) if t == "workflow.step.finished"]
    assert steps == [("workflow.step.finished", "seq", n) for n in ("writer", "shout", "measure")]
    assert ("agent.run.finished", "seq/writer") in [(t, p["branch"]) for t, p in w.events
                                                   if t == "agent.run.finished"]


async def test_a_workflow_step_hook_can_cancel_or_replace_a_step() -> None:
    hooks = HookRegistry()

    def guard(ctx: HookContext) -> Any:
        if ctx.payload["step"] == "shout":
            return Replace(RunResult(status=RunStatus.completed, agent="cache",
                                     output="FROM CACHE", text="FROM CACHE"))
        if ctx.payload["step"] == "forbidden":
            return Cancel("not on a Sunday")
        return None

    hooks.register(HookPoint.before_workflow_step, guard)

    def forbidden(s: str) -> str:
        raise AssertionError("never runs")

    result = await Sequential("seq", [shout, lambda s: s.lower(), forbidden]).run(
        "x", ctx=ToolContext(hooks=hooks))
    assert [c.output for c in result.children[:2]] == ["FROM CACHE", "from cache"]
    assert result.status == RunStatus.cancelled and "not on a Sunday" in result.reason
    assert str(result.children[2].cancelled_by).endswith("guard")


async def test_sequential_stops_at_the_first_failed_step_naming_it() -> None:
    calls = Counter()

    def ok(s: str) -> str:
        calls.hit("ok")
        return s + "!"

    def boom(s: str) -> str:
        raise ValueError(f"cannot take {s!r}")

    def never(s: str) -> str:
        calls.hit("never")
        return s

    result = await Sequential("seq", [ok, boom, never]).run("x")
    assert result.status == RunStatus.failed
    assert result.reason == "step 1 'boom' failed: ValueError: cannot take 'x!'"
    assert len(result.children) == 2 and calls.calls == {"ok": 1}


async def test_a_workflow_wraps_as_a_tool_and_needs_steps() -> None:
    t = Sequential("loud", [shout, lambda s: s + "?"]).as_tool()
    assert await t.invoke({"input": "hey"}, ToolContext(chain=("caller",))) == "HEY?"
    with pytest.raises(SpecError):
        Sequential("empty", [])


async def test_sequential_cancelled_mid_step_returns_what_it_did() -> None:
    w = World()
    ctx = ctx_for(w)

    async def slow(s: str) -> str:
        await asyncio.sleep(30)
        return s

    task = asyncio.ensure_future(Sequential("seq", [shout, slow, shout]).run("a", ctx=ctx))
    await asyncio.sleep(0.05)
    ctx.cancel.cancel("user pressed stop")
    result = await asyncio.wait_for(task, 10)
    assert result.status == RunStatus.cancelled and "user pressed stop" in result.reason
    assert [c.status for c in result.children] == [RunStatus.completed, RunStatus.cancelled]


# -- Parallel ---------------------------------------------------------------------------------

async def test_parallel_all_reports_partial_failures_per_branch() -> None:
    def fails(s: str) -> str:
        raise RuntimeError("no data")

    branches = {"a": shout, "b": fails, "c": lambda s: s[::-1]}
    result = await Parallel("par", branches).run("abc")
    assert result.status == RunStatus.failed
    assert result.output == {"a": "ABC", "c": "cba"}
    assert result.reason == "1 of 3 branches did not complete: b (failed: RuntimeError: no data)"
    partial = await Parallel("par", branches, allow_partial=True).run("abc")
    assert partial.ok and partial.output == {"a": "ABC", "c": "cba"} and "b (failed" in \
        partial.reason


async def test_parallel_respects_its_concurrency_limit() -> None:
    running, peak = 0, 0

    async def work(s: str) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return s

    result = await Parallel("par", {f"b{i}": work for i in range(12)}, concurrency=3).run("x")
    assert result.ok and len(result.output) == 12 and peak == 3


async def test_parallel_any_takes_the_first_success_and_cancels_the_rest() -> None:
    w = slow_world(30)  # the agent's model never answers in time: the agent must be cancelled

    async def quick(s: str) -> str:
        await asyncio.sleep(0.05)
        return "quick"

    async def failing(s: str) -> str:
        raise RuntimeError("first, but failed")

    async def sleepy(s: str) -> str:
        await asyncio.sleep(30)
        return "late"

    par = Parallel("race", {"slow_agent": w.agent(name="thinker", model="slow:m"),
                            "failing": failing, "quick": quick, "sleepy": sleepy}, join="any")
    started = time.monotonic()
    result = await par.run("go", ctx=ctx_for(w))
    assert time.monotonic() - started < 5  # generous: the losers did not run to the end
    assert result.ok and result.output == {"quick": "quick"} and result.reason == ""
    status = {c.agent: c.status for c in result.children}
    assert status == {"thinker": RunStatus.cancelled, "failing": RunStatus.failed,
                      "quick": RunStatus.completed, "sleepy": RunStatus.cancelled}
    agent_end = [p for t, p in w.events if t == "agent.run.finished"]
    assert agent_end and agent_end[0]["status"] == "cancelled"  # stopped by its token
    assert ("workflow.join", "race", "") in topics(w)


async def test_parallel_first_k_and_a_join_that_cannot_be_met() -> None:
    def delayed(delay: float, fail: bool = False) -> Any:
        async def run(s: str) -> str:
            await asyncio.sleep(delay)
            if fail:
                raise RuntimeError("broken")
            return f"after {delay}"
        return run

    branches = {"d3": delayed(0.3), "d1": delayed(0.01), "d2": delayed(0.05), "d9": delayed(20)}
    result = await Parallel("two", branches, join="first_k", k=2).run("x")
    assert result.ok and result.output == {"d1": "after 0.01", "d2": "after 0.05"}
    assert {c.agent: c.status for c in result.children}["d9"] == RunStatus.cancelled
    bad = {"a": delayed(0.01, fail=True), "b": delayed(0.02, fail=True), "c": delayed(20)}
    failed = await Parallel("two", bad, join="first_k", k=2).run("x")
    assert failed.status == RunStatus.failed
    assert failed.reason.startswith("0 of the 2 branch(es) needed completed: a (failed")
    with pytest.raises(SpecError):
        Parallel("p", {"a": shout}, join="first_k", k=2)


async def test_a_cancelled_parallel_cancels_its_running_and_waiting_branches() -> None:
    w = slow_world(30)
    ctx = ctx_for(w)
    branches = {f"agent{i}": w.agent(name=f"agent{i}", model="slow:m") for i in range(4)}
    task = asyncio.ensure_future(Parallel("par", branches, concurrency=2).run("x", ctx=ctx))
    await asyncio.sleep(0.1)
    ctx.cancel.cancel("budget exhausted")
    result = await asyncio.wait_for(task, 10)
    assert result.status == RunStatus.cancelled
    assert all(c.status == RunStatus.cancelled for c in result.children)
    assert sum("not started" in c.reason for c in result.children) == 2
    finished = [p["status"] for t, p in w.events if t == "agent.run.finished"]
    assert finished == ["cancelled", "cancelled"]


# -- Conditional ------------------------------------------------------------------------------

async def test_conditional_by_predicate_over_state_and_previous_results(tmp_path: Path) -> None:
    w = World()
    async with sqlite_state(tmp_path) as state:
        await state.set("job:mode", "loud")

        async def pick(input: str, state: Any, previous: list[RunResult]) -> str:
            assert previous[-1].output == "x!"
            return str(await state.get("job:mode"))

        branch = Conditional("pick", {"loud": shout, "quiet": str.lower}, predicate=pick)
        result = await Sequential("seq", [lambda s: s + "!", branch]).run(
            "x", ctx=ctx_for(w, state=state))
    assert result.ok and result.output == "X!"
    routes = [p for t, p in w.events if t == "workflow.route"]
    assert routes == [{"workflow": "pick", "route": "loud", "by": "predicate", "answer": "loud",
                       "fallback": False, "branch": "seq/pick"}]


async def test_conditional_by_an_llm_router() -> None:
    def billing(s: str) -> str:
        return "to billing"

    def refunds(s: str) -> str:
        return "to refunds"

    w = World("  `Billing`. ", "I would say refunds, surely", "weather")
    branches = {"billing": billing, "refunds": refunds}
    cond = Conditional("route", branches, router=w.agent(name="router"))
    first = await cond.run("I was charged twice")
    assert first.ok and first.output == "to billing"
    assert "exactly one of: billing, refunds" in w.provider.requests[0].messages[-1].text
    second = await cond.run("money back")
    assert second.output == "to refunds" and [c.agent for c in second.children] == [
        "router", "refunds"]
    third = await cond.run("sunny?")
    assert third.status == RunStatus.failed
    assert third.reason == ("router chose 'weather', which is not a branch; valid branches: "
                            "billing, refunds")


async def test_conditional_default_branch_and_match_rules() -> None:
    cond = Conditional("c", {"a": shout, "b": str.lower}, predicate=lambda s: "zzz",
                       default="b")
    assert (await cond.run("MiXed")).output == "mixed"
    assert match_branch('{"branch": "B"}', ["a", "b"]) == "b"
    assert match_branch("a or b", ["a", "b"]) is None
    assert match_branch("go with plan-b", ["plan-a", "plan-b"]) == "plan-b"
    with pytest.raises(SpecError):
        Conditional("c", {"a": shout}, predicate=lambda s: "a", router=shout)
    with pytest.raises(SpecError):
        Conditional("c", {"a": shout}, predicate=lambda s: "a", default="nope")


# -- Loop -------------------------------------------------------------------------------------

async def test_loop_until_and_max_iterations() -> None:
    done = await Loop("grow", lambda s: s + "a", until=lambda r: len(r.output) >= 4,
                      max_iterations=10).run("")
    assert done.ok and done.output == "aaaa" and len(done.children) == 4
    capped = await Loop("grow", lambda s: s + "a", until=lambda r, i: False,
                        max_iterations=3).run("")
    assert capped.status == RunStatus.max_turns and capped.output == "aaa"
    assert capped.reason == ("stopped after max_iterations=3 without meeting the until "
                             "condition")
    plain = await Loop("thrice", lambda s: s + "a", max_iterations=3).run("")
    assert plain.ok and plain.output == "aaa"


async def test_loop_stops_when_a_step_escalates() -> None:
    def body(s: str) -> str:
        if len(s) >= 2:
            raise Escalate("too long", size=len(s))
        return s + "a"

    result = await Loop("grow", body, max_iterations=10).run("")
    assert result.ok and result.reason == "escalated at iteration 3: too long"
    assert result.output == {"escalate": True, "reason": "too long", "size": 2}
    w = World("draft", '{"escalate": true, "reason": "needs a human"}')
    by_agent = await Loop("review", w.agent(name="reviewer"), max_iterations=5).run("x")
    assert by_agent.reason == "escalated at iteration 2: needs a human"
    nested = await Loop("outer", Sequential("inner", [shout, lambda s: escalate("stop")]),
                        max_iterations=5).run("x")
    assert nested.reason == "escalated at iteration 1: stop"


async def test_loop_body_failure_and_broken_predicate() -> None:
    def body(s: str) -> str:
        if s == "aa":
            raise KeyError("gone")
        return s + "a"

    failed = await Loop("l", body, max_iterations=5).run("")
    assert failed.status == RunStatus.failed and failed.output == "aa"
    assert failed.reason == "iteration 3: 'body' failed: KeyError: 'gone'"
    broken = await Loop("l", shout, until=lambda r: 1 / 0, max_iterations=5).run("x")
    assert broken.status == RunStatus.failed and "ZeroDivisionError" in broken.reason


# -- MapReduce --------------------------------------------------------------------------------

def test_map_reduce_prefetch_defaults_to_agents_in_actors_only() -> None:
    class Remote:  # the shape of an AgentHandle: runs take a run id, and can be cancelled
        name = "remote"

        async def run(self, input: str, *, ctx: Any = None, run_id: str | None = None) -> Any:
            return None

        async def cancel(self, run_id: str, reason: str = "") -> bool:
            return True

    def local(s: str) -> str:
        return s

    assert MapReduce("mr", [Remote(), Remote()])._prefetch(1) == 1
    assert MapReduce("mr", local)._prefetch(0) == 0  # a second call would run alongside
    assert MapReduce("mr", [Remote()], prefetch=0)._prefetch(0) == 0
    assert MapReduce("mr", local, prefetch=2)._prefetch(0) == 2
    for bad in (-1, 1.5, "1", True):
        with pytest.raises(SpecError, match=r"map-reduce 'mr': prefetch must be a whole number"):
            MapReduce("mr", local, prefetch=bad)  # type: ignore[arg-type]


async def test_map_reduce_over_a_pool_of_agents_with_an_agent_reducer() -> None:
    w = World()
    agents = [w.agent(name=f"mapper{i}") for i in range(3)]
    reducer = w.agent(name="reducer")
    mr = MapReduce("mr", agents, reduce=reducer, split=lambda s: s.split(","))
    result = await mr.run("a,b,c,d,e,f,g", ctx=ctx_for(w))
    assert result.ok
    mapped = [c.output for c in result.children[:-1]]
    assert mapped == [f"echo: {x}" for x in "abcdefg"]
    assert result.output == "echo: " + json.dumps(mapped)
    used = {c.agent for c in result.children[:-1]}
    assert used == {"mapper0", "mapper1", "mapper2"}
    item_events = [p["index"] for t, p in w.events if t == "workflow.step.finished"]
    assert sorted(item_events) == [*range(7), 7]  # seven items, then the reduce (index 7)


async def test_map_reduce_worker_pool_function_reduce_and_item_failures() -> None:
    running, peak = 0, 0

    async def mapper(s: str) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.005)
        running -= 1
        if s == "13":
            raise ValueError("unlucky")
        return int(s) * 2

    items = json.dumps(list(range(20)))
    ok = await MapReduce("mr", mapper, reduce=sum, concurrency=4).run(
        json.dumps([i for i in range(20) if i != 13]))
    assert ok.ok and ok.output == 2 * (sum(range(20)) - 13) and peak == 4
    failed = await MapReduce("mr", mapper, reduce=sum, concurrency=4).run(items)
    assert failed.status == RunStatus.failed and len(failed.children) == 20  # no reduce
    assert failed.reason == "1 of 20 items failed: item 13 (failed: ValueError: unlucky)"
    partial = await MapReduce("mr", mapper, reduce=sum, concurrency=4,
                              allow_partial=True).run(items)
    assert partial.ok and partial.output == 2 * (sum(range(20)) - 13)
    assert "item 13" in partial.reason
    listed = await MapReduce("mr", mapper).run("[1, 2]")
    assert listed.output == [2, 4]
    bad = await MapReduce("mr", mapper).run("not json")
    assert bad.status == RunStatus.failed and "not a JSON list" in bad.reason


# -- Pipeline ---------------------------------------------------------------------------------

async def test_pipeline_keeps_input_order_across_workers_and_reports_a_failing_item() -> None:
    async def parse(s: str) -> int:
        await asyncio.sleep(0.001 * (int(s) % 4))  # items overtake each other
        if s == "5":
            raise ValueError("bad record")
        return int(s)

    async def square(s: str) -> int:
        await asyncio.sleep(0.001 * (3 - int(s) % 4))
        return int(s) ** 2

    pipe = Pipeline("pipe", [Stage(parse, workers=3), Stage(square, workers=2), lambda s: s],
                    queue_size=2)
    result = await pipe.run(json.dumps([str(i) for i in range(10)]))
    assert result.status == RunStatus.failed
    assert result.output == [str(i * i) if i != 5 else None for i in range(10)]
    assert result.reason == ("1 of 10 items failed: item 5 at stage 0 (parse) (failed: "
                             "ValueError: bad record)")
    partial = await Pipeline("pipe", [parse, square], allow_partial=True).run(
        json.dumps([str(i) for i in range(7)]))
    assert partial.ok and partial.output == [0, 1, 4, 9, 16, None, 36]


async def test_pipeline_backpressure_bounds_what_waits_between_stages() -> None:
    produced, consumed, gaps = 0, 0, []
    pulled: list[int] = []

    async def source(_: str) -> Any:
        async def items() -> Any:
            for i in range(30):
                pulled.append(produced)
                yield i
        return items()

    async def fast(s: str) -> str:
        nonlocal produced
        produced += 1
        gaps.append(produced - consumed)
        return s

    async def slow(s: str) -> str:
        nonlocal consumed
        consumed += 1
        await asyncio.sleep(0.005)
        return s

    queue_size = 3
    pipe = Pipeline("bp", [fast, slow], queue_size=queue_size, split=source)
    result = await pipe.run("")
    assert result.ok and result.output == [str(i) for i in range(30)]
    # Made but not yet taken by the slow stage: at most the queue, plus the one item the
    # blocked fast worker holds, plus the one the slow worker has taken but not counted yet.
    assert max(gaps) <= queue_size + 2
    assert max(gaps) >= queue_size  # the fast stage did run ahead until it was blocked
    # The source is pulled lazily too: never more than two queues and the workers ahead.
    assert all(i - p <= 2 * queue_size + 3 for i, p in enumerate(pulled))


async def test_pipeline_cancellation_stops_every_stage() -> None:
    ctx = ToolContext()

    async def slow(s: str) -> str:
        await asyncio.sleep(30)
        return s

    task = asyncio.ensure_future(Pipeline("p", [shout, slow], queue_size=1).run(
        json.dumps(["a", "b", "c", "d", "e"]), ctx=ctx))
    await asyncio.sleep(0.05)
    ctx.cancel.cancel("stop now")
    result = await asyncio.wait_for(task, 10)
    assert result.status == RunStatus.cancelled and result.reason.startswith("stop now")


# -- nesting ----------------------------------------------------------------------------------

async def test_three_deep_events_carry_their_branch() -> None:
    w = World()
    loop = Loop("refine", w.agent(name="editor"), until=lambda r: r.text.count("echo") >= 3,
                max_iterations=5)
    inner = Parallel("fan", {"refine": loop, "loud": shout}, concurrency=2)
    outer = Sequential("outer", [w.agent(name="planner"), inner, lambda s: f"done: {s}"])
    result = await outer.run("task", ctx=ctx_for(w))
    assert result.ok
    fan = result.children[1]
    assert fan.output == {"refine": "echo: echo: echo: task", "loud": "ECHO: TASK"}
    assert len(fan.children[0].children) == 2  # the loop's two iterations
    steps = {(b, s) for t, b, s in topics(w) if t == "workflow.step.finished"}
    assert {("outer", "planner"), ("outer", "fan"), ("outer/fan", "refine"),
            ("outer/fan", "loud"), ("outer/fan/refine", "editor")} <= steps
    runs = [p["branch"] for t, p in w.events if t == "agent.run.finished"]
    assert runs == ["outer/planner", "outer/fan/refine/editor", "outer/fan/refine/editor"]
    finished = [(p["branch"], p["name"]) for t, p in w.events if t == "workflow.finished"]
    assert finished == [("outer/fan/refine", "refine"), ("outer/fan", "fan"),
                        ("outer", "outer")]


# -- checkpoints ------------------------------------------------------------------------------

class Flaky:
    """Steps that count their calls; `fail_once` fails on its first call only."""

    def __init__(self) -> None:
        self.calls = Counter()
        self.failed: set[str] = set()

    def step(self, name: str, *, fail_once: bool = False) -> Any:
        def run(s: str) -> str:
            self.calls.hit(name)
            if fail_once and name not in self.failed:
                self.failed.add(name)
                raise RuntimeError("transient")
            return f"{s}>{name}"
        run.__name__ = name
        return run


async def test_a_resumed_sequential_does_not_redo_completed_steps(tmp_path: Path) -> None:
    flaky = Flaky()
    seq = Sequential("seq", [flaky.step("a"), flaky.step("b"), flaky.step("c", fail_once=True),
                             flaky.step("d")])
    async with sqlite_state(tmp_path) as state:
        w = World()
        first = await seq.run("x", ctx=ctx_for(w, state=state))
        assert first.status == RunStatus.failed and flaky.calls.calls == {"a": 1, "b": 1, "c": 1}
        second = await seq.run("x", ctx=ctx_for(w, state=state), resume=True)
        assert flaky.calls.calls == {"a": 1, "b": 1, "c": 2, "d": 1}
        fresh = await Sequential("seq2", [flaky.step(n) for n in "abcd"]).run("x")
        assert second.ok and second.output == fresh.output == "x>a>b>c>d"
        assert [c.reason for c in second.children[:2]] == ["restored from checkpoint"] * 2
        skipped = [p["step"] for t, p in w.events if t == "workflow.step.skipped"]
        assert skipped == ["a", "b"]
        batches = await state.list(KEY_PREFIX)
        assert all(k.startswith(f"{KEY_PREFIX}seq::") and v.value["schema"] == SCHEMA_VERSION
                   for k, v in batches.items())
        recorded = [r.step for v in batches.values() for r in parse_record(v.value) or []]
        assert sorted(recorded) == ["0.a", "1.b", "2.c", "3.d"]  # each once


async def test_a_resume_since_a_time_takes_back_only_the_records_written_since(
        tmp_path: Path) -> None:
    """What a hosted run resumed after its host died does: its own steps, not an earlier
    run's of the same workflow."""
    flaky = Flaky()
    seq = Sequential("since", [flaky.step("a"), flaky.step("b", fail_once=True)])
    async with sqlite_state(tmp_path) as state:
        w = World()
        await seq.run("x", ctx=ctx_for(w, state=state))  # a done, b failed: an earlier run
        with at_position(Position(resume=True, since=time.time() + 1.0)):
            again = await seq.run("x", ctx=ctx_for(w, state=state))
        assert again.ok and flaky.calls.calls == {"a": 2, "b": 2}  # a's record was too old
        with at_position(Position(resume=True, since=time.time() - 60.0)):
            last = await seq.run("x", ctx=ctx_for(w, state=state))
        assert last.ok and flaky.calls.calls == {"a": 2, "b": 2}  # both taken back


async def test_resume_skips_loop_iterations_map_items_and_pipeline_stages(tmp_path: Path) -> None:
    flaky = Flaky()
    failures = {"m": 0}

    def mapper(s: str) -> str:
        flaky.calls.hit(f"m{s}")
        if s == "3" and not failures["m"]:
            failures["m"] += 1
            raise RuntimeError("transient")
        return s * 2

    async with sqlite_state(tmp_path) as state:
        ctx = ToolContext(job_id="j", state=state)
        loop = Loop("loop", Sequential("body", [flaky.step("s1"), flaky.step("s2")]),
                    max_iterations=3)
        mr = MapReduce("mr", mapper, reduce=lambda xs: "+".join(xs), concurrency=2)
        pipe = Pipeline("pipe", [flaky.step("p1"), flaky.step("p2", fail_once=True)])
        wf = Sequential("job", [loop, lambda s: json.dumps(list("12345")), mr,
                                lambda s: json.dumps(s.split("+")), pipe])
        first = await wf.run("x", ctx=ctx)
        assert first.status == RunStatus.failed
        assert "item 2 (failed: RuntimeError: transient)" in first.reason
        before = dict(flaky.calls.calls)
        assert before["s1"] == 3 and before["m1"] == 1
        second = await wf.run("x", ctx=ctx, resume=True)
        assert second.status == RunStatus.failed and "item 0 at stage 1" in second.reason
        after = flaky.calls.calls
        assert after["s1"] == 3 and after["s2"] == 3  # the loop and its nested steps: done
        assert after["m3"] == 2 and all(after[f"m{i}"] == 1 for i in "1245")
        assert after["p1"] == 5
        third = await wf.run("x", ctx=ctx, resume=True)
        assert third.ok and flaky.calls.calls["p1"] == 5 and flaky.calls.calls["p2"] == 6
        assert third.output == [f"{i}{i}>p1>p2" for i in "12345"]


async def test_checkpoints_of_an_unknown_schema_are_ignored(tmp_path: Path) -> None:
    flaky = Flaky()
    seq = Sequential("seq", [flaky.step("a")])
    async with sqlite_state(tmp_path) as state:
        w = World()
        await seq.run("x", ctx=ctx_for(w, state=state))
        [key] = await state.list(KEY_PREFIX)
        record = await state.get(key)
        await state.set(key, {**record, "schema": 99})
        result = await seq.run("x", ctx=ctx_for(w, state=state), resume=True)
        assert result.ok and flaky.calls.calls == {"a": 2}
        assert "workflow.checkpoint.unreadable" in w.topics()
        other_input = await seq.run("y", ctx=ctx_for(w, state=state), resume=True)
        assert other_input.output == "y>a" and flaky.calls.calls == {"a": 3}


async def test_a_checkpoint_of_schema_1_is_read_by_the_current_reader(tmp_path: Path) -> None:
    """A batch exactly as the schema-1 writer stored it (before usage and cost were kept)
    still spares its steps on resume; they restore with no usage recorded."""
    assert SCHEMA_VERSION == 2
    flaky = Flaky()
    seq = Sequential("seq", [flaky.step("a"), flaky.step("b")])
    v1_batch = {"schema": 1, "workflow": "seq", "kind": "sequential", "steps": [
        {"step": "0.a", "input_sha": input_sha("x"), "agent": "a", "output": "x>a",
         "text": "x>a", "turns": 1, "at": 1_700_000_000.0}]}
    async with sqlite_state(tmp_path) as state:
        await state.set(f"{KEY_PREFIX}seq::0001", v1_batch)
        w = World()
        result = await seq.run("x", ctx=ctx_for(w, state=state), resume=True)
        assert result.ok and result.output == "x>a>b"
        assert flaky.calls.calls == {"b": 1}  # the step recorded by schema 1 did not run
        restored = result.children[0]
        assert restored.reason == "restored from checkpoint" and restored.output == "x>a"
        assert restored.usage.total_tokens == 0 and restored.cost_usd == 0
        assert "workflow.checkpoint.unreadable" not in w.topics()
        new = [v.value for k, v in (await state.list(KEY_PREFIX)).items() if not k.endswith(
            "::0001")]
        assert [b["schema"] for b in new] == [SCHEMA_VERSION]  # written in the new format


async def test_a_resumed_workflow_counts_what_its_restored_steps_cost(tmp_path: Path) -> None:
    """Schema 2 keeps each step's usage: a resumed run reports the tokens of the whole
    answer, the restored steps' included, not only those of the steps it ran again."""
    flaky = Flaky()
    w = World()
    seq = Sequential("seq", [w.agent(name="writer"), flaky.step("b", fail_once=True)])
    async with sqlite_state(tmp_path) as state:
        first = await seq.run("x", ctx=ctx_for(w, state=state))
        assert first.status == RunStatus.failed
        spent = first.children[0].usage
        assert spent.total_tokens > 0
        second = await seq.run("x", ctx=ctx_for(w, state=state), resume=True)
        assert second.ok and second.children[0].reason == "restored from checkpoint"
        assert second.children[0].usage == spent and second.usage == spent
        stored = [r for v in (await state.list(KEY_PREFIX)).values()
                  for r in parse_record(v.value) or []]
        assert [r.usage for r in stored if r.agent == "writer"] == [spent]


async def test_a_fan_out_records_in_batches_and_a_resume_reuses_them(tmp_path: Path) -> None:
    calls = Counter()

    async def work(s: str) -> str:
        calls.hit("work")
        await asyncio.sleep(0.001)
        return s

    par = Parallel("par", {f"b{i}": work for i in range(50)}, concurrency=10)
    async with sqlite_state(tmp_path) as state:
        ctx = ToolContext(job_id="j", state=state)
        assert (await par.run("x", ctx=ctx)).ok
        batches = await state.list(KEY_PREFIX)
        assert len(batches) < 10  # written behind the branches, many records a write
        assert sum(len(parse_record(v.value) or []) for v in batches.values()) == 50
        again = await par.run("x", ctx=ctx, resume=True)
        assert again.ok and len(again.output) == 50 and calls.calls == {"work": 50}
        assert await clear(state) == len(batches) and not await state.list(KEY_PREFIX)


async def test_a_resumed_conditional_does_not_ask_its_router_again(tmp_path: Path) -> None:
    flaky = Flaky()
    w = World("refunds")
    cond = Conditional("triage", {"billing": flaky.step("billing"),
                                  "refunds": flaky.step("refunds", fail_once=True)},
                       router=w.agent(name="router"))
    async with sqlite_state(tmp_path) as state:
        first = await cond.run("money back", ctx=ctx_for(w, state=state))
        assert first.status == RunStatus.failed and len(w.provider.requests) == 1
        second = await cond.run("money back", ctx=ctx_for(w, state=state), resume=True)
    assert second.ok and second.output == "money back>refunds"
    assert len(w.provider.requests) == 1  # the routing decision came from the checkpoint
