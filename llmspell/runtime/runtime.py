"""The Runtime: start or join a Ray cluster, spawn actors, talk to them, watch their events.

    async with Runtime() as rt:                       # an embedded local Ray
        echo = rt.spawn(Echo, "echo", job_id="job-1")
        print(await echo.ask("greet", {"name": "Ada"}))
        async for event in rt.subscribe("actor.**"):
            ...

    with Runtime(address="127.0.0.2:6379") as rt:     # join a running cluster (sync use)
        rt.lookup("job-1/echo").ask_sync("greet", {"name": "Ada"})

Each runtime namespace has two service actors, found by name or created on first start: the
event hub (owner of the event log) and the state service (owner of the state store). Actor
addresses are `<job_id>/<name>`, names in the namespace, so a second driver finds them.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from llmspell.runtime.aliases import clear_aliases
from llmspell.runtime.errors import ActorNotFound, ActorUnavailable, AskTimeout, LlmspellError
from llmspell.runtime.events import Event, TopicPattern, unpack_events
from llmspell.runtime.hub import EventHub
from llmspell.runtime.logs import configure_logging, get_logger
from llmspell.runtime.messages import new_id
from llmspell.runtime.node import HUB_NAME, STATE_NAME, Node
from llmspell.runtime.settings import RuntimeSettings, cluster_from_env
from llmspell.runtime.spawning import spawn_actor
from llmspell.runtime.state_client import StateClient, StateService

if TYPE_CHECKING:  # the pool lives above the runtime core: imported only where it is used
    from llmspell.actors.pool import ToolPoolRef
    from llmspell.tools.base import Tool


class ActorRef:
    """A handle on one actor, by address. Cheap; any number may exist."""

    def __init__(self, runtime: Runtime, address: str) -> None:
        self.runtime = runtime
        self.address = address

    def __repr__(self) -> str:
        return f"ActorRef({self.address!r})"

    async def ask(self, type: str, payload: Any = None, **options: Any) -> Any:
        return await self.runtime.ask(self.address, type, payload, **options)

    def ask_sync(self, type: str, payload: Any = None, **options: Any) -> Any:
        return self.runtime.node.ask_sync(self.address, type, payload, **options)

    async def tell(self, type: str, payload: Any = None, **options: Any) -> None:
        await self.runtime.tell(self.address, type, payload, **options)

    def tell_sync(self, type: str, payload: Any = None, **options: Any) -> None:
        self.runtime.node.tell_sync(self.address, type, payload, **options)

    async def ping(self, timeout: float = 30.0) -> dict[str, Any]:
        """The actor's vital signs (address, pid, mailbox counters); ActorUnavailable if dead."""
        try:
            async with asyncio.timeout(timeout):
                result: dict[str, Any] = await self._handle().ping.remote()
        except TimeoutError:
            raise AskTimeout(self.address, "ping", timeout) from None
        except (RayActorError, RayTaskError) as exc:
            raise self.runtime.node.unavailable(self.address, exc) from None
        return result

    async def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        """Ping until the actor answers (for example while Ray restarts it after a crash)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                return await self.ping(timeout=max(0.1, deadline - loop.time()))
            except (ActorUnavailable, ActorNotFound):
                if loop.time() >= deadline:
                    raise
                await asyncio.sleep(0.1)

    async def flush(self) -> None:
        """Wait until the actor's outgoing tells and events have left its process."""
        await self._handle().flush.remote()

    async def stop(self, reason: str = "stopped") -> int:
        """Stop gracefully (see ActorBase.stop), then end the process and free the address.
        Returns how many queued messages became dead letters."""
        handle = self._handle()
        dropped: int = await handle.stop.remote(reason)
        ray.kill(handle, no_restart=True)
        self.runtime.node.forget(self.address)
        return dropped

    def kill(self, *, restart: bool = True) -> None:
        """Kill the actor's process at once (as a crash would); Ray restarts it if allowed."""
        ray.kill(self._handle(), no_restart=not restart)
        if not restart:
            self.runtime.node.forget(self.address)

    def _handle(self) -> Any:
        return self.runtime.node.handle(self.address)


