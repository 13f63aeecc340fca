"""Promise 5, kill the job's supervisor (its driver, which runs the workflow) at each step
boundary of a three-step job, one boundary per run, then resume it from a new driver: the
final transcript matches a fault-free run, and no committed step runs again (the LLM server's
request record holds every step's call exactly once per boundary, the end boundary included,
where the resumed run makes no call at all)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llmspell import Runtime
from llmspell.llm.server import LocalLLMServer

pytestmark = pytest.mark.ray

ROOT = Path(__file__).parents[2]
STEPS = 3
BOUNDARIES = range(STEPS + 1)  # before steps 0, 1, 2, and after the last


async def _drive(runtime: Runtime, job: str, url: str, topic: str, kill_at: int,
                 *extra: str) -> tuple[int, str, str]:
    proc = await asyncio.to_thread(subprocess.Popen, [
        sys.executable, "-m", "tests.conformance.drivers.boundary_job", runtime.gcs_address,
        runtime.settings.namespace, job, url, topic, str(kill_at), *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = await asyncio.to_thread(proc.communicate, timeout=180)
    return proc.returncode, out, err


def _transcript(out: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


async def _killed_then_resumed(runtime: Runtime, job: str, url: str, topic: str,
                               kill_at: int) -> dict[str, Any]:
    code, _, err = await _drive(runtime, job, url, topic, kill_at)
    assert code == -signal.SIGKILL, err[-2000:]
    code, out, err = await _drive(runtime, job, url, topic, -1, "--resume")
    assert code == 0, err[-3000:]
    return _transcript(out)


async def test_a_job_killed_at_each_boundary_resumes_to_the_same_transcript(
        runtime: Runtime, job_id: str) -> None:
    with LocalLLMServer() as server:  # echoes: each step's output carries all before it
        code, out, err = await _drive(runtime, f"{job_id}-clean", server.openai_base_url,
                                      "topic-clean", -1)
        assert code == 0, err[-3000:]
        clean = _transcript(out)
        resumed = await asyncio.gather(*(
            _killed_then_resumed(runtime, f"{job_id}-{k}", server.openai_base_url,
                                 "topic-clean", k) for k in BOUNDARIES))
        asked = [str(r.body["messages"][-1]["content"]) for r in server.requests]

    assert clean["status"] == "completed" and len(clean["steps"]) == STEPS
    for k, transcript in zip(BOUNDARIES, resumed, strict=True):
        assert transcript == clean, f"boundary {k}"
    # One fault-free run plus one killed-and-resumed run per boundary, all on the same topic:
    # each step was called once per run, never again after its commit.
    for step in range(STEPS):
        assert sum(a.startswith(f"step {step}: ") for a in asked) == 1 + len(BOUNDARIES), step
