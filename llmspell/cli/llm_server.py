"""`llmspell llm-server`: the local LLM server in the foreground, for trying clients by hand,
the demo, and recording a real run as a scenario."""

from __future__ import annotations

from pathlib import Path

import typer

from llmspell.llm.scenario import ScenarioError


def llm_server(
    port: int = typer.Option(8765, "--port", help="Port to listen on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    scenario: Path | None = typer.Option(  # noqa: B008
        None, "--scenario", dir_okay=False,
        help="Scenario file (YAML or JSON) of rules; without one the server echoes."),
    record: Path | None = typer.Option(  # noqa: B008
        None, "--record", dir_okay=False,
        help="Forward to --upstream and write what it answers to this scenario file."),
    upstream: str | None = typer.Option(
        None, "--upstream", help="Server to forward to in record mode, e.g. https://api.openai.com."),
    latency_ms: float = typer.Option(
        0, "--latency-ms", min=0, help="Delay before each response (overrides the scenario's)."),
    keep_requests: int = typer.Option(
        10_000, "--keep-requests", min=0,
        help="How many of the latest requests to keep for /_llmspell/requests."),
) -> None:
    """Run the local OpenAI- and Anthropic-compatible LLM server until Ctrl-C."""
    from llmspell.llm.server import LocalLLMServer

    if (record is None) != (upstream is None):
        raise typer.BadParameter("record mode needs both --record FILE and --upstream URL")
    if record is not None and scenario is not None:
        raise typer.BadParameter("--scenario and --record exclude each other")
    try:
        server = LocalLLMServer(scenario, latency_ms=latency_ms or None, port=port, host=host,
                                record=record, upstream=upstream, keep_requests=keep_requests)
    except ScenarioError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=2) from None
    mode = f"recording {upstream} into {record}" if record else (
        f"scenario {scenario}" if scenario else "no scenario: echoing")
    typer.echo(f"llmspell llm-server on {server.url} ({mode})\n"
               f"  OpenAI base_url:    {server.openai_base_url}\n"
               f"  Anthropic base_url: {server.anthropic_base_url}\n"
               f"  requests seen:      {server.url}/_llmspell/requests "
               f"(the last {keep_requests:,})")
    server.serve_forever()
