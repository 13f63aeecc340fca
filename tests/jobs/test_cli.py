"""The `llmspell` command on jobs: validate, run (as a separate process joining the session's
Ray), Ctrl-C and resume, the demo on its own embedded Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from typer.testing import CliRunner

from llmspell import Runtime
from llmspell.cli.main import app
from llmspell.jobs.spec import JobSpec
from llmspell.llm.server import LocalLLMServer
from tests.jobs.common import two_steps

SCENARIO = {"rules": [
    {"match": {"model": "^drafter$"}, "reply": "a draft"},
    # the editor's first call is slow (the test interrupts the job during it), later ones fast
    {"match": {"model": "^editor$"}, "times": 1, "latency_ms": 8000, "reply": "slow edit"},
    {"match": {"model": "^editor$"}, "reply": "the edited text"},
]}


@pytest.fixture(scope="module")
def server() -> Iterator[LocalLLMServer]:
    with LocalLLMServer(SCENARIO) as s:
        yield s


def write_job(folder: Path, server: LocalLLMServer, **extra: Any) -> Path:
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(two_steps(server, **extra)))
    return path


def cli_env(runtime: Runtime) -> dict[str, str]:
    """A CLI process that joins the session's Ray and its services."""
    return {**os.environ, "RAY_ADDRESS": runtime.gcs_address,
            "LLMSPELL_NAMESPACE": runtime.settings.namespace, "OPENAI_API_KEY": "sk-test"}


def llmspell(*args: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "llmspell", *args], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_validate_lists_every_problem_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nagents:\n  - {name: a, tools: [web_fech]}\n  - {name: a}\n"
                   "pattern: {kind: sequential, steps: [a, b]}\n")
    result = CliRunner().invoke(app, ["validate", str(bad), "--json"])
    assert result.exit_code == 2
    errors = {e["path"]: e["message"] for e in json.loads(result.stdout)["errors"]}
    assert errors == {"agents[0].tools[0]": "unknown tool 'web_fech' (did you mean "
                                            "'web_fetch'?)",
                      "agents[1].name": "agent 'a' is declared twice",
                      "pattern.steps[1]": "unknown agent 'b'; known: a"}
    good = tmp_path / "good.yaml"
    good.write_text("name: x\nagents: [{name: a}]\n")
    result = CliRunner().invoke(app, ["validate", str(good)])
    assert result.exit_code == 0 and "ok (x: 1 agents, one agent, 0 pools)" in result.stdout


@pytest.mark.ray
def test_run_prints_json_and_bad_inputs_exit_2(runtime: Runtime, server: LocalLLMServer,
                                               tmp_path: Path) -> None:
    path = write_job(tmp_path, server, pattern={"kind": "sequential", "steps": ["drafter"]},
                     agents=[{"name": "drafter", "model": "openai-chat:drafter",
                              "stream": False}])
    env = cli_env(runtime)
    bad = llmspell("run", str(path), "--json", env=env, cwd=tmp_path)
    _, err = bad.communicate(timeout=120)
    assert bad.returncode == 2 and "inputs.topic: required" in err
    ok = llmspell("run", str(path), "--json", "-i", "topic=Ray", env=env, cwd=tmp_path)
    out, err = ok.communicate(timeout=180)
    assert ok.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["status"] == "completed" and result["output"] == "a draft"
    assert result["agents"]["drafter"]["runs"] == 1 and result["total_tokens"] > 0


@pytest.mark.ray
def test_ctrl_c_exits_130_leaves_no_actor_and_resume_finishes_the_job(
        runtime: Runtime, server: LocalLLMServer, tmp_path: Path) -> None:
    path = write_job(tmp_path, server)
    job = f"cli-{int(time.time() * 1000) % 10**8}"
    env = cli_env(runtime)
    before = {m: sum(1 for r in server.requests if r.model == m) for m in ("drafter", "editor")}
    proc = llmspell("run", str(path), "--json", "-i", "topic=Ray", "--job-id", job, env=env,
                    cwd=tmp_path)
    deadline = time.monotonic() + 120
    while sum(1 for r in server.requests if r.model == "editor") == before["editor"]:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)  # while the editor's slow call is running
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert json.loads(out.strip().splitlines()[-1])["status"] == "cancelled"
    alive = [a for a in ray.util.list_named_actors() if a.startswith(f"{job}/")]
    assert alive == []

    resumed = llmspell("jobs", "resume", job, "--json", env=env, cwd=tmp_path)
    out, err = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["status"] == "completed" and result["output"] == "the edited text"
    after = {m: sum(1 for r in server.requests if r.model == m) for m in ("drafter", "editor")}
    assert after["drafter"] - before["drafter"] == 1  # the completed step was not run again
    assert after["editor"] - before["editor"] == 2  # interrupted once, then finished


def test_the_demo_runs_offline_on_its_own_embedded_ray(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    env["HOME"] = str(tmp_path)  # nothing of the demo lands in the real home
    proc = subprocess.run([sys.executable, "-m", "llmspell", "demo", "--json"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == "completed" and result["output"] == "NATS"
    assert set(result["agents"]) == {"lead", "researcher", "analyst", "reviewer-1",
                                     "reviewer-2", "reviewer-3"}
    assert all(a["runs"] == 1 for a in result["agents"].values())


def test_the_demo_spec_is_a_valid_file_a_user_can_copy() -> None:
    from llmspell.jobs.demo import _data

    spec = JobSpec.from_file(_data("demo.yaml"))
    assert spec.pattern is not None and spec.pattern.kind == "sequential"


@pytest.mark.ray
def test_run_takes_a_lua_spell_with_a_scenario_and_exec_takes_a_line(
        runtime: Runtime, tmp_path: Path) -> None:
    examples = Path(__file__).parents[2] / "examples" / "spells"
    env = cli_env(runtime)
    spell = llmspell("run", str(examples / "tool_agent.lua"), "--scenario",
                     str(examples / "scenario.yaml"), "--json", env=env, cwd=tmp_path)
    out, err = spell.communicate(timeout=180)
    assert spell.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["output"] == "6 * 7 = 42 (forty-two)." and result["agents"]["maths"]["runs"] == 1
    broken = tmp_path / "broken.lua"
    broken.write_text("local x = \nreturn x\n")
    bad = llmspell("run", str(broken), env=env, cwd=tmp_path)
    _, err = bad.communicate(timeout=120)
    assert bad.returncode == 2 and "broken.lua:2" in err
    line = llmspell("exec", "return 6 * 7", "--json", env=env, cwd=tmp_path)
    out, err = line.communicate(timeout=120)
    assert line.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["output"] == 42
