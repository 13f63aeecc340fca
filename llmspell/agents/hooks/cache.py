"""The response cache: a model call asked twice is answered once.

    cache = ResponseCache(path="cache.db", ttl_s=3600)
    cache.register(registry)

The key is a digest of the normalised request: the model ("provider:model"), the messages,
the tools and tool choice, the output schema, the temperature, max_tokens and the thinking
budget, as canonical JSON (sorted keys), so two requests that would get the same answer share
it. The per-call timeout is not part of it. Entries live in a SQLite file with a TTL.

before_llm_call answers a hit with Replace(the stored Response), so no model is called; the
answer it gives spent no tokens (usage and cost are zero; `saved_tokens` counts what the
original call spent). after_llm_call stores what a miss brought back. Only deterministic
requests (temperature None or 0) are cached unless `only_deterministic` is off: a sampled
answer cached would silently stop being a sample.

Blocking SQLite work runs in a thread (`asyncio.to_thread`), never on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field

from llmspell.agents.hooks._common import CACHE_HIT, HookResources, Options
from llmspell.llm.types import LLMRequest, Response, Usage
from llmspell.runtime.hooks import HookContext, HookPoint, HookRegistry, Registration, Replace

__all__ = ["CacheOptions", "ResponseCache", "build", "request_key"]

_KEY = "llmspell.cache_key"  # ctx.metadata: the key of a miss, for the after hook to store
_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL,
    response TEXT NOT NULL
)
"""


class CacheOptions(Options):
    path: str = Field(min_length=1, description="the SQLite file (created if missing)")
    ttl_s: float | None = Field(default=3600.0, gt=0, description="None: entries never expire")
    only_deterministic: bool = True
    """Cache only requests with temperature None or 0."""
    namespace: str = ""
    """Mixed into every key: change it to start from an empty cache without deleting the file."""


def request_key(request: LLMRequest, model: str, namespace: str = "") -> str:
    """The stable digest of what decides a request's answer."""
    normal = {
        "namespace": namespace,
        "model": model,
        "messages": [m.model_dump(mode="json") for m in request.messages],
        "tools": [t.model_dump(mode="json") for t in request.tools],
        "tool_choice": request.tool_choice,
        "output_schema": None if request.output_schema is None
        else request.output_schema.model_dump(mode="json", by_alias=True),
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        "thinking_budget": request.thinking_budget,
    }
    text = json.dumps(normal, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


class _Store:
    """The SQLite file. One connection, used under a lock by whichever worker thread runs."""

    def __init__(self, path: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(_SCHEMA)

    def get(self, key: str, now: float) -> str | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT response, expires FROM responses WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            if row[1] is not None and row[1] <= now:
                self._conn.execute("DELETE FROM responses WHERE key = ?", (key,))
                return None
            return str(row[0])

    def put(self, key: str, model: str, response: str, now: float, ttl: float | None) -> None:
        expires = None if ttl is None else now + ttl
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO responses (key, model, created, expires, response) "
                "VALUES (?, ?, ?, ?, ?)", (key, model, now, expires, response))

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class ResponseCache:
    name = "cache"
    default_priority = 65  # before the rate limit: a hit should not wait for a slot

    def __init__(self, options: CacheOptions | None = None, /, **fields: Any) -> None:
        self.options = options or CacheOptions(**fields)
        self._store = _Store(self.options.path)
        self.hits = 0
        self.misses = 0
        self.skipped = 0  # requests not cacheable (sampled)
        self.stores = 0
        self.saved_tokens = 0

    def register(self, registry: HookRegistry, *, priority: int | None = None
                 ) -> list[Registration]:
        p = self.default_priority if priority is None else priority
        return [
            registry.register(HookPoint.before_llm_call, self.before, priority=p,
                              name=self.name),
            # Early among after hooks: store the answer as the model gave it.
            registry.register(HookPoint.after_llm_call, self.after, priority=p, name=self.name),
        ]

    async def before(self, ctx: HookContext) -> Replace | None:
        request = ctx.payload
        if not isinstance(request, LLMRequest):
            return None
        if self.options.only_deterministic and request.temperature not in (None, 0):
            self.skipped += 1
            return None
        started = time.perf_counter()
        key = request_key(request, ctx.target or request.model, self.options.namespace)
        stored = await asyncio.to_thread(self._store.get, key, time.time())
        if stored is None:
            self.misses += 1
            ctx.metadata[_KEY] = key
            return None
        self.hits += 1
        ctx.metadata[CACHE_HIT] = True
        return Replace(self._answer(stored, time.perf_counter() - started))

    async def after(self, ctx: HookContext) -> None:
        key = ctx.metadata.pop(_KEY, None)
        response = ctx.payload
        if key is None or ctx.metadata.get(CACHE_HIT) or not isinstance(response, Response):
            return
        if response.finish_reason in ("error", "length"):
            return  # a failed or truncated answer is not worth repeating
        await asyncio.to_thread(self._store.put, key, ctx.target or response.model,
                                response.model_dump_json(), time.time(), self.options.ttl_s)
        self.stores += 1

    def _answer(self, stored: str, lookup_s: float) -> Response:
        original = Response.model_validate_json(stored)
        self.saved_tokens += original.usage.total_tokens
        return original.model_copy(update={"usage": Usage(), "cost_usd": 0.0,
                                           "latency_s": lookup_s})

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "skipped": self.skipped,
                "stores": self.stores, "saved_tokens": self.saved_tokens,
                "entries": self._store.count()}

    def close(self) -> None:
        self._store.close()


def build(options: Mapping[str, Any], resources: HookResources) -> ResponseCache:
    return ResponseCache(CacheOptions.model_validate(options))
