"""Tests of llmspell.runtime.state: both backends, group commit, scopes and change events."""

from __future__ import annotations

import asyncio
import pickle
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmspell.runtime.errors import StateError, VersionConflict
from llmspell.runtime.state import (
    ANY,
    AnyType,
    MemoryBackend,
    SQLiteBackend,
    StateBackend,
    StateChange,
    StateStore,
    Versioned,
    parse_key,
)

# --- fixtures -----------------------------------------------------------------------------


def _make_backend(kind: str, tmp_path: Path) -> StateBackend:
    if kind == "memory":
        return MemoryBackend()
    return SQLiteBackend(tmp_path / "state.db")


@pytest.fixture(params=["memory", "sqlite"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StateBackend]:
    b = _make_backend(request.param, tmp_path)
    yield b
    await b.close()


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[SQLiteBackend]:
    b = SQLiteBackend(tmp_path / "state.db")
    yield b
    await b.close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[StateStore]:
    s = StateStore(SQLiteBackend(tmp_path / "store.db"))
    yield s
    await s.close()


def _state_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("llmspell-state"))


# --- ANY ----------------------------------------------------------------------------------


def test_any_is_a_singleton_that_survives_pickling() -> None:
    assert pickle.loads(pickle.dumps(ANY)) is ANY
    assert isinstance(ANY, AnyType)
    assert repr(ANY) == "ANY"


# --- both backends: the same behaviour ----------------------------------------------------


async def test_backends_satisfy_the_protocol(backend: StateBackend) -> None:
    assert isinstance(backend, StateBackend)


async def test_get_missing_is_none(backend: StateBackend) -> None:
    assert await backend.get("ns", "missing") is None


async def test_versions_start_at_one_and_increase_per_write(backend: StateBackend) -> None:
    assert await backend.set("ns", "k", "a") == 1
    assert await backend.set("ns", "k", "b") == 2
    assert await backend.set("ns", "k", "c") == 3
    assert await backend.get("ns", "k") == Versioned("c", 3)
    assert await backend.set("ns", "other", 1) == 1  # versions are per key


async def test_values_round_trip(backend: StateBackend) -> None:
    value = {
        "s": "héllo",
        "i": -(2**63),
        "u": 2**64 - 1,
        "f": 1.5,
        "b": b"\x00\xff",
        "n": None,
        "t": True,
        "l": [1, [2, {"x": 3}]],
        "tuple": (1, 2),
        "d": {1: "int key"},
    }
    await backend.set("ns", "k", value)
    got = await backend.get("ns", "k")
    assert got is not None
    assert got.value == {**value, "tuple": [1, 2]}  # msgpack has no tuple: it comes back a list
    assert isinstance(got.value["b"], bytes)


async def test_values_read_back_are_copies(backend: StateBackend) -> None:
    original = {"items": [1, 2]}
    await backend.set("ns", "k", original)
    original["items"].append(99)  # mutating what was written...
    first = await backend.get("ns", "k")
    assert first is not None
    first.value["items"].append(100)  # ...or what was read does not touch the store
    again = await backend.get("ns", "k")
    assert again == Versioned({"items": [1, 2]}, 1)


async def test_namespaces_are_isolated(backend: StateBackend) -> None:
    await backend.set("a", "k", "in a")
    await backend.set("b", "k", "in b")
    assert await backend.get("a", "k") == Versioned("in a", 1)
    assert await backend.get("b", "k") == Versioned("in b", 1)
    assert await backend.delete("a", "k") is True
    assert await backend.get("a", "k") is None
    assert await backend.get("b", "k") == Versioned("in b", 1)


async def test_delete(backend: StateBackend) -> None:
    assert await backend.delete("ns", "k") is False
    await backend.set("ns", "k", 1)
    await backend.set("ns", "k", 2)
    assert await backend.delete("ns", "k") is True
    assert await backend.get("ns", "k") is None
    assert await backend.delete("ns", "k") is False
    assert await backend.set("ns", "k", 3) == 1  # a deleted key starts again at version 1


