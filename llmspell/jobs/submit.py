"""A job submitted to a Ray cluster through the Ray Jobs API.

The cluster runs the same command a laptop runs (`python -m llmspell run job.yaml`, or a Lua
spell: `run spell.lua`), in the spec's (or spell's) folder shipped as the job's `working_dir`.
API keys travel from the submitter's environment into the job's `runtime_env.env_vars` (so
every worker of the job has them), never through the spec, the logs or the events. The job
prints its events as JSON lines, which `llmspell jobs events` reads back from the job's log.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmspell.llm.registry import split_model

from .spec import JobSpec

__all__ = ["EVENT_PREFIX", "PROVIDER_ENV", "Submission", "SubmissionError", "events_in",
           "forwarded_env"]

EVENT_PREFIX = "llmspell-event "

# What each provider reads from the environment (keys and endpoints), forwarded when set.
PROVIDER_ENV: dict[str, tuple[str, ...]] = {
    "openai": ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID"),
    "openai-chat": ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID"),
    "anthropic": ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"),
    "local": ("LLMSPELL_LOCAL_LLM_URL", "LLMSPELL_LOCAL_LLM_KEY"),
}
# `jobs cancel` sends SIGTERM; the job then stops its actors and checkpoints: give it time
# before Ray's SIGKILL (3 s by default).
_STOP = {"RAY_JOB_STOP_WAIT_TIME_S": "30"}
_EXCLUDES = [".git", ".venv", "venv", "__pycache__", "node_modules", ".mypy_cache",
             ".ruff_cache", ".pytest_cache"]


def _providers(spec: JobSpec) -> set[str]:
    names = set(spec.models.providers)
    for model in [spec.models.default, *(a.model if isinstance(a.model, str) else a.model.model
                                         for a in spec.agents)]:
        names.add(split_model(model)[0])
    return names


def forwarded_env(spec: JobSpec | None, environ: dict[str, str] | None = None
                  ) -> dict[str, str]:
    """The environment variables the job's providers read that are set here. Without a spec
    (a spell, or a resumed job), every provider's: a spell names its models only as it runs."""
    environ = dict(os.environ if environ is None else environ)
    wanted: set[str] = set()
    if spec is None:
        wanted.update(n for names in PROVIDER_ENV.values() for n in names)
    else:
        for name in _providers(spec):
            wanted.update(PROVIDER_ENV.get(name, ()))
        wanted.update(p.api_key_env for p in spec.models.providers.values() if p.api_key_env)
    return {k: environ[k] for k in sorted(wanted) if environ.get(k)}


def events_in(lines: Iterable[str]) -> list[dict[str, Any]]:
    """The events a job printed (`llmspell run --events`) among its log lines."""
    found = []
    for line in lines:
        if line.startswith(EVENT_PREFIX):
            try:
                found.append(json.loads(line[len(EVENT_PREFIX):]))
            except json.JSONDecodeError:
                continue  # a line cut by the log's own buffering
    return found


class SubmissionError(RuntimeError):
    """The Ray Jobs API refused or failed a request; says which cluster and what it said."""


@dataclass
class Submission:
    """The Ray Jobs API at `address` (a dashboard URL such as http://127.0.0.1:8265)."""

    address: str

    def client(self) -> Any:
        from ray.job_submission import JobSubmissionClient

        try:
            return JobSubmissionClient(self.address)
        except (ConnectionError, RuntimeError) as exc:
            raise SubmissionError(f"no Ray Jobs API at {self.address}: {exc}") from None

    def _call(self, what: str, fn: Any, *args: Any, retry_s: float = 0.0, **kwargs: Any) -> Any:
        """One Jobs API call, with a clear error; `retry_s` rides out a cluster whose job agent
        is still starting."""
        deadline = time.monotonic() + retry_s
        while True:
            try:
                return fn(*args, **kwargs)
            except RuntimeError as exc:
                text = str(exc).removeprefix("Request failed with status code ")
                if "No available agent" in text and time.monotonic() < deadline:
                    time.sleep(1.0)
                    continue
                raise SubmissionError(f"{what} on {self.address}: {text.rstrip('.')}") from None

    def submit(self, path: Path, spec: JobSpec | None, inputs: dict[str, str], *, job_id: str,
               python: str = "python") -> str:
        """Submit the job spec at `path` (parsed as `spec`), or the Lua spell at `path` (no
        spec); `path`'s folder travels with it."""
        args = ["-m", "llmspell", "run", path.name, "--job-id", job_id, "--events", "--json"]
        for key, value in inputs.items():
            args += ["-i", f"{key}={value}"]
        entrypoint = " ".join(shlex.quote(a) for a in [python, *args])
        runtime_env = {"working_dir": str(path.resolve().parent), "excludes": _EXCLUDES,
                       "env_vars": {**forwarded_env(spec), **_STOP}}
        return str(self._call("submit", self.client().submit_job, entrypoint=entrypoint,
                              submission_id=job_id, runtime_env=runtime_env,
                              metadata={"llmspell_job": path.stem if spec is None
                                        else spec.name}, retry_s=60))

    def resume(self, job_id: str, *, attempt: int, python: str = "python") -> str:
        """A new submission that finishes `job_id` from its checkpoints on the cluster."""
        entrypoint = " ".join(shlex.quote(a) for a in [python, "-m", "llmspell", "jobs",
                                                       "resume", job_id, "--json"])
        env = forwarded_env(None)  # its spec is on the cluster, not here
        return str(self._call("resume", self.client().submit_job, entrypoint=entrypoint,
                              submission_id=f"{job_id}-resume-{attempt}",
                              runtime_env={"env_vars": {**env, **_STOP}},
                              metadata={"llmspell_resumes": job_id}, retry_s=60))

    def list(self) -> list[Any]:
        return list(self._call("list jobs", self.client().list_jobs))

    def status(self, job_id: str) -> Any:
        return self._call(f"job {job_id}", self.client().get_job_info, job_id)

    def logs(self, job_id: str) -> str:
        return str(self._call(f"job {job_id}", self.client().get_job_logs, job_id))

    async def tail(self, job_id: str) -> AsyncIterator[str]:
        self.status(job_id)  # a clear error for an unknown job before tailing
        async for chunk in self.client().tail_job_logs(job_id):
            yield str(chunk)

    def cancel(self, job_id: str) -> bool:
        return bool(self._call(f"job {job_id}", self.client().stop_job, job_id))
