"""The `llmspell` command line."""

from __future__ import annotations

import typer

import llmspell

app = typer.Typer(name="llmspell", help="An actor-model multi-agent runtime on Ray.",
                  no_args_is_help=True, add_completion=False)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llmspell {llmspell.__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """llmspell: run multi-agent jobs on an embedded Ray or a cluster."""


def _register() -> None:
    from llmspell.cli.jobs import jobs_app, submit
    from llmspell.cli.llm_server import llm_server
    from llmspell.cli.run import demo, run, validate
    from llmspell.cli.serve import serve_app
    from llmspell.cli.spell import exec_command
    from llmspell.cli.tools import tools_app

    app.command("run")(run)
    app.command("demo")(demo)
    app.command("validate")(validate)
    app.command("exec", help="Run a line of Lua (a one-line spell) on an embedded local Ray.")(
        exec_command)
    app.command("submit")(submit)
    app.add_typer(jobs_app, name="jobs")
    app.command("llm-server", help="Run the local OpenAI/Anthropic-compatible LLM server.")(
        llm_server)
    app.add_typer(tools_app, name="tools")
    app.add_typer(serve_app, name="serve")


_register()


def main() -> None:
    app()
