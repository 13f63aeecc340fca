"""The agent loop against a scripted model: no Ray, no network."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from llmspell.agents import Agent, AgentEnv, AgentSpec, RunStatus
from llmspell.agents.lifecycle import AgentStatus, IllegalTransition, Lifecycle
from llmspell.agents.loop import AgentBusy, Decision
from llmspell.agents.result import PendingApproval
from llmspell.llm.types import LLMRequest, ToolCall
from llmspell.runtime.hooks import Cancel, HookContext, HookPoint, Modify
from llmspell.tools import ToolContext, ToolNotFound, ToolRegistry, tool
from tests.world import World, add, call


async def test_final_answer_and_usage() -> None:
    w = World("hello there")
    result = await w.agent().run("hi")
    assert result.status == RunStatus.completed and result.output == "hello there"
    assert result.usage.input_tokens > 0 and result.turns == 1
    assert "agent.run.started" in w.topics() and "agent.run.finished" in w.topics()
    states = [(p["from"], p["to"]) for t, p in w.events if t == "agent.state"]
    assert ("ready", "running") in states and ("running", "ready") in states


async def test_streamed_deltas_are_events() -> None:
    w = World("one two three")
    result = await w.agent(stream=True).run("hi")
    deltas = "".join(p["text"] for t, p in w.events if t == "agent.llm.delta")
    assert deltas == result.text == "one two three"


async def test_two_tools_run_in_parallel_in_one_turn() -> None:
    both = asyncio.Barrier(2)

    @tool
    async def left() -> str:
        """Left."""
        await asyncio.wait_for(both.wait(), 5)  # only returns if `right` runs at the same time
        return "L"

    @tool
    async def right() -> str:
        """Right."""
        await asyncio.wait_for(both.wait(), 5)
        return "R"

    w = World([call("left", "c1"), call("right", "c2")], "both done")
    result = await w.agent(tools=[left, right]).run("go")
    assert result.ok and result.output == "both done"
    assert sorted(r.content for r in w.tool_results(1)) == ["L", "R"]


async def test_invalid_arguments_go_back_to_the_model_which_corrects_them() -> None:
    w = World([call("add", a="x", b=2)], [call("add", "c2", a=1, b=2)], "3")
    result = await w.agent(tools=[add]).run("add")
    first = w.tool_results(1)[0]
    assert first.is_error and "invalid arguments" in first.content and "a:" in first.content
    second = w.tool_results(2)[-1]
    assert not second.is_error and second.content == "3"
    assert result.ok and result.turns == 3


async def test_unknown_tool_and_bad_json_are_tool_errors() -> None:
    bad_json = ToolCall(id="c2", name="add", arguments={}, invalid_arguments="{oops")
    w = World([call("ad", "c1"), bad_json], "ok")
    result = await w.agent(tools=[add]).run("x")
    errors = {r.call_id: r.content for r in w.tool_results(1)}
    assert "no such tool" in errors["c1"] and "'add'" in errors["c1"]
    assert "not valid JSON" in errors["c2"]
    assert result.ok


async def test_a_failing_tool_never_ends_the_run() -> None:
    @tool
    def boom() -> str:
        """Fails."""
        raise RuntimeError("disk on fire")

    w = World([call("boom")], "recovered")
    result = await w.agent(tools=[boom]).run("x")
    assert "RuntimeError: disk on fire" in w.tool_results(1)[0].content
    assert result.ok and result.output == "recovered"


async def test_tool_timeout_is_a_tool_error() -> None:
    @tool(timeout=0.05)
    async def slow() -> str:
        """Slow."""
        await asyncio.sleep(30)
        return "never"

    w = World([call("slow")], "fine")
    result = await w.agent(tools=[slow]).run("x")
    assert "no result within 0.05s" in w.tool_results(1)[0].content and result.ok


async def test_structured_output_is_repaired_once() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    w = World('{"n": "three"}', '```json\n{"n": 3}\n```')
    result = await w.agent(output_schema=schema).run("count")
    assert result.ok and result.output == {"n": 3}
    repair = w.provider.requests[1].messages[-1].text
    assert "does not match the required JSON schema" in repair and "n:" in repair
    assert w.provider.requests[0].output_schema is not None


async def test_structured_output_fails_after_one_repair() -> None:
    schema = {"type": "object", "required": ["n"]}
    w = World("nope", "still nope")
    result = await w.agent(output_schema=schema).run("count")
    assert result.status == RunStatus.failed and "after one repair" in result.reason
    assert len(w.provider.requests) == 2


async def test_max_turns_is_a_result_with_a_reason() -> None:
    w = World(*[[call("add", f"c{i}", a=1, b=1)] for i in range(5)])
    result = await w.agent(tools=[add], max_turns=3).run("loop")
    assert result.status == RunStatus.max_turns and "max_turns=3" in result.reason
    assert len(w.provider.requests) == 3


async def test_handoff_ends_the_run_with_its_target() -> None:
    w = World([call("transfer_to_billing", reason="a refund", summary="user wants money")])
    agent = w.agent(handoffs=["billing"])
    result = await agent.run("refund please")
    assert result.status == RunStatus.handoff and result.handoff is not None
    assert (result.handoff.target, result.handoff.reason) == ("billing", "a refund")
    offered = [t.name for t in w.provider.requests[0].tools]
    assert offered == ["transfer_to_billing"]
    assert agent.runner.history[-1].role == "tool"  # the history stays valid for the next agent


async def test_approval_pauses_and_a_new_runner_resumes_from_plain_data() -> None:
    effects: list[str] = []

    @tool(requires_approval=True, side_effects="external", idempotent=False)
    def pay(amount: int) -> str:
        """Pay."""
        effects.append(f"paid {amount}")
        return "paid"

    w = World([call("pay", amount=5), call("add", "c2", a=1, b=1)])
    agent = w.agent(tools=[pay, add])
    paused = await agent.run("pay 5")
    assert paused.status == RunStatus.paused and paused.pending is not None
    assert paused.pending.approvals_needed == ["c1"] and effects == []
    assert agent.runner.status == AgentStatus.waiting_approval
    with pytest.raises(AgentBusy, match="waiting for approval"):
        await agent.run("something else")
    stored = json.loads(paused.pending.model_dump_json())  # as it would sit in the state store

    w2 = World("all done")  # another process: a fresh env and agent of the same spec
    other = Agent(agent.spec, env=w2.env)
    w2.tools.register(pay)
    w2.tools.register(add)
    result = await other.resume(PendingApproval.model_validate(stored), {"c1": True})
    assert result.ok and result.output == "all done" and effects == ["paid 5"]
    contents = sorted(r.content for r in w2.tool_results(0))
    assert contents == ["2", "paid"]  # the unapproved call ran before the pause, once


async def test_a_rejected_call_tells_the_model_why() -> None:
    @tool(requires_approval=True)
    def drop_table() -> str:
        """Drop."""
        raise AssertionError("must not run")

    w = World([call("drop_table")], "ok, I will not")
    agent = w.agent(tools=[drop_table])
    paused = await agent.run("drop it")
    assert paused.pending is not None
    result = await agent.resume(paused.pending, {"c1": Decision(False, "too risky")})
    assert result.ok
    assert "rejected by a human reviewer: too risky" in w.tool_results(1)[0].content


async def test_recursive_agent_tool_is_stopped() -> None:
    w = World()
    a = w.agent(name="alpha", tools=[])
    b = w.agent(name="beta", tools=[a.as_tool()])
    a2 = Agent(a.spec.model_copy(update={"tools": ["beta"]}), env=w.env)
    w.tools.register(b.as_tool(), replace=True)
    w.tools.register(a2.as_tool(), replace=True)
    # alpha -> beta -> alpha: the model of each keeps calling the other
    w.provider.script = [[call("beta", input="q")], [call("alpha", "c2", input="q")], "gave up",
                         "done"]
    result = await a2.run("start")
    errors = [r.content for i in range(len(w.provider.requests)) for r in w.tool_results(i)]
    assert any("already in its own call chain" in e and "alpha -> beta -> alpha" in e
               for e in errors)
    assert result.ok


async def test_depth_limit_names_the_chain() -> None:
    ctx = ToolContext(chain=("a",), max_depth=2)
    ctx = ctx.enter("b")
    with pytest.raises(Exception, match="call depth 3 exceeds the limit of 2"):
        ctx.enter("c")


def test_illegal_transition_is_refused() -> None:
    seen: list[str] = []
    life = Lifecycle("x", lambda t, p: seen.append(p["to"]))
    life.to(AgentStatus.ready)
    with pytest.raises(IllegalTransition, match="cannot go from ready to waiting_tool"):
        life.to(AgentStatus.waiting_tool)
    life.to(AgentStatus.stopped)
    with pytest.raises(IllegalTransition):
        life.to(AgentStatus.ready)
    assert seen == ["ready", "stopped"]


async def test_memory_is_summarised_past_its_budget() -> None:
    w = World()
    w.provider.script = ["x " * 400] * 6 + ["SUMMARY: the user asked six things"] + ["fine"]
    agent = w.agent(memory={"kind": "summarize", "token_budget": 500, "keep_recent": 2})
    for i in range(6):
        await agent.run(f"question {i}")
    result = await agent.run("last")
    history = agent.runner.history
    assert history[0].text.startswith("Summary of the earlier conversation:")
    assert "SUMMARY: the user asked six things" in history[0].text
    assert "agent.memory.summarized" in w.topics() and result.ok
    sent = w.provider.requests[-1].messages
    assert len(sent) < 14  # the last call saw the summary, not the 13 old messages


async def test_window_memory_sends_only_recent_messages() -> None:
    w = World()
    agent = w.agent(memory={"kind": "window", "max_messages": 4})
    for i in range(5):
        await agent.run(f"q{i}")
    sent = w.provider.requests[-1].messages
    assert [m.role for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[-1].text == "q4"


async def test_a_budget_hook_cancels_the_run_with_its_reason() -> None:
    w = World(*["more"] * 3)

    @w.env.hooks.on(HookPoint.before_llm_call)
    def budget(ctx: HookContext) -> Cancel | None:
        return Cancel("token budget of 10 exceeded")

    result = await w.agent().run("hi")
    assert result.status == RunStatus.cancelled and (result.cancelled_by or "").endswith("budget")
    assert "token budget of 10 exceeded" in result.reason


async def test_before_tool_call_hook_may_modify_arguments() -> None:
    w = World([call("add", a=1, b=1)], "done")

    @w.env.hooks.on(HookPoint.before_tool_call)
    def double(ctx: HookContext) -> Modify:
        args = dict(ctx.payload["arguments"])
        return Modify({**ctx.payload, "arguments": {"a": args["a"] * 10, "b": args["b"]}})

    await w.agent(tools=[add]).run("x")
    assert w.tool_results(1)[0].content == "11"


async def test_concurrent_runs_of_one_agent_never_interleave() -> None:
    def answer(request: LLMRequest) -> str:
        return f"answer to {request.messages[-1].text}"

    w = World(*[answer] * 20)
    agent = w.agent()
    results = await asyncio.gather(*(agent.run(f"q{i}") for i in range(20)))
    assert all(r.ok for r in results)
    history = agent.runner.history
    assert len(history) == 40
    for user, reply in zip(history[::2], history[1::2], strict=True):
        assert user.role == "user" and reply.role == "assistant"
        assert reply.text == f"answer to {user.text}"


async def test_instructions_are_a_template_over_inputs() -> None:
    w = World("ok")
    await w.agent(instructions="Write about {{ topic }} for {{ agent }}.").run(
        "go", inputs={"input": "go", "topic": "Ray"})
    assert w.provider.requests[0].messages[0].text == "Write about Ray for a."
    result = await World("x").agent(instructions="{{ missing }}").run("go")
    assert result.status == RunStatus.failed and "'missing' is undefined" in result.reason


def test_bad_specs_name_the_field() -> None:
    with pytest.raises(ValueError, match="name"):
        AgentSpec(name="1bad")
    with pytest.raises(ValueError, match="template error at line 1"):
        AgentSpec(name="a", instructions="{{ oops")
    with pytest.raises(ValueError, match="not a valid JSON schema"):
        AgentSpec(name="a", output_schema={"type": 5})
    with pytest.raises(ToolNotFound, match=r"no such tool \(did you mean 'add'\?\)"):
        _ = Agent(AgentSpec(name="a", tools=["ad"]), env=_env_with(add)).runner


def _env_with(*tools: Any) -> AgentEnv:
    return AgentEnv(tools=ToolRegistry(tools))


async def test_templates_give_instructions_tools_and_overrides() -> None:
    from llmspell.agents import TEMPLATES, from_template

    assert set(TEMPLATES) == {"chat", "research", "code", "data", "planner", "orchestrator"}
    plan = '{"goal": "ship", "steps": [{"id": 1, "task": "build"}, {"id": 2, "task": "test"}]}'
    w = World(plan)
    planner = Agent(from_template("planner", model="scripted:m", stream=False), env=w.env)
    result = await planner.run("plan a release")
    assert result.ok and [s["task"] for s in result.output["steps"]] == ["build", "test"]
    spec = from_template("data", name="analyst", extra_tools=["add"])
    assert spec.name == "analyst" and spec.tools[-1] == "add" and "csv_analyze" in spec.tools
    with pytest.raises(ToolNotFound, match="csv_analyze"):
        _ = Agent(spec, env=_env_with(add)).runner  # the job lacks a default tool: said at once
    with pytest.raises(ValueError, match="unknown agent template 'reserch'"):
        from_template("reserch")


class SlowModel:
    """A model that takes 30 s to answer (an external service having a bad day)."""

    name = "slow"

    def count_tokens(self, messages: Any, model: str) -> int:
        return 1

    async def complete(self, request: LLMRequest) -> Any:
        await asyncio.sleep(30)
        raise AssertionError("the call should have been abandoned")

    async def stream(self, request: LLMRequest) -> Any:
        await asyncio.sleep(30)
        yield None


@pytest.mark.parametrize("stream", [False, True])
async def test_cancel_abandons_the_model_call_at_once(stream: bool) -> None:
    from llmspell.runtime.cancel import CancelToken

    w = World()
    w.env.providers.register("slow", SlowModel())  # type: ignore[arg-type]
    token = CancelToken()
    agent = w.agent(model="slow:m", stream=stream)
    task = asyncio.create_task(agent.run("hi", ctx=ToolContext(chain=("a",), cancel=token)))
    await asyncio.sleep(0.1)
    token.cancel("the user pressed stop")
    result = await asyncio.wait_for(task, 1.0)  # the promise: well under a second
    assert result.status == RunStatus.cancelled and result.reason == "the user pressed stop"
    assert agent.runner.status == AgentStatus.ready


async def test_a_paused_agent_takes_no_runs_until_unpaused() -> None:
    w = World("ok")
    agent = w.agent()
    agent.runner.pause("supervisor hold")
    with pytest.raises(AgentBusy, match="while paused"):
        await agent.run("hi")
    agent.runner.unpause()
    assert (await agent.run("hi")).ok


async def test_instructions_read_the_state_keys_they_name(tmp_path: Any) -> None:
    from llmspell.runtime.state import SQLiteBackend, StateStore
    from llmspell.runtime.state_client import LocalState

    store = StateStore(SQLiteBackend(str(tmp_path / "state.db")))
    await store.set("job:plan", "three steps", job_id="j1")
    w = World("ok")
    w.env.state = LocalState(store, job_id="j1")
    await w.agent(instructions="Follow the plan: {{ state.plan }}.",
                  state_keys=["job:plan"]).run("go")
    assert w.provider.requests[0].messages[0].text == "Follow the plan: three steps."
    with pytest.raises(ValueError, match="starts with its scope"):
        AgentSpec(name="a", state_keys=["plan"])
    await store.close()


async def test_tools_given_to_one_run_are_offered_and_called_in_that_run_only() -> None:
    """How a host gives a manager its delegate_to_ tools: for one run, beside the spec's."""
    @tool
    def extra(text: str) -> str:
        """A run's own tool."""
        return text.upper()

    w = World([call("extra", text="hi")], "done", "again")
    agent = w.agent(tools=[add])
    result = await agent.runner.run("x", tools=[extra])
    assert result.ok and w.tool_results(1)[0].content == "HI"
    assert [t.name for t in w.provider.requests[0].tools] == ["add", "extra"]
    await agent.runner.run("y")
    assert [t.name for t in w.provider.requests[-1].tools] == ["add"]
    with pytest.raises(ValueError, match="already has tool"):
        await agent.runner.run("z", tools=[add])
    assert agent.runner.status == AgentStatus.ready
