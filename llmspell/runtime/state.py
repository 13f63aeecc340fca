"""Versioned, scoped state: the backends and the `StateStore` that resolves scoped keys.

Agents share state through keys such as ``app:config``, ``job:plan``, ``agent:bob:notes`` or
``temp:scratch``. Every key carries a version (1 on the first write, +1 per write) so that
writers can compare-and-set instead of clobbering each other silently (swarms, retries).

Layers:

* `StateBackend` is the storage protocol, addressed by ``(namespace, key)``. It knows nothing
  of scopes or jobs, so PostgreSQL or Redis can implement it later.
* `MemoryBackend` (tests, the ``temp:`` scope) and `SQLiteBackend` (the embedded default:
  WAL, one worker thread, group-committed writes).
* `StateStore` turns scoped keys into namespaces, routes ``temp:`` to a never-persisted
  backend and reports every successful write through ``on_change`` (the ``state.changed``
  event).

Values are anything msgpack can pack; both backends store the packed bytes, so a value read
back is a fresh copy (tuples come back as lists) whichever backend holds it.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import enum
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar, runtime_checkable

import msgpack

from llmspell.runtime.errors import StateError, VersionConflict

__all__ = [
    "ANY",
    "AnyType",
    "MemoryBackend",
    "SQLiteBackend",
    "StateBackend",
    "StateChange",
    "StateStore",
    "Versioned",
    "parse_key",
]

_T = TypeVar("_T")


class AnyType(enum.Enum):
    """The type of `ANY`.

    A one-member enum rather than a bare ``object()``: it is a typed singleton that stays the
    same object after pickling, so ``expected_version is ANY`` still holds once a call has
    crossed a Ray process boundary.
    """

    ANY = "ANY"

    def __repr__(self) -> str:
        return "ANY"


ANY: Final = AnyType.ANY
"""``expected_version=ANY``: write unconditionally."""

ExpectedVersion = int | None | AnyType
"""ANY: unconditional; None: the key must not exist (create-only); int: must be current."""


@dataclass(frozen=True, slots=True)
class Versioned:
    """A stored value with its version (1 on creation, +1 per write)."""

    value: Any
    version: int


@dataclass(frozen=True, slots=True)
class StateChange:
    """One committed write, as reported to ``on_change``.

    `key` is the full scoped key (``agent:bob:plan``) so that a subscriber can match it the
    way the writer named it; `namespace` is where the backend stores it. For a deletion,
    `version` is the version that was deleted and `value` is None.
    """

    scope: str
    namespace: str
    key: str
    version: int
    deleted: bool
    job_id: str | None
    value: Any


@runtime_checkable
class StateBackend(Protocol):
    """Storage addressed by ``(namespace, key)``; all methods are async so I/O never blocks.

    A failed ``expected_version`` condition raises `VersionConflict` and writes nothing.
    """

    async def get(self, namespace: str, key: str) -> Versioned | None: ...

    async def set(
        self, namespace: str, key: str, value: Any, *, expected_version: ExpectedVersion = ANY
    ) -> int: ...

    async def delete(
        self, namespace: str, key: str, *, expected_version: int | AnyType = ANY
    ) -> bool: ...

    async def list(self, namespace: str, prefix: str = "") -> dict[str, Versioned]: ...

    async def close(self) -> None: ...


# --- shared helpers -----------------------------------------------------------------------


def _pack(namespace: str, key: str, value: Any) -> bytes:
    """Pack before anything is written, so an unstorable value never half-commits."""
    try:
        packed: bytes = msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise StateError(
            f"state key {key!r} in namespace {namespace!r}: value of type "
            f"{type(value).__name__} cannot be stored ({exc})"
        ) from exc
    return packed


def _unpack(data: bytes) -> Any:
    """Each read unpacks afresh: callers may mutate what they get without touching the store."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _validate_expected(key: str, expected: object, *, allow_none: bool) -> None:
    """Reject a wrong `expected_version` early (a bool is not a version, though it is an int)."""
    if isinstance(expected, AnyType):
        return
    if expected is None and allow_none:
        return
    if isinstance(expected, int) and not isinstance(expected, bool) and expected >= 0:
        return
    allowed = "ANY, None or a version >= 0" if allow_none else "ANY or a version >= 0"
    raise StateError(f"state key {key!r}: expected_version must be {allowed}, got {expected!r}")


