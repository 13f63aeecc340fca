"""Access to the state store from any process of a runtime.

On a cluster, actors on other nodes cannot open the driver's SQLite file, so the store is owned
by one actor (`StateService`) and everyone else calls it through a `StateClient`. Outcomes come
back tagged rather than raised, so that a lost compare-and-set arrives here as the same
`VersionConflict` (with the current version) that the store raised.
"""

from __future__ import annotations

from typing import Any

from ray.exceptions import RayActorError

from llmspell.runtime.errors import ActorUnavailable, StateError, VersionConflict
from llmspell.runtime.hooks import HookPoint, HookRegistry
from llmspell.runtime.node import STATE_NAME, Node, untracked
from llmspell.runtime.process import settle_gc
from llmspell.runtime.state import ANY, StateChange, StateStore, Versioned

Outcome = tuple[str, Any]


def _unwrap(outcome: Outcome) -> Any:
    tag, value = outcome
    if tag == "ok":
        return value
    if tag == "conflict":
        key, expected, current = value
        raise VersionConflict(key, expected, current)
    raise StateError(str(value))


def _expected_wire(expected: Any) -> Any:
    return "*" if expected is ANY else expected


def _expected_local(expected: Any) -> Any:
    return ANY if expected == "*" else expected


class StateClient:
    """The state API of DESIGN.md (scoped keys, versions, compare-and-set) over the service."""

    def __init__(self, node: Node, *, job_id: str | None, hooks: HookRegistry | None = None
                 ) -> None:
        self._node = node
        self.job_id = job_id or None
        self.hooks = hooks

    async def _call(self, method: str, *args: Any) -> Any:
        try:
            outcome = await getattr(self._node.handle(STATE_NAME), method).remote(*args)
        except RayActorError as exc:
            raise ActorUnavailable(STATE_NAME, str(exc).splitlines()[0]) from None
        return _unwrap(outcome)

    async def get(self, key: str) -> Any:
        return await self._call("get", key, self.job_id)

    async def get_versioned(self, key: str) -> Versioned | None:
        found = await self._call("get_versioned", key, self.job_id)
        return None if found is None else Versioned(found[0], found[1])

    async def set(self, key: str, value: Any, *, expected_version: Any = ANY,
                  run_hooks: bool = True) -> int:
        """Write a value; returns its new version. Runs the state_write hooks, which may
        change the value (Modify), refuse the write (Cancel) or skip it (Replace)."""
        if not run_hooks or self.hooks is None:
            return await self._write(key, value, expected_version)

        async def write(payload: dict[str, Any], target: str | None) -> int:
            return await self._write(target or key, payload["value"],
                                     payload.get("expected_version", expected_version))

        version: int = await self.hooks.call(
            HookPoint.before_state_write, HookPoint.after_state_write,
            {"key": key, "value": value, "expected_version": expected_version}, write,
            target=key, job_id=self.job_id, actor=self._node.identity,
        )
        return version

    async def _write(self, key: str, value: Any, expected_version: Any) -> int:
        version: int = await self._call("set", key, value, self.job_id,
                                        _expected_wire(expected_version))
        return version

    async def compare_and_set(self, key: str, value: Any, expected_version: int | None) -> int:
        return await self.set(key, value, expected_version=expected_version)

    async def delete(self, key: str, *, expected_version: Any = ANY) -> bool:
        deleted: bool = await self._call("delete", key, self.job_id,
                                         _expected_wire(expected_version))
        return deleted

    async def list(self, prefix: str) -> dict[str, Versioned]:
        found = await self._call("list", prefix, self.job_id)
        return {k: Versioned(v, ver) for k, (v, ver) in found.items()}


async def _tagged(coro: Any) -> Outcome:
    try:
        return ("ok", await coro)
    except VersionConflict as exc:
        return ("conflict", (exc.key, exc.expected, exc.current))
    except StateError as exc:
        return ("error", str(exc))


class StateService:
    """The one owner of a runtime's state store (named `llmspell.state`)."""

    def __init__(self, store_path: str | None, settings: Any) -> None:
        from llmspell.runtime.state import MemoryBackend, SQLiteBackend

        backend = SQLiteBackend(store_path) if store_path else MemoryBackend()
        self.node = Node(settings, identity=STATE_NAME, service=True)
        self.store = StateStore(backend, on_change=self._changed)
        settle_gc(settings.gc_young_threshold)

    def _changed(self, change: StateChange) -> None:
        self.node.publish_nowait("state.changed", {
            "key": change.key, "scope": change.scope, "version": change.version,
            "deleted": change.deleted,
        }, job_id=change.job_id or "")

    @untracked
    async def get(self, key: str, job_id: str | None) -> Outcome:
        return await _tagged(self.store.get(key, job_id=job_id))

    @untracked
    async def get_versioned(self, key: str, job_id: str | None) -> Outcome:
        async def fetch() -> Any:
            found = await self.store.get_versioned(key, job_id=job_id)
            return None if found is None else (found.value, found.version)

        return await _tagged(fetch())

    @untracked
    async def set(self, key: str, value: Any, job_id: str | None, expected: Any) -> Outcome:
        return await _tagged(self.store.set(key, value, job_id=job_id,
                                            expected_version=_expected_local(expected)))

    @untracked
    async def delete(self, key: str, job_id: str | None, expected: Any) -> Outcome:
        return await _tagged(self.store.delete(key, job_id=job_id,
                                               expected_version=_expected_local(expected)))

    @untracked
    async def list(self, prefix: str, job_id: str | None) -> Outcome:
        async def fetch() -> Any:
            found = await self.store.list(prefix, job_id=job_id)
            return {k: (v.value, v.version) for k, v in found.items()}

        return await _tagged(fetch())

    async def flush(self) -> None:
        await self.node.flush()

    async def close(self) -> None:
        await self.node.flush()
        await self.store.close()

    @untracked
    async def ping(self) -> str:
        return "state"


class LocalState:
    """The same API as StateClient over a StateStore in this process: for agents and patterns
    run without Ray (tests, scripts, a single-process job)."""

    def __init__(self, store: StateStore, *, job_id: str | None) -> None:
        self.store = store
        self.job_id = job_id

    async def get(self, key: str) -> Any:
        return await self.store.get(key, job_id=self.job_id)

    async def get_versioned(self, key: str) -> Versioned | None:
        return await self.store.get_versioned(key, job_id=self.job_id)

    async def set(self, key: str, value: Any, *, expected_version: Any = ANY) -> int:
        return await self.store.set(key, value, job_id=self.job_id,
                                    expected_version=expected_version)

    async def compare_and_set(self, key: str, value: Any, expected_version: int | None) -> int:
        return await self.set(key, value, expected_version=expected_version)

    async def delete(self, key: str, *, expected_version: Any = ANY) -> bool:
        return await self.store.delete(key, job_id=self.job_id, expected_version=expected_version)

    async def list(self, prefix: str) -> dict[str, Versioned]:
        return await self.store.list(prefix, job_id=self.job_id)
