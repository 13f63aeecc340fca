"""ToolPool: a router actor and N replica actors running tools, scaled on demand.

    pool = runtime.spawn_pool("search", tools=[web_search], min_replicas=1, max_replicas=8)
    await pool.wait_ready()
    executor = RoutedExecutor({"web_search": pool.executor()})   # an agent's tool calls go there
    print(await pool.stats())

- `PoolRouter` takes `pool.call` asks, places each on the least-loaded replica under the
  per-replica cap (or queues it), and relays the outcome. Every decision is made by the plain
  `Scheduler` of llmspell.actors.scaling; this shell only moves messages, spawns and kills
  replicas, pings them, and publishes `pool.scaled` / `pool.replica_failed` events.
- `PoolReplica` hosts the tool instances (pickled to it at spawn) and runs
  `tool.invoke(arguments, ctx)`, once per idempotency key.
- A replica that dies mid-call: idempotent calls are run again elsewhere; a tool that reconciles
  (`Tool.reconcile`) is first asked whether the lost attempt's effect happened, and its result
  is returned without a second run if so; any other call fails with ToolUnavailable, never run
  twice, since nobody knows whether its effect happened.
- Outcomes travel as data (`{"ok": true, "result": ...}` or `{"ok": false, "error": ...}`), so
  that a tool's error reaches the caller as the same ToolError subclass, fields included;
  RemoteError is left to mean the pool machinery itself failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
from collections import OrderedDict
from collections.abc import Coroutine, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import ray
from pydantic import BaseModel
from ray.exceptions import RayActorError, RayTaskError

from llmspell.actors.base import ActorBase
from llmspell.actors.leases import Routed, flush_leases, holder_for, run_direct
from llmspell.actors.outcomes import (
    CALL,
    LEASE,
    NO_DEADLINE_S,
    RELEASE,
    RUN,
    SCALE,
    STATS,
    WITHDRAW,
    Outcome,
    PoolQueueFull,
    error_from_wire,
    error_to_wire,
    failure,
    gave_up,
    hung,
    lost_not_retried,
    make_tool_error,
    packable,
    queue_timeout,
)
from llmspell.actors.scaling import (
    Deduper,
    PoolConfig,
    QueueFull,
    Replica,
    Scheduler,
    offered,
    placement,
)
from llmspell.runtime.errors import (
    ActorNotFound,
    ActorUnavailable,
    AskTimeout,
    Cancelled,
    CodecError,
    RemoteError,
)
from llmspell.runtime.messages import Envelope, Priority, new_id
from llmspell.runtime.node import Node
from llmspell.runtime.spawning import spawn_actor
from llmspell.tools.base import Tool
from llmspell.tools.context import ToolContext
from llmspell.tools.errors import (
    ToolError,
    ToolNotFound,
    ToolTimeout,
    ToolUnavailable,
)
from llmspell.tools.sandbox import Sandbox

if TYPE_CHECKING:
    from llmspell.runtime.runtime import ActorRef

__all__ = [
    "PoolConfig", "PoolExecutor", "PoolQueueFull", "PoolReplica", "PoolRouter", "ToolPoolRef",
    "error_from_wire", "error_to_wire", "pool_config", "router_options",
]

WITHDRAWN_TTL_S = 60.0


def _plain_result(value: Any) -> Any:
    """A tool's result as data the envelope codec carries: a pydantic model as its JSON form,
    anything else msgpack cannot pack through JSON (as `render_result` would show it)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if packable(value):
        return value
    return json.loads(json.dumps(value, default=str))


