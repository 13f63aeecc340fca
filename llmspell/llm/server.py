"""The local LLM server: a wire-compatible stand-in for OpenAI and Anthropic on 127.0.0.1.

Tests, the demo and the benchmarks drive the real `openai` and `anthropic` SDKs over real HTTP
against it, so what is exercised is what runs in production: the SDKs' parsing, retries and
streaming, not a mock of them. It speaks OpenAI Chat Completions (`POST /v1/chat/completions`),
the Responses API (`POST /v1/responses`) and Anthropic Messages (`POST /v1/messages`), streaming
and not, answering from a scenario (see `llmspell.llm.scenario`) or by echoing the last user
message. Faults (429 with Retry-After, 5xx, a cut connection, malformed output) are injected by
rules. Every request is kept in a record (`LocalLLMServer.requests`, `GET /_llmspell/requests`)
so tests can check what clients really sent, and when.

Record mode forwards every request to an upstream server and writes the answers it saw as a
scenario file, turning one real run into an offline, deterministic test.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import math
import re
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import httpx2
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from llmspell.llm.pacing import Pacer
from llmspell.llm.scenario import (
    Api,
    Fault,
    Hit,
    Match,
    Prompt,
    Reply,
    Rule,
    RuleBook,
    Scenario,
    ScenarioError,
    ToolCallReply,
    Usage,
    load_scenario,
)

__all__ = [
    "LocalLLMServer",
    "RecordedRequest",
    "Recorder",
    "ScenarioError",
    "build_app",
]

AuthKind = Literal["bearer", "x-api-key", "none"]
ScenarioSource = Scenario | str | Path | dict[str, Any] | None

_RAW_SEND = "llmspell.raw_send"
_ARRIVED = "llmspell.arrived"  # time.monotonic() when the request reached the server
_SECRET_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "cookie"})
_SSE_HEADERS = {"cache-control": "no-cache"}
_SSE_MEDIA = "text/event-stream"


# --------------------------------------------------------------------------- the request record


@dataclass
class RecordedRequest:
    """One request as the server received it. `monotonic` is when it arrived (its latency counts
    from then), comparable between requests of one process (the gap between a 429 and its
    retry); `wall_time` is the same moment, comparable across processes."""

    seq: int
    monotonic: float
    wall_time: float
    method: str
    path: str
    api: Api | None
    model: str | None
    stream: bool
    auth: AuthKind
    headers: dict[str, str]
    body_sha256: str
    body: Any
    key_sha256: str | None = None  # the credential's hash: which key came, never the key
    rule: str | None = None
    fault: str | None = None
    status: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RequestLog:
    """The record of requests, the last `keep` of them (None: all; a long-running server serving
    millions would otherwise hold every conversation it was sent). Locked: the server appends
    in its thread, tests read in theirs."""

    MODEL_NAMES = 1000  # the most model names kept for /v1/models

    def __init__(self, keep: int | None = None) -> None:
        if keep is not None and keep < 0:
            raise ValueError(f"keep must be 0 or more, or None for all; got {keep}")
        self._lock = threading.Lock()
        self._items: deque[RecordedRequest] = deque(maxlen=keep)
        self._seq = itertools.count(1)
        self._added = 0
        self._models: dict[str, None] = {}

    def add(self, request: Request, raw: bytes, body: Any, api: Api | None) -> RecordedRequest:
        now, wall = time.monotonic(), time.time()
        mono = request.scope.get(_ARRIVED, now)  # when it arrived, as its latency counts
        wall -= now - mono
        data = body if isinstance(body, dict) else {}
        model = data.get("model")
        item = RecordedRequest(
            seq=next(self._seq), monotonic=mono, wall_time=wall, method=request.method,
            path=request.url.path, api=api, model=model if isinstance(model, str) else None,
            stream=data.get("stream") is True, auth=_auth_kind(request),
            headers=_redacted(request), body_sha256=hashlib.sha256(raw).hexdigest(), body=body,
            key_sha256=_key_hash(request))
        with self._lock:
            self._items.append(item)
            self._added += 1
            if item.model is not None and len(self._models) < self.MODEL_NAMES:
                self._models[item.model] = None
        return item

    def all(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._items)

    @property
    def dropped(self) -> int:
        """How many requests the record no longer holds (past `keep`, or cleared)."""
        with self._lock:
            return self._added - len(self._items)

    def models(self) -> list[str]:
        """The model names requests asked for, first seen first."""
        with self._lock:
            return list(self._models)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def _auth_kind(request: Request) -> AuthKind:
    """How the client authenticated; Anthropic's x-api-key wins when both came, as there."""
    if request.headers.get("x-api-key"):
        return "x-api-key"
    if request.headers.get("authorization", "").lower().startswith("bearer "):
        return "bearer"
    return "none"


def _key_hash(request: Request) -> str | None:
    key = request.headers.get("x-api-key") or request.headers.get("authorization", "")
    key = key.removeprefix("Bearer ").removeprefix("bearer ")
    return hashlib.sha256(key.encode()).hexdigest() if key else None


def _redacted(request: Request) -> dict[str, str]:
    """Headers safe to keep and show: the test keys are dummies, but a recording session
    forwards real ones, and those must never reach the record."""
    return {k: ("<redacted>" if k in _SECRET_HEADERS else v) for k, v in request.headers.items()}


# --------------------------------------------------------------------------- reading requests


@dataclass(frozen=True)
class ParsedRequest:
    """A request reduced to what answering it needs, whichever API it came through."""

    api: Api
    body: dict[str, Any]
    prompt: Prompt
    stream: bool
    include_usage: bool = False
    schema: dict[str, Any] | None = None
    forced_tool: str | None = None


def parse_request(api: Api, body: dict[str, Any]) -> ParsedRequest:
    parse = {"chat": _parse_chat, "responses": _parse_responses, "messages": _parse_messages}[api]
    return parse(body)


