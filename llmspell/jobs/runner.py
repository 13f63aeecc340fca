"""Running a job: start its actors, run its pattern, stop everything, report.

    result = await llmspell.jobs.run("job.yaml", {"topic": "Ray"})
    print(result.status, result.output, result.usage.total_tokens)

`JobRun` owns every actor it starts: whatever way the job ends (completed, failed, cancelled,
over budget, the driver interrupted), `close()` stops the job's supervisor (its hosts save
their snapshots), then removes every actor of the job that is left. The spec and inputs are
saved in the job's state at the start, so `resume(job_id)` can finish the job later from its
checkpoints: steps that completed are not run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jinja2.sandbox
import structlog

from llmspell.actors.agent_actor import AgentHandle
from llmspell.agents.env import AgentEnv
from llmspell.agents.result import RunResult, RunStatus
from llmspell.runtime.cancel import CancelToken
from llmspell.runtime.errors import ActorError, ActorUnavailable
from llmspell.runtime.eventlog import EventLog
from llmspell.runtime.events import Event
from llmspell.runtime.runtime import Runtime
from llmspell.runtime.settings import RuntimeSettings
from llmspell.runtime.state_client import StateClient
from llmspell.supervisors.base import Step
from llmspell.supervisors.checkpoint import resuming
from llmspell.supervisors.hosted import HostedWorkflow
from llmspell.tools.context import ToolContext

from .build import Assembly
from .result import JobResult, JobStatus, Replay
from .spec import JobSpec, JobSpecError, new_job_id

__all__ = ["JOB_KEY", "JobRun", "job_runtime", "load_saved", "open_job", "resume", "run"]

STOP_GRACE_S = 5.0  # how long a cancelled pattern has to return its own result
JOB_KEY = "job:llmspell.job"  # the spec and inputs of a job, for resume
_TEMPLATES = jinja2.sandbox.ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)
log = structlog.get_logger("llmspell.jobs")


def job_runtime(spec: JobSpec, *, address: str | None = None, job_id: str,
                **settings: Any) -> Runtime:
    """The runtime a job starts when it is given none: an embedded Ray (or `address`), with
    the job's state in SQLite unless the spec keeps it in memory."""
    base = RuntimeSettings(**settings)
    if spec.state.backend == "sqlite" and base.state_path is None:
        default = Path(os.path.expanduser("~/.llmspell")) / base.namespace / "state.db"
        path = Path(spec.state.path).expanduser() if spec.state.path else default
        if not path.is_absolute() and spec.base_dir:
            path = Path(spec.base_dir) / path
        path.parent.mkdir(parents=True, exist_ok=True)
        base = base.model_copy(update={"state_path": str(path)})
    return Runtime(address, job_id=job_id, settings=base)


