"""`llmspell run`, `validate` and `demo`: a job on an embedded local Ray (or a cluster), with
live progress, the final output and a usage report.

Exit codes (llmspell.jobs.ExitCode): 0 completed, 1 failed, 2 bad spec or inputs, 3 over
budget, 130 cancelled (Ctrl-C: the job is cancelled, its hosts save their state, its actors
are stopped; `llmspell jobs resume JOB_ID` finishes it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from llmspell.agents.result import RunResult
from llmspell.jobs import ExitCode, JobResult, JobSpec, JobSpecError, JobStatus
from llmspell.jobs.spec import new_job_id
from llmspell.llm.registry import ProviderSettings
from llmspell.runtime import process
from llmspell.runtime.errors import LlmspellError
from llmspell.runtime.settings import RuntimeSettings, cluster_from_env

from .progress import JobView, follow

if TYPE_CHECKING:
    # Ray loads with the first command that runs a job: --help and validate need none of it.
    from llmspell.runtime.runtime import Runtime

__all__ = ["demo", "execute", "parse_inputs", "run", "validate"]

_ERR = Console(stderr=True)  # problems go to stderr, whatever --json does with stdout
GRACE_S = 15.0  # after Ctrl-C, how long the job may take to wind down before it is cut


def parse_inputs(items: list[str]) -> dict[str, str]:
    """`-i key=value` pairs; `key=@path` reads the value from a file."""
    inputs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise JobSpecError([{"path": f"-i {item}", "message": "write inputs as key=value"}],
                               "inputs")
        if value.startswith("@"):
            try:
                value = Path(value[1:]).read_text(encoding="utf-8")
            except OSError as exc:
                raise JobSpecError([{"path": f"inputs.{key}", "message": f"cannot read "
                                     f"{value[1:]}: {exc.strerror or exc}"}], "inputs") from None
        inputs[key.strip()] = value
    return inputs


def inputs_or_exit(items: list[str]) -> dict[str, str]:
    """`parse_inputs`, a bad input ending the command with its message (exit code 2)."""
    try:
        return parse_inputs(items)
    except JobSpecError as exc:
        _ERR.print(f"[red]{exc}")
        raise typer.Exit(ExitCode.bad_spec) from None


def cluster_address(address: str | None) -> str | None:
    """The Ray cluster to join: --address, or RAY_ADDRESS when it names a cluster (inside a
    submitted job it does; a dashboard URL is for `submit`, not for joining)."""
    return address or cluster_from_env()


class _Interrupt:
    """Ctrl-C (or SIGTERM from `jobs cancel`): the first asks the job to stop cleanly; the job
    is cut after a grace period or at a second signal."""

    def __init__(self, cancel: Callable[[str], None], task: asyncio.Task[Any],
                 console: Console) -> None:
        self.cancel, self.task, self.console = cancel, task, console
        self.count = 0

    def __call__(self, signum: int) -> None:
        self.count += 1
        name = signal.Signals(signum).name
        if self.count == 1:
            self.console.print(f"[yellow]{name}: cancelling the job (again to stop at once)")
            self.cancel(f"interrupted by {name}")
            asyncio.get_running_loop().call_later(GRACE_S, self.task.cancel)
        else:
            self.task.cancel()

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self, sig)

    def remove(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def execute(spec: JobSpec, inputs: dict[str, Any], runtime: Runtime, *, job_id: str,
                  resume: bool = False, console: Console, live: bool,
                  events: bool = False) -> tuple[JobResult, JobView]:
    """Run the job on a started runtime with its progress view; the job's actors are gone
    when this returns, whatever happened."""
    from llmspell.jobs.build import plan_hosts
    from llmspell.jobs.runner import JobRun

    job = JobRun(spec, runtime, job_id=job_id, inputs=inputs)
    view = JobView(job_id)
    for host, agents in plan_hosts(spec).items():
        view.add_host(host, [a.name for a in agents])
    watcher = asyncio.create_task(follow(runtime, view, live=live, console=console,
                                         events_out=sys.stdout if events else None))
    task = asyncio.current_task()
    assert task is not None
    interrupt = _Interrupt(job.cancel, task, console)
    interrupt.install()
    try:
        await job.start(save=not resume)
        result = await job.execute(resume=resume)
    except asyncio.CancelledError:
        if not interrupt.count:
            raise
        task.uncancel()
        result = JobResult(job_id=job_id, status=JobStatus.cancelled,
                           reason="interrupted; the job did not wind down in time")
    finally:
        interrupt.remove()
        await asyncio.shield(job.close())
        await asyncio.sleep(0.3)  # the last events reach the view
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    return result, view


async def _run_spell(path: Path, inputs: dict[str, Any], *, address: str | None, job_id: str,
                     local_url: str | None, console: Console, live: bool, events: bool
                     ) -> tuple[JobResult, JobView]:
    """A Lua spell, with the same progress view, Ctrl-C handling and report as a job."""
    from llmspell.cli.spell import run_lua
    from llmspell.runtime.runtime import Runtime
    from llmspell.spells.context import SpellOptions

    providers: dict[str, ProviderSettings | dict[str, Any]] | None = (
        {"local": ProviderSettings(base_url=local_url)} if local_url else None)
    async with Runtime(cluster_address(address), job_id=job_id) as rt:
        view = JobView(job_id)
        watcher = asyncio.create_task(follow(rt, view, live=live, console=console,
                                             events_out=sys.stdout if events else None))
        task = asyncio.create_task(run_lua(path, inputs=inputs, runtime=rt, job_id=job_id,
                                           options=SpellOptions(providers=providers)))
        interrupt = _Interrupt(lambda reason: _cancel(task), task, console)
        interrupt.install()
        try:
            result = await task  # a cancelled spell stops its actors and reports cancelled
        finally:
            interrupt.remove()
            await asyncio.sleep(0.3)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        return result, view


def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()


def report(result: JobResult, view: JobView | None, *, as_json: bool, console: Console) -> None:
    if as_json:
        data = result.to_json()
        if view is not None:
            data["agents"] = {n: {"runs": r.runs, "tokens": r.tokens, "cost_usd": r.cost_usd}
                              for n, r in view.agents.items()}
        typer.echo(json.dumps(data, default=str))
        return
    style = "green" if result.ok else ("yellow" if result.status == JobStatus.cancelled
                                       else "red")
    body = result.text or (json.dumps(result.output, indent=2, default=str)
                           if result.output is not None else "(no output)")
    if result.run is not None and result.run.children:
        console.print(_steps(result.run.children))
    console.print(Panel(body, title=f"{result.status} - job {result.job_id}",
                        border_style=style, subtitle=result.reason[:200] or None))
    if view is not None:
        console.print(view.usage_table())
    console.print(f"[dim]{result.duration_s:.1f} s, {result.usage.total_tokens:,} tokens, "
                  f"${result.cost_usd:.4f}")
    if result.status == JobStatus.cancelled:
        console.print(f"[dim]resume with: llmspell jobs resume {result.job_id}")


def _steps(children: list[RunResult]) -> Table:
    """The root pattern's steps: what each produced (the path to the final answer)."""
    table = Table(title="steps", show_edge=False, show_lines=False)
    for column in ("step", "status", "output"):
        table.add_column(column, overflow="fold")
    for child in children:
        text = child.text or ("" if child.output is None else json.dumps(child.output,
                                                                          default=str))
        table.add_row(child.agent, str(child.status), text[:300] + ("..." if len(text) > 300
                                                                     else ""))
    return table


