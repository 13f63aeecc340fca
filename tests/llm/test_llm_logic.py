"""The provider layer's plain logic: limits, retries, prices, token counts, the registry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from llmspell.llm.errors import LLMBadRequest, LLMServerError, RateLimited
from llmspell.llm.pricing import Price, PriceTable
from llmspell.llm.provider import parse_retry_after
from llmspell.llm.ratelimit import Limits, RateLimiter, SlidingWindow
from llmspell.llm.registry import ProviderRegistry, UnknownProvider, split_model
from llmspell.llm.retry import RetryPolicy, with_retries
from llmspell.llm.types import Chunk, LLMRequest, Message, Response, ToolCall, Usage


def test_sliding_window_counts_requests_and_tokens() -> None:
    window = SlidingWindow(Limits(requests_per_minute=3, tokens_per_minute=100, window=10))
    assert window.try_acquire(1, 40, now=0.0) == 0.0
    assert window.try_acquire(1, 40, now=1.0) == 0.0
    wait = window.try_acquire(1, 40, now=2.0)  # 120 tokens > 100
    assert wait == pytest.approx(8.0)
    assert window.try_acquire(1, 20, now=2.0) == 0.0  # fits
    assert window.try_acquire(1, 0, now=3.0) == pytest.approx(7.0)  # 4 requests > 3
    assert window.try_acquire(1, 0, now=10.0) == 0.0  # the first grant expired


def test_an_oversized_ask_is_granted_alone() -> None:
    window = SlidingWindow(Limits(tokens_per_minute=100, window=10))
    assert window.try_acquire(1, 500, now=0.0) == 0.0
    assert window.try_acquire(1, 1, now=1.0) > 0


async def test_rate_limiter_holds_its_limit_under_concurrency() -> None:
    limiter = RateLimiter(Limits(requests_per_minute=5, window=0.5))
    grants: list[float] = []

    async def call() -> None:
        await limiter.acquire()
        grants.append(time.monotonic())

    await asyncio.gather(*(call() for _ in range(15)))
    grants.sort()
    for i, t in enumerate(grants):
        in_window = [g for g in grants[i:] if g < t + 0.5]
        assert len(in_window) <= 5
    assert grants[-1] - grants[0] >= 1.0  # 15 calls at 5 per 0.5 s take at least 1 s


async def test_retries_only_retryable_errors() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise LLMServerError("p", "m", "boom", status=500)
        return "ok"

    policy = RetryPolicy(max_attempts=4, base_delay=0.01)
    assert await with_retries(flaky, policy=policy) == "ok"
    assert calls == 3

    async def bad() -> str:
        raise LLMBadRequest("p", "m", "no", status=400)

    with pytest.raises(LLMBadRequest):
        await with_retries(bad, policy=policy)


async def test_retry_after_is_a_floor_and_attempts_are_bounded() -> None:
    seen: list[float] = []

    async def limited() -> str:
        raise RateLimited("p", "m", "slow down", retry_after=0.2)

    async def on_retry(error: object, attempt: int, wait: float) -> None:
        seen.append(wait)

    started = time.monotonic()
    with pytest.raises(RateLimited):
        await with_retries(limited, policy=RetryPolicy(max_attempts=3, base_delay=0.01),
                           on_retry=on_retry)
    assert len(seen) == 2 and all(w >= 0.2 for w in seen)
    assert time.monotonic() - started >= 0.4


async def test_deadline_stops_retrying() -> None:
    async def limited() -> str:
        raise RateLimited("p", "m", "slow down", retry_after=5)

    started = time.monotonic()
    with pytest.raises(RateLimited):
        await with_retries(limited, policy=RetryPolicy(), deadline=time.monotonic() + 1)
    assert time.monotonic() - started < 1


def test_parse_retry_after() -> None:
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0


def test_prices() -> None:
    table = PriceTable({"x:model": Price(input=1.0, output=2.0, cached_input=0.5)})
    usage = Usage(input_tokens=1_000_000, output_tokens=500_000, cached_tokens=200_000)
    assert table.cost("x:model", usage) == pytest.approx(0.8 + 0.1 + 1.0)
    assert table.cost("anthropic:claude-sonnet-4-20250514", Usage(output_tokens=1_000_000)) == 15
    assert table.cost("nobody:knows", usage) is None


def test_token_counts_work_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmspell.llm import tokens

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    tokens._load.cache_clear()
    messages = [Message.user("The quick brown fox jumps over the lazy dog.")]
    exact = tokens.count_tokens(messages, "gpt-4")  # cl100k_base, shipped in a package
    assert tokens.is_exact("gpt-4") and exact == 10 + 4
    assert not tokens.is_exact("gpt-4o")  # o200k_base is not on this machine: an estimate
    assert tokens.count_tokens(messages, "gpt-4o") == 11 + 4
    assert "o200k_base" in tokens._warned
    assert tokens.count_tokens(messages, "claude-sonnet-4") == 11 + 4
    tokens._load.cache_clear()


def test_model_names_and_registry() -> None:
    assert split_model("anthropic:claude-sonnet-4") == ("anthropic", "claude-sonnet-4")
    with pytest.raises(ValueError, match="provider:model"):
        split_model("gpt-4o")
    registry = ProviderRegistry()
    with pytest.raises(UnknownProvider, match="did you mean 'openai'"):
        registry.get("opena")

    class Mine:
        name = "mine"

        async def complete(self, request: LLMRequest) -> Response:
            return Response(message=Message.assistant("mine"))

        async def stream(self, request: LLMRequest) -> AsyncIterator[Chunk]:
            yield Chunk(text="mine")

        def count_tokens(self, messages: list[Message], model: str) -> int:
            return 1

    registry.register("mine", Mine())
    provider, model = registry.resolve("mine:any")
    assert provider.name == "mine" and model == "any"


def test_messages() -> None:
    call = ToolCall(id="c1", name="search", arguments={"q": "x"})
    msg = Message.assistant("thinking aloud", [call])
    assert msg.text == "thinking aloud" and msg.tool_calls == [call]
    assert Message.model_validate(msg.model_dump()) == msg
    assert (Usage(input_tokens=1, output_tokens=2) + Usage(cached_tokens=3)).total_tokens == 3


def test_secrets_are_redacted_from_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    import structlog

    from llmspell.runtime.logs import _redact_event, configure_logging, redact

    monkeypatch.setenv("ANTHROPIC_API_KEY", "my-very-secret-value-123")
    assert redact("key=my-very-secret-value-123 and sk-abcdefghijklmnop") == \
        "key=[REDACTED] and [REDACTED]"
    configure_logging()
    processors = structlog.get_config()["processors"]
    assert _redact_event in processors and processors[-1] is not _redact_event  # before render
    line = _redact_event(None, "error", {"event": "calling",
                                         "header": "Bearer my-very-secret-value-123"})
    assert line == {"event": "calling", "header": "Bearer [REDACTED]"}


async def test_llm_client_with_a_scripted_provider_accounts_and_publishes() -> None:
    from llmspell.llm.client import LLM
    from llmspell.llm.pricing import Price, PriceTable
    from llmspell.llm.scripted import ScriptedProvider

    events: list[tuple[str, dict[str, object]]] = []

    async def publish(topic: str, payload: dict[str, object]) -> None:
        events.append((topic, payload))

    provider = ScriptedProvider(["first answer", [ToolCall(id="c1", name="search")]])
    registry = ProviderRegistry()
    registry.register("scripted", provider)
    llm = LLM(registry=registry, publish=publish,
              prices=PriceTable({"scripted:m": Price(input=1.0, output=2.0)}))
    first = await llm.complete("scripted:m", [Message.user("hello")])
    assert first.text == "first answer" and first.cost_usd is not None and first.cost_usd > 0
    second = await llm.complete("scripted:m", [Message.user("search please")])
    assert second.finish_reason == "tool_calls" and second.tool_calls[0].name == "search"
    chunks = [c async for c in llm.stream("scripted:m", [Message.user("one two three")])]
    assert "".join(c.text for c in chunks) == "echo: one two three"
    assert chunks[-1].response is not None
    assert llm.calls == 3 and llm.total_usage.input_tokens > 0
    assert [t for t, _ in events].count("agent.llm.response") == 3
    assert llm.cost_usd == pytest.approx(sum(
        p["cost_usd"] for t, p in events if t == "agent.llm.response"))  # type: ignore[misc]
    assert provider.requests[0].model == "m"


class Failing:
    """A provider that always fails with the given error (a real object, no mocking)."""

    def __init__(self, error: Exception, name: str = "failing") -> None:
        self.name, self.error, self.calls = name, error, 0

    async def complete(self, request: LLMRequest) -> Response:
        self.calls += 1
        raise self.error

    async def stream(self, request: LLMRequest) -> AsyncIterator[Chunk]:
        self.calls += 1
        raise self.error
        yield Chunk()  # pragma: no cover - makes this an async generator

    def count_tokens(self, messages: list[Message], model: str) -> int:
        return 1


def llm_with(**providers: object) -> tuple[object, list[tuple[str, dict[str, object]]]]:
    from llmspell.llm.client import LLM

    events: list[tuple[str, dict[str, object]]] = []

    async def publish(topic: str, payload: dict[str, object]) -> None:
        events.append((topic, payload))

    registry = ProviderRegistry()
    for name, provider in providers.items():
        registry.register(name, provider)  # type: ignore[arg-type]
    return LLM(registry=registry, publish=publish), events


async def test_fallback_after_a_provider_fails_for_good() -> None:
    from llmspell.llm.client import LLM, ModelConfig
    from llmspell.llm.scripted import ScriptedProvider

    down = Failing(LLMServerError("down", "m", "overloaded", status=529))
    llm, events = llm_with(down=down, backup=ScriptedProvider(["from the backup"]))
    assert isinstance(llm, LLM)
    config = ModelConfig(model="down:m", fallbacks=["backup:m"], max_attempts=2, base_delay=0.01)
    response = await llm.complete(config, [Message.user("hi")])
    assert response.text == "from the backup" and down.calls == 2
    topics = [t for t, _ in events]
    assert topics.count("agent.llm.retry") == 1 and "agent.llm.fallback" in topics
    fallback = next(p for t, p in events if t == "agent.llm.fallback")
    assert fallback["from"] == "down:m" and fallback["to"] == "backup:m"


async def test_a_bad_request_is_not_retried_nor_failed_over() -> None:
    from llmspell.llm.client import LLM

    bad = Failing(LLMBadRequest("bad", "m", "messages: field required", status=400))
    llm, events = llm_with(bad=bad, backup=Failing(LLMServerError("b", "m", "x")))
    assert isinstance(llm, LLM)
    with pytest.raises(LLMBadRequest, match="HTTP 400"):
        await llm.complete("bad:m", [Message.user("hi")], fallbacks=["backup:m"])
    assert bad.calls == 1 and not [t for t, _ in events if t == "agent.llm.fallback"]


async def test_every_model_failing_names_each_cause() -> None:
    from llmspell.llm.client import LLM, ModelConfig
    from llmspell.llm.errors import AllModelsFailed

    llm, _ = llm_with(a=Failing(LLMServerError("a", "m", "boom a")),
                      b=Failing(LLMServerError("b", "m", "boom b")))
    assert isinstance(llm, LLM)
    with pytest.raises(AllModelsFailed) as info:
        await llm.complete(ModelConfig(model="a:m", fallbacks=["b:m"], max_attempts=1),
                           [Message.user("hi")])
    assert "boom a" in str(info.value) and "boom b" in str(info.value)


async def test_llm_call_hooks_replace_cancel_and_redirect() -> None:
    from llmspell.llm.client import LLM
    from llmspell.llm.scripted import ScriptedProvider
    from llmspell.runtime.errors import HookCancelled
    from llmspell.runtime.hooks import Cancel, HookContext, Redirect, Replace

    main = ScriptedProvider(["main answer"] * 5)
    other = ScriptedProvider(["other answer"] * 5)
    llm, _ = llm_with(main=main, other=other)
    assert isinstance(llm, LLM)
    cached = Response(message=Message.assistant("cached"))

    def policy(ctx: HookContext) -> object:
        text = ctx.payload.messages[-1].text
        if text == "cached?":
            return Replace(cached)
        if text == "too expensive":
            return Cancel("budget of 0.01 USD reached")
        if text == "elsewhere":
            return Redirect("other:m")
        return None

    llm.hooks.register("before_llm_call", policy, name="policy")
    assert (await llm.complete("main:m", [Message.user("cached?")])).text == "cached"
    assert main.requests == []  # the cache hit never reached the model
    with pytest.raises(HookCancelled, match="budget"):
        await llm.complete("main:m", [Message.user("too expensive")])
    assert (await llm.complete("main:m", [Message.user("elsewhere")])).text == "other answer"
    assert (await llm.complete("main:m", [Message.user("plain")])).text == "main answer"


def test_sdk_errors_map_to_llm_errors_that_say_whether_to_retry() -> None:
    import anthropic
    import httpx2 as httpx
    import openai

    from llmspell.llm.anthropic_provider import map_anthropic_error
    from llmspell.llm.errors import LLMAuthError, LLMTimeout
    from llmspell.llm.openai_provider import map_openai_error

    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")

    def response(status: int, **headers: str) -> httpx.Response:
        return httpx.Response(status, headers=headers, request=request)

    limited = map_openai_error(openai.RateLimitError(
        "slow", response=response(429, **{"retry-after": "2"}),
        body={"error": {"message": "rate limited"}}), "openai", "gpt-4o")
    assert isinstance(limited, RateLimited) and limited.retryable
    assert limited.retry_after == 2.0 and "openai:gpt-4o (HTTP 429): rate limited" in str(limited)
    denied = map_openai_error(openai.AuthenticationError(
        "no", response=response(401), body=None), "openai", "gpt-4o")
    assert isinstance(denied, LLMAuthError) and not denied.retryable
    assert isinstance(map_openai_error(openai.APITimeoutError(request), "o", "m"), LLMTimeout)
    overloaded = map_anthropic_error(anthropic.InternalServerError(
        "overloaded", response=response(529),
        body={"error": {"message": "Overloaded"}}), "anthropic", "claude")
    assert isinstance(overloaded, LLMServerError) and overloaded.status == 529
    bad = map_anthropic_error(anthropic.BadRequestError(
        "bad", response=response(400), body=None), "anthropic", "claude")
    assert isinstance(bad, LLMBadRequest) and not bad.retryable
