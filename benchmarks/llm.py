"""Provider layer benchmark (issue 3): what `LLM` adds over a bare SDK call.

    python -m benchmarks.llm            # a table
    python -m benchmarks.llm --json     # one JSON object with the figures of issue 3

The local LLM server runs at zero latency in a process of its own (so neither side shares its
GIL), on 127.0.0.1. Against it, in one run:

- a bare `openai.AsyncOpenAI(max_retries=0).responses.create` against `LLM.complete("openai:...")`
  (the default OpenAI provider is the Responses API), with everything a job has on: a per-provider
  rate limit (requests and tokens per minute, set high enough never to block), usage and cost
  accounting, and the request and response events published into a real in-process EventBus with
  a subscriber draining them, as an agent's node has;
- streaming: the time to the first text chunk, a bare SDK stream against `LLM.stream`;
- the same for Anthropic: a bare `anthropic.AsyncAnthropic().messages.create` against
  `LLM.complete("anthropic:...")`.

After a warm-up, each measure runs rounds (5 x 200 calls a side by default) in which calls of
the baseline and of ours alternate one by one, so both see the same machine even while its load
drifts; each figure is the median over the rounds of each round's p50 (or p99), and an overhead is
ours minus the baseline. Targets: under 1 ms added per call and to the first chunk.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anthropic
import openai
from pydantic import SecretStr

from llmspell.llm.client import LLM
from llmspell.llm.http import http_client
from llmspell.llm.registry import ProviderRegistry, ProviderSettings
from llmspell.llm.tokens import is_exact
from llmspell.llm.types import Message
from llmspell.runtime.bus import EventBus, Subscription

OPENAI_MODEL = "gpt-4o-mini"  # priced, and a tiktoken model: the exact count is on the path
ANTHROPIC_MODEL = "claude-sonnet-4"
PROMPT = "What is the weather like in Paris today? Answer in one short sentence."
MAX_TOKENS = 256
NEVER_BLOCKS = ProviderSettings(api_key=SecretStr("k"), requests_per_minute=10**9,
                                tokens_per_minute=10**12)
TARGET_MS = 1.0

Call = Callable[[], Awaitable[Any]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`llmspell llm-server` (the LocalLLMServer, echoing) in a process of its own."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmspell", "llm-server", "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("the local LLM server did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# -- the two sides ----------------------------------------------------------------------------


class Events:
    """An in-process EventBus with a subscriber draining every agent.* event, as a node has."""

    def __init__(self) -> None:
        self.bus = EventBus()
        self.sub: Subscription = self.bus.subscribe("agent.**")
        self.seen = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Events:
        self._task = asyncio.create_task(self._drain())
        return self

    async def __aexit__(self, *_: object) -> None:
        self.sub.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _drain(self) -> None:
        while True:
            batch = await self.sub.get_batch(1_000, timeout=1.0)
            self.seen += len(batch)

    async def publish(self, topic: str, payload: dict[str, Any]) -> None:
        await self.bus.publish(topic, payload, job_id="bench", sender="agent-1")


def our_llm(server: ServerProcess, events: Events) -> LLM:
    """An LLM as a user's agent has it: providers from settings, a rate limit, prices,
    events."""
    registry = ProviderRegistry({
        "openai": NEVER_BLOCKS.model_copy(update={"base_url": server.openai_base_url}),
        "anthropic": NEVER_BLOCKS.model_copy(update={"base_url": server.url}),
    })
    return LLM(registry=registry, publish=events.publish, job_id="bench", caller="agent-1")


def calls(oai: openai.AsyncOpenAI, ant: anthropic.AsyncAnthropic, llm: LLM
          ) -> dict[str, tuple[Call, Call]]:
    """(bare, ours) pairs; each checks its answer, so neither side can skip work."""
    messages = [Message.user(PROMPT)]
    expected = f"echo: {PROMPT}"

    async def bare_openai() -> None:
        r = await oai.responses.create(model=OPENAI_MODEL, input=[
            {"role": "user", "content": PROMPT}], max_output_tokens=MAX_TOKENS, store=False)
        assert r.output_text == expected and r.usage is not None

    async def ours_openai() -> None:
        r = await llm.complete(f"openai:{OPENAI_MODEL}", messages, max_tokens=MAX_TOKENS)
        assert r.text == expected and r.cost_usd is not None

    async def bare_anthropic() -> None:
        m = await ant.messages.create(model=ANTHROPIC_MODEL, max_tokens=MAX_TOKENS,
                                      messages=[{"role": "user", "content": PROMPT}])
        assert m.content[0].type == "text" and m.content[0].text == expected

    async def ours_anthropic() -> None:
        r = await llm.complete(f"anthropic:{ANTHROPIC_MODEL}", messages, max_tokens=MAX_TOKENS)
        assert r.text == expected and r.cost_usd is not None

    async def bare_stream() -> AsyncIterator[str]:
        stream = await oai.responses.create(model=OPENAI_MODEL, input=[
            {"role": "user", "content": PROMPT}], max_output_tokens=MAX_TOKENS, store=False,
            stream=True)
        async for event in stream:
            if event.type == "response.output_text.delta":
                yield event.delta

    async def ours_stream() -> AsyncIterator[str]:
        async for chunk in llm.stream(f"openai:{OPENAI_MODEL}", messages,
                                      max_tokens=MAX_TOKENS):
            if chunk.text:
                yield chunk.text

    return {
        "openai": (bare_openai, ours_openai),
        "anthropic": (bare_anthropic, ours_anthropic),
        "stream": (first_chunk(bare_stream, expected), first_chunk(ours_stream, expected)),
    }


def first_chunk(stream: Callable[[], AsyncIterator[str]], expected: str) -> Call:
    """A call that returns the seconds to the first text chunk, then reads the rest."""

    async def run() -> float:
        started = time.perf_counter()
        first: float | None = None
        text = []
        async for piece in stream():
            if first is None:
                first = time.perf_counter() - started
            text.append(piece)
        assert first is not None and "".join(text) == expected
        return first

    return run


# -- measuring --------------------------------------------------------------------------------


async def once(call: Call) -> float:
    """Seconds one call took; a call that returns a float reports its own figure."""
    started = time.perf_counter()
    value = await call()
    return value if isinstance(value, float) else time.perf_counter() - started


async def compare(bare: Call, ours: Call, rounds: int, n: int, warmup: int
                  ) -> dict[str, float]:
    """Rounds of n calls of each side, interleaved call by call (bare, ours, ours, bare, ...)
    so that both see the same machine even while its load drifts; the figures are the median
    over the rounds of each round's p50 and p99."""
    for _ in range(warmup):
        await once(bare)
        await once(ours)
    p50: dict[str, list[float]] = {"bare": [], "ours": []}
    p99: dict[str, list[float]] = {"bare": [], "ours": []}
    for _ in range(rounds):
        samples: dict[str, list[float]] = {"bare": [], "ours": []}
        for i in range(n):
            pair = [("bare", bare), ("ours", ours)]
            for side, call in pair if i % 2 == 0 else pair[::-1]:
                samples[side].append(await once(call))
        for side, values in samples.items():
            values.sort()
            p50[side].append(statistics.median(values))
            p99[side].append(values[min(len(values) - 1, int(0.99 * len(values)))])
    out = {f"{side}_{q}_ms": round(statistics.median(values[side]) * 1e3, 3)
           for q, values in (("p50", p50), ("p99", p99)) for side in ("bare", "ours")}
    out["overhead_p50_ms"] = round(out["ours_p50_ms"] - out["bare_p50_ms"], 3)
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    server = ServerProcess()
    try:
        async with Events() as events, openai.AsyncOpenAI(
                base_url=server.openai_base_url, api_key="k", max_retries=0,
                http_client=http_client(openai, "auto", 60.0)) as oai, \
                anthropic.AsyncAnthropic(base_url=server.url, api_key="k", max_retries=0,
                                         http_client=http_client(anthropic, "auto", 60.0)
                                         ) as ant:
            llm = our_llm(server, events)
            pairs = calls(oai, ant, llm)
            figures = {name: await compare(*pair, args.rounds, args.calls, args.warmup)
                       for name, pair in pairs.items()}
            published = events.bus.published
    finally:
        server.stop()
    o, a, s = figures["openai"], figures["anthropic"], figures["stream"]
    return {
        "overhead_p50_ms": o["overhead_p50_ms"],
        "stream_first_chunk_overhead_ms": s["overhead_p50_ms"],
        "anthropic_overhead_p50_ms": a["overhead_p50_ms"],
        "bare_openai_p50_ms": o["bare_p50_ms"], "llm_openai_p50_ms": o["ours_p50_ms"],
        "bare_openai_p99_ms": o["bare_p99_ms"], "llm_openai_p99_ms": o["ours_p99_ms"],
        "bare_stream_first_chunk_p50_ms": s["bare_p50_ms"],
        "llm_stream_first_chunk_p50_ms": s["ours_p50_ms"],
        "bare_anthropic_p50_ms": a["bare_p50_ms"], "llm_anthropic_p50_ms": a["ours_p50_ms"],
        "llm_calls": llm.calls, "events_published": published,
        "openai_token_count": "exact" if is_exact(OPENAI_MODEL) else "estimate",
        "rounds": args.rounds, "calls_per_round": args.calls,
        "target_ms": TARGET_MS,
    }


