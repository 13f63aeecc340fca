"""The event log: every event of a job, append-only in SQLite, replayable.

The log is a bus sink. Events are buffered and written by one writer thread, one transaction
per batch (`batch_size` events, or whatever is pending after `flush_interval` seconds), so the
publisher's event loop never waits on a commit. When the writer falls `max_backlog` events
behind, the bus makes publishers wait (`full` / `room()`).

`replay(job_id, from_seq, pattern)` reads a job's events back in sequence order, from a
separate read connection (WAL lets readers run beside the writer).

The file carries the events' schema version (SQLite's `user_version`). A log written before
the version was stamped has the layout of version 1 and is adopted as such; a log of a version
this runtime does not know is refused with EventLogVersionError, never misread.
"""

from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

from llmspell.runtime.errors import LlmspellError
from llmspell.runtime.events import EVENT_SCHEMA, Event, TopicPattern
from llmspell.runtime.logs import get_logger

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    sender TEXT NOT NULL,
    ts REAL NOT NULL,
    payload BLOB,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
"""
_STOP = object()


class EventLogVersionError(LlmspellError):
    """The event log file was written with an events schema this runtime cannot read."""

    def __init__(self, path: str, found: int) -> None:
        super().__init__(f"event log {path!r} has events schema version {found}; this runtime "
                         f"reads version {EVENT_SCHEMA} (open it with the llmspell version "
                         "that wrote it, or start a new log)")
        self.path = path
        self.found = found


def _check_version(conn: sqlite3.Connection, path: str) -> None:
    found = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if found == 0:  # new, or written before the version was stamped: the layout of 1
        conn.execute(f"PRAGMA user_version = {EVENT_SCHEMA}")
    elif found != EVENT_SCHEMA:
        raise EventLogVersionError(path, found)


class EventLog:
    """An append-only SQLite log of events, written in batches by one owned thread."""

    def __init__(
        self,
        path: str,
        *,
        batch_size: int = 500,
        flush_interval: float = 0.05,
        max_backlog: int = 100_000,
    ) -> None:
        self.path = path
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_backlog = max_backlog
        self.written = 0
        self.transactions = 0
        self.write_errors = 0
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with self._connect() as conn:
            _check_version(conn, path)
            conn.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._pending: list[tuple[str, int, str, str, float, bytes]] = []
        self._queued = 0  # events handed to the writer and not yet committed
        self._batches: queue.Queue[Any] = queue.Queue()
        self._committed = threading.Condition()
        self._room: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._writer = threading.Thread(target=self._write_loop, name="llmspell-eventlog",
                                        daemon=True)
        self._writer.start()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    # -- the sink -----------------------------------------------------------------------------

    def last_seq(self, job_id: str) -> int:
        """The highest sequence number logged for a job (0 if none), pending ones included."""
        self.flush()
        conn = self._connect()
        try:
            row = conn.execute("SELECT MAX(seq) FROM events WHERE job_id = ?", (job_id,)).fetchone()
        finally:
            conn.close()
        return int(row[0] or 0)

    def accept(self, event: Event) -> None:
        row = (event.job_id, event.seq, event.topic, event.sender, event.ts, event.raw_payload())
        with self._lock:
            self._pending.append(row)
            if len(self._pending) < self.batch_size:
                return
            batch, self._pending = self._pending, []
            self._queued += len(batch)
        self._batches.put(batch)

    @property
    def backlog(self) -> int:
        return self._queued + len(self._pending)

    @property
    def full(self) -> bool:
        return self._queued >= self.max_backlog

    async def room(self) -> None:
        """Wait until the writer is back under `max_backlog` (polled: the writer is a thread)."""
        while self.full and not self._closed:  # noqa: ASYNC110 - the writer is a thread
            await asyncio.sleep(0.001)

    def flush(self, timeout: float | None = 30.0) -> None:
        """Hand pending events to the writer and wait until all are committed (blocking)."""
        with self._lock:
            batch, self._pending = self._pending, []
            self._queued += len(batch)
        if batch:
            self._batches.put(batch)
        with self._committed:
            self._committed.wait_for(lambda: self._queued == 0, timeout=timeout)

    async def aflush(self) -> None:
        await asyncio.to_thread(self.flush)

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        self._closed = True
        self._batches.put(_STOP)
        self._writer.join(timeout=30)

    # -- the writer thread --------------------------------------------------------------------

    def _write_loop(self) -> None:
        conn = self._connect()
        try:
            while True:
                try:
                    batch = self._batches.get(timeout=self.flush_interval)
                except queue.Empty:
                    with self._lock:
                        batch, self._pending = self._pending, []
                        self._queued += len(batch)
                    if not batch:
                        continue
                if batch is _STOP:
                    return
                self._commit(conn, batch)
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list[Any]) -> None:
        try:
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT OR IGNORE INTO events (job_id, seq, topic, sender, ts, payload) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                batch,
            )
            conn.execute("COMMIT")
            self.written += len(batch)
            self.transactions += 1
        except sqlite3.Error as exc:
            self.write_errors += len(batch)
            conn.execute("ROLLBACK") if conn.in_transaction else None
            get_logger(component="eventlog").error(
                "event log write failed", path=self.path, events=len(batch), error=str(exc)
            )
        with self._committed:
            self._queued -= len(batch)
            self._committed.notify_all()

    # -- reading ------------------------------------------------------------------------------

    def replay(
        self, job_id: str, from_seq: int = 0, pattern: str = "**", limit: int | None = None
    ) -> list[Event]:
        """A job's events with seq >= from_seq whose topic matches `pattern`, in order."""
        return list(self.iter_replay(job_id, from_seq, pattern, limit))

    def iter_replay(
        self, job_id: str, from_seq: int = 0, pattern: str = "**", limit: int | None = None
    ) -> Iterator[Event]:
        matcher = TopicPattern(pattern)
        self.flush()
        conn = self._connect()
        try:
            cursor = conn.execute(
                "SELECT seq, topic, sender, ts, payload FROM events "
                "WHERE job_id = ? AND seq >= ? ORDER BY seq",
                (job_id, from_seq),
            )
            count = 0
            for seq, topic, sender, ts, payload in cursor:
                if not matcher.matches(topic):
                    continue
                yield Event(topic, job_id=job_id, sender=sender, seq=seq, ts=ts, raw=payload)
                count += 1
                if limit is not None and count >= limit:
                    return
        finally:
            conn.close()

    def jobs(self) -> list[str]:
        self.flush()
        conn = self._connect()
        try:
            return [r[0] for r in conn.execute("SELECT DISTINCT job_id FROM events")]
        finally:
            conn.close()
