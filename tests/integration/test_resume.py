"""A driver killed mid-job; a new driver resumes the job without redoing completed steps."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from llmspell import Runtime
from llmspell.llm.server import LocalLLMServer

pytestmark = pytest.mark.ray

ROOT = Path(__file__).parents[2]
SCENARIO = {"rules": [
    {"match": {"contains": "step one"}, "reply": "draft"},
    # The first request of step two takes long enough for the test to kill its driver.
    {"match": {"contains": "step two"}, "times": 1, "latency_ms": 30_000, "reply": "slow"},
    {"match": {"contains": "step two"}, "reply": "reviewed"},
    {"match": {"contains": "step three"}, "reply": "final report"},
]}


def driver(runtime: Runtime, job: str, url: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.drivers.sequential_job", runtime.gcs_address,
         runtime.settings.namespace, job, url, *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def test_a_killed_driver_is_resumed_without_redoing_completed_steps(
        runtime: Runtime, job_id: str) -> None:
    with LocalLLMServer(SCENARIO) as server:
        first = driver(runtime, job_id, server.openai_base_url)
        try:
            async with asyncio.timeout(120):
                while not any("step two" in json.dumps(r.body) for r in server.requests):
                    assert first.poll() is None, first.stderr.read() if first.stderr else ""
                    await asyncio.sleep(0.1)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(30)
        second = driver(runtime, job_id, server.openai_base_url, "--resume")
        out, err = await asyncio.to_thread(second.communicate, timeout=120)
        assert second.returncode == 0, err[-3000:]
        assert json.loads(out.strip().splitlines()[-1]) == {
            "status": "completed", "output": "final report"}
        bodies = [json.dumps(r.body) for r in server.requests]
        assert sum("step one" in b for b in bodies) == 1  # done before the kill: not redone
        assert sum("step two" in b for b in bodies) == 2  # lost with the driver: run again
        assert sum("step three" in b for b in bodies) == 1