def _parse_chat(body: dict[str, Any]) -> ParsedRequest:
    messages = _dicts(body.get("messages"))
    users = [_text_of(m.get("content")) for m in messages if m.get("role") == "user"]
    tools = tuple(_name(t.get("function")) for t in _dicts(body.get("tools")))
    fmt = _dict(body.get("response_format"))
    structured = fmt.get("type") in ("json_schema", "json_object")
    is_schema = fmt.get("type") == "json_schema"
    schema = _dict(fmt.get("json_schema")).get("schema") if is_schema else None
    options = _dict(body.get("stream_options"))
    prompt = Prompt(api="chat", model=str(body.get("model", "")),
                    last_user=next((u for u in reversed(users) if u), ""), tools=tools,
                    after_tool_result=bool(messages) and messages[-1].get("role") in ("tool",
                                                                                      "function"),
                    structured=structured)
    return ParsedRequest("chat", body, prompt, body.get("stream") is True,
                         include_usage=options.get("include_usage") is True,
                         schema=schema if isinstance(schema, dict) else None)


def _parse_responses(body: dict[str, Any]) -> ParsedRequest:
    raw_input = body.get("input")
    items = [{"role": "user", "content": raw_input}] if isinstance(raw_input, str) else _dicts(
        raw_input)
    users = [_text_of(i.get("content")) for i in items
             if i.get("role") == "user" and i.get("type", "message") == "message"]
    tools = tuple(str(t.get("name") or t.get("type") or "") for t in _dicts(body.get("tools")))
    fmt = _dict(_dict(body.get("text")).get("format"))
    schema = fmt.get("schema") if fmt.get("type") == "json_schema" else None
    prompt = Prompt(api="responses", model=str(body.get("model", "")),
                    last_user=next((u for u in reversed(users) if u), ""), tools=tools,
                    after_tool_result=bool(items) and items[-1].get("type") in (
                        "function_call_output", "custom_tool_call_output"),
                    structured=fmt.get("type") in ("json_schema", "json_object"))
    return ParsedRequest("responses", body, prompt, body.get("stream") is True,
                         schema=schema if isinstance(schema, dict) else None)


def _parse_messages(body: dict[str, Any]) -> ParsedRequest:
    messages = _dicts(body.get("messages"))
    users = [_text_of(m.get("content")) for m in messages if m.get("role") == "user"]
    tools = _dicts(body.get("tools"))
    choice = _dict(body.get("tool_choice"))
    forced = choice.get("name") if choice.get("type") == "tool" else None
    schema = next((t.get("input_schema") for t in tools if t.get("name") == forced), None)
    fmt = _dict(_dict(body.get("output_config")).get("format"))
    if fmt.get("type") == "json_schema":
        schema = fmt.get("schema")
    last = messages[-1] if messages else {}
    prompt = Prompt(api="messages", model=str(body.get("model", "")),
                    last_user=next((u for u in reversed(users) if u), ""),
                    tools=tuple(str(t.get("name", "")) for t in tools),
                    after_tool_result=last.get("role") == "user" and any(
                        b.get("type") == "tool_result" for b in _dicts(last.get("content"))),
                    structured=forced is not None or fmt.get("type") == "json_schema")
    return ParsedRequest("messages", body, prompt, body.get("stream") is True,
                         schema=schema if isinstance(schema, dict) else None,
                         forced_tool=forced if isinstance(forced, str) else None)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _name(function: Any) -> str:
    return str(function.get("name", "")) if isinstance(function, dict) else ""


def _text_of(content: Any) -> str:
    """The text of a message: a string, or the text parts of a list (tool results have none,
    so a tool-result turn does not hide the user's question)."""
    if isinstance(content, str):
        return content
    parts = [p.get("text") for p in _dicts(content)
             if p.get("type", "text") in ("text", "input_text", "output_text")]
    return "\n".join(p for p in parts if isinstance(p, str))


_NOT_TEXT_KEYS = frozenset({"role", "type", "id", "call_id", "tool_use_id", "cache_control",
                            "status", "media_type", "signature"})


def estimate_input_tokens(body: dict[str, Any]) -> int:
    """A deterministic stand-in for the provider's count: characters/4 of the conversation."""
    parts = [body.get(k) for k in ("system", "instructions", "messages", "input")]
    return max(1, math.ceil(sum(_chars(p) for p in parts) / 4))


def _chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_chars(v) for v in value)
    if isinstance(value, dict):
        return sum(_chars(v) for k, v in value.items() if k not in _NOT_TEXT_KEYS)
    return 0


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True)
class Call:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI carries it


@dataclass(frozen=True)
class Answer:
    """What the model says, before it is dressed in one API's wire format."""

    model: str
    text: str | None
    calls: list[Call]
    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0
    cache_creation_tokens: int = 0


class Ids:
    """Ids counted per server, so two runs of one test see the same ids."""

    def __init__(self) -> None:
        self._count = itertools.count(1)

    def new(self, prefix: str) -> str:
        return f"{prefix}{next(self._count):012d}"


# JSON mode with no schema (response_format json_object) still wants an object.
_ECHO_SCHEMA = {"type": "object", "properties": {"echo": {"type": "string"}}}


