"""HubCore, the logic of the event hub, without Ray: sequencing, logging, polling, replay and
delivery to actor subscribers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from llmspell.runtime.errors import CodecError
from llmspell.runtime.events import Event, pack_events, unpack_events
from llmspell.runtime.hub import HubCore


class Deliveries:
    """The hub's `deliver` callback: records (address, event); can fail or be slow."""

    def __init__(self) -> None:
        self.got: list[tuple[str, Event]] = []
        self.fail_for: set[str] = set()
        self.delay = 0.0
        self.arrived = asyncio.Event()

    async def __call__(self, address: str, event: Event) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if address in self.fail_for:
            raise ConnectionError(f"{address} is gone")
        self.got.append((address, event))
        self.arrived.set()

    def to(self, address: str) -> list[Event]:
        return [e for a, e in self.got if a == address]

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 2.0) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self.arrived.clear()
                await self.arrived.wait()


@pytest.fixture
def deliveries() -> Deliveries:
    return Deliveries()


@pytest.fixture
async def hub(tmp_path: Path, deliveries: Deliveries) -> AsyncIterator[HubCore]:
    core = HubCore(str(tmp_path / "hub.db"), deliver=deliveries)
    yield core
    await core.close()


def batch(*specs: tuple[str, str], payload: Any = None, seq: int = 0) -> bytes:
    """A batch as another process sends it: (topic, job_id) pairs, unsequenced."""
    return pack_events([Event(topic, {"n": i} if payload is None else payload, job_id=job,
                              sender="remote", seq=seq) for i, (topic, job) in enumerate(specs)])


async def test_publish_batch_sequences_per_job_and_logs(hub: HubCore) -> None:
    data = batch(("a.x", "j1"), ("a.y", "j2"), ("a.z", "j1"), ("b.x", "j1"), seq=77)
    assert await hub.publish_batch(data) == 4
    assert await hub.publish_batch(batch(("c", "j2"))) == 1
    j1 = unpack_events(await hub.replay("j1", 0, "**", None))
    j2 = unpack_events(await hub.replay("j2", 0, "**", None))
    assert [(e.topic, e.seq) for e in j1] == [("a.x", 1), ("a.z", 2), ("b.x", 3)]
    assert [(e.topic, e.seq) for e in j2] == [("a.y", 1), ("c", 2)]
    assert [e.payload for e in j1] == [{"n": 0}, {"n": 2}, {"n": 3}]
    assert all(e.sender == "remote" for e in j1 + j2)
    stats = hub.stats()
    assert stats["published"] == 5 and stats["logged"] == 5 and stats["bad_batches"] == 0


async def test_replay_filters(hub: HubCore) -> None:
    await hub.publish_batch(batch(*[(f"agent.w.tool.{i}", "j") for i in range(6)],
                                  ("job.done", "j")))
    got = unpack_events(await hub.replay("j", 3, "agent.*.tool.*", 2))
    assert [(e.topic, e.seq) for e in got] == [("agent.w.tool.2", 3), ("agent.w.tool.3", 4)]
    assert [e.topic for e in unpack_events(await hub.replay("j", 0, "job.*", None))] == [
        "job.done"]
    assert unpack_events(await hub.replay("nobody", 0, "**", None)) == []


async def test_a_reopened_hub_continues_a_jobs_numbering(tmp_path: Path) -> None:
    first = HubCore(str(tmp_path / "resume.db"))
    await first.publish_batch(batch(("a", "j"), ("b", "j"), ("c", "j")))
    await first.close()
    second = HubCore(str(tmp_path / "resume.db"))
    try:
        await second.publish_batch(batch(("d", "j"), ("x", "new")))
        got = unpack_events(await second.replay("j", 0, "**", None))
        assert [(e.topic, e.seq) for e in got] == [("a", 1), ("b", 2), ("c", 3), ("d", 4)]
        assert [e.seq for e in unpack_events(await second.replay("new", 0, "**", None))] == [1]
    finally:
        await second.close()


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1\xc1",
        msgpack.packb(["wrong-tag", []]),
        msgpack.packb(["llmspell.events/1", [["t", "j", "s", 0, "not-a-time", b"\x90"]]]),
    ],
)
async def test_a_bad_batch_raises_codec_error_and_is_counted(hub: HubCore, data: bytes) -> None:
    watcher = hub.bus.subscribe("bus.rejected")
    with pytest.raises(CodecError):
        await hub.publish_batch(data)
    assert hub.bad_batches == 1 and hub.stats()["bad_batches"] == 1
    report = watcher.get_nowait()
    assert len(report) == 1 and report[0].payload["bytes"] == len(data)
    assert report[0].payload["error"]


