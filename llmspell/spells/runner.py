"""Running a spell as a job: `run_spell(path)` and `exec_spell(code)` return a JobResult.

The spell's file compiles in a fresh sandboxed Lua state (a syntax error raises
SpellSyntaxError before anything starts); the prelude defines the globals; the spell's body
runs as the first coroutine of the scheduler. Whatever happens, everything the spell started
(agent hosts, the relay, subscriptions, background callbacks) is stopped before the result is
returned. The spell's `return` value is the job's output.

How it ends: completed (the body returned); failed (an uncaught Lua error, with the Lua
traceback in `reason`); cancelled (a run the spell did not catch was cancelled, or the task
running the spell was cancelled: Ctrl-C); budget_exceeded (a budget hook cancelled it).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmspell.agents.result import RunResult, RunStatus
from llmspell.jobs.result import JobResult, JobStatus
from llmspell.runtime.runtime import Runtime
from llmspell.spells.bridges import bridge_functions
from llmspell.spells.context import SpellContext, SpellOptions
from llmspell.spells.errors import SpellRuntimeError
from llmspell.spells.prelude import PRELUDE
from llmspell.spells.sandbox import LuaSandbox, SpellLimits
from llmspell.spells.values import from_lua
from llmspell.supervisors.base import sum_usage

__all__ = ["exec_spell", "open_spell", "run_source", "run_spell"]

PrintLine = Callable[[str], None]


async def run_spell(path: Path | str, *, inputs: dict[str, Any], runtime: Runtime,
                    job_id: str, options: SpellOptions | None = None,
                    limits: SpellLimits | None = None,
                    print_line: PrintLine | None = None) -> JobResult:
    """Run the spell in the file at `path` as job `job_id`. `require` finds modules in the
    spell's folder. Raises SpellSyntaxError (the spell does not compile) and OSError (no such
    file) before anything runs; every other way it ends is a JobResult."""
    path = Path(path)
    source = path.read_text(encoding="utf-8")
    return await run_source(source, file=str(path), folder=path.parent, inputs=inputs,
                            runtime=runtime, job_id=job_id, options=options, limits=limits,
                            print_line=print_line)


async def exec_spell(code: str, *, inputs: dict[str, Any], runtime: Runtime, job_id: str,
                     options: SpellOptions | None = None, limits: SpellLimits | None = None,
                     print_line: PrintLine | None = None) -> JobResult:
    """`llmspell exec 'code'`: a one-line spell (named `(exec)`; it cannot `require`)."""
    return await run_source(code, file="(exec)", folder=None, inputs=inputs, runtime=runtime,
                            job_id=job_id, options=options, limits=limits,
                            print_line=print_line)


async def run_source(source: str, *, file: str, folder: Path | None, inputs: dict[str, Any],
                     runtime: Runtime, job_id: str, options: SpellOptions | None = None,
                     limits: SpellLimits | None = None,
                     print_line: PrintLine | None = None) -> JobResult:
    started = time.perf_counter()
    box = LuaSandbox(limits, folder=folder, print_line=_print if print_line is None else print_line)
    main = box.compile(source, file)
    spell = open_spell(box, runtime=runtime, job_id=job_id, inputs=inputs, options=options,
                       name=Path(file).stem.strip("()") or "spell")
    spell.emit("spell.started", {"file": file, "inputs": sorted(inputs)})
    output: Any = None
    status, reason = JobStatus.completed, ""
    try:
        values = await spell.scheduler.call(main)
        output = from_lua(values[0]) if values else None
    except SpellRuntimeError as exc:
        status, reason = _ended_by(spell.failed_runs, exc), str(exc)
        spell.log.warning("spell failed", error=exc.message)
    except asyncio.CancelledError:
        status, reason = JobStatus.cancelled, "the spell was cancelled"
    finally:
        # Cleanup runs even while the spell's task is being cancelled.
        await asyncio.shield(spell.close())
    spell.emit("spell.finished", {"file": file, "status": str(status), "reason": reason[:2000]})
    await runtime.flush()

    async def replay(from_seq: int, pattern: str) -> Any:
        return await runtime.replay(job_id, from_seq, pattern)

    return JobResult(job_id=job_id, status=status, output=output, text=_text(output),
                     reason=reason, usage=sum_usage(spell.results),
                     cost_usd=sum(r.cost_usd for r in spell.results),
                     duration_s=time.perf_counter() - started, _replay=replay)


def open_spell(box: LuaSandbox, *, runtime: Runtime, job_id: str, inputs: dict[str, Any],
               options: SpellOptions | None = None, name: str = "spell") -> SpellContext:
    """A spell's context in `box`, its globals defined, nothing run yet. Whoever opens one
    closes it (`await spell.close()`): run_source does; so does a benchmark that drives Lua
    functions of its own through `spell.scheduler`."""
    spell = SpellContext(runtime, job_id, box, inputs=inputs, options=options or SpellOptions(),
                         name=name)
    prelude = box.load(PRELUDE, "=llmspell")
    prelude(box.lua.table_from(bridge_functions(spell)), box.internals["await"],
            box.lua.table_from(inputs, recursive=True))
    return spell


def _ended_by(failed_runs: list[RunResult], exc: SpellRuntimeError) -> JobStatus:
    """An uncaught error that is a run's cancellation ends the job as that run did."""
    for run in reversed(failed_runs):
        if f"{run.status}: {run.reason or 'no reason given'}" in exc.message:
            if run.status == RunStatus.cancelled:
                return JobResult.from_run("", run).status
            break
    return JobStatus.failed


def _text(output: Any) -> str:
    if output is None:
        return ""
    if isinstance(output, str):
        return output
    return json.dumps(output, ensure_ascii=False, default=str)


def _print(line: str) -> None:
    print(line, flush=True)
