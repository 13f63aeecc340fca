"""The logic of a tool pool, in plain Python (no Ray): testable with a fake clock.

The router actor (llmspell.actors.pool) owns one `Scheduler` and only moves messages; every
decision is made here:

- dispatch: a call goes to the least-loaded replica in rotation that is under its concurrency
  cap; when every replica is at its cap the call waits in a bounded FIFO queue (retries of calls
  lost with a dead replica go to its front: they were admitted already);
- scaling: up as soon as a backlog is not covered by the replicas already starting, down to
  what the peak demand of the last `idle_timeout_s` needed, never below the minimum; a crash
  loop of failing starts backs off;
- health: missed pings count against a replica; a replica that misses too many, or that let a
  call run past its deadline, leaves rotation;
- `Deduper`: a replica runs each idempotency key once and serves repeats from its result.

Calls and replicas are opaque string ids; the router maps them to futures and Ray handles.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, Literal, TypeVar

__all__ = [
    "Clock", "Deduper", "Grant", "Placement", "PoolConfig", "PoolCounters", "QueueFull",
    "Replica", "ReplicaStatus", "ScaleDecision", "Scheduler", "offered", "placement",
]

Clock = Callable[[], float]
Grant = tuple[str, str]  # (call id, replica id): the call may now run on that replica
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """How one tool pool runs. Every field has a default a small job can use as is."""

    name: str
    min_replicas: int = 1
    max_replicas: int = 4
    max_concurrency: int = 1  # calls one replica runs at once (the per-replica cap)
    max_queue: int = 256  # calls that may wait for a free replica; past it a call is refused
    scale_up_delay_s: float = 0.0  # how long a backlog must last before replicas are added
    idle_timeout_s: float = 30.0  # capacity unused this long is given back
    call_grace_s: float = 5.0  # past a call's deadline, how long a replica may take to answer
    max_retries: int = 2  # re-runs of an idempotent call whose replica died under it
    health_interval_s: float = 2.0
    health_timeout_s: float = 5.0
    max_missed_pings: int = 2
    tick_s: float = 0.25  # how often the router reconsiders scaling without being woken
    start_warn_s: float = 60.0  # a replica still not started after this is reported
    # Placement: tools are I/O bound, so a replica asks for no CPU unless told otherwise.
    num_cpus: float = 0.0
    num_gpus: float = 0.0
    resources: Mapping[str, float] = field(default_factory=dict)
    placement: Literal["spread", "default"] = "spread"
    # When no live node offers the custom `resources` any more (the nodes that had them were
    # lost), new replicas are placed without them (num_cpus and num_gpus still hold) instead
    # of waiting for such a node to come back. False: they wait.
    resources_fallback: bool = True
    placement_check_s: float = 1.0  # how often a replica waiting to start is looked at
    dedupe_window: int = 10_000  # idempotency keys a replica remembers
    # "routed": every call goes caller -> router -> replica. "direct": the caller's process
    # takes leases on replica slots from the router and calls the replicas itself (one Ray
    # call per tool call, the router out of the path; see llmspell.actors.leases). A lease goes
    # back after `lease_term_s` (other callers' turn) or `lease_linger_s` unused. Calls then
    # wait for a lease in their own process, where `max_queue` bounds them (past the first).
    dispatch: Literal["routed", "direct"] = "routed"
    lease_term_s: float = 1.0
    lease_linger_s: float = 0.05
    # The pool's own sandbox policy (a Sandbox): its calls run under it, whatever policy the
    # caller's context carries. None: the caller's.
    sandbox: Any = None

    def __post_init__(self) -> None:
        where = f"pool {self.name!r}"
        if not self.name:
            raise ValueError("a pool needs a name")
        if self.min_replicas < 0:
            raise ValueError(f"{where}: min_replicas must be >= 0, got {self.min_replicas}")
        if self.max_replicas < max(1, self.min_replicas):
            raise ValueError(f"{where}: max_replicas must be >= max(1, min_replicas="
                             f"{self.min_replicas}), got {self.max_replicas}")
        for name in ("max_concurrency", "max_missed_pings", "dedupe_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{where}: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_queue", "max_retries", "scale_up_delay_s", "num_cpus", "num_gpus",
                     "call_grace_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{where}: {name} must be >= 0, got {getattr(self, name)}")
        for name in ("idle_timeout_s", "health_interval_s", "health_timeout_s", "tick_s",
                     "start_warn_s", "placement_check_s", "lease_term_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{where}: {name} must be > 0, got {getattr(self, name)}")
        if self.lease_linger_s < 0:
            raise ValueError(f"{where}: lease_linger_s must be >= 0, got {self.lease_linger_s}")
        if self.dispatch not in ("routed", "direct"):
            raise ValueError(f"{where}: dispatch must be 'routed' or 'direct', "
                             f"got {self.dispatch!r}")
        if self.placement not in ("spread", "default"):
            raise ValueError(f"{where}: placement must be 'spread' or 'default', "
                             f"got {self.placement!r}")

    @property
    def router_concurrency(self) -> int:
        """Calls the router handles at once: all that may run, all that may wait, and room to
        refuse the rest and answer stats while the queue is full."""
        return self.max_replicas * self.max_concurrency + self.max_queue + 32


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a new replica goes: its Ray options, and whether they are the fallback (the
    custom resources left out because no live node offers them)."""

    options: dict[str, Any]
    fallback: bool = False

    @property
    def custom(self) -> dict[str, float]:
        return dict(self.options.get("resources") or {})


def offered(request: Mapping[str, float], nodes: Sequence[Mapping[str, float]]) -> bool:
    """Whether one of `nodes` (each a live node's total resources) can ever hold `request`."""
    return any(all(node.get(k, 0.0) >= v for k, v in request.items()) for node in nodes)


def placement(config: PoolConfig, nodes: Sequence[Mapping[str, float]] | None = None
              ) -> Placement:
    """The Ray options of a new replica. `nodes`: the live nodes' total resources, when the
    caller knows them (None: the custom resources are taken as offered)."""
    options: dict[str, Any] = {}
    custom = dict(config.resources)
    fallback = False
    if custom and config.resources_fallback and nodes is not None \
            and not offered(custom, nodes):
        custom, fallback = {}, True
    if custom:
        options["resources"] = custom
    if config.num_gpus:
        options["num_gpus"] = config.num_gpus
    if config.placement == "spread":
        options["scheduling_strategy"] = "SPREAD"  # over a cluster's nodes
    return Placement(options, fallback)


class ReplicaStatus(StrEnum):
    starting = "starting"  # spawned, not yet answering: counts as capacity on the way
    ready = "ready"  # in rotation
    draining = "draining"  # out of rotation; retired once its calls are done


@dataclass(slots=True)
class Replica:
    id: str
    status: ReplicaStatus = ReplicaStatus.starting
    in_flight: int = 0
    completed: int = 0
    last_assigned: int = 0  # dispatch order, so that ties go to the longest-unused replica
    missed_pings: int = 0
    hung: bool = False  # let a call run past its deadline: retired by force, not gracefully


@dataclass(frozen=True, slots=True)
class ScaleDecision:
    current: int
    target: int
    reason: str


@dataclass(slots=True)
class PoolCounters:
    completed: int = 0  # calls answered with a result
    failed: int = 0  # calls answered with an error (the tool's or the pool's)
    retried: int = 0  # re-runs of idempotent calls lost with a dead replica
    rejected: int = 0  # calls refused because the queue was full
    timed_out: int = 0  # calls failed for their deadline (in the queue or on a replica)
    replicas_started: int = 0
    replicas_failed: int = 0


class QueueFull(Exception):
    """Every replica is at its cap and `max_queue` calls already wait."""

    def __init__(self, pool: str, waiting: int) -> None:
        super().__init__(f"pool {pool!r} is full: {waiting} calls already wait for a replica")
        self.pool = pool
        self.waiting = waiting