class JobRun:
    """One run of a job on a started runtime."""

    def __init__(self, spec: JobSpec, runtime: Runtime, *, job_id: str | None = None,
                 inputs: dict[str, Any] | None = None) -> None:
        self.spec = spec
        self.runtime = runtime
        self.job_id = job_id or new_job_id(spec)
        self.inputs = spec.resolve_inputs(inputs or {})
        self.parts = Assembly(spec, runtime, self.job_id)
        self.ctx: ToolContext | None = None
        self.root: Step | None = None
        self.env: AgentEnv | None = None
        self.log = log.bind(job_id=self.job_id, job=spec.name)
        self._closed = False

    @property
    def handles(self) -> dict[str, Any]:
        return self.parts.handles

    async def start(self, *, save: bool = True) -> None:
        """Start the pools and the supervised hosts, wait for them, build the pattern."""
        self.ctx = self.parts.context()
        self.publish("job.submitted", {"job": self.spec.name, "inputs": _brief(self.inputs)})
        if save:
            assert self.ctx.state is not None
            await self.ctx.state.set(JOB_KEY, {"spec": self.spec.model_dump(mode="json"),
                                               "base_dir": self.spec.base_dir,
                                               "inputs": self.inputs})
        await self.parts.load_tools()
        self.parts.start_pools()
        self.parts.start_hosts()
        await self.parts.wait_ready()
        self.env = self.parts.env(self.ctx)
        self.root = self.parts.root(self.env)
        self.log.info("job started", agents=len(self.parts.handles), pools=len(self.parts.pools))

    @property
    def pattern_runs_in(self) -> str:
        """The host the root pattern runs in (see Assembly.root), or "driver"."""
        return self.root.host if isinstance(self.root, HostedWorkflow) else "driver"

    def publish(self, topic: str, payload: dict[str, Any]) -> None:
        self.runtime.node.publish_nowait(topic, payload, job_id=self.job_id)

    def input_text(self) -> str:
        if self.spec.input is None:
            return _default_input(self.inputs)
        names = {**self.inputs, "inputs": self.inputs, "input": self.inputs.get("input", "")}
        try:
            return _TEMPLATES.from_string(self.spec.input).render(**names)
        except jinja2.TemplateError as exc:
            raise JobSpecError([{"path": "input", "message": f"template failed: {exc}"}],
                               f"job {self.spec.name!r}") from None

    async def execute(self, *, resume: bool = False) -> JobResult:
        """Run the root pattern to its end and report. Never raises for a failed job."""
        assert self.root is not None and self.ctx is not None, "start() first"
        started = time.perf_counter()
        self.publish("job.started", {"job": self.spec.name, "resume": resume,
                                     "pattern_runs_in": self.pattern_runs_in})
        run = await self._run_root(self.input_text(), resume)
        result = JobResult.from_run(self.job_id, run, duration_s=time.perf_counter() - started,
                                    replay=self._replay)
        if result.ok:
            await self._write_outputs(result)
        self.publish(f"job.{_topic(result.status)}", {
            "job": self.spec.name, "status": str(result.status), "reason": result.reason,
            "tokens": result.usage.total_tokens, "cost_usd": result.cost_usd,
            "duration_s": round(result.duration_s, 3)})
        self.log.info("job finished", status=str(result.status), reason=result.reason,
                      tokens=result.usage.total_tokens)
        return result

    async def _run_root(self, text: str, resume: bool) -> RunResult:
        assert self.root is not None and self.ctx is not None
        wall = self.spec.budgets.wall_time_s
        task = asyncio.ensure_future(_call(self.root, text, self.ctx, self.inputs, resume))
        try:
            done, _ = await asyncio.wait({task}, timeout=wall)
        except asyncio.CancelledError:
            self.ctx.cancel.cancel("the job was interrupted")
            task.cancel()
            raise
        if task in done:
            return task.result()
        reason = f"wall time budget of {wall:g} s exceeded"
        # Cancelled through its token, the pattern stops its remote runs and checkpoints;
        # one that does not return in time is cut.
        self.ctx.cancel.cancel(reason)
        done, _ = await asyncio.wait({task}, timeout=STOP_GRACE_S)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        return RunResult(status=RunStatus.cancelled, agent=self.spec.name,
                         cancelled_by="budget", reason=reason)

    def steps(self) -> list[Any]:
        """What the job offers to callers from outside (MCP, A2A): each agent by its name, and
        the root pattern under its own name."""
        steps = list(self.parts.handles.values())
        if self.spec.pattern is not None and self.root is not None:
            steps.append(self.root)
        return steps

    def call_context(self, _step: Any = None) -> ToolContext:
        """The context of one call from outside: the job's state, events and hooks, and a
        cancel token of its own (cancelling one call leaves the others running)."""
        assert self.ctx is not None, "start() first"
        return dataclasses.replace(self.ctx, cancel=CancelToken())

    def cancel(self, reason: str = "cancelled") -> None:
        """Ask the job to stop: model and tool calls not yet started are not started."""
        if self.ctx is not None:
            self.ctx.cancel.cancel(reason)

    async def close(self) -> None:
        """Stop the job's actors: the supervisor first (hosts snapshot their agents), then
        anything of the job still alive. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        await self._flush_hosts()
        if self.parts.supervisor:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.runtime.lookup(self.parts.supervisor).stop(
                    "job ended"), 30)
        for pool in self.parts.pools.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.ref.stop("job ended"), 30)
        if self.env is not None:
            await self.env.providers.aclose()
        killed = self.runtime.kill_job(self.job_id)
        await self.runtime.node.flush()
        self.log.info("job closed", killed=killed)

    async def flush(self) -> None:
        """Send every event the job's hosts, pools and this driver hold to the event log, so
        that a replay sees all that happened so far (each process batches its events for a
        fraction of a second)."""
        await self._flush_hosts()
        for pool in self.parts.pools.values():
            with contextlib.suppress(Exception):  # a pool that is gone has nothing to flush
                await asyncio.wait_for(pool.flush(), 10)
        await self.runtime.node.flush()

    async def _flush_hosts(self) -> None:
        # By address: a host that is gone (a crashed job) is not looked up, and neither is a
        # remote (A2A) agent, which has no host here.
        for host in {h.host for h in self.parts.handles.values() if isinstance(h, AgentHandle)}:
            with contextlib.suppress(Exception):  # a host that is gone has nothing to flush
                await asyncio.wait_for(self.runtime.lookup(host).flush(), 10)

    async def _replay(self, from_seq: int, pattern: str) -> list[Event]:
        return await self.runtime.replay(self.job_id, from_seq, pattern)

    async def _write_outputs(self, result: JobResult) -> None:
        out = self.spec.outputs
        if out.state_key and self.ctx is not None and self.ctx.state is not None:
            await self.ctx.state.set(out.state_key, result.output)
        if out.file:
            path = Path(out.file)
            if not path.is_absolute() and self.spec.base_dir:
                path = Path(self.spec.base_dir) / path
            path.parent.mkdir(parents=True, exist_ok=True)
            text = (json.dumps(result.output, indent=2, default=str) if out.format == "json"
                    else result.text or str(result.output))
            path.write_text(text + "\n", encoding="utf-8")


async def _call(root: Step, text: str, ctx: ToolContext, inputs: dict[str, Any],
                resume: bool) -> RunResult:
    takes_inputs = "inputs" in inspect.signature(root.run).parameters
    try:
        with resuming(resume):
            result = await (root.run(text, ctx=ctx, inputs=inputs) if takes_inputs  # type: ignore[call-arg]
                            else root.run(text, ctx=ctx))
    except ActorError as exc:  # a hosted root's host died or refused it: a failed job
        hint = ("; its completed steps are checkpointed: resuming the job goes on from them"
                if isinstance(exc, ActorUnavailable) else "")
        return RunResult(status=RunStatus.failed, agent=root.name, reason=f"{exc}{hint}")
    return result if isinstance(result, RunResult) else RunResult.model_validate(result)


def _default_input(inputs: dict[str, Any]) -> str:
    value = inputs["input"] if "input" in inputs else (
        next(iter(inputs.values())) if len(inputs) == 1 else inputs)
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _topic(status: JobStatus) -> str:
    return {JobStatus.completed: "completed", JobStatus.cancelled: "cancelled"}.get(
        status, "failed")


def _brief(inputs: dict[str, Any]) -> dict[str, Any]:
    return {k: (v[:200] if isinstance(v, str) else v) for k, v in inputs.items()}


@contextlib.asynccontextmanager
async def _runtime_for(spec: JobSpec, runtime: Runtime | None, job_id: str,
                       address: str | None) -> AsyncIterator[Runtime]:
    if runtime is not None:
        yield runtime
        return
    async with job_runtime(spec, address=address, job_id=job_id) as own:
        yield own


async def run(spec: JobSpec | str | Path, inputs: dict[str, Any] | None = None, *,
              runtime: Runtime | None = None, job_id: str | None = None,
              address: str | None = None, resume: bool = False) -> JobResult:
    """Run a job to its end: on `runtime`, or on an embedded Ray started (and stopped) here.

    A bad spec or bad inputs raise JobSpecError before anything starts; everything after
    that ends as a JobResult (completed, failed, cancelled or budget_exceeded)."""
    if not isinstance(spec, JobSpec):
        spec = JobSpec.from_file(spec)
    job_id = job_id or new_job_id(spec)
    spec.resolve_inputs(inputs or {})  # fail on bad inputs before starting Ray
    async with _runtime_for(spec, runtime, job_id, address) as rt:
        job = JobRun(spec, rt, job_id=job_id, inputs=inputs)
        try:
            await job.start(save=not resume)
            result = await job.execute(resume=resume)
        finally:
            await asyncio.shield(job.close())
        if runtime is None:  # the runtime ends here: the events stay readable in the log file
            result._replay = _file_replay(event_log_path(rt.settings), job_id)
        return result


def event_log_path(settings: RuntimeSettings) -> str:
    """Where a runtime's event hub keeps its log (as Runtime starts it)."""
    return settings.event_log_path or os.path.expanduser(
        f"~/.llmspell/{settings.namespace}/events.db")


