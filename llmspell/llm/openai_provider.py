"""OpenAI through the official `openai` SDK: the Responses API and Chat Completions.

Chat Completions also serves every OpenAI-compatible server (vLLM, Ollama, llama.cpp) through
`base_url`. The SDK's own retries are off: `llmspell.llm.retry` retries, honouring Retry-After,
so that retries are counted, logged and shared with the rate limiter.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import openai
from openai.types.chat import ChatCompletionChunk

from llmspell.llm.errors import (
    LLMError,
    LLMServerError,
    MalformedResponse,
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
    ToolCall,
    ToolResult,
    Usage,
)

Api = Literal["responses", "chat"]


def parse_arguments(raw: str | None, call_id: str, name: str) -> ToolCall:
    """A tool call from the model's argument text; bad JSON is kept for the agent to report."""
    text = raw or "{}"
    try:
        args = json.loads(text)
    except json.JSONDecodeError:
        return ToolCall(id=call_id, name=name, arguments={}, invalid_arguments=text)
    if not isinstance(args, dict):
        return ToolCall(id=call_id, name=name, arguments={}, invalid_arguments=text)
    return ToolCall(id=call_id, name=name, arguments=args)


def map_openai_error(exc: Exception, provider: str, model: str) -> LLMError:
    return map_sdk_error(exc, openai, provider, model)


