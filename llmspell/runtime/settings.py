"""Runtime settings: typed, with defaults, overridable from LLMSPELL_* environment variables."""

from __future__ import annotations

import os
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class RuntimeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMSPELL_", extra="ignore")

    namespace: str = "llmspell"
    # Ray rewrites 127.0.0.1 to the machine's public address; another loopback address keeps an
    # embedded runtime on the loopback interface.
    local_node_ip: str = "127.0.0.2"
    num_cpus: int | None = None
    max_frame_bytes: int = 4 * 1024 * 1024
    # A workflow run in the host of its agents takes its whole input in one message and gives
    # its whole result in one (llmspell.supervisors.hosted), as a driver holds them: those
    # asks (`large=True`) are capped here instead.
    max_run_bytes: int = 256 * 1024 * 1024
    mailbox_capacity: int = 10_000
    mailbox_overflow: Literal["block", "reject"] = "block"
    gap_timeout_s: float = 2.0
    dedupe_window: int = 10_000
    ask_timeout_s: float = 60.0
    # Tells and events to another process are batched: flushed at this many items or this age.
    batch_max_items: int = 200
    batch_max_delay_s: float = 0.002
    # Events tolerate more delay than tells, and each batch saved is a Ray call of CPU saved in
    # the sender and the hub: at 0.2 s rather than 0.05 the CPU fan-out of benchmarks/patterns.py
    # ran 7.7-7.8 s instead of 8.3-8.4 (a live view refreshes a few times a second anyway).
    event_batch_delay_s: float = 0.2
    # The runtime's own services (pool routers and replicas, the state service) emit
    # bookkeeping a few times a second each; every batch is a Ray call costing ~2 ms of CPU
    # between sender and hub on this machine, so they wait longer. A replay or a flush still
    # takes them in at once.
    service_event_batch_delay_s: float = 1.0
    # Actor processes collect garbage after this many net allocations (Python's default: 700),
    # with their start-up objects frozen out of collection; None keeps Python's settings.
    # See llmspell.runtime.process.
    gc_young_threshold: int | None = 20_000
    event_log_path: str | None = None  # None: an in-memory SQLite log owned by the event hub
    state_path: str | None = None  # None: in-memory state
    log_json: bool | None = None


def cluster_from_env() -> str | None:
    """The Ray cluster RAY_ADDRESS names for joining, if it names one (a dashboard URL is for
    submitting jobs, not for joining)."""
    address = os.environ.get("RAY_ADDRESS")
    return address if address and not address.startswith(("http://", "https://")) else None