def build_answer(req: ParsedRequest, reply: Reply | None, ids: Ids) -> Answer:
    """The rule's reply, or the echo of the last user message; a JSON value becomes the text,
    or the forced tool's input on Anthropic (how structured output works there)."""
    text: str | None
    prefix = "toolu_" if req.api == "messages" else "call_"
    calls = [_call(c, ids, prefix) for c in reply.tool_calls] if reply else []
    value = reply.json_value if reply else None
    if reply is None and req.prompt.structured:
        value = example_for(req.schema or _ECHO_SCHEMA, f"echo: {req.prompt.last_user}")
    if value is not None and req.forced_tool:
        text = None
        calls.insert(0, Call(ids.new("toolu_"), req.forced_tool, json.dumps(value)))
    elif value is not None:
        text = json.dumps(value)
    else:
        text = reply.text if reply else f"echo: {req.prompt.last_user}"
    usage = (reply.usage if reply else None) or Usage()
    spoken = (text or "") + "".join(c.name + c.arguments for c in calls)
    return Answer(
        model=req.prompt.model, text=text, calls=calls,
        input_tokens=_given(usage.input_tokens, estimate_input_tokens(req.body)),
        output_tokens=_given(usage.output_tokens, max(1, math.ceil(len(spoken) / 4))),
        cached_tokens=usage.cached_tokens, cache_creation_tokens=usage.cache_creation_tokens)


def _given(value: int | None, default: int) -> int:
    return default if value is None else value


def _call(spec: ToolCallReply, ids: Ids, prefix: str) -> Call:
    args = spec.arguments if isinstance(spec.arguments, str) else json.dumps(spec.arguments)
    return Call(spec.id or ids.new(prefix), spec.name, args)


def example_for(schema: Any, text: str, root: Any = None, depth: int = 0) -> Any:
    """A value that fits a JSON schema, so an unscripted structured request still gets a
    parseable answer: strings say `text`, numbers are 0, objects have every property."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 12:
        return text
    if isinstance(schema.get("$ref"), str):
        return example_for(_resolve(root, schema["$ref"]), text, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = [o for o in schema.get(key) or [] if o.get("type") != "null"]
        if options:
            return example_for(options[0], text, root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        props = schema.get("properties") or {}
        return {k: example_for(v, text, root, depth + 1) for k, v in props.items()}
    if kind == "array":
        item = example_for(schema.get("items"), text, root, depth + 1)
        return [item] * int(schema.get("minItems") or 0)
    simple = {"integer": 0, "number": 0, "boolean": False, "null": None}
    return simple.get(kind, text) if isinstance(kind, str) else text


def _resolve(root: Any, ref: str) -> Any:
    node = root
    for part in ref.removeprefix("#/").split("/"):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _words(text: str) -> list[str]:
    """Stream text a word at a time, spaces kept, so the joined deltas are the text."""
    return re.findall(r"\S+\s*|\s+", text)


def _pieces(text: str, size: int = 12) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


# --------------------------------------------------------------------------- OpenAI chat


def _chat_usage(a: Answer) -> dict[str, Any]:
    return {
        "prompt_tokens": a.input_tokens, "completion_tokens": a.output_tokens,
        "total_tokens": a.input_tokens + a.output_tokens,
        "prompt_tokens_details": {"cached_tokens": a.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0,
                                      "rejected_prediction_tokens": 0},
    }


def _chat_finish(a: Answer) -> str:
    return "tool_calls" if a.calls else "stop"


def chat_completion(a: Answer, rid: str, created: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": a.text, "refusal": None}
    if a.calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in a.calls]
    return {"id": rid, "object": "chat.completion", "created": created, "model": a.model,
            "system_fingerprint": None, "service_tier": "default",
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": _chat_finish(a)}],
            "usage": _chat_usage(a)}


def chat_chunks(a: Answer, rid: str, created: int, include_usage: bool) -> list[dict[str, Any]]:
    """The chat.completion.chunk sequence; with include_usage every chunk says usage: null and
    a last chunk with no choices carries it, as OpenAI does."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": rid, "object": "chat.completion.chunk", "created": created, "model": a.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if include_usage:
            out["usage"] = None
        return out

    chunks = [chunk({"role": "assistant", "content": "" if a.text is not None else None})]
    chunks += [chunk({"content": w}) for w in _words(a.text or "")]
    for i, c in enumerate(a.calls):
        chunks.append(chunk({"tool_calls": [{"index": i, "id": c.id, "type": "function",
                                             "function": {"name": c.name, "arguments": ""}}]}))
        chunks += [chunk({"tool_calls": [{"index": i, "function": {"arguments": p}}]})
                   for p in _pieces(c.arguments)]
    chunks.append(chunk({}, _chat_finish(a)))
    if include_usage:
        chunks.append({"id": rid, "object": "chat.completion.chunk", "created": created,
                       "model": a.model, "system_fingerprint": None, "choices": [],
                       "usage": _chat_usage(a)})
    return chunks


# --------------------------------------------------------------------------- OpenAI responses


def _responses_usage(a: Answer) -> dict[str, Any]:
    return {"input_tokens": a.input_tokens,
            "input_tokens_details": {"cached_tokens": a.cached_tokens},
            "output_tokens": a.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": a.input_tokens + a.output_tokens}


def _output_items(a: Answer, ids: Ids) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if a.text is not None:
        items.append({"type": "message", "id": ids.new("msg_"), "status": "completed",
                      "role": "assistant", "content": [_output_text(a.text)]})
    items += [{"type": "function_call", "id": ids.new("fc_"), "call_id": c.id, "name": c.name,
               "arguments": c.arguments, "status": "completed"} for c in a.calls]
    return items


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _response_object(a: Answer, body: dict[str, Any], rid: str, created: int,
                     items: list[dict[str, Any]], done: bool) -> dict[str, Any]:
    return {
        "id": rid, "object": "response", "created_at": created,
        "status": "completed" if done else "in_progress", "error": None,
        "incomplete_details": None, "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"), "model": a.model,
        "output": items, "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None}, "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0), "truncation": "disabled",
        "usage": _responses_usage(a) if done else None, "metadata": body.get("metadata") or {},
    }


