"""Creating a named actor from any process: the driver's Runtime or an actor (a pool's router
spawns its replicas). One function, so that both make actors the same way."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ray

from llmspell.runtime.errors import LlmspellError
from llmspell.runtime.node import ActorConfig, Node
from llmspell.runtime.settings import RuntimeSettings

__all__ = ["remote_class", "spawn_actor"]

_remote_classes: dict[type, Any] = {}


def remote_class(cls: type) -> Any:
    """`ray.remote(cls)`, made once per class in this process."""
    remote = _remote_classes.get(cls)
    if remote is None:
        remote = _remote_classes[cls] = ray.remote(cls)
    return remote


def spawn_actor(
    node: Node,
    cls: type,
    address: str,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    job_id: str,
    settings: RuntimeSettings,
    remote: Any = None,
    max_restarts: int = 0,
    num_cpus: float = 0,
    concurrency: int = 1,
    snapshot_every: int = 0,
    detached: bool = False,
    mailbox_capacity: int | None = None,
    mailbox_overflow: str | None = None,
    ray_options: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    ray_name: str | None = None,
) -> Any:
    """Create an actor of class `cls` (an ActorBase subclass) named `address`; returns its Ray
    handle, which `node` adopts. `ray_options` adds or overrides Ray actor options (resources,
    scheduling_strategy, max_concurrency...). `ray_name` names a warm standby, which serves
    `address` only once its supervisor records an alias (llmspell/runtime/aliases.py)."""
    extra = dict(extra or {})  # ActorConfig.extra: e.g. restore=True for a replacement
    if mailbox_capacity is not None:
        extra["mailbox_capacity"] = mailbox_capacity
    if mailbox_overflow is not None:
        extra["mailbox_overflow"] = mailbox_overflow
    config = ActorConfig(address=address, job_id=job_id, settings=settings,
                         concurrency=concurrency, snapshot_every=snapshot_every, extra=extra)
    options: dict[str, Any] = {
        "name": ray_name or address, "namespace": settings.namespace, "max_restarts": max_restarts,
        "num_cpus": num_cpus, "max_concurrency": 1000,
        "lifetime": "detached" if detached else None,
        **(ray_options or {}),
    }
    try:
        handle = (remote or remote_class(cls)).options(**options).remote(
            config, args, kwargs or {})
    except ValueError as exc:
        raise LlmspellError(f"cannot spawn {address!r}: {exc}") from None
    node.adopt(ray_name or address, handle)
    return handle
