"""`llmspell tools list|describe|call`: in process through typer's runner, and end to end as
`python -m llmspell` in a temporary directory (the sandbox root of `call`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmspell.cli.main import app

runner = CliRunner()


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "notes.txt").write_text("line one\nline two\n")
    (tmp_path.parent / "outside.txt").write_text("secret")
    (tmp_path / "escape").symlink_to(tmp_path.parent / "outside.txt")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_list_shows_every_category() -> None:
    result = runner.invoke(app, ["tools", "list"])
    assert result.exit_code == 0
    for name in ("read_file", "watch_changes", "http_request", "web_search", "process_run",
                 "system_info", "filesystem", "web", "system"):
        assert name in result.output


def test_list_json_and_category_filter() -> None:
    result = runner.invoke(app, ["tools", "list", "--json", "--category", "web"])
    tools = json.loads(result.output)
    assert {t["name"] for t in tools} == {"http_request", "web_fetch", "url_analyze",
                                          "sitemap_crawl", "webhook_call", "web_search"}
    assert all(t["category"] == "web" and t["schema"]["type"] == "object" for t in tools)
    bad = runner.invoke(app, ["tools", "list", "--category", "nope"])
    assert bad.exit_code == 2 and "no category 'nope'" in bad.output


def test_describe_prints_the_schema_and_suggests_close_names() -> None:
    result = runner.invoke(app, ["tools", "describe", "read_file"])
    described = json.loads(result.output)
    assert described["parameters"]["required"] == ["path"]
    assert described["side_effects"] == "none" and described["category"] == "filesystem"
    unknown = runner.invoke(app, ["tools", "describe", "read_fil"])
    assert unknown.exit_code == 2 and "closest: read_file" in unknown.output


def test_call_runs_in_the_current_directory(here: Path) -> None:
    result = runner.invoke(app, ["tools", "call", "read_file", "--args",
                                 '{"path": "notes.txt", "max_lines": 1}'])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["content"] == "line one\n"
    wrote = runner.invoke(app, ["tools", "call", "write_file", "--args",
                                '{"path": "out/new.txt", "content": "made"}'])
    assert wrote.exit_code == 0 and (here / "out" / "new.txt").read_text() == "made"


def test_call_exit_codes_for_refusals_and_bad_input(here: Path) -> None:
    refused = runner.invoke(app, ["tools", "call", "read_file", "--args", '{"path": "escape"}'])
    assert refused.exit_code == 3 and "sandbox rule 'symlink-escape'" in refused.output
    loopback = runner.invoke(app, ["tools", "call", "http_request", "--args",
                                   '{"url": "http://0x7f000001:9/"}'])
    assert loopback.exit_code == 3 and "'private-address'" in loopback.output
    bad_json = runner.invoke(app, ["tools", "call", "read_file", "--args", '{"path": '])
    assert bad_json.exit_code == 2 and "not valid JSON" in bad_json.output
    not_object = runner.invoke(app, ["tools", "call", "read_file", "--args", "[1]"])
    assert not_object.exit_code == 2 and "must be a JSON object" in not_object.output
    bad_args = runner.invoke(app, ["tools", "call", "read_file", "--args", '{"pat": "x"}'])
    assert bad_args.exit_code == 2 and "path: Field required" in bad_args.output
    failed = runner.invoke(app, ["tools", "call", "read_file", "--args", '{"path": "none"}'])
    assert failed.exit_code == 1 and "no such file" in failed.output
    no_exec = runner.invoke(app, ["tools", "call", "process_run", "--args",
                                  '{"command": ["ls"]}'])
    assert no_exec.exit_code == 3 and "'exec-disabled'" in no_exec.output


def test_call_options_open_the_policy_explicitly(here: Path) -> None:
    result = runner.invoke(app, ["tools", "call", "process_run", "--allow-command",
                                 sys.executable, "--args",
                                 json.dumps({"command": [sys.executable, "-c", "print(6*7)"]})])
    assert result.exit_code == 0 and json.loads(result.output)["stdout"] == "42\n"


def test_the_installed_command_end_to_end(here: Path) -> None:
    listed = subprocess.run([sys.executable, "-m", "llmspell", "tools", "list", "--json"],
                            capture_output=True, text=True, timeout=60, check=True)
    names = {t["name"] for t in json.loads(listed.stdout)}
    assert {"read_file", "http_request", "process_run"} <= names
    refused = subprocess.run(
        [sys.executable, "-m", "llmspell", "tools", "call", "web_fetch", "--args",
         '{"url": "http://localhost:9/"}'], capture_output=True, text=True, timeout=60,
        cwd=here)
    assert refused.returncode == 3
    assert "refused by sandbox rule 'private-address'" in refused.stderr
    assert "localhost resolves to 127.0.0.1" in refused.stderr
