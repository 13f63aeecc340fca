"""Deterministic workflows: Sequential, Parallel, Conditional, Loop, MapReduce, Pipeline.

Each is a `Pattern` (llmspell.supervisors.base): it has a name and `run(input, ctx=...) ->
RunResult` with `children` = the results of its steps, so workflows nest, are steps of other
patterns, and wrap as tools (`as_tool()`). Steps are agents (in this process or in actors),
agent handles, tools, other workflows and patterns, or plain functions; `Bind` gives a step an
input template and an output state key.

    research = Sequential("research", [
        Parallel("gather", {"web": web_agent, "papers": papers_agent}, concurrency=2,
                 merge={"job:findings": "append"}),
        Loop("refine", Bind(editor, input="Improve: {{ previous }}"),
             until=lambda r: "FINAL" in r.text, max_iterations=3),
    ])
    result = await research.run("What limits Ray actor start time?", ctx=ctx)

Every step runs under the workflow_step hooks, publishes workflow.step.started/finished with
the caller's branch, honours the cancel token of its context, and is checkpointed in job state
so that `run(..., resume=True)` does not redo completed steps (llmspell.supervisors.checkpoint).
Concurrent branches write shared state keys through merge rules (llmspell.supervisors.merge).
"""

from llmspell.supervisors.checkpoint import resuming
from llmspell.supervisors.merge import Conflict, MergeError, MergeRules, Reducer, merged_write
from llmspell.supervisors.workflows._core import Escalate, Workflow, escalate, escalation
from llmspell.supervisors.workflows.fanout import MapReduce, Parallel
from llmspell.supervisors.workflows.pipeline import Pipeline, Stage
from llmspell.supervisors.workflows.serial import Conditional, Loop, Sequential, match_branch

__all__ = [
    "Conditional",
    "Conflict",
    "Escalate",
    "Loop",
    "MapReduce",
    "MergeError",
    "MergeRules",
    "Parallel",
    "Pipeline",
    "Reducer",
    "Sequential",
    "Stage",
    "Workflow",
    "escalate",
    "escalation",
    "match_branch",
    "merged_write",
    "resuming",
]
