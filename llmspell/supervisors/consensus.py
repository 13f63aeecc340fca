"""Consensus: N agents answer the same task at once; a strategy turns their answers into one.

    vote = Consensus("capital", [a, b, c, d, e], strategy="majority")
    result = await vote.run("What is the capital of France?")
    result.decision, result.agreement, result.dissent  # "Paris", 0.8, ["e"]

Strategies:

- majority: the most common answer, after normalising (case, whitespace and punctuation, or
  a `normalize` function of your own); a tie goes to the answer given first in the order of
  the agents, and is reported (`tie`, and the reason says how it was resolved).
- weighted: the same count with a weight per agent (`weights`, 1.0 when not named).
- judge: a `judge` agent sees every answer and gives the decision (it picks one or merges).
- ranked_choice: each agent ranks the options (a JSON array, best first: structured output);
  an instant-runoff count eliminates the weakest option until one has a majority.
- debate: up to `rounds` rounds; from the second on, each agent sees the others' answers and
  may revise its own; the debate stops as soon as agreement reaches `threshold`.

The result carries the decision, the agreement (the winning share of the vote, 0..1), the
votes (agent -> answer, each agent once: members must have distinct names), the dissent
(agents whose answer lost), the abstentions (agents that gave no answer, with why) and the
rounds. Each vote, round and the decision is an event.
"""

from __future__ import annotations

import asyncio
import json
import re
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from llmspell.agents.result import RunResult, RunStatus
from llmspell.agents.spec import SpecError
from llmspell.supervisors.base import (
    Pattern,
    Step,
    as_step,
    env_context,
    output_text,
    run_watched,
)
from llmspell.tools.context import ToolContext

__all__ = ["Consensus", "ConsensusResult", "ConsensusRound", "Tally", "instant_runoff",
           "normalize", "tally"]

Strategy = Literal["majority", "weighted", "judge", "ranked_choice", "debate"]
STRATEGIES: tuple[str, ...] = ("majority", "weighted", "judge", "ranked_choice", "debate")
Normalize = Callable[[str], str]

RANKING_INSTRUCTIONS = ("Rank the options from best to worst. Reply with only a JSON array of "
                        "strings, best first.")