async def test_list_by_prefix(backend: StateBackend) -> None:
    for key in ["plan.b", "plan.a", "planet", "notes", "50%_off", "50x"]:
        await backend.set("ns", key, key.upper())
    await backend.set("other", "plan.z", "elsewhere")
    await backend.set("ns", "plan.a", "PLAN.A v2")

    everything = await backend.list("ns")
    assert list(everything) == sorted(["plan.b", "plan.a", "planet", "notes", "50%_off", "50x"])
    assert await backend.list("ns", "plan.") == {
        "plan.a": Versioned("PLAN.A v2", 2),
        "plan.b": Versioned("PLAN.B", 1),
    }
    assert set(await backend.list("ns", "plan")) == {"plan.a", "plan.b", "planet"}
    # '%' and '_' are plain characters in a prefix, not LIKE wildcards
    assert set(await backend.list("ns", "50%")) == {"50%_off"}
    assert set(await backend.list("ns", "5_")) == set()
    assert await backend.list("ns", "zzz") == {}
    assert await backend.list("nowhere") == {}


async def test_compare_and_set_conflict_carries_current_and_writes_nothing(
    backend: StateBackend,
) -> None:
    await backend.set("ns", "k", "v1")
    await backend.set("ns", "k", "v2")
    with pytest.raises(VersionConflict) as info:
        await backend.set("ns", "k", "stale", expected_version=1)
    assert (info.value.key, info.value.expected, info.value.current) == ("k", 1, 2)
    assert "current version is 2" in str(info.value)
    assert await backend.get("ns", "k") == Versioned("v2", 2)
    assert await backend.set("ns", "k", "v3", expected_version=2) == 3
    assert await backend.get("ns", "k") == Versioned("v3", 3)


async def test_compare_and_set_on_missing_key_conflicts(backend: StateBackend) -> None:
    with pytest.raises(VersionConflict) as info:
        await backend.set("ns", "k", "x", expected_version=1)
    assert (info.value.expected, info.value.current) == (1, None)
    assert await backend.get("ns", "k") is None


async def test_create_only(backend: StateBackend) -> None:
    assert await backend.set("ns", "k", "first", expected_version=None) == 1
    with pytest.raises(VersionConflict) as info:
        await backend.set("ns", "k", "second", expected_version=None)
    assert (info.value.expected, info.value.current) == (None, 1)
    assert await backend.get("ns", "k") == Versioned("first", 1)


async def test_conditional_delete(backend: StateBackend) -> None:
    await backend.set("ns", "k", "a")
    await backend.set("ns", "k", "b")
    with pytest.raises(VersionConflict) as info:
        await backend.delete("ns", "k", expected_version=1)
    assert info.value.current == 2
    assert await backend.get("ns", "k") == Versioned("b", 2)
    assert await backend.delete("ns", "k", expected_version=2) is True
    assert await backend.get("ns", "k") is None
    with pytest.raises(VersionConflict) as info:
        await backend.delete("ns", "k", expected_version=2)
    assert info.value.current is None


@pytest.mark.parametrize("bad", [True, -1, "1", 1.0])
async def test_invalid_expected_version_is_rejected(backend: StateBackend, bad: Any) -> None:
    with pytest.raises(StateError, match="expected_version"):
        await backend.set("ns", "k", "x", expected_version=bad)
    assert await backend.get("ns", "k") is None


@pytest.mark.parametrize("value", [object(), {"nested": {1, 2}}, 2**70])
async def test_unpackable_value_raises_naming_the_key(backend: StateBackend, value: Any) -> None:
    await backend.set("ns", "k", "kept")
    with pytest.raises(StateError, match="'k'") as info:
        await backend.set("ns", "k", value)
    assert not isinstance(info.value, VersionConflict)
    assert "cannot be stored" in str(info.value)
    assert await backend.get("ns", "k") == Versioned("kept", 1)


async def test_closed_backend_refuses_work(tmp_path: Path) -> None:
    for kind in ("memory", "sqlite"):
        b = _make_backend(kind, tmp_path)
        await b.set("ns", "k", 1)
        await b.close()
        await b.close()  # idempotent
        with pytest.raises(StateError, match="closed"):
            await b.get("ns", "k")
        with pytest.raises(StateError, match="closed"):
            await b.set("ns", "k", 2)


# --- SQLite specifics ---------------------------------------------------------------------


