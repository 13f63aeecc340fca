"""The workflows that run one step at a time: Sequential, Loop and Conditional."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from llmspell.agents.result import RunResult, RunStatus
from llmspell.agents.spec import SpecError
from llmspell.supervisors.base import Step
from llmspell.supervisors.checkpoint import Checkpoint
from llmspell.supervisors.workflows._core import (
    Workflow,
    call_flex,
    escalation,
    next_input,
    previous_results,
    status_of,
    to_step,
)
from llmspell.tools.context import ToolContext

__all__ = ["Conditional", "Loop", "Sequential", "match_branch"]


class Sequential(Workflow):
    """Steps one after another: each step's output is the next one's input (a `Bind` step
    renders its input from its template, which also sees `previous`, the previous output).

    Stops at the first step that does not complete, with that step's status and a reason
    naming it. A step that escalates (see `escalate`) ends the sequence early; the sequence
    completes with the escalation as its output, so an enclosing Loop sees it.
    """

    durable_steps = True

    def __init__(self, name: str, steps: Sequence[Any], *, description: str = "",
                 checkpoint: bool = True) -> None:
        super().__init__(name, description=description, checkpoint=checkpoint)
        if not steps:
            raise SpecError(f"sequential {name!r}: give at least one step")
        self.steps: list[Step] = [to_step(s) for s in steps]

    async def _execute(self, input: str, ctx: ToolContext, inputs: dict[str, Any],
                       cp: Checkpoint) -> RunResult:
        children: list[RunResult] = []
        text, previous = input, None
        for i, step in enumerate(self.steps):
            result = await self.call(step, text, ctx, index=i, step_id=f"{i}.{step.name}",
                                     cp=cp, previous=previous, inputs=inputs, history=children)
            children.append(result)
            if not result.ok:
                return self.result(result.status, children=children,
                                   reason=f"step {i} {step.name!r} {status_of(result)}")
            raised = escalation(result)
            if raised is not None:
                return self.result(RunStatus.completed, output=result.output, children=children,
                                   reason=f"step {i} {step.name!r} escalated: "
                                          f"{raised.get('reason', '')}")
            previous, text = result.output, next_input(result)
        return self.result(RunStatus.completed, output=previous, children=children)


Until = Callable[..., Any]


class Loop(Workflow):
    """Run `body` again and again, each iteration's output the next one's input.

    Stops when `until(result, iteration, state)` is true (it may take only its first
    arguments, and may be async), when the body escalates (its output is an escalation: a
    function step raises `Escalate`, any step may return `escalate(reason)` or answer
    `{"escalate": true, ...}`), or after `max_iterations`. The loop completes on `until` and on
    an escalation (whose reason it reports); reaching `max_iterations` is status `max_turns`
    with a reason when an `until` was given (the condition was never met), and a normal
    completion without one. A body that does not complete stops the loop with its status.
    """

    durable_steps = True

    def __init__(self, name: str, body: Any, *, until: Until | None = None,
                 max_iterations: int = 10, description: str = "",
                 checkpoint: bool = True) -> None:
        super().__init__(name, description=description, checkpoint=checkpoint)
        if max_iterations < 1:
            raise SpecError(f"loop {name!r}: max_iterations must be at least 1")
        self.body = to_step(body)
        self.until = until
        self.max_iterations = max_iterations

    async def _execute(self, input: str, ctx: ToolContext, inputs: dict[str, Any],
                       cp: Checkpoint) -> RunResult:
        children: list[RunResult] = []
        text, previous = input, None
        for i in range(1, self.max_iterations + 1):
            result = await self.call(self.body, text, ctx, index=i, step_id=f"i{i}", cp=cp,
                                     previous=previous, inputs=inputs, history=children)
            children.append(result)
            if not result.ok:
                return self.result(result.status, output=previous, children=children,
                                   reason=f"iteration {i}: {self.body.name!r} "
                                          f"{status_of(result)}")
            raised = escalation(result)
            if raised is not None:
                return self.result(RunStatus.completed, output=result.output, children=children,
                                   reason=f"escalated at iteration {i}: "
                                          f"{raised.get('reason', '')}")
            previous, text = result.output, next_input(result)
            stop = await self._done(result, i, ctx)
            if isinstance(stop, RunResult):
                return self.result(stop.status, output=previous, reason=stop.reason,
                                   children=children)
            if stop:
                return self.result(RunStatus.completed, output=previous, children=children)
        if self.until is None:
            return self.result(RunStatus.completed, output=previous, children=children)
        return self.result(RunStatus.max_turns, output=previous, children=children,
                           reason=f"stopped after max_iterations={self.max_iterations} without "
                                  "meeting the until condition")

    async def _done(self, result: RunResult, iteration: int, ctx: ToolContext
                    ) -> bool | RunResult:
        if self.until is None:
            return False
        try:
            return bool(await call_flex(self.until, result, iteration, ctx.state))
        except Exception as exc:  # a broken predicate ends the loop with a reason
            return RunResult(status=RunStatus.failed, agent=self.name,
                             reason=f"until raised at iteration {iteration}: "
                                    f"{type(exc).__name__}: {exc}")


Predicate = Callable[..., Any]

ROUTER_PROMPT = ("Choose the branch that should handle the input below. Reply with only the "
                 "branch name, exactly one of: {names}.\n\nInput:\n{input}")


class Conditional(Workflow):
    """Run one of `branches`, chosen by name.

    By `predicate(input, state, previous)` (it may take only its first arguments, and may be
    async): `state` is the job state (`ctx.state`), `previous` the results of the steps before
    this one in an enclosing workflow. Or by `router`, an agent (or any step) asked to name a
    branch: its answer is normalised (case, quotes, punctuation; a JSON {"branch": ...}; a
    longer answer naming exactly one branch) and matched. A name that is not a branch falls
    back to `default` if given, else fails with the valid names. The choice is an event
    (`workflow.route`, with the chosen `route`, `by` predicate or router, and the `answer`).
    """

    durable_steps = True

    def __init__(self, name: str, branches: Mapping[str, Any], *,
                 predicate: Predicate | None = None, router: Any = None,
                 default: str | None = None, router_prompt: str = ROUTER_PROMPT,
                 description: str = "", checkpoint: bool = True) -> None:
        super().__init__(name, description=description, checkpoint=checkpoint)
        if not branches:
            raise SpecError(f"conditional {name!r}: give at least one branch")
        if (predicate is None) == (router is None):
            raise SpecError(f"conditional {name!r}: give either a predicate or a router")
        if default is not None and default not in branches:
            raise SpecError(f"conditional {name!r}: default {default!r} is not a branch "
                            f"({', '.join(branches)})")
        self.branches: dict[str, Step] = {k: to_step(v) for k, v in branches.items()}
        self.predicate = predicate
        self.router = to_step(router) if router is not None else None
        self.default = default
        self.router_prompt = router_prompt

    async def _execute(self, input: str, ctx: ToolContext, inputs: dict[str, Any],
                       cp: Checkpoint) -> RunResult:
        history = previous_results()
        children: list[RunResult] = []
        choice = await self._choose(input, ctx, history, children, cp)
        if isinstance(choice, RunResult):
            return choice
        step = self.branches[choice]
        result = await self.call(step, input, ctx, index=1, step_id=f"branch.{choice}", cp=cp,
                                 label=choice, inputs=inputs, history=history,
                                 previous=history[-1].output if history else None)
        children.append(result)
        reason = "" if result.ok else f"branch {choice!r} {status_of(result)}"
        return self.result(result.status, output=result.output, reason=reason,
                           children=children)

    async def _choose(self, input: str, ctx: ToolContext, history: tuple[RunResult, ...],
                      children: list[RunResult], cp: Checkpoint) -> str | RunResult:
        """The branch name, or the failed result that says why there is none."""
        if self.router is None:
            assert self.predicate is not None
            try:
                answer = await call_flex(self.predicate, input, ctx.state, list(history))
            except Exception as exc:
                return self.result(RunStatus.failed, reason=f"predicate raised "
                                                            f"{type(exc).__name__}: {exc}")
            by = "predicate"
        else:
            prompt = self.router_prompt.format(names=", ".join(self.branches), input=input)
            routed = await self.call(self.router, prompt, ctx, index=0, step_id="router",
                                     cp=cp, label="router")
            children.append(routed)
            if not routed.ok:
                return self.result(routed.status, children=children,
                                   reason=f"router {self.router.name!r} {status_of(routed)}")
            answer, by = routed.output if routed.output is not None else routed.text, "router"
        return self._matched(answer, by, ctx, children)

    def _matched(self, answer: Any, by: str, ctx: ToolContext, children: list[RunResult]
                 ) -> str | RunResult:
        choice = match_branch(answer, list(self.branches))
        fallback = choice is None and self.default is not None
        if fallback:
            choice = self.default
        ctx.publish("workflow.route", {"workflow": self.name, "route": choice, "by": by,
                                       "answer": str(answer)[:500], "fallback": fallback})
        if choice is None:
            return self.result(RunStatus.failed, children=children,
                               reason=f"{by} chose {str(answer)[:200]!r}, which is not a "
                                      f"branch; valid branches: {', '.join(self.branches)}")
        return choice


def match_branch(answer: Any, names: list[str]) -> str | None:
    """The branch an answer names (see Conditional), or None."""
    if isinstance(answer, str) and answer.strip().startswith("{"):
        with contextlib.suppress(json.JSONDecodeError):
            answer = json.loads(answer)
    if isinstance(answer, dict):
        answer = answer.get("branch", answer.get("route", ""))
    if answer is None:
        return None
    text = str(answer)
    by_lower = {n.lower(): n for n in names}
    bare = text.strip().strip("`'\"*_ \t\n.:!").lower()
    if bare in by_lower:
        return by_lower[bare]
    named = [n for n in names if re.search(rf"(?<![\w-]){re.escape(n.lower())}(?![\w-])",
                                           text.lower())]
    return named[0] if len(named) == 1 else None