class OpenAIProvider(SDKClients[openai.AsyncOpenAI]):
    """OpenAI's models (api="responses", the default) or any compatible server (api="chat")."""

    def __init__(
        self,
        *,
        name: str = "openai",
        api: Api = "responses",
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 60.0,
        http: HttpKind = "auto",
        client: openai.AsyncOpenAI | None = None,
    ) -> None:
        self.name = name
        self.api: Api = api
        self._use_sdk(openai, openai.AsyncOpenAI, api_key=api_key, base_url=base_url,
                      timeout=timeout, http=http, given=client)

    def count_tokens(self, messages: list[Message], model: str) -> int:
        return count_tokens(messages, model)

    async def complete(self, request: LLMRequest) -> Response:
        started = time.perf_counter()
        try:
            if self.api == "chat":
                raw = await self._chat_post(self._chat_args(request))
                response = self._from_chat(raw, request)
            else:
                client = await self.clients.get()
                raw_r = await client.responses.create(**self._responses_args(request))
                response = self._from_responses(raw_r.model_dump(), request)
        except Exception as exc:
            raise map_openai_error(exc, self.name, request.model) from exc
        return response.model_copy(update={"latency_s": time.perf_counter() - started})

    async def stream(self, request: LLMRequest) -> AsyncIterator[Chunk]:
        started = time.perf_counter()
        try:
            inner = self._stream_chat(request) if self.api == "chat" else \
                self._stream_responses(request)
            async for chunk in stamp_latency(inner, started):
                yield chunk
        except Exception as exc:
            raise map_openai_error(exc, self.name, request.model) from exc

    # -- Chat Completions ---------------------------------------------------------------------

    def _chat_args(self, request: LLMRequest, *, stream: bool = False) -> dict[str, Any]:
        args: dict[str, Any] = {
            "model": request.model,
            "messages": [m for msg in request.messages for m in _chat_messages(msg)],
            "max_completion_tokens": request.max_tokens,
        }
        if request.tools:
            args["tools"] = [{"type": "function", "function": {
                "name": t.name, "description": t.description, "parameters": t.parameters,
            }} for t in request.tools]
            args["tool_choice"] = _chat_tool_choice(request.tool_choice)
        if request.output_schema is not None:
            s = request.output_schema
            args["response_format"] = {"type": "json_schema", "json_schema": {
                "name": s.name, "schema": s.schema_, "strict": s.strict}}
        if request.temperature is not None:
            args["temperature"] = request.temperature
        if request.timeout is not None:
            args["timeout"] = request.timeout
        if stream:
            args["stream"] = True
            args["stream_options"] = {"include_usage": True}
        return args

    def _from_chat(self, raw: Any, request: LLMRequest) -> Response:
        """A response from the JSON body of a chat completion (as the SDK decoded it)."""
        choices = raw.get("choices") if isinstance(raw, dict) else None
        if not choices or not isinstance(choices[0], dict):
            raise MalformedResponse(self.name, request.model, "response has no choices")
        choice = choices[0]
        message = choice.get("message")
        if not isinstance(message, dict):
            raise MalformedResponse(self.name, request.model, "choice has no message")
        calls = [parse_arguments(_field(c, "function", "arguments"), str(c.get("id") or ""),
                                 str(_field(c, "function", "name") or ""))
                 for c in message.get("tool_calls") or [] if isinstance(c, dict)]
        return Response(
            message=Message.assistant(message.get("content") or "", calls),
            usage=_chat_usage(raw.get("usage")),
            finish_reason=_finish(choice.get("finish_reason"), bool(calls)),
            model=raw.get("model") or request.model,
            provider=self.name,
        )

    async def _chat_post(self, args: dict[str, Any]) -> Any:
        """`chat.completions.create` without the SDK's parameter transform. Our arguments are
        already the wire form (plain JSON built by `_chat_args`), which the transform walks
        type by type and returns unchanged, at about 1 ms of CPU per call: on a busy host that
        is a tenth of a 50 ms fan-out step. A whole response comes back as its JSON body
        (`cast_to=object`), read by `_from_chat`: building the SDK's typed model of it, only to
        read four fields, was a tenth of an agent host's CPU. The request itself is still the
        SDK's: its HTTP client, auth, headers, timeout, error mapping and stream types."""
        body = dict(args)
        options: dict[str, Any] = {"security": {"bearer_auth": True}}
        if "timeout" in body:
            options["timeout"] = body.pop("timeout")
        stream = bool(body.get("stream"))
        client = await self.clients.get()
        return await client.post(
            "/chat/completions", body=body, options=options,  # type: ignore[call-overload]
            cast_to=object, stream=stream,
            stream_cls=openai.AsyncStream[ChatCompletionChunk])

    async def _stream_chat(self, request: LLMRequest) -> AsyncIterator[Chunk]:
        stream = await self._chat_post(self._chat_args(request, stream=True))
        text: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        finish: str | None = None
        usage = Usage()
        model = request.model
        async for event in stream:
            model = event.model or model
            if event.usage is not None:
                usage = _chat_usage(event.usage)
            for choice in event.choices:
                delta = choice.delta
                if delta.content:
                    text.append(delta.content)
                    yield Chunk(text=delta.content)
                for tc in delta.tool_calls or []:
                    slot = calls.setdefault(tc.index, {"id": "", "name": "", "args": ""})
                    slot["id"] = tc.id or slot["id"]
                    if tc.function is not None:
                        slot["name"] = tc.function.name or slot["name"]
                        slot["args"] += tc.function.arguments or ""
                finish = choice.finish_reason or finish
        if finish is None:
            raise StreamInterrupted(self.name, request.model,
                                    "stream ended before its finish reason")
        tool_calls = [parse_arguments(c["args"], c["id"], c["name"])
                      for _, c in sorted(calls.items())]
        for call in tool_calls:
            yield Chunk(tool_call=call)
        yield Chunk(response=Response(
            message=Message.assistant("".join(text), tool_calls), usage=usage,
            finish_reason=_finish(finish, bool(tool_calls)), model=model, provider=self.name,
        ))

    # -- Responses API ------------------------------------------------------------------------

    def _responses_args(self, request: LLMRequest, *, stream: bool = False) -> dict[str, Any]:
        system = "\n\n".join(m.text for m in request.messages if m.role == "system")
        args: dict[str, Any] = {
            "model": request.model,
            "input": [i for m in request.messages if m.role != "system"
                      for i in _responses_items(m)],
            "max_output_tokens": request.max_tokens,
            "store": False,
        }
        if system:
            args["instructions"] = system
        if request.tools:
            args["tools"] = [{"type": "function", "name": t.name, "description": t.description,
                              "parameters": t.parameters, "strict": False}
                             for t in request.tools]
            args["tool_choice"] = _responses_tool_choice(request.tool_choice)
        if request.output_schema is not None:
            s = request.output_schema
            args["text"] = {"format": {"type": "json_schema", "name": s.name,
                                       "schema": s.schema_, "strict": s.strict}}
        if request.temperature is not None:
            args["temperature"] = request.temperature
        if request.timeout is not None:
            args["timeout"] = request.timeout
        if stream:
            args["stream"] = True
        return args

    def _from_responses(self, raw: dict[str, Any], request: LLMRequest) -> Response:
        text: list[str] = []
        calls: list[ToolCall] = []
        for item in raw.get("output") or []:
            if item.get("type") == "message":
                text += [c.get("text", "") for c in item.get("content") or []
                         if c.get("type") == "output_text"]
            elif item.get("type") == "function_call":
                calls.append(parse_arguments(item.get("arguments"), item.get("call_id") or "",
                                             item.get("name") or ""))
        usage = raw.get("usage") or {}
        details = usage.get("input_tokens_details") or {}
        incomplete = raw.get("status") == "incomplete"
        return Response(
            message=Message.assistant("".join(text), calls),
            usage=Usage(input_tokens=usage.get("input_tokens") or 0,
                        output_tokens=usage.get("output_tokens") or 0,
                        cached_tokens=details.get("cached_tokens") or 0),
            finish_reason="tool_calls" if calls else ("length" if incomplete else "stop"),
            model=raw.get("model") or request.model,
            provider=self.name,
        )

    async def _stream_responses(self, request: LLMRequest) -> AsyncIterator[Chunk]:
        client = await self.clients.get()
        stream = await client.responses.create(**self._responses_args(request, stream=True))
        final: dict[str, Any] | None = None
        async for event in stream:
            kind = getattr(event, "type", "")
            if kind == "response.output_text.delta":
                yield Chunk(text=event.delta)
            elif kind in ("response.completed", "response.incomplete"):
                final = event.response.model_dump()
            elif kind in ("response.failed", "error"):
                raise LLMServerError(self.name, request.model, f"stream failed: {event}")
        if final is None:
            raise StreamInterrupted(self.name, request.model,
                                    "stream ended before response.completed")
        response = self._from_responses(final, request)
        for call in response.tool_calls:
            yield Chunk(tool_call=call)
        yield Chunk(response=response)