async def test_sqlite_uses_wal(sqlite: SQLiteBackend, tmp_path: Path) -> None:
    await sqlite.set("ns", "k", 1)
    assert (tmp_path / "state.db-wal").exists()


async def test_sqlite_concurrent_cas_increments_are_group_committed(
    sqlite: SQLiteBackend,
) -> None:
    await sqlite.set("ns", "counter", 0)
    attempts = 0
    conflicts = 0

    async def increment() -> None:
        nonlocal attempts, conflicts
        while True:
            current = await sqlite.get("ns", "counter")
            assert current is not None
            attempts += 1
            try:
                await sqlite.set(
                    "ns", "counter", current.value + 1, expected_version=current.version
                )
                return
            except VersionConflict as exc:
                assert exc.current is not None and exc.current > current.version
                conflicts += 1

    before = sqlite.transaction_count
    await asyncio.gather(*(increment() for _ in range(50)))

    assert await sqlite.get("ns", "counter") == Versioned(50, 51)
    assert attempts == 50 + conflicts
    assert conflicts > 0  # they really raced
    transactions = sqlite.transaction_count - before
    assert 0 < transactions < attempts  # several writes shared a commit


async def test_sqlite_one_conflict_does_not_fail_its_batch(sqlite: SQLiteBackend) -> None:
    await sqlite.set("ns", "guarded", "v1")
    before = sqlite.transaction_count
    results = await asyncio.gather(
        *(sqlite.set("ns", f"k{i}", i) for i in range(10)),
        sqlite.set("ns", "guarded", "stale", expected_version=7),
        *(sqlite.set("ns", f"k{i}", i * 10) for i in range(10)),
        return_exceptions=True,
    )
    assert sqlite.transaction_count - before == 1  # all 21 writes in one transaction
    conflict = results[10]
    assert isinstance(conflict, VersionConflict)
    assert (conflict.key, conflict.expected, conflict.current) == ("guarded", 7, 1)
    assert results[:10] == [1] * 10
    assert results[11:] == [2] * 10
    assert await sqlite.get("ns", "guarded") == Versioned("v1", 1)
    assert await sqlite.get("ns", "k3") == Versioned(30, 2)


async def test_sqlite_batch_applies_writes_in_order(sqlite: SQLiteBackend) -> None:
    """Conditions inside a batch see the earlier writes of the same batch."""
    outcomes = await asyncio.gather(
        sqlite.set("ns", "k", "a", expected_version=None),
        sqlite.set("ns", "k", "b", expected_version=1),
        sqlite.set("ns", "k", "c", expected_version=1),
        sqlite.delete("ns", "k", expected_version=2),
        sqlite.set("ns", "k", "d", expected_version=None),
        return_exceptions=True,
    )
    results: list[Any] = list(outcomes)
    assert results[:2] == [1, 2]
    assert isinstance(results[2], VersionConflict) and results[2].current == 2
    assert results[3:] == [True, 1]
    assert await sqlite.get("ns", "k") == Versioned("d", 1)


async def test_sqlite_data_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "persist.db"
    first = SQLiteBackend(path)
    await first.set("ns", "kept", {"a": [1, 2]})
    await first.set("ns", "kept", {"a": [1, 2, 3]})
    await first.set("ns", "gone", 1)
    await first.delete("ns", "gone")
    await first.close()

    second = SQLiteBackend(path)
    try:
        assert await second.get("ns", "kept") == Versioned({"a": [1, 2, 3]}, 2)
        assert await second.get("ns", "gone") is None
        assert await second.set("ns", "kept", "next", expected_version=2) == 3
    finally:
        await second.close()


async def test_sqlite_close_flushes_queued_writes_and_joins_its_thread(tmp_path: Path) -> None:
    path = tmp_path / "flush.db"
    threads_before = _state_threads()
    b = SQLiteBackend(path)
    await b.get("ns", "k")
    assert _state_threads() == threads_before + 1

    tasks = [asyncio.ensure_future(b.set("ns", f"k{i}", i)) for i in range(20)]
    await asyncio.sleep(0)  # let the writes enqueue, then close at once
    await b.close()
    assert [t.result() for t in tasks] == [1] * 20
    assert _state_threads() == threads_before

    reopened = SQLiteBackend(path)
    try:
        assert len(await reopened.list("ns")) == 20
    finally:
        await reopened.close()


