"""Merge rules under real concurrency, against LocalState on a real SQLite file."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from llmspell.agents import RunStatus
from llmspell.supervisors.base import Bind
from llmspell.supervisors.merge import (
    MergedState,
    MergeError,
    MergeRules,
    Reducer,
    merged_write,
)
from llmspell.supervisors.workflows import MapReduce, Parallel
from llmspell.tools import ToolContext
from tests.supervisors.helpers import World, ctx_for, sqlite_state


async def test_append_from_many_concurrent_writers_loses_nothing(tmp_path: Path) -> None:
    rules = MergeRules({"job:findings": "append"})
    async with sqlite_state(tmp_path) as state:
        attempts: list[int] = []

        async def writer(w: int) -> None:
            for i in range(10):
                outcome = await merged_write(state, "job:findings", f"{w}.{i}", rules)
                attempts.append(outcome.attempts)
                await asyncio.sleep(random.uniform(0, 0.002))

        await asyncio.gather(*(writer(w) for w in range(20)))
        found = await state.get_versioned("job:findings")
    assert found is not None and found.version == 200
    assert sum(attempts) > 200  # writers did collide (all 20 start on the same version)
    assert sorted(found.value) == sorted(f"{w}.{i}" for w in range(20) for i in range(10))
    for w in range(20):  # each writer's items stay in its own order
        mine = [v for v in found.value if v.startswith(f"{w}.")]
        assert mine == [f"{w}.{i}" for i in range(10)]


async def test_a_reducer_applies_every_write_exactly_once(tmp_path: Path) -> None:
    calls = 0

    def add(old: Any, new: Any) -> int:
        nonlocal calls
        calls += 1
        return int(old or 0) + int(new)

    rules = MergeRules({"job:count:*": add, "job:max": Reducer(lambda a, b: max(a or 0, b))})
    async with sqlite_state(tmp_path) as state:
        await asyncio.gather(*(merged_write(state, "job:count:total", n, rules)
                               for n in range(1, 101)),
                             *(merged_write(state, "job:max", n, rules) for n in range(50)))
        assert await state.get("job:count:total") == 5050
        assert await state.get("job:max") == 49
    assert calls > 100  # the writers collided, lost a compare-and-set and merged again


async def test_last_writer_reports_an_unseen_overwrite_and_keeps_the_value(
        tmp_path: Path) -> None:
    w = World()
    gate = asyncio.Event()

    async def first(s: str, ctx: ToolContext) -> str:
        assert ctx.state is not None
        await ctx.state.set("job:best", "from first")
        gate.set()
        return "first"

    async def second(s: str, ctx: ToolContext) -> str:
        assert ctx.state is not None
        await gate.wait()
        await ctx.state.set("job:best", "from second")  # never read what first wrote
        return "second"

    async def reader(s: str, ctx: ToolContext) -> str:
        assert ctx.state is not None
        await gate.wait()
        seen = await ctx.state.get("job:best")  # read first, then write: no conflict
        await ctx.state.set("job:best", f"{seen} + reader")
        return "reader"

    async with sqlite_state(tmp_path) as state:
        await state.set("job:best", "initial")
        par = Parallel("par", {"first": first, "second": second},
                       merge={"job:best": "last_writer"})
        result = await par.run("x", ctx=ctx_for(w, state=state))
        assert result.ok and await state.get("job:best") == "from second"
        assert result.reason == ("1 state conflict(s): job:best (written by par.second over "
                                 "version 2, having seen 1)")
        [event] = [p for t, p in w.events if t == "state.conflict"]
        assert event["replaced"] == "from first" and event["value"] == "from second"
        assert event["writer"] == "par.second" and event["branch"] == "par"

        w.events.clear()
        gate.clear()
        calm = Parallel("calm", {"first": first, "reader": reader},
                        merge={"job:best": "last_writer"})
        assert (await calm.run("x", ctx=ctx_for(w, state=state))).reason == ""
        assert await state.get("job:best") == "from first + reader"
        assert not [t for t, _ in w.events if t == "state.conflict"]


async def test_undeclared_keys_are_last_writer_by_default(tmp_path: Path) -> None:
    async with sqlite_state(tmp_path) as state:
        branches = {f"b{i}": Bind(lambda s: s, output_key="job:answer", name=f"b{i}")
                    for i in range(4)}
        result = await Parallel("par", branches).run("same", ctx=ToolContext(state=state))
        assert result.ok and result.reason.startswith("3 state conflict(s): job:answer")
        unchecked = Parallel("par", branches, merge=MergeRules(default=None))
        assert (await unchecked.run("same", ctx=ToolContext(state=state))).reason == ""


async def test_bind_outputs_of_map_items_append_through_the_rules(tmp_path: Path) -> None:
    async with sqlite_state(tmp_path) as state:
        async def research(item: str) -> str:
            await asyncio.sleep(random.uniform(0, 0.003))
            return f"fact about {item}"

        mapper = Bind(research, output_key="job:facts")
        mr = MapReduce("mr", mapper, concurrency=8, merge={"job:facts": "append"})
        items = [f"topic{i}" for i in range(40)]
        result = await mr.run('["' + '", "'.join(items) + '"]', ctx=ToolContext(state=state))
        assert result.ok and result.reason == ""
        facts = await state.get("job:facts")
        assert sorted(facts) == sorted(f"fact about {i}" for i in items)


async def test_nested_blocks_inherit_the_rules(tmp_path: Path) -> None:
    async with sqlite_state(tmp_path) as state:
        leaf = {f"l{i}": Bind(lambda s: s, output_key="job:log", name=f"l{i}") for i in range(3)}
        inner = {f"p{i}": Parallel(f"p{i}", leaf) for i in range(3)}
        outer = Parallel("outer", inner, merge={"job:log": "append"})
        result = await outer.run("entry", ctx=ToolContext(state=state))
        assert result.ok and await state.get("job:log") == ["entry"] * 9


async def test_merge_rule_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not 'append', 'last_writer' or a function"):
        MergeRules({"job:x": "union"})
    async with sqlite_state(tmp_path) as state:
        await state.set("job:text", "not a list")
        with pytest.raises(MergeError, match="holds a str; the append rule needs a list"):
            await merged_write(state, "job:text", "x", {"job:text": "append"})
        # a failing write fails the step that made it, with the reason
        failing = Parallel("p", {"a": Bind(lambda s: s, output_key="job:text")},
                           merge={"job:text": "append"})
        result = await failing.run("x", ctx=ToolContext(state=state))
        assert result.status == RunStatus.failed and "append rule needs a list" in result.reason
        stale = await merged_write(state, "job:text", "mine", MergeRules(), seen=0)
        assert [c.current for c in stale.conflicts] == [1]
        assert MergedState.raw(MergedState(state, MergeRules(), writer="w")) is state
