"""Aliases: an address served by an actor whose Ray name is another.

An address is a Ray actor name, and Ray binds a name when the actor is created. A warm standby
(a spare process a supervisor starts ahead of a failure) is created before anyone knows which
address it will serve, so it gets a name of its own (`<address>@<generation>`), and when it
takes over, its supervisor records `address -> that name` here. `Node.handle` looks an alias up
only when the address itself is not found, so the common path costs nothing.

The aliases live in the GCS key-value store of the cluster (Ray's internal KV, the store Ray's
own libraries keep their metadata in), so every process of the cluster sees them at once; they
are per namespace, and removed by job prefix when a job's actors are killed.
"""

from __future__ import annotations

from ray.experimental import internal_kv

__all__ = ["aliased", "clear_alias", "clear_aliases", "resolve_alias", "set_alias"]

_KV_NAMESPACE = "llmspell-aliases"


def _key(namespace: str, address: str) -> str:
    return f"{namespace}\x00{address}"


def set_alias(namespace: str, address: str, name: str) -> None:
    """From now on `address` is served by the actor named `name`."""
    internal_kv._internal_kv_put(_key(namespace, address), name, overwrite=True,
                                 namespace=_KV_NAMESPACE)


def resolve_alias(namespace: str, address: str) -> str | None:
    """The Ray name serving `address`, if an alias was recorded for it."""
    value = internal_kv._internal_kv_get(_key(namespace, address), namespace=_KV_NAMESPACE)
    return None if value is None else value.decode()


def clear_alias(namespace: str, address: str) -> None:
    internal_kv._internal_kv_del(_key(namespace, address), namespace=_KV_NAMESPACE)


def clear_aliases(namespace: str, prefix: str) -> int:
    """Remove every alias of an address starting with `prefix` (a job's `<job_id>/`)."""
    return int(internal_kv._internal_kv_del(_key(namespace, prefix), del_by_prefix=True,
                                            namespace=_KV_NAMESPACE))


def aliased(namespace: str, prefix: str = "") -> list[str]:
    """The addresses starting with `prefix` that have an alias."""
    keys = internal_kv._internal_kv_list(_key(namespace, prefix), namespace=_KV_NAMESPACE)
    return sorted(key.decode().split("\x00", 1)[1] for key in keys)