def _file_replay(path: str, job_id: str) -> Replay:
    async def replay(from_seq: int, pattern: str) -> list[Event]:
        def read() -> list[Event]:
            log = EventLog(path)
            try:
                return log.replay(job_id, from_seq, pattern)
            finally:
                log.close()

        return await asyncio.to_thread(read)

    return replay


@contextlib.asynccontextmanager
async def open_job(spec: JobSpec | str | Path, *, runtime: Runtime, job_id: str | None = None,
                   inputs: dict[str, Any] | None = None) -> AsyncIterator[JobRun]:
    """A job's actors started and ready (to serve its agents, or to drive it by hand); all of
    them stopped when the block ends."""
    if not isinstance(spec, JobSpec):
        spec = JobSpec.from_file(spec)
    job = JobRun(spec, runtime, job_id=job_id, inputs=inputs)
    try:
        await job.start(save=False)
        yield job
    finally:
        await asyncio.shield(job.close())


async def load_saved(runtime: Runtime, job_id: str) -> tuple[JobSpec, dict[str, Any]]:
    """The spec and inputs a job was started with, from its state."""
    saved = await StateClient(runtime.node, job_id=job_id).get(JOB_KEY)
    if not isinstance(saved, dict):
        raise LookupError(f"job {job_id!r}: nothing saved to resume it from (was it started "
                          "with the same state store? see the spec's `state` section)")
    spec = JobSpec.from_data(saved["spec"], source=f"job {job_id}",
                             base_dir=saved.get("base_dir"))
    return spec, dict(saved.get("inputs") or {})


async def resume(job_id: str, *, runtime: Runtime) -> JobResult:
    """Finish a job that was interrupted: same spec, inputs and job id; steps that completed
    are taken from their checkpoints instead of being run again."""
    spec, inputs = await load_saved(runtime, job_id)
    return await run(spec, inputs, runtime=runtime, job_id=job_id, resume=True)
