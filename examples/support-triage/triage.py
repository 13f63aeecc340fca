"""The support triage job written in Python with the job builder (same as job.yaml).

    python examples/support-triage/triage.py "I was charged twice for my order"

Runs offline: it starts the local LLM server with this folder's scenario.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import llmspell.jobs as jobs
from llmspell.jobs.builder import JobBuilder, conditional
from llmspell.llm.server import LocalLLMServer

HERE = Path(__file__).parent


def triage_job() -> jobs.JobSpec:
    teams = {"billing": "Refunds, invoices and charges.",
             "technical": "Errors, outages and bugs.",
             "general": "Everything else."}
    job = (JobBuilder("support-triage", description="Route a ticket to the right team.")
           .input("ticket", required=True, description="the customer's message")
           .agent("router", model="local:router",
                  instructions="You route support tickets. Answer with one word: "
                               + ", ".join(teams) + "."))
    for team, description in teams.items():
        job.agent(team, model=f"local:{team}", description=description,
                  instructions=f"You are {team} support. Answer in at most three sentences.")
    return (job.pattern(conditional({t: t for t in teams}, router="router", default="general",
                                    name="triage"))
            .hook("redaction")
            .build())


async def main(ticket: str) -> None:
    with LocalLLMServer(HERE / "scenario.yaml") as server:
        spec = triage_job().using_local_llm(server.openai_base_url)
        result = await jobs.run(spec, {"ticket": ticket})
    print(f"{result.status}: {result.output}")


if __name__ == "__main__":
    asyncio.run(main(" ".join(sys.argv[1:]) or "I was charged twice for my order"))