def response_events(a: Answer, body: dict[str, Any], rid: str, created: int,
                    items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Responses API stream, every event the SDK's accumulator expects, in its order."""
    events: list[dict[str, Any]] = []

    def emit(kind: str, **data: Any) -> None:
        events.append({"type": kind, "sequence_number": len(events), **data})

    start = _response_object(a, body, rid, created, [], done=False)
    emit("response.created", response=start)
    emit("response.in_progress", response=start)
    for index, item in enumerate(items):
        if item["type"] == "message":
            _message_item_events(emit, index, item)
        else:
            _function_item_events(emit, index, item)
    emit("response.completed", response=_response_object(a, body, rid, created, items, True))
    return events


def _message_item_events(emit: Callable[..., None], index: int, item: dict[str, Any]) -> None:
    text = item["content"][0]["text"]
    where = {"item_id": item["id"], "output_index": index, "content_index": 0}
    emit("response.output_item.added", output_index=index,
         item={**item, "status": "in_progress", "content": []})
    emit("response.content_part.added", **where, part=_output_text(""))
    for word in _words(text):
        emit("response.output_text.delta", **where, delta=word, logprobs=[])
    emit("response.output_text.done", **where, text=text, logprobs=[])
    emit("response.content_part.done", **where, part=_output_text(text))
    emit("response.output_item.done", output_index=index, item=item)


def _function_item_events(emit: Callable[..., None], index: int, item: dict[str, Any]) -> None:
    emit("response.output_item.added", output_index=index,
         item={**item, "arguments": "", "status": "in_progress"})
    for piece in _pieces(item["arguments"]):
        emit("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
             delta=piece)
    emit("response.function_call_arguments.done", item_id=item["id"], output_index=index,
         name=item["name"], arguments=item["arguments"])
    emit("response.output_item.done", output_index=index, item=item)


# --------------------------------------------------------------------------- Anthropic messages


def _messages_usage(a: Answer, output_tokens: int | None = None) -> dict[str, Any]:
    return {"input_tokens": a.input_tokens,
            "output_tokens": a.output_tokens if output_tokens is None else output_tokens,
            "cache_creation_input_tokens": a.cache_creation_tokens,
            "cache_read_input_tokens": a.cached_tokens, "service_tier": "standard"}


def _blocks(a: Answer) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if a.text or (a.text is not None and not a.calls):
        blocks.append({"type": "text", "text": a.text})
    blocks += [{"type": "tool_use", "id": c.id, "name": c.name, "input": _object(c.arguments)}
               for c in a.calls]
    return blocks


def _object(arguments: str) -> dict[str, Any]:
    """Anthropic carries tool input as an object; a raw argument string that is not one
    (a scenario testing bad arguments) is sent as an empty object."""
    with contextlib.suppress(ValueError):
        value = json.loads(arguments)
        if isinstance(value, dict):
            return value
    return {}


def _stop_reason(a: Answer) -> str:
    return "tool_use" if a.calls else "end_turn"


def anthropic_message(a: Answer, mid: str) -> dict[str, Any]:
    return {"id": mid, "type": "message", "role": "assistant", "model": a.model,
            "content": _blocks(a), "stop_reason": _stop_reason(a), "stop_sequence": None,
            "usage": _messages_usage(a)}


def message_events(a: Answer, mid: str) -> list[dict[str, Any]]:
    start = {**anthropic_message(a, mid), "content": [], "stop_reason": None,
             "usage": _messages_usage(a, output_tokens=1)}
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start},
                                    {"type": "ping"}]
    for index, block in enumerate(_blocks(a)):
        events += _block_events(index, block)
    events.append({"type": "message_delta",
                   "delta": {"stop_reason": _stop_reason(a), "stop_sequence": None},
                   "usage": _messages_usage(a)})
    events.append({"type": "message_stop"})
    return events


def _block_events(index: int, block: dict[str, Any]) -> list[dict[str, Any]]:
    first: dict[str, Any]
    if block["type"] == "text":
        first = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": w} for w in _words(block["text"])]
    else:
        first = {**block, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": p}
                  for p in _pieces(json.dumps(block["input"]))]
    return [{"type": "content_block_start", "index": index, "content_block": first},
            *({"type": "content_block_delta", "index": index, "delta": d} for d in deltas),
            {"type": "content_block_stop", "index": index}]


# --------------------------------------------------------------------------- framing and errors


def sse_frame(api: Api, event: dict[str, Any] | str) -> bytes:
    """OpenAI chat frames are bare `data:` lines ending in [DONE]; the Responses API and
    Anthropic name each event, and Anthropic's SDK skips frames with no name."""
    if isinstance(event, str):
        return f"data: {event}\n\n".encode()
    data = json.dumps(event, separators=(",", ":"))
    if api == "chat":
        return f"data: {data}\n\n".encode()
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


def _broken_frame(api: Api) -> bytes:
    if api == "chat":
        return b'data: {"id": "chatcmpl-broken", "choices": [{"delta": {"content": "x\n\n'
    kind = "content_block_delta" if api == "messages" else "response.output_text.delta"
    return f'event: {kind}\ndata: {{"type": "{kind}", "index": 0, "delta": \n\n'.encode()


_OPENAI_ERRORS = {400: ("invalid_request_error", None),
                  401: ("invalid_request_error", "invalid_api_key"),
                  429: ("requests", "rate_limit_exceeded")}
_ANTHROPIC_ERRORS = {400: "invalid_request_error", 401: "authentication_error",
                     404: "not_found_error", 429: "rate_limit_error", 529: "overloaded_error"}


def error_body(api: Api | None, status: int, message: str) -> dict[str, Any]:
    """The error JSON each provider sends, so the SDKs build their own error types from it."""
    if api == "messages":
        return {"type": "error",
                "error": {"type": _ANTHROPIC_ERRORS.get(status, "api_error"), "message": message}}
    kind, code = _OPENAI_ERRORS.get(status, ("server_error", None))
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _fault_message(fault: Fault) -> str:
    default = {"rate_limit": "Rate limit reached (injected by the local LLM server).",
               "server_error": "The server had an error (injected by the local LLM server)."}
    return fault.message or default.get(fault.kind, "injected fault")


