"""The runtime core on a real local Ray: asks, tells, order, failures, events, state."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from llmspell import (
    ActorNotFound,
    ActorUnavailable,
    AskTimeout,
    CodecError,
    LlmspellError,
    PatternError,
    RemoteError,
    Runtime,
    VersionConflict,
)
from llmspell.runtime.messages import Envelope, Kind, decode, encode
from llmspell.runtime.state_client import StateClient
from tests.integration.actors import Counter, Guarded, Recorder, Sender

pytestmark = pytest.mark.ray


async def test_ask_and_tell_round_trip(runtime: Runtime, job_id: str) -> None:
    rec = runtime.spawn(Recorder, "rec", job_id=job_id)
    await rec.tell("item", "a")
    assert await rec.ask("item", "b") == 2  # the ask flushes the tell before it
    assert await rec.ask("dump") == [[runtime.identity, "a"], [runtime.identity, "b"]]


async def test_per_sender_order_with_concurrent_senders(runtime: Runtime, job_id: str) -> None:
    """4 sender actors x 2,500 tells, concurrently, into one recorder: order per sender."""
    rec = runtime.spawn(Recorder, "sink", job_id=job_id)
    senders = [runtime.spawn(Sender, f"sender{i}", job_id=job_id) for i in range(4)]
    target = rec.address
    sent = await asyncio.gather(
        *(s.ask("send", {"target": target, "count": 2500}, timeout=120) for s in senders)
    )
    assert sent == [2500] * 4
    seen = await rec.ask("dump", timeout=60)
    assert len(seen) == 10_000
    by_sender: dict[str, list[int]] = {}
    for sender, item in seen:
        by_sender.setdefault(sender, []).append(item)
    assert sorted(by_sender) == sorted(s.address for s in senders)
    for items in by_sender.values():
        assert items == list(range(2500))
    # Senders interleaved: the recorder did not see one whole sender after another.
    firsts = [seen.index([s.address, 0]) for s in senders]
    assert max(firsts) < 9_000


async def test_handler_error_comes_back_with_type_and_message(
    runtime: Runtime, job_id: str
) -> None:
    rec = runtime.spawn(Recorder, "rec", job_id=job_id)
    with pytest.raises(RemoteError) as info:
        await rec.ask("fail", "widget")
    assert info.value.error_type == "KeyError"
    assert "no such thing: widget" in info.value.remote_message
    assert info.value.address == rec.address
    assert await rec.ask("item", "still alive") == 1  # the actor survived its handler


async def test_ask_timeout(runtime: Runtime, job_id: str) -> None:
    rec = runtime.spawn(Recorder, "slow", job_id=job_id)
    await rec.wait_ready()
    with pytest.raises(AskTimeout) as info:
        await rec.ask("sleep", 5, timeout=0.3)
    assert "within 0.3s" in str(info.value)


async def test_killed_actor_gives_a_clear_error_not_a_hang(runtime: Runtime, job_id: str) -> None:
    rec = runtime.spawn(Recorder, "doomed", job_id=job_id)
    await rec.wait_ready()
    rec.kill(restart=False)
    with pytest.raises((ActorUnavailable, ActorNotFound)) as info:
        await rec.ask("item", 1, timeout=30)
    assert rec.address in str(info.value)


async def test_ask_to_unknown_actor(runtime: Runtime, job_id: str) -> None:
    with pytest.raises(ActorNotFound) as info:
        await runtime.ask(f"{job_id}/nobody", "hello")
    assert f"{job_id}/nobody" in str(info.value)
    assert runtime.settings.namespace in str(info.value)


async def test_state_survives_a_crash(runtime: Runtime, job_id: str) -> None:
    counter = runtime.spawn(Counter, "counter", job_id=job_id, max_restarts=2)
    for n in (1, 2, 3):
        await counter.ask("add", n)
    before = await counter.ask("get")
    counter.kill()
    await asyncio.sleep(0.5)
    await counter.wait_ready(timeout=60)
    after = await counter.ask("get")
    assert after["count"] == 6
    assert after["restarts"] == 1
    assert after["pid"] != before["pid"]
    await counter.flush()
    restarted = await runtime.replay(job_id, pattern="actor.restarted")
    assert [e.sender for e in restarted] == [counter.address]


async def test_an_actor_process_settles_its_garbage_collector(runtime: Runtime,
                                                               job_id: str) -> None:
    rec = runtime.spawn(Recorder, "gc", job_id=job_id)
    seen = await rec.ask("gc")
    assert seen["threshold"][0] == runtime.settings.gc_young_threshold == 20_000
    assert seen["frozen"] > 10_000  # the imported libraries, out of every collection


def test_settle_gc_is_once_per_process_and_none_leaves_python_alone() -> None:
    code = textwrap.dedent("""
        import gc
        from llmspell.runtime import process
        default = gc.get_threshold()
        process.settle_gc(None)
        assert gc.get_threshold() == default and gc.get_freeze_count() == 0
        process.settle_gc(5000)
        assert gc.get_threshold() == (5000, *default[1:]) and gc.get_freeze_count() > 0
        process.settle_gc(9000)  # once: a second shell in the process changes nothing
        assert gc.get_threshold()[0] == 5000
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


