"""ScriptedProvider: deterministic answers with no server and no network.

For unit tests and offline runs. Answers come, in order, from a script: each item a Response,
a reply text, a list of ToolCalls, or a function of the request. After the script, a scenario
(the same YAML, JSON, dict or `Scenario` the local LLM server reads, see
`llmspell.llm.scenario`) answers by its rules, as the server would: text, tool calls, JSON for
structured output, the usage it names, and its faults raised as the LLMError a real provider
raises for them (429 is RateLimited with its Retry-After, 5xx LLMServerError, a dropped
connection LLMConnectionError, malformed output MalformedResponse). With no item and no
matching rule the provider echoes the last user message ("echo: ..."), as the server does, and
a structured request gets a value that fits its schema. Streaming splits the answer into word
chunks, as the server streams it; a scenario's latencies are waited, as the server waits them.

    provider = ScriptedProvider(scenario="examples/scenarios/demo.yaml")
    provider = ScriptedProvider(["first answer", [ToolCall(id="c1", name="search")]])

Rules are matched as the server matches them for one API (`api`: "chat" by default, or
"responses" or "messages"): a rule limited to other APIs does not fire. Token counts a rule does
not give are estimated, from the messages rather than from the server's wire body, so unset
input counts may differ from the server's.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
from collections.abc import AsyncIterator, Callable, Iterable
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from llmspell.llm.errors import LLMConnectionError, LLMError, MalformedResponse
from llmspell.llm.provider import error_for_status
from llmspell.llm.scenario import (
    Api,
    Fault,
    Hit,
    Prompt,
    Reply,
    RuleBook,
    Scenario,
    ToolCallReply,
    load_scenario,
)
from llmspell.llm.scenario import Usage as ScenarioUsage
from llmspell.llm.tokens import count_tokens, estimate
from llmspell.llm.types import (
    Chunk,
    LLMRequest,
    Message,
    Response,
    TextPart,
    ToolCall,
    ToolResult,
    Usage,
)

ScriptItem = Response | str | list[ToolCall] | Callable[[LLMRequest], Any]
ScenarioSource = Scenario | str | Path | dict[str, Any]

# The server's words for the faults it injects, so that errors read the same offline.
_FAULT_MESSAGES = {"rate_limit": "Rate limit reached (injected by the local LLM server).",
                   "server_error": "The server had an error (injected by the local LLM server)."}
# How many SSE events each API sends before its first text delta: a stream cut after fewer
# events has given no text yet (chat: the role chunk; responses: created, in_progress, item and
# part added; messages: message_start, ping, content_block_start).
_EVENTS_BEFORE_TEXT: dict[Api, int] = {"chat": 1, "responses": 4, "messages": 3}
# A stream's note of how complete() answered: the rule, or None for the echo (nothing: a script
# item).
_ANSWERED: ContextVar[list[Hit | None] | None] = ContextVar("llmspell_scripted_answered",
                                                     default=None)


class ScriptedProvider:
    def __init__(self, script: Iterable[ScriptItem] = (), *, name: str = "scripted",
                 scenario: ScenarioSource | None = None, api: Api = "chat") -> None:
        self.name = name
        self.api: Api = api
        self.script: list[ScriptItem] = list(script)
        self.requests: list[LLMRequest] = []
        self.book: RuleBook | None = (RuleBook(load_scenario(scenario))
                                      if scenario is not None else None)
        self._ids = itertools.count(1)

    def count_tokens(self, messages: list[Message], model: str) -> int:
        return count_tokens(messages, model)

    async def complete(self, request: LLMRequest) -> Response:
        self.requests.append(request)
        if self.script:
            item: Any = self.script.pop(0)
            if callable(item) and not isinstance(item, Response):
                item = item(request)
            return self._response(item, request)
        prompt = prompt_of(request, self.api)
        hit = self.book.pick(prompt) if self.book is not None else None
        answered = _ANSWERED.get()
        if answered is not None:
            answered.append(hit)
        if hit is not None and self.book is not None:
            delay = _delay(hit.rule.latency_ms, self.book.scenario.latency_ms)
            if delay:
                await asyncio.sleep(delay)
            if hit.rule.fault is not None:
                raise self._fault(hit.rule.fault, request)
            if hit.rule.reply is not None:
                return self._reply(hit, hit.rule.reply, request)
        return self._echo(request, prompt)

    async def stream(self, request: LLMRequest) -> AsyncIterator[Chunk]:
        answered: list[Hit | None] = []
        token = _ANSWERED.set(answered)
        dropped: LLMConnectionError | None = None
        try:
            response = await self.complete(request)
        except LLMConnectionError as exc:
            dropped = exc
        finally:
            _ANSWERED.reset(token)
        hit = answered[0] if answered else None
        if dropped is not None:
            fault = hit.rule.fault if hit is not None else None
            if fault is not None and fault.kind == "drop":
                # The text the real stream had given when the connection went (the server
                # streams the echo when it drops), then the error.
                given = max(0, fault.after_chunks - _EVENTS_BEFORE_TEXT[self.api])
                echo = self._echo(request, prompt_of(request, self.api))
                for piece in self._pieces(echo, forced=self._forced(request, None))[:given]:
                    yield Chunk(text=piece)
            raise dropped
        forced = bool(answered) and self._forced(request, hit)
        pause = self._chunk_delay(hit)
        for i, piece in enumerate(self._pieces(response, forced=forced)):
            if i and pause:
                await asyncio.sleep(pause)
            yield Chunk(text=piece)
        for call in response.tool_calls:
            yield Chunk(tool_call=call)
        yield Chunk(response=response)

    # -- answers ------------------------------------------------------------------------------

    def _response(self, item: Any, request: LLMRequest) -> Response:
        """A script item as a Response (the script's behaviour before scenarios existed)."""
        if isinstance(item, Response):
            return item.model_copy(update={"provider": self.name, "model": request.model})
        if item is None:
            return self._echo(request, prompt_of(request, self.api))
        if isinstance(item, str):
            message = Message.assistant(item)
        elif isinstance(item, list):
            message = Message.assistant("", list(item))
        else:
            raise TypeError(f"scripted answer must be a Response, text or tool calls, got "
                            f"{type(item).__name__}")
        return self._estimated(message, request)

    def _echo(self, request: LLMRequest, prompt: Prompt) -> Response:
        """No item and no rule: the echo, or for a structured request a value that fits the
        schema (what the server answers then)."""
        text = f"echo: {prompt.last_user}"
        if request.output_schema is not None:
            from llmspell.llm.server import example_for  # the server's own rule, loaded late

            text = json.dumps(example_for(request.output_schema.schema_, text))
        usage = Usage(input_tokens=count_tokens(request.messages, request.model),
                      output_tokens=self._spoken(text, [], self._forced(request, None), request))
        return Response(message=Message.assistant(text), usage=usage, model=request.model,
                        provider=self.name)

    def _estimated(self, message: Message, request: LLMRequest) -> Response:
        usage = Usage(input_tokens=count_tokens(request.messages, request.model),
                      output_tokens=estimate(message.text) or 1)
        return Response(message=message, usage=usage, model=request.model, provider=self.name,
                        finish_reason="tool_calls" if message.tool_calls else "stop")

    def _reply(self, hit: Hit, reply: Reply, request: LLMRequest) -> Response:
        """A rule's reply as the providers read it off the server's wire."""
        calls = [self._call(c.name, c.arguments, c.id) for c in reply.tool_calls]
        text = json.dumps(reply.json_value) if reply.json_value is not None else (
            reply.text or "")
        usage = self._usage(reply.usage or ScenarioUsage(), request,
                            self._spoken(text, reply.tool_calls,
                                         self._forced(request, hit), request))
        return Response(message=Message.assistant(text, calls), usage=usage,
                        model=request.model, provider=self.name,
                        finish_reason="tool_calls" if calls else "stop")

    def _spoken(self, text: str, calls: list[ToolCallReply], forced: bool,
                request: LLMRequest) -> int:
        """Output tokens as the server estimates them: a quarter of the characters said, tool
        names and argument text included; on Anthropic a structured answer is the forced
        tool's input, and its name counts too."""
        spoken = text + "".join(c.name + (c.arguments if isinstance(c.arguments, str)
                                          else json.dumps(c.arguments)) for c in calls)
        if forced and request.output_schema is not None:
            spoken += request.output_schema.name
        return max(1, math.ceil(len(spoken) / 4))

    def _call(self, name: str, arguments: dict[str, Any] | str, call_id: str | None
              ) -> ToolCall:
        call_id = call_id or f"{'toolu_' if self.api == 'messages' else 'call_'}" \
                             f"{next(self._ids):012d}"
        if isinstance(arguments, dict):
            return ToolCall(id=call_id, name=name, arguments=arguments)
        try:
            value = json.loads(arguments or "{}")
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            return ToolCall(id=call_id, name=name, arguments=value)
        if self.api == "messages":  # Anthropic's input is an object: the server sends {}
            return ToolCall(id=call_id, name=name, arguments={})
        return ToolCall(id=call_id, name=name, arguments={}, invalid_arguments=arguments)

    def _usage(self, given: ScenarioUsage, request: LLMRequest, output_estimate: int) -> Usage:
        """The scenario's counts as each API reports them and our providers read them:
        Anthropic's input_tokens leave out cache reads and writes, which we add back."""
        fresh = given.input_tokens
        if fresh is None:
            fresh = count_tokens(request.messages, request.model)
        output = output_estimate if given.output_tokens is None else given.output_tokens
        if self.api == "messages":
            return Usage(input_tokens=fresh + given.cached_tokens + given.cache_creation_tokens,
                         output_tokens=output, cached_tokens=given.cached_tokens,
                         cache_write_tokens=given.cache_creation_tokens)
        return Usage(input_tokens=fresh, output_tokens=output, cached_tokens=given.cached_tokens)

    def _fault(self, fault: Fault, request: LLMRequest) -> LLMError:
        """The error a real provider raises for what the server would inject."""
        if fault.kind in ("rate_limit", "server_error"):
            headers = ({"retry-after": f"{fault.retry_after:g}"} if fault.kind == "rate_limit"
                       else None)
            message = fault.message or _FAULT_MESSAGES[fault.kind]
            return error_for_status(self.name, request.model, fault.http_status, message,
                                    headers)
        if fault.kind == "malformed":
            return MalformedResponse(self.name, request.model,
                                     "malformed response: the body is not valid JSON (injected)")
        return LLMConnectionError(self.name, request.model, "connection failed: the server "
                                  "closed the connection before the response was complete "
                                  "(injected)")

    # -- streaming ----------------------------------------------------------------------------

    def _pieces(self, response: Response, *, forced: bool) -> list[str]:
        """The text deltas a stream gives: the server's words. A forced tool's input (the
        structured answer on Anthropic) streams no text."""
        return [] if forced else re.findall(r"\S+\s*|\s+", response.text)

    def _forced(self, request: LLMRequest, hit: Hit | None) -> bool:
        """Whether the answer is a JSON value sent as Anthropic's forced tool's input: a rule's
        json reply, or the server's example, to a structured request on the Messages API."""
        if self.api != "messages" or request.output_schema is None:
            return False
        reply = hit.rule.reply if hit is not None else None
        return hit is None or (reply is not None and reply.json_value is not None)

    def _chunk_delay(self, hit: Hit | None) -> float:
        if self.book is None:
            return 0.0
        return _delay(hit.rule.chunk_latency_ms if hit else None,
                      self.book.scenario.chunk_latency_ms)


def _delay(rule_ms: float | None, scenario_ms: float) -> float:
    return (scenario_ms if rule_ms is None else rule_ms) / 1000


def prompt_of(request: LLMRequest, api: Api = "chat") -> Prompt:
    """What the server's rules see of this request once a provider of `api` has sent it."""
    others = [m for m in request.messages if m.role != "system"]
    tools = tuple(t.name for t in request.tools)
    if api == "messages" and request.output_schema is not None:
        tools += (request.output_schema.name,)  # structured output is a forced tool there
    return Prompt(api=api, model=request.model, last_user=_last_user(others, api), tools=tools,
                  after_tool_result=_after_tool_result(others, api),
                  structured=request.output_schema is not None)


def _last_user(messages: list[Message], api: Api) -> str:
    """The last non-empty user text, joined as each API carries a message's text parts."""
    for m in reversed(messages):
        if m.role != "user":
            continue
        texts = [p.text for p in m.parts if isinstance(p, TextPart) and p.text]
        if api == "responses":  # each text part is an input item of its own
            text = texts[-1] if texts else ""
        else:
            text = ("\n" if api == "messages" else "").join(texts)
        if text:
            return text
    return ""


def _after_tool_result(messages: list[Message], api: Api) -> bool:
    """Whether the conversation ends with a tool result, as the server sees it: on Anthropic
    the trailing user and tool turns are merged into one user turn."""
    if not messages:
        return False
    if api != "messages":
        return messages[-1].role == "tool"
    tail: list[Message] = []
    for m in reversed(messages):
        if m.role == "assistant":
            break
        tail.append(m)
    return any(isinstance(p, ToolResult) for m in tail for p in m.parts)

