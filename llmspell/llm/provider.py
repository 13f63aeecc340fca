"""The Provider protocol: what every model backend implements."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import AsyncIterator, Mapping
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

from llmspell.llm.errors import (
    LLMAuthError,
    LLMBadRequest,
    LLMConnectionError,
    LLMError,
    LLMServerError,
    LLMTimeout,
    MalformedResponse,
    RateLimited,
)
from llmspell.llm.types import Chunk, LLMRequest, Message, Response


@runtime_checkable
class Provider(Protocol):
    """A model backend. `complete` and `stream` raise `LLMError`s, never SDK exceptions."""

    name: str

    async def complete(self, request: LLMRequest) -> Response: ...

    def stream(self, request: LLMRequest) -> AsyncIterator[Chunk]: ...

    def count_tokens(self, messages: list[Message], model: str) -> int: ...


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from `retry-after-ms` or `retry-after` (seconds or an HTTP date)."""
    if not headers:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return None if parsed is None else max(0.0, parsed.timestamp() - time.time())


def error_for_status(provider: str, model: str, status: int, message: str,
                     headers: Mapping[str, str] | None) -> LLMError:
    """The LLMError for an HTTP status: 429 and 5xx retryable, 401/403 and other 4xx not."""
    if status == 429:
        return RateLimited(provider, model, message, retry_after=parse_retry_after(headers))
    if status in (401, 403):
        return LLMAuthError(provider, model, message, status=status)
    if status >= 500:  # Anthropic's 529 "overloaded" included
        return LLMServerError(provider, model, message, status=status)
    if status == 408:
        return LLMTimeout(provider, model, message, status=status)
    return LLMBadRequest(provider, model, message, status=status)


async def stamp_latency(chunks: AsyncIterator[Chunk], started: float) -> AsyncIterator[Chunk]:
    """Pass chunks through, setting the final Response's latency (from `started`)."""
    async for chunk in chunks:
        if chunk.response is not None:
            chunk = chunk.model_copy(update={"response": chunk.response.model_copy(
                update={"latency_s": time.perf_counter() - started})})
        yield chunk


def map_sdk_error(exc: Exception, sdk: ModuleType, provider: str, model: str) -> LLMError:
    """Translate an exception of the `openai` or `anthropic` SDK (they share their exception
    names and error body shape) into an LLMError that says whether to retry."""
    if isinstance(exc, LLMError):
        return exc
    if isinstance(exc, sdk.APITimeoutError) and not _connection_lost(exc):
        return LLMTimeout(provider, model, "request timed out")
    if isinstance(exc, sdk.APIConnectionError):
        return LLMConnectionError(provider, model, f"connection failed: {exc}")
    if isinstance(exc, sdk.APIStatusError):
        return error_for_status(provider, model, exc.status_code, _status_message(exc),
                                exc.response.headers)
    if isinstance(exc, (json.JSONDecodeError, sdk.APIResponseValidationError)):
        return MalformedResponse(provider, model, f"malformed response: {exc}")
    return LLMConnectionError(provider, model, f"{type(exc).__name__}: {exc}")


def _connection_lost(exc: BaseException) -> bool:
    """Whether an SDK "timeout" is really a connection the server closed: the SDKs' aiohttp
    transport reports every aiohttp connection error as a timeout."""
    import aiohttp

    cause, seen = exc.__cause__ or exc.__context__, set()
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, aiohttp.ClientConnectionError) and \
                not isinstance(cause, TimeoutError):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def _status_message(exc: Any) -> str:
    body = exc.body
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(exc.message)