def _conflict(key: str, expected: ExpectedVersion, current: int | None) -> VersionConflict | None:
    """The conflict to raise if `expected` does not hold against `current`, else None."""
    if isinstance(expected, AnyType) or expected == current:
        return None
    return VersionConflict(key, expected, current)


# --- MemoryBackend ------------------------------------------------------------------------


class MemoryBackend:
    """A dict-based backend: for tests and for ``temp:`` state, which is never persisted.

    Values are kept packed, so it accepts exactly what `SQLiteBackend` accepts and hands out
    copies, and a test against it says something about the real backend.
    """

    def __init__(self) -> None:
        self._data: dict[str, dict[str, tuple[bytes, int]]] = {}
        self._closed = False

    async def get(self, namespace: str, key: str) -> Versioned | None:
        self._ensure_open()
        entry = self._data.get(namespace, {}).get(key)
        return None if entry is None else Versioned(_unpack(entry[0]), entry[1])

    async def set(
        self, namespace: str, key: str, value: Any, *, expected_version: ExpectedVersion = ANY
    ) -> int:
        self._ensure_open()
        _validate_expected(key, expected_version, allow_none=True)
        packed = _pack(namespace, key, value)
        entries = self._data.setdefault(namespace, {})
        current = entries.get(key)
        conflict = _conflict(key, expected_version, None if current is None else current[1])
        if conflict is not None:
            raise conflict
        version = 1 if current is None else current[1] + 1
        entries[key] = (packed, version)
        return version

    async def delete(
        self, namespace: str, key: str, *, expected_version: int | AnyType = ANY
    ) -> bool:
        self._ensure_open()
        _validate_expected(key, expected_version, allow_none=False)
        entries = self._data.get(namespace, {})
        current = entries.get(key)
        conflict = _conflict(key, expected_version, None if current is None else current[1])
        if conflict is not None:
            raise conflict
        if current is None:
            return False
        del entries[key]
        if not entries:
            del self._data[namespace]
        return True

    async def list(self, namespace: str, prefix: str = "") -> dict[str, Versioned]:
        self._ensure_open()
        entries = self._data.get(namespace, {})
        return {
            key: Versioned(_unpack(packed), version)
            for key, (packed, version) in sorted(entries.items())
            if key.startswith(prefix)
        }

    async def close(self) -> None:
        """Drop everything: memory state does not outlive its backend."""
        self._closed = True
        self._data.clear()

    def _ensure_open(self) -> None:
        if self._closed:
            raise StateError("the memory state backend is closed")


# --- SQLiteBackend ------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS state (
    namespace  TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    value      BLOB    NOT NULL,
    version    INTEGER NOT NULL,
    updated_at REAL    NOT NULL,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID
"""
_SELECT_VERSION = "SELECT version FROM state WHERE namespace = ? AND key = ?"
_SELECT_ONE = "SELECT value, version FROM state WHERE namespace = ? AND key = ?"
_SELECT_PREFIX = (
    "SELECT key, value, version FROM state "
    "WHERE namespace = ? AND key >= ? AND substr(key, 1, ?) = ? ORDER BY key"
)
_UPSERT = (
    "INSERT INTO state (namespace, key, value, version, updated_at) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (namespace, key) DO UPDATE SET "
    "value = excluded.value, version = excluded.version, updated_at = excluded.updated_at"
)
_DELETE = "DELETE FROM state WHERE namespace = ? AND key = ?"


@dataclass(slots=True)
class _Write:
    """A queued write. ``packed is None`` means delete; the future gets the resulting version
    (for a delete: the deleted version, or 0 if there was nothing to delete)."""

    namespace: str
    key: str
    packed: bytes | None
    expected: ExpectedVersion
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[int]


def _settle(future: asyncio.Future[int], outcome: int | StateError) -> None:
    """Runs on the caller's loop; a caller that gave up (cancelled) is simply skipped."""
    if future.done():
        return
    if isinstance(outcome, StateError):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _resolve(write: _Write, outcome: int | StateError) -> None:
    """Hand an outcome from the worker thread back to the loop that is awaiting it."""
    with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting any more
        write.loop.call_soon_threadsafe(_settle, write.future, outcome)