def _error_response(api: Api | None, status: int, message: str,
                    headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(api, status, message), status_code=status, headers=headers)


def _retry_headers(seconds: float) -> dict[str, str]:
    """Retry-After in seconds (fractions allowed, as both SDKs parse them) and the more precise
    retry-after-ms that OpenAI also sends; both say the same wait."""
    return {"retry-after": f"{seconds:g}", "retry-after-ms": f"{seconds * 1000:g}"}


async def cut_connection(scope: Scope) -> None:
    """Close the TCP connection under a request, for faults that must break HTTP itself.

    ASGI cannot say "hang up", so this reaches uvicorn's transport through the `send` the
    server gave the app (kept in the scope by `_KeepRawSend`), then waits until uvicorn has
    noticed, so it does not answer with a 500 of its own.
    """
    cycle = getattr(scope.get(_RAW_SEND), "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        raise RuntimeError("cannot reach the connection to drop it (not served by uvicorn)")
    transport.close()
    for _ in range(200):
        if getattr(cycle, "disconnected", True):
            return
        await asyncio.sleep(0.001)


class _KeepRawSend:
    """Keeps uvicorn's own `send` in the scope: Starlette's middleware wraps it, and only the
    original leads to the connection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope = {**scope, _RAW_SEND: send, _ARRIVED: time.monotonic()}
        await self.app(scope, receive, send)


# --------------------------------------------------------------------------- record mode


class Recorder:
    """Forwards requests to an upstream server and keeps each answer as a rule.

    Rules are keyed on the API, the last user message (exactly) and whether the turn follows a
    tool result. Each fires once, in the order seen, except the last of each key, which keeps
    answering; so a replay of the same run gets the same answers in the same order.
    """

    def __init__(self, path: str | Path, upstream: str) -> None:
        self.path = Path(path)
        self.upstream = upstream.rstrip("/")
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._client: httpx2.AsyncClient | None = None

    def url_for(self, path: str, query: str) -> str:
        base = self.upstream
        if base.endswith("/v1") and path.startswith("/v1/"):
            base = base[: -len("/v1")]
        return f"{base}{path}" + (f"?{query}" if query else "")

    def scenario(self) -> Scenario:
        with self._lock:
            rules = list(self._rules)
        keys = [_rule_key(r) for r in rules]
        final = [r.model_copy(update={"times": 1 if keys[i] in keys[i + 1:] else None})
                 for i, r in enumerate(rules)]
        return Scenario(description=f"recorded from {self.upstream}", rules=final)

    def keep(self, req: ParsedRequest, reply: Reply) -> None:
        prompt = req.prompt
        with self._lock:
            rule = Rule(name=f"recorded[{len(self._rules)}]", reply=reply,
                        match=Match(equals=prompt.last_user, api=[prompt.api],
                                    after_tool_result=prompt.after_tool_result))
            self._rules.append(rule)
        self.scenario().dump(self.path)

    async def forward(self, request: Request, raw: bytes, req: ParsedRequest,
                      record: RecordedRequest) -> Response:
        if self._client is None:
            self._client = httpx2.AsyncClient(timeout=httpx2.Timeout(600.0, connect=10.0))
        upstream = self._client.build_request(
            request.method, self.url_for(request.url.path, request.url.query),
            content=raw, headers=_forward_headers(request))
        try:
            response = await self._client.send(upstream, stream=True)
        except httpx2.HTTPError as exc:
            record.status = 502
            return _error_response(req.api, 502, f"upstream {upstream.url} failed: {exc!r}")
        record.status = response.status_code
        headers = _relay_headers(response)
        if response.status_code != 200 or not req.stream:
            content = await response.aread()
            await response.aclose()
            if response.status_code == 200:
                self._keep_json(req, content)
            return Response(content, status_code=response.status_code, headers=headers)
        return StreamingResponse(self._relay(req, response), status_code=200, headers=headers)

    async def _relay(self, req: ParsedRequest, response: httpx2.Response) -> AsyncIterator[bytes]:
        seen = bytearray()
        try:
            async for chunk in response.aiter_bytes():
                seen += chunk
                yield chunk
        finally:
            await response.aclose()
        reply = reply_from_sse(req.api, bytes(seen))
        if reply is not None:
            self.keep(req, reply)

    def _keep_json(self, req: ParsedRequest, content: bytes) -> None:
        with contextlib.suppress(ValueError):
            reply = reply_from_json(req.api, json.loads(content))
            if reply is not None:
                self.keep(req, reply)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _rule_key(rule: Rule) -> tuple[Any, ...]:
    return (rule.match.equals, tuple(rule.match.api or ()), rule.match.after_tool_result)


_HOP_HEADERS = frozenset({"host", "content-length", "connection", "keep-alive", "accept-encoding",
                          "transfer-encoding", "content-encoding", "date", "server"})


def _forward_headers(request: Request) -> dict[str, str]:
    headers = {k: v for k, v in request.headers.items() if k not in _HOP_HEADERS}
    headers["accept-encoding"] = "identity"  # relayed bytes must be what the client can read
    return headers


def _relay_headers(response: httpx2.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower() not in _HOP_HEADERS}


def reply_from_json(api: Api, data: Any) -> Reply | None:
    """The answer inside a non-streamed response of any of the three APIs."""
    if not isinstance(data, dict):
        return None
    if api == "chat":
        choices = _dicts(data.get("choices"))
        message = choices[0].get("message") if choices else None
        if not isinstance(message, dict):
            return None
        calls = [(c.get("id"), _name(c.get("function")), (c.get("function") or {}).get(
            "arguments", "")) for c in _dicts(message.get("tool_calls"))]
        return _reply(message.get("content"), calls, _usage_of(api, data.get("usage")))
    if api == "responses":
        return _reply_from_output(data)
    blocks = _dicts(data.get("content"))
    texts = [b.get("text", "") for b in blocks if b.get("type") == "text"]
    calls = [(b.get("id"), str(b.get("name", "")), b.get("input", {}))
             for b in blocks if b.get("type") == "tool_use"]
    return _reply("".join(texts) if texts else None, calls, _usage_of(api, data.get("usage")))


def _reply_from_output(data: dict[str, Any]) -> Reply | None:
    items = _dicts(data.get("output"))
    texts = [p.get("text", "") for i in items if i.get("type") == "message"
             for p in _dicts(i.get("content")) if p.get("type") == "output_text"]
    calls = [(i.get("call_id"), str(i.get("name", "")), i.get("arguments", ""))
             for i in items if i.get("type") == "function_call"]
    return _reply("".join(texts) if texts else None, calls,
                  _usage_of("responses", data.get("usage")))


def reply_from_sse(api: Api, raw: bytes) -> Reply | None:
    """The answer a streamed response added up to, read back from its SSE frames."""
    events = [e for _, e in parse_sse(raw.decode("utf-8", "replace"))]
    if api == "responses":
        done = [e for e in events if e.get("type") == "response.completed"]
        response = done[-1].get("response") if done else None
        return _reply_from_output(response) if isinstance(response, dict) else None
    return _reply_from_chat_stream(events) if api == "chat" else _reply_from_message_stream(
        events)


def parse_sse(text: str) -> list[tuple[str | None, dict[str, Any]]]:
    """(event name, JSON data) of each frame; [DONE] and frames that are not JSON objects are
    left out."""
    out: list[tuple[str | None, dict[str, Any]]] = []
    for frame in re.split(r"\r?\n\r?\n", text):
        name, data = None, []
        for line in frame.splitlines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        with contextlib.suppress(ValueError):
            value = json.loads("\n".join(data)) if data else None
            if isinstance(value, dict):
                out.append((name, value))
    return out


def _reply_from_chat_stream(events: list[dict[str, Any]]) -> Reply | None:
    text: list[str] = []
    calls: dict[int, list[Any]] = {}
    usage = None
    for event in events:
        usage = event.get("usage") or usage
        for choice in _dicts(event.get("choices")):
            delta = choice.get("delta") or {}
            text.append(delta.get("content") or "")
            for tc in _dicts(delta.get("tool_calls")):
                slot = calls.setdefault(int(tc.get("index", 0)), [None, "", ""])
                slot[0] = tc.get("id") or slot[0]
                function = tc.get("function") or {}
                slot[1] += function.get("name") or ""
                slot[2] += function.get("arguments") or ""
    has_text = any(text) or not calls
    return _reply("".join(text) if has_text else None,
                  [tuple(calls[i]) for i in sorted(calls)], _usage_of("chat", usage))


def _reply_from_message_stream(events: list[dict[str, Any]]) -> Reply | None:
    blocks: dict[int, dict[str, Any]] = {}
    usage: dict[str, Any] = {}
    for event in events:
        kind = event.get("type")
        if kind == "message_start":
            usage.update((event.get("message") or {}).get("usage") or {})
        elif kind == "content_block_start":
            blocks[int(event.get("index", 0))] = {**_dict(event.get("content_block")), "json": ""}
        elif kind == "content_block_delta":
            block = blocks.get(int(event.get("index", 0)), {})
            delta = event.get("delta") or {}
            block["text"] = block.get("text", "") + (delta.get("text") or "")
            block["json"] = block.get("json", "") + (delta.get("partial_json") or "")
        elif kind == "message_delta":
            usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
    ordered = [blocks[i] for i in sorted(blocks)]
    texts = [b.get("text", "") for b in ordered if b.get("type") == "text"]
    calls = [(b.get("id"), str(b.get("name", "")), b.get("json") or "{}")
             for b in ordered if b.get("type") == "tool_use"]
    return _reply("".join(texts) if texts else None, calls, _usage_of("messages", usage))


def _reply(text: Any, calls: list[tuple[Any, ...]], usage: Usage | None) -> Reply:
    specs = [ToolCallReply(id=cid if isinstance(cid, str) else None, name=name or "tool",
                           arguments=_arguments(args)) for cid, name, args in calls]
    if not isinstance(text, str):
        text = None if specs else ""
    return Reply(text=text, tool_calls=specs, usage=usage)


def _arguments(args: Any) -> dict[str, Any] | str:
    """Readable objects in the scenario file; a string only when the model's arguments were
    not a JSON object (replayed as they came)."""
    if isinstance(args, dict):
        return args
    with contextlib.suppress(ValueError, TypeError):
        value = json.loads(args)
        if isinstance(value, dict):
            return value
    return str(args)


def _usage_of(api: Api, usage: Any) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    if api == "chat":
        details = usage.get("prompt_tokens_details") or {}
        return Usage(input_tokens=usage.get("prompt_tokens"),
                     output_tokens=usage.get("completion_tokens"),
                     cached_tokens=details.get("cached_tokens") or 0)
    if api == "responses":
        details = usage.get("input_tokens_details") or {}
        return Usage(input_tokens=usage.get("input_tokens"),
                     output_tokens=usage.get("output_tokens"),
                     cached_tokens=details.get("cached_tokens") or 0)
    return Usage(input_tokens=usage.get("input_tokens"), output_tokens=usage.get("output_tokens"),
                 cached_tokens=usage.get("cache_read_input_tokens") or 0,
                 cache_creation_tokens=usage.get("cache_creation_input_tokens") or 0)


# --------------------------------------------------------------------------- the app


@dataclass
class ServerState:
    """What every handler shares: the rules, the record, and record mode when on."""

    book: RuleBook = field(default_factory=RuleBook)
    log: RequestLog = field(default_factory=RequestLog)
    ids: Ids = field(default_factory=Ids)
    latency_ms: float | None = None  # overrides the scenario's, as the CLI flag does
    recorder: Recorder | None = None
    pacer: Pacer = field(default_factory=Pacer)  # open while the app runs (its lifespan)

    def response_delay(self, hit: Hit | None) -> float:
        if hit is not None and hit.rule.latency_ms is not None:
            return hit.rule.latency_ms / 1000
        base = self.latency_ms if self.latency_ms is not None else self.book.scenario.latency_ms
        return base / 1000

    def chunk_delay(self, hit: Hit | None) -> float:
        if hit is not None and hit.rule.chunk_latency_ms is not None:
            return hit.rule.chunk_latency_ms / 1000
        return self.book.scenario.chunk_latency_ms / 1000


def build_app(state: ServerState) -> ASGIApp:
    """The ASGI app: the three model APIs, /v1/models, and /_llmspell/ for tests and tools."""

    def model_route(path: str, api: Api) -> Route:
        async def endpoint(request: Request) -> Response:
            return await handle(state, request, api)
        return Route(path, endpoint, methods=["POST"])

    async def requests(request: Request) -> Response:
        if request.method == "DELETE":
            state.log.clear()
            return JSONResponse({"cleared": True})
        return JSONResponse([r.to_dict() for r in state.log.all()],
                            headers={"x-llmspell-requests-dropped": str(state.log.dropped)})

    async def scenario(request: Request) -> Response:
        if request.method == "PUT":
            try:
                state.book.replace(Scenario.parse(await request.json(), source="<PUT body>"))
            except (ScenarioError, ValueError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(state.book.scenario.model_dump(by_alias=True, exclude_none=True))

    async def models(request: Request) -> Response:
        return JSONResponse(_models_body(state, "anthropic-version" in request.headers))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.pacer.open()
        try:
            yield
        finally:
            state.pacer.close()
            if state.recorder is not None:
                await state.recorder.aclose()

    app = Starlette(routes=[
        model_route("/v1/chat/completions", "chat"),
        model_route("/v1/responses", "responses"),
        model_route("/v1/messages", "messages"),
        Route("/v1/models", models, methods=["GET"]),
        Route("/_llmspell/requests", requests, methods=["GET", "DELETE"]),
        Route("/_llmspell/scenario", scenario, methods=["GET", "PUT"]),
    ], lifespan=lifespan)
    return _KeepRawSend(app)


def _models_body(state: ServerState, anthropic: bool) -> dict[str, Any]:
    names = dict.fromkeys(["local", *state.log.models()])
    if anthropic:
        data = [{"type": "model", "id": n, "display_name": n, "created_at": "2025-01-01T00:00:00Z"}
                for n in names]
        return {"data": data, "has_more": False, "first_id": data[0]["id"],
                "last_id": data[-1]["id"]}
    return {"object": "list",
            "data": [{"id": n, "object": "model", "created": 0, "owned_by": "llmspell"}
                     for n in names]}


async def handle(state: ServerState, request: Request, api: Api) -> Response:
    """One model request: record it, check it, then forward, inject a fault, or answer."""
    raw = await request.body()
    body: Any = None
    with contextlib.suppress(ValueError):
        body = json.loads(raw)
    record = state.log.add(request, raw, body, api)
    problem = _refusal(record, body)
    if problem is not None:
        record.status = problem[0]
        return _error_response(api, *problem)
    req = parse_request(api, body)
    if state.recorder is not None:
        record.rule = "record"
        return await state.recorder.forward(request, raw, req, record)
    hit = state.book.pick(req.prompt)
    record.rule = hit.name if hit else None
    if hit is not None and hit.rule.fault is not None:
        await _until(state, request, state.response_delay(hit))
        record.fault = hit.rule.fault.kind
        return await _inject(state, request, req, hit.rule.fault, record, hit)
    record.status = 200
    answer = build_answer(req, hit.rule.reply if hit else None, state.ids)
    response = _answer_response(state, request, req, answer, hit)
    await _until(state, request, state.response_delay(hit))
    return response


async def _until(state: ServerState, request: Request, delay: float) -> None:
    """Wait until `delay` after the request arrived: a model's latency is counted from the
    request, as a real API's is, so this server's own work is inside it, not added to it."""
    await state.pacer.until(request.scope.get(_ARRIVED, time.monotonic()) + delay)


def _refusal(record: RecordedRequest, body: Any) -> tuple[int, str] | None:
    """What a real API would refuse before any model ran: no key, no JSON, no model."""
    if record.auth == "none":
        return 401, "No API key provided: send 'Authorization: Bearer <key>' or 'x-api-key'."
    if not isinstance(body, dict):
        return 400, "The request body is not a JSON object."
    if not isinstance(body.get("model"), str) or not body["model"]:
        return 400, "'model' is required."
    return None


def _answer_response(state: ServerState, request: Request, req: ParsedRequest, answer: Answer,
                     hit: Hit | None, *, drop_after: int | None = None,
                     malformed: bool = False) -> Response:
    if not req.stream:
        return JSONResponse(_body(state, req, answer))
    frames = _frames(state, req, answer)
    if malformed:
        frames = [*frames[:1], _broken_frame(req.api)]
    stream = _paced(frames, state.chunk_delay(hit), state.pacer, request.scope, drop_after)
    return StreamingResponse(stream, media_type=_SSE_MEDIA, headers=_SSE_HEADERS)


def _body(state: ServerState, req: ParsedRequest, answer: Answer) -> dict[str, Any]:
    created = int(time.time())
    if req.api == "chat":
        return chat_completion(answer, state.ids.new("chatcmpl-"), created)
    if req.api == "responses":
        return _response_object(answer, req.body, state.ids.new("resp_"), created,
                                _output_items(answer, state.ids), done=True)
    return anthropic_message(answer, state.ids.new("msg_"))


def _frames(state: ServerState, req: ParsedRequest, answer: Answer) -> list[bytes]:
    created = int(time.time())
    events: list[dict[str, Any] | str]
    if req.api == "chat":
        events = [*chat_chunks(answer, state.ids.new("chatcmpl-"), created, req.include_usage),
                  "[DONE]"]
    elif req.api == "responses":
        items = _output_items(answer, state.ids)
        events = [*response_events(answer, req.body, state.ids.new("resp_"), created, items)]
    else:
        events = [*message_events(answer, state.ids.new("msg_"))]
    return [sse_frame(req.api, e) for e in events]


async def _paced(frames: list[bytes], delay: float, pacer: Pacer, scope: Scope,
                 drop_after: int | None) -> AsyncIterator[bytes]:
    """Frames one by one with the chunk latency between them; a drop cuts the connection after
    `drop_after` frames, so the client sees a stream end without its final events."""
    for i, frame in enumerate(frames):
        if drop_after is not None and i >= drop_after:
            await cut_connection(scope)
            return
        if i and delay:
            await pacer.until(time.monotonic() + delay)
        yield frame


async def _inject(state: ServerState, request: Request, req: ParsedRequest, fault: Fault,
                  record: RecordedRequest, hit: Hit) -> Response:
    record.status = fault.http_status if fault.kind in ("rate_limit", "server_error") else 200
    if fault.kind == "rate_limit":
        return _error_response(req.api, fault.http_status, _fault_message(fault),
                               _retry_headers(fault.retry_after))
    if fault.kind == "server_error":
        return _error_response(req.api, fault.http_status, _fault_message(fault))
    echo = build_answer(req, None, state.ids)
    if fault.kind == "malformed":
        if not req.stream:
            return Response(b'{"id": "broken", "choices": [{"message": ', status_code=200,
                            media_type="application/json")
        return _answer_response(state, request, req, echo, hit, malformed=True)
    if not req.stream:
        record.status = None
        await cut_connection(request.scope)
        return Response(b"", status_code=500)  # never sent: the connection is gone
    return _answer_response(state, request, req, echo, hit, drop_after=fault.after_chunks)


# --------------------------------------------------------------------------- running it


class LocalLLMServer:
    """The server on 127.0.0.1 in a background thread, for tests and in-process tools.

        with LocalLLMServer("scenario.yaml") as llm:
            client = OpenAI(base_url=llm.openai_base_url, api_key="test")

    Port 0 (the default) takes a free port. The context manager (also `async with`) returns once
    the server accepts connections and joins its thread on exit. `serve_forever` runs it in the
    calling thread instead, as the `llmspell llm-server` command does. `keep_requests` bounds
    the record of requests to the last that many (None: all, as a test wants).
    """

    def __init__(self, scenario: ScenarioSource = None, *, latency_ms: float | None = None,
                 port: int = 0, host: str = "127.0.0.1", record: str | Path | None = None,
                 upstream: str | None = None, keep_requests: int | None = None) -> None:
        if (record is None) != (upstream is None):
            raise ValueError("record mode needs both record (a file) and upstream (a URL)")
        self.host = host
        self.port = port
        recorder = Recorder(record, upstream) if record is not None and upstream else None
        self.state = ServerState(book=RuleBook(load_scenario(scenario)), latency_ms=latency_ms,
                                 recorder=recorder, log=RequestLog(keep_requests))
        self.app = build_app(self.state)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """Anthropic's SDK adds /v1 itself."""
        return self.url

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.state.log.all()

    @property
    def requests_dropped(self) -> int:
        """How many requests the record no longer holds (past `keep_requests`, or cleared)."""
        return self.state.log.dropped

    def clear_requests(self) -> None:
        self.state.log.clear()

    @property
    def scenario(self) -> Scenario:
        return self.state.book.scenario

    def set_scenario(self, scenario: ScenarioSource) -> None:
        """Swap the rules while running; `times` counts start again."""
        self.state.book.replace(load_scenario(scenario))

    @property
    def recorded(self) -> Scenario | None:
        """In record mode, what has been recorded so far (also written to the file)."""
        recorder = self.state.recorder
        return recorder.scenario() if recorder is not None else None

    def _config(self) -> uvicorn.Config:
        return uvicorn.Config(self.app, host=self.host, port=self.port, log_level="warning",
                              access_log=False, lifespan="on", ws="none",
                              timeout_graceful_shutdown=2)

    def start(self) -> LocalLLMServer:
        if self._thread is not None:
            return self
        self._socket = _bind(self.host, self.port)
        self.port = self._socket.getsockname()[1]
        self._server = uvicorn.Server(self._config())
        self._thread = threading.Thread(target=self._server.run,
                                        kwargs={"sockets": [self._socket]},
                                        name=f"llm-server:{self.port}", daemon=True)
        self._thread.start()
        self._wait_started()
        return self

    def _wait_started(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self._server is not None and not self._server.started:
            if self._thread is None or not self._thread.is_alive():
                self.stop()
                raise RuntimeError("the local LLM server failed to start")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the local LLM server did not start in {timeout:g}s")
            time.sleep(0.005)
        with socket.create_connection((self.host, self.port), timeout=timeout):
            pass

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout=5)
            if thread.is_alive() and server is not None:
                server.force_exit = True
                thread.join(timeout=5)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    def serve_forever(self) -> None:
        """Run in this thread until Ctrl-C (uvicorn handles the signal)."""
        uvicorn.Server(self._config()).run()

    def __enter__(self) -> LocalLLMServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> LocalLLMServer:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await asyncio.to_thread(self.stop)


def _bind(host: str, port: int) -> socket.socket:
    """Bind before uvicorn starts, so port 0 is resolved and known the moment start returns."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock

