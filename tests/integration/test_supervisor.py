"""Supervisors with real actors killed by ray.kill mid-job."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import ray

from llmspell import ActorNotFound, Runtime
from llmspell.runtime.events import Event
from llmspell.supervisors.actor import ChildLost, ChildStart, SupervisorActor, ask_supervised
from llmspell.supervisors.supervisor import SupervisorSpec
from tests.integration.supervised import Worker

pytestmark = pytest.mark.ray

CHILDREN = ("a", "b", "c")


def start_tree(runtime: Runtime, job_id: str, strategy: str, *, name: str = "sup",
               max_restarts: int = 3, deadline_s: float | None = None,
               parent: str | None = None) -> str:
    spec = SupervisorSpec.model_validate({
        "name": name, "strategy": strategy, "health_interval_s": 0.2,
        "intensity": {"max_restarts": max_restarts, "within_s": 60},
        "children": [{"name": c, "deadline_s": deadline_s} for c in CHILDREN]})
    starts = [ChildStart(c, Worker, options={"concurrency": 4}) for c in spec.children]
    return runtime.spawn(SupervisorActor, name, spec, starts, parent, job_id=job_id,
                         concurrency=16).address


async def status(runtime: Runtime, sup: str) -> dict[str, Any]:
    reply: dict[str, Any] = await runtime.ask(sup, "supervisor.status", timeout=60)
    return reply


async def get(runtime: Runtime, address: str) -> dict[str, Any]:
    """A read is idempotent: it rides out a restart the caller has not heard of yet."""
    reply: dict[str, Any] = await ask_supervised(runtime.node, address, "get", idempotent=True)
    return reply


async def pids(runtime: Runtime, sup: str) -> dict[str, int]:
    return {c: (await get(runtime, f"{sup}.{c}"))["pid"] for c in CHILDREN}


def crash(runtime: Runtime, address: str) -> None:
    ray.kill(ray.get_actor(address, namespace=runtime.settings.namespace), no_restart=False)


async def until(check: Any, timeout: float = 30.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


async def restarts(runtime: Runtime, sup: str) -> dict[str, int]:
    return {c: v["restarts"] for c, v in (await status(runtime, sup))["children"].items()}


async def events(runtime: Runtime, job_id: str, pattern: str) -> list[Event]:
    return await runtime.replay(job_id, pattern=pattern)


@pytest.mark.parametrize(("strategy", "renewed"), [
    ("one_for_one", {"b"}), ("one_for_all", {"a", "b", "c"}), ("rest_for_one", {"b", "c"})])
async def test_each_strategy_restarts_its_children_with_their_snapshots(
        runtime: Runtime, job_id: str, strategy: str, renewed: set[str]) -> None:
    sup = start_tree(runtime, job_id, strategy)
    await runtime.lookup(sup).wait_ready()
    for i, c in enumerate(CHILDREN):
        await runtime.ask(f"{sup}.{c}", "add", i + 1)
    before = await pids(runtime, sup)
    crash(runtime, f"{sup}.b")
    await until(lambda: _restarted(runtime, sup, "b"))
    after = await pids(runtime, sup)
    assert {c for c in CHILDREN if after[c] != before[c]} == renewed
    counts = [(await get(runtime, f"{sup}.{c}"))["count"] for c in CHILDREN]
    assert counts == [1, 2, 3]  # every restarted child came back from its snapshot
    await runtime.lookup(sup).flush()
    [restart] = await events(runtime, job_id, "supervisor.restarted")
    assert set(restart.payload["restarted"]) == renewed and restart.payload["child"] == "b"


async def _restarted(runtime: Runtime, sup: str, child: str, n: int = 1) -> bool:
    """Once the supervisor has reported `n` finished restarts of `child`."""
    await runtime.lookup(sup).flush()
    done = await runtime.replay(sup.split("/")[0], pattern="supervisor.restarted")
    return len([e for e in done if e.payload["supervisor"] == sup
                and child in e.payload["restarted"]]) >= n


async def test_intensity_exceeded_escalates_and_the_job_fails_with_its_causes(
        runtime: Runtime, job_id: str) -> None:
    sup = start_tree(runtime, job_id, "one_for_one", max_restarts=1)
    await runtime.lookup(sup).wait_ready()
    crash(runtime, f"{sup}.a")
    await until(lambda: _restarted(runtime, sup, "a"))
    crash(runtime, f"{sup}.c")

    async def failed() -> bool:
        return bool((await status(runtime, sup))["failed"])

    await until(failed)
    await runtime.lookup(sup).flush()
    [job_failed] = await until(lambda: events(runtime, job_id, "job.failed"))
    causes = job_failed.payload["causes"]
    assert len(causes) == 2 and causes[0].startswith("sup/a:") and causes[1].startswith("sup/c:")
    assert "more than 1 restarts" in job_failed.payload["reason"]
    with pytest.raises(ActorNotFound):
        await runtime.ask(f"{sup}.b", "get", timeout=10)  # the children were stopped


async def test_a_hung_child_is_stopped_and_restarted(runtime: Runtime, job_id: str) -> None:
    sup = start_tree(runtime, job_id, "one_for_one", deadline_s=1.0)
    await runtime.lookup(sup).wait_ready()
    before = await pids(runtime, sup)
    await runtime.tell(f"{sup}.a", "hang", 60)
    await until(lambda: _restarted(runtime, sup, "a"), timeout=30)
    after = await pids(runtime, sup)
    assert after["a"] != before["a"] and after["b"] == before["b"]
    await runtime.lookup(sup).flush()
    failed = await events(runtime, job_id, "supervisor.child.failed")
    assert any("hung" in e.payload["cause"] for e in failed)


async def test_a_child_supervisor_escalates_and_its_parent_restarts_the_subtree(
        runtime: Runtime, job_id: str) -> None:
    from llmspell.supervisors.supervisor import ChildSpec

    inner_spec = SupervisorSpec.model_validate({
        "name": "inner", "intensity": {"max_restarts": 0, "within_s": 60},
        "children": [{"name": c} for c in CHILDREN]})
    top_spec = SupervisorSpec(name="top", children=[ChildSpec(name="inner")])
    top_address = f"{job_id}/top"
    inner = ChildStart({"name": "inner"}, SupervisorActor, inner_spec,
                       [ChildStart({"name": c}, Worker) for c in CHILDREN], top_address,
                       options={"concurrency": 16})
    runtime.spawn(SupervisorActor, "top", top_spec, [inner], job_id=job_id, concurrency=16)
    await runtime.lookup(top_address).wait_ready()
    inner_address = f"{top_address}.inner"
    before = await pids(runtime, inner_address)
    crash(runtime, f"{inner_address}.b")  # inner allows no restart: it escalates to top

    async def renewed() -> bool:
        try:
            now = await pids(runtime, inner_address)
        except Exception:
            return False
        return all(now[c] != before[c] for c in CHILDREN)

    await until(lambda: _restarted(runtime, top_address, "inner"), timeout=60)
    await until(renewed, timeout=30)
    top = await status(runtime, top_address)
    assert top["children"]["inner"]["restarts"] == 1 and not top["failed"]
    await runtime.lookup(top_address).flush()
    escalated = await events(runtime, job_id, "supervisor.escalated")
    assert escalated and escalated[0].payload["causes"][0].startswith("inner/b:")


async def test_an_ask_in_flight_when_its_child_dies(runtime: Runtime, job_id: str) -> None:
    sup = start_tree(runtime, job_id, "one_for_one")
    await runtime.lookup(sup).wait_ready()
    address = f"{sup}.a"
    await runtime.ask(address, "add", 5)
    hang = asyncio.ensure_future(ask_supervised(runtime.node, address, "hang", 30,
                                                idempotent=False))
    await asyncio.sleep(0.5)
    crash(runtime, address)
    with pytest.raises(ChildLost, match="not resent because the ask is not idempotent"):
        await hang
    assert (await get(runtime, address))["count"] == 5  # the idempotent read came back


async def test_an_ask_to_a_child_being_replaced_waits_for_its_replacement(
        runtime: Runtime, job_id: str) -> None:
    """Between a child's death and its replacement the name is unknown: the ask was never
    delivered, so it waits and goes to the replacement, idempotent or not."""
    address = f"{job_id}/late"

    async def start_later() -> None:
        await asyncio.sleep(0.5)
        runtime.spawn(Worker, "late", job_id=job_id)

    starter = asyncio.ensure_future(start_later())
    reply = await ask_supervised(runtime.node, address, "add", 2, idempotent=False)
    await starter
    assert reply == 2


async def test_an_ask_to_a_child_that_never_comes_back_fails_naming_it(
        runtime: Runtime, job_id: str) -> None:
    address = f"{job_id}/never"
    with pytest.raises(ActorNotFound, match="never"):
        await ask_supervised(runtime.node, address, "get", idempotent=True, timeout=0.5,
                             restart_wait=0.5, job_id=job_id)

    async def letters() -> list[Event]:
        await runtime.node.flush()
        return await events(runtime, job_id, "deadletter")

    assert [e.payload["recipient"] for e in await until(letters)] == [address]


# -- warm standbys ----------------------------------------------------------------------------

def start_standby_tree(runtime: Runtime, job_id: str, strategy: str = "one_for_one") -> str:
    spec = SupervisorSpec.model_validate({
        "name": "sup", "strategy": strategy, "intensity": {"max_restarts": 5, "within_s": 60},
        "children": [{"name": c, "standby": c != "c"} for c in CHILDREN]})
    starts = [ChildStart(c, Worker, options={"concurrency": 4}) for c in spec.children]
    return runtime.spawn(SupervisorActor, "sup", spec, starts, job_id=job_id,
                         concurrency=16).address


def crash_current(runtime: Runtime, address: str) -> None:
    """Kill whatever process serves `address` now (a promoted spare has a name of its own)."""
    runtime.node.forget(address)
    ray.kill(runtime.node.handle(address), no_restart=False)


async def spare_pid(runtime: Runtime, address: str, generation: int) -> int:
    async def ready() -> int | None:
        try:
            spare = ray.get_actor(f"{address}@{generation}", namespace=runtime.settings.namespace)
        except ValueError:
            return None
        return int((await spare.ping.remote())["pid"])

    pid: int = await until(ready)
    return pid


async def test_a_child_with_a_standby_is_replaced_by_its_spare_with_its_snapshot(
        runtime: Runtime, job_id: str) -> None:
    sup = start_standby_tree(runtime, job_id)
    await runtime.lookup(sup).wait_ready()
    address = f"{sup}.a"
    await runtime.ask(address, "add", 7)
    assert not await runtime.ask(address, "warmed")  # a child started as itself
    for generation in (1, 2):  # the first spare takes over, then the one started after it
        spare = await spare_pid(runtime, address, generation)
        before = (await get(runtime, address))["pid"]
        crash_current(runtime, address)
        reply = await until(lambda b=before: _answer(runtime, address, unless_pid=b))
        assert reply["pid"] == spare and reply["count"] == 7 + generation - 1
        assert await runtime.ask(address, "warmed")  # on_standby ran before it took over
        await runtime.ask(address, "add", 1)
    await until(lambda: _has_spare(runtime, sup, "a"))
    await runtime.lookup(sup).flush()
    restarted = await events(runtime, job_id, "supervisor.restarted")
    assert [e.payload["standby"] for e in restarted] == [["a"], ["a"]]


async def _has_spare(runtime: Runtime, sup: str, child: str) -> bool:
    return bool((await status(runtime, sup))["children"][child]["standby"])


async def test_one_for_all_promotes_each_spare_and_starts_the_child_without_one_afresh(
        runtime: Runtime, job_id: str) -> None:
    sup = start_standby_tree(runtime, job_id, "one_for_all")
    await runtime.lookup(sup).wait_ready()
    spares = {c: await spare_pid(runtime, f"{sup}.{c}", 1) for c in ("a", "b")}
    before = await pids(runtime, sup)
    crash_current(runtime, f"{sup}.b")

    async def renewed() -> dict[str, int] | None:
        try:
            now = await pids(runtime, sup)
        except ActorNotFound:
            return None
        return now if all(now[c] != before[c] for c in CHILDREN) else None

    now = await until(renewed)
    assert {c: now[c] for c in ("a", "b")} == spares  # "c" has no standby: a fresh process


async def test_a_lost_spare_means_a_fresh_restart_and_a_stop_leaves_no_spare_or_alias(
        runtime: Runtime, job_id: str) -> None:
    from llmspell.runtime.aliases import resolve_alias

    sup = start_standby_tree(runtime, job_id)
    await runtime.lookup(sup).wait_ready()
    ns = runtime.settings.namespace
    spare = await spare_pid(runtime, f"{sup}.a", 1)
    ray.kill(ray.get_actor(f"{sup}.a@1", namespace=ns), no_restart=True)  # the spare dies idle
    before = await pids(runtime, sup)
    crash_current(runtime, f"{sup}.a")
    reply = await until(lambda: _answer(runtime, f"{sup}.a", unless_pid=before["a"]))
    assert reply["pid"] != spare
    # b's spare takes over; then the tree stops: no spare survives it, no alias is left.
    spare = await spare_pid(runtime, f"{sup}.b", 1)
    crash_current(runtime, f"{sup}.b")
    reply = await until(lambda: _answer(runtime, f"{sup}.b", unless_pid=before["b"]))
    assert reply["pid"] == spare
    assert resolve_alias(ns, f"{sup}.b") == f"{sup}.b@1"
    await until(lambda: _has_spare(runtime, sup, "b"))
    await runtime.lookup(sup).stop()

    async def no_spares_left() -> bool:
        return not [n for n in ray.util.list_named_actors() if n.startswith(f"{sup}.")]

    await until(no_spares_left)
    assert resolve_alias(ns, f"{sup}.b") is None


async def _answer(runtime: Runtime, address: str, *, unless_pid: int) -> dict[str, Any] | None:
    """The child's answer once a process other than `unless_pid` gives it."""
    try:
        reply = await get(runtime, address)
    except ActorNotFound:
        return None
    return None if reply["pid"] == unless_pid else reply
