"""The LLM client agents use: one call = rate limit, retries, fallbacks, events, usage, cost.

    llm = LLM(publish=node.publish)
    response = await llm.complete("openai:gpt-4o", [Message.user("hi")],
                                  fallbacks=["anthropic:claude-sonnet-4", "local:echo"])

Each attempt waits for the provider's rate limit, then calls the provider under the per-call
timeout; retryable failures are retried with backoff (Retry-After honoured) until the attempts
or the total deadline run out; then the next model of the fallback chain is tried (not after a
bad request: the next model would refuse it too). Every step is an event:
agent.llm.request / response / retry / fallback, with usage and cost on the response.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pydantic import BaseModel, Field

from llmspell.llm.errors import (
    AllModelsFailed,
    LLMBadRequest,
    LLMError,
    LLMTimeout,
    StreamInterrupted,
)
from llmspell.llm.pricing import PriceTable
from llmspell.llm.provider import Provider
from llmspell.llm.ratelimit import Limits, RateLimiter, SharedRateLimiter, limiter_service
from llmspell.llm.registry import ProviderRegistry, default_registry, split_model
from llmspell.llm.retry import RetryPolicy, with_retries
from llmspell.llm.types import Chunk, LLMRequest, Message, Response, Usage
from llmspell.runtime.errors import HookCancelled
from llmspell.runtime.hooks import (
    Cancel,
    HookContext,
    HookPoint,
    HookRegistry,
    Modify,
    Redirect,
    Replace,
)
from llmspell.runtime.logs import redact

Publish = Callable[[str, dict[str, Any]], Awaitable[None]]


class ModelConfig(BaseModel):
    """A model with its fallbacks and patience, as a job spec or an agent names it."""

    model: str
    fallbacks: list[str] = Field(default_factory=list)
    timeout: float = 60.0  # per call
    deadline: float | None = None  # for the whole call, retries and fallbacks included
    max_attempts: int = 4
    base_delay: float = 0.5

    @property
    def chain(self) -> list[str]:
        return [self.model, *self.fallbacks]


class Limiters:
    """One limiter per provider: local to this process, or shared across the cluster."""

    def __init__(self, registry: ProviderRegistry, *, shared_namespace: str | None = None
                 ) -> None:
        self._registry = registry
        self._namespace = shared_namespace
        self._limiters: dict[str, RateLimiter | SharedRateLimiter | None] = {}

    def get(self, provider: str) -> RateLimiter | SharedRateLimiter | None:
        if provider not in self._limiters:
            s = self._registry.settings_for(provider)
            limits = Limits(s.requests_per_minute, s.tokens_per_minute)
            if limits.requests_per_minute is None and limits.tokens_per_minute is None:
                self._limiters[provider] = None
            elif self._namespace is None:
                self._limiters[provider] = RateLimiter(limits)
            else:
                self._limiters[provider] = SharedRateLimiter(
                    provider, limits, limiter_service(self._namespace))
        return self._limiters[provider]


class LLM:
    """Model calls with everything a production job needs around them."""

    def __init__(
        self,
        *,
        registry: ProviderRegistry | None = None,
        prices: PriceTable | None = None,
        publish: Publish | None = None,
        limiters: Limiters | None = None,
        hooks: HookRegistry | None = None,
        job_id: str | None = None,
        caller: str | None = None,
    ) -> None:
        self.registry = registry or default_registry
        self.prices = prices or PriceTable()
        self.limiters = limiters or Limiters(self.registry)
        self._publish = publish
        self.hooks = hooks or HookRegistry()
        self.job_id = job_id
        self.caller = caller
        self.usage: dict[str, Usage] = {}
        self.cost_usd = 0.0
        self.calls = 0

    # -- the public calls ---------------------------------------------------------------------

    async def complete(self, model: str | ModelConfig, messages: list[Message],
                       **options: Any) -> Response:
        """One answer. Options are LLMRequest fields (tools, output_schema, max_tokens...);
        `fallbacks` may be given here too."""
        config = _config(model, options.pop("fallbacks", None))
        request = LLMRequest(model=config.model, messages=messages,
                             timeout=options.pop("timeout", config.timeout), **options)

        async def run_chain(req: LLMRequest, target: str | None) -> Response:
            chosen = config if target in (None, config.model) else config.model_copy(
                update={"model": target})
            return await self._complete_chain(chosen, req)

        # before_llm_call may Modify the request, Replace the answer (a cache hit), Cancel the
        # call (a budget) or Redirect it to another model; after_llm_call sees the Response.
        response: Response = await self.hooks.call(
            HookPoint.before_llm_call, HookPoint.after_llm_call, request, run_chain,
            target=config.model, job_id=self.job_id, actor=self.caller,
        )
        return response

    async def _complete_chain(self, config: ModelConfig, base: LLMRequest) -> Response:
        deadline = None if config.deadline is None else time.monotonic() + config.deadline
        errors: list[LLMError] = []
        for index, name in enumerate(config.chain):
            provider, request = self._prepare(name, base)
            try:
                return await with_retries(
                    functools.partial(self._attempt, provider, request, name, deadline),
                    policy=_policy(config), deadline=deadline,
                    on_retry=functools.partial(self._retrying, name),
                )
            except LLMError as exc:
                errors.append(exc)
                await self._failed_over(config.chain, index, exc)
                if isinstance(exc, LLMBadRequest):
                    raise
        raise AllModelsFailed(config.chain, errors)

    async def stream(self, model: str | ModelConfig, messages: list[Message],
                     **options: Any) -> AsyncIterator[Chunk]:
        """The answer as it is generated; the last chunk carries the whole Response.

        A failure before the first chunk is retried and may fall back; once output has been
        given, a failure raises (StreamInterrupted) rather than end a truncated answer.

        Hooks as for `complete`: before_llm_call may Modify, Redirect, Cancel or Replace (the
        replacement is streamed as if the model said it); after_llm_call sees the final
        Response and may Modify or Replace it (text already streamed stays streamed) or Cancel;
        on_error hooks see a failure before it is raised."""
        config = _config(model, options.pop("fallbacks", None))
        base = LLMRequest(model=config.model, messages=messages,
                          timeout=options.pop("timeout", config.timeout), **options)
        metadata: dict[str, Any] = {}  # shared by the hooks of this one call, as in complete()
        config, base, replaced = await self._before_stream(config, base, metadata)
        if replaced is not None:
            for chunk in _chunks_of(replaced):
                yield chunk
            return
        try:
            async for chunk in self._stream_chain(config, base):
                if chunk.response is not None:
                    final = await self._after_stream(chunk.response, config.model, metadata)
                    chunk = chunk.model_copy(update={"response": final})
                yield chunk
        except LLMError as exc:
            if self.hooks.has_hooks(HookPoint.on_error):
                await self.hooks.run(HookPoint.on_error, HookContext(
                    HookPoint.on_error, base, self.job_id, self.caller, config.model,
                    error=exc, metadata=metadata))
            raise

    async def _stream_chain(self, config: ModelConfig, base: LLMRequest
                            ) -> AsyncIterator[Chunk]:
        deadline = None if config.deadline is None else time.monotonic() + config.deadline
        errors: list[LLMError] = []
        for index, name in enumerate(config.chain):
            provider, request = self._prepare(name, base)
            policy = _policy(config)
            attempt = 1
            while True:
                started = False
                try:
                    await self._before(provider, request, name, attempt)
                    async for chunk in provider.stream(request):
                        started = True
                        if chunk.response is not None:
                            chunk = chunk.model_copy(
                                update={"response": await self._after(chunk.response, name)})
                        yield chunk
                    return
                except LLMError as exc:
                    if started or not exc.retryable or attempt >= policy.max_attempts:
                        if started and not isinstance(exc, StreamInterrupted):
                            raise StreamInterrupted(
                                exc.provider, exc.model,
                                f"stream broke after output had begun: {exc.detail}",
                                status=exc.status) from exc
                        if started:
                            raise
                        errors.append(exc)
                        break
                    wait = policy.delay(exc, attempt)
                    if deadline is not None and time.monotonic() + wait >= deadline:
                        errors.append(exc)
                        break
                    await self._retrying(name, exc, attempt, wait)
                    await asyncio.sleep(wait)
                    attempt += 1
            await self._failed_over(config.chain, index, errors[-1])
            if isinstance(errors[-1], LLMBadRequest):
                raise errors[-1]
        raise AllModelsFailed(config.chain, errors)

    # -- steps --------------------------------------------------------------------------------

    async def _before_stream(self, config: ModelConfig, request: LLMRequest,
                             metadata: dict[str, Any]
                             ) -> tuple[ModelConfig, LLMRequest, Response | None]:
        """The before hooks of a stream: Modify, Redirect, Cancel, or Replace (a cache hit)."""
        if not self.hooks.has_hooks(HookPoint.before_llm_call):
            return config, request, None
        ctx = HookContext(HookPoint.before_llm_call, request, self.job_id, self.caller,
                          config.model, metadata=metadata)
        decision = await self.hooks.decide(HookPoint.before_llm_call, ctx)
        result = decision.result
        if isinstance(result, Cancel):
            raise HookCancelled("before_llm_call", result.reason, decision.hook or "?")
        if isinstance(result, Replace) and isinstance(result.result, Response):
            return config, request, result.result
        if isinstance(result, Redirect):
            config = config.model_copy(update={"model": result.target})
        payload = ctx.payload if isinstance(ctx.payload, LLMRequest) else request
        return config, payload, None

    async def _after_stream(self, response: Response, target: str,
                            metadata: dict[str, Any]) -> Response:
        if not self.hooks.has_hooks(HookPoint.after_llm_call):
            return response
        ctx = HookContext(HookPoint.after_llm_call, response, self.job_id, self.caller, target,
                          metadata=metadata)
        decision = await self.hooks.decide(HookPoint.after_llm_call, ctx)
        result = decision.result
        if isinstance(result, Cancel):
            raise HookCancelled("after_llm_call", result.reason, decision.hook or "?")
        if isinstance(result, Modify | Replace):
            value = result.payload if isinstance(result, Modify) else result.result
            if isinstance(value, Response):
                return value
        return ctx.payload if isinstance(ctx.payload, Response) else response

    def _prepare(self, name: str, request: LLMRequest) -> tuple[Provider, LLMRequest]:
        provider, model_name = self.registry.resolve(name)
        return provider, request.model_copy(update={"model": model_name})

    async def _attempt(self, provider: Provider, request: LLMRequest, name: str,
                       deadline: float | None) -> Response:
        await self._before(provider, request, name, 0)
        timeout = request.timeout
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LLMTimeout(provider.name, request.model, "the call's deadline has passed")
            timeout = min(timeout or left, left)
            request = request.model_copy(update={"timeout": timeout})
        response = await provider.complete(request)
        return await self._after(response, name)

    async def _before(self, provider: Provider, request: LLMRequest, name: str,
                      attempt: int) -> None:
        tokens = provider.count_tokens(request.messages, request.model)
        limiter = self.limiters.get(split_model(name)[0])
        waited = 0.0
        if limiter is not None:
            waited = await limiter.acquire(tokens + request.max_tokens)
        await self._emit("agent.llm.request", {
            "model": name, "messages": len(request.messages), "tools": len(request.tools),
            "input_tokens_estimate": tokens, "rate_limit_wait_s": round(waited, 4),
        })

    async def _after(self, response: Response, name: str) -> Response:
        cost = self.prices.cost(name, response.usage)
        response = response.model_copy(update={"cost_usd": cost})
        self.calls += 1
        self.usage[name] = self.usage.get(name, Usage()) + response.usage
        self.cost_usd += cost or 0.0
        await self._emit("agent.llm.response", {
            "model": name, "finish_reason": response.finish_reason,
            "usage": response.usage.model_dump(), "cost_usd": cost,
            "latency_s": round(response.latency_s, 4), "tool_calls": len(response.tool_calls),
        })
        return response

    async def _retrying(self, name: str, error: LLMError, attempt: int, wait: float) -> None:
        await self._emit("agent.llm.retry", {"model": name, "attempt": attempt,
                                             "wait_s": round(wait, 3), "error": str(error),
                                             "status": error.status})

    async def _failed_over(self, chain: list[str], index: int, error: LLMError) -> None:
        if index + 1 < len(chain) and not isinstance(error, LLMBadRequest):
            await self._emit("agent.llm.fallback", {"from": chain[index], "to": chain[index + 1],
                                                    "error": str(error)})

    async def _emit(self, topic: str, payload: dict[str, Any]) -> None:
        if self._publish is not None:
            if "error" in payload:  # provider messages may echo a request; keys never travel
                payload["error"] = redact(str(payload["error"]))
            await self._publish(topic, payload)

    @property
    def total_usage(self) -> Usage:
        total = Usage()
        for usage in self.usage.values():
            total = total + usage
        return total


def _config(model: str | ModelConfig, fallbacks: list[str] | None) -> ModelConfig:
    config = model if isinstance(model, ModelConfig) else ModelConfig(model=model)
    if fallbacks:
        config = config.model_copy(update={"fallbacks": list(fallbacks)})
    for name in config.chain:
        split_model(name)  # a malformed name fails before anything is sent
    return config


def _policy(config: ModelConfig) -> RetryPolicy:
    return RetryPolicy(max_attempts=config.max_attempts, base_delay=config.base_delay)



def _chunks_of(response: Response) -> list[Chunk]:
    """A finished answer (a hook's replacement) as the chunks a stream would have given."""
    chunks = [Chunk(text=response.text)] if response.text else []
    chunks += [Chunk(tool_call=call) for call in response.tool_calls]
    return [*chunks, Chunk(response=response)]
