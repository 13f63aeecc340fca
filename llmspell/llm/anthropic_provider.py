"""Anthropic through the official `anthropic` SDK: the Messages API.

Tool calls are tool_use blocks and their results tool_result blocks in a user turn; system
prompts go in `system`; a part marked `cache=True` gets a cache_control breakpoint; thinking
blocks are kept in the conversation and sent back with their signatures, as the API requires
during tool use. Structured output is a forced tool whose input is the answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anthropic

from llmspell.llm.errors import (
    LLMError,
    StreamInterrupted,
)
from llmspell.llm.http import HttpKind, SDKClients
from llmspell.llm.provider import map_sdk_error, stamp_latency
from llmspell.llm.tokens import count_tokens
from llmspell.llm.types import (
    Chunk,
    FinishReason,
    LLMRequest,
    Message,
    Response,
    TextPart,
    ThinkingPart,
    ToolCall,
    ToolResult,
    Usage,
)


def map_anthropic_error(exc: Exception, provider: str, model: str) -> LLMError:
    return map_sdk_error(exc, anthropic, provider, model)


class AnthropicProvider(SDKClients[anthropic.AsyncAnthropic]):
    def __init__(
        self,
        *,
        name: str = "anthropic",
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 60.0,
        http: HttpKind = "auto",
        client: anthropic.AsyncAnthropic | None = None,
    ) -> None:
        self.name = name
        self._use_sdk(anthropic, anthropic.AsyncAnthropic, api_key=api_key, base_url=base_url,
                      timeout=timeout, http=http, given=client)

    def count_tokens(self, messages: list[Message], model: str) -> int:
        return count_tokens(messages, model)

    async def complete(self, request: LLMRequest) -> Response:
        started = time.perf_counter()
        try:
            client = await self.clients.get()
            raw = await client.messages.create(**self._args(request))
            response = self._from_message(raw.model_dump(), request)
        except Exception as exc:
            raise map_anthropic_error(exc, self.name, request.model) from exc
        return response.model_copy(update={"latency_s": time.perf_counter() - started})

    async def stream(self, request: LLMRequest) -> AsyncIterator[Chunk]:
        started = time.perf_counter()
        try:
            async for chunk in stamp_latency(self._stream(request), started):
                yield chunk
        except Exception as exc:
            raise map_anthropic_error(exc, self.name, request.model) from exc

    async def _stream(self, request: LLMRequest) -> AsyncIterator[Chunk]:
        client = await self.clients.get()
        stream = await client.messages.create(**self._args(request), stream=True)
        blocks: dict[int, dict[str, Any]] = {}
        message: dict[str, Any] = {}
        stop_reason: str | None = None
        usage: dict[str, Any] = {}
        finished = False
        async for event in stream:
            kind = event.type
            if kind == "message_start":
                message = event.message.model_dump()
                usage = dict(message.get("usage") or {})
            elif kind == "content_block_start":
                blocks[event.index] = {**event.content_block.model_dump(), "_json": ""}
            elif kind == "content_block_delta":
                block, delta = blocks[event.index], event.delta
                if delta.type == "text_delta":
                    block["text"] = block.get("text", "") + delta.text
                    yield Chunk(text=delta.text)
                elif delta.type == "input_json_delta":
                    block["_json"] += delta.partial_json
                elif delta.type == "thinking_delta":
                    block["thinking"] = block.get("thinking", "") + delta.thinking
                    yield Chunk(thinking=delta.thinking)
                elif delta.type == "signature_delta":
                    block["signature"] = delta.signature
            elif kind == "message_delta":
                stop_reason = event.delta.stop_reason or stop_reason
                usage.update({k: v for k, v in event.usage.model_dump().items()
                              if v is not None})
            elif kind == "message_stop":
                finished = True
        if not finished:
            raise StreamInterrupted(self.name, request.model, "stream ended before message_stop")
        content = []
        for _, block in sorted(blocks.items()):
            raw_json = block.pop("_json")
            if block.get("type") == "tool_use":
                try:
                    block["input"] = json.loads(raw_json) if raw_json else {}
                except json.JSONDecodeError:
                    block["input"] = {"__invalid__": raw_json}
            content.append(block)
        response = self._from_message({**message, "content": content, "usage": usage,
                                       "stop_reason": stop_reason}, request)
        for call in response.tool_calls:
            yield Chunk(tool_call=call)
        yield Chunk(response=response)

    # -- translation --------------------------------------------------------------------------

    def _args(self, request: LLMRequest) -> dict[str, Any]:
        system = [_text_block(p) for m in request.messages if m.role == "system"
                  for p in m.parts if isinstance(p, TextPart)]
        args: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": _messages([m for m in request.messages if m.role != "system"]),
        }
        if system:
            args["system"] = system
        tools = [{"name": t.name, "description": t.description, "input_schema": t.parameters}
                 for t in request.tools]
        if request.output_schema is not None:
            # The forced tool's input is the structured answer.
            s = request.output_schema
            tools.append({"name": s.name, "description": "Give the final answer.",
                          "input_schema": s.schema_})
            args["tool_choice"] = {"type": "tool", "name": s.name}
        elif request.tools:
            args["tool_choice"] = _tool_choice(request.tool_choice)
        if tools:
            args["tools"] = tools
        if request.temperature is not None:
            args["temperature"] = request.temperature
        if request.thinking_budget:
            args["thinking"] = {"type": "enabled", "budget_tokens": request.thinking_budget}
        if request.timeout is not None:
            args["timeout"] = request.timeout
        return args

    def _from_message(self, raw: dict[str, Any], request: LLMRequest) -> Response:
        parts: list[Any] = []
        schema_name = request.output_schema.name if request.output_schema else None
        for block in raw.get("content") or []:
            kind = block.get("type")
            if kind == "text":
                parts.append(TextPart(text=block.get("text") or ""))
            elif kind == "thinking":
                parts.append(ThinkingPart(text=block.get("thinking") or "",
                                          signature=block.get("signature")))
            elif kind == "redacted_thinking":
                parts.append(ThinkingPart(text=block.get("data") or "", redacted=True))
            elif kind == "tool_use" and block.get("name") == schema_name:
                parts.append(TextPart(text=json.dumps(block.get("input") or {})))
            elif kind == "tool_use":
                parts.append(_tool_call(block))
        usage = raw.get("usage") or {}
        calls = [p for p in parts if isinstance(p, ToolCall)]
        reason = raw.get("stop_reason")
        if reason == "tool_use" and not calls:  # only the structured output's forced tool
            reason = "end_turn"
        return Response(
            message=Message(role="assistant", parts=parts),
            usage=Usage(
                input_tokens=(usage.get("input_tokens") or 0)
                + (usage.get("cache_read_input_tokens") or 0)
                + (usage.get("cache_creation_input_tokens") or 0),
                output_tokens=usage.get("output_tokens") or 0,
                cached_tokens=usage.get("cache_read_input_tokens") or 0,
                cache_write_tokens=usage.get("cache_creation_input_tokens") or 0,
            ),
            finish_reason=_finish(reason, bool(calls)),
            model=raw.get("model") or request.model,
            provider=self.name,
        )


def _tool_call(block: dict[str, Any]) -> ToolCall:
    args = block.get("input") or {}
    if isinstance(args, dict) and "__invalid__" in args:
        return ToolCall(id=block.get("id") or "", name=block.get("name") or "",
                        invalid_arguments=str(args["__invalid__"]))
    return ToolCall(id=block.get("id") or "", name=block.get("name") or "",
                    arguments=args if isinstance(args, dict) else {})


def _text_block(part: TextPart) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": part.text}
    if part.cache:
        block["cache_control"] = {"type": "ephemeral"}
    return block


def _blocks(msg: Message) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for part in msg.parts:
        if isinstance(part, TextPart) and part.text:
            blocks.append(_text_block(part))
        elif isinstance(part, ThinkingPart):
            blocks.append({"type": "redacted_thinking", "data": part.text} if part.redacted
                          else {"type": "thinking", "thinking": part.text,
                                "signature": part.signature or ""})
        elif isinstance(part, ToolCall):
            blocks.append({"type": "tool_use", "id": part.id, "name": part.name,
                           "input": part.arguments})
        elif isinstance(part, ToolResult):
            blocks.append({"type": "tool_result", "tool_use_id": part.call_id,
                           "content": part.content, "is_error": part.is_error})
    return blocks


def _messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Anthropic alternates user and assistant turns: tool results are user turns, and
    consecutive turns of one role are merged."""
    out: list[dict[str, Any]] = []
    for msg in messages:
        role = "assistant" if msg.role == "assistant" else "user"
        blocks = _blocks(msg)
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return out


def _tool_choice(choice: str) -> dict[str, Any]:
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if choice == "auto":
        return {"type": "auto"}
    return {"type": "tool", "name": choice}


def _finish(reason: str | None, has_calls: bool) -> FinishReason:
    if has_calls or reason == "tool_use":
        return "tool_calls"
    if reason == "max_tokens":
        return "length"
    if reason == "refusal":
        return "content_filter"
    return "stop"