class RemoteSubscription:
    """Events from the event hub, as an async iterator in this process."""

    def __init__(self, hub: Any, sub_id: str, *, poll_timeout: float = 0.5) -> None:
        self._hub = hub
        self.sub_id = sub_id
        self.dropped = 0
        self._poll_timeout = poll_timeout
        self._buffer: list[Event] = []
        self._closed = False

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            self._buffer = await self.get_batch()
        return self._buffer.pop(0)

    async def get_batch(self, max_items: int = 1_000, timeout: float | None = None) -> list[Event]:
        """Up to max_items events, waiting up to `timeout` for the first one."""
        if self._closed:
            return []
        data, self.dropped, closed = await self._hub.poll.remote(
            self.sub_id, max_items, self._poll_timeout if timeout is None else timeout
        )
        self._closed = self._closed or closed
        return unpack_events(data)

    async def next(self, timeout: float) -> Event:
        """The next event, or TimeoutError after `timeout` seconds."""
        async with asyncio.timeout(timeout):
            return await self.__anext__()

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._hub.unsubscribe.remote(self.sub_id)


class Runtime:
    """The entry point: a connection to Ray plus this driver's node, event hub and state."""

    def __init__(
        self,
        address: str | None = None,
        *,
        job_id: str = "default",
        settings: RuntimeSettings | None = None,
        **overrides: Any,
    ) -> None:
        base = settings or RuntimeSettings()
        self.settings = base.model_copy(update=overrides) if overrides else base
        self.address = address
        self.job_id = job_id
        self.identity = f"driver:{new_id()}"
        self.log = get_logger(actor=self.identity, job_id=job_id)
        self._connected = False  # this runtime called ray.init (and so disconnects)
        self._embedded = False  # ...and that started a local Ray, which dies with it
        self._started = False
        self._spawned: list[str] = []
        self._remote_classes: dict[type, Any] = {}
        self._node: Node | None = None
        self._state: StateClient | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Runtime:
        """Start an embedded local Ray (no address) or join a cluster, and find the services."""
        if self._started:
            return self
        configure_logging(json=self.settings.log_json)
        if not ray.is_initialized():
            self._connected = True
            # RAY_ADDRESS makes ray.init join that cluster (as inside a submitted job): then
            # this runtime is a guest there, and must not close the cluster's services
            self.address = self.address or cluster_from_env()
            self._embedded = self.address is None
            options: dict[str, Any] = {
                "namespace": self.settings.namespace,
                "log_to_driver": os.environ.get("LLMSPELL_RAY_LOGS") == "1",
                "configure_logging": False,
            }
            if self.address is None:
                options.update(include_dashboard=False, num_cpus=self.settings.num_cpus,
                               _node_ip_address=self.settings.local_node_ip)
            else:
                options["address"] = self.address
            ray.init(**options)
        self._node = Node(self.settings, identity=self.identity, job_id=self.job_id)
        self._state = StateClient(self._node, job_id=self.job_id)
        self._ensure_services()
        self._started = True
        return self

    def _ensure_services(self) -> None:
        data_dir = Path(os.path.expanduser("~/.llmspell")) / self.settings.namespace
        log_path = self.settings.event_log_path or str(data_dir / "events.db")
        opts = {"namespace": self.settings.namespace, "get_if_exists": True,
                "lifetime": "detached", "num_cpus": 0, "max_concurrency": 1000}
        hub: Any = ray.remote(EventHub).options(name=HUB_NAME, **opts).remote(
            log_path, self.settings
        )
        state: Any = ray.remote(StateService).options(name=STATE_NAME, **opts).remote(
            self.settings.state_path, self.settings
        )
        ray.get([hub.ping.remote(), state.ping.remote()], timeout=120)

    @property
    def gcs_address(self) -> str:
        """The address another driver passes to `Runtime(address=...)` to join this cluster."""
        return str(ray.get_runtime_context().gcs_address)

    @property
    def node(self) -> Node:
        if self._node is None:
            raise LlmspellError("the runtime is not started (use it as a context manager, "
                                "or call start())")
        return self._node

    @property
    def state(self) -> StateClient:
        self.node  # noqa: B018 - raises a clear error when not started
        assert self._state is not None
        return self._state

    async def aclose(self) -> None:
        """Flush this driver's tells and events, then shut down (see `shutdown`)."""
        if self._node is not None:
            await self._node.close()
        self.shutdown()

    def shutdown(self) -> None:
        """Leave the cluster. An embedded Ray is stopped with everything in it; on a cluster
        the services and detached actors keep running for other drivers."""
        if not self._started:
            return
        self._started = False
        if self._embedded:
            # The services flush their logs and databases before Ray takes them down.
            for name in (HUB_NAME, STATE_NAME):
                try:
                    ray.get(self.node.handle(name).close.remote(), timeout=30)
                except Exception as exc:  # shutting down anyway; say what may be lost
                    self.log.warning("service did not close cleanly", service=name,
                                     error=repr(exc))
        if self._connected:
            ray.shutdown()

    def __enter__(self) -> Runtime:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.shutdown()

    async def __aenter__(self) -> Runtime:
        # ray.init installs signal handlers, which only the main thread may do: start here.
        return self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    # -- actors -------------------------------------------------------------------------------

    def spawn(
        self,
        cls: type,
        name: str,
        *args: Any,
        job_id: str | None = None,
        max_restarts: int = 0,
        num_cpus: float = 0,
        concurrency: int = 1,
        snapshot_every: int = 0,
        detached: bool = False,
        mailbox_capacity: int | None = None,
        mailbox_overflow: str | None = None,
        **kwargs: Any,
    ) -> ActorRef:
        """Create an actor of class `cls` (an ActorBase subclass) at `<job_id>/<name>`.

        Returns at once; the actor starts in the background (`await ref.ping()` waits for it).
        `max_restarts` lets Ray restart a crashed actor, which then restores its snapshot.
        """
        job = job_id or self.job_id
        address = f"{job}/{name}"
        spawn_actor(self.node, cls, address, args, kwargs, job_id=job, settings=self.settings,
                    remote=self._remote_class(cls), max_restarts=max_restarts,
                    num_cpus=num_cpus, concurrency=concurrency, snapshot_every=snapshot_every,
                    detached=detached, mailbox_capacity=mailbox_capacity,
                    mailbox_overflow=mailbox_overflow)
        self._spawned.append(address)
        return ActorRef(self, address)

    def kill_job(self, job_id: str) -> int:
        """Kill at once every actor of `job_id`: the ones this runtime spawned and the ones its
        actors spawned (a supervisor's children, a pool's replicas), found by name. Returns
        how many."""
        prefix = f"{job_id}/"
        names = {a for a in self._spawned if a.startswith(prefix)}
        names.update(n for n in ray.util.list_named_actors() if n.startswith(prefix))
        killed = 0
        for address in sorted(names):
            if address in self._spawned:
                self._spawned.remove(address)
            try:
                ray.kill(ray.get_actor(address, namespace=self.settings.namespace),
                         no_restart=True)
                killed += 1
            except ValueError:
                pass  # already gone
            self.node.forget(address)
        # The job's actors that died before (a stopped supervisor's hosts, replaced replicas)
        # are forgotten too: this driver keeps nothing per actor of a job that is over.
        for address in self.node.known(prefix):
            self.node.forget(address)
        clear_aliases(self.settings.namespace, prefix)
        return killed

    def _remote_class(self, cls: type) -> Any:
        remote = self._remote_classes.get(cls)
        if remote is None:
            remote = self._remote_classes[cls] = ray.remote(cls)
        return remote

    def lookup(self, address: str) -> ActorRef:
        """A reference to a running actor; raises ActorNotFound."""
        self.node.handle(address)
        return ActorRef(self, address)

    def exists(self, address: str) -> bool:
        try:
            self.node.handle(address)
        except ActorNotFound:
            return False
        return True

    async def ask(self, address: str, type: str, payload: Any = None, **options: Any) -> Any:
        return await self.node.ask(address, type, payload, **options)

    async def tell(self, address: str, type: str, payload: Any = None, **options: Any) -> None:
        await self.node.tell(address, type, payload, **options)

    # -- events -------------------------------------------------------------------------------

    async def publish(self, topic: str, payload: Any = None, *, job_id: str | None = None) -> None:
        await self.node.publish(topic, payload, job_id=job_id)

    async def subscribe(
        self,
        pattern: str,
        *,
        buffer: int = 10_000,
        overflow: str = "drop_oldest",
        job_id: str | None = None,
    ) -> RemoteSubscription:
        """Events matching `pattern` from every process of the runtime (PatternError if bad)."""
        TopicPattern(pattern)  # raise here, not in the hub
        hub = self.node.handle(HUB_NAME)
        sub_id = await hub.subscribe.remote(pattern, buffer, overflow, job_id)
        return RemoteSubscription(hub, sub_id)

    async def subscribe_actor(
        self, pattern: str, address: str, *, buffer: int = 10_000, overflow: str = "block",
        job_id: str | None = None,
    ) -> str:
        """Deliver matching events into an actor's mailbox (its `on_event`)."""
        TopicPattern(pattern)
        self.node.handle(address)
        sub_id: str = await self.node.handle(HUB_NAME).subscribe_actor.remote(
            pattern, address, buffer, overflow, job_id
        )
        return sub_id

    async def replay(self, job_id: str | None = None, from_seq: int = 0, pattern: str = "**",
                     limit: int | None = None) -> list[Event]:
        """A job's logged events in sequence order.

        Events travel in batches: this driver's and the state service's are flushed first; an
        actor's are in once `ActorRef.flush()` (or its stop) has returned.
        """
        TopicPattern(pattern)
        await self.node.flush()
        await self.node.handle(STATE_NAME).flush.remote()
        data = await self.node.handle(HUB_NAME).replay.remote(
            job_id or self.job_id, from_seq, pattern, limit
        )
        return unpack_events(data)

    async def dead_letters(self, job_id: str | None = None) -> list[Event]:
        """The job's dead letters: messages refused, expired, left in a stopped actor's
        mailbox, sent to an actor that is gone, or given up on as poison (`deadletter`)."""
        return await self.replay(job_id, pattern="deadletter")

    async def flush(self) -> None:
        await self.node.flush()

    def spawn_pool(self, name: str, tools: Sequence[Tool], *, job_id: str | None = None,
                   min_replicas: int = 1, max_replicas: int = 4, max_concurrency: int = 1,
                   **options: Any) -> ToolPoolRef:
        """A tool pool at `<job_id>/<name>`: a router and `min_replicas`..`max_replicas`
        replica actors hosting `tools`, each running up to `max_concurrency` calls at once.
        Other options are the fields of llmspell.actors.scaling.PoolConfig (max_queue,
        idle_timeout_s, num_cpus, resources, placement, ...). Returns at once; `await
        pool.wait_ready()` waits for the replicas; `pool.executor()` runs calls there."""
        from llmspell.actors.pool import PoolRouter, ToolPoolRef, pool_config, router_options

        config = pool_config(name, tools, min_replicas=min_replicas, max_replicas=max_replicas,
                             max_concurrency=max_concurrency, **options)
        job = job_id or self.job_id
        address = f"{job}/{name}"
        spawn_actor(self.node, PoolRouter, address, (list(tools), config), job_id=job,
                    settings=self.settings, remote=self._remote_class(PoolRouter),
                    concurrency=config.router_concurrency, ray_options=router_options(config))
        self._spawned.append(address)
        return ToolPoolRef(ActorRef(self, address), config)
