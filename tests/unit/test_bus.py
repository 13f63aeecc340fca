"""Events, topic patterns and the in-process event bus."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmspell.runtime import bus as bus_module
from llmspell.runtime.bus import EventBus, Subscription
from llmspell.runtime.errors import CodecError, PatternError
from llmspell.runtime.events import (
    Event,
    TopicPattern,
    check_topic,
    matches,
    pack_events,
    pack_payload,
    plain,
    unpack_events,
)


class RecordingSink:
    """A bus sink (the interface the event log and the hub forwarder implement)."""

    def __init__(self, full_after: int | None = None) -> None:
        self.events: list[Event] = []
        self.full_after = full_after
        self.released = asyncio.Event()
        self.room_calls = 0

    def accept(self, event: Event) -> None:
        self.events.append(event)

    @property
    def full(self) -> bool:
        return (self.full_after is not None and len(self.events) >= self.full_after
                and not self.released.is_set())

    async def room(self) -> None:
        self.room_calls += 1
        await self.released.wait()


def topics(events: list[Event]) -> list[str]:
    return [e.topic for e in events]


# -- patterns ---------------------------------------------------------------------------------

_MATCHES = [
    ("a.b.c", "a.b.c", True),
    ("a.b.c", "a.b", False),
    ("a.b", "a.b.c", False),
    ("a.b", "a.bc", False),
    ("a.b", "aXb", False),
    ("*", "a", True),
    ("*", "a.b", False),
    ("*.b", "a.b", True),
    ("*.b", "b", False),
    ("a.*", "a", False),
    ("a.*", "a.b", True),
    ("a.*", "a.b.c", False),
    ("a.*.c", "a.x.c", True),
    ("a.*.c", "a.c", False),
    ("a.*.c", "a.x.y.c", False),
    ("a.*.*", "a.b.c", True),
    ("a.*.*", "a.b", False),
    ("**", "x", True),
    ("**", "x.y.z", True),
    ("a.**", "a", True),
    ("a.**", "a.b", True),
    ("a.**", "a.b.c.d", True),
    ("a.**", "ab", False),
    ("a.**", "b.a", False),
    ("**.c", "c", True),
    ("**.c", "a.b.c", True),
    ("**.c", "a.c.d", False),
    ("**.c", "bc", False),
    ("a.**.c", "a.c", True),
    ("a.**.c", "a.b.c", True),
    ("a.**.c", "a.b.d.c", True),
    ("a.**.c", "a.b.d", False),
    ("a.**.c", "xa.c", False),
    ("a.**.c", "a.cc", False),
    ("a.*.**", "a", False),
    ("a.*.**", "a.b", True),
    ("a.*.**", "a.b.c.d", True),
    ("**.b.**", "b", True),
    ("**.b.**", "a.b.c", True),
    ("**.b.**", "a.c", False),
    ("agent.*.tool.*", "agent.writer.tool.call", True),
    ("agent.*.tool.*", "agent.writer.llm.request", False),
    ("agent.*.tool.*", "agent.writer.tool.call.extra", False),
    ("job.**", "job.completed", True),
    ("job.**", "jobs.completed", False),
    ("agent.<root>/w@1.x", "agent.<root>/w@1.x", True),
    ("a-b:c_d", "a-b:c_d", True),
    ("a-b:c_d", "a-b:c_e", False),
]


@pytest.mark.parametrize(("pattern", "topic", "expected"), _MATCHES)
def test_pattern_semantics(pattern: str, topic: str, expected: bool) -> None:
    assert TopicPattern(pattern).matches(topic) is expected
    assert matches(pattern, topic) is expected


@pytest.mark.parametrize(
    "pattern",
    ["", "a..b", ".a", "a.", "a.*b", "a.b*", "a.***", "a b", "a.b?", "a.(b)", "a.[bc]",
     "a.b+", "a.$", "é"],
)
def test_invalid_patterns(pattern: str) -> None:
    with pytest.raises(PatternError):
        TopicPattern(pattern)
    with pytest.raises(ValueError):  # PatternError is a ValueError too
        EventBus().subscribe(pattern)


@pytest.mark.parametrize("topic", ["", "a..b", ".a", "a.", "a.*", "a.**", "a b", "a.b?", None])
def test_invalid_topics(topic: Any) -> None:
    with pytest.raises(PatternError):
        check_topic(topic)


def test_valid_topics() -> None:
    for topic in ("a", "job.completed", "agent.writer.tool.call", "agent.<root>/w@1:x-y_z"):
        check_topic(topic)


def _reference(pattern: list[str], topic: list[str]) -> bool:
    if not pattern:
        return not topic
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_reference(rest, topic[i:]) for i in range(len(topic) + 1))
    if not topic:
        return False
    return (head == "*" or head == topic[0]) and _reference(rest, topic[1:])


_segment = st.sampled_from(["a", "b", "c"])


@settings(max_examples=300, deadline=None)
@given(
    pattern=st.lists(st.sampled_from(["a", "b", "*", "**"]), min_size=1, max_size=5),
    topic=st.lists(_segment, min_size=1, max_size=6),
)
def test_patterns_agree_with_a_reference_matcher(pattern: list[str], topic: list[str]) -> None:
    assert TopicPattern(".".join(pattern)).matches(".".join(topic)) == _reference(pattern, topic)


# -- events -----------------------------------------------------------------------------------


def test_event_wire_round_trip() -> None:
    event = Event("agent.w.tool.call", {"args": [1, "x", None]}, job_id="j", sender="w",
                  seq=7, ts=123.5)
    wire = event.to_wire()
    assert wire == ["agent.w.tool.call", "j", "w", 7, 123.5, {"args": [1, "x", None]}]
    back = Event.from_wire(msgpack.unpackb(msgpack.packb(wire), raw=False))
    assert back == event
    assert back.to_dict() == {"topic": "agent.w.tool.call", "job_id": "j", "sender": "w",
                              "seq": 7, "ts": 123.5, "payload": {"args": [1, "x", None]}}
    assert back != Event("agent.w.tool.call", {"args": [1, "x", None]}, job_id="j",
                         sender="w", seq=8, ts=123.5)
    assert Event.from_wire(["t", "", "", 0, 5, None]).ts == 5.0
    assert "agent.w.tool.call" in repr(event) and "seq=7" in repr(event)


_BAD_WIRE = [
    ("not a list", "array of 6"),
    (["t", "", "", 0, 1.0], "array of 6"),
    (["t", "", "", 0, 1.0, None, 1], "array of 6"),
    (["", "", "", 0, 1.0, None], "topic"),
    ([5, "", "", 0, 1.0, None], "topic"),
    (["a..b", "", "", 0, 1.0, None], "topic"),
    (["a.*", "", "", 0, 1.0, None], "topic"),
    (["t", 1, "", 0, 1.0, None], "job_id"),
    (["t", "", None, 0, 1.0, None], "sender"),
    (["t", "", "", -1, 1.0, None], "seq"),
    (["t", "", "", 1.0, 1.0, None], "seq"),
    (["t", "", "", True, 1.0, None], "seq"),
    (["t", "", "", 0, "now", None], "ts"),
]


@pytest.mark.parametrize(("item", "named"), _BAD_WIRE)
def test_event_from_wire_errors(item: Any, named: str) -> None:
    with pytest.raises(CodecError, match=named) as info:
        Event.from_wire(item, where="incoming")
    assert "incoming" in str(info.value)


def test_payload_is_packed_once_and_decoded_lazily() -> None:
    event = Event("t", {"k": [1, 2]})
    raw = event.raw_payload()
    assert raw is event.raw_payload()  # kept
    assert msgpack.unpackb(raw) == {"k": [1, 2]}
    lazy = Event("t", raw=raw)
    assert lazy.raw_payload() is raw
    assert lazy.payload == {"k": [1, 2]}
    lazy.payload = "replaced"
    assert lazy.payload == "replaced"
    assert msgpack.unpackb(lazy.raw_payload()) == "replaced"
    broken = Event("t", raw=b"\xc1")
    assert broken.payload["undecodable"] is True


def test_an_unencodable_payload_keeps_its_text() -> None:
    packed = pack_payload({"when": object()})
    data = msgpack.unpackb(packed)
    assert "object object" in data["unencodable"]
    assert data["error"]
    assert msgpack.unpackb(pack_payload([1, "a"])) == [1, "a"]


def test_plain_dumps_models() -> None:
    class Usage(pydantic.BaseModel):
        tokens: int
        model: str

    assert plain(Usage(tokens=3, model="m")) == {"tokens": 3, "model": "m"}
    assert plain({"a": 1}) == {"a": 1}


def test_pack_and_unpack_events_round_trip() -> None:
    events = [Event(f"t.{i}", {"i": i, "b": b"\x01"}, job_id="j", sender="s", seq=i, ts=i + 0.5)
              for i in range(5)]
    events.append(Event("t.odd", {"bad": object()}, job_id="j"))
    back = unpack_events(pack_events(events))
    assert len(back) == 6
    for original, copy in zip(events[:5], back[:5], strict=True):
        assert copy == original
        assert copy.payload == original.payload
    assert "unencodable" in back[5].payload
    assert unpack_events(pack_events([])) == []


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b"\xc1", "not valid msgpack"),
        (b"", "not valid msgpack"),
        (msgpack.packb({"a": 1}), "event batch must be"),
        (msgpack.packb(["other/1", []]), "event batch must be"),
        (msgpack.packb(["llmspell.events/1"]), "event batch must be"),
        (msgpack.packb(["llmspell.events/1", {}]), "event batch must be"),
        (msgpack.packb(["llmspell.events/1", [["t", "", "", 0, 1.0, b"\x01"], "x"]]),
         "event 1 of the batch"),
        (msgpack.packb(["llmspell.events/1", [["t", "", "", 0, 1.0, {"not": "bytes"}]]],
                       use_bin_type=True), "payload must be msgpack bytes"),
        (msgpack.packb(["llmspell.events/1", [["bad..t", "", "", 0, 1.0, b"\x01"]]],
                       use_bin_type=True), "topic"),
    ],
)
def test_unpack_events_errors(data: bytes, named: str) -> None:
    with pytest.raises(CodecError, match=named):
        unpack_events(data)


# -- routing ----------------------------------------------------------------------------------


async def test_publish_routes_by_pattern() -> None:
    bus = EventBus()
    tools = bus.subscribe("agent.*.tool.*")
    jobs = bus.subscribe("job.**")
    every = bus.subscribe("**")
    for topic in ("agent.w.tool.call", "job.started", "agent.w.llm.request", "job.step.done",
                  "agent.w.tool.result"):
        await bus.publish(topic, {"t": topic})
    assert topics(tools.get_nowait()) == ["agent.w.tool.call", "agent.w.tool.result"]
    assert topics(jobs.get_nowait()) == ["job.started", "job.step.done"]
    assert len(every) == 5 and bus.published == 5


async def test_invalid_topic_is_refused_and_consumes_nothing() -> None:
    bus = EventBus()
    sub = bus.subscribe("**")
    with pytest.raises(PatternError):
        await bus.publish("a..b")
    with pytest.raises(PatternError):
        bus.publish_nowait("a.*")
    assert bus.published == 0 and len(sub) == 0
    assert (await bus.publish("ok", job_id="j")).seq == 1


async def test_routing_cache_follows_subscribe_and_unsubscribe() -> None:
    bus = EventBus()
    first = bus.subscribe("a.*")
    await bus.publish("a.b")  # the route of a.b is now cached
    second = bus.subscribe("a.b")
    await bus.publish("a.b")
    assert len(first) == 2 and len(second) == 1
    bus.unsubscribe(first)
    await bus.publish("a.b")
    assert len(first) == 2 and len(second) == 2
    second.close()
    assert second.closed
    await bus.publish("a.b")
    assert len(second) == 2
    bus.unsubscribe(second)  # again: a no-op


async def test_job_filter() -> None:
    bus = EventBus()
    mine = bus.subscribe("**", job_id="j1")
    all_jobs = bus.subscribe("**")
    await bus.publish("x", job_id="j1")
    await bus.publish("x", job_id="j2")
    bus.publish_nowait("y", job_id="j1")
    assert [(e.topic, e.job_id) for e in mine.get_nowait()] == [("x", "j1"), ("y", "j1")]
    assert len(all_jobs) == 3


async def test_publish_dumps_model_payloads_and_returns_the_event() -> None:
    class Step(pydantic.BaseModel):
        name: str

    bus = EventBus()
    sub = bus.subscribe("**")
    event = await bus.publish("workflow.step.started", Step(name="draft"), job_id="j",
                              sender="wf")
    assert event.payload == {"name": "draft"}
    assert (event.job_id, event.sender, event.seq) == ("j", "wf", 1)
    assert sub.get_nowait() == [event]
    made = bus.make("t", Step(name="x"), job_id="j")
    assert made.payload == {"name": "x"} and made.seq == 0


# -- overflow ---------------------------------------------------------------------------------


async def test_block_policy_makes_publish_wait_for_the_reader() -> None:
    bus = EventBus()
    sub = bus.subscribe("**", buffer=2, overflow="block")
    await bus.publish("e", 1)
    await bus.publish("e", 2)
    third = asyncio.create_task(bus.publish("e", 3))
    await asyncio.sleep(0.01)
    assert not third.done()
    assert bus.published == 3  # counted (and numbered) but waiting for room
    first = sub.get_nowait(1)
    assert [e.payload for e in first] == [1]
    await asyncio.wait_for(third, 1)
    assert [e.payload for e in sub.get_nowait()] == [2, 3]
    assert sub.dropped == 0


async def test_block_policy_waits_for_iteration_too() -> None:
    bus = EventBus()
    sub = bus.subscribe("**", buffer=1)
    got: list[int] = []

    async def read() -> None:
        async for event in sub:
            got.append(event.payload)
            if len(got) == 20:
                return

    reader = asyncio.create_task(read())
    for i in range(20):
        await bus.publish("e", i)
        assert len(sub) <= 1
    await asyncio.wait_for(reader, 1)
    assert got == list(range(20)) and sub.delivered == 20


async def test_closing_a_full_block_subscription_releases_the_publisher() -> None:
    bus = EventBus()
    sub = bus.subscribe("**", buffer=1)
    await bus.publish("e", 1)
    blocked = asyncio.create_task(bus.publish("e", 2))
    await asyncio.sleep(0.01)
    assert not blocked.done()
    sub.close()
    await asyncio.wait_for(blocked, 1)


async def test_drop_oldest_drops_counts_and_reports() -> None:
    bus = EventBus()
    lossy = bus.subscribe("e", buffer=2, overflow="drop_oldest")
    reports = bus.subscribe("bus.dropped")
    for i in range(5):
        await bus.publish("e", i)
    assert [e.payload for e in lossy.get_nowait()] == [3, 4]
    assert lossy.dropped == 3
    got = reports.get_nowait()
    assert got, "a drop must be reported"
    first = got[0].payload
    assert first == {"pattern": "e", "dropped": 1, "total_dropped": 1}
    assert sum(e.payload["dropped"] for e in got) <= 3


async def test_drop_reports_are_rate_limited_but_never_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bus_module, "_DROP_REPORT_INTERVAL", 0.05)
    bus = EventBus()
    lossy = bus.subscribe("e", buffer=1, overflow="drop_oldest")
    reports = bus.subscribe("bus.dropped")
    for i in range(10):
        await bus.publish("e", i)
    assert lossy.dropped == 9
    assert [e.payload["dropped"] for e in reports.get_nowait()] == [1]  # once per interval
    await asyncio.sleep(0.06)
    await bus.publish("e", 10)  # the next drop after the interval reports all unreported
    later = reports.get_nowait()
    assert [e.payload for e in later] == [{"pattern": "e", "dropped": 9, "total_dropped": 10}]


async def test_drop_report_events_are_numbered_and_reach_sinks() -> None:
    sink = RecordingSink()
    bus = EventBus(sinks=[sink])
    bus.subscribe("e", buffer=1, overflow="drop_oldest")
    await bus.publish("e", job_id="j")
    await bus.publish("e", job_id="j")
    assert topics(sink.events) == ["e", "e", "bus.dropped"]
    assert sink.events[2].seq == 1  # the report belongs to no job: its own numbering


async def test_publish_nowait_on_a_full_block_subscriber_keeps_the_event() -> None:
    bus = EventBus()
    sub = bus.subscribe("**", buffer=1, overflow="block")
    for i in range(3):
        bus.publish_nowait("e", i)
    assert len(sub) == 3 and sub.dropped == 0  # past its bound rather than lost
    blocked = asyncio.create_task(bus.publish("e", 3))
    await asyncio.sleep(0.01)
    assert not blocked.done()  # the next awaited publish waits until under the bound
    assert [e.payload for e in sub.get_nowait(1)] == [0]
    await asyncio.sleep(0.01)
    assert not blocked.done()
    assert [e.payload for e in sub.get_nowait(2)] == [1, 2]
    await asyncio.wait_for(blocked, 1)
    assert [e.payload for e in sub.get_nowait()] == [3]


def test_subscription_arguments_are_checked() -> None:
    bus = EventBus()
    with pytest.raises(ValueError, match="buffer"):
        bus.subscribe("**", buffer=0)
    with pytest.raises(ValueError, match="overflow"):
        bus.subscribe("**", overflow="drop_newest")  # type: ignore[arg-type]


# -- sequencing -------------------------------------------------------------------------------


async def test_the_sequencer_numbers_events_per_job() -> None:
    bus = EventBus()
    seqs = []
    for job in ("a", "b", "a", "a", "b", ""):
        seqs.append((job, (await bus.publish("t", job_id=job)).seq))
    seqs.append(("b", bus.publish_nowait("t", job_id="b").seq))
    assert seqs == [("a", 1), ("b", 1), ("a", 2), ("a", 3), ("b", 2), ("", 1), ("b", 3)]


async def test_start_seq_continues_numbering_and_never_goes_back() -> None:
    bus = EventBus()
    bus.start_seq("j", 41)
    assert (await bus.publish("t", job_id="j")).seq == 42
    bus.start_seq("j", 10)
    assert (await bus.publish("t", job_id="j")).seq == 43


async def test_a_non_sequencing_bus_leaves_seq_alone() -> None:
    bus = EventBus(sequencer=False)
    assert (await bus.publish("t", job_id="j")).seq == 0
    event = Event("t", job_id="j", seq=9)
    await bus.publish_event(event)
    assert event.seq == 9


# -- sinks ------------------------------------------------------------------------------------


async def test_sinks_receive_every_event_in_order() -> None:
    sink = RecordingSink()
    bus = EventBus(sinks=[sink])
    bus.subscribe("a.*")
    await bus.publish("a.b", job_id="j")
    await bus.publish("unsubscribed.topic", job_id="j")
    bus.publish_nowait("x", job_id="j")
    await bus.publish_event(Event("y", job_id="j"))
    assert topics(sink.events) == ["a.b", "unsubscribed.topic", "x", "y"]
    assert [e.seq for e in sink.events] == [1, 2, 3, 4]
    late = RecordingSink()
    bus.add_sink(late)
    bus.remove_sink(sink)
    bus.remove_sink(sink)  # a no-op
    await bus.publish("z")
    assert topics(late.events) == ["z"] and len(sink.events) == 4


async def test_a_full_sink_makes_publish_wait_for_room() -> None:
    sink = RecordingSink(full_after=2)
    bus = EventBus(sinks=[sink])
    await bus.publish("e", 1)
    second = asyncio.create_task(bus.publish("e", 2))
    await asyncio.sleep(0.01)
    assert not second.done() and sink.room_calls == 1
    assert [e.payload for e in sink.events] == [1, 2]  # accepted, then the wait
    sink.released.set()
    await asyncio.wait_for(second, 1)
    bus.publish_nowait("e", 3)  # never waits
    assert len(sink.events) == 3


# -- subscriptions ----------------------------------------------------------------------------


async def test_get_batch_waits_for_the_first_event_and_takes_up_to_max() -> None:
    bus = EventBus()
    sub = bus.subscribe("**")
    waiter = asyncio.create_task(sub.get_batch(3))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    for i in range(5):
        bus.publish_nowait("e", i)
    assert [e.payload for e in await asyncio.wait_for(waiter, 1)] == [0, 1, 2]
    assert [e.payload for e in await sub.get_batch(3)] == [3, 4]
    assert sub.delivered == 5


async def test_get_batch_timeout_returns_empty() -> None:
    sub = EventBus().subscribe("**")
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await sub.get_batch(10, timeout=0.03) == []
    assert loop.time() - start >= 0.025


async def test_close_wakes_a_waiting_get_batch_and_ends_iteration() -> None:
    bus = EventBus()
    sub = bus.subscribe("**")
    waiter = asyncio.create_task(sub.get_batch(10))
    await asyncio.sleep(0.01)
    sub.close()
    assert await asyncio.wait_for(waiter, 1) == []
    assert await sub.get_batch(10) == []  # closed: no wait

    sub2 = bus.subscribe("**")
    got: list[Any] = []

    async def read() -> None:
        async for event in sub2:
            got.append(event.payload)

    reader = asyncio.create_task(read())
    await bus.publish("e", 1)
    await bus.publish("e", 2)
    await asyncio.sleep(0.01)
    sub2.close()
    await asyncio.wait_for(reader, 1)
    assert got == [1, 2]


async def test_iteration_drains_the_buffer_after_close() -> None:
    bus = EventBus()
    sub = bus.subscribe("**")
    for i in range(3):
        await bus.publish("e", i)
    sub.close()
    await bus.publish("e", 99)  # unsubscribed: not taken
    assert [e.payload async for e in sub] == [0, 1, 2]


async def test_subscription_is_its_own_async_iterator() -> None:
    sub: Subscription = EventBus().subscribe("**")
    assert sub.__aiter__() is sub
    assert sub.pattern.text == "**" and sub.job_id is None and sub.maxsize == 10_000
