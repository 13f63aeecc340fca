"""`llmspell demo`: a job with delegation, a tool pool and a consensus vote, runnable offline.

With no model given, the demo starts the local LLM server with the demo's scenario and points
the job's `local` provider at it; with `--model provider:name` every agent uses that model
instead (a real one, with its key in the environment).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .spec import JobSpec

__all__ = ["demo_scenario", "demo_spec"]


def _data(name: str) -> Path:
    return Path(str(resources.files("llmspell.jobs") / "data" / name))


def demo_scenario() -> Path:
    return _data("demo_scenario.yaml")


def demo_spec(*, model: str | None = None, local_url: str | None = None) -> JobSpec:
    """The demo job: against the local server at `local_url`, or with every agent on
    `model`."""
    spec = JobSpec.from_file(_data("demo.yaml"))
    if local_url is not None:
        spec = spec.using_local_llm(local_url)
    return spec.using_model(model) if model is not None else spec
