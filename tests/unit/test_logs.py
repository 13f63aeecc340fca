"""Logging set-up: an actor process imports our runtime without loading rich (structlog.dev
would import it, ~60 ms of every actor start, for colour tracebacks our renderers never print);
rich stays importable, and logs, exceptions included, still render."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = """
import sys
import llmspell.actors.agent_actor
from llmspell.runtime.logs import get_logger
print(int("rich" in sys.modules))
try:
    raise ValueError("boom")
except ValueError:
    get_logger(job_id="j1").exception("it failed", actor="a1")
import rich.console
print(int("rich" in sys.modules))
"""


def test_an_actor_process_logs_without_loading_rich_and_rich_still_imports() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "LLMSPELL_LOG_JSON": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0", "1"]
    line = json.loads(done.stderr.strip().splitlines()[-1])
    assert (line["event"], line["job_id"], line["actor"]) == ("it failed", "j1", "a1")
    assert "ValueError: boom" in line["exception"]
