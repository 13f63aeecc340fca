"""Swarms: handoffs carrying the conversation and state, ping-pong stopped, resume; workers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from llmspell.agents import RunResult, RunStatus, SpecError
from llmspell.llm.types import LLMRequest, Message, Response, ToolCall
from llmspell.runtime.hooks import Cancel, HookContext, HookPoint
from llmspell.supervisors.swarm import Swarm, SwarmResult, WorkerSwarm, WorkerSwarmResult
from llmspell.tools import ToolContext, tool
from tests.supervisors.pattern_helpers import Team, call, last_user, tool_results


@tool
async def remember(key: str, value: str, ctx: ToolContext) -> str:
    """Write a value to the job's state.

    Args:
        key: a scoped state key
        value: the value
    """
    assert ctx.state is not None
    await ctx.state.set(key, value)
    return f"saved {key}"


def hand(target: str, reason: str, summary: str = "", cid: str = "h1") -> list[ToolCall]:
    return [call(f"transfer_to_{target}", cid, reason=reason, summary=summary)]


async def test_two_handoffs_carry_conversation_and_state(tmp_path: Path) -> None:
    team = Team(tmp_path)
    seen_by_billing: list[str] = []

    def billing_reads(request: LLMRequest) -> list[object]:
        seen_by_billing.append(last_user(request))
        return [call("remember", "b1", key="agent:billing:case", value="case-9")]

    # The model says something and hands off in the same answer: the text is kept.
    says = Response(message=Message.assistant("I see order A-17; passing you on.", hand(
        "billing", "a refund question", "order A-17, wants money back")))
    triage = team.agent("triage", [call("remember", key="job:order", value="A-17")], says,
                        tools=[remember], handoffs=["billing"])
    billing = team.agent("billing", billing_reads,
                         hand("refunds", "approved", "refund A-17", cid="h2"),
                         tools=[remember], handoffs=["refunds", "triage"])
    refunds = team.agent("refunds", lambda r: f"Refund issued. ({last_user(r)[:40]})")
    hooked: list[tuple[str, str, str]] = []

    @team.hooks.on(HookPoint.before_handoff)
    def before(ctx: HookContext) -> None:
        hooked.append(("before", ctx.payload["from"], ctx.payload["to"]))

    @team.hooks.on(HookPoint.after_handoff)
    def after(ctx: HookContext) -> None:
        hooked.append(("after", ctx.payload.source, ctx.payload.target))

    swarm = Swarm("help", [triage, billing, refunds], entry="triage", state_keys=["job:order"],
                  handoff_keys={"billing->refunds": ["agent:billing:case"]})
    result = await swarm.run("I want my money back", ctx=team.ctx())

    # Control came back to the caller with the final answer of the last agent.
    assert isinstance(result, SwarmResult) and result.ok and result.agent == "help"
    assert result.output.startswith("Refund issued. (You are taking over")
    assert result.path == ["triage", "billing", "refunds"] and result.active == "refunds"
    # The next agent really saw the conversation, the summary and the carried state.
    brief = seen_by_billing[0]
    assert "user: I want my money back" in brief
    assert "triage: I see order A-17; passing you on." in brief
    assert "Summary: order A-17, wants money back" in brief
    assert '- job:order = "A-17"' in brief
    assert "Reason: a refund question" in brief
    refunds_brief = last_user(team.requests("refunds")[0])
    assert "triage: I see order A-17" in refunds_brief  # the whole conversation, not one hop
    assert '- agent:billing:case = "case-9"' in refunds_brief
    # The state keys landed in job state; the private key was carried into the target's scope.
    assert team.state is not None
    assert await team.state.get("job:order") == "A-17"
    assert await team.state.get("agent:refunds:case") == "case-9"
    assert await team.state.get("job:swarm:help:active") == "refunds"
    history = await team.state.get("job:swarm:help:history")
    assert [(h["source"], h["target"]) for h in history] == [("triage", "billing"),
                                                             ("billing", "refunds")]
    assert history[1]["state"] == {"job:order": "A-17", "agent:billing:case": "case-9"}
    assert await team.state.get("job:swarm:help:status") == "done"
    # Each handoff is an event carrying from, to, the reason and the state keys.
    events = team.payloads("swarm.handoff")
    assert [(e["from"], e["to"], e["reason"]) for e in events] == [
        ("triage", "billing", "a refund question"), ("billing", "refunds", "approved")]
    assert events[0]["state_keys"] == ["job:order"]
    assert events[1]["state_keys"] == ["job:order", "agent:billing:case"]
    assert events[1]["state"]["agent:billing:case"] == "case-9"
    assert hooked == [("before", "triage", "billing"), ("after", "triage", "billing"),
                      ("before", "billing", "refunds"), ("after", "billing", "refunds")]
    await team.close()


async def test_ping_pong_is_stopped_with_the_cycle_named(tmp_path: Path) -> None:
    team = Team(tmp_path)
    a = team.agent("a", *[hand("b", "yours") for _ in range(5)], handoffs=["b"])
    b = team.agent("b", *[hand("a", "no, yours") for _ in range(5)], handoffs=["a"])
    result = await Swarm("pp", [a, b], max_handoffs=10).run("whose job?", ctx=team.ctx())
    assert isinstance(result, SwarmResult)
    assert result.status == RunStatus.failed
    assert "handoff ping-pong stopped: the cycle a -> b -> a came round a second time" \
        in result.reason
    assert "path: a -> b -> a -> b -> a" in result.reason
    assert len(result.handoffs) == 3 and len(team.requests("a")) == 2
    assert team.state is not None
    assert await team.state.get("job:swarm:pp:status") == "done"
    await team.close()


async def test_the_handoff_limit_names_the_path_and_the_cycle() -> None:
    team = Team()
    a = team.agent("a", hand("b", "1"), hand("b", "4"), handoffs=["b"])
    b = team.agent("b", hand("c", "2"), handoffs=["c"])
    c = team.agent("c", hand("a", "3"), handoffs=["a"])
    result = await Swarm("ring", [a, b, c], max_handoffs=3).run("go", ctx=team.ctx())
    assert result.status == RunStatus.max_turns
    assert result.reason == ("handoff limit max_handoffs=3 reached (path: a -> b -> c -> a -> b)"
                             "; cycle b -> c -> a -> b")


async def test_control_comes_back_to_a_caller_that_used_the_swarm_as_a_tool() -> None:
    team = Team()
    first = team.agent("first", hand("second", "over to you"), handoffs=["second"])
    second = team.agent("second", "the swarm's answer")
    swarm = Swarm("pair", [first, second])
    caller = team.agent("caller", [call("pair", input="solve")],
                        lambda r: "caller continues after: " + tool_results(r)[0],
                        tools=[swarm.as_tool()])
    result = await caller.run("start")
    assert result.ok and result.output == "caller continues after: the swarm's answer"


async def test_a_resumed_swarm_continues_with_the_active_agent(tmp_path: Path) -> None:
    team = Team(tmp_path)
    started, never = asyncio.Event(), asyncio.Event()

    @tool
    async def think() -> str:
        """Think for a long time."""
        started.set()
        await never.wait()
        return "unreachable"

    a = team.agent("a", hand("b", "b knows", "the facts so far"), handoffs=["b"])
    b = team.agent("b", [call("think")], lambda r: "b answers: " + last_user(r).split("\n")[0],
                   tools=[think])
    ctx = team.ctx()

    async def crash_soon() -> None:
        await started.wait()
        ctx.cancel.cancel("the driver went away")

    crash = asyncio.create_task(crash_soon())
    first = await Swarm("job", [a, b]).run("the task", ctx=ctx)
    await crash
    assert first.status == RunStatus.cancelled
    assert team.state is not None
    assert await team.state.get("job:swarm:job:active") == "b"
    assert await team.state.get("job:swarm:job:status") == "running"

    again = await Swarm("job", [a, b]).run("the task", ctx=team.ctx())  # a new driver
    assert isinstance(again, SwarmResult) and again.ok and again.resumed
    assert again.output == ("b answers: You are taking over a conversation from a (handoff 1 "
                            "in swarm job).")
    assert again.path == ["a", "b"] and len(team.requests("a")) == 1  # a did not run again
    resumed = team.requests("b")[-1]
    assert "user: the task" in last_user(resumed)
    # b's interrupted tool call was answered in its history, so a real provider accepts it.
    roles = [m.role for m in resumed.messages]
    assert roles[roles.index("assistant"):][:2] == ["assistant", "tool"]
    assert team.payloads("swarm.resumed")[0]["active"] == "b"
    await team.close()


async def test_a_hook_may_refuse_a_handoff() -> None:
    team = Team()
    a = team.agent("a", hand("b", "escalate"), handoffs=["b"])
    b = team.agent("b", "never reached")
    team.hooks.register(HookPoint.before_handoff, lambda ctx: Cancel("b is off today"),
                        name="rota")
    result = await Swarm("s", [a, b]).run("x", ctx=team.ctx())
    assert result.status == RunStatus.cancelled and result.cancelled_by == "rota"
    assert "b is off today" in result.reason and team.requests("b") == []


def test_bad_swarms_are_refused() -> None:
    team = Team()
    a = team.agent("a", handoffs=["ghost"])
    with pytest.raises(SpecError, match="'a' hands off to 'ghost', which is not a member"):
        Swarm("s", [a])
    with pytest.raises(SpecError, match="entry agent 'z' is not a member"):
        Swarm("s", [team.agent("b")], entry="z")


async def test_worker_swarm_drains_the_queue_and_merges_in_task_order() -> None:
    team = Team()
    running = {"now": 0, "peak": 0}

    @tool
    async def work(task: str) -> str:
        """Do a task.

        Args:
            task: the task
        """
        running["now"] += 1
        running["peak"] = max(running["peak"], running["now"])
        await asyncio.sleep(0.01)
        running["now"] -= 1
        return f"done: {task}"

    def worker_script() -> list[object]:
        script: list[object] = []
        for _ in range(7):
            script += [lambda r: [call("work", task=last_user(r))],
                       lambda r: tool_results(r)[0]]
        return script

    workers = [team.agent(f"w{i}", *worker_script(), tools=[work]) for i in range(3)]
    tasks = [f"task {i}" for i in range(7)]
    result = await WorkerSwarm("crew", workers, tasks).run("", ctx=team.ctx())

    assert isinstance(result, WorkerSwarmResult) and result.ok
    assert result.output == [f"done: task {i}" for i in range(7)]
    assert sum(len(team.requests(f"w{i}")) for i in range(3)) == 14  # each task once
    assert set(result.workers) == {"w0", "w1", "w2"} and running["peak"] > 1
    finished = team.payloads("swarm.task.finished")
    assert sorted(p["index"] for p in finished) == list(range(7))


async def test_worker_swarm_reports_failed_tasks_and_merges() -> None:
    def worker(task: str) -> str:
        if task == "bad":
            raise ValueError("cannot do bad")
        return task.upper()

    def merge(results: list[RunResult]) -> str:
        return "+".join(str(r.output) for r in results if r.ok)

    swarm = WorkerSwarm("crew", [worker], merge=merge)
    result = await swarm.run('["a", "bad", "c"]')
    assert isinstance(result, WorkerSwarmResult)
    assert result.status == RunStatus.failed and result.failed == [1]
    assert result.output == "A+C"
    assert result.reason \
        == "1 of 3 task(s) failed: #1 (worker: failed: ValueError: cannot do bad)"


async def test_worker_swarm_prefetch_is_off_for_local_workers_and_checked() -> None:
    running = {"now": 0, "peak": 0}

    async def worker(task: str) -> str:
        running["now"] += 1
        running["peak"] = max(running["peak"], running["now"])
        await asyncio.sleep(0.005)
        running["now"] -= 1
        return task

    tasks = json.dumps([f"t{i}" for i in range(8)])
    result = await WorkerSwarm("crew", [worker]).run(tasks)
    assert result.ok and running["peak"] == 1  # a local worker gets no queued second task
    running["peak"] = 0
    result = await WorkerSwarm("crew", [worker], prefetch=1).run(tasks)
    assert result.ok and result.output == [f"t{i}" for i in range(8)]
    assert running["peak"] == 2  # asked for: the second call runs alongside the first
    with pytest.raises(SpecError, match=r"worker swarm 'crew': prefetch must be a whole number"):
        WorkerSwarm("crew", [worker], prefetch=-1)
