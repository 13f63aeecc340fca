"""Models for agents: providers on the official SDKs, retries, rate limits, cost, fallbacks.

Agents talk to models only through this package. `LLM` is the client; `Message`, `ToolSpec`,
`Response` and friends are the normalized types every provider speaks.
"""

from llmspell.llm.client import LLM, Limiters, ModelConfig
from llmspell.llm.errors import (
    AllModelsFailed,
    LLMAuthError,
    LLMBadRequest,
    LLMConnectionError,
    LLMError,
    LLMServerError,
    LLMTimeout,
    MalformedResponse,
    RateLimited,
    StreamInterrupted,
)
from llmspell.llm.pricing import Price, PriceTable
from llmspell.llm.provider import Provider
from llmspell.llm.registry import (
    ProviderRegistry,
    ProviderSettings,
    default_registry,
    register_provider,
)
from llmspell.llm.types import (
    Chunk,
    LLMRequest,
    Message,
    OutputSchema,
    Response,
    TextPart,
    ThinkingPart,
    ToolCall,
    ToolResult,
    ToolSpec,
    Usage,
)

__all__ = [
    "LLM",
    "AllModelsFailed",
    "Chunk",
    "LLMAuthError",
    "LLMBadRequest",
    "LLMConnectionError",
    "LLMError",
    "LLMRequest",
    "LLMServerError",
    "LLMTimeout",
    "Limiters",
    "MalformedResponse",
    "Message",
    "ModelConfig",
    "OutputSchema",
    "Price",
    "PriceTable",
    "Provider",
    "ProviderRegistry",
    "ProviderSettings",
    "RateLimited",
    "Response",
    "StreamInterrupted",
    "TextPart",
    "ThinkingPart",
    "ToolCall",
    "ToolResult",
    "ToolSpec",
    "Usage",
    "default_registry",
    "register_provider",
]
