"""The command line starts without Ray: `--help`, `--version`, `validate` and `llm-server` need
none of it, and importing Ray is over half a second. What runs a job loads it on first use, and
the package's names (`llmspell.Runtime`, `llmspell.jobs.run`, `llmspell.spells.run_spell`) are
all still there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).parents[2] / "llmspell" / "jobs" / "data" / "demo.yaml"

PROBE = """
import sys
from typer.testing import CliRunner
from llmspell.cli.main import app

loaded = []
for args in (["--version"], ["--help"], ["validate", sys.argv[1]], ["llm-server", "--help"]):
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, (args, done.output)
    loaded.append(int("ray" in sys.modules))
print(*loaded)

import llmspell, llmspell.jobs, llmspell.spells
names = [llmspell.Runtime, llmspell.ActorBase, llmspell.ActorRef, llmspell.jobs.run,
         llmspell.jobs.JobRun, llmspell.spells.run_spell, llmspell.spells.SpellOptions]
print(int("ray" in sys.modules), all(callable(n) for n in names))
"""


def test_the_command_line_checks_a_spec_without_importing_ray() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE, str(DEMO)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0", "0", "0", "0", "1", "True"]


def test_a_name_the_package_does_not_have_is_an_attribute_error() -> None:
    import llmspell
    import llmspell.jobs
    import llmspell.spells

    for module in (llmspell, llmspell.jobs, llmspell.spells):
        try:
            module.no_such_name  # type: ignore[attr-defined]  # noqa: B018
        except AttributeError as exc:
            assert "no_such_name" in str(exc)
        else:
            raise AssertionError(f"{module.__name__}.no_such_name did not raise")