def table(r: dict[str, Any]) -> str:
    rows = [
        ("OpenAI responses call p50 (ms)", r["bare_openai_p50_ms"], r["llm_openai_p50_ms"],
         r["overhead_p50_ms"]),
        ("OpenAI responses call p99 (ms)", r["bare_openai_p99_ms"], r["llm_openai_p99_ms"],
         round(r["llm_openai_p99_ms"] - r["bare_openai_p99_ms"], 3)),
        ("stream, first text chunk p50 (ms)", r["bare_stream_first_chunk_p50_ms"],
         r["llm_stream_first_chunk_p50_ms"], r["stream_first_chunk_overhead_ms"]),
        ("Anthropic messages call p50 (ms)", r["bare_anthropic_p50_ms"],
         r["llm_anthropic_p50_ms"], r["anthropic_overhead_p50_ms"]),
    ]
    out = [f"{'measure':36} {'bare SDK':>10} {'llmspell':>10} {'added':>8}"]
    out += [f"{name:36} {a!s:>10} {b!s:>10} {c:>+8.3f}" for name, a, b, c in rows]
    out.append(f"target: under {r['target_ms']:g} ms added; llmspell with rate limit, usage, cost "
               f"and events on ({r['events_published']} events published; token counts "
               f"{r['openai_token_count']})")
    return "\n".join(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="a fifth of the work")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per measure")
    parser.add_argument("--calls", type=int, default=200, help="calls per side per round")
    parser.add_argument("--warmup", type=int, default=50, help="untimed calls per side first")
    parsed = parser.parse_args()
    if parsed.quick:
        parsed.calls = max(1, parsed.calls // 5)
    figures = asyncio.run(main(parsed))
    print(json.dumps(figures) if parsed.json else table(figures))