def normalize(text: str) -> str:
    """Answers that differ only in case, whitespace or punctuation count as one."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.sub(r"[^\w\s]", " ", folded).split())


# -- counting (pure functions) ----------------------------------------------------------------

class Tally(BaseModel):
    """A weighted count of normalised answers."""

    winner: str  # the winning normalised answer
    decision: Any  # the first original answer that normalises to it
    agreement: float  # the winner's share of the weight, 0..1
    totals: dict[str, float]  # normalised answer -> weight, in order of first appearance
    dissent: list[str]
    tie: list[str] = Field(default_factory=list)  # the tied answers, when there was a tie


def tally(votes: dict[str, Any], *, weights: dict[str, float] | None = None,
          normalizer: Normalize = normalize) -> Tally:
    """Count `votes` (agent -> answer, in agent order). Ties go to the answer given first."""
    if not votes:
        raise ValueError("no votes to count")
    keys = {agent: normalizer(output_text(answer)) for agent, answer in votes.items()}
    totals: dict[str, float] = {}
    for agent, key in keys.items():
        totals[key] = totals.get(key, 0.0) + (weights or {}).get(agent, 1.0)
    best = max(totals.values())
    tied = [k for k, v in totals.items() if v == best]
    winner = tied[0]
    whole = sum(totals.values())
    first = next(agent for agent, key in keys.items() if key == winner)
    return Tally(winner=winner, decision=votes[first],
                 agreement=round(best / whole, 6) if whole else 0.0, totals=totals,
                 dissent=[a for a, k in keys.items() if k != winner],
                 tie=tied if len(tied) > 1 else [])


class Runoff(BaseModel):
    winner: str | None
    rounds: list[dict[str, float]]  # each count, option -> weight of first preferences
    eliminated: list[str]
    agreement: float


def instant_runoff(ballots: dict[str, list[str]], *, weights: dict[str, float] | None = None,
                   order: Sequence[str] = ()) -> Runoff:
    """Instant-runoff over rankings (agent -> options, best first). Each count gives every
    ballot to its best option still standing; an option with more than half wins, else the
    weakest is eliminated (of equally weak ones, the one latest in `order`, then in the
    ballots). An exhausted ballot (no option left) counts no more."""
    standing = list(dict.fromkeys([*order, *(o for b in ballots.values() for o in b)]))
    rounds: list[dict[str, float]] = []
    eliminated: list[str] = []
    while standing:
        counts = dict.fromkeys(standing, 0.0)
        for agent, ranking in ballots.items():
            top = next((o for o in ranking if o in counts), None)
            if top is not None:
                counts[top] += (weights or {}).get(agent, 1.0)
        rounds.append(counts)
        live = sum(counts.values())
        if live == 0:
            return Runoff(winner=None, rounds=rounds, eliminated=eliminated, agreement=0.0)
        leader = max(standing, key=lambda o: counts[o])  # the first of equals: order wins ties
        if counts[leader] * 2 > live or len(standing) == 1:
            return Runoff(winner=leader, rounds=rounds, eliminated=eliminated,
                          agreement=round(counts[leader] / live, 6))
        weakest = min(counts.values())
        loser = [o for o in standing if counts[o] == weakest][-1]
        standing.remove(loser)
        eliminated.append(loser)
    return Runoff(winner=None, rounds=rounds, eliminated=eliminated, agreement=0.0)


def parse_ranking(answer: Any) -> list[str]:
    """A ranking from structured output (a list, or {"ranking": [...]}) or from text (a JSON
    array, or one option per line or comma, numbering and bullets dropped)."""
    value = answer
    if isinstance(value, str):
        text = value.strip().removeprefix("```json").removeprefix("```").removesuffix("```")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            parts = re.split(r"[\n,>]+", text)
            return [p for p in (re.sub(r"^\s*(\d+[.)]|[-*])\s*", "", x).strip() for x in parts)
                    if p]
    if isinstance(value, dict):
        value = value.get("ranking") or value.get("options") or []
    if isinstance(value, list):
        return [output_text(v).strip() for v in value if output_text(v).strip()]
    return []


# -- results ----------------------------------------------------------------------------------

class ConsensusRound(BaseModel):
    round: int
    votes: dict[str, Any]
    agreement: float
    leader: Any = None  # the answer ahead after this round


class ConsensusResult(RunResult):
    strategy: str = "majority"
    decision: Any = None
    agreement: float = 0.0
    votes: dict[str, Any] = Field(default_factory=dict)  # agent -> its (last) answer
    dissent: list[str] = Field(default_factory=list)
    abstained: dict[str, str] = Field(default_factory=dict)  # agent -> why it gave no answer
    tie: list[str] = Field(default_factory=list)
    rounds: list[ConsensusRound] = Field(default_factory=list)
    runoff: list[dict[str, float]] = Field(default_factory=list)  # ranked choice counts


# -- the pattern ------------------------------------------------------------------------------

class Consensus(Pattern):
    kind = "consensus"

    def __init__(self, name: str, agents: Sequence[Any], strategy: Strategy = "majority", *,
                 weights: dict[str, float] | None = None, normalizer: Normalize | None = None,
                 judge: Any = None, rounds: int = 3, threshold: float = 1.0,
                 candidates: Sequence[str] = (), quorum: int = 1,
                 description: str = "") -> None:
        super().__init__(name, description=description)
        self.members = self._members(agents)
        if strategy not in STRATEGIES:
            raise SpecError(f"consensus {name!r}: unknown strategy {strategy!r}; use one of "
                            f"{', '.join(STRATEGIES)}")
        self.strategy = strategy
        self.weights = self._weights(weights, strategy)
        self.normalizer = normalizer or normalize
        self.judge = as_step(judge) if judge is not None else None
        if strategy == "judge" and self.judge is None:
            raise SpecError(f"consensus {name!r}: the judge strategy needs a judge agent")
        if rounds < 1 or not 0 < threshold <= 1 or quorum < 1:
            raise SpecError(f"consensus {name!r}: rounds >= 1, 0 < threshold <= 1 and "
                            "quorum >= 1")
        self.rounds = rounds
        self.threshold = threshold
        self.candidates = list(candidates)
        self.quorum = quorum

    def _members(self, agents: Sequence[Any]) -> dict[str, Step]:
        members: dict[str, Step] = {}
        for target in agents:
            step = as_step(target)
            if step.name in members:  # one agent, one vote
                raise SpecError(f"consensus {self.name!r}: votes must come from distinct "
                                f"agents, and {step.name!r} is listed twice")
            members[step.name] = step
        if not members:
            raise SpecError(f"consensus {self.name!r} has no agents")
        return members

    def _weights(self, weights: dict[str, float] | None, strategy: str) -> dict[str, float]:
        if strategy == "weighted" and not weights:
            raise SpecError(f"consensus {self.name!r}: the weighted strategy needs weights")
        for agent, weight in (weights or {}).items():
            if agent not in self.members or weight < 0:
                raise SpecError(f"consensus {self.name!r}: weight {agent}={weight}: weights "
                                f"name members ({', '.join(self.members)}) and are >= 0")
        return dict(weights or {})

    # -- the run ------------------------------------------------------------------------------

    async def run(self, input: str, *, ctx: ToolContext | None = None,
                  inputs: dict[str, Any] | None = None) -> RunResult:
        ctx = ctx or env_context([*self.members.values(), self.judge])
        return await super().run(input, ctx=ctx, inputs=inputs)

    async def _run(self, input: str, ctx: ToolContext, inputs: dict[str, Any]) -> RunResult:
        if self.strategy == "debate":
            return await self._debate(input, ctx)
        prompt = input
        if self.strategy == "ranked_choice":
            prompt = self._ballot(input)
        results = await self._ask(dict.fromkeys(self.members, prompt), ctx, 1)
        votes, abstained = _split(results)
        out = self._empty(results, votes, abstained)
        if len(votes) < self.quorum:
            return self._no_quorum(out)
        if self.strategy == "judge":
            return await self._judged(input, out, ctx)
        if self.strategy == "ranked_choice":
            return self._ranked(out, ctx)
        return self._counted(out, ctx, 1)

    async def _ask(self, prompts: dict[str, str], ctx: ToolContext,
                   round: int) -> dict[str, RunResult]:
        """Every member answers its prompt at once; each answer is a vote event."""
        async def one(name: str) -> RunResult:
            result = await run_watched(self.members[name], prompts[name], ctx)
            ctx.publish("consensus.vote", {
                "consensus": self.name, "round": round, "agent": name,
                "status": str(result.status), "answer": output_text(result.output)[:1000],
                "key": self.normalizer(output_text(result.output)) if result.ok else None})
            return result

        async with asyncio.TaskGroup() as group:
            tasks = {name: group.create_task(one(name)) for name in prompts}
        ctx.cancel.raise_if_cancelled()
        return {name: task.result() for name, task in tasks.items()}

    def _counted(self, out: ConsensusResult, ctx: ToolContext, round: int) -> ConsensusResult:
        count = tally(out.votes, weights=self.weights, normalizer=self.normalizer)
        out.decision, out.agreement, out.dissent, out.tie = (count.decision, count.agreement,
                                                             count.dissent, count.tie)
        if not out.rounds:
            out.rounds = [ConsensusRound(round=round, votes=out.votes, agreement=count.agreement,
                                         leader=count.decision)]
        if count.tie:
            out.reason = (f"tie between {', '.join(repr(t) for t in count.tie)} "
                          f"({count.totals[count.winner]:g} each): resolved by the order of "
                          f"the agents, for {count.winner!r}")
        return self._decided(out, ctx)

    async def _judged(self, input: str, out: ConsensusResult,
                      ctx: ToolContext) -> ConsensusResult:
        assert self.judge is not None
        answers = "\n".join(f"[{agent}] {output_text(answer)}"
                            for agent, answer in out.votes.items())
        prompt = (f"Task: {input}\n\n{len(out.votes)} agents answered:\n{answers}\n\n"
                  "Decide the final answer: pick the best one, or merge them. Reply with the "
                  "final answer only.")
        verdict = await run_watched(self.judge, prompt, ctx)
        out.children.append(verdict)
        out.usage, out.cost_usd = out.usage + verdict.usage, out.cost_usd + verdict.cost_usd
        if not verdict.ok:
            out.status = verdict.status
            out.reason = f"the judge {self.judge.name!r} ended with status {verdict.status}: " \
                         f"{verdict.reason}"
            return out
        decided = self.normalizer(output_text(verdict.output))
        keys = {a: self.normalizer(output_text(v)) for a, v in out.votes.items()}
        agree = [a for a, k in keys.items() if k == decided]
        out.decision = verdict.output
        out.agreement = round(len(agree) / len(keys), 6)
        out.dissent = [a for a in keys if a not in agree]
        out.rounds = [ConsensusRound(round=1, votes=out.votes, agreement=out.agreement,
                                     leader=verdict.output)]
        return self._decided(out, ctx)

    def _ranked(self, out: ConsensusResult, ctx: ToolContext) -> ConsensusResult:
        shown: dict[str, str] = {self.normalizer(c): c for c in self.candidates}
        ballots: dict[str, list[str]] = {}
        for agent, answer in out.votes.items():
            ranking = []
            for option in parse_ranking(answer):
                key = self.normalizer(option)
                if self.candidates and key not in shown:
                    continue  # an option nobody offered is not on the ballot
                shown.setdefault(key, option)
                ranking.append(key)
            ballots[agent] = list(dict.fromkeys(ranking))
            out.votes[agent] = [shown[k] for k in ballots[agent]]
        count = instant_runoff(ballots, weights=self.weights,
                               order=[self.normalizer(c) for c in self.candidates])
        out.runoff = count.rounds
        if count.winner is None:
            out.status, out.reason = RunStatus.failed, "no ballot ranked any option"
            return out
        out.decision, out.agreement = shown[count.winner], count.agreement
        out.dissent = [a for a, b in ballots.items() if not b or b[0] != count.winner]
        out.rounds = [ConsensusRound(round=1, votes=out.votes, agreement=count.agreement,
                                     leader=out.decision)]
        if count.eliminated:
            out.reason = f"instant runoff: eliminated {', '.join(count.eliminated)}"
        return self._decided(out, ctx)

    async def _debate(self, input: str, ctx: ToolContext) -> ConsensusResult:
        results = await self._ask(dict.fromkeys(self.members, input), ctx, 1)
        votes, abstained = _split(results)
        out = self._empty(results, votes, abstained)
        for round in range(1, self.rounds + 1):
            if round > 1:
                prompts = {name: self._rebuttal(input, name, out.votes) for name in self.members}
                answers = await self._ask(prompts, ctx, round)
                self._absorb(out, answers)
            if len(out.votes) < self.quorum:
                return self._no_quorum(out)
            count = tally(out.votes, weights=self.weights, normalizer=self.normalizer)
            out.rounds.append(ConsensusRound(round=round, votes=dict(out.votes),
                                             agreement=count.agreement, leader=count.decision))
            ctx.publish("consensus.round", {"consensus": self.name, "round": round,
                                            "agreement": count.agreement,
                                            "leader": output_text(count.decision)[:500],
                                            "votes": _texts(out.votes)})
            if count.agreement >= self.threshold:
                break
        return self._counted(out, ctx, len(out.rounds))

    def _rebuttal(self, input: str, name: str, votes: dict[str, Any]) -> str:
        own = output_text(votes[name]) if name in votes else "(none)"
        others = "\n".join(f"- {agent}: {output_text(answer)}"
                           for agent, answer in votes.items() if agent != name)
        return (f"Task: {input}\n\nYour previous answer: {own}\n\nThe other agents answered:\n"
                f"{others}\n\nConsider their answers and reply with your final answer (revised "
                "or not) only.")

    def _absorb(self, out: ConsensusResult, results: dict[str, RunResult]) -> None:
        """A new round's answers replace the old; an agent that gives none keeps its last."""
        for name, result in results.items():
            out.children.append(result)
            out.usage, out.cost_usd = out.usage + result.usage, out.cost_usd + result.cost_usd
            if result.ok:
                out.votes[name] = result.output
                out.abstained.pop(name, None)
            elif name not in out.votes:
                out.abstained[name] = _why(result)

    def _ballot(self, input: str) -> str:
        options = f"\nOptions: {', '.join(self.candidates)}" if self.candidates else ""
        return f"{input}{options}\n\n{RANKING_INSTRUCTIONS}"

    # -- results ------------------------------------------------------------------------------

    def _empty(self, results: dict[str, RunResult], votes: dict[str, Any],
               abstained: dict[str, str]) -> ConsensusResult:
        base = self.result(RunStatus.completed, children=list(results.values()))
        return ConsensusResult(**dict(base), strategy=self.strategy, votes=votes,
                               abstained=abstained)

    def _no_quorum(self, out: ConsensusResult) -> ConsensusResult:
        out.status = RunStatus.failed
        out.reason = (f"{len(out.votes)} vote(s), fewer than the quorum of {self.quorum}"
                      + (f"; abstained: {'; '.join(f'{a}: {w}' for a, w in out.abstained.items())}"
                         if out.abstained else ""))
        return out

    def _decided(self, out: ConsensusResult, ctx: ToolContext) -> ConsensusResult:
        out.output = out.decision
        out.text = output_text(out.decision)
        ctx.publish("consensus.decided", {
            "consensus": self.name, "strategy": self.strategy,
            "decision": output_text(out.decision)[:1000], "agreement": out.agreement,
            "dissent": out.dissent, "abstained": list(out.abstained), "tie": out.tie,
            "rounds": len(out.rounds), "voters": list(out.votes)})
        return out


def _split(results: dict[str, RunResult]) -> tuple[dict[str, Any], dict[str, str]]:
    votes = {name: r.output for name, r in results.items() if r.ok}
    abstained = {name: _why(r) for name, r in results.items() if not r.ok}
    return votes, abstained


def _why(result: RunResult) -> str:
    return f"{result.status}: {result.reason}" if result.reason else str(result.status)


def _texts(votes: dict[str, Any]) -> dict[str, str]:
    return {agent: output_text(answer)[:500] for agent, answer in votes.items()}
