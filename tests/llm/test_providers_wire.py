"""Our providers through the real SDKs against the local LLM server."""

from __future__ import annotations

import pytest

from llmspell.llm.anthropic_provider import AnthropicProvider
from llmspell.llm.client import LLM, ModelConfig
from llmspell.llm.errors import MalformedResponse, StreamInterrupted
from llmspell.llm.http import HttpKind
from llmspell.llm.openai_provider import OpenAIProvider
from llmspell.llm.registry import ProviderRegistry
from llmspell.llm.server import LocalLLMServer
from llmspell.llm.types import LLMRequest, Message, ToolSpec
from tests.loopback import serving

SCENARIO = {"rules": [
    {"match": {"contains": "weather"}, "reply": {"tool_calls": [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "get_weather", "arguments": {"city": "Berlin"}}]}},
    {"match": {"contains": "flaky"}, "times": 1,
     "fault": {"kind": "rate_limit", "retry_after": 0.4}},
    {"match": {"contains": "cut"}, "fault": {"kind": "drop", "after_chunks": 2}},
]}
TOOLS = [ToolSpec(name="get_weather", parameters={
    "type": "object", "properties": {"city": {"type": "string"}}})]


def llm_for(server: LocalLLMServer, http: HttpKind = "auto") -> LLM:
    registry = ProviderRegistry()
    registry.register("chat", OpenAIProvider(name="chat", api="chat", api_key="k", http=http,
                                             base_url=server.openai_base_url))
    registry.register("resp", OpenAIProvider(name="resp", api="responses", api_key="k",
                                             http=http, base_url=server.openai_base_url))
    registry.register("claude", AnthropicProvider(api_key="k", http=http,
                                                  base_url=server.anthropic_base_url))
    return LLM(registry=registry)


@pytest.mark.parametrize("http", ["aiohttp", "httpx"])
@pytest.mark.parametrize("model", ["chat:m", "resp:m", "claude:m"])
async def test_text_stream_and_parallel_tool_calls(model: str, http: HttpKind) -> None:
    with LocalLLMServer(SCENARIO) as server:
        llm = llm_for(server, http)
        answer = await llm.complete(model, [Message.user("hello there")])
        assert answer.text == "echo: hello there" and answer.usage.input_tokens > 0
        chunks = [c async for c in llm.stream(model, [Message.user("stream me")])]
        assert "".join(c.text for c in chunks) == "echo: stream me"
        assert chunks[-1].response is not None and chunks[-1].response.usage.output_tokens > 0
        calls = await llm.complete(model, [Message.user("weather?")], tools=TOOLS)
        assert calls.finish_reason == "tool_calls"
        assert [c.arguments["city"] for c in calls.tool_calls] == ["Paris", "Berlin"]


@pytest.mark.parametrize("model", ["chat:m", "claude:m"])
async def test_retry_after_is_honoured(model: str) -> None:
    with LocalLLMServer(SCENARIO) as server:
        llm = llm_for(server)
        answer = await llm.complete(ModelConfig(model=model, base_delay=0.01),
                                    [Message.user("flaky call")])
        assert answer.text == "echo: flaky call"
        first, second = server.requests[-2:]
        assert second.monotonic - first.monotonic >= 0.4  # the gap the server recorded


async def test_a_stream_cut_midway_raises_rather_than_truncates() -> None:
    with LocalLLMServer(SCENARIO) as server:
        llm = llm_for(server)
        with pytest.raises(StreamInterrupted):
            async for _ in llm.stream(ModelConfig(model="chat:m", max_attempts=1),
                                      [Message.user("cut me off please now")]):
                pass


@pytest.mark.parametrize(("body", "what"), [
    (b'{"id": "x", "choices": []}', "response has no choices"),
    (b'{"id": "x", "choices": [{"message": "hello"}]}', "choice has no message"),
    (b'[1, 2]', "response has no choices"),
])
async def test_a_chat_body_of_the_wrong_shape_is_a_malformed_response(body: bytes,
                                                                     what: str) -> None:
    """The chat provider reads the JSON body itself (not the SDK's model of it): any shape
    that is not a chat completion is a clear MalformedResponse, not an AttributeError."""
    with serving(body, "application/json") as url:
        provider = OpenAIProvider(name="chat", api="chat", api_key="k", base_url=f"{url}/v1")
        try:
            with pytest.raises(MalformedResponse, match=what):
                await provider.complete(LLMRequest(model="m", messages=[Message.user("hi")]))
        finally:
            await provider.aclose()
