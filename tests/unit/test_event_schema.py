"""Events carry a schema version: readers refuse a version they do not know, clearly."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgpack
import pytest

from llmspell.runtime.errors import CodecError
from llmspell.runtime.eventlog import EventLog, EventLogVersionError
from llmspell.runtime.events import EVENT_SCHEMA, Event, pack_events, unpack_events


def test_a_batch_of_this_version_round_trips() -> None:
    batch = pack_events([Event("agent.turn", {"turn": 1}, job_id="j", sender="a", seq=3)])
    [event] = unpack_events(batch)
    assert (event.topic, event.seq, event.payload) == ("agent.turn", 3, {"turn": 1})


def test_a_batch_of_an_unknown_version_is_refused_with_its_version() -> None:
    future = msgpack.packb([f"llmspell.events/{EVENT_SCHEMA + 1}", [
        ["agent.turn", "j", "a", 1, 0.0, msgpack.packb({"turn": 1})]]], use_bin_type=True)
    with pytest.raises(CodecError) as caught:
        unpack_events(future)
    assert caught.value.reason == "version"
    assert f"schema version '{EVENT_SCHEMA + 1}'" in str(caught.value)
    assert f"reads version {EVENT_SCHEMA}" in str(caught.value)


def test_a_new_log_is_stamped_with_the_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    EventLog(str(path)).close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == EVENT_SCHEMA


def test_a_log_written_before_the_stamp_is_read_as_version_1(tmp_path: Path) -> None:
    """The previous format: the same table, no user_version (0). It is adopted, not refused."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE events (job_id TEXT NOT NULL, seq INTEGER NOT NULL, "
                     "topic TEXT NOT NULL, sender TEXT NOT NULL, ts REAL NOT NULL, "
                     "payload BLOB, PRIMARY KEY (job_id, seq)) WITHOUT ROWID")
        conn.execute("INSERT INTO events VALUES ('j', 1, 'job.started', 'driver', 1.0, ?)",
                     (msgpack.packb({"input": "x"}),))
    log = EventLog(str(path))
    try:
        [event] = log.replay("j")
        assert (event.topic, event.payload) == ("job.started", {"input": "x"})
    finally:
        log.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == EVENT_SCHEMA


def test_a_log_of_an_unknown_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {EVENT_SCHEMA + 1}")
    with pytest.raises(EventLogVersionError) as caught:
        EventLog(str(path))
    assert caught.value.found == EVENT_SCHEMA + 1
    assert str(path) in str(caught.value)
    assert f"reads version {EVENT_SCHEMA}" in str(caught.value)