def spec_or_exit(path: Path, console: Console) -> JobSpec:
    try:
        return JobSpec.from_file(path)
    except JobSpecError as exc:
        _ERR.print(f"[red]{exc}")
        raise typer.Exit(ExitCode.bad_spec) from None


async def _run_spec(spec: JobSpec, inputs: dict[str, Any], *, address: str | None,
                    job_id: str, resume: bool, console: Console, live: bool,
                    events: bool) -> tuple[JobResult, JobView]:
    from llmspell.jobs.runner import job_runtime

    async with job_runtime(spec, address=cluster_address(address), job_id=job_id) as rt:
        return await execute(spec, inputs, rt, job_id=job_id, resume=resume, console=console,
                             live=live, events=events)


def _console(as_json: bool) -> Console:
    return Console(stderr=True) if as_json else Console()


def run(
    path: Path = typer.Argument(..., help="The job spec (YAML or JSON) or a Lua spell."),  # noqa: B008
    input: list[str] = typer.Option([], "--input", "-i", help="An input: key=value or key=@file."),  # noqa: B008
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    address: str | None = typer.Option(None, "--address", help="Join this Ray cluster "
                                       "instead of starting an embedded one."),
    job_id: str | None = typer.Option(None, "--job-id", help="The job's id (default: new)."),
    events: bool = typer.Option(False, "--events", help="Print every event as a JSON line."),
    scenario: Path | None = typer.Option(  # noqa: B008
        None, "--scenario", help="Answer the job's `local:` models from this scenario, with "
        "a local LLM server started for the run (offline, no key)."),
    model: str | None = typer.Option(None, "--model", help="Run every agent on this model."),
) -> None:
    """Run a job (or a Lua spell) on an embedded local Ray with live progress."""
    console = _console(as_json)
    from llmspell.cli.spell import is_spell

    if is_spell(path):
        _spell(path, input, as_json=as_json, address=address, job_id=job_id, events=events,
               scenario=scenario, console=console)
        return
    spec = spec_or_exit(path, console)
    if model is not None:
        spec = spec.using_model(model)
    try:
        inputs = spec.resolve_inputs(parse_inputs(input))
    except JobSpecError as exc:
        _ERR.print(f"[red]{exc}")
        raise typer.Exit(ExitCode.bad_spec) from None
    live = not as_json and not events and console.is_terminal
    with contextlib.ExitStack() as stack:
        if scenario is not None:
            from llmspell.llm.server import LocalLLMServer

            server = stack.enter_context(LocalLLMServer(scenario))
            spec = spec.using_local_llm(server.openai_base_url)
        job = job_id or new_job_id(spec)
        finish(lambda: _run_spec(spec, inputs, address=address, job_id=job, resume=False,
                                 console=console, live=live, events=events),
               as_json=as_json, console=console)


