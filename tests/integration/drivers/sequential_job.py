"""A driver that runs a three-step job; the resume test kills it mid-job and runs it again.

    python -m tests.integration.drivers.sequential_job GCS NAMESPACE JOB OPENAI_URL [--resume]
"""

from __future__ import annotations

import asyncio
import json
import sys

from llmspell import Runtime
from llmspell.actors.agent_actor import HostSetup, spawn_host
from llmspell.agents import AgentSpec
from llmspell.runtime.state_client import StateClient
from llmspell.supervisors.base import Bind
from llmspell.supervisors.workflows import Sequential
from llmspell.tools import ToolContext


async def main(gcs: str, namespace: str, job: str, url: str, resume: bool) -> None:
    rt = Runtime(gcs, job_id=job, namespace=namespace)
    rt.start()
    # The agents are this driver's actors: they die with it, and a resumed run starts new ones.
    name = "hostB" if resume else "hostA"
    agents = spawn_host(rt, name, HostSetup(
        [AgentSpec(name=n, model="openai-chat:m", stream=False)
         for n in ("drafter", "reviewer", "editor")],
        providers={"openai-chat": {"base_url": url, "api_key": "k"}}), job_id=job)
    flow = Sequential("report", [Bind(agents[0], input="step one: {{ input }}"),
                                 Bind(agents[1], input="step two: {{ previous }}"),
                                 Bind(agents[2], input="step three: {{ previous }}")])
    ctx = ToolContext(job_id=job, chain=(job,), state=StateClient(rt.node, job_id=job),
                      emit=rt.node.publish_nowait)
    result = await flow.run("the topic", ctx=ctx, resume=resume)
    print(json.dumps({"status": str(result.status), "output": result.output}), flush=True)
    await rt.aclose()


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(main(*args[:4], resume="--resume" in args))
