"""`llmspell submit` and `llmspell jobs ...`: jobs on a Ray cluster through the Ray Jobs API.

The address is the cluster's dashboard (http://HOST:8265), from --address or RAY_ADDRESS.
`jobs resume JOB_ID` without an address finishes a job interrupted on this machine.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec

import typer
from rich.console import Console
from rich.table import Table

from llmspell.jobs import ExitCode
from llmspell.jobs.spec import new_job_id
from llmspell.jobs.submit import Submission, SubmissionError, events_in

from .run import inputs_or_exit, resume_local, spec_or_exit

__all__ = ["jobs_app", "submit"]

P = ParamSpec("P")

def _api(command: Callable[P, None]) -> Callable[P, None]:
    """Errors of the Jobs API end the command with their message, not a traceback."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            command(*args, **kwargs)
        except SubmissionError as exc:
            Console(stderr=True).print(f"[red]{exc}")
            raise typer.Exit(ExitCode.failed) from None

    return run


jobs_app = typer.Typer(help="Jobs on a Ray cluster: list, status, logs, events, cancel, "
                            "resume.", no_args_is_help=True)

ADDRESS_HELP = "The Ray dashboard address, e.g. http://127.0.0.1:8265 (default: RAY_ADDRESS)."
_FINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _submission(address: str | None) -> Submission:
    address = address or os.environ.get("RAY_ADDRESS")
    if not address or not address.startswith(("http://", "https://")):
        Console(stderr=True).print("[red]give the cluster's dashboard address: --address "
                                   "http://HOST:8265 (or set RAY_ADDRESS)")
        raise typer.Exit(ExitCode.bad_spec)
    return Submission(address)


@_api
def submit(
    path: Path = typer.Argument(..., help="The job spec (YAML or JSON) or a Lua spell."),  # noqa: B008
    address: str | None = typer.Option(None, "--address", help=ADDRESS_HELP),
    input: list[str] = typer.Option([], "--input", "-i", help="An input: key=value."),  # noqa: B008
    job_id: str | None = typer.Option(None, "--job-id", help="The job's id (default: new)."),
    wait: bool = typer.Option(False, "--wait", help="Follow the job's log to its end."),
) -> None:
    """Submit a job or a spell to a Ray cluster (its folder travels as the job's
    working_dir)."""
    from llmspell.cli.spell import check_spell, is_spell, spell_job_id

    console = Console()
    inputs = inputs_or_exit(input)
    if is_spell(path):
        check_spell(path)  # a syntax error is found here, not on the cluster
        spec, job_id = None, job_id or spell_job_id(path)
    else:
        spec = spec_or_exit(path, console)
        try:
            spec.resolve_inputs(inputs)
        except ValueError as exc:
            console.print(f"[red]{exc}")
            raise typer.Exit(ExitCode.bad_spec) from None
        job_id = job_id or new_job_id(spec)
    sub = _submission(address)
    submitted = sub.submit(path, spec, inputs, job_id=job_id)
    console.print(f"submitted {submitted}\n  llmspell jobs status {submitted} --address "
                  f"{sub.address}")
    if wait:
        raise typer.Exit(_follow_logs(sub, submitted))


def _follow_logs(sub: Submission, job_id: str) -> int:
    async def tail() -> None:
        async for chunk in sub.tail(job_id):
            typer.echo(chunk, nl=False)

    asyncio.run(tail())
    status = str(sub.status(job_id).status)
    return 0 if status.endswith("SUCCEEDED") else 1


@jobs_app.command("list")
@_api
def list_jobs(address: str | None = typer.Option(None, "--address", help=ADDRESS_HELP)) -> None:
    """The cluster's jobs, newest first."""
    table = Table(show_edge=False)
    for column in ("job", "status", "started", "entrypoint"):
        table.add_column(column)
    jobs = sorted(_submission(address).list(), key=lambda j: j.start_time or 0, reverse=True)
    for job in jobs:
        started = time.strftime("%Y-%m-%d %H:%M:%S",
                                time.localtime((job.start_time or 0) / 1000))
        table.add_row(str(job.submission_id or job.job_id), _status(job.status), started,
                      str(job.entrypoint)[:60])
    Console().print(table)