async def test_a_bad_event_refuses_the_whole_batch(hub: HubCore) -> None:
    """An invalid topic in the middle of a batch: nothing of it is published or logged."""
    good = Event("ok.one", job_id="j")
    data = msgpack.packb(
        ["llmspell.events/1", [[good.topic, "j", "", 0, 1.0, good.raw_payload()],
                               ["bad..topic", "j", "", 0, 1.0, good.raw_payload()],
                               ["ok.two", "j", "", 0, 1.0, good.raw_payload()]]],
        use_bin_type=True,
    )
    with pytest.raises(CodecError, match="event 1 of the batch"):
        await hub.publish_batch(data)
    assert hub.bad_batches == 1
    assert unpack_events(await hub.replay("j", 0, "**", None)) == []
    assert await hub.publish_batch(batch(("ok.three", "j"))) == 1  # the hub still works
    assert [e.seq for e in unpack_events(await hub.replay("j", 0, "**", None))] == [1]


async def test_subscribe_and_poll(hub: HubCore) -> None:
    sub_id = hub.subscribe("agent.**", 100, "block", None)
    jobbed = hub.subscribe("**", 100, "block", "j2")
    await hub.publish_batch(batch(("agent.a.x", "j1"), ("job.started", "j1"),
                                  ("agent.b.y", "j2")))
    data, dropped, closed = await hub.poll(sub_id, 10, 1.0)
    got = unpack_events(data)
    assert [(e.topic, e.job_id, e.seq) for e in got] == [("agent.a.x", "j1", 1),
                                                         ("agent.b.y", "j2", 1)]
    assert got[1].payload == {"n": 2}
    assert (dropped, closed) == (0, False)
    assert [e.topic for e in unpack_events((await hub.poll(jobbed, 10, 1.0))[0])] == [
        "agent.b.y"]


async def test_poll_limits_and_times_out(hub: HubCore) -> None:
    sub_id = hub.subscribe("**", 100, "block", None)
    await hub.publish_batch(batch(*[("e", "j")] * 5))
    assert len(unpack_events((await hub.poll(sub_id, 2, 1.0))[0])) == 2
    assert len(unpack_events((await hub.poll(sub_id, 10, 1.0))[0])) == 3
    loop = asyncio.get_running_loop()
    start = loop.time()
    data, _, _ = await hub.poll(sub_id, 10, 0.03)
    assert unpack_events(data) == [] and loop.time() - start >= 0.025


async def test_poll_wakes_when_events_arrive(hub: HubCore) -> None:
    sub_id = hub.subscribe("**", 100, "block", None)
    poller = asyncio.create_task(hub.poll(sub_id, 10, 5.0))
    await asyncio.sleep(0.01)
    assert not poller.done()
    await hub.publish_batch(batch(("e", "j")))
    data, _, _ = await asyncio.wait_for(poller, 1)
    assert [e.topic for e in unpack_events(data)] == ["e"]


async def test_poll_reports_drops(hub: HubCore) -> None:
    sub_id = hub.subscribe("e", 2, "drop_oldest", None)
    await hub.publish_batch(batch(*[("e", "j")] * 5))
    data, dropped, _ = await hub.poll(sub_id, 10, 1.0)
    assert [e.seq for e in unpack_events(data)] == [4, 5]
    assert dropped == 3
    assert hub.stats()["subscriptions"][sub_id] == {"pattern": "e", "buffered": 0, "dropped": 3}
    drops = unpack_events(await hub.replay("", 0, "bus.dropped", None))
    assert drops and drops[0].payload["pattern"] == "e"


async def test_unsubscribe_and_unknown_subscriptions(hub: HubCore) -> None:
    sub_id = hub.subscribe("**", 10, "block", None)
    sub = hub.subscription(sub_id)
    hub.unsubscribe(sub_id)
    assert sub.closed
    with pytest.raises(KeyError, match="no subscription"):
        await hub.poll(sub_id, 10, 0.01)
    with pytest.raises(KeyError):
        hub.subscription("never-made")
    hub.unsubscribe(sub_id)  # again: a no-op
    await hub.publish_batch(batch(("e", "j")))
    assert len(sub) == 0