def _spell(path: Path, items: list[str], *, as_json: bool, address: str | None,
           job_id: str | None, events: bool, scenario: Path | None, console: Console) -> None:
    from llmspell.cli.spell import spell_job_id
    from llmspell.spells.errors import SpellSyntaxError

    inputs = inputs_or_exit(items)
    live = not as_json and not events and console.is_terminal
    job = job_id or spell_job_id(path)
    with contextlib.ExitStack() as stack:
        url = None
        if scenario is not None:
            from llmspell.llm.server import LocalLLMServer

            url = stack.enter_context(LocalLLMServer(scenario)).openai_base_url
        finish(lambda: _run_spell(path, inputs, address=address, job_id=job, local_url=url,
                                  console=console, live=live, events=events),
               as_json=as_json, console=console, bad_spec=(SpellSyntaxError, OSError))


def finish(job: Callable[[], Coroutine[Any, Any, tuple[JobResult, JobView]]], *,
           as_json: bool, console: Console,
           bad_spec: tuple[type[Exception], ...] = ()) -> None:
    """Run `job` to its end, report, and exit with the job's code. Problems found once the job
    is starting (an MCP server's missing tool, a cluster that cannot be reached) end it with
    a clear message: exit 2 for the spec's, 1 for the rest."""
    spec_errors: tuple[type[BaseException], ...] = (JobSpecError, LookupError, *bad_spec)
    try:
        result, view = process.run(job())
    except spec_errors as exc:
        _ERR.print(f"[red]{exc}")
        raise typer.Exit(ExitCode.bad_spec) from None
    except LlmspellError as exc:
        _ERR.print(f"[red]{type(exc).__name__}: {exc}")
        raise typer.Exit(ExitCode.failed) from None
    report(result, view, as_json=as_json, console=console)
    raise typer.Exit(result.exit_code)


def validate(
    path: Path = typer.Argument(..., help="The job spec (YAML or JSON)."),  # noqa: B008
    as_json: bool = typer.Option(False, "--json", help="Print the problems as JSON."),
) -> None:
    """Check a job spec without running it: every problem, by field path."""
    try:
        spec = JobSpec.from_file(path)
    except JobSpecError as exc:
        if as_json:
            typer.echo(json.dumps({"ok": False, "errors": exc.errors}))
        else:
            Console().print(f"[red]{exc}")
        raise typer.Exit(ExitCode.bad_spec) from None
    if as_json:
        typer.echo(json.dumps({"ok": True, "name": spec.name, "agents": len(spec.agents)}))
    else:
        kind = spec.pattern.kind if spec.pattern is not None else "one agent"
        typer.echo(f"{path}: ok ({spec.name}: {len(spec.agents)} agents, {kind}, "
                   f"{len(spec.pools)} pools)")


def demo(
    model: str | None = typer.Option(None, "--model", help="Run every agent on this model "
                                     "(e.g. openai:gpt-4o-mini; its key from the environment) "
                                     "instead of the local LLM server."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Run the demo job (delegation, a tool pool, a vote) offline against the local LLM
    server, which this command starts."""
    from llmspell.jobs.demo import demo_scenario, demo_spec
    from llmspell.llm.server import LocalLLMServer

    console = _console(as_json)
    live = not as_json and console.is_terminal
    with contextlib.ExitStack() as stack:
        if model is None:
            server = stack.enter_context(LocalLLMServer(demo_scenario()))
            spec = demo_spec(local_url=server.openai_base_url)
            console.print(f"[dim]local LLM server on {server.url} (no API key needed)")
        else:
            spec = demo_spec(model=model)
        spec.state.backend = "memory"  # the demo leaves nothing behind
        finish(lambda: _run_spec(spec, {}, address=None, job_id=new_job_id(spec),
                                 resume=False, console=console, live=live, events=False),
               as_json=as_json, console=console)


async def _resume_local(job_id: str, path: str, *, console: Console, live: bool
                        ) -> tuple[JobResult, JobView]:
    from llmspell.jobs.runner import load_saved
    from llmspell.runtime.runtime import Runtime

    async with Runtime(cluster_address(None), job_id=job_id, state_path=path) as rt:
        spec, inputs = await load_saved(rt, job_id)
        return await execute(spec, inputs, rt, job_id=job_id, resume=True, console=console,
                             live=live)


def resume_local(job_id: str, state: str | None, as_json: bool) -> None:
    console = _console(as_json)
    path = state or os.path.expanduser(f"~/.llmspell/{RuntimeSettings().namespace}/state.db")
    if cluster_address(None) is None and not Path(path).exists():
        _ERR.print(f"[red]job {job_id}: no state file at {path} (give --state)")
        raise typer.Exit(ExitCode.bad_spec)
    finish(lambda: _resume_local(job_id, path, console=console,
                                 live=not as_json and console.is_terminal),
           as_json=as_json, console=console)
