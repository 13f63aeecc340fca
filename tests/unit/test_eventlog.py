"""The SQLite event log: batched appends from a writer thread, replay, persistence, backlog."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llmspell.runtime.bus import EventBus
from llmspell.runtime.errors import PatternError
from llmspell.runtime.eventlog import EventLog
from llmspell.runtime.events import Event

MakeLog = Callable[..., EventLog]


@pytest.fixture
def make_log(tmp_path: Path) -> Iterator[MakeLog]:
    logs: list[EventLog] = []

    def make(name: str = "events.db", **kw: Any) -> EventLog:
        log = EventLog(str(tmp_path / name), **kw)
        logs.append(log)
        return log

    yield make
    for log in logs:
        log.close()


def wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.002)


_TOPICS = ("agent.a.tool.call", "agent.a.llm.request", "job.step", "agent.b.tool.result")


async def fill(log: EventLog, n: int, job_id: str = "j") -> EventBus:
    bus = EventBus(sinks=[log])
    for i in range(n):
        await bus.publish(_TOPICS[i % len(_TOPICS)], {"i": i}, job_id=job_id, sender=f"s{i % 3}")
    return bus


async def test_append_many_and_replay_in_order(make_log: MakeLog) -> None:
    log = make_log(batch_size=100)
    await fill(log, 1000)
    events = log.replay("j")
    assert [e.seq for e in events] == list(range(1, 1001))
    assert [e.payload["i"] for e in events] == list(range(1000))
    assert events[5].topic == _TOPICS[5 % 4] and events[5].sender == "s2"
    assert all(e.job_id == "j" for e in events)
    assert log.written == 1000 and log.backlog == 0 and log.write_errors == 0
    assert 10 <= log.transactions <= 30  # batched: far fewer transactions than events


async def test_replay_from_seq_pattern_and_limit(make_log: MakeLog) -> None:
    log = make_log(batch_size=7)
    await fill(log, 40)
    await fill(log, 5, job_id="other")
    assert [e.seq for e in log.replay("j", from_seq=35)] == [35, 36, 37, 38, 39, 40]
    tools = log.replay("j", pattern="agent.*.tool.*")
    assert {e.topic for e in tools} == {"agent.a.tool.call", "agent.b.tool.result"}
    assert [e.seq for e in tools] == [s for s in range(1, 41) if (s - 1) % 4 in (0, 3)]
    limited = log.replay("j", from_seq=10, pattern="agent.**", limit=4)
    assert [(e.seq, e.topic) for e in limited] == [
        (10, "agent.a.llm.request"), (12, "agent.b.tool.result"), (13, "agent.a.tool.call"),
        (14, "agent.a.llm.request")]
    assert [e.seq for e in log.replay("other")] == [1, 2, 3, 4, 5]
    assert log.replay("nobody") == []
    assert log.replay("j", from_seq=41) == []
    assert sorted(log.jobs()) == ["j", "other"]
    with pytest.raises(PatternError):
        log.replay("j", pattern="a..b")


async def test_iter_replay_is_lazy_and_ordered(make_log: MakeLog) -> None:
    log = make_log()
    await fill(log, 20)
    it = log.iter_replay("j", from_seq=3)
    assert next(it).seq == 3
    assert [e.seq for e in it] == list(range(4, 21))


async def test_events_survive_close_and_reopen(make_log: MakeLog, tmp_path: Path) -> None:
    log = make_log("persist.db")
    await fill(log, 25)
    await fill(log, 3, job_id="k")
    before = [e.to_dict() for e in log.replay("j")]
    log.close()
    log.close()  # idempotent
    reopened = make_log("persist.db")
    assert [e.to_dict() for e in reopened.replay("j")] == before
    assert reopened.last_seq("j") == 25 and reopened.last_seq("k") == 3
    # A resumed job continues its numbering after the log's last seq.
    bus = EventBus(sinks=[reopened])
    bus.start_seq("j", reopened.last_seq("j"))
    assert (await bus.publish("job.resumed", job_id="j")).seq == 26
    assert [e.seq for e in reopened.replay("j", from_seq=25)] == [25, 26]


async def test_last_seq_counts_pending_events(make_log: MakeLog) -> None:
    log = make_log(batch_size=1000, flush_interval=10)
    assert log.last_seq("j") == 0
    await fill(log, 5)
    assert log.backlog == 5 and log.written == 0  # still pending in memory
    assert log.last_seq("j") == 5  # flushed first


async def test_flush_commits_pending_events(make_log: MakeLog) -> None:
    log = make_log(batch_size=1000, flush_interval=10)
    await fill(log, 3)
    assert log.written == 0 and log.transactions == 0
    log.flush()
    assert log.written == 3 and log.transactions == 1 and log.backlog == 0
    await fill(log, 2, job_id="k")
    await log.aflush()
    assert log.written == 5 and log.transactions == 2


async def test_the_writer_commits_on_its_own_after_flush_interval(make_log: MakeLog) -> None:
    log = make_log(batch_size=1000, flush_interval=0.01)
    await fill(log, 3)
    await asyncio.to_thread(wait_until, lambda: log.written == 3)
    assert log.backlog == 0 and log.transactions == 1


async def test_a_full_batch_is_handed_to_the_writer_at_once(make_log: MakeLog) -> None:
    log = make_log(batch_size=10, flush_interval=10)
    await fill(log, 25)
    await asyncio.to_thread(wait_until, lambda: log.written == 20)
    assert log.transactions == 2 and log.backlog == 5


async def test_an_unencodable_payload_is_still_logged(make_log: MakeLog) -> None:
    log = make_log()
    bus = EventBus(sinks=[log])
    await bus.publish("odd", {"value": object()}, job_id="j")
    await bus.publish("fine", {"value": 1}, job_id="j")
    odd, fine = log.replay("j")
    assert odd.topic == "odd" and odd.seq == 1
    assert "object object" in odd.payload["unencodable"] and odd.payload["error"]
    assert fine.payload == {"value": 1}


async def test_accept_takes_events_directly(make_log: MakeLog) -> None:
    log = make_log()
    for seq in (3, 1, 2):
        log.accept(Event("t", {"seq": seq}, job_id="j", sender="x", seq=seq, ts=100.0 + seq))
    events = log.replay("j")
    assert [(e.seq, e.payload["seq"], e.ts, e.sender) for e in events] == [
        (1, 1, 101.0, "x"), (2, 2, 102.0, "x"), (3, 3, 103.0, "x")]
    # The log is append-only: a second event under an existing (job, seq) does not replace it.
    log.accept(Event("t", {"seq": "again"}, job_id="j", seq=2))
    assert log.replay("j", from_seq=2, limit=1)[0].payload == {"seq": 2}


async def test_a_failed_batch_is_counted_and_the_log_keeps_working(
    make_log: MakeLog, tmp_path: Path
) -> None:
    log = make_log("poison.db", batch_size=5, flush_interval=10)
    conn = sqlite3.connect(tmp_path / "poison.db")
    conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.topic = 'poison' "
                 "BEGIN SELECT RAISE(ABORT, 'refused'); END;")
    conn.commit()
    conn.close()
    bus = EventBus(sinks=[log])
    for topic in ("a", "b", "poison", "c", "d"):  # one batch, refused as a whole
        await bus.publish(topic, job_id="j")
    for topic in ("e", "f"):
        await bus.publish(topic, job_id="j")
    log.flush(timeout=5)
    assert log.write_errors == 5 and log.backlog == 0
    assert [e.topic for e in log.replay("j")] == ["e", "f"]


async def test_backlog_makes_the_log_full_and_publishers_wait(
    make_log: MakeLog, tmp_path: Path
) -> None:
    log = make_log("busy.db", batch_size=10, max_backlog=10, flush_interval=10)
    bus = EventBus(sinks=[log])
    blocker = sqlite3.connect(tmp_path / "busy.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # hold the write lock: the writer thread must wait
    try:
        for i in range(9):
            await bus.publish("e", i, job_id="j")
        assert not log.full and log.backlog == 9
        tenth = asyncio.create_task(bus.publish("e", 9, job_id="j"))
        await asyncio.sleep(0.05)
        assert log.full and log.backlog == 10
        assert not tenth.done()  # the publisher waits for the writer
        assert log.written == 0
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    await asyncio.wait_for(tenth, 5)
    assert not log.full
    assert [e.payload for e in log.replay("j")] == list(range(10))


async def test_log_directories_are_created(tmp_path: Path) -> None:
    log = EventLog(str(tmp_path / "deep" / "er" / "events.db"))
    try:
        log.accept(Event("t", job_id="j", seq=1))
        assert log.last_seq("j") == 1
    finally:
        log.close()
    assert (tmp_path / "deep" / "er" / "events.db").exists()
