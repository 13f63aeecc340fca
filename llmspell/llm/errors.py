"""Errors of the provider layer. Each names the provider, the model and what happened.

    LLMError                     retryable tells the retry layer what to do
    ├── RateLimited              429; carries retry_after (seconds) when the server said
    ├── LLMServerError           5xx, overloaded
    ├── LLMTimeout               no answer within the per-call timeout
    ├── LLMConnectionError       could not connect, or the connection broke
    ├── StreamInterrupted        a stream ended before its final event: never a truncated answer
    ├── MalformedResponse        the answer could not be parsed
    ├── LLMBadRequest            400, 404, 422: the request is wrong; not retried, no fallback
    ├── LLMAuthError             401, 403: not retried
    └── AllModelsFailed          every model of a fallback chain failed; carries each cause
"""

from __future__ import annotations

from llmspell.runtime.errors import LlmspellError


class LLMError(LlmspellError):
    retryable = False

    def __init__(self, provider: str, model: str, message: str, *, status: int | None = None
                 ) -> None:
        where = f"{provider}:{model}" + (f" (HTTP {status})" if status else "")
        super().__init__(f"{where}: {message}")
        self.provider = provider
        self.model = model
        self.status = status
        self.detail = message


class RateLimited(LLMError):
    retryable = True

    def __init__(self, provider: str, model: str, message: str, *, status: int | None = 429,
                 retry_after: float | None = None) -> None:
        super().__init__(provider, model, message, status=status)
        self.retry_after = retry_after


class LLMServerError(LLMError):
    retryable = True


class LLMTimeout(LLMError):
    retryable = True


class LLMConnectionError(LLMError):
    retryable = True


class StreamInterrupted(LLMError):
    retryable = True


class MalformedResponse(LLMError):
    retryable = True


class LLMBadRequest(LLMError):
    pass


class LLMAuthError(LLMError):
    pass


class AllModelsFailed(LLMError):
    def __init__(self, chain: list[str], causes: list[LLMError]) -> None:
        summary = "; ".join(str(c) for c in causes)
        super().__init__("fallback", " -> ".join(chain), f"every model failed: {summary}")
        self.chain = chain
        self.causes = causes
