"""Normalized LLM types: one conversation model for every provider.

A `Message` has a role and a list of parts: text, tool calls (from the assistant), tool results
(from tools), and thinking (kept so that a provider that requires its reasoning blocks back, as
Anthropic does with tool use, gets them). Providers translate these to and from their wire
formats; nothing above `llmspell.llm` sees a provider's own types.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "tool_calls", "length", "content_filter", "error"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TextPart(_Model):
    kind: Literal["text"] = "text"
    text: str
    cache: bool = False  # a prompt-cache breakpoint after this part (Anthropic cache_control)


class ToolCall(_Model):
    """A model's request to run a tool. `id` pairs it with its result."""

    kind: Literal["tool_call"] = "tool_call"
    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    # The raw argument text when the model produced something that is not a JSON object;
    # the agent reports it back to the model as a tool error instead of guessing.
    invalid_arguments: str | None = None


class ToolResult(_Model):
    kind: Literal["tool_result"] = "tool_result"
    call_id: str
    content: str
    is_error: bool = False


class ThinkingPart(_Model):
    kind: Literal["thinking"] = "thinking"
    text: str
    signature: str | None = None
    redacted: bool = False


Part = Annotated[TextPart | ToolCall | ToolResult | ThinkingPart, Field(discriminator="kind")]


class Message(_Model):
    role: Role
    parts: list[Part]

    @classmethod
    def system(cls, text: str) -> Message:
        return cls(role="system", parts=[TextPart(text=text)])

    @classmethod
    def user(cls, text: str, *, cache: bool = False) -> Message:
        return cls(role="user", parts=[TextPart(text=text, cache=cache)])

    @classmethod
    def assistant(cls, text: str = "", tool_calls: list[ToolCall] | None = None) -> Message:
        parts: list[Any] = [TextPart(text=text)] if text else []
        return cls(role="assistant", parts=parts + list(tool_calls or []))

    @classmethod
    def tool(cls, call_id: str, content: str, *, is_error: bool = False) -> Message:
        return cls(role="tool",
                   parts=[ToolResult(call_id=call_id, content=content, is_error=is_error)])

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [p for p in self.parts if isinstance(p, ToolCall)]


class ToolSpec(_Model):
    """What a model is told about a tool: its name, purpose and JSON schema of arguments."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )


class OutputSchema(_Model):
    """A JSON schema the answer must follow, passed to the provider's own mechanism."""

    name: str = "output"
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool = True

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Usage(_Model):
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0  # input tokens read from a prompt cache
    cache_write_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
        )

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class LLMRequest(_Model):
    """One call: the conversation and how to answer it. `model` is the provider's model name."""

    model: str
    messages: list[Message]
    tools: list[ToolSpec] = Field(default_factory=list)
    tool_choice: Literal["auto", "required", "none"] | str = "auto"
    output_schema: OutputSchema | None = None
    max_tokens: int = 1024
    temperature: float | None = None
    thinking_budget: int | None = None  # Anthropic extended thinking, when set
    timeout: float | None = None


class Response(_Model):
    message: Message
    usage: Usage = Field(default_factory=Usage)
    finish_reason: FinishReason = "stop"
    model: str = ""
    provider: str = ""
    latency_s: float = 0.0
    cost_usd: float | None = None

    @property
    def text(self) -> str:
        return self.message.text

    @property
    def tool_calls(self) -> list[ToolCall]:
        return self.message.tool_calls

    def parsed(self) -> Any:
        """The answer parsed as JSON (for structured output)."""
        return json.loads(self.text)


class Chunk(_Model):
    """A piece of a streamed response. The last chunk carries `response`, the whole answer."""

    text: str = ""
    thinking: str = ""
    tool_call: ToolCall | None = None  # a tool call, once its arguments are complete
    response: Response | None = None