class Scheduler:
    """The state of one pool: its replicas, the calls on them, the queue, the scaling."""

    def __init__(self, config: PoolConfig, clock: Clock = time.monotonic) -> None:
        self.config = config
        self.counters = PoolCounters()
        self._clock = clock
        self._replicas: dict[str, Replica] = {}
        self._queue: deque[str] = deque()
        self._placed: dict[str, str] = {}  # call id -> replica id
        self._dispatched = 0
        self._backlog_since: float | None = None
        # _last_needed[k]: the last time the demand needed at least k replicas.
        self._last_needed = [-math.inf] * (config.max_replicas + 1)
        self._start_failures = 0
        self._start_retry_at = -math.inf

    # -- views --------------------------------------------------------------------------------

    def replica(self, rid: str) -> Replica | None:
        return self._replicas.get(rid)

    def replicas(self, *statuses: ReplicaStatus) -> list[Replica]:
        return [r for r in self._replicas.values() if not statuses or r.status in statuses]

    @property
    def active(self) -> int:
        """Replicas serving or about to: what the scaling counts."""
        return len(self.replicas(ReplicaStatus.starting, ReplicaStatus.ready))

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return len(self._placed)

    def stats(self) -> dict[str, Any]:
        by_status = {s: len(self.replicas(s)) for s in ReplicaStatus}
        return {
            "pool": self.config.name,
            "replicas": by_status[ReplicaStatus.ready],
            "starting": by_status[ReplicaStatus.starting],
            "draining": by_status[ReplicaStatus.draining],
            "min_replicas": self.config.min_replicas,
            "max_replicas": self.config.max_replicas,
            "max_concurrency": self.config.max_concurrency,
            "queue_depth": self.queue_depth,
            "in_flight": self.in_flight,
            "completed": self.counters.completed,
            "failed": self.counters.failed,
            "retried": self.counters.retried,
            "rejected": self.counters.rejected,
            "timed_out": self.counters.timed_out,
            "replicas_started": self.counters.replicas_started,
            "replicas_failed": self.counters.replicas_failed,
        }

    # -- replicas -----------------------------------------------------------------------------

    def add(self, rid: str) -> None:
        """A replica was spawned; it takes calls once `ready`."""
        self._replicas[rid] = Replica(rid)

    def ready(self, rid: str) -> list[Grant]:
        """The replica answered: into rotation, and queued calls may start on it."""
        replica = self._replicas.get(rid)
        if replica is None or replica.status is not ReplicaStatus.starting:
            return []
        replica.status = ReplicaStatus.ready
        self.counters.replicas_started += 1
        self._start_failures = 0
        return self._drain_queue()

    def start_failed(self, rid: str) -> None:
        """The replica died before it answered. Repeated failures back off (a bad tool or
        image would otherwise respawn replicas in a tight loop)."""
        if self._replicas.pop(rid, None) is None:
            return
        self.counters.replicas_failed += 1
        self._start_failures += 1
        delay = min(30.0, 0.5 * 2 ** (self._start_failures - 1))
        self._start_retry_at = self._clock() + delay

    def remove(self, rid: str) -> list[str]:
        """The replica is gone (died, evicted, retired). Returns the calls that were on it;
        their slots are gone with it."""
        if self._replicas.pop(rid, None) is None:
            return []
        self._note_demand()
        lost = [cid for cid, on in self._placed.items() if on == rid]
        for cid in lost:
            del self._placed[cid]
        return lost

    def evict(self, rid: str) -> list[str]:
        """Like `remove`, for a replica that failed while serving (counted once, even if it
        was already marked hung)."""
        replica = self._replicas.get(rid)
        if replica is not None and not replica.hung:
            self.counters.replicas_failed += 1
        return self.remove(rid)

    def mark_hung(self, rid: str) -> None:
        """The replica let a call run past its deadline and grace: no new calls go to it, and
        it counts as failed."""
        replica = self._replicas.get(rid)
        if replica is not None and not replica.hung:
            replica.hung = True
            replica.status = ReplicaStatus.draining
            self.counters.replicas_failed += 1

    def drain(self, count: int) -> list[str]:
        """Take `count` replicas out of rotation: starting ones first (they serve nothing yet),
        then the least busy, newest first (the oldest are warm)."""
        order = {rid: i for i, rid in enumerate(self._replicas)}
        candidates = sorted(
            self.replicas(ReplicaStatus.starting, ReplicaStatus.ready),
            key=lambda r: (r.status is ReplicaStatus.ready, r.in_flight, -order[r.id]),
        )
        chosen = candidates[:max(0, count)]
        for replica in chosen:
            replica.status = ReplicaStatus.draining
        return [r.id for r in chosen]

    def drained(self) -> list[Replica]:
        """Draining replicas with no call left: removed here, for the router to retire."""
        done = [r for r in self.replicas(ReplicaStatus.draining) if r.in_flight == 0]
        for replica in done:
            del self._replicas[replica.id]
        return done

    # -- health -------------------------------------------------------------------------------

    def ping_ok(self, rid: str) -> None:
        replica = self._replicas.get(rid)
        if replica is not None:
            replica.missed_pings = 0

    def ping_missed(self, rid: str) -> bool:
        """Count a missed ping; True when the replica should leave rotation for good."""
        replica = self._replicas.get(rid)
        if replica is None:
            return False
        replica.missed_pings += 1
        return replica.missed_pings >= self.config.max_missed_pings

    # -- calls --------------------------------------------------------------------------------

    def submit(self, cid: str, *, retry: bool = False) -> str | None:
        """Place a call: the replica to run it on, or None if it now waits in the queue.

        Raises QueueFull when the queue is at its bound (a retry is never refused: its call
        was admitted already, and jumps the queue for the same reason)."""
        rid = None if self._queue else self._pick()
        if rid is not None:
            self._place(cid, rid)
        elif retry:
            self._queue.appendleft(cid)
        elif len(self._queue) >= self.config.max_queue:
            self.counters.rejected += 1
            raise QueueFull(self.config.name, len(self._queue))
        else:
            self._queue.append(cid)
        self._note_demand()
        return rid

    def finish(self, cid: str) -> list[Grant]:
        """The call is over (whatever its outcome): its slot goes to the queue."""
        self._note_demand()  # the demand before this call ended held until now
        rid = self._placed.pop(cid, None)
        replica = self._replicas.get(rid) if rid is not None else None
        if replica is not None:
            replica.in_flight -= 1
            replica.completed += 1
        grants = self._drain_queue()
        self._note_demand()
        return grants

    def withdraw(self, cid: str) -> list[Grant]:
        """The call gave up (its deadline passed). If it had just been granted a slot, the
        slot goes back."""
        if cid in self._placed:
            return self.finish(cid)
        self._note_demand()
        with contextlib.suppress(ValueError):  # neither queued nor placed: nothing to undo
            self._queue.remove(cid)
        self._note_demand()
        return []

    def _pick(self) -> str | None:
        """The least-loaded replica in rotation under its cap; ties go to the one that was
        given a call longest ago, so that load spreads evenly."""
        best: Replica | None = None
        cap = self.config.max_concurrency
        for replica in self._replicas.values():
            if replica.status is not ReplicaStatus.ready or replica.in_flight >= cap:
                continue
            if best is None or (replica.in_flight, replica.last_assigned) < (
                    best.in_flight, best.last_assigned):
                best = replica
        return None if best is None else best.id

    def _place(self, cid: str, rid: str) -> None:
        replica = self._replicas[rid]
        replica.in_flight += 1
        self._dispatched += 1
        replica.last_assigned = self._dispatched
        self._placed[cid] = rid

    def _drain_queue(self) -> list[Grant]:
        grants: list[Grant] = []
        while self._queue:
            rid = self._pick()
            if rid is None:
                break
            cid = self._queue.popleft()
            self._place(cid, rid)
            grants.append((cid, rid))
        return grants

    # -- scaling ------------------------------------------------------------------------------

    def _need(self, demand: int) -> int:
        return min(self.config.max_replicas, math.ceil(demand / self.config.max_concurrency))

    def _note_demand(self) -> None:
        """Record the current demand as needed now. Called before and after every change, so
        that a level is known to have lasted until the moment it changed."""
        now = self._clock()
        for k in range(1, self._need(len(self._placed) + len(self._queue)) + 1):
            self._last_needed[k] = now

    def hold(self, replicas: int) -> None:
        """Count `replicas` as needed now (a manual scale), so that the autoscaler keeps them
        for at least `idle_timeout_s`."""
        now = self._clock()
        for k in range(1, min(replicas, self.config.max_replicas) + 1):
            self._last_needed[k] = now

    def recent_need(self) -> int:
        """Replicas the peak demand of the last `idle_timeout_s` needed."""
        self._note_demand()
        horizon = self._clock() - self.config.idle_timeout_s
        for k in range(self.config.max_replicas, 0, -1):
            if self._last_needed[k] > horizon:
                return k
        return 0

    def decide(self) -> ScaleDecision | None:
        """What the pool should scale to now, or None to stay."""
        cfg, now, current = self.config, self._clock(), self.active
        self._note_demand()
        backlog = len(self._queue)
        if not backlog:
            self._backlog_since = None
        elif self._backlog_since is None:
            self._backlog_since = now
        if current < cfg.min_replicas:
            if now < self._start_retry_at:
                return None
            return ScaleDecision(current, cfg.min_replicas,
                                 f"below the minimum of {cfg.min_replicas} replicas")
        if backlog:
            return self._scale_up(current, backlog, now)
        if self.replicas(ReplicaStatus.starting):
            return None  # new capacity is on its way: judge idleness once it is here
        target = max(cfg.min_replicas, self.recent_need())
        if target < current:
            return ScaleDecision(current, target, f"idle: the peak demand of the last "
                                 f"{cfg.idle_timeout_s:g}s needed {target} replica(s)")
        return None

    def _scale_up(self, current: int, backlog: int, now: float) -> ScaleDecision | None:
        cfg = self.config
        assert self._backlog_since is not None
        if current >= cfg.max_replicas or now - self._backlog_since < cfg.scale_up_delay_s:
            return None
        if now < self._start_retry_at:
            return None
        on_the_way = len(self.replicas(ReplicaStatus.starting)) * cfg.max_concurrency
        uncovered = backlog - on_the_way
        if uncovered <= 0:
            return None
        target = min(cfg.max_replicas, current + math.ceil(uncovered / cfg.max_concurrency))
        return ScaleDecision(current, target, f"backlog of {backlog} call(s) waiting")

    def clamp(self, replicas: int) -> int:
        return max(self.config.min_replicas, min(self.config.max_replicas, replicas))