def _sooner(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


# -- the replica --------------------------------------------------------------------------------

class PoolReplica(ActorBase):
    """Hosts a pool's tools and runs the calls the router places on it."""

    service = True

    def setup(self, tools: Sequence[Tool], pool: str, dedupe_window: int = 10_000,
              sandbox: Sandbox | None = None) -> None:
        self.pool = pool
        self.tools = {t.name: t for t in tools}
        self.dedupe: Deduper[Outcome] = Deduper(dedupe_window)
        self.sandbox = sandbox  # the pool's policy, which its calls run under

    async def handle(self, msg: Envelope) -> Any:
        if msg.type == RUN:
            return await self._run(msg.payload)
        raise ValueError(f"pool replica {self.address!r} does not handle {msg.type!r}")

    async def _run(self, call: dict[str, Any]) -> Outcome:
        name = str(call.get("tool"))
        tool = self.tools.get(name)
        if tool is None:
            return failure(ToolNotFound(name, sorted(self.tools)), name)
        # A retried call whose key already completed here gets the stored outcome.
        return await self.dedupe.run(call.get("key"), lambda: self._invoke(tool, call),
                                     keep=lambda outcome: bool(outcome["ok"]))

    async def _invoke(self, tool: Tool, call: dict[str, Any]) -> Outcome:
        wire = call.get("ctx") or {}
        job = str(wire.get("job_id") or "") or None  # the caller's job, if the pool serves many

        def emit(topic: str, payload: dict[str, Any]) -> None:
            self.node.publish_nowait(topic, payload, job_id=job)

        ctx = ToolContext.from_wire(wire, state=self.state, emit=emit)
        if self.sandbox is not None:
            ctx.sandbox = self.sandbox
        # The tool sees the key this call is deduplicated by, so that it can key its effect.
        ctx.idempotency_key = ctx.idempotency_key or call.get("key")
        try:
            if call.get("attempt") and tool.reconciles:
                found = await self._reconcile(tool, call, ctx)
                if found is not None:
                    return found
            result = await tool.invoke(call.get("arguments"), ctx)
        except Exception as exc:  # the tool's failure is the call's outcome, not the actor's
            return failure(exc, tool.name)
        return {"ok": True, "result": _plain_result(result)}

    async def _reconcile(self, tool: Tool, call: dict[str, Any], ctx: ToolContext
                         ) -> Outcome | None:
        """A retry after a replica died mid-call: the tool looks for the first attempt's
        effect; found, its result is the outcome and the call does not run again."""
        args = tool.validate(call.get("arguments"))
        async with asyncio.timeout(tool.timeout):
            found = await tool.reconcile(args, ctx)
        ctx.publish("tool.reconciled", {"tool": tool.name, "key": ctx.idempotency_key,
                                        "found": found is not None, "pool": self.pool,
                                        "attempt": call.get("attempt")})
        if found is None:
            return None
        return {"ok": True, "result": _plain_result(found.result)}


# -- the router ---------------------------------------------------------------------------------

class _PoolStopped(Exception):
    """The pool stopped while the call waited for a replica."""


class _Withdrawn(Exception):
    """The caller gave up on the call while it waited for a replica."""


class _Lost(Exception):
    """The replica running a call died or was evicted under it."""

    def __init__(self, replica: str) -> None:
        super().__init__(replica)
        self.replica = replica


class PoolRouter(ActorBase):
    """Receives a pool's calls, places them on replicas, scales and heals the replica set."""

    service = True

    def setup(self, tools: Sequence[Tool], config: PoolConfig) -> None:
        self.pool = config
        self.tools = {t.name: t for t in tools}
        self._tool_list = list(tools)
        self.sched = Scheduler(config)
        self._handles: dict[str, Any] = {}
        self._pids: dict[str, int] = {}
        self._waiters: dict[str, asyncio.Future[str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stopped_reason: str | None = None  # set once the router is stopping
        self._calls: dict[str, str] = {}  # idempotency key -> id, of the calls here now
        self._leases: dict[str, tuple[str, float]] = {}  # lease id -> (replica, granted at)
        # A lease still out this long after it was granted has a dead holder: its last call
        # started before the term ended and lasted at most its tool's timeout and the grace.
        longest = max((t.timeout or NO_DEADLINE_S) for t in tools) if tools else NO_DEADLINE_S
        self._lease_limit_s = config.lease_term_s + longest + config.call_grace_s
        self._no_leases = asyncio.Event()
        self._no_leases.set()
        # Keys withdrawn before their call arrived (a withdrawal may overtake its call), with
        # when: forgotten after WITHDRAWN_TTL_S, so that a later call reusing a key runs.
        self._withdrawn: OrderedDict[str, float] = OrderedDict()
        self._custom: dict[str, dict[str, float]] = {}  # the custom resources a replica asked
        self._fallback = False  # the last replica was placed without the custom resources
        self._seen = False  # a replica has started on the custom resources

    # -- lifecycle ------------------------------------------------------------------------------

    async def on_start(self) -> None:
        self._own(self._control_loop(), "control")
        self._own(self._health_loop(), "health")

    async def on_restart(self) -> None:
        # Ray restarted the router: its replicas died with it (they are owned by it).
        await self.on_start()

    async def stop(self, reason: str = "stopped") -> int:
        """Stop as any actor does (calls running on replicas finish), but first answer the
        calls still waiting for a replica: they would wait for their whole deadline, and for
        nothing when the replica they wait for cannot start (its resources are not there)."""
        if not self._stopping:
            self._stopped_reason = reason
            for waiter in list(self._waiters.values()):
                if not waiter.done():
                    waiter.set_exception(_PoolStopped(reason))
            await self._leases_back(self.pool.lease_term_s + self.pool.call_grace_s)
        return await super().stop(reason)

    async def _leases_back(self, timeout: float) -> None:
        """Direct calls running on replicas finish too: their leases come back at the end of
        their term (the mailbox is still open for the releases), or the wait ends."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._no_leases.wait()

    async def on_stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # A replica's last events (the calls it handled) wait in its batcher; killed at once,
        # they would never reach the job's log.
        await asyncio.gather(*(self._flush(h) for h in self._handles.values()))
        for rid, handle in list(self._handles.items()):
            self._kill(rid, handle)

    async def flush(self) -> None:
        """The router's own events, and its replicas' (the calls they handled)."""
        await asyncio.gather(*(self._flush(h) for h in self._handles.values()))
        await super().flush()

    @staticmethod
    async def _flush(handle: Any) -> None:
        with contextlib.suppress(Exception):  # a dead or hung replica has nothing to give
            await asyncio.wait_for(handle.flush.remote(), 2.0)

    def _own(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Start a task the router owns: cancelled at stop, its failure logged, not lost."""
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.address}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("pool task failed", task=task.get_name(),
                           error=repr(task.exception()))

    # -- messages -------------------------------------------------------------------------------

    async def handle(self, msg: Envelope) -> Any:
        if msg.type == CALL:
            return await self._call(msg.payload)
        if msg.type == STATS:
            return self._stats()
        if msg.type == SCALE:
            return await self._scale_to(int(msg.payload), "requested")
        if msg.type == WITHDRAW:
            return self._withdraw(str(msg.payload))
        if msg.type == LEASE:
            return await self._lease(msg.payload)
        if msg.type == RELEASE:
            return self._release(msg.payload)
        raise ValueError(f"pool router {self.address!r} does not handle {msg.type!r}")

    def _stats(self) -> dict[str, Any]:
        return {
            **self.sched.stats(), "address": self.address, "dispatch": self.pool.dispatch,
            "leases": len(self._leases),
            "replica_list": [{**asdict(r), "status": str(r.status), "pid": self._pids.get(r.id)}
                             for r in self.sched.replicas()],
        }

    # -- one call -------------------------------------------------------------------------------

    async def _call(self, req: dict[str, Any]) -> Outcome:
        name = str(req.get("tool"))
        tool = self.tools.get(name)
        if tool is None:
            close = difflib.get_close_matches(name, list(self.tools), n=3)
            return self._count(failure(ToolNotFound(name, close or sorted(self.tools)[:5]),
                                        name))
        # A lost call may run again if that cannot duplicate its effect: the tool is
        # idempotent, or it reconciles (finds the effect of the lost attempt) before a retry.
        idempotent = tool.reconciles or (tool.idempotent and bool(req.get("idempotent", True)))
        ctx = req.get("ctx") or {}
        budget = _sooner(tool.timeout, ctx.get("remaining"))
        loop = asyncio.get_running_loop()
        deadline = None if budget is None else loop.time() + budget
        key = str(req.get("idempotency_key") or new_id())
        call: dict[str, Any] = {"tool": name, "arguments": req.get("arguments"), "ctx": ctx,
                                "key": key}
        cid = new_id()
        if self._withdrawn.pop(key, None) is not None:
            return self._count(failure(Cancelled("withdrawn by its caller"), name))
        self._calls[key] = cid
        try:
            return await self._attempts(name, call, cid, idempotent, deadline, budget)
        finally:
            if self._calls.get(key) == cid:
                del self._calls[key]

    async def _attempts(self, name: str, call: dict[str, Any], cid: str, idempotent: bool,
                        deadline: float | None, budget: float | None) -> Outcome:
        lost_on: str | None = None
        for attempt in range(self.pool.max_retries + 1):
            try:
                rid = await self._acquire(cid, name, deadline, budget, lost_on=lost_on)
                attempt_call = {**call, "attempt": attempt}
                return self._count(await self._run_on(rid, cid, attempt_call, deadline, budget))
            except ToolError as exc:
                return self._count(failure(exc, name))
            except _Withdrawn:
                # Its caller is gone (cancelled): a call that has not started never starts.
                return self._count(failure(Cancelled("withdrawn by its caller"), name))
            except _Lost as lost:
                if not idempotent:
                    return self._count(failure(lost_not_retried(name, lost.replica), name))
                lost_on = lost.replica
                if attempt < self.pool.max_retries:
                    self.sched.counters.retried += 1
        return self._count(failure(gave_up(name, self.pool.max_retries + 1), name))

    # -- leases (dispatch "direct") ---------------------------------------------------------

    async def _lease(self, req: dict[str, Any]) -> dict[str, Any]:
        """A slot on a replica for the caller to run calls on itself, once one is free (the
        queue, its bound and the deadline are those of a routed call). Failures are not call
        outcomes here: the caller counts its calls' outcomes and sends them with its leases."""
        if self.pool.dispatch != "direct":
            return {"ok": False, "routed": True}
        name = str(req.get("tool"))
        budget = req.get("budget")
        budget = None if budget is None else max(0.0, float(budget))
        loop = asyncio.get_running_loop()
        deadline = None if budget is None else loop.time() + budget
        key, lid = str(req.get("request") or new_id()), new_id()
        if self._withdrawn.pop(key, None) is not None:
            return {"ok": False, "withdrawn": True}
        self._calls[key] = lid
        try:
            rid = await self._acquire(lid, name, deadline, budget,
                                      lost_on=req.get("lost_on") or None)
        except _Withdrawn:
            return {"ok": False, "withdrawn": True}
        except ToolError as exc:
            return failure(exc, name)
        finally:
            if self._calls.get(key) == lid:
                del self._calls[key]
        self._leases[lid] = (rid, loop.time())
        self._no_leases.clear()
        cfg = self.pool
        return {"ok": True, "lease": lid, "replica": rid, "term_s": cfg.lease_term_s,
                "linger_s": cfg.lease_linger_s, "max_retries": cfg.max_retries,
                "grace_s": cfg.call_grace_s, "max_queue": cfg.max_queue}

    def _release(self, req: dict[str, Any]) -> bool:
        """A lease comes back with the outcomes of the calls run under it; a replica it found
        dead is evicted, one that hung leaves rotation. False: the lease was not out."""
        counts = {k: int(req.get(k) or 0) for k in ("completed", "failed", "timed_out",
                                                        "retried", "rejected")}
        c = self.sched.counters
        c.completed += counts["completed"]
        c.failed += counts["failed"]
        c.timed_out += counts["timed_out"]
        c.retried += counts["retried"]
        c.rejected += counts["rejected"]
        entry = self._leases.pop(str(req.get("lease")), None)
        if entry is None:
            return False
        if not self._leases:
            self._no_leases.set()
        rid = entry[0]
        if req.get("lost"):
            self._evict(rid, f"died during a call: {req['lost']}")
        elif req.get("hung"):
            self._hung(rid)
        self._grant(self.sched.finish(str(req.get("lease"))))
        return True

    def _reclaim_leases(self) -> None:
        """Take back the slots of leases whose holder died without returning them."""
        now = asyncio.get_running_loop().time()
        for lid, (rid, granted) in list(self._leases.items()):
            if now - granted > self._lease_limit_s:
                del self._leases[lid]
                if not self._leases:
                    self._no_leases.set()
                self.log.warning("pool lease reclaimed", lease=lid, replica=rid,
                                 held_s=round(now - granted, 1))
                self.node.publish_nowait("pool.lease_reclaimed", {
                    "pool": self.address, "lease": lid, "replica": rid,
                    "held_s": round(now - granted, 1)})
                self._grant(self.sched.finish(lid))

    def _count(self, outcome: Outcome) -> Outcome:
        counters = self.sched.counters
        if outcome["ok"]:
            counters.completed += 1
        else:
            counters.failed += 1
            if outcome["error"]["type"] == "ToolTimeout":
                counters.timed_out += 1
        return outcome

    async def _acquire(self, cid: str, tool: str, deadline: float | None,
                       budget: float | None, *, lost_on: str | None) -> str:
        """A replica with a free slot for the call, waiting in the queue if need be.
        `lost_on`: the replica that died under the call's last attempt, if it is a retry."""
        if self._stopped_reason is not None:
            raise self._unavailable(tool)
        try:
            rid = self.sched.submit(cid, retry=lost_on is not None)
        except QueueFull as full:
            raise PoolQueueFull(tool, self.address, full.waiting) from None
        if rid is not None:
            return rid
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters[cid] = waiter
        self._wake.set()  # a backlog: the control loop decides on scaling now, not next tick
        remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(remaining):
                return await waiter
        except _PoolStopped:
            self._grant(self.sched.withdraw(cid))
            raise self._unavailable(tool) from None
        except _Withdrawn:
            self._grant(self.sched.withdraw(cid))
            raise
        except TimeoutError:
            self._grant(self.sched.withdraw(cid))
            raise queue_timeout(tool, budget, self.address, lost_on) from None
        finally:
            self._waiters.pop(cid, None)

    def _withdraw(self, key: str) -> bool:
        """The caller gave up on the call keyed `key`: if it still waits for a replica, it
        leaves the queue and never starts (True). One running already runs to its end. A key
        not seen yet is remembered, for a withdrawal that overtook its call."""
        cid = self._calls.get(key)
        if cid is None:
            now = asyncio.get_running_loop().time()
            self._withdrawn[key] = now
            oldest = now - WITHDRAWN_TTL_S
            while len(self._withdrawn) > self.pool.dedupe_window or \
                    next(iter(self._withdrawn.values())) < oldest:
                self._withdrawn.popitem(last=False)
            return False
        waiter = self._waiters.get(cid)
        if waiter is None or waiter.done():
            return False  # running on a replica already: it runs to its end
        waiter.set_exception(_Withdrawn())
        return True

    def _unavailable(self, tool: str) -> ToolUnavailable:
        return ToolUnavailable(tool, f"pool {self.address!r} stopped ({self._stopped_reason}) "
                                     "before a replica was free for the call")

    def _grant(self, grants: list[tuple[str, str]]) -> None:
        """Wake the calls the scheduler gave a slot to. A call that no longer waits gives its
        slot straight back."""
        while grants:
            cid, rid = grants.pop(0)
            waiter = self._waiters.get(cid)
            if waiter is not None and not waiter.done():
                waiter.set_result(rid)
            else:
                grants.extend(self.sched.finish(cid))

    async def _run_on(self, rid: str, cid: str, call: dict[str, Any], deadline: float | None,
                      budget: float | None) -> Outcome:
        """Run the call on replica `rid`; raises _Lost if the replica dies under it."""
        left = None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())
        ask_timeout = NO_DEADLINE_S if left is None else left + self.pool.call_grace_s
        # The replica's own timeout is what is left of the budget after the queue; when that is
        # (within 10 ms) the tool's own timeout, leave it to the tool, whose error then reads
        # "within 1s" rather than "within 0.99997s".
        timeout = self.tools[call["tool"]].timeout
        if left is not None and timeout is not None and left >= timeout - 0.01:
            left = None
        payload = {**call, "ctx": {**call["ctx"], "remaining": left}}
        try:
            return await self.node.ask(rid, RUN, payload, timeout=ask_timeout)  # type: ignore[no-any-return]
        except AskTimeout:
            # Its own timeout should have answered long ago: the replica is hung.
            self._hung(rid)
            raise hung(call["tool"], budget or ask_timeout, rid) from None
        except (ActorUnavailable, ActorNotFound) as exc:
            self._evict(rid, f"died during a call: {exc}")
            raise _Lost(rid) from None
        except CodecError as exc:
            raise ToolError(call["tool"], f"the call cannot be sent: {exc}") from None
        except RemoteError as exc:
            raise ToolError(call["tool"], f"replica {rid!r} failed: {exc.error_type}: "
                                          f"{exc.remote_message}") from None
        finally:
            self._grant(self.sched.finish(cid))

    # -- replicas -------------------------------------------------------------------------------

    def _spawn_replica(self) -> None:
        cfg = self.pool
        rid = f"{self.address}/replica-{new_id()[-12:]}"
        where = placement(cfg, self._live_nodes())
        if where.fallback and not self._fallback:
            self.log.warning("pool placed without its resources", pool=self.address,
                             resources=dict(cfg.resources))
            self.node.publish_nowait("pool.placement_fallback", {
                "pool": self.address, "resources": dict(cfg.resources),
                "reason": "no live node offers them"})
        self._fallback = where.fallback
        handle = spawn_actor(
            self.node, PoolReplica, rid,
            (self._tool_list, self.address, cfg.dedupe_window, cfg.sandbox),
            job_id=self.job_id, settings=self.settings, num_cpus=cfg.num_cpus,
            concurrency=cfg.max_concurrency, ray_options=where.options)
        self._handles[rid] = handle
        self._custom[rid] = where.custom
        self.sched.add(rid)
        self._own(self._await_start(rid, handle), f"start:{rid}")

    def _live_nodes(self) -> list[dict[str, float]] | None:
        """The live nodes' total resources, when the pool may fall back: it asks for custom
        resources and a replica has run on them before. None otherwise, or when the cluster
        cannot say: the resources are then taken as offered. (Resources never offered yet are
        waited for: an autoscaler may be adding the node that has them.)"""
        if not self.pool.resources or not self.pool.resources_fallback or not self._seen:
            return None
        try:
            nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
        except Exception as exc:  # the GCS busy or restarting: place as asked, look again later
            self.log.warning("cannot list the cluster's nodes", error=repr(exc))
            return None
        return [dict(n.get("Resources") or {}) for n in nodes if n.get("Alive")]

    def _unplaceable(self, rid: str) -> bool:
        """The replica waits for custom resources that no live node offers any more."""
        custom = self._custom.get(rid)
        if not custom:
            return False
        nodes = self._live_nodes()
        return nodes is not None and not offered(custom, nodes)

    async def _await_start(self, rid: str, handle: Any) -> None:
        """Into rotation once the replica answers. A replica waiting for resources (a cluster
        scaling up) is reported once and left waiting, unless what it waits for is gone from
        the cluster (its nodes were lost): then it is replaced by one placed without them
        (`resources_fallback`). One that died is replaced."""
        cfg = self.pool
        loop = asyncio.get_running_loop()
        started, warned = loop.time(), False
        ping = asyncio.ensure_future(handle.ping.remote())
        try:
            while True:
                done, _ = await asyncio.wait({ping}, timeout=cfg.placement_check_s)
                if done:
                    break
                if self.sched.replica(rid) is None:
                    return  # evicted or drained while it waited
                waited = loop.time() - started
                if self._unplaceable(rid):
                    await self._replace_unplaceable(rid, handle, waited)
                    return
                if not warned and waited >= cfg.start_warn_s:
                    warned = True
                    self.log.warning("pool replica not started yet", replica=rid,
                                     waited_s=round(waited, 1))
                    await self.publish("pool.replica_pending", {
                        "pool": self.address, "replica": rid, "waited_s": round(waited, 1)})
            info = await ping
        except (RayActorError, RayTaskError) as exc:
            if self.sched.replica(rid) is not None:
                self.sched.start_failed(rid)
                self._forget(rid)
                await self.publish("pool.replica_failed", {
                    "pool": self.address, "replica": rid, "reason": f"failed to start: {exc}",
                    "in_flight": 0})
                self._wake.set()
            return
        finally:
            ping.cancel()
        if self.sched.replica(rid) is None:
            return  # drained while it started; being retired
        self._pids[rid] = int(info["pid"])
        self._seen = self._seen or bool(self._custom.get(rid))
        self._grant(self.sched.ready(rid))

    async def _replace_unplaceable(self, rid: str, handle: Any, waited: float) -> None:
        """Give up on a replica waiting for resources no live node has: kill it and let the
        control loop start another, which `placement` puts where the pool can run now."""
        custom = self._custom.get(rid) or {}
        self.sched.remove(rid)
        self._kill(rid, handle)
        self.log.warning("pool replica unplaceable, replaced", replica=rid, resources=custom)
        await self.publish("pool.replica_failed", {
            "pool": self.address, "replica": rid, "in_flight": 0,
            "reason": f"waited {waited:.1f}s for resources no live node offers "
                      f"({custom}); replaced by a replica placed without them"})
        self._wake.set()

    def _evict(self, rid: str, reason: str) -> None:
        """Take a failed replica out for good (once), kill it, and let the control loop
        replace it. Its other in-flight calls see their asks fail and decide for themselves."""
        replica = self.sched.replica(rid)
        if replica is None:
            return
        reported = replica.hung  # its failure was published when it was found hung
        lost = self.sched.evict(rid)
        self.log.warning("pool replica evicted", replica=rid, reason=reason)
        if not reported:
            self.node.publish_nowait("pool.replica_failed", {
                "pool": self.address, "replica": rid, "reason": reason, "in_flight": len(lost),
                "pid": self._pids.get(rid)})
        handle = self._handles.get(rid)
        if handle is not None:
            self._kill(rid, handle)
        self._wake.set()

    def _hung(self, rid: str) -> None:
        replica = self.sched.replica(rid)
        if replica is None or replica.hung:
            return
        self.sched.mark_hung(rid)
        self.node.publish_nowait("pool.replica_failed", {
            "pool": self.address, "replica": rid, "pid": self._pids.get(rid),
            "reason": "a call ran past its deadline and grace; out of rotation"})
        self._wake.set()

    def _kill(self, rid: str, handle: Any) -> None:
        with contextlib.suppress(Exception):  # already dead is fine
            ray.kill(handle, no_restart=True)
        self._forget(rid)

    def _forget(self, rid: str) -> None:
        self._handles.pop(rid, None)
        self._custom.pop(rid, None)
        self._pids.pop(rid, None)
        self.node.forget(rid)

    async def _retire(self, replica: Replica) -> None:
        """A drained replica leaves: its events are flushed first (unless it is hung)."""
        handle = self._handles.get(replica.id)
        if handle is None:
            return
        if not replica.hung:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await handle.flush.remote()
        self._kill(replica.id, handle)

    # -- scaling and health ---------------------------------------------------------------------

    async def _control_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.pool.tick_s):
                    await self._wake.wait()
            self._wake.clear()
            decision = self.sched.decide()
            if decision is not None:
                await self._scale_to(decision.target, decision.reason)
            for replica in self.sched.drained():
                self._own(self._retire(replica), f"retire:{replica.id}")

    async def _scale_to(self, target: int, reason: str) -> int:
        current = self.sched.active
        if reason == "requested":
            target = self.sched.clamp(target)
            self.sched.hold(target)  # the autoscaler keeps it for at least idle_timeout_s
        if target > current:
            for _ in range(target - current):
                self._spawn_replica()
        elif target < current:
            self.sched.drain(current - target)
        else:
            return target
        self.log.info("pool scaled", pool=self.address, frm=current, to=target, reason=reason)
        await self.publish("pool.scaled", {"pool": self.address, "from": current, "to": target,
                                           "reason": reason})
        self._wake.set()  # retire what is already drained
        return target

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.pool.health_interval_s)
            self._reclaim_leases()
            rids = [r.id for r in self.sched.replicas() if r.id in self._pids]
            await asyncio.gather(*(self._check(rid) for rid in rids))

    async def _check(self, rid: str) -> None:
        handle = self._handles.get(rid)
        if handle is None:
            return
        try:
            async with asyncio.timeout(self.pool.health_timeout_s):
                await handle.ping.remote()
        except TimeoutError:
            if self.sched.ping_missed(rid):
                self._evict(rid, f"missed {self.pool.max_missed_pings} health checks "
                                 f"({self.pool.health_timeout_s:g}s each)")
            return
        except (RayActorError, RayTaskError) as exc:
            self._evict(rid, f"died: {str(exc).strip().splitlines()[0] if str(exc) else exc}")
            return
        self.sched.ping_ok(rid)


