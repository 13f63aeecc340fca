"""`llmspell serve mcp|a2a`: our tools and agents for other programs, over MCP or A2A.

    llmspell serve mcp                                  # the built-in tools, MCP over stdio
    llmspell serve mcp --http --port 8765 --token T     # streamable HTTP at /mcp
    llmspell serve mcp myteam:steps                     # plus the agents of a Python module
    llmspell serve a2a myteam:steps --port 8766         # each agent at /<name>, with its card

TARGET is a job spec (job.yaml: its agents and root pattern are served, started on an embedded
Ray, or the cluster RAY_ADDRESS names, for as long as the server runs), or `module:attribute`:
a Step or a Tool, a list or dict of them, or a function (sync or
async) returning them. The token may come from $LLMSPELL_SERVE_TOKEN instead of the command
line (which other users of the machine can see). Servers bind 127.0.0.1 unless told otherwise,
and refuse any other address without a token.

Exit codes: 0 stopped; 2 bad usage (an unknown target, a bind without a token, a port in use).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import os
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import typer

from llmspell.tools.base import Tool

__all__ = ["load_target", "serve_app"]

EXIT_USAGE = 2
TOKEN_ENV = "LLMSPELL_SERVE_TOKEN"

serve_app = typer.Typer(name="serve", no_args_is_help=True,
                        help="Serve tools and agents over MCP (stdio or HTTP) or A2A.")

_TARGET = typer.Argument(None, help="A job spec (its agents and pattern), or "
                                     "module:attribute giving Steps and Tools (see --help)")
_HOST = typer.Option("127.0.0.1", help="Address to bind; beyond loopback a token is required.")
_TOKEN = typer.Option(None, envvar=TOKEN_ENV, show_envvar=True,
                      help="Bearer token clients must send.")


def _fail(message: str) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code=EXIT_USAGE)


async def load_target(target: str | None) -> tuple[list[Tool], list[Any]]:
    """The tools and the steps `target` (`module:attribute`) names. Raises ValueError."""
    if not target:
        return [], []
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{target!r}: give module:attribute, e.g. myteam:agents")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: the user's own modules
    try:
        value: Any = getattr(importlib.import_module(module_name), attribute)
    except ImportError as exc:
        raise ValueError(f"{target!r}: cannot import {module_name!r}: {exc}") from None
    except AttributeError:
        raise ValueError(f"{target!r}: {module_name!r} has no {attribute!r}") from None
    if callable(value) and not hasattr(value, "run"):
        value = value()
        if inspect.isawaitable(value):
            value = await value
    items = list(value.values()) if isinstance(value, Mapping) else (
        list(value) if isinstance(value, list | tuple) else [value])
    tools = [i for i in items if isinstance(i, Tool)]
    steps = [i for i in items if not isinstance(i, Tool)]
    for step in steps:
        if not (hasattr(step, "name") and callable(getattr(step, "run", None))):
            raise ValueError(f"{target!r}: {step!r} is neither a Tool nor a Step (a name and "
                             "`run(input, ctx=)`)")
    return tools, steps


_SPEC_SUFFIXES = (".yaml", ".yml", ".json")
Served = tuple[list[Tool], list[Any], Callable[[Any], Any] | None]


@contextlib.asynccontextmanager
async def served(target: str | None) -> AsyncIterator[Served]:
    """The tools and steps to serve, and the context their calls run in: a job spec's agents
    and root pattern, started for as long as the server runs, or a Python `module:attribute`
    (see `load_target`). Raises ValueError for a bad target."""
    if not (target and target.endswith(_SPEC_SUFFIXES)):
        tools, steps = await load_target(target)
        yield tools, steps, None
        return
    from llmspell.cli.run import cluster_address
    from llmspell.jobs import JobSpec, JobSpecError
    from llmspell.jobs.runner import job_runtime, open_job
    from llmspell.jobs.spec import new_job_id

    try:
        spec = JobSpec.from_file(target)
    except JobSpecError as exc:
        raise ValueError(str(exc)) from None
    spec.state.backend = "memory"  # a served job answers calls; it has nothing to resume
    job_id = new_job_id(spec)
    async with job_runtime(spec, address=cluster_address(None), job_id=job_id) as runtime, \
            open_job(spec, runtime=runtime, job_id=job_id) as job:
        yield job.parts.tools_for(spec.agents), job.steps(), job.call_context


@serve_app.command("mcp")
def serve_mcp(
    target: str | None = _TARGET,
    http: bool = typer.Option(False, "--http", help="Streamable HTTP instead of stdio."),
    host: str = _HOST,
    port: int = typer.Option(8765, help="HTTP port."),
    token: str | None = _TOKEN,
    path: str = typer.Option("/mcp", help="HTTP path of the MCP endpoint."),
    builtin: bool = typer.Option(True, "--builtin/--no-builtin",
                                 help="Offer the built-in tools."),
    root: str = typer.Option(".", help="Filesystem root of the tools' sandbox."),
) -> None:
    """Serve the built-in tools (and TARGET's agents and tools) as an MCP server."""
    asyncio.run(_serve_mcp(target, http=http, host=host, port=port, token=token, path=path,
                           builtin=builtin, root=os.path.abspath(root)))


async def _serve_mcp(target: str | None, *, http: bool, host: str, port: int,
                     token: str | None, path: str, builtin: bool, root: str) -> None:
    from llmspell.protocols.auth import check_bind
    from llmspell.protocols.mcp_server import build_mcp_server, serve_mcp_http, serve_mcp_stdio
    from llmspell.tools.context import ToolContext
    from llmspell.tools.sandbox import Sandbox

    try:
        if http:
            check_bind(host, token)
        async with served(target) as (tools, steps, job_context):
            if builtin:
                from llmspell.tools.builtin import builtin_tools

                names = {t.name for t in tools}
                tools = [*(t for t in builtin_tools() if t.name not in names), *tools]
            sandbox = Sandbox(root=root)
            server = build_mcp_server(tools, steps, context=job_context or (
                lambda tool: ToolContext(chain=("mcp",), sandbox=sandbox)))
            if not http:
                await serve_mcp_stdio(server)
                return
            typer.echo(f"MCP over streamable HTTP at http://{host}:{port}{path}"
                       f"{' (bearer token required)' if token else ''}", err=True)
            await serve_mcp_http(server, host=host, port=port, token=token, path=path)
    except (ValueError, OSError) as exc:
        raise _fail(str(exc)) from None


@serve_app.command("a2a")
def serve_a2a(
    target: str = typer.Argument(..., help="A job spec (its agents and pattern), or "
                                 "module:attribute giving the Steps to publish"),
    host: str = _HOST,
    port: int = typer.Option(8766, help="HTTP port."),
    token: str | None = _TOKEN,
    default: str | None = typer.Option(None, help="The agent whose card the root serves."),
    public_url: str | None = typer.Option(None, help="Base URL the cards advertise "
                                                     "(default: the URL they are fetched at)."),
) -> None:
    """Publish TARGET's agents, workflows and patterns as A2A agents."""
    asyncio.run(_serve_a2a(target, host=host, port=port, token=token, default=default,
                           public_url=public_url))


async def _serve_a2a(target: str, *, host: str, port: int, token: str | None,
                     default: str | None, public_url: str | None) -> None:
    from llmspell.protocols.a2a_server import a2a_app
    from llmspell.protocols.http import HTTPServer

    try:
        async with served(target) as (_, steps, job_context):
            app = a2a_app(steps, token=token, host=host, default=default,
                          public_url=public_url, context=job_context)
            server = HTTPServer(app, host=host, port=port, token=token, log_level="warning")
            names = ", ".join(f"/{s.name}" for s in steps)
            typer.echo(f"A2A agents at http://{host}:{port}: {names}"
                       f"{' (bearer token required)' if token else ''}", err=True)
            await server.serve_forever()
    except (ValueError, OSError) as exc:
        raise _fail(str(exc)) from None
