"""JobSpec: loading, every mistake listed by field path, inputs, host packing, expressions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmspell.jobs import JobSpec, JobSpecError
from llmspell.jobs.build import even_parts, hook_specs, plan_hosts, travelling_agents
from llmspell.jobs.demo import demo_spec
from llmspell.jobs.expressions import Expression, ExpressionError

TEN_MISTAKES = """
name: report job
agents:
  - {name: lead, model: openai:lead, tools: [web_fech]}
  - {name: researcher, template: reserch}
  - {name: writer, handoffs: [ghost], max_turns: 0}
  - {name: writer}
pools:
  - {name: web, tools: [web_fetch], min_replicas: 3, max_replicas: 2}
hooks:
  - {name: budgett}
pattern:
  kind: sequential
  steps:
    - agent: writter
      input: "{{ previous "
    - pattern: {kind: dance}
colour: blue
"""


def problems(text: str) -> dict[str, str]:
    with pytest.raises(JobSpecError) as info:
        JobSpec.from_yaml(text)
    return {e["path"]: e["message"] for e in info.value.errors}


def test_a_spec_with_ten_mistakes_lists_all_ten_by_field_path() -> None:
    found = problems(TEN_MISTAKES)
    assert found == {
        "name": "use a letter, then up to 63 letters, digits, _, . or -",
        "agents[0].tools[0]": "unknown tool 'web_fech' (did you mean 'web_fetch'?)",
        "agents[1].template": "unknown agent template 'reserch' (did you mean 'research'?)",
        "agents[2].handoffs[0]": "unknown agent 'ghost'; known: lead, researcher, writer",
        "agents[2].max_turns": "Input should be greater than or equal to 1",
        "agents[3].name": "agent 'writer' is declared twice",
        "pools[0].max_replicas": "max_replicas (2) is below min_replicas (3)",
        "hooks[0].name": found["hooks[0].name"],
        "pattern.steps[0].agent": "unknown agent 'writter' (did you mean 'writer'?)",
        "pattern.steps[0].input": found["pattern.steps[0].input"],
        "pattern.steps[1].pattern": found["pattern.steps[1].pattern"],
        "colour": "unknown field",
    }
    assert found["hooks[0].name"].startswith("unknown hook 'budgett'")
    assert found["pattern.steps[0].input"].startswith("template error at line 1")
    assert found["pattern.steps[1].pattern"].startswith("unknown pattern kind")
    with pytest.raises(JobSpecError) as info:
        JobSpec.from_yaml(TEN_MISTAKES, source="job.yaml")
    assert str(info.value).startswith("job.yaml: 12 errors\n  name: ")


def test_references_everywhere_in_a_nested_pattern_are_checked() -> None:
    found = problems("""
name: nested
agents: [{name: a}, {name: b}]
pattern:
  kind: parallel
  branches:
    left: {pattern: {kind: consensus, agents: [a, c], strategy: judge, judge: d}}
    right: {pattern: {kind: loop, body: {tool: calculatr}, until: "output ==="}}
    down: {pattern: {kind: conditional, router: e, branches: {x: a}}}
    up: {pattern: {kind: delegation, manager: f, specialists: [b]}}
""")
    assert set(found) == {"pattern.branches.left.pattern.agents[1]",
                          "pattern.branches.left.pattern.judge",
                          "pattern.branches.right.pattern.body.tool",
                          "pattern.branches.right.pattern.until",
                          "pattern.branches.down.pattern.router",
                          "pattern.branches.up.pattern.manager"}
    assert "did you mean 'calculator'" in found["pattern.branches.right.pattern.body.tool"]


def test_shape_rules_of_patterns_name_their_field() -> None:
    found = problems("""
name: shapes
agents: [{name: a}, {name: b}]
pattern:
  kind: sequential
  steps:
    - {agent: a, tool: calculator}
    - pattern: {kind: conditional, branches: {x: a}, when: [{if: "true", then: y}]}
    - pattern: {kind: consensus, agents: [a, b], strategy: judge}
    - pattern: {kind: map_reduce, mapper: a, prefetch: -1}
""")
    assert found["pattern.steps[0]"].startswith("a step names exactly one of agent, tool or "
                                                "pattern (got agent, tool)")
    assert "'y' is not a branch" in found["pattern.steps[1].pattern"]
    assert "judge strategy needs a `judge`" in found["pattern.steps[2].pattern"]
    assert found["pattern.steps[3].pattern.prefetch"] == \
        "Input should be greater than or equal to 0"


def test_a_job_of_several_agents_needs_a_pattern_and_bad_files_say_where() -> None:
    assert "give a pattern" in problems("name: x\nagents: [{name: a}, {name: b}]\n")["pattern"]
    assert problems("name: [unclosed\n") == {
        "line 2, column 1": problems("name: [unclosed\n")["line 2, column 1"]}
    with pytest.raises(JobSpecError, match="cannot read"):
        JobSpec.from_file("/nonexistent/job.yaml")
    assert problems("- just\n- a list\n")["(top level)"].startswith("a job spec is a mapping")


def test_keys_never_live_in_a_spec() -> None:
    found = problems("name: k\nagents: [{name: a}]\nmodels: {providers: "
                     "{openai: {api_key: sk-secret}}}\n")
    assert found == {"models.providers.openai.api_key": "unknown field"}


def test_inputs_are_typed_defaulted_and_all_problems_reported() -> None:
    spec = JobSpec.from_yaml("""
name: typed
agents: [{name: a}]
inputs:
  topic: {required: true}
  rounds: {type: integer, default: 2}
  strict: {type: boolean, default: false}
  tags: {type: list, default: []}
""")
    assert spec.resolve_inputs({"topic": "Ray", "rounds": "5", "tags": '["a"]'}) == {
        "topic": "Ray", "rounds": 5, "strict": False, "tags": ["a"]}
    with pytest.raises(JobSpecError) as info:
        spec.resolve_inputs({"rounds": "five", "strict": "maybe", "colour": "red"})
    assert {e["path"] for e in info.value.errors} == {
        "inputs.colour", "inputs.topic", "inputs.rounds", "inputs.strict"}


def test_agents_are_packed_onto_hosts_and_swarm_peers_get_handoffs() -> None:
    spec = JobSpec.from_yaml("""
name: packed
agents: [{name: a1}, {name: a2}, {name: a3}, {name: a4}, {name: a5}]
hosts: {agents_per_host: 2, groups: [{name: pair, agents: [a5, a1]}]}
pattern: {kind: swarm, agents: [a2, a3]}
budgets: {max_tokens: 1000}
""")
    plan = plan_hosts(spec)
    assert {h: [a.name for a in agents] for h, agents in plan.items()} == {
        "pair": ["a5", "a1"], "host-0": ["a2", "a3"], "host-1": ["a4"]}
    assert [a.handoffs for a in plan["host-0"]] == [["a3"], ["a2"]]
    assert hook_specs(spec) == [{"name": "budget",
                                 "options": {"max_tokens": 1000, "ledger": "state"}}]


@pytest.mark.parametrize(("count", "most", "sizes"), [
    (200, 64, [50, 50, 50, 50]), (7, 3, [3, 2, 2]), (64, 64, [64]), (65, 64, [33, 32]),
    (1, 5, [1]), (0, 4, [])])
def test_agents_are_spread_evenly_over_as_few_hosts_as_will_do(
        count: int, most: int, sizes: list[int]) -> None:
    parts = even_parts(list(range(count)), most)
    assert [len(p) for p in parts] == sizes
    assert [i for p in parts for i in p] == list(range(count))  # in order, none lost


def test_expressions_read_state_and_refuse_python() -> None:
    assert Expression("state.plan == 'go' and iteration < 3").truth(
        {"state": {"plan": "go"}, "iteration": 2})
    assert Expression("state.unset is None").truth({"state": {}})
    with pytest.raises(ExpressionError, match="__import__"):
        Expression("__import__('os').system('true')").value({})
    with pytest.raises(ExpressionError, match="until"):
        Expression("output ===", where="until")


def test_the_demo_and_a_round_trip_through_yaml(tmp_path: Path) -> None:
    spec = demo_spec(local_url="http://127.0.0.1:9/v1")
    assert spec.models.providers["local"].base_url == "http://127.0.0.1:9/v1"
    path = tmp_path / "demo.yaml"
    path.write_text(spec.to_yaml())
    again = JobSpec.from_file(path)
    assert again.model_dump() == spec.model_dump() and again.base_dir == str(tmp_path)
    real = demo_spec(model="openai:gpt-4o-mini")
    assert {a.model for a in real.agents} == {"openai:gpt-4o-mini"}


def test_a_tool_runs_in_one_pool_and_an_agent_lives_on_one_host() -> None:
    found = problems("""
name: groups
agents: [{name: a}]
pools:
  - {name: p1, tools: [calculator]}
  - {name: p2, tools: [calculator, calculatr]}
hosts: {groups: [{name: h1, agents: [a]}, {name: h2, agents: [a, b]}]}
""")
    assert found == {
        "pools[1].tools[0]": "tool 'calculator' is already in pool 'p1'; a tool runs in one pool",
        "pools[1].tools[1]": "unknown tool 'calculatr' (did you mean 'calculator'?)",
        "hosts.groups[1].agents[0]": "agent 'a' is already on host 'h1'",
        "hosts.groups[1].agents[1]": "unknown agent 'b'; known: a"}


def test_where_the_pattern_runs_is_auto_or_driver() -> None:
    assert problems("name: x\nagents: [{name: a}]\nhosts: {run_pattern: elsewhere}\n") == {
        "hosts.run_pattern": "Input should be 'auto' or 'driver'"}


@pytest.mark.parametrize(("pattern", "travels"), [
    (None, {"a"}),  # one agent: its one-step workflow
    ({"kind": "conditional", "router": "a", "branches": {"x": "b", "y": {"pattern": {
        "kind": "consensus", "agents": ["a", "b"], "strategy": "judge", "judge": "c"}}}},
     {"a", "b", "c"}),
    ({"kind": "sequential", "steps": ["a", {"pattern": {"kind": "worker_swarm",
                                                         "workers": ["b", "c"]}}]},
     {"a", "b", "c"}),
    ({"kind": "sequential", "steps": ["a", {"tool": "calculator"}]}, None),  # a tool step
    ({"kind": "parallel", "branches": ["a", {"pattern": {
        "kind": "delegation", "manager": "a", "specialists": ["b"]}}]}, None),  # its manager
    ({"kind": "sequential", "steps": ["a", "far"]}, None),  # a remote agent
    ({"kind": "sequential", "steps": ["a", {"pattern": {  # branches may fail: they go on
        "kind": "map_reduce", "mapper": ["b", "c"], "allow_partial": True}}]}, None),
])
def test_a_pattern_travels_to_a_host_only_with_every_step_an_agent_of_the_job(
        pattern: dict[str, Any] | None, travels: set[str] | None) -> None:
    data: dict[str, Any] = {
        "name": "placed", "agents": [{"name": n} for n in ("a", "b", "c")][:3 if pattern else 1],
        "remote_agents": [{"name": "far", "url": "http://127.0.0.1:9/a2a"}]}
    if pattern is not None:
        data["pattern"] = pattern
    found = travelling_agents(JobSpec.from_data(data))
    assert (None if found is None else set(found)) == travels
