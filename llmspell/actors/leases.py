"""Direct dispatch: the caller runs its pool calls on the replicas itself, under leases.

A pool with `dispatch="direct"` lends its replica slots out. A lease is one slot of one replica;
the router's scheduler counts it as a call in flight, so the placement and the scaling work as
for routed calls; a call waits for a lease in its own process, where the pool's `max_queue`
bounds the waiting calls (past the first). The caller's process keeps its leases in one
`LeaseHolder` per pool, shared by every agent in the process: a call takes a free lease, asks
the replica straight, and gives the lease back for the next call. The router hears of it only
when a lease is asked for (none free here), and when one is returned: after `lease_term_s`, so
that other callers get their turn and the pool can scale down, or after `lease_linger_s` unused.
A tool call is then one Ray call instead of two, with the router's CPU out of its path.

What the router does for a routed call, the caller does here, with the same rules and words:
a call lost with its replica runs again under a new lease only when that cannot duplicate an
effect (the tool is idempotent or reconciles); a replica that does not answer within the call's
deadline and grace is reported hung and leaves rotation; a dead one is reported and replaced.
The calls' outcomes reach the pool's stats when their lease is returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any

from llmspell.actors.outcomes import (
    LEASE,
    NO_DEADLINE_S,
    RELEASE,
    RUN,
    WITHDRAW,
    Outcome,
    PoolQueueFull,
    error_from_wire,
    error_to_wire,
    failure,
    gave_up,
    hung,
    lost_not_retried,
    queue_timeout,
)
from llmspell.runtime.errors import (
    ActorNotFound,
    ActorUnavailable,
    AskTimeout,
    CodecError,
    RemoteError,
)
from llmspell.runtime.messages import Priority, new_id
from llmspell.runtime.node import Node
from llmspell.tools.base import Tool
from llmspell.tools.errors import ToolError, ToolUnavailable

__all__ = ["LeaseHolder", "Routed", "flush_leases", "holder_for", "run_direct"]

_COUNTS = ("completed", "failed", "timed_out", "retried", "rejected")


class Routed(Exception):
    """The pool routes its calls itself (dispatch "routed"): no leases."""


@dataclass(slots=True)
class Lease:
    id: str
    replica: str
    expires: float  # loop time; past it the lease goes back at its next return
    linger_s: float
    max_retries: int
    grace_s: float
    timer: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class _Waiter:
    """A call waiting for a lease here."""

    future: asyncio.Future[Lease]
    tool: str
    deadline: float | None  # loop time
    lost_on: str | None  # a retry: the replica the call was lost with


class LeaseHolder:
    """One process's leases on one pool, shared by all its callers.

    At most one lease request is in flight to the router at a time: the calls waiting here are
    served by leases coming free here as much as by new ones, and a request per waiting call
    would leave the router a queue of requests nobody needs by the time they are granted."""

    def __init__(self, node: Node, pool: str) -> None:
        self.node = node
        self.pool = pool
        self.routed = False
        # Calls that may wait here past the first: the pool's max_queue, from its config or its
        # first lease (unbounded until then). Each process bounds its own waiting calls.
        self.max_queue: int | None = None
        self._idle: deque[Lease] = deque()
        self._waiters: deque[_Waiter] = deque()
        self._busy = 0  # leases lent to a call now
        self._calls = 0  # calls in progress through this holder (kept until they are counted)
        self._request: asyncio.Task[None] | None = None
        self._request_id = ""
        self._withdrawing = False
        self._tasks: set[asyncio.Task[Any]] = set()  # reports of lost and hung replicas
        self._sending: set[asyncio.Task[Any]] = set()  # leases (and counts) going back
        # The outcomes of the calls made here since the router last heard: they travel with
        # the next lease returned.
        self._counts = dict.fromkeys(_COUNTS, 0)

    # -- taking and giving back -------------------------------------------------------------

    async def acquire(self, tool: str, deadline: float | None, budget: float | None, *,
                      lost_on: str | None = None) -> Lease:
        """A lease for one call: a free one here, else the first that comes free or is
        granted, by the call's `deadline` (loop time; `budget` is its whole length, for the
        error). Raises Routed, or the ToolError the router answered (the queue full, the
        pool stopped)."""
        if self.routed:
            raise Routed(self.pool)
        loop = asyncio.get_running_loop()
        while self._idle:
            lease = self._idle.popleft()
            self._stop_linger(lease)
            if lease.replica == lost_on or loop.time() >= lease.expires:
                self._return(lease)
                continue
            self._busy += 1
            return lease
        waiting = sum(1 for w in self._waiters if not w.future.done())
        if self.max_queue is not None and lost_on is None and waiting > self.max_queue:
            self._counts["rejected"] += 1
            raise PoolQueueFull(tool, self.pool, waiting)
        waiter = _Waiter(loop.create_future(), tool, deadline, lost_on)
        self._waiters.append(waiter)
        self._pump()
        try:
            async with asyncio.timeout(None if deadline is None else deadline - loop.time()):
                return await waiter.future
        except BaseException as exc:
            self._abandon(waiter.future)
            if isinstance(exc, TimeoutError):
                raise queue_timeout(tool, budget, self.pool, lost_on) from None
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            self._pump()
            self._forget_if_unused()

    def _abandon(self, future: asyncio.Future[Lease]) -> None:
        """A caller stopped waiting (deadline, cancel): a lease it was handed in that very
        moment serves the next call instead of being lost."""
        if not future.done():
            future.cancel()
        elif not future.cancelled() and future.exception() is None:
            self.give_back(future.result())

    def give_back(self, lease: Lease) -> None:
        """The call on `lease` is over: the lease serves the next call here, waits
        `linger_s` for one, or goes back to the router (its term is over)."""
        self._busy -= 1
        self._offer(lease)

    def _offer(self, lease: Lease) -> None:
        """A free lease: to the first caller waiting, else idle for a while, else back."""
        loop = asyncio.get_running_loop()
        if loop.time() >= lease.expires:
            self._return(lease)
            return
        waiter = self._next_waiting()
        if waiter is not None:
            self._busy += 1
            waiter.future.set_result(lease)
            return
        lease.timer = loop.call_later(lease.linger_s, self._linger_over, lease)
        self._idle.append(lease)

    def _next_waiting(self) -> _Waiter | None:
        return next((w for w in self._waiters if not w.future.done()), None)

    def _linger_over(self, lease: Lease) -> None:
        with contextlib.suppress(ValueError):
            self._idle.remove(lease)
            lease.timer = None
            self._return(lease)

    @staticmethod
    def _stop_linger(lease: Lease) -> None:
        if lease.timer is not None:
            lease.timer.cancel()
            lease.timer = None

    async def report(self, lease: Lease, *, lost: str | None = None, hung: bool = False
                     ) -> None:
        """The replica of `lease` died (`lost`) or hung: the lease goes back now, with that
        news, and the caller goes on only once the router knows."""
        self._busy -= 1
        for idle in [x for x in self._idle if x.replica == lease.replica]:
            self._idle.remove(idle)
            self._stop_linger(idle)
            self._return(idle)
        payload = self._release_payload(lease) | {"lost": lost, "hung": hung}
        with contextlib.suppress(Exception):  # a router that is gone has nothing to learn
            await self.node.ask(self.pool, RELEASE, payload, timeout=30.0)
        self._forget_if_unused()

    def _return(self, lease: Lease | None) -> None:
        """Send `lease` back (None: only the outcomes counted here)."""
        task = asyncio.ensure_future(self._send_release(self._release_payload(lease)))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    def _release_payload(self, lease: Lease | None) -> dict[str, Any]:
        counts, self._counts = self._counts, dict.fromkeys(_COUNTS, 0)
        return {"lease": None if lease is None else lease.id, **counts}

    async def _send_release(self, payload: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):  # a router that is gone has nothing to take back
            await self.node.tell(self.pool, RELEASE, payload)
        self._forget_if_unused()

    # -- outcomes -------------------------------------------------------------------------------

    def count(self, outcome: Outcome) -> Outcome:
        """A call's final outcome, for the pool's stats."""
        if outcome.get("ok"):
            self._counts["completed"] += 1
        else:
            self._counts["failed"] += 1
            if (outcome.get("error") or {}).get("type") == "ToolTimeout":
                self._counts["timed_out"] += 1
        return outcome

    def count_retry(self) -> None:
        self._counts["retried"] += 1

    async def flush(self) -> None:
        """Return the idle leases now, with the outcomes counted here, and wait until the
        router has them (before reading the pool's stats)."""
        for lease in list(self._idle):
            self._idle.remove(lease)
            self._stop_linger(lease)
            self._return(lease)
        if any(self._counts.values()):
            self._return(None)
        self._pump()  # withdraws a request nobody waits for
        pending = {*self._sending, *([self._request] if self._request is not None else [])}
        if pending:  # bounded: a router that does not answer must not hold up a stats read
            await asyncio.wait(pending, timeout=10.0)
        await self.node.flush()

    # -- asking the router ------------------------------------------------------------------

    def _pump(self) -> None:
        """Ask for a lease for the first call waiting, unless a request is in flight; withdraw
        the request in flight when no call waits any more."""
        waiter = self._next_waiting()
        if self._request is not None:
            if waiter is None and not self._withdrawing:
                self._withdrawing = True
                self._own(self._withdraw(self._request_id))
            return
        if waiter is None:
            return
        loop = asyncio.get_running_loop()
        left = None if waiter.deadline is None else max(0.0, waiter.deadline - loop.time())
        self._request_id = new_id()
        self._withdrawing = False
        self._request = asyncio.ensure_future(self._ask_lease(waiter, left, self._request_id))

    async def _withdraw(self, request_id: str) -> None:
        with contextlib.suppress(Exception):  # a router that is gone has nothing queued
            await self.node.tell(self.pool, WITHDRAW, request_id, priority=Priority.HIGH)

    async def _ask_lease(self, waiter: _Waiter, budget: float | None, request_id: str) -> None:
        try:
            reply = await self.node.ask(
                self.pool, LEASE, {"tool": waiter.tool, "budget": budget,
                                   "lost_on": waiter.lost_on, "request": request_id},
                timeout=NO_DEADLINE_S if budget is None else budget + 30.0)
        except Exception as exc:  # the router gone or failing: the waiting calls hear why
            reply = {"ok": False, "error": error_to_wire(
                _unavailable(waiter.tool, self.pool, exc), waiter.tool)}
        finally:
            self._request = None
        self._answered(waiter, reply)
        self._pump()
        self._forget_if_unused()

    def _answered(self, waiter: _Waiter, reply: dict[str, Any]) -> None:
        if reply.get("routed"):
            self.routed = True
            self._fail_all(lambda: Routed(self.pool))
        elif reply.get("ok"):
            loop = asyncio.get_running_loop()
            self.max_queue = int(reply.get("max_queue", self.max_queue or 0))
            self._offer(Lease(
                id=str(reply["lease"]), replica=str(reply["replica"]),
                expires=loop.time() + float(reply["term_s"]),
                linger_s=float(reply["linger_s"]), max_retries=int(reply["max_retries"]),
                grace_s=float(reply["grace_s"])))
        elif not reply.get("withdrawn"):
            error = reply.get("error") or {"tool": waiter.tool}
            if error.get("type") == "ToolTimeout":
                return  # that call's own deadline, which it sees itself; the next is asked for
            if error.get("type") == "PoolQueueFull":
                target = waiter if not waiter.future.done() else self._next_waiting()
                if target is not None:
                    target.future.set_exception(error_from_wire(error))
                return
            self._fail_all(lambda: error_from_wire(error))  # the pool stopped or is gone

    def _fail_all(self, make: Any) -> None:
        for w in self._waiters:
            if not w.future.done():
                w.future.set_exception(make())

    # -- bookkeeping --------------------------------------------------------------------------

    def _own(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _forget_if_unused(self) -> None:
        """Nothing is held per pool once this process has no lease, call or request on it."""
        if self._idle or self._waiters or self._request is not None or self._busy \
                or self._calls:
            return
        holders = _HOLDERS.get(self.node)
        if holders is not None and holders.get(self.pool) is self:
            del holders[self.pool]
        if any(self._counts.values()):
            self._return(None)


_HOLDERS: weakref.WeakKeyDictionary[Node, dict[str, LeaseHolder]] = weakref.WeakKeyDictionary()


def holder_for(node: Node, pool: str, max_queue: int | None = None) -> LeaseHolder:
    """This process's lease holder on `pool` (`max_queue`, when the caller knows it)."""
    holders = _HOLDERS.setdefault(node, {})
    holder = holders.get(pool)
    if holder is None:
        holder = holders[pool] = LeaseHolder(node, pool)
    if max_queue is not None:
        holder.max_queue = max_queue
    return holder


async def flush_leases(node: Node, pool: str) -> None:
    """This process's idle leases on `pool` go back now, with the outcomes counted here."""
    holder = _HOLDERS.get(node, {}).get(pool)
    if holder is not None:
        await holder.flush()


def _unavailable(tool: str, pool: str, exc: BaseException) -> ToolError:
    if isinstance(exc, ToolError):
        return exc
    return ToolUnavailable(tool, f"pool {pool!r} is unavailable: {exc}")


# -- one call ---------------------------------------------------------------------------------

class _Lost(Exception):
    def __init__(self, replica: str) -> None:
        super().__init__(replica)
        self.replica = replica


async def run_direct(holder: LeaseHolder, tool: Tool, call: dict[str, Any],
                     budget: float | None) -> Outcome:
    """Run `call` (tool, arguments, ctx, key, idempotent) on a leased replica; the outcome as
    data, as the router would answer it. A call lost with its replica runs again when that
    cannot duplicate an effect. Raises Routed when the pool routes its calls itself."""
    holder._calls += 1
    try:
        outcome = await _attempts(holder, tool, call, budget)
        return holder.count(outcome)
    finally:
        holder._calls -= 1
        holder._forget_if_unused()


async def _attempts(holder: LeaseHolder, tool: Tool, call: dict[str, Any],
                    budget: float | None) -> Outcome:
    loop = asyncio.get_running_loop()
    deadline = None if budget is None else loop.time() + budget
    idempotent = tool.reconciles or (tool.idempotent and bool(call.get("idempotent", True)))
    lost_on: str | None = None
    attempt = 0
    while True:
        try:
            lease = await holder.acquire(tool.name, deadline, budget, lost_on=lost_on)
        except ToolError as exc:
            return _failure(exc)
        try:
            return await _run_on(holder, lease, tool, {**call, "attempt": attempt}, deadline,
                                 budget)
        except _Lost as lost:
            if not idempotent:
                return _failure(lost_not_retried(tool.name, lost.replica))
            if attempt >= lease.max_retries:
                return _failure(gave_up(tool.name, attempt + 1))
            holder.count_retry()
            lost_on, attempt = lost.replica, attempt + 1


async def _run_on(holder: LeaseHolder, lease: Lease, tool: Tool, call: dict[str, Any],
                  deadline: float | None, budget: float | None) -> Outcome:
    loop = asyncio.get_running_loop()
    left = None if deadline is None else max(0.0, deadline - loop.time())
    ask_timeout = NO_DEADLINE_S if left is None else left + lease.grace_s
    # As the router does: the tool's own timeout speaks when the budget is (nearly) its own.
    if left is not None and tool.timeout is not None and left >= tool.timeout - 0.01:
        left = None
    payload = {**call, "ctx": {**call["ctx"], "remaining": left}}
    ask = asyncio.ensure_future(holder.node.ask(lease.replica, RUN, payload, timeout=ask_timeout))
    try:
        outcome: Outcome = await asyncio.shield(ask)
    except asyncio.CancelledError:
        # The caller gave up; the call runs to its end on the replica, and the lease serves
        # no other call until then.
        ask.add_done_callback(lambda _: _after_cancel(holder, lease, ask))
        raise
    except AskTimeout:
        await holder.report(lease, hung=True)
        return _failure(hung(tool.name, budget or ask_timeout, lease.replica))
    except (ActorUnavailable, ActorNotFound) as exc:
        await holder.report(lease, lost=str(exc))
        raise _Lost(lease.replica) from None
    except (CodecError, RemoteError) as exc:
        holder.give_back(lease)
        detail = (f"the call cannot be sent: {exc}" if isinstance(exc, CodecError) else
                  f"replica {lease.replica!r} failed: {exc.error_type}: {exc.remote_message}")
        return _failure(ToolError(tool.name, detail))
    holder.give_back(lease)
    if not isinstance(outcome, dict) or "ok" not in outcome:
        return _failure(ToolError(tool.name, f"replica {lease.replica!r} sent a malformed "
                                             "outcome"))
    return outcome


def _after_cancel(holder: LeaseHolder, lease: Lease, ask: asyncio.Future[Any]) -> None:
    exc = None if ask.cancelled() else ask.exception()
    if isinstance(exc, (ActorUnavailable, ActorNotFound)):
        holder._own(holder.report(lease, lost=str(exc)))
    elif isinstance(exc, AskTimeout):
        holder._own(holder.report(lease, hung=True))
    else:
        if exc is None and not ask.cancelled() and isinstance(ask.result(), dict):
            holder.count(ask.result())
        holder.give_back(lease)


def _failure(exc: ToolError) -> Outcome:
    return failure(exc, exc.tool)