async def test_sqlite_unopenable_file_raises_state_error(tmp_path: Path) -> None:
    b = SQLiteBackend(tmp_path / "no" / "such" / "dir" / "state.db")
    try:
        with pytest.raises(StateError, match="cannot open"):
            await b.get("ns", "k")
        with pytest.raises(StateError, match="cannot open"):
            await b.set("ns", "k", 1)
    finally:
        await b.close()


async def test_sqlite_does_not_block_the_event_loop(sqlite: SQLiteBackend) -> None:
    """While the worker thread writes, the loop keeps running other tasks."""
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.ensure_future(ticker())
    for i in range(30):
        await sqlite.set("ns", f"k{i}", "x" * 1000)
    stop.set()
    await task
    assert ticks >= 30  # at least one tick per awaited write


# --- property: both backends agree --------------------------------------------------------

_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=6,
)
_expected = st.one_of(st.just(ANY), st.none(), st.integers(min_value=0, max_value=4))
_addresses = st.tuples(st.sampled_from(["n1", "n2"]), st.sampled_from(["a", "ab", "b"]))
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("set"), _addresses, _values, _expected),
        st.tuples(
            st.just("delete"),
            _addresses,
            st.none(),
            st.one_of(st.just(ANY), st.integers(min_value=0, max_value=4)),
        ),
        st.tuples(st.just("unpackable"), _addresses, st.none(), st.just(ANY)),
    ),
    max_size=25,
)


async def _apply(backend: StateBackend, op: tuple[Any, ...]) -> Any:
    """Run one op and describe its outcome, errors included, so outcomes can be compared."""
    kind, (namespace, key), value, expected = op
    try:
        if kind == "set":
            return await backend.set(namespace, key, value, expected_version=expected)
        if kind == "delete":
            return await backend.delete(namespace, key, expected_version=expected)
        return await backend.set(namespace, key, {1, 2})
    except VersionConflict as exc:
        return ("conflict", exc.key, exc.expected, exc.current)
    except StateError:
        return ("state_error",)


async def _snapshot(backend: StateBackend) -> dict[str, dict[str, Versioned]]:
    return {ns: await backend.list(ns) for ns in ("n1", "n2")}


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=_ops)
async def test_memory_and_sqlite_agree(ops: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        memory = MemoryBackend()
        sqlite = SQLiteBackend(Path(tmp) / "prop.db")
        try:
            for op in ops:
                assert await _apply(memory, op) == await _apply(sqlite, op), op
            expected = await _snapshot(memory)
            assert await _snapshot(sqlite) == expected
            # the same ops fired concurrently (one batch) give the same outcomes too
            memory2 = MemoryBackend()
            sequential = [await _apply(memory2, op) for op in ops]
            fresh = SQLiteBackend(Path(tmp) / "batch.db")
            try:
                batched = await asyncio.gather(*(_apply(fresh, op) for op in ops))
                assert batched == sequential
                assert await _snapshot(fresh) == expected
            finally:
                await fresh.close()
        finally:
            await sqlite.close()
            await memory.close()
        reopened = SQLiteBackend(Path(tmp) / "prop.db")
        try:
            assert await _snapshot(reopened) == expected
        finally:
            await reopened.close()


# --- StateStore: key parsing --------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "job_id", "expected"),
    [
        ("app:config", None, ("app", "app", "config")),
        ("app:config", "j1", ("app", "app", "config")),
        ("app:a:b", None, ("app", "app", "a:b")),
        ("job:plan", "j1", ("job", "job/j1", "plan")),
        ("agent:bob:notes", "j1", ("agent", "agent/j1/bob", "notes")),
        ("agent:bob:a:b", "j1", ("agent", "agent/j1/bob", "a:b")),
        ("temp:scratch", "j1", ("temp", "temp/j1", "scratch")),
        ("temp:scratch", None, ("temp", "temp/-", "scratch")),
    ],
)
def test_parse_key(key: str, job_id: str | None, expected: tuple[str, str, str]) -> None:
    assert parse_key(key, job_id) == expected