async def test_bad_frames_are_refused_and_lose_nothing(runtime: Runtime, job_id: str) -> None:
    rec = runtime.spawn(Recorder, "rec", job_id=job_id)
    await rec.wait_ready()
    handle = runtime.node.handle(rec.address)

    def frame(payload: Any, seq: int) -> bytes:
        return encode(Envelope(type="item", payload=payload, kind=Kind.TELL, sender="raw",
                               recipient=rec.address, stream="raw-stream", seq=seq))

    report = await handle.deliver.remote(
        [frame("one", 1), b"\x01garbage", b"\x09" + frame("x", 9)[1:], frame("two", 2)]
    )
    assert report["accepted"] == 2
    assert [e["index"] for e in report["errors"]] == [1, 2]
    assert "version" in report["errors"][1]["error"]
    reply = decode(await handle.ask.remote(b"not a frame"))
    assert reply.type == "error" and reply.payload["error_type"] == "CodecError"
    seen = await rec.ask("dump")
    assert [item for _, item in seen] == ["one", "two"]
    assert (await rec.ping())["bad_frames"] == 3


async def test_oversized_message_is_refused_with_a_clear_error(
    runtime: Runtime, job_id: str
) -> None:
    rec = runtime.spawn(Recorder, "rec", job_id=job_id)
    big = "x" * (runtime.settings.max_frame_bytes + 10)
    with pytest.raises(CodecError) as info:
        await rec.ask("item", big)
    assert info.value.reason == "too_large"
    assert await rec.ask("item", "small") == 1  # the stream did not stall on the refused seq


async def test_reject_policy_counts_every_message(runtime: Runtime, job_id: str) -> None:
    rec = runtime.spawn(Recorder, "tiny", 0.01, job_id=job_id, mailbox_capacity=5,
                        mailbox_overflow="reject")
    await rec.wait_ready()
    handle = runtime.node.handle(rec.address)
    frames = [encode(Envelope(type="item", payload=i, sender="burst", recipient=rec.address))
              for i in range(40)]
    report = await handle.deliver.remote(frames)
    rejected = len(report["errors"])
    assert rejected > 0
    assert report["accepted"] + rejected == 40
    assert {e["error_type"] for e in report["errors"]} == {"MailboxFull"}
    await asyncio.sleep(0.5)
    stats = (await rec.ping())["mailbox"]
    assert stats["accepted"] == report["accepted"] and stats["rejected"] == rejected


async def test_events_reach_driver_subscribers_and_the_log(runtime: Runtime, job_id: str) -> None:
    sub = await runtime.subscribe("actor.**", job_id=job_id)
    try:
        rec = runtime.spawn(Recorder, "rec", job_id=job_id)
        await rec.ask("item", 1)
        topics: list[str] = []
        while "actor.message.handled" not in topics:
            topics += [e.topic for e in await sub.get_batch(100, timeout=5.0)]
        assert topics[0] == "actor.started"
    finally:
        await sub.close()
    await rec.flush()
    await runtime.publish("custom.note", {"n": 1}, job_id=job_id)
    log = await runtime.replay(job_id)
    assert [e.seq for e in log] == list(range(1, len(log) + 1))
    assert log[-1].topic == "custom.note" and log[-1].payload == {"n": 1}
    assert [e.topic for e in await runtime.replay(job_id, pattern="custom.*")] == ["custom.note"]
    later = await runtime.replay(job_id, from_seq=log[-1].seq)
    assert len(later) == 1


async def test_actor_subscriber_receives_events(runtime: Runtime, job_id: str) -> None:
    rec = runtime.spawn(Recorder, "listener", job_id=job_id)
    await rec.wait_ready()
    await runtime.subscribe_actor("news.*", rec.address, job_id=job_id)
    # A subscriber to everything does not hear about its own handling of events (no feedback).
    await runtime.subscribe_actor("**", rec.address, job_id=job_id)
    for i in range(3):
        await runtime.publish("news.item", {"i": i}, job_id=job_id)
    await runtime.publish("other.item", {}, job_id=job_id)
    news: list[dict[str, Any]] = []
    for _ in range(100):
        # Wait for the news itself: "**" also brings the actor's own events (its start, the
        # asks it handled), which may come first.
        news = [e for e in await rec.ask("events") if e["topic"] == "news.item"]
        if len(news) >= 6:
            break
        await asyncio.sleep(0.05)
    assert [e["payload"]["i"] for e in news] == [0, 1, 2] * 2  # once per subscription
    await asyncio.sleep(0.5)
    settled = len(await rec.ask("events"))
    await asyncio.sleep(0.5)
    # Quiet: the only new event is the one about handling the previous ask ("events"); a
    # feedback loop of events about events would add many.
    assert len(await rec.ask("events")) - settled <= 1


