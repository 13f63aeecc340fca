"""Merge rules: how concurrent branches write the same state key without losing a write.

Parallel branches, map items and pipeline workers run at the same time and may write the same
key. Each key follows a declared rule::

    rules = MergeRules({
        "job:findings": "append",                    # a list; each write appends one item
        "job:best": "last_writer",                   # the last write wins; overwrites reported
        "job:total": lambda old, new: (old or 0) + new,   # a reducer: old, new -> merged
        "job:notes:*": "append",                     # glob patterns (fnmatch) match key families
    })

- `append` and a reducer read the current value and write the merged one with
  compare-and-set, retrying when another writer got in between: every write lands, none is
  lost, whatever the interleaving.
- `last_writer` writes with a version check against the version the writer last saw (its own
  read or write of the key, or the version when its block started). A write that would replace
  a value the writer never saw is a conflict: it is published as a `state.conflict` event
  (carrying the value it replaced) and collected for the block's result, then the write goes
  ahead. Last writer wins, but never silently.

Keys with no rule follow `default` (`last_writer`, so an undeclared concurrent overwrite is
still reported; None lets undeclared writes through unchecked).

Workflows apply the rules by giving each branch a `MergedState` view of the job state:
anything in the branch that writes through `ctx.state` (a `Bind` output key, a tool, a nested
workflow) goes through the rules. Code holding the raw state calls `merged_write` itself.
Agents in actors write through their own host's state client; their tools call
`merged_write(ctx.state, key, value, rules)`.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from llmspell.runtime.errors import StateError, VersionConflict
from llmspell.runtime.state import ANY, AnyType, Versioned
from llmspell.tools.context import StateAccess

__all__ = ["Conflict", "MergeError", "MergeRules", "MergedState", "Reducer", "WriteOutcome",
           "merged_write"]

RuleName = Literal["append", "last_writer"]
Publish = Callable[[str, dict[str, Any]], None]


class MergeError(StateError):
    """A merged write that could not be applied (a value of the wrong type for the rule, or
    more contention than `max_attempts` compare-and-set rounds)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"state key {key!r}: {message}")
        self.key = key


@dataclass(frozen=True, slots=True)
class Reducer:
    """A custom rule: `fn(old, new) -> merged` (old is None for a missing key). It may run more
    than once for one write (once per compare-and-set attempt), so it must be pure."""

    fn: Callable[[Any, Any], Any]
    name: str = "reducer"


Rule = RuleName | Reducer


@dataclass(frozen=True, slots=True)
class Conflict:
    """A write that replaced a value its writer had not seen."""

    key: str
    writer: str
    expected: int | None  # the version the writer had seen
    current: int | None  # the version it replaced
    replaced: Any  # the value that was overwritten (kept here and in the event, not lost)
    value: Any

    def describe(self) -> str:
        return (f"{self.key} (written by {self.writer or 'a branch'} over version "
                f"{self.current}, having seen {self.expected})")

    def event(self) -> dict[str, Any]:
        return {"key": self.key, "rule": "last_writer", "writer": self.writer,
                "expected_version": self.expected, "current_version": self.current,
                "replaced": _preview(self.replaced), "value": _preview(self.value)}


@dataclass(slots=True)
class WriteOutcome:
    version: int
    attempts: int = 1
    conflicts: list[Conflict] = field(default_factory=list)


class MergeRules:
    """Rules by exact key or glob pattern; the first declared pattern that matches wins."""

    def __init__(self, rules: Mapping[str, str | Reducer | Callable[[Any, Any], Any]] | None
                 = None, *, default: RuleName | None = "last_writer",
                 max_attempts: int = 100) -> None:
        self.exact: dict[str, Rule] = {}
        self.patterns: list[tuple[str, Rule]] = []
        for key, rule in (rules or {}).items():
            parsed = _parse(key, rule)
            if any(c in key for c in "*?["):
                self.patterns.append((key, parsed))
            else:
                self.exact[key] = parsed
        if default not in (None, "last_writer", "append"):
            raise ValueError(f"default merge rule {default!r}: use 'last_writer', 'append' "
                             "or None")
        self.default: Rule | None = default
        self.max_attempts = max_attempts

    @classmethod
    def of(cls, rules: MergeRules | Mapping[str, Any] | None) -> MergeRules:
        return rules if isinstance(rules, MergeRules) else cls(rules)

    def rule_for(self, key: str) -> Rule | None:
        if key in self.exact:
            return self.exact[key]
        for pattern, rule in self.patterns:
            if fnmatch.fnmatchcase(key, pattern):
                return rule
        return self.default

    def __repr__(self) -> str:
        return f"MergeRules({self.exact!r}, patterns={self.patterns!r}, default={self.default!r})"


def _parse(key: str, rule: str | Reducer | Callable[[Any, Any], Any]) -> Rule:
    if isinstance(rule, Reducer):
        return rule
    if rule == "append":
        return "append"
    if rule == "last_writer":
        return "last_writer"
    if callable(rule):
        return Reducer(rule, getattr(rule, "__name__", "reducer"))
    raise ValueError(f"merge rule for {key!r}: {rule!r} is not 'append', 'last_writer' or a "
                     "function (old, new) -> merged")