def _chat_messages(msg: Message) -> list[dict[str, Any]]:
    if msg.role == "tool":
        return [{"role": "tool", "tool_call_id": p.call_id, "content": p.content}
                for p in msg.parts if isinstance(p, ToolResult)]
    if msg.role == "assistant":
        out: dict[str, Any] = {"role": "assistant", "content": msg.text or None}
        if msg.tool_calls:
            out["tool_calls"] = [{"id": c.id, "type": "function", "function": {
                "name": c.name,
                "arguments": c.invalid_arguments or json.dumps(c.arguments)}}
                for c in msg.tool_calls]
        return [out]
    return [{"role": msg.role, "content": msg.text}]


def _responses_items(msg: Message) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for part in msg.parts:
        if isinstance(part, TextPart) and part.text:
            items.append({"role": msg.role, "content": part.text})
        elif isinstance(part, ToolCall):
            items.append({"type": "function_call", "call_id": part.id, "name": part.name,
                          "arguments": part.invalid_arguments or json.dumps(part.arguments)})
        elif isinstance(part, ToolResult):
            items.append({"type": "function_call_output", "call_id": part.call_id,
                          "output": part.content})
    return items


def _chat_tool_choice(choice: str) -> Any:
    if choice in ("auto", "required", "none"):
        return choice
    return {"type": "function", "function": {"name": choice}}


def _responses_tool_choice(choice: str) -> Any:
    if choice in ("auto", "required", "none"):
        return choice
    return {"type": "function", "name": choice}


def _chat_usage(usage: Any) -> Usage:
    """Usage from a JSON body's `usage` or a stream chunk's typed one."""
    if usage is None:
        return Usage()
    if not isinstance(usage, dict):
        usage = usage.model_dump()
    details = usage.get("prompt_tokens_details") or {}
    return Usage(input_tokens=usage.get("prompt_tokens") or 0,
                 output_tokens=usage.get("completion_tokens") or 0,
                 cached_tokens=details.get("cached_tokens") or 0)


def _field(data: Any, *path: str) -> Any:
    """`data[a][b]...`, or None where a level is missing or not an object."""
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _finish(reason: str | None, has_calls: bool) -> FinishReason:
    if has_calls or reason in ("tool_calls", "function_call"):
        return "tool_calls"
    if reason == "length":
        return "length"
    if reason == "content_filter":
        return "content_filter"
    return "stop"