async def test_invalid_subscription_pattern(runtime: Runtime) -> None:
    with pytest.raises(PatternError, match="segment"):
        await runtime.subscribe("a..b")
    with pytest.raises(PatternError):
        await runtime.subscribe("agent.x*")


async def test_state_from_the_driver(runtime: Runtime, job_id: str) -> None:
    client = runtime.state
    job_state = StateClient(runtime.node, job_id=job_id)
    v1 = await job_state.set("job:plan", {"step": 1})
    assert await job_state.get("job:plan") == {"step": 1}
    await job_state.compare_and_set("job:plan", {"step": 2}, v1)
    with pytest.raises(VersionConflict) as info:
        await job_state.compare_and_set("job:plan", {"step": 3}, v1)
    assert info.value.current == v1 + 1
    assert await job_state.get("job:plan") == {"step": 2}
    assert await client.get("job:plan") is None  # another job's state is separate
    changes = await runtime.replay(job_id, pattern="state.changed")
    assert [c.payload["version"] for c in changes] == [1, 2]


async def test_stop_turns_queued_messages_into_dead_letters(runtime: Runtime, job_id: str) -> None:
    rec = runtime.spawn(Recorder, "stopper", job_id=job_id)
    await rec.wait_ready()
    handle = runtime.node.handle(rec.address)
    first = handle.ask.remote(encode(Envelope(type="sleep", payload=0.5, kind=Kind.ASK,
                                              sender="raw", recipient=rec.address)))
    await asyncio.sleep(0.1)
    for i in range(3):
        await rec.tell("item", i)
    await runtime.flush()
    dropped = await rec.stop("test over")
    assert dropped == 3
    assert decode(await first).payload == "slept"  # the message in hand was finished
    letters = await runtime.replay(job_id, pattern="deadletter")
    assert len(letters) == 3
    assert all(d.payload["reason"] == "test over" for d in letters)


def test_second_driver_finds_a_named_actor(runtime: Runtime, job_id: str) -> None:
    rec = runtime.spawn(Recorder, "shared", job_id=job_id)
    rec.ask_sync("item", "from the first driver")
    script = textwrap.dedent(f"""
        from llmspell import Runtime
        with Runtime(address={runtime.gcs_address!r}, namespace={runtime.settings.namespace!r},
                     job_id={job_id!r}) as rt:
            ref = rt.lookup({rec.address!r})
            print(ref.ask_sync("item", "from the second driver"))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=180, cwd=os.getcwd())
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "2"
    assert [item for _, item in rec.ask_sync("dump")] == [
        "from the first driver", "from the second driver",
    ]


async def test_spawn_twice_at_one_address_is_refused(runtime: Runtime, job_id: str) -> None:
    first = runtime.spawn(Recorder, "only", job_id=job_id)
    await first.wait_ready()
    with pytest.raises(LlmspellError, match="only"):
        runtime.spawn(Recorder, "only", job_id=job_id)
    await first.stop()
    again = runtime.spawn(Recorder, "only", job_id=job_id)  # a stopped actor frees its address
    assert await again.ask("item", 1) == 1


def test_runtime_joins_a_running_ray_as_a_sync_context_manager(
    runtime: Runtime, job_id: str
) -> None:
    with Runtime(job_id=job_id, namespace=runtime.settings.namespace) as rt:
        rec = rt.spawn(Recorder, "sync")
        assert rec.ask_sync("item", "x") == 1
        rec.tell_sync("item", "y")
        assert [item for _, item in rec.ask_sync("dump")] == ["x", "y"]
    # Leaving did not stop the Ray it joined: the session runtime still works.
    assert runtime.lookup(rec.address).ask_sync("item", "z") == 3


async def test_state_write_hooks_in_an_actor(runtime: Runtime, job_id: str) -> None:
    guarded = runtime.spawn(Guarded, "guarded", job_id=job_id)
    assert await guarded.ask("write", {"key": "job:name", "value": "ada"}) == 1
    assert await guarded.ask("read", "job:name") == "ADA"
    with pytest.raises(RemoteError) as info:
        await guarded.ask("write", {"key": "job:secret", "value": "hunter2"})
    assert info.value.error_type == "HookCancelled"
    assert "secrets are not written" in info.value.remote_message
    assert await guarded.ask("read", "job:secret") is None
    await guarded.flush()
    cancelled = await runtime.replay(job_id, pattern="hook.cancelled")
    assert [e.payload["hook"] for e in cancelled] == ["guard"]
