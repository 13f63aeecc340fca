"""A driver running a three-step job, killed (SIGKILL, by itself) at one step boundary, or
resumed; the boundary test runs one per boundary.

    python -m tests.conformance.drivers.boundary_job GCS NAMESPACE JOB URL TOPIC KILL_AT [--resume]

KILL_AT: -1 never; 0..2 just before step KILL_AT starts (every earlier step committed); 3 after
the last step, before the job reports its result.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

from llmspell import Runtime
from llmspell.actors.agent_actor import HostSetup, spawn_host
from llmspell.agents import AgentSpec
from llmspell.runtime.hooks import HookContext, HookRegistry
from llmspell.runtime.state_client import StateClient
from llmspell.supervisors.base import Bind
from llmspell.supervisors.workflows import Sequential
from llmspell.tools import ToolContext

STEPS = 3


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


async def main(gcs: str, namespace: str, job: str, url: str, topic: str, kill_at: int,
               resume: bool) -> None:
    rt = Runtime(gcs, job_id=job, namespace=namespace)
    rt.start()
    agents = spawn_host(rt, "hostB" if resume else "hostA", HostSetup(
        [AgentSpec(name=f"step{i}", model="openai-chat:m", stream=False) for i in range(STEPS)],
        providers={"openai-chat": {"base_url": url, "api_key": "k"}}), job_id=job)
    flow = Sequential("job", [Bind(agents[i], input=f"step {i}: {{{{ previous or input }}}}")
                              for i in range(STEPS)])
    hooks = HookRegistry()

    def boundary(ctx: HookContext) -> None:
        if ctx.payload["index"] == kill_at:
            _die()

    hooks.register("before_workflow_step", boundary, name="boundary")
    ctx = ToolContext(job_id=job, chain=(job,), state=StateClient(rt.node, job_id=job),
                      emit=rt.node.publish_nowait, hooks=hooks)
    result = await flow.run(topic, ctx=ctx, resume=resume)
    if kill_at == STEPS:
        _die()
    transcript: dict[str, Any] = {"status": str(result.status), "output": result.output,
                                  "steps": [c.text for c in result.children]}
    print(json.dumps(transcript), flush=True)
    await rt.aclose()


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(main(*args[:5], kill_at=int(args[5]), resume="--resume" in args))