def _status(status: object) -> str:
    return str(getattr(status, "value", status))


@jobs_app.command("status")
@_api
def status(job_id: str, address: str | None = typer.Option(None, "--address", help=ADDRESS_HELP),
           as_json: bool = typer.Option(False, "--json")) -> None:
    """A job's status (and, when it ended, its exit code and result)."""
    sub = _submission(address)
    info = sub.status(job_id)
    result = _result_in(sub.logs(job_id)) if _status(info.status) in _FINAL else None
    data = {"job_id": job_id, "status": _status(info.status), "message": info.message,
            "exit_code": info.driver_exit_code, "result": result}
    if as_json:
        typer.echo(json.dumps(data, default=str))
        return
    typer.echo(f"{job_id}: {data['status']}" + (f" - {info.message}" if info.message else ""))
    if result is not None:
        text = str(result.get("text") or result.get("output"))
        typer.echo(f"  {result.get('status')}: {text[:500]}")


def _result_in(log: str) -> dict[str, object] | None:
    """The JSON result `llmspell run --json` printed last."""
    for line in reversed(log.splitlines()):
        if line.startswith("{") and '"job_id"' in line:
            try:
                found: dict[str, object] = json.loads(line)
                return found
            except json.JSONDecodeError:
                return None
    return None


@jobs_app.command("logs")
@_api
def logs(job_id: str, address: str | None = typer.Option(None, "--address", help=ADDRESS_HELP),
         follow: bool = typer.Option(False, "--follow", "-f", help="Until the job ends.")) -> None:
    """A job's log (its driver's output)."""
    sub = _submission(address)
    if follow:
        raise typer.Exit(_follow_logs(sub, job_id))
    typer.echo(sub.logs(job_id), nl=False)


@jobs_app.command("events")
@_api
def events(job_id: str, address: str | None = typer.Option(None, "--address", help=ADDRESS_HELP),
           follow: bool = typer.Option(False, "--follow", "-f", help="Until the job ends."),
           pattern: str = typer.Option("**", "--pattern", help="Only topics matching this.")
           ) -> None:
    """A job's events (topic and payload, one JSON object per line)."""
    from llmspell.runtime.events import TopicPattern

    sub, matcher = _submission(address), TopicPattern(pattern)

    def show(lines: list[str]) -> None:
        for event in events_in(lines):
            if matcher.matches(str(event.get("topic", ""))):
                typer.echo(json.dumps(event, default=str))

    if not follow:
        show(sub.logs(job_id).splitlines())
        return

    async def tail() -> None:
        partial = ""
        async for chunk in sub.tail(job_id):
            lines = (partial + chunk).split("\n")
            partial = lines.pop()
            show(lines)
        show([partial])

    asyncio.run(tail())


@jobs_app.command("cancel")
@_api
def cancel(job_id: str, address: str | None = typer.Option(None, "--address", help=ADDRESS_HELP)
           ) -> None:
    """Cancel a job: its driver gets SIGTERM and stops the job cleanly."""
    stopped = _submission(address).cancel(job_id)
    typer.echo(f"{job_id}: {'cancelling' if stopped else 'not running'}")


@jobs_app.command("resume")
@_api
def resume(job_id: str,
           address: str | None = typer.Option(None, "--address", help="Resume on this "
                                              "cluster (default: here, from the local state)."),
           state: str | None = typer.Option(None, "--state", help="The state file of a local "
                                            "job (default: ~/.llmspell/llmspell/state.db)."),
           as_json: bool = typer.Option(False, "--json", help="Print the result as JSON.")
           ) -> None:
    """Finish an interrupted job from its checkpoints: completed steps are not run again."""
    if address is None:
        resume_local(job_id, state, as_json)
        return
    sub = _submission(address)
    attempt = 1 + sum(1 for j in sub.list()
                      if str(j.submission_id or "").startswith(f"{job_id}-resume-"))
    typer.echo(f"submitted {sub.resume(job_id, attempt=attempt)}")