class SQLiteBackend:
    """The embedded default backend: one SQLite file in WAL mode.

    Why one worker thread: sqlite3 calls block, and the event loop must not. The connection
    is created, used and closed only on that thread (``check_same_thread`` stays on as a
    guard), which also serialises all access without locks around SQL.

    Why group commit: a commit is the expensive part of a write. Writes are queued; the worker
    applies everything queued so far in one ``BEGIN IMMEDIATE``/``COMMIT`` and answers each
    caller separately: a write whose condition fails gets its own `VersionConflict` and the
    others in the batch still commit. Conditions are checked inside the transaction, against
    the effects of the earlier writes of the same batch, so a batch behaves exactly like the
    same writes applied one by one. `transaction_count` and `write_count` show the batching.

    A write whose caller is cancelled while queued may still be applied.
    """

    max_batch: int = 512
    """Upper bound of writes per transaction, so that one huge burst cannot starve readers."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 5.0) -> None:
        self._path = str(path)
        self._busy_timeout_ms = int(busy_timeout * 1000)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmspell-state")
        self._conn: sqlite3.Connection | None = None
        self._open_error: str | None = None
        self._lock = threading.Lock()  # guards _pending and _drain_scheduled
        self._pending: builtins.list[_Write] = []
        self._drain_scheduled = False
        self._closed = False
        self._transactions = 0
        self._writes = 0
        self._executor.submit(self._open_sync)  # first job: everything else queues behind it

    @property
    def path(self) -> str:
        return self._path

    @property
    def transaction_count(self) -> int:
        """Write transactions committed so far (fewer than `write_count` when batching)."""
        return self._transactions

    @property
    def write_count(self) -> int:
        """Writes (sets and deletes, including conflicting ones) handled in committed batches."""
        return self._writes

    # -- public API (event loop side) --

    async def get(self, namespace: str, key: str) -> Versioned | None:
        return await self._run(self._get_sync, namespace, key)

    async def set(
        self, namespace: str, key: str, value: Any, *, expected_version: ExpectedVersion = ANY
    ) -> int:
        _validate_expected(key, expected_version, allow_none=True)
        packed = _pack(namespace, key, value)
        return await self._enqueue(namespace, key, packed, expected_version)

    async def delete(
        self, namespace: str, key: str, *, expected_version: int | AnyType = ANY
    ) -> bool:
        _validate_expected(key, expected_version, allow_none=False)
        return await self._enqueue(namespace, key, None, expected_version) > 0

    async def list(self, namespace: str, prefix: str = "") -> dict[str, Versioned]:
        return await self._run(self._list_sync, namespace, prefix)

    async def close(self) -> None:
        """Flush queued writes, close the connection and join the worker thread."""
        if self._closed:
            return
        self._closed = True
        await asyncio.wrap_future(self._executor.submit(self._close_sync))
        await asyncio.to_thread(self._executor.shutdown, True)

    # -- event loop side helpers --

    def _ensure_open(self) -> None:
        if self._closed:
            raise StateError(f"the SQLite state backend {self._path!r} is closed")

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run a read on the worker thread; sqlite errors become StateError."""
        self._ensure_open()
        try:
            return await asyncio.wrap_future(self._executor.submit(fn, *args))
        except sqlite3.Error as exc:
            raise StateError(f"SQLite state backend {self._path!r}: {exc}") from exc

    async def _enqueue(
        self, namespace: str, key: str, packed: bytes | None, expected: ExpectedVersion
    ) -> int:
        """Queue a write and wait for the batch that carries it to commit.

        The drain is scheduled with ``call_soon`` rather than submitted at once, so that all
        writes issued in the same loop iteration (an ``asyncio.gather``) share a transaction.
        """
        self._ensure_open()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        with self._lock:
            self._pending.append(_Write(namespace, key, packed, expected, loop, future))
            schedule = not self._drain_scheduled
            self._drain_scheduled = True
        if schedule:
            loop.call_soon(self._submit_drain)
        return await future

    def _submit_drain(self) -> None:
        with contextlib.suppress(RuntimeError):  # shut down: close() has already drained
            self._executor.submit(self._drain_sync)

    # -- worker thread side --

    def _open_sync(self) -> None:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(_SCHEMA)
        except sqlite3.Error as exc:
            self._open_error = f"cannot open SQLite state file {self._path!r}: {exc}"
            return
        self._conn = conn

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StateError(self._open_error or f"SQLite state backend {self._path!r} is closed")
        return self._conn

    def _get_sync(self, namespace: str, key: str) -> Versioned | None:
        row = self._connection().execute(_SELECT_ONE, (namespace, key)).fetchone()
        return None if row is None else Versioned(_unpack(row[0]), int(row[1]))

    def _list_sync(self, namespace: str, prefix: str) -> dict[str, Versioned]:
        rows = self._connection().execute(_SELECT_PREFIX, (namespace, prefix, len(prefix), prefix))
        return {str(key): Versioned(_unpack(value), int(version)) for key, value, version in rows}

    def _drain_sync(self) -> None:
        """Commit everything queued, a batch per transaction, until the queue is empty."""
        while True:
            with self._lock:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                if not self._pending:
                    self._drain_scheduled = False
            if not batch:
                return
            self._commit_sync(batch)
            if not self._drain_scheduled:
                return

    def _commit_sync(self, batch: builtins.list[_Write]) -> None:
        """Apply a batch in one transaction and answer every caller with its own outcome."""
        outcomes: builtins.list[int | StateError]
        try:
            outcomes = self._transaction_sync(batch)
        except Exception as exc:  # anything else would leave callers waiting forever
            message = f"SQLite state backend {self._path!r}: write failed: {exc}"
            outcomes = [StateError(message) for _ in batch]
        for write, outcome in zip(batch, outcomes, strict=True):
            _resolve(write, outcome)

    def _transaction_sync(self, batch: builtins.list[_Write]) -> builtins.list[int | StateError]:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            outcomes = [self._apply_sync(conn, write) for write in batch]
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        self._transactions += 1
        self._writes += len(batch)
        return outcomes

    @staticmethod
    def _apply_sync(conn: sqlite3.Connection, write: _Write) -> int | StateError:
        """One write inside the batch transaction; a failed condition writes nothing."""
        row = conn.execute(_SELECT_VERSION, (write.namespace, write.key)).fetchone()
        current = None if row is None else int(row[0])
        conflict = _conflict(write.key, write.expected, current)
        if conflict is not None:
            return conflict
        if write.packed is None:
            if current is None:
                return 0
            conn.execute(_DELETE, (write.namespace, write.key))
            return current
        version = 1 if current is None else current + 1
        conn.execute(_UPSERT, (write.namespace, write.key, write.packed, version, time.time()))
        return version

    def _close_sync(self) -> None:
        self._drain_sync()
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# --- StateStore ---------------------------------------------------------------------------

