"""Seeded fake tools and actors for the conformance suite (importable by Ray's workers). Each
writes what it does to a history file (tests.conformance.history) as it does it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

from pydantic import BaseModel

from llmspell import ActorBase, Envelope
from llmspell.tools import Reconciled, SideEffects, Tool, ToolContext
from tests.conformance.history import record, rows
from tests.integration.supervised import Worker


class PayArgs(BaseModel):
    amount: int
    history: str
    before_s: float = 0.0  # before the effect commits
    after_s: float = 0.0  # after it committed, before the result is returned (the ack)
    crash_after_commit: bool = False  # the first run kills its own process right after commit


class Pay(Tool):
    """A payment: not idempotent (each run charges), but it can reconcile: a charge is found
    by its idempotency key where it landed (the history's effect rows)."""

    name = "pay"
    description = "Charge an amount."
    Args = PayArgs
    side_effects = SideEffects.external
    idempotent = False
    timeout = 60.0

    async def run(self, args: PayArgs, ctx: ToolContext) -> dict[str, Any]:
        key = ctx.idempotency_key
        record(args.history, "call", key)
        await asyncio.sleep(args.before_s)
        record(args.history, "effect", key, amount=args.amount)
        if args.crash_after_commit and not rows(args.history, "crash", key):
            record(args.history, "crash", key)
            os.kill(os.getpid(), signal.SIGKILL)  # committed, never acknowledged
        await asyncio.sleep(args.after_s)
        record(args.history, "done", key)
        return {"paid": args.amount, "pid": os.getpid()}

    async def reconcile(self, args: PayArgs, ctx: ToolContext) -> Reconciled | None:
        effects = rows(args.history, "effect", ctx.idempotency_key)
        record(args.history, "reconcile", ctx.idempotency_key, found=bool(effects))
        if not effects:
            return None
        return Reconciled({"paid": effects[0].data["amount"], "pid": effects[0].pid})


class PayBlind(Pay):
    """The same payment without a way to reconcile: a lost call must fail, not run twice."""

    name = "pay_blind"
    reconcile = Tool.reconcile


class StepArgs(BaseModel):
    history: str
    n: int = 0
    seconds: float = 0.0


class Work(Tool):
    """A unit of work: records its start (with the wall time) and its end."""

    name = "work"
    description = "Do a unit of work."
    Args = StepArgs
    timeout = 30.0

    async def run(self, args: StepArgs, ctx: ToolContext) -> dict[str, Any]:
        record(args.history, "call", ctx.idempotency_key, n=args.n)
        await asyncio.sleep(args.seconds)
        record(args.history, "done", ctx.idempotency_key, n=args.n)
        return {"n": args.n, "pid": os.getpid()}


class Hang(Tool):
    """Hangs forever, blocking its replica's event loop (nothing there answers any more)."""

    name = "hang"
    description = "Never return."
    Args = StepArgs
    timeout = 1.0

    async def run(self, args: StepArgs, ctx: ToolContext) -> str:
        record(args.history, "call", ctx.idempotency_key)
        time.sleep(3600)  # noqa: ASYNC251 - the fault under test
        return "never"


class OrderArgs(BaseModel):
    item: str
    count: int
    express: bool = False


class Order(Tool):
    name = "order"
    description = "Order `count` of `item`."
    Args = OrderArgs

    async def run(self, args: OrderArgs, ctx: ToolContext) -> str:
        return f"{args.count} x {args.item}"


class OrderedSender(ActorBase):
    """Sends `count` numbered tells to a target with seeded random pauses between them."""

    async def handle(self, msg: Envelope) -> Any:
        import random

        p = msg.payload
        rng = random.Random(p["seed"])
        for i in range(p["count"]):
            await self.node.tell(p["target"], "item", i)
            if rng.random() < 0.05:
                await asyncio.sleep(rng.random() * 0.005)
        await self.node.flush()
        return p["count"]


class Sink(ActorBase):
    """Records (sender, payload) in handling order; `delay` per message makes it slow."""

    def setup(self, delay: float = 0.0) -> None:
        self.seen: list[tuple[str, Any]] = []
        self.delay = delay

    async def handle(self, msg: Envelope) -> Any:
        if msg.type == "dump":
            return self.seen
        if msg.type == "count":
            return len(self.seen)
        if self.delay:
            await asyncio.sleep(self.delay)
        self.seen.append((msg.sender, msg.payload))
        return len(self.seen)


class Poisonable(Worker):
    """A supervised Counter that a `poison` message crashes, every time it is handled."""

    async def handle(self, msg: Envelope) -> Any:
        if msg.type == "poison":
            os._exit(1)
        return await super().handle(msg)