@pytest.mark.parametrize(
    ("key", "job_id", "message"),
    [
        ("foo", "j1", "no scope"),
        ("", "j1", "no scope"),
        ("user:x", "j1", "unknown scope 'user'"),
        ("app:", None, "empty name"),
        ("job:", "j1", "empty name"),
        ("job:plan", None, "needs a job_id"),
        ("agent:bob:notes", None, "needs a job_id"),
        ("agent:x", "j1", "malformed"),
        ("agent::notes", "j1", "malformed"),
        ("agent:bob:", "j1", "empty name"),
        ("job:plan", "a/b", "invalid job_id"),
        ("job:plan", "", "invalid job_id"),
    ],
)
async def test_scope_errors(store: StateStore, key: str, job_id: str | None, message: str) -> None:
    with pytest.raises(StateError, match=message) as info:
        parse_key(key, job_id)
    assert repr(key) in str(info.value)
    with pytest.raises(StateError, match=message):
        await store.set(key, 1, job_id=job_id)
    with pytest.raises(StateError, match=message):
        await store.get(key, job_id=job_id)


# --- StateStore: behaviour ----------------------------------------------------------------


async def test_store_scopes_are_isolated(store: StateStore) -> None:
    await store.set("app:k", "app")
    await store.set("job:k", "job 1", job_id="j1")
    await store.set("job:k", "job 2", job_id="j2")
    await store.set("agent:bob:k", "bob", job_id="j1")
    await store.set("agent:amy:k", "amy", job_id="j1")
    await store.set("temp:k", "temp", job_id="j1")

    assert await store.get("app:k", job_id="j2") == "app"  # app: is shared by all jobs
    assert await store.get("job:k", job_id="j1") == "job 1"
    assert await store.get("job:k", job_id="j2") == "job 2"
    assert await store.get("agent:bob:k", job_id="j1") == "bob"
    assert await store.get("agent:amy:k", job_id="j1") == "amy"
    assert await store.get("agent:bob:k", job_id="j2") is None
    assert await store.get("temp:k", job_id="j1") == "temp"
    assert await store.get("temp:k", job_id="j2") is None
    assert await store.get("temp:k") is None
    assert await store.backend.get("job/j1", "k") == Versioned("job 1", 1)


async def test_store_versions_and_compare_and_set(store: StateStore) -> None:
    assert await store.compare_and_set("job:plan", ["a"], None, job_id="j") == 1
    assert await store.get_versioned("job:plan", job_id="j") == Versioned(["a"], 1)
    assert await store.compare_and_set("job:plan", ["a", "b"], 1, job_id="j") == 2
    with pytest.raises(VersionConflict) as info:
        await store.compare_and_set("job:plan", ["stale"], 1, job_id="j")
    assert (info.value.key, info.value.expected, info.value.current) == ("job:plan", 1, 2)
    with pytest.raises(VersionConflict):
        await store.set("job:plan", "again", job_id="j", expected_version=None)
    assert await store.get("job:plan", job_id="j") == ["a", "b"]


async def test_store_delete(store: StateStore) -> None:
    assert await store.delete("app:k") is False
    await store.set("app:k", 1)
    await store.set("app:k", 2)
    with pytest.raises(VersionConflict) as info:
        await store.delete("app:k", expected_version=1)
    assert (info.value.key, info.value.current) == ("app:k", 2)
    assert await store.delete("app:k", expected_version=2) is True
    assert await store.get("app:k") is None
    await store.set("app:k", 3)
    assert await store.delete("app:k") is True
    assert await store.get_versioned("app:k") is None


