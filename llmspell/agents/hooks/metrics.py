"""The metrics hook: counters and latency histograms per model, per tool and per agent.

    metrics = MetricsHook()
    metrics.register(registry)
    ...
    metrics.snapshot()["tool"]["search"]  # {"calls": 12, "errors": 1, "p50_ms": ..., ...}

In-process and cheap: a dict lookup and a bounded deque append per operation. Percentiles are
exact over the most recent `window` samples of each series (older ones only count in the
totals), which is what a progress view or a usage report wants to show.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Mapping
from typing import Any

from pydantic import Field

from llmspell.agents.hooks._common import (
    CACHE_HIT,
    HookResources,
    Op,
    OpKind,
    Options,
    TimingObserver,
    failure_kind,
    operation,
)
from llmspell.llm.types import Response
from llmspell.runtime.hooks import HookContext

__all__ = ["LatencySeries", "MetricsHook", "MetricsOptions", "build", "percentile"]



class MetricsOptions(Options):
    window: int = Field(default=2048, ge=10, description="samples kept per series for p50/p95")


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks."""
    if not sorted_values:
        return 0.0
    rank = (len(sorted_values) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    weight = rank - low
    return sorted_values[low] * (1 - weight) + sorted_values[high] * weight


class LatencySeries:
    """Counts and latencies of one model, tool or agent."""

    def __init__(self, window: int) -> None:
        self.counts: Counter[str] = Counter()
        self.samples: deque[float] = deque(maxlen=window)
        self.total_ms = 0.0
        self.max_ms = 0.0

    def observe(self, outcome: str, ms: float | None) -> None:
        self.counts["calls"] += 1
        if outcome != "ok":
            self.counts[outcome] += 1
        if ms is not None:
            self.samples.append(ms)
            self.total_ms += ms
            self.max_ms = max(self.max_ms, ms)

    def snapshot(self) -> dict[str, Any]:
        ordered = sorted(self.samples)
        timed = len(ordered)
        return {**dict(self.counts),
                "p50_ms": round(percentile(ordered, 50), 3),
                "p95_ms": round(percentile(ordered, 95), 3),
                "mean_ms": round(sum(ordered) / timed, 3) if timed else 0.0,
                "max_ms": round(self.max_ms, 3)}


class MetricsHook(TimingObserver):
    """Per-kind series: "llm" by model, "tool" by tool, "agent" by agent (runs, plus counts of
    the model and tool calls each agent made). An observer: it never changes anything."""

    name = "metrics"

    def __init__(self, options: MetricsOptions | None = None, /, **fields: Any) -> None:
        self.options = options or MetricsOptions(**fields)
        self.series: dict[OpKind, dict[str, LatencySeries]] = {
            "llm": {}, "tool": {}, "agent": {}}
        self.per_agent_calls: dict[str, Counter[str]] = {}
        super().__init__()

    def after(self, ctx: HookContext) -> None:
        op = operation(ctx)
        if op is not None:
            self._observe(op, _outcome(op, ctx), self.elapsed_ms(ctx))

    def error(self, ctx: HookContext) -> None:
        op = operation(ctx)
        if op is not None:
            self._observe(op, failure_kind(ctx.error), self.elapsed_ms(ctx))

    def _observe(self, op: Op, outcome: str, ms: float | None) -> None:
        if op.kind == "state":
            return
        by_name = self.series[op.kind]
        series = by_name.get(op.name)
        if series is None:
            series = by_name[op.name] = LatencySeries(self.options.window)
        series.observe(outcome, ms)
        if op.kind != "agent" and op.agent is not None:
            counts = self.per_agent_calls.setdefault(op.agent, Counter())
            counts[f"{op.kind}_calls"] += 1

    def snapshot(self) -> dict[str, Any]:
        """{"llm": {model: stats}, "tool": {tool: stats}, "agent": {agent: stats}}."""
        out: dict[str, Any] = {kind: {name: s.snapshot() for name, s in by_name.items()}
                               for kind, by_name in self.series.items()}
        for agent, counts in self.per_agent_calls.items():
            out["agent"].setdefault(agent, {}).update(counts)
        return out


def _outcome(op: Op, ctx: HookContext) -> str:
    result = ctx.payload
    if op.kind == "agent":
        status = str(getattr(result, "status", "completed"))
        return "ok" if status == "completed" else status
    if ctx.metadata.get(CACHE_HIT):
        return "cached"
    if isinstance(result, Response) and result.finish_reason == "error":
        return "errors"
    if isinstance(result, dict) and result.get("is_error") is True:
        return "errors"
    return "ok"


def build(options: Mapping[str, Any], resources: HookResources) -> MetricsHook:
    return MetricsHook(MetricsOptions.model_validate(options))
