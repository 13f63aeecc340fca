"""Consensus: majority, weighted, judge, ranked choice and debate, with votes and dissent."""

from __future__ import annotations

import re

import pytest

from llmspell.agents import RunStatus, SpecError
from llmspell.llm.types import LLMRequest
from llmspell.supervisors.consensus import (
    Consensus,
    ConsensusResult,
    instant_runoff,
    normalize,
    parse_ranking,
    tally,
)
from tests.supervisors.pattern_helpers import Team, last_user

FIVE = {"a": "Paris", "b": "paris.", "c": "  PARIS ", "d": "Paris!", "e": "Lyon"}


def voters(team: Team, answers: dict[str, str]) -> list[object]:
    return [team.agent(name, answer) for name, answer in answers.items()]


async def test_majority_of_five_with_one_dissenting() -> None:
    team = Team()
    result = await Consensus("capital", voters(team, FIVE)).run("Capital of France?",
                                                                 ctx=team.ctx())
    assert isinstance(result, ConsensusResult) and result.ok
    assert result.decision == result.output == "Paris"  # the first original spelling
    assert result.agreement == 0.8 and result.dissent == ["e"] and result.tie == []
    assert result.votes == FIVE and len(result.children) == 5
    votes = team.payloads("consensus.vote")
    assert sorted(v["agent"] for v in votes) == ["a", "b", "c", "d", "e"]  # one each
    assert {v["key"] for v in votes} == {"paris", "lyon"}
    decided = team.payloads("consensus.decided")
    assert decided[0]["agreement"] == 0.8 and decided[0]["dissent"] == ["e"]
    # Every voter was asked the same task, in its own branch.
    assert all(last_user(team.requests(n)[0]) == "Capital of France?" for n in FIVE)
    branches = {p["branch"] for p in team.payloads("agent.run.finished")}
    assert branches == {f"capital/{n}" for n in FIVE}


async def test_weighted_votes_can_overturn_the_head_count() -> None:
    team = Team()
    vote = Consensus("capital", voters(team, FIVE), "weighted", weights={"e": 5.0})
    result = await vote.run("Capital?", ctx=team.ctx())
    assert isinstance(result, ConsensusResult)
    assert result.decision == "Lyon" and result.agreement == round(5 / 9, 6)
    assert result.dissent == ["a", "b", "c", "d"]


async def test_a_tie_is_resolved_by_agent_order_and_reported() -> None:
    team = Team()
    answers = {"a": "red", "b": "Blue", "c": "blue", "d": "RED"}
    result = await Consensus("colour", voters(team, answers)).run("Colour?", ctx=team.ctx())
    assert isinstance(result, ConsensusResult) and result.ok
    assert result.decision == "red" and result.tie == ["red", "blue"]
    assert result.agreement == 0.5 and result.dissent == ["b", "c"]
    assert result.reason == ("tie between 'red', 'blue' (2 each): resolved by the order of the "
                             "agents, for 'red'")


def test_answers_are_normalised_or_counted_by_a_custom_normaliser() -> None:
    assert normalize("  The  ANSWER: 42!! ") == "the answer 42"
    digits = tally({"a": "42", "b": "It is 42.", "c": "41"},
                   normalizer=lambda s: "".join(re.findall(r"\d", s)))
    assert (digits.winner, digits.decision, digits.dissent) == ("42", "42", ["c"])


async def test_a_judge_sees_every_answer_and_decides() -> None:
    team = Team()
    prompts: list[str] = []

    def judge_reads(request: LLMRequest) -> str:
        prompts.append(last_user(request))
        return "Paris"

    judge = team.agent("judge", judge_reads)
    answers = {"a": "Paris", "b": "Paris, France", "c": "Lyon"}
    result = await Consensus("capital", voters(team, answers), "judge", judge=judge).run(
        "Capital of France?", ctx=team.ctx())
    assert isinstance(result, ConsensusResult) and result.ok
    assert "[a] Paris\n[b] Paris, France\n[c] Lyon" in prompts[0]
    assert result.decision == "Paris" and result.dissent == ["b", "c"]
    assert result.agreement == round(1 / 3, 6) and "judge" not in result.votes


