"""A job spec served to other programs: `llmspell serve mcp job.yaml` to the official MCP
client over stdio, `llmspell serve a2a job.yaml` to our A2A client; each a separate process
that starts the job's actors on the session's Ray and stops them when it ends."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mcp
import pytest
import ray
import yaml

from llmspell import Runtime
from llmspell.jobs import JobSpec, run
from llmspell.llm.server import LocalLLMServer
from llmspell.protocols.a2a_client import A2AAgent

pytestmark = pytest.mark.ray

SCENARIO = {"rules": [
    {"match": {"model": "^drafter$"}, "reply": "a draft"},
    {"match": {"model": "^editor$"}, "reply": "the edited text"},
]}


@pytest.fixture(scope="module")
def server() -> Iterator[LocalLLMServer]:
    with LocalLLMServer(SCENARIO) as s:
        yield s


def job_path(folder: Path, server: LocalLLMServer) -> Path:
    path = folder / "team.yaml"
    path.write_text(yaml.safe_dump({
        "name": "team",
        "models": {"providers": {"openai-chat": {"base_url": server.openai_base_url}}},
        "agents": [{"name": "drafter", "model": "openai-chat:drafter", "stream": False,
                    "description": "Writes a first draft."},
                   {"name": "editor", "model": "openai-chat:editor", "stream": False,
                    "description": "Edits a draft."}],
        "pattern": {"kind": "sequential", "name": "write", "description": "Draft, then edit.",
                    "steps": ["drafter", {"agent": "editor", "input": "Edit: {{ previous }}"}]},
    }))
    return path


def env_for(runtime: Runtime) -> dict[str, str]:
    return {**os.environ, "RAY_ADDRESS": runtime.gcs_address,
            "LLMSPELL_NAMESPACE": runtime.settings.namespace, "OPENAI_API_KEY": "sk-test"}


def job_actors() -> list[str]:
    return [n for n in ray.util.list_named_actors() if n.startswith("team-")]


async def test_serve_mcp_offers_a_jobs_agents_and_pattern_to_the_official_client(
        runtime: Runtime, server: LocalLLMServer, tmp_path: Path) -> None:
    params = mcp.StdioServerParameters(
        command=sys.executable, args=["-m", "llmspell", "serve", "mcp", str(job_path(
            tmp_path, server)), "--no-builtin"], env=env_for(runtime), cwd=str(tmp_path))
    async with mcp.Client(params) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) == {"drafter", "editor", "write"}
        assert tools["write"].description.startswith("Draft, then edit.")
        answer = await client.call_tool("write", {"input": "a note on Ray"})
        assert [c.text for c in answer.content if hasattr(c, "text")] == ["the edited text"]
        assert job_actors()  # the job's actors live while the server does
    deadline = time.monotonic() + 30
    while job_actors():  # ...and are stopped with it
        assert time.monotonic() < deadline, job_actors()
        await asyncio.sleep(0.2)


def serve_a2a(path: Path, port: int, env: dict[str, str], cwd: Path
              ) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "llmspell", "serve", "a2a", str(path),
                             "--port", str(port)], env=env, cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_card(url: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/.well-known/agent-card.json", timeout=2):
                return
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.3)


async def test_serve_a2a_publishes_a_jobs_pattern_for_another_job(
        runtime: Runtime, server: LocalLLMServer, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = serve_a2a(job_path(tmp_path, server), port, env_for(runtime), tmp_path)
    try:
        url = f"http://127.0.0.1:{port}/write"
        await asyncio.to_thread(wait_for_card, url, proc)
        remote = A2AAgent(name="writer", url=url)
        result = await remote.run("a note on Ray")
        assert result.ok and result.output == "the edited text", result.reason
        # another job declares it as a remote agent and runs it as a step of its pattern
        caller = JobSpec.from_data({
            "name": "caller", "agents": [{"name": "echo", "model": "scripted:echo"}],
            "remote_agents": [{"name": "team", "url": url}],
            "pattern": {"kind": "sequential", "steps": [
                "echo", {"agent": "team", "input": "Polish: {{ previous }}"}]}})
        called = await run(caller, {"input": "draft"}, runtime=runtime,
                           job_id=f"caller-{port}")
        assert called.ok and called.output == "the edited text", called.reason
        asked = [r.body for r in server.requests if r.model == "drafter"]
        assert "Polish: echo: draft" in json.dumps(asked[-1])
    finally:
        proc.terminate()
        proc.wait(timeout=60)
