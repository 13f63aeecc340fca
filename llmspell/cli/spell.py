"""The CLI's side of spells: `llmspell exec 'lua code'`, and what `llmspell run` and `submit`
call for a `.lua` path (the same JobResult as a YAML job, so it prints and exits the same way).

Models: `local:<name>` goes to the server at LLMSPELL_LOCAL_LLM_URL (the local LLM server, for
offline runs); other providers read their usual environment (OPENAI_API_KEY, ...).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from llmspell.cli.run import inputs_or_exit
from llmspell.jobs.result import ExitCode, JobResult
from llmspell.runtime import process
from llmspell.runtime.messages import new_id
from llmspell.spells.errors import SpellSyntaxError

if TYPE_CHECKING:  # Ray loads when a spell runs, not with the command line
    from llmspell.runtime.runtime import Runtime
    from llmspell.spells import SpellOptions

__all__ = ["check_spell", "exec_command", "is_spell", "run_lua", "spell_job_id"]


def is_spell(path: Path | str) -> bool:
    """Whether `llmspell run` (or `submit`) was given a spell rather than a job spec."""
    return str(path).endswith(".lua")


def spell_job_id(path: Path) -> str:
    """A new job id for the spell at `path` (named after its file, as a job after its spec)."""
    return f"{path.stem}-{new_id()[-10:].lower()}"


def check_spell(path: Path) -> None:
    """Compile the spell without running it: a syntax error (or a missing file) ends the
    command with exit code 2 before anything is started or submitted."""
    from llmspell.spells.sandbox import LuaSandbox

    try:
        LuaSandbox(folder=path.parent).compile(path.read_text(encoding="utf-8"), str(path))
    except (SpellSyntaxError, OSError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(ExitCode.bad_spec) from None


async def run_lua(path: Path | str, *, inputs: dict[str, Any], runtime: Runtime, job_id: str,
                  options: SpellOptions | None = None) -> JobResult:
    """What `llmspell run spell.lua` awaits (in its progress view and Ctrl-C handling).
    Raises SpellSyntaxError (exit code 2, like a bad job spec) before anything runs."""
    from llmspell.spells import run_spell

    return await run_spell(path, inputs=inputs, runtime=runtime, job_id=job_id,
                           options=options)


def exec_command(
    code: str = typer.Argument(..., help="The Lua code to run, e.g. 'return 6 * 7'."),
    input: list[str] = typer.Option([], "--input", "-i", help="An input: key=value."),  # noqa: B008
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Run a one-line spell on an embedded local Ray."""
    inputs = inputs_or_exit(input)
    job_id = f"exec-{new_id()[-12:]}"

    async def main() -> JobResult:
        from llmspell.runtime.runtime import Runtime
        from llmspell.spells import exec_spell

        async with Runtime(job_id=job_id) as runtime:
            return await exec_spell(code, inputs=inputs, runtime=runtime, job_id=job_id)

    try:
        result = process.run(main())
    except SpellSyntaxError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(ExitCode.bad_spec) from None
    if as_json:
        typer.echo(json.dumps(result.to_json(), ensure_ascii=False, default=str))
    elif result.ok:
        if result.text:
            typer.echo(result.text)
    else:
        typer.echo(f"{result.status}: {result.reason}", err=True)
    raise typer.Exit(result.exit_code)