async def test_subscribe_actor_delivers_in_order(hub: HubCore, deliveries: Deliveries) -> None:
    tools = hub.subscribe_actor("agent.*.tool.*", "job/watcher", 100, "block", None)
    only_j2 = hub.subscribe_actor("**", "job/j2-only", 100, "block", "j2")
    assert tools in hub.subs and only_j2 in hub.subs
    for i in range(3):
        await hub.publish_batch(batch(*[(f"agent.a{i}.tool.call", "j1")] * 200,
                                      ("job.step", "j1"), (f"agent.b{i}.tool.result", "j2")))
    await deliveries.wait_for(lambda: len(deliveries.to("job/watcher")) == 603
                              and len(deliveries.to("job/j2-only")) == 3)
    watcher = deliveries.to("job/watcher")
    assert [e.seq for e in watcher if e.job_id == "j1"] == [
        s for s in range(1, 604) if s % 201 != 0]
    assert [e.topic for e in watcher if e.job_id == "j2"] == [
        "agent.b0.tool.result", "agent.b1.tool.result", "agent.b2.tool.result"]
    assert [e.seq for e in deliveries.to("job/j2-only")] == [1, 2, 3]
    assert watcher[0].payload == {"n": 0}


async def test_a_failing_deliver_ends_the_subscription_with_an_event(
    hub: HubCore, deliveries: Deliveries
) -> None:
    deliveries.fail_for.add("job/dead")
    watcher = hub.subscribe("bus.subscriber_lost", 10, "block", None)
    sub_id = hub.subscribe_actor("**", "job/dead", 10, "block", None)
    alive = hub.subscribe_actor("e", "job/alive", 10, "block", None)
    await hub.publish_batch(batch(("e", "j")))
    data, _, _ = await hub.poll(watcher, 10, 2.0)
    lost = unpack_events(data)
    assert [e.topic for e in lost] == ["bus.subscriber_lost"]
    assert lost[0].payload["subscriber"] == "job/dead"
    assert "job/dead is gone" in lost[0].payload["error"]
    assert sub_id not in hub.subs and sub_id not in hub._pumps
    assert alive in hub.subs
    await hub.publish_batch(batch(("e", "j")))
    await deliveries.wait_for(lambda: len(deliveries.to("job/alive")) == 2)
    assert deliveries.to("job/dead") == []


async def test_a_lost_subscriber_never_blocks_publishers(
    hub: HubCore, deliveries: Deliveries
) -> None:
    """A slow subscriber that then fails, with a full "block" buffer that also matches the
    loss report: publishing must go on."""
    deliveries.fail_for.add("job/dead")
    deliveries.delay = 0.01
    hub.subscribe_actor("**", "job/dead", 1, "block", None)
    watcher = hub.subscribe("bus.subscriber_lost", 10, "block", None)
    for _ in range(5):
        await asyncio.wait_for(hub.publish_batch(batch(("x.y", "k"))), 2)
    data, _, _ = await hub.poll(watcher, 10, 2.0)
    assert [e.topic for e in unpack_events(data)] == ["bus.subscriber_lost"]
    assert [e.seq for e in unpack_events(await hub.replay("k", 0, "**", None))] == [1, 2, 3, 4, 5]


async def test_subscribe_actor_needs_a_deliver_callback(tmp_path: Path) -> None:
    core = HubCore(str(tmp_path / "nodeliver.db"))
    try:
        with pytest.raises(RuntimeError, match="cannot deliver"):
            core.subscribe_actor("**", "a", 10, "block", None)
        assert core.subs == {}
    finally:
        await core.close()


async def test_close_stops_pumps_and_keeps_the_log(tmp_path: Path) -> None:
    deliveries = Deliveries()
    core = HubCore(str(tmp_path / "close.db"), deliver=deliveries)
    sub_id = core.subscribe_actor("**", "job/a", 10, "block", None)
    poll_id = core.subscribe("**", 10, "block", None)
    pump = core._pumps[sub_id]
    sub = core.subscription(poll_id)
    await core.publish_batch(batch(("e", "j"), ("f", "j")))
    await deliveries.wait_for(lambda: len(deliveries.got) == 2)
    await asyncio.wait_for(core.close(), 5)
    assert pump.done() and core.subs == {} and core._pumps == {}
    assert sub.closed
    reopened = HubCore(str(tmp_path / "close.db"))
    try:
        got = unpack_events(await reopened.replay("j", 0, "**", None))
        assert [(e.topic, e.seq) for e in got] == [("e", 1), ("f", 2)]
    finally:
        await reopened.close()