class Deduper(Generic[T]):
    """Runs the work of each idempotency key once: a repeat while it runs joins it, a repeat
    after it succeeded gets the stored result. Failures are not stored (a retry may run again).
    Without a key the work always runs."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self.hits = 0
        self._done: OrderedDict[str, T] = OrderedDict()
        self._running: dict[str, asyncio.Future[T]] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._done or key in self._running

    async def run(self, key: str | None, work: Callable[[], Awaitable[T]],
                  keep: Callable[[T], bool] = lambda _: True) -> T:
        if key is None:
            return await work()
        if key in self._done:
            self.hits += 1
            self._done.move_to_end(key)
            return self._done[key]
        running = self._running.get(key)
        if running is not None:
            self.hits += 1
            return await asyncio.shield(running)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            result = await work()
        except BaseException as exc:
            _fail(future, exc)
            raise
        finally:
            del self._running[key]
        future.set_result(result)
        if keep(result):
            self._store(key, result)
        return result

    def _store(self, key: str, result: T) -> None:
        self._done[key] = result
        while len(self._done) > self.capacity:
            self._done.popitem(last=False)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if isinstance(exc, asyncio.CancelledError):
        future.cancel()
        return
    future.set_exception(exc)
    future.exception()  # retrieved: no "never retrieved" warning when nobody joined