async def merged_write(state: StateAccess, key: str, value: Any,
                       rules: MergeRules | Mapping[str, Any] | None, *,
                       seen: int | AnyType | None = ANY, writer: str = "",
                       publish: Publish | None = None) -> WriteOutcome:
    """Write `value` to `key` by its rule. For last_writer, `seen` is the version the writer
    last saw (None: it saw no such key; ANY: it did not look, so the version is read now and
    only a write landing between that read and this write is caught). A key with no rule is
    written as is."""
    rules = MergeRules.of(rules)
    rule = rules.rule_for(key)
    if rule is None:
        return WriteOutcome(await state.set(key, value))
    if rule == "last_writer":
        if isinstance(seen, AnyType):
            found = await state.get_versioned(key)
            seen = None if found is None else found.version
        return await _last_writer(state, key, value, seen, writer, publish, rules.max_attempts)
    if rule == "append":
        return await _read_modify_write(state, key, value,
                                        lambda old, new: _append(old, new, key),
                                        rules.max_attempts)
    assert isinstance(rule, Reducer)
    return await _read_modify_write(state, key, value, rule.fn, rules.max_attempts)


async def _read_modify_write(state: StateAccess, key: str, value: Any,
                             merge: Callable[[Any, Any], Any], max_attempts: int
                             ) -> WriteOutcome:
    for attempt in range(1, max_attempts + 1):
        current = await state.get_versioned(key)
        old, version = (current.value, current.version) if current else (None, None)
        try:
            return WriteOutcome(await state.compare_and_set(key, merge(old, value), version),
                                attempt)
        except VersionConflict:
            # Another writer got in between the read and the write: read again and re-merge.
            # A little random wait breaks the lockstep of writers that keep colliding.
            await asyncio.sleep(random.uniform(0, 0.001 * min(attempt, 10)))
    raise _contended(key, max_attempts)


def _contended(key: str, attempts: int) -> MergeError:
    return MergeError(key, f"gave up after {attempts} compare-and-set attempts under "
                           "contention")


def _append(old: Any, value: Any, key: str) -> list[Any]:
    if old is None:
        return [value]
    if not isinstance(old, list):
        raise MergeError(key, f"holds a {type(old).__name__}; the append rule needs a list")
    return [*old, value]


async def _last_writer(state: StateAccess, key: str, value: Any, seen: int | None, writer: str,
                       publish: Publish | None, max_attempts: int) -> WriteOutcome:
    expected, replacing = seen, None
    for attempt in range(1, max_attempts + 1):
        try:
            version = await state.compare_and_set(key, value, expected)
        except VersionConflict:
            # Someone wrote since this writer looked: overwrite what is there now, and say so
            # once the overwrite has happened (a lost race is retried, not reported).
            current = await state.get_versioned(key)
            replacing = Conflict(key, writer, seen, current.version if current else None,
                                 current.value if current else None, value)
            expected = replacing.current
            continue
        outcome = WriteOutcome(version, attempt)
        if replacing is not None:
            outcome.conflicts.append(replacing)
            if publish is not None:
                publish("state.conflict", replacing.event())
        return outcome
    raise _contended(key, max_attempts)


class MergedState:
    """A branch's view of the job state: writes follow the rules, reads remember versions.

    Branches of one block share `start` (the version of each key when the block first touched
    it); each branch keeps `seen` (the versions it read or wrote itself), so a last_writer
    write is checked against what this branch knew. Conflicts of every branch of the block go
    to the shared `conflicts` list.
    """

    def __init__(self, inner: StateAccess, rules: MergeRules, *, writer: str,
                 publish: Publish | None = None, start: dict[str, int | None] | None = None,
                 conflicts: list[Conflict] | None = None) -> None:
        self.inner = inner
        self.rules = rules
        self.writer = writer
        self.publish = publish
        self.start = start if start is not None else {}
        self.conflicts = conflicts if conflicts is not None else []
        self.seen: dict[str, int | None] = {}

    @staticmethod
    def raw(state: StateAccess) -> StateAccess:
        """The store under any number of views (checkpoints need no merge rules)."""
        while isinstance(state, MergedState):
            state = state.inner
        return state

    async def get(self, key: str) -> Any:
        found = await self.get_versioned(key)
        return None if found is None else found.value

    async def get_versioned(self, key: str) -> Versioned | None:
        found = await self.inner.get_versioned(key)
        self.seen[key] = None if found is None else found.version
        self.start.setdefault(key, self.seen[key])
        return found

    async def set(self, key: str, value: Any, *, expected_version: Any = ANY) -> int:
        if expected_version is not ANY:  # the caller checks versions itself
            return await self.compare_and_set(key, value, expected_version)
        if self.rules.rule_for(key) is None:
            return await self._through(key, value)
        outcome = await merged_write(self.inner, key, value, self.rules,
                                     seen=await self._base(key), writer=self.writer,
                                     publish=self.publish)
        self.conflicts.extend(outcome.conflicts)
        self.seen[key] = outcome.version
        return outcome.version

    async def _through(self, key: str, value: Any) -> int:
        version = await self.inner.set(key, value)
        self.seen[key] = version
        return version

    async def _base(self, key: str) -> int | None:
        if key in self.seen:
            return self.seen[key]
        if key not in self.start:
            # The first touch of this key by any branch of the block: the version now is the
            # one the block started from (a branch that wrote it since set `start` before).
            found = await self.inner.get_versioned(key)
            self.start.setdefault(key, None if found is None else found.version)
        return self.start[key]

    async def compare_and_set(self, key: str, value: Any, expected_version: int | None) -> int:
        version = await self.inner.compare_and_set(key, value, expected_version)
        self.seen[key] = version
        return version

    async def delete(self, key: str, *, expected_version: Any = ANY) -> bool:
        deleted = await self.inner.delete(key, expected_version=expected_version)
        self.seen.pop(key, None)
        return deleted

    async def list(self, prefix: str) -> dict[str, Versioned]:
        return await self.inner.list(prefix)


def _preview(value: Any, limit: int = 2000) -> Any:
    """Event payloads stay small: a long value is cut (the whole one stays in the writer's
    result or the store)."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) <= limit:
        return value
    return text[:limit] + "..."
