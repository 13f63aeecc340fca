"""The system tools: environment variables through the allow-list, allow-listed processes (no
shell, a timeout that kills the process group, capped output), and the machine's figures."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmspell.tools import SandboxViolation, Tool, ToolArgumentError, ToolError
from llmspell.tools.builtin import system as s
from llmspell.tools.sandbox import rule_of
from tests.tools.conftest import Ctx

PY = sys.executable


async def call(tool: Tool, c: Ctx, **arguments: Any) -> Any:
    return await tool.invoke(arguments, c.ctx)


async def refusal(tool: Tool, c: Ctx, **arguments: Any) -> str:
    with pytest.raises(SandboxViolation) as caught:
        await call(tool, c, **arguments)
    assert c.refusals()[-1]["rule"] == rule_of(caught.value)
    return str(rule_of(caught.value))


@pytest.fixture
def runner(make_ctx: Callable[..., Ctx]) -> Ctx:
    return make_ctx(allowed_commands=[PY, "sh"], allowed_env=["LLMSPELL_TEST_*"])


# -- env_get ----------------------------------------------------------------------------------


async def test_env_get_reads_allowed_names(runner: Ctx, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMSPELL_TEST_MODE", "fast")
    got = await call(s.EnvGet(), runner, names=["LLMSPELL_TEST_MODE", "LLMSPELL_TEST_UNSET"])
    assert got == {"values": {"LLMSPELL_TEST_MODE": "fast", "LLMSPELL_TEST_UNSET": None},
                   "missing": ["LLMSPELL_TEST_UNSET"]}


async def test_env_get_bad_inputs(runner: Ctx, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_API_KEY", "sk-live")
    assert await refusal(s.EnvGet(), runner, names=["SECRET_API_KEY"]) == "env-not-allowed"
    with pytest.raises(ToolArgumentError, match="names"):
        await call(s.EnvGet(), runner, names=[])
    with pytest.raises(ToolError, match="not a valid variable name"):
        await call(s.EnvGet(), runner, names=["A=B"])


# -- process_run ------------------------------------------------------------------------------


async def test_process_run_argv_stdin_cwd_and_exit_code(runner: Ctx) -> None:
    root = Path(runner.ctx.sandbox.root or "")
    (root / "work").mkdir()
    code = "import os, sys; print(os.getcwd()); print(sys.stdin.read().upper()); sys.exit(3)"
    done = await call(s.ProcessRun(), runner, command=[PY, "-c", code], cwd="work",
                      stdin="hello")
    assert done["exit_code"] == 3 and not done["timed_out"]
    assert done["stdout"].splitlines() == [str(root / "work"), "HELLO"]
    literal = await call(s.ProcessRun(), runner, command=["sh", "-c", 'echo "$0"', "$HOME;*"])
    assert literal["stdout"] == "$HOME;*\n"  # arguments are passed as they are, never expanded


async def test_process_run_gets_no_secrets_from_the_environment(
        runner: Ctx, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_API_KEY", "sk-live")
    monkeypatch.setenv("LLMSPELL_TEST_SHARED", "shared")
    code = ("import os; "
            "print(os.environ.get('SECRET_API_KEY'), os.environ.get('LLMSPELL_TEST_SHARED'))")
    done = await call(s.ProcessRun(), runner, command=[PY, "-c", code])
    assert done["stdout"] == "None shared\n"


async def test_process_run_timeout_kills_the_whole_group(runner: Ctx, tmp_path: Path) -> None:
    marker = tmp_path / "child-survived"
    script = f"sleep 0.5 && touch {marker} & sleep 30"
    started = time.monotonic()
    done = await call(s.ProcessRun(), runner, command=["sh", "-c", script], timeout_s=0.2)
    assert done["timed_out"] and done["exit_code"] is None
    assert time.monotonic() - started < 3
    await asyncio.sleep(0.7)  # the background child would have written its marker by now
    assert not marker.exists()


async def test_process_run_caps_output(runner: Ctx) -> None:
    done = await call(s.ProcessRun(), runner, max_output_bytes=1000,
                      command=[PY, "-c", "import sys; sys.stdout.write('x' * 5_000_000); "
                                         "sys.stderr.write('e' * 10)"])
    assert len(done["stdout"]) == 1000 and done["stdout_truncated"]
    assert done["stderr"] == "e" * 10 and not done["stderr_truncated"] and done["exit_code"] == 0


async def test_process_run_bad_inputs(runner: Ctx, make_ctx: Callable[..., Ctx]) -> None:
    assert await refusal(s.ProcessRun(), make_ctx(), command=["ls"]) == "exec-disabled"
    assert await refusal(s.ProcessRun(), runner, command=["ls", "-la"]) == "command-not-allowed"
    root = Path(runner.ctx.sandbox.root or "")
    fake = root / "sh"
    fake.write_text("#!/bin/sh\necho pwned\n")
    fake.chmod(0o755)
    assert await refusal(s.ProcessRun(), runner, command=[str(fake)]) == "command-not-allowed"
    assert await refusal(s.ProcessRun(), runner, command=[PY, "-V"], cwd="..") == "path-escape"
    with pytest.raises(ToolArgumentError, match="command"):
        await call(s.ProcessRun(), runner, command=[])
    with pytest.raises(ToolError, match="not a directory"):
        await call(s.ProcessRun(), runner, command=[PY, "-V"], cwd="missing")


# -- system_info ------------------------------------------------------------------------------


async def test_system_info_reports_the_machine(runner: Ctx) -> None:
    info = await call(s.SystemInfo(), runner)
    assert info["cpu"]["logical_cores"] >= 1 and 0 <= info["cpu"]["percent"] <= 100
    assert info["memory"]["total_bytes"] > info["memory"]["available_bytes"] > 0
    assert info["disk"]["free_bytes"] > 0 and info["disk"]["path"] == "sandbox root"
    assert info["platform"]["python"] == sys.version.split()[0]
    only = await call(s.SystemInfo(), runner, sections=["memory"])
    assert list(only) == ["memory"]


async def test_system_info_bad_inputs(runner: Ctx) -> None:
    with pytest.raises(ToolArgumentError, match="sections"):
        await call(s.SystemInfo(), runner, sections=["gpu"])
    with pytest.raises(ToolArgumentError, match="sections"):
        await call(s.SystemInfo(), runner, sections=[])


def test_every_system_tool_has_a_strict_described_schema() -> None:
    for t in s.TOOLS:
        spec = t.spec()
        assert t.category == "system" and spec.parameters["additionalProperties"] is False
        assert all(p.get("description") for p in spec.parameters["properties"].values()), t.name
    assert (str(s.ProcessRun.side_effects), s.ProcessRun.idempotent) == ("external", False)
