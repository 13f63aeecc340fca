"""SpellContext: everything one running spell owns, shared by its bridges.

The Lua state and its scheduler, the job it runs as (runtime, job id, state, event emitter,
hooks, tools, sandbox, model providers), the objects its Lua tables refer to, the results of
the runs it started (for the job's usage and cost), and what must be stopped when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

from llmspell.agents.result import RunResult
from llmspell.llm.registry import ProviderSettings
from llmspell.runtime.hooks import HookRegistry
from llmspell.runtime.logs import get_logger
from llmspell.runtime.runtime import Runtime
from llmspell.runtime.state_client import StateClient
from llmspell.spells.hosts import AgentHosts
from llmspell.spells.relay import Handler, RelayPump
from llmspell.spells.sandbox import LuaSandbox
from llmspell.spells.scheduler import Scheduler
from llmspell.spells.values import is_lua_table
from llmspell.tools.context import ToolContext
from llmspell.tools.registry import ToolRegistry
from llmspell.tools.sandbox import Sandbox

__all__ = ["SpellContext", "SpellOptions"]

Closer = Callable[[], Awaitable[None]]


class SpellOptions:
    """How a spell's agents and tools are set up (what a job spec would say)."""

    def __init__(self, *, providers: dict[str, ProviderSettings | dict[str, Any]] | None = None,
                 sandbox: Sandbox | None = None, default_model: str = "scripted:echo",
                 hook_specs: list[dict[str, Any]] | None = None) -> None:
        self.providers = {k: v if isinstance(v, ProviderSettings)
                          else ProviderSettings.model_validate(v)
                          for k, v in (providers or {}).items()}
        self.sandbox = sandbox or Sandbox()
        self.default_model = default_model
        self.hook_specs = list(hook_specs or [])  # built-in hooks of the spell's agent hosts


class SpellContext:
    def __init__(self, runtime: Runtime, job_id: str, box: LuaSandbox, *,
                 inputs: dict[str, Any], options: SpellOptions, name: str = "spell") -> None:
        from llmspell.tools.builtin import builtin_registry

        self.runtime = runtime
        self.job_id = job_id
        self.name = name
        self.box = box
        self.lua = box.lua
        self.scheduler = Scheduler(box)
        self.inputs = inputs
        self.options = options
        self.log = get_logger(job_id=job_id, actor=f"spell:{name}")
        self.hooks = HookRegistry(emit=self.emit)
        self.state = StateClient(runtime.node, job_id=job_id, hooks=self.hooks)
        self.tools = ToolRegistry(builtin_registry())
        self.results: list[RunResult] = []
        self.failed_runs: list[RunResult] = []  # cancelled or failed, raised into Lua
        self.handlers: dict[str, Handler] = {}
        self.relay = RelayPump(runtime.settings.namespace, f"{job_id}/spell-relay",
                               self.handlers)
        self._refs: dict[int, Any] = {}
        self._ids = itertools.count(1)
        self._closers: list[Closer] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.hosts = AgentHosts(self)  # after _closers: it registers its own close

    # -- the job's side ---------------------------------------------------------------------

    def emit(self, topic: str, payload: dict[str, Any]) -> None:
        self.runtime.node.publish_nowait(topic, payload, job_id=self.job_id)

    def tool_context(self) -> ToolContext:
        """The context of work the spell starts in the driver (tool calls, workflows)."""
        return ToolContext(job_id=self.job_id, chain=(), sandbox=self.options.sandbox,
                           state=self.state, emit=self.emit, hooks=self.hooks)

    def record(self, result: RunResult) -> RunResult:
        self.results.append(result)
        return result

    # -- objects behind Lua tables ----------------------------------------------------------

    def ref(self, obj: Any, **fields: Any) -> dict[str, Any]:
        """Keep `obj`; the table Lua holds for it."""
        number = next(self._ids)
        self._refs[number] = obj
        return {"__ref": number, **fields}

    def deref(self, value: Any, kind: type | tuple[type, ...] | None = None) -> Any:
        """The object behind a Lua table made by `ref` (TypeError for anything else)."""
        number = value["__ref"] if is_lua_table(value) or isinstance(value, dict) else None
        obj = self._refs.get(number) if isinstance(number, int) else None
        if obj is None or (kind is not None and not isinstance(obj, kind)):
            raise TypeError(f"expected {_kind_name(kind)}, got {_lua_type(value)}")
        return obj

    def forget(self, value: Any) -> None:
        number = value["__ref"] if is_lua_table(value) else None
        if isinstance(number, int):
            self._refs.pop(number, None)

    # -- ownership --------------------------------------------------------------------------

    def on_close(self, closer: Closer) -> None:
        self._closers.append(closer)

    def spawn(self, work: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        """A background task of the spell (an event callback loop); cancelled at close."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.warning("spell background task failed", error=repr(task.exception()))

    async def close(self) -> None:
        """Stop everything the spell started, last started first."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for closer in reversed(self._closers):
            try:
                await closer()
            except Exception as exc:
                self.log.warning("spell cleanup step failed", error=repr(exc))
        await self.relay.close()
        with contextlib.suppress(Exception):
            await self.runtime.node.flush()


def _kind_name(kind: type | tuple[type, ...] | None) -> str:
    if kind is None:
        return "an llmspell object"
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(getattr(k, "lua_name", k.__name__) for k in kinds)


def _lua_type(value: Any) -> str:
    if value is None:
        return "nil"
    if is_lua_table(value):
        return "a table"
    return type(value).__name__