# -- the caller's side --------------------------------------------------------------------------

_withdrawals: set[asyncio.Task[None]] = set()


class PoolExecutor:
    """A ToolExecutor that runs calls in a tool pool: an agent's `RoutedExecutor` maps a tool's
    name to one. Failures come back as ToolError subclasses naming the tool."""

    def __init__(self, address: str, node: Node, *, grace_s: float = 10.0,
                 direct: bool | None = None, max_queue: int | None = None) -> None:
        self.address = address
        self.node = node
        self.grace_s = grace_s  # past the call's own deadline, how long the pool may take
        # Whether the pool lends leases (dispatch "direct"); None: its router says at the
        # first call.
        self.direct = direct
        self.max_queue = max_queue

    async def execute(self, tool: Tool, arguments: dict[str, Any] | str, ctx: ToolContext
                      ) -> Any:
        ctx.cancel.raise_if_cancelled()
        limit = _sooner(tool.timeout, ctx.remaining())
        key = ctx.idempotency_key or new_id()
        payload = {"tool": tool.name, "arguments": arguments, "ctx": ctx.to_wire(),
                   "idempotency_key": key, "idempotent": tool.idempotent}
        ask = asyncio.ensure_future(self._dispatch(tool, payload, limit))
        cancel = asyncio.ensure_future(ctx.cancel.wait())
        try:
            await asyncio.wait({ask, cancel}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the caller's task itself was cancelled
            self._give_up(ask, key)
            raise
        finally:
            cancel.cancel()
        if not ask.done():
            # The caller was cancelled: stop waiting. A call that has started runs to its end
            # in the pool; one still queued there is withdrawn and never starts.
            self._give_up(ask, key)
            await asyncio.gather(ask, return_exceptions=True)
            raise Cancelled(ctx.cancel.reason or "cancelled")
        outcome = ask.result()
        if outcome.get("ok"):
            return outcome.get("result")
        raise error_from_wire(outcome.get("error") or {"tool": tool.name})

    async def _dispatch(self, tool: Tool, payload: dict[str, Any], limit: float | None
                        ) -> Outcome:
        if self.direct is not False:
            call = {"tool": tool.name, "arguments": payload["arguments"], "ctx": payload["ctx"],
                    "key": payload["idempotency_key"], "idempotent": payload["idempotent"]}
            try:
                holder = holder_for(self.node, self.address, self.max_queue)
                outcome = await run_direct(holder, tool, call, limit)
            except Routed:
                self.direct = False
            else:
                self.direct = True
                return outcome
        return await self._ask(tool.name, payload, limit)

    def _give_up(self, ask: asyncio.Future[Outcome], key: str) -> None:
        ask.cancel()
        if self.direct:
            return  # a leased call is withdrawn here: it stops waiting for its lease
        task = asyncio.ensure_future(self._withdraw(key))
        _withdrawals.add(task)  # held until sent: a task nobody references may be collected
        task.add_done_callback(_withdrawals.discard)

    async def _withdraw(self, key: str) -> None:
        with contextlib.suppress(Exception):  # a pool that is gone has nothing to withdraw
            await self.node.tell(self.address, WITHDRAW, key, priority=Priority.HIGH)

    async def _ask(self, tool: str, payload: dict[str, Any], limit: float | None) -> Outcome:
        timeout = NO_DEADLINE_S if limit is None else limit + self.grace_s
        try:
            outcome = await self.node.ask(self.address, CALL, payload, timeout=timeout)
        except AskTimeout:
            raise make_tool_error(ToolTimeout, tool, f"no result within {timeout:g}s from "
                                  f"pool {self.address!r}", timeout=timeout) from None
        except (ActorUnavailable, ActorNotFound) as exc:
            raise ToolUnavailable(tool, f"pool {self.address!r} is unavailable: {exc}") from None
        except CodecError as exc:
            raise ToolError(tool, f"the call cannot be sent: {exc}") from None
        except RemoteError as exc:
            raise ToolError(tool, f"pool {self.address!r} failed: {exc.error_type}: "
                                  f"{exc.remote_message}") from None
        if not isinstance(outcome, dict) or "ok" not in outcome:
            raise ToolError(tool, f"pool {self.address!r} sent a malformed outcome")
        return outcome


class ToolPoolRef:
    """A handle on a running pool (what `Runtime.spawn_pool` returns)."""

    def __init__(self, ref: ActorRef, config: PoolConfig) -> None:
        self.ref = ref
        self.config = config
        self.address = ref.address

    def __repr__(self) -> str:
        return f"ToolPoolRef({self.address!r})"

    def executor(self) -> PoolExecutor:
        return PoolExecutor(self.address, self.ref.runtime.node,
                            grace_s=self.config.call_grace_s + 5.0,
                            direct=self.config.dispatch == "direct",
                            max_queue=self.config.max_queue)

    async def stats(self) -> dict[str, Any]:
        """Replicas (ready, starting, draining), queue depth, in flight, completed, retried,
        failed, rejected, timed out, and one entry per replica. (Under dispatch "direct" the
        outcomes counted in other processes arrive with their leases, within `lease_term_s`;
        this process's own go back first.)"""
        if self.config.dispatch == "direct":
            await flush_leases(self.ref.runtime.node, self.address)
        result: dict[str, Any] = await self.ref.ask(STATS, priority=Priority.HIGH)
        return result

    async def scale_to(self, replicas: int) -> int:
        """Scale now (clamped to min..max); returns the target. The autoscaler keeps it for at
        least `idle_timeout_s`, then follows demand again."""
        result: int = await self.ref.ask(SCALE, replicas, priority=Priority.HIGH)
        return result

    async def wait_ready(self, replicas: int | None = None, timeout: float = 60.0
                         ) -> dict[str, Any]:
        """Wait until `replicas` (default: the minimum) are in rotation; returns the stats."""
        want = self.config.min_replicas if replicas is None else replicas
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await self.ref.wait_ready(timeout)
        while True:
            stats = await self.stats()
            if stats["replicas"] >= want:
                return stats
            if loop.time() >= deadline:
                raise TimeoutError(f"pool {self.address!r}: {stats['replicas']} of {want} "
                                   f"replicas ready after {timeout:g}s")
            await asyncio.sleep(0.05)

    async def flush(self) -> None:
        """Wait until the pool's events (pool.scaled, the replicas' handled calls) have left
        its processes."""
        await self.ref.flush()

    async def stop(self) -> None:
        """Finish the calls in progress, then stop the router and its replicas."""
        await self.ref.stop("pool stopped")


def pool_config(name: str, tools: Sequence[Tool], **options: Any) -> PoolConfig:
    """The config of a pool of `tools` (ValueError naming the pool if it is not sound)."""
    if not tools:
        raise ValueError(f"pool {name!r} needs at least one tool")
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise ValueError(f"pool {name!r}: tool names repeat: {sorted(names)}")
    return PoolConfig(name=name, **options)


def router_options(config: PoolConfig) -> dict[str, Any]:
    """Ray options of the router: room for every call it may hold at once, plus pings."""
    return {"max_concurrency": config.router_concurrency + 64}
