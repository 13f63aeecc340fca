"""SupervisorActor: the Ray shell around SupervisorCore.

It starts its children (named actors of the job), notices a death at once (each child's
`watch()` call fails when its process dies) and a hang by a missed health check, and applies
the core's decision: restart the affected children, or stop them all and escalate to its parent
supervisor, up to the top, where the job fails with the chain of causes. Every decision is an
event.

A restart is a fresh actor under the old name, started by this supervisor with `restore=True`
(it restores the child's last snapshot), not Ray's in-place restart: Ray waits about two
seconds before it restarts a dead actor, while a fresh actor answers in well under one (both
measured in benchmarks/patterns.py). Children are therefore created with max_restarts=0; once
the supervisor has killed the dead actor for good the name is free again, and callers that
looked the name up find the replacement (ask_supervised drops a dead handle and looks again).

A child with `standby: true` skips even that process start: the supervisor keeps a spare of it
(`<address>@<generation>`, set up and prepared by `on_standby`, not started), promotes it when
the child dies (it restores the snapshot), and records an alias from the child's address to the
spare's name (llmspell/runtime/aliases.py), which `Node.handle` follows when the address itself
is not found. Then it starts the next spare.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

import ray
from ray.exceptions import RayActorError

from llmspell.actors.base import ActorBase
from llmspell.runtime.aliases import clear_alias, set_alias
from llmspell.runtime.errors import ActorError, ActorNotFound, LlmspellError
from llmspell.runtime.messages import Envelope
from llmspell.runtime.spawning import spawn_actor
from llmspell.runtime.supervised import (
    ChildGivenUp,
    ChildLost,
    PoisonMessage,
    ask_supervised,
    until_back,
)
from llmspell.supervisors.supervisor import (
    ChildSpec,
    Decision,
    SupervisorCore,
    SupervisorSpec,
)

__all__ = ["ChildGivenUp", "ChildLost", "ChildStart", "PoisonMessage", "SupervisorActor",
           "ask_supervised", "until_back"]


class ChildStart:
    """How to start one child: its supervision spec, its actor class and arguments, and spawn
    options (concurrency, num_cpus, snapshot_every, mailbox_capacity...)."""

    def __init__(self, spec: ChildSpec | dict[str, Any], cls: type, *args: Any,
                 options: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.spec = spec if isinstance(spec, ChildSpec) else ChildSpec.model_validate(spec)
        self.cls = cls
        self.args = args
        self.kwargs = kwargs
        self.options = dict(options or {})


class SupervisorActor(ActorBase):
    def setup(self, spec: SupervisorSpec, starts: list[ChildStart],
              parent: str | None = None) -> None:
        names = [s.spec.name for s in starts]
        if names != [c.name for c in spec.children]:
            spec = spec.model_copy(update={"children": [s.spec for s in starts]})
        self.core = SupervisorCore(spec)
        self.starts = {s.spec.name: s for s in starts}
        self.parent = parent
        self.handles: dict[str, Any] = {}
        self.pids: dict[str, int] = {}
        self._expected: set[str] = set()  # children we are restarting: their death is ours
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._health: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._escalated: dict[str, list[str]] = {}  # child supervisor -> its chain of causes
        self._spares: dict[str, tuple[str, Any]] = {}  # child -> (Ray name, handle), ready
        self._warming: dict[str, asyncio.Task[None]] = {}
        self._generation: dict[str, int] = {}
        self._promoted: set[str] = set()  # children the last restart gave a spare

    def address_of(self, child: str) -> str:
        return f"{self.address}.{child}"

    # -- lifecycle ------------------------------------------------------------------------------

    async def on_start(self) -> None:
        for name in self.core.order:
            self._spawn(name)
        await asyncio.gather(*(self._ready(n) for n in self.core.order))
        self._watch_all()
        self._warm_all()

    async def on_restart(self) -> None:
        """This supervisor was restarted: children still alive are watched again; children
        that went down with it (an escalation) are replaced, restored from their snapshots."""
        for name in self.core.order:
            try:
                self.handles[name] = self.node.handle(self.address_of(name))
            except ActorNotFound:
                await self._respawn(name)
        await asyncio.gather(*(self._ready(n) for n in self.core.order))
        self._watch_all()
        self._warm_all()

    async def on_stop(self) -> None:
        self._stop_watching()
        self._drop_spares()
        await asyncio.gather(*(self._stop_child(n) for n in reversed(self.core.order)),
                             return_exceptions=True)
        for name in self.core.order:
            clear_alias(self.settings.namespace, self.address_of(name))

    def _spawn(self, name: str, *, restore: bool = False) -> None:
        start = self.starts[name]
        self.handles[name] = spawn_actor(
            self.node, start.cls, self.address_of(name), start.args, start.kwargs,
            job_id=self.job_id, settings=self.settings, max_restarts=0,
            extra={"restore": restore}, **start.options)

    async def _respawn(self, name: str, timeout: float = 30.0) -> None:
        """A replacement: the warm spare if one is ready, or a fresh actor under the old name,
        which Ray frees a moment after the old death."""
        if await self._promote_spare(name, timeout):
            return
        clear_alias(self.settings.namespace, self.address_of(name))
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._spawn(name, restore=True)
                return
            except LlmspellError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)

    # -- warm standbys -----------------------------------------------------------------------

    def _warm_all(self) -> None:
        for name, spec in self.core.children.items():
            if spec.standby:
                self._warm(name)

    def _warm(self, name: str) -> None:
        task = self._warming.get(name)
        if name in self._spares or (task is not None and not task.done()):
            return
        task = self._warming[name] = asyncio.get_running_loop().create_task(
            self._start_spare(name), name=f"{self.address}:standby:{name}")
        task.add_done_callback(self._report_crash)

    async def _start_spare(self, name: str, timeout: float = 120.0) -> None:
        """A spare for `name`: the same class and arguments under a name of its own, set up
        (its code imported) but not started; it restores the snapshot when promoted."""
        self._generation[name] = generation = self._generation.get(name, 0) + 1
        ray_name = f"{self.address_of(name)}@{generation}"
        start = self.starts[name]
        try:
            handle = spawn_actor(
                self.node, start.cls, self.address_of(name), start.args, start.kwargs,
                job_id=self.job_id, settings=self.settings, max_restarts=0, ray_name=ray_name,
                extra={"restore": True, "standby": True}, **start.options)
            await asyncio.wait_for(handle.warm.remote(), timeout)
        except (LlmspellError, RayActorError, TimeoutError) as exc:
            # Without a spare, a restart starts a fresh process: slower, not wrong.
            self.log.warning("standby not started", child=name, error=repr(exc))
            self._kill_quietly(ray_name)
            return
        except asyncio.CancelledError:  # the supervisor stops: no spare outlives it
            self._kill_quietly(ray_name)
            raise
        self._spares[name] = (ray_name, handle)

    async def _promote_spare(self, name: str, timeout: float) -> bool:
        spare = self._spares.pop(name, None)
        if spare is None:
            return False
        ray_name, handle = spare
        try:
            info = await asyncio.wait_for(handle.promote.remote(), timeout)
        except (RayActorError, TimeoutError) as exc:
            self.log.warning("standby lost", child=name, error=repr(exc))
            self._kill_quietly(ray_name)
            return False
        address = self.address_of(name)
        set_alias(self.settings.namespace, address, ray_name)
        self.node.forget(address)
        self.node.adopt(address, handle)
        self.handles[name], self.pids[name] = handle, int(info["pid"])
        self._promoted.add(name)
        self._warm(name)  # the next failure finds a spare too
        return True

    def _drop_spares(self) -> None:
        for task in self._warming.values():
            task.cancel()
        for ray_name, _ in self._spares.values():
            self._kill_quietly(ray_name)
        self._spares.clear()

    def _kill_quietly(self, ray_name: str) -> None:
        self.node.forget(ray_name)
        with contextlib.suppress(ValueError, RayActorError):
            ray.kill(ray.get_actor(ray_name, namespace=self.settings.namespace),
                     no_restart=True)

    async def _ready(self, name: str, timeout: float = 60.0) -> None:
        info = await asyncio.wait_for(self.handles[name].ping.remote(), timeout)
        self.pids[name] = int(info["pid"])

    # -- noticing failures ------------------------------------------------------------------

    def _watch_all(self) -> None:
        for name in self.core.order:
            self._watch(name)
        if self._health is None and any(c.deadline_s for c in self.core.children.values()):
            self._health = asyncio.get_running_loop().create_task(self._check_health())

    def _watch(self, name: str) -> None:
        old = self._watchers.get(name)
        if old is not None and not old.done():
            return
        task = asyncio.get_running_loop().create_task(
            self._await_death(name), name=f"{self.address}:watch:{name}")
        task.add_done_callback(self._report_crash)
        self._watchers[name] = task

    def _unwatch(self, name: str) -> None:
        """Stop watching a process this supervisor is about to kill itself."""
        old = self._watchers.pop(name, None)
        if old is not None and old is not asyncio.current_task():
            old.cancel()

    def _report_crash(self, task: asyncio.Task[None]) -> None:
        """A watcher that raised must not die unseen: a supervisor that cannot act is broken."""
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        self.log.error("supervision failed", task=task.get_name(), error=repr(error))
        self.node.publish_nowait("supervisor.error", {
            "supervisor": self.address, "task": task.get_name(), "error": repr(error)[:1000]})

    async def _await_death(self, name: str) -> None:
        try:
            await self.handles[name].watch.remote()
        except RayActorError as exc:
            if self._watchers.get(name) is not asyncio.current_task():
                # A stale watcher: this supervisor killed the process itself (a sibling's
                # restart) and watches its successor. Ray may report that death only once the
                # new process is up; taken as a failure, it would restart the children again
                # and spend the budget on a death of its own making.
                return
            chain = self._escalated.pop(name, None)
            cause = " <- ".join(chain) if chain else (
                f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
            await self._failed(name, cause)

    async def _check_health(self) -> None:
        while not self.core.failed:
            await asyncio.sleep(self.core.spec.health_interval_s)
            for name, spec in self.core.children.items():
                if spec.deadline_s is None or name in self._expected:
                    continue
                try:
                    await asyncio.wait_for(self.handles[name].ping.remote(), spec.deadline_s)
                except TimeoutError:
                    self.log.warning("child missed its deadline", child=name)
                    await self._failed(name, f"no answer to a health check within "
                                             f"{spec.deadline_s:g}s (hung)", kill=True)
                except RayActorError:
                    pass  # a death: its watcher reports it

    async def _failed(self, name: str, cause: str, *, kill: bool = False) -> None:
        async with self._lock:  # one decision at a time: a one_for_all restart kills siblings
            if name in self._expected:
                return
            decision = self.core.on_failure(name, cause)
            await self.publish("supervisor.child.failed", {
                "supervisor": self.address, "child": name, "cause": cause,
                "decision": decision.action, "reason": decision.reason,
                "restart": decision.restart})
            if decision.action == "restart":
                await self._restart(decision, kill_failed=kill)
            elif decision.action == "escalate":
                await self._escalate(decision)

    # -- acting on decisions --------------------------------------------------------------------

    async def _restart(self, decision: Decision, *, kill_failed: bool) -> None:
        started = time.monotonic()
        self._promoted.clear()
        self._expected.update(decision.restart)
        try:
            for name in decision.restart:
                if name != decision.child or kill_failed:
                    self._unwatch(name)
                # The failed child is dead already, but Ray keeps a dead actor's name taken
                # while a handle to it lives (ours); killing it for good frees the name now.
                with contextlib.suppress(ValueError, RayActorError):
                    ray.kill(self.handles[name], no_restart=True)
            await asyncio.gather(*(self._replace(n) for n in decision.restart))
        finally:
            self._expected.difference_update(decision.restart)
        for name in decision.restart:
            self._watchers.pop(name, None)
            self._watch(name)
        await self.publish("supervisor.restarted", {
            "supervisor": self.address, "child": decision.child, "restarted": decision.restart,
            "strategy": str(self.core.spec.strategy),
            "pids": {n: self.pids[n] for n in decision.restart},
            "standby": sorted(self._promoted),
            "elapsed_ms": round((time.monotonic() - started) * 1e3, 1)})

    async def _replace(self, name: str, timeout: float = 60.0) -> None:
        """A fresh actor for a dead child, restored from its snapshot, answering."""
        old = self.pids.get(name)
        await self._respawn(name, timeout)
        await self._ready(name, timeout)
        if self.pids[name] == old:  # cannot be: a new actor is a new process
            raise LlmspellError(f"child {name!r} of {self.address!r} did not come back")

    async def _escalate(self, decision: Decision) -> None:
        self._stop_watching()
        self._drop_spares()
        for name in self.core.order:
            with contextlib.suppress(ValueError, RayActorError):
                ray.kill(self.handles[name], no_restart=True)
        payload = {"supervisor": self.address, "causes": decision.causes,
                   "reason": decision.reason}
        await self.publish("supervisor.escalated", payload)
        if self.parent is not None:
            try:
                await self.node.ask(self.parent, "supervisor.child_failed", {
                    "child": self.address.rsplit(".", 1)[-1], "causes": decision.causes},
                    timeout=10)
                await self.node.flush()
            except ActorError as exc:
                self.log.warning("parent unreachable", parent=self.parent, error=str(exc))
            else:
                # As an OTP supervisor does, exit abnormally: the parent sees the death (with
                # the causes it was just told) and restarts this subtree by its own strategy.
                os._exit(1)
        await self.publish("job.failed", payload)

    def _stop_watching(self) -> None:
        me = asyncio.current_task()  # the watcher escalating must finish its own work
        for task in self._watchers.values():
            if task is not me:
                task.cancel()
        self._watchers.clear()
        if self._health is not None:
            self._health.cancel()

    async def _stop_child(self, name: str) -> None:
        handle = self.handles.get(name)
        if handle is not None:
            await handle.stop.remote("the supervisor stopped")

    # -- messages -------------------------------------------------------------------------------

    async def handle(self, msg: Envelope) -> Any:
        payload = msg.payload if isinstance(msg.payload, dict) else {}
        match msg.type:
            case "supervisor.status":
                return self.status()
            case "supervisor.child_failed":  # a child supervisor gives up; its death follows
                self._escalated[str(payload["child"])] = list(payload.get("causes") or [])
                return True
        raise ValueError(f"supervisor {self.address!r} does not handle {msg.type!r}")

    def status(self) -> dict[str, Any]:
        return {"supervisor": self.address, "failed": self.core.failed,
                "causes": list(self.core.causes),
                "children": {n: {"address": self.address_of(n), "pid": self.pids.get(n),
                                 "restarts": self.core.restart_counts[n],
                                 "standby": n in self._spares}
                             for n in self.core.order}}
