"""The smallest end-to-end job: an actor with state that survives a crash.

    python examples/counter.py

Starts an embedded local Ray, spawns a counter actor, sends it tells and asks in order, watches
its events, kills its process, and shows that the restarted actor kept its count and that the
job's event log replays everything that happened.
"""

from __future__ import annotations

import asyncio
from typing import Any

from llmspell import ActorBase, Envelope, Runtime
from llmspell.runtime.messages import new_id


class Counter(ActorBase):
    def setup(self, start: int = 0) -> None:
        self.count = start

    async def handle(self, msg: Envelope) -> Any:
        if msg.type == "add":
            self.count += int(msg.payload)
            await self.checkpoint()  # the count outlives this process
            return self.count
        if msg.type == "get":
            return self.count
        raise ValueError(f"unknown message type {msg.type!r}")

    def snapshot(self) -> Any:
        return {"count": self.count}

    def restore(self, snapshot: Any) -> None:
        self.count = snapshot["count"] if snapshot else 0


async def main() -> None:
    job = f"counter-{new_id()[-8:]}"
    async with Runtime(job_id=job) as rt:
        counter = rt.spawn(Counter, "counter", 0, max_restarts=3)
        events = await rt.subscribe("actor.**", job_id=job)
        for n in range(1, 11):
            await counter.tell("add", n)
        print("count after ten tells:", await counter.ask("get"))
        before = await counter.ping()
        counter.kill()  # a crash: Ray restarts the process, the actor restores its snapshot
        await asyncio.sleep(0.5)
        after = await counter.wait_ready()
        print("count after a crash:  ", await counter.ask("get"),
              f"(pid {before['pid']} -> {after['pid']})")
        try:
            await counter.ask("divide", 2)
        except Exception as exc:  # the handler's error comes back with its type and message
            print("bad request:          ", exc)
        print("first live events:    ", [e.topic for e in await events.get_batch(5, 2.0)])
        log = await rt.replay(job)
        print(f"event log:             {len(log)} events, e.g.",
              sorted({e.topic for e in log}))


if __name__ == "__main__":
    asyncio.run(main())
