"""`llmspell submit` and `llmspell jobs` against a real Ray head started by the test with
`ray start --head` on 127.0.0.1 (its dashboard on a free port), stopped at the end."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmspell.llm.server import LocalLLMServer
from tests.net import free_ports

pytestmark = pytest.mark.cluster

SCENARIO = {"rules": [
    # the first call of `slow` hangs (the test cancels the job during it); later ones answer
    {"match": {"model": "^slow$"}, "times": 1, "latency_ms": 60000, "reply": "too late"},
    {"match": {"model": "^slow$"}, "reply": "finished after a resume"},
    {"match": {"model": "^writer$"}, "reply": "submitted and done"},
]}


def start_head(home: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """`ray start --head --block` on free ports; (the process, its dashboard address). A try
    whose ports were taken meanwhile, or that fails to start, is retried on new ones."""
    log = home / "ray-start.log"
    for _attempt in range(3):
        ports = free_ports(9)
        args = ["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                "--dashboard-host=127.0.0.1", "--num-cpus=2", "--disable-usage-stats",
                "--include-dashboard=true", f"--temp-dir={home}/ray", f"--port={ports[0]}",
                f"--dashboard-port={ports[1]}", f"--dashboard-agent-listen-port={ports[2]}",
                f"--dashboard-agent-grpc-port={ports[3]}", f"--metrics-export-port={ports[4]}",
                f"--runtime-env-agent-port={ports[5]}", f"--node-manager-port={ports[6]}",
                f"--object-manager-port={ports[7]}", f"--ray-client-server-port={ports[8]}"]
        with log.open("ab") as out:
            proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        address = f"http://127.0.0.1:{ports[1]}"
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{address}/api/version", timeout=2):
                    return proc, address
            except OSError:
                time.sleep(0.5)
        stop_head(proc)
    raise AssertionError(f"ray start failed three times:\n{log.read_text()[-3000:]}")


def stop_head(proc: subprocess.Popen[bytes]) -> None:
    """Every process of the head (its group: `ray start --block`, the GCS, raylet, dashboard,
    job drivers and workers) told to stop at once, and killed 5 s later: its workers outlive
    a dead raylet by ~30 s, and `ray start` waits for them."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """A one-node Ray cluster of its own (its own HOME, ports and temp dir)."""
    home = tmp_path_factory.mktemp("head")
    # Nothing of the session's Ray leaks in: ray.init sets RAY_AUTH_MODE=token in this process,
    # and a head started with it but another HOME finds no token and refuses to start (without
    # it, the head makes its own token under this HOME, where its clients find it).
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")
           and k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    env.update(HOME=str(home),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc, address = start_head(home, env)
    try:
        yield address, env
    finally:
        stop_head(proc)


@pytest.fixture(scope="module")
def server() -> Iterator[LocalLLMServer]:
    with LocalLLMServer(SCENARIO) as s:
        yield s


def cli(*args: str, env: dict[str, str], cwd: Path, timeout: float = 120
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmspell", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def job_file(folder: Path, server: LocalLLMServer, *models: str) -> Path:
    """A job of one agent per model, in sequence (state in the cluster's state service)."""
    folder.mkdir()
    path = folder / "job.yaml"
    agents = [{"name": m, "model": f"openai-chat:{m}", "stream": False} for m in models]
    path.write_text(yaml.safe_dump({
        "name": "submitted",
        "models": {"providers": {"openai-chat": {"base_url": server.openai_base_url}}},
        "agents": agents, "state": {"backend": "memory"},
        **({"pattern": {"kind": "sequential", "steps": list(models)}} if len(models) > 1
           else {})}))
    return path


def wait_status(address: str, job: str, env: dict[str, str], cwd: Path, want: set[str],
                timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        done = cli("jobs", "status", job, "--address", address, "--json", env=env, cwd=cwd)
        assert done.returncode == 0, done.stderr
        status: dict[str, Any] = json.loads(done.stdout)
        if status["status"] in want:
            return status
        assert time.monotonic() < deadline, status
        time.sleep(1)


def test_submit_follow_and_keys_only_through_the_runtime_env(
        head: tuple[str, dict[str, str]], server: LocalLLMServer, tmp_path: Path) -> None:
    address, base = head
    key = f"sk-fake-{secrets.token_hex(12)}"
    env = {**base, "OPENAI_API_KEY": key}
    path = job_file(tmp_path / "job", server, "writer")

    submitted = cli("submit", str(path), "--address", address, "-i", "input=go", "--job-id",
                    "sub-ok", env=env, cwd=tmp_path, timeout=180)
    assert submitted.returncode == 0, submitted.stderr
    logs = cli("jobs", "logs", "sub-ok", "--address", address, "--follow", env=env,
               cwd=tmp_path, timeout=180)
    assert logs.returncode == 0, logs.stdout[-2000:]
    status = wait_status(address, "sub-ok", env, tmp_path, {"SUCCEEDED", "FAILED"})
    assert status["status"] == "SUCCEEDED" and status["result"]["output"] == "submitted and done"
    events = cli("jobs", "events", "sub-ok", "--address", address, env=env, cwd=tmp_path)
    topics = [json.loads(line)["topic"] for line in events.stdout.splitlines()]
    assert topics.count("job.completed") == 1 and "agent.run.finished" in topics
    listed = cli("jobs", "list", "--address", address, env=env, cwd=tmp_path)
    assert "sub-ok" in listed.stdout

    # the key reached the job's workers (the agent's requests carried it)...
    sent = {r.key_sha256 for r in server.requests if r.model == "writer"}
    assert sent == {hashlib.sha256(key.encode()).hexdigest()}
    # ...and nothing the job wrote holds it: its log, its events, its spec, its event log
    written = [logs.stdout, events.stdout, path.read_text()]
    home = Path(base["HOME"])
    written += [p.read_bytes().decode("latin-1") for p in home.rglob("*.db*") if p.is_file()]
    written += [p.read_text(errors="replace") for p in (home / "ray").rglob("job-driver-*")]
    assert len(written) > 3 and not any(key in text for text in written)


def test_cancel_stops_a_running_submitted_job_and_resume_finishes_it(
        head: tuple[str, dict[str, str]], server: LocalLLMServer, tmp_path: Path) -> None:
    address, env = head
    path = job_file(tmp_path / "slow", server, "writer", "slow")
    writes = sum(1 for r in server.requests if r.model == "writer")
    submitted = cli("submit", str(path), "--address", address, "-i", "input=go", "--job-id",
                    "sub-slow", env=env, cwd=tmp_path, timeout=180)
    assert submitted.returncode == 0, submitted.stderr
    deadline = time.monotonic() + 120
    while not any(r.model == "slow" for r in server.requests):  # the job is mid-call
        assert time.monotonic() < deadline
        time.sleep(0.5)
    cancelled = cli("jobs", "cancel", "sub-slow", "--address", address, env=env, cwd=tmp_path)
    assert cancelled.returncode == 0 and "cancelling" in cancelled.stdout
    status = wait_status(address, "sub-slow", env, tmp_path, {"STOPPED", "FAILED", "SUCCEEDED"},
                         timeout=60)
    assert status["status"] == "STOPPED"
    logs = cli("jobs", "logs", "sub-slow", "--address", address, env=env, cwd=tmp_path).stdout
    final = [json.loads(line) for line in logs.splitlines() if line.startswith('{"job_id"')]
    assert final and final[-1]["status"] == "cancelled", logs[-3000:]  # wound down, not killed

    resumed = cli("jobs", "resume", "sub-slow", "--address", address, env=env, cwd=tmp_path)
    assert resumed.returncode == 0 and "sub-slow-resume-1" in resumed.stdout, resumed.stderr
    status = wait_status(address, "sub-slow-resume-1", env, tmp_path, {"SUCCEEDED", "FAILED"})
    assert status["status"] == "SUCCEEDED"
    assert status["result"]["output"] == "finished after a resume"
    assert sum(1 for r in server.requests if r.model == "writer") == writes + 1  # not rerun
    unknown = cli("jobs", "status", "nope", "--address", address, env=env, cwd=tmp_path)
    assert unknown.returncode == 1 and "Job nope does not exist" in unknown.stderr


def test_submit_a_spell_with_local_models_from_the_submitters_environment(
        head: tuple[str, dict[str, str]], server: LocalLLMServer, tmp_path: Path) -> None:
    from llmspell.jobs.submit import Submission

    address, base = head
    key = f"local-{secrets.token_hex(8)}"
    env = {**base, "LLMSPELL_LOCAL_LLM_URL": server.openai_base_url,
           "LLMSPELL_LOCAL_LLM_KEY": key}
    folder = tmp_path / "spell"
    folder.mkdir()
    (folder / "helper.lua").write_text('return {suffix = " (from a module)"}\n')
    spell = folder / "write.lua"
    spell.write_text(
        'local helper = require("helper")\n'
        'local writer = Agent.new{name = "writer", model = "local:writer", stream = false}\n'
        'return writer:run(Args.topic).text .. helper.suffix\n')
    (folder / "broken.lua").write_text("local x = \n")

    broken = cli("submit", str(folder / "broken.lua"), "--address", address, env=env,
                 cwd=tmp_path)
    assert broken.returncode == 2 and "broken.lua:2" in broken.stderr  # never submitted

    submitted = cli("submit", str(spell), "--address", address, "-i", "topic=spells",
                    "--job-id", "sub-spell", env=env, cwd=tmp_path, timeout=180)
    assert submitted.returncode == 0, submitted.stderr
    status = wait_status(address, "sub-spell", env, tmp_path, {"SUCCEEDED", "FAILED"})
    assert status["status"] == "SUCCEEDED", cli("jobs", "logs", "sub-spell", "--address",
                                                address, env=env, cwd=tmp_path).stdout[-3000:]
    assert status["result"]["output"] == "submitted and done (from a module)"
    events = cli("jobs", "events", "sub-spell", "--address", address, env=env, cwd=tmp_path)
    topics = [json.loads(line)["topic"] for line in events.stdout.splitlines()]
    assert topics.count("spell.finished") == 1 and "agent.run.finished" in topics

    # the local provider's URL and key went through the runtime env, to the agent's host
    forwarded = Submission(address).status("sub-spell").runtime_env["env_vars"]
    assert {"LLMSPELL_LOCAL_LLM_URL", "LLMSPELL_LOCAL_LLM_KEY"} <= set(forwarded)
    assert hashlib.sha256(key.encode()).hexdigest() in {
        r.key_sha256 for r in server.requests if r.model == "writer"}
    assert key not in events.stdout
