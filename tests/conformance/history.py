"""A recorded history: every call, effect and completion that fake tools and actors make, in one
SQLite file that every process of a test appends to. Invariants are checked over it afterwards,
so a test asserts what happened, not how long it took."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from typing import Any

_SCHEMA = """CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL, key TEXT, pid INTEGER, t REAL, data TEXT)"""
_connections: dict[str, sqlite3.Connection] = {}


@dataclass(frozen=True)
class Row:
    kind: str
    key: str | None
    pid: int
    t: float
    data: dict[str, Any]


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(_SCHEMA)
    return conn


def record(path: str, kind: str, key: str | None = None, **data: Any) -> None:
    """Append one entry (from any process: a replica keeps its connection open while it
    lives, which is what a process killed mid-write would do)."""
    conn = _connections.get(path)
    if conn is None:
        conn = _connections[path] = _connect(path)
    conn.execute("INSERT INTO history (kind, key, pid, t, data) VALUES (?, ?, ?, ?, ?)",
                 (kind, key, os.getpid(), time.time(), json.dumps(data)))


def rows(path: str, kind: str | None = None, key: str | None = None) -> list[Row]:
    """The entries so far, in the order they were written (read with a connection of its
    own, closed at once: the test process leaves no handle open)."""
    if not os.path.exists(path):
        return []
    query, args = "SELECT kind, key, pid, t, data FROM history", []
    where = [(c, v) for c, v in (("kind", kind), ("key", key)) if v is not None]
    if where:
        query += " WHERE " + " AND ".join(f"{c} = ?" for c, _ in where)
        args = [v for _, v in where]
    with closing(sqlite3.connect(path, timeout=60)) as conn:
        found = conn.execute(query + " ORDER BY id", args).fetchall()
    return [Row(k, key_, pid, t, json.loads(d)) for k, key_, pid, t, d in found]


def init(path: str) -> str:
    with closing(_connect(path)):
        pass
    return path