_SCOPES: Final = ("app", "job", "agent", "temp")
_KEY_FORMS: Final = "app:NAME, job:NAME, agent:AGENT:NAME or temp:NAME"


def _require_job(key: str, scope: str, job_id: str | None) -> str:
    if job_id is None:
        raise StateError(f"state key {key!r}: the {scope}: scope needs a job_id")
    _check_job_id(key, job_id)
    return job_id


def _check_job_id(key: str, job_id: str) -> None:
    """A job id becomes a namespace segment, so a '/' in it could alias another job's state."""
    if not job_id or "/" in job_id:
        raise StateError(f"state key {key!r}: invalid job_id {job_id!r} (empty or contains '/')")


def _split(key: str, job_id: str | None, *, listing: bool) -> tuple[str, str, str, str]:
    """(scope, namespace, name, head) where ``head + name == key``.

    With `listing`, the name is a prefix and may be empty, and ``agent:bob`` means all of
    bob's keys.
    """
    scope, sep, rest = key.partition(":")
    if not sep:
        raise StateError(f"state key {key!r} has no scope: expected {_KEY_FORMS}")
    if scope not in _SCOPES:
        raise StateError(f"state key {key!r} has an unknown scope {scope!r}: expected {_KEY_FORMS}")
    if scope == "agent":
        agent, sep, name = rest.partition(":")
        if not agent or not (sep or listing):
            raise StateError(f"state key {key!r} is malformed: expected agent:AGENT:NAME")
        namespace = f"agent/{_require_job(key, scope, job_id)}/{agent}"
        head = f"agent:{agent}:"
    elif scope == "temp":
        if job_id is not None:
            _check_job_id(key, job_id)
        namespace, head, name = f"temp/{job_id if job_id is not None else '-'}", "temp:", rest
    elif scope == "job":
        namespace, head, name = f"job/{_require_job(key, scope, job_id)}", "job:", rest
    else:
        namespace, head, name = "app", "app:", rest
    if not name and not listing:
        raise StateError(f"state key {key!r} has an empty name")
    return scope, namespace, name, head


def parse_key(key: str, job_id: str | None) -> tuple[str, str, str]:
    """Resolve a scoped key to ``(scope, namespace, name)``, or raise StateError saying why.

    ``app:NAME`` -> ``app``; ``job:NAME`` -> ``job/<job_id>``;
    ``agent:AGENT:NAME`` -> ``agent/<job_id>/<AGENT>``; ``temp:NAME`` -> ``temp/<job_id or ->``.
    """
    scope, namespace, name, _ = _split(key, job_id, listing=False)
    return scope, namespace, name