async def test_store_list_returns_full_scoped_keys(store: StateStore) -> None:
    await store.set("app:x", 0)
    await store.set("job:a", 1, job_id="j1")
    await store.set("job:b", 2, job_id="j1")
    await store.set("job:a", 3, job_id="j2")
    await store.set("agent:bob:plan.1", "p1", job_id="j1")
    await store.set("agent:bob:plan.2", "p2", job_id="j1")
    await store.set("agent:bob:notes", "n", job_id="j1")
    await store.set("agent:bobby:plan.1", "other agent", job_id="j1")
    await store.set("temp:t", "tmp", job_id="j1")

    assert await store.list("job:", job_id="j1") == {
        "job:a": Versioned(1, 1),
        "job:b": Versioned(2, 1),
    }
    assert await store.list("agent:bob:plan", job_id="j1") == {
        "agent:bob:plan.1": Versioned("p1", 1),
        "agent:bob:plan.2": Versioned("p2", 1),
    }
    assert set(await store.list("agent:bob:", job_id="j1")) == {
        "agent:bob:plan.1",
        "agent:bob:plan.2",
        "agent:bob:notes",
    }
    assert set(await store.list("agent:bob", job_id="j1")) == set(
        await store.list("agent:bob:", job_id="j1")
    )
    assert await store.list("app:") == {"app:x": Versioned(0, 1)}
    assert await store.list("temp:", job_id="j1") == {"temp:t": Versioned("tmp", 1)}
    with pytest.raises(StateError, match="needs a job_id"):
        await store.list("job:")
    with pytest.raises(StateError, match="malformed"):
        await store.list("agent:", job_id="j1")
    with pytest.raises(StateError, match="no scope"):
        await store.list("jobs")


async def test_store_temp_is_never_persisted(tmp_path: Path) -> None:
    path = tmp_path / "temp.db"
    first = StateStore(SQLiteBackend(path))
    await first.set("temp:scratch", "volatile", job_id="j1")
    await first.set("job:kept", "durable", job_id="j1")
    assert await first.get("temp:scratch", job_id="j1") == "volatile"
    assert await first.backend.list("temp/j1") == {}  # not even written to the file
    await first.close()

    second = StateStore(SQLiteBackend(path))
    try:
        assert await second.get("temp:scratch", job_id="j1") is None
        assert await second.get("job:kept", job_id="j1") == "durable"
    finally:
        await second.close()


async def test_store_uses_given_temp_backend(tmp_path: Path) -> None:
    temp = MemoryBackend()
    s = StateStore(SQLiteBackend(tmp_path / "t.db"), temp_backend=temp)
    await s.set("temp:x", 1)
    assert await temp.get("temp/-", "x") == Versioned(1, 1)
    await s.close()
    with pytest.raises(StateError, match="closed"):
        await temp.get("temp/-", "x")


async def test_store_unpackable_value(store: StateStore) -> None:
    with pytest.raises(StateError, match=r"'plan'.*cannot be stored"):
        await store.set("job:plan", object(), job_id="j")
    assert await store.get("job:plan", job_id="j") is None


async def test_on_change_reports_every_committed_write(tmp_path: Path) -> None:
    changes: list[StateChange] = []
    s = StateStore(SQLiteBackend(tmp_path / "events.db"), on_change=changes.append)
    try:
        await s.set("job:plan", {"step": 1}, job_id="j")
        await s.compare_and_set("job:plan", {"step": 2}, 1, job_id="j")
        await s.set("agent:bob:notes", "hi", job_id="j")
        await s.set("temp:t", 1)
        assert await s.delete("job:plan", job_id="j") is True
        # failures and no-ops are not changes
        with pytest.raises(VersionConflict):
            await s.compare_and_set("agent:bob:notes", "x", 5, job_id="j")
        with pytest.raises(StateError):
            await s.set("app:bad", object())
        assert await s.delete("job:missing", job_id="j") is False
    finally:
        await s.close()

    assert changes == [
        StateChange("job", "job/j", "job:plan", 1, False, "j", {"step": 1}),
        StateChange("job", "job/j", "job:plan", 2, False, "j", {"step": 2}),
        StateChange("agent", "agent/j/bob", "agent:bob:notes", 1, False, "j", "hi"),
        StateChange("temp", "temp/-", "temp:t", 1, False, None, 1),
        StateChange("job", "job/j", "job:plan", 2, True, "j", None),
    ]


async def test_on_change_exception_does_not_break_the_write(store: StateStore) -> None:
    calls: list[str] = []

    def explode(change: StateChange) -> None:
        calls.append(change.key)
        raise RuntimeError("observer bug")

    s = StateStore(store.backend, on_change=explode)
    assert await s.set("app:k", "v") == 1
    assert await s.set("app:k", "w", expected_version=1) == 2
    assert await s.delete("app:k") is True
    assert calls == ["app:k", "app:k", "app:k"]
    assert await s.get("app:k") is None
    assert await s.set("app:k", "again") == 1
