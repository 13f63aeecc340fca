"""ScriptedProvider: deterministic answers with no server and no network.

For unit tests and offline runs. Answers come, in order, from a script: each item a Response,
a reply text, a list of ToolCalls, or a function of the request. When the script runs out the
provider echoes the last user message ("echo: ..."), as the local LLM server does. Streaming
splits the answer into word chunks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from llmspell.llm.tokens import count_tokens, estimate
from llmspell.llm.types import Chunk, LLMRequest, Message, Response, ToolCall, Usage

ScriptItem = Response | str | list[ToolCall] | Callable[[LLMRequest], Any]


class ScriptedProvider:
    def __init__(self, script: Iterable[ScriptItem] = (), *, name: str = "scripted") -> None:
        self.name = name
        self.script: list[ScriptItem] = list(script)
        self.requests: list[LLMRequest] = []

    def count_tokens(self, messages: list[Message], model: str) -> int:
        return count_tokens(messages, model)

    async def complete(self, request: LLMRequest) -> Response:
        self.requests.append(request)
        item: Any = self.script.pop(0) if self.script else None
        if callable(item) and not isinstance(item, Response):
            item = item(request)
        return self._response(item, request)

    async def stream(self, request: LLMRequest) -> AsyncIterator[Chunk]:
        response = await self.complete(request)
        words = response.text.split(" ")
        for i, word in enumerate(words):
            if word or i:
                yield Chunk(text=word if i == 0 else " " + word)
        for call in response.tool_calls:
            yield Chunk(tool_call=call)
        yield Chunk(response=response)

    def _response(self, item: Any, request: LLMRequest) -> Response:
        if isinstance(item, Response):
            return item.model_copy(update={"provider": self.name, "model": request.model})
        if item is None:
            last = next((m.text for m in reversed(request.messages) if m.role == "user"), "")
            item = f"echo: {last}"
        if isinstance(item, str):
            message = Message.assistant(item)
        elif isinstance(item, list):
            message = Message.assistant("", list(item))
        else:
            raise TypeError(f"scripted answer must be a Response, text or tool calls, got "
                            f"{type(item).__name__}")
        usage = Usage(input_tokens=count_tokens(request.messages, request.model),
                      output_tokens=estimate(message.text) or 1)
        return Response(message=message, usage=usage, model=request.model, provider=self.name,
                        finish_reason="tool_calls" if message.tool_calls else "stop")