class StateStore:
    """Scoped, versioned state over a `StateBackend`.

    ``temp:`` keys go to `temp_backend` (a fresh `MemoryBackend` by default) so they are never
    persisted. `on_change` is called synchronously after each committed set or delete; it
    is an observer, so an exception it raises is logged and does not undo or fail the write.
    """

    def __init__(
        self,
        backend: StateBackend,
        *,
        temp_backend: StateBackend | None = None,
        on_change: Callable[[StateChange], None] | None = None,
    ) -> None:
        self._backend = backend
        self._temp = temp_backend if temp_backend is not None else MemoryBackend()
        self._on_change = on_change

    @property
    def backend(self) -> StateBackend:
        return self._backend

    async def get(self, key: str, *, job_id: str | None = None) -> Any:
        """The value of `key`, or None if it does not exist."""
        versioned = await self.get_versioned(key, job_id=job_id)
        return None if versioned is None else versioned.value

    async def get_versioned(self, key: str, *, job_id: str | None = None) -> Versioned | None:
        scope, namespace, name = parse_key(key, job_id)
        return await self._route(scope).get(namespace, name)

    async def set(
        self,
        key: str,
        value: Any,
        *,
        job_id: str | None = None,
        expected_version: ExpectedVersion = ANY,
    ) -> int:
        """Write `value`; returns the new version. See `ExpectedVersion` for the condition."""
        scope, namespace, name = parse_key(key, job_id)
        try:
            version = await self._route(scope).set(
                namespace, name, value, expected_version=expected_version
            )
        except VersionConflict as exc:
            raise VersionConflict(key, exc.expected, exc.current) from exc
        self._emit(StateChange(scope, namespace, key, version, False, job_id, value))
        return version

    async def compare_and_set(
        self, key: str, value: Any, expected_version: int | None, *, job_id: str | None = None
    ) -> int:
        """`set` that must name the version it read (None: the key must not exist yet)."""
        return await self.set(key, value, job_id=job_id, expected_version=expected_version)

    async def delete(
        self, key: str, *, job_id: str | None = None, expected_version: int | AnyType = ANY
    ) -> bool:
        """Delete `key`; False if it did not exist (with ANY). Reports the deleted version."""
        scope, namespace, name = parse_key(key, job_id)
        backend = self._route(scope)
        if isinstance(expected_version, AnyType):
            version = await self._delete_current(backend, namespace, name)
        else:
            version = await self._delete_expected(backend, key, namespace, name, expected_version)
        if version is None:
            return False
        self._emit(StateChange(scope, namespace, key, version, True, job_id, None))
        return True

    async def list(self, scope_prefix: str, *, job_id: str | None = None) -> dict[str, Versioned]:
        """Keys under a scoped prefix (``job:``, ``agent:bob:plan``), as full scoped keys."""
        scope, namespace, prefix, head = _split(scope_prefix, job_id, listing=True)
        entries = await self._route(scope).list(namespace, prefix)
        return {head + name: versioned for name, versioned in entries.items()}

    async def close(self) -> None:
        await self._backend.close()
        if self._temp is not self._backend:
            await self._temp.close()

    # -- helpers --

    def _route(self, scope: str) -> StateBackend:
        return self._temp if scope == "temp" else self._backend

    @staticmethod
    async def _delete_current(backend: StateBackend, namespace: str, name: str) -> int | None:
        """Unconditional delete that still learns which version it deleted, for the event:
        delete conditionally on the version just read, and retry if a writer got in between."""
        while True:
            current = await backend.get(namespace, name)
            if current is None:
                return None
            try:
                deleted = await backend.delete(namespace, name, expected_version=current.version)
            except VersionConflict:
                continue
            return current.version if deleted else None

    @staticmethod
    async def _delete_expected(
        backend: StateBackend, key: str, namespace: str, name: str, expected: int
    ) -> int | None:
        try:
            deleted = await backend.delete(namespace, name, expected_version=expected)
        except VersionConflict as exc:
            raise VersionConflict(key, exc.expected, exc.current) from exc
        return expected if deleted else None

    def _emit(self, change: StateChange) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change(change)
        except Exception:
            from llmspell.runtime.logs import get_logger

            get_logger().warning("state.on_change_failed", key=change.key, exc_info=True)