async def test_ranked_choice_runs_an_instant_runoff() -> None:
    team = Team()
    array = {"type": "array", "items": {"type": "string"}}
    agents = [
        team.agent("a", '["Rust", "Python", "Go"]'),
        team.agent("b", "1. rust\n2. go\n3. python"),
        team.agent("c", '["python", "rust", "go"]', output_schema=array),
        team.agent("d", "Go > Python > Rust"),
        team.agent("e", '```json\n{"ranking": ["Python", "Go", "Rust"]}\n```'),
    ]
    vote = Consensus("lang", agents, "ranked_choice", candidates=["Python", "Rust", "Go"])
    result = await vote.run("Best language for the job?", ctx=team.ctx())
    assert isinstance(result, ConsensusResult) and result.ok
    assert "Reply with only a JSON array" in last_user(team.requests("a")[0])
    assert result.votes["b"] == ["Rust", "Go", "Python"]  # shown as the candidates are named
    assert result.votes["c"] == ["Python", "Rust", "Go"]  # structured output, already a list
    # First preferences: rust 2, python 2, go 1 -> go out, d's ballot moves to python.
    assert result.runoff == [{"python": 2.0, "rust": 2.0, "go": 1.0},
                             {"python": 3.0, "rust": 2.0}]
    assert result.decision == "Python" and result.agreement == 0.6
    assert result.dissent == ["a", "b", "d"] and "eliminated go" in result.reason


def test_instant_runoff_and_rankings_by_hand() -> None:
    count = instant_runoff({"x": ["a", "b"], "y": ["b", "a"]}, order=["a", "b"])
    assert count.winner == "a" and count.eliminated == ["b"]  # equal: the order decides
    assert instant_runoff({"x": [], "y": []}).winner is None
    assert parse_ranking("- one\n- two") == ["one", "two"]
    assert parse_ranking({"ranking": ["x", 2]}) == ["x", "2"]


async def test_a_debate_converges_in_two_rounds() -> None:
    team = Team()

    def stubborn_then_convinced(request: LLMRequest) -> str:
        prompt = last_user(request)
        if "The other agents answered" in prompt:
            assert "Your previous answer: Lyon" in prompt and "- a: Paris" in prompt
            return "Paris"
        return "Lyon"

    agents = [team.agent("a", "Paris", "Paris", "Paris"),
              team.agent("b", "Paris.", "paris", "paris"),
              team.agent("c", *[stubborn_then_convinced] * 3)]
    debate = Consensus("capital", agents, "debate", rounds=3, threshold=1.0)
    result = await debate.run("Capital of France?", ctx=team.ctx())
    assert isinstance(result, ConsensusResult) and result.ok
    assert [r.round for r in result.rounds] == [1, 2]
    assert [r.agreement for r in result.rounds] == [round(2 / 3, 6), 1.0]
    assert result.rounds[0].votes["c"] == "Lyon" and result.rounds[1].votes["c"] == "Paris"
    assert result.decision == "Paris" and result.agreement == 1.0 and result.dissent == []
    assert all(len(team.requests(n)) == 2 for n in "abc")  # no third round
    rounds = team.payloads("consensus.round")
    assert [(r["round"], r["agreement"]) for r in rounds] == [(1, round(2 / 3, 6)), (2, 1.0)]
    per_round = {(v["round"], v["agent"]) for v in team.payloads("consensus.vote")}
    assert per_round == {(r, n) for r in (1, 2) for n in "abc"}
    assert len(result.children) == 6


async def test_failed_voters_abstain_and_a_quorum_is_enforced() -> None:
    def fails(task: str) -> str:
        raise RuntimeError("model down")

    def yes(task: str) -> str:
        return "yes"

    def yes_too(task: str) -> str:
        return "Yes"

    ok = await Consensus("q", [yes, yes_too, fails]).run("?")
    assert isinstance(ok, ConsensusResult) and ok.ok and ok.agreement == 1.0
    assert ok.abstained == {"fails": "failed: RuntimeError: model down"}
    short = await Consensus("q", [yes, fails], quorum=2).run("?")
    assert short.status == RunStatus.failed
    assert short.reason.startswith("1 vote(s), fewer than the quorum of 2; abstained: fails")


def test_votes_must_come_from_distinct_agents() -> None:
    team = Team()
    a = team.agent("a")
    with pytest.raises(SpecError, match="distinct agents, and 'a' is listed twice"):
        Consensus("c", [a, a])
    with pytest.raises(SpecError, match="needs a judge"):
        Consensus("c", [a], "judge")
    with pytest.raises(SpecError, match="weights name members"):
        Consensus("c", [a], "weighted", weights={"z": 1})
