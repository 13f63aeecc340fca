"""The SDKs' HTTP transport: aiohttp unless a proxy is set, one client per event loop, each
closed with its loop or by aclose."""

from __future__ import annotations

import asyncio
import gc
import threading
from typing import Any

import httpx2
import openai
import pytest

from llmspell.llm.errors import LLMConnectionError, LLMTimeout
from llmspell.llm.http import HttpKind, LoopClients, http_client, resolve_kind
from llmspell.llm.openai_provider import OpenAIProvider
from llmspell.llm.registry import ProviderRegistry, ProviderSettings
from llmspell.llm.server import LocalLLMServer
from llmspell.llm.types import LLMRequest, Message
from tests.waiting import until


class Client:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


def test_auto_is_aiohttp_unless_a_proxy_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert resolve_kind("auto") == "aiohttp"
    assert type(http_client(openai, "auto", 5.0)).__name__ != "DefaultAsyncHttpxClient"
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    assert resolve_kind("auto") == "httpx" and resolve_kind("aiohttp") == "aiohttp"
    assert isinstance(http_client(openai, "auto", 5.0), httpx2.AsyncClient)


def test_a_bad_transport_in_settings_names_the_field() -> None:
    with pytest.raises(ValueError, match="http"):
        ProviderSettings.model_validate({"http": "requests"})


async def test_one_client_per_loop_each_closed_when_its_loop_ends() -> None:
    made: list[Client] = []

    def make() -> Client:
        made.append(Client())
        return made[-1]

    clients = LoopClients(make)
    here = await clients.get()
    assert await clients.get() is here  # the same loop: the same client

    def elsewhere() -> Client:
        async def use() -> Client:
            return await clients.get()
        return asyncio.run(use())  # a loop that ends: asyncio.run closes its async generators

    box: list[Client] = []
    thread = threading.Thread(target=lambda: box.append(elsewhere()))
    thread.start()
    thread.join(30)
    [other] = box
    assert other is not here and other.closed and not here.closed
    await clients.aclose()
    assert here.closed and len(made) == 2
    assert await clients.get() is not here  # a closed client is not handed out again


async def test_a_dropped_owner_in_a_reference_cycle_still_closes_its_client() -> None:
    made: list[Client] = []
    clients = LoopClients(lambda: made.append(Client()) or made[-1])
    await clients.get()
    cycle: dict[str, Any] = {"clients": clients}
    cycle["self"] = cycle
    del clients, cycle
    gc.collect()
    await until(lambda: made[0].closed, 5, "the dropped owner's client to close")


async def test_a_provider_closes_its_aiohttp_session_and_opens_a_new_one_after() -> None:
    with LocalLLMServer() as server:
        registry = ProviderRegistry({"local": ProviderSettings(
            base_url=server.openai_base_url, http="aiohttp")})
        provider = registry.get("local")
        assert isinstance(provider, OpenAIProvider)
        request = LLMRequest(model="m", messages=[Message.user("hi")])
        first = await provider.clients.get()
        assert (await provider.complete(request)).text == "echo: hi"
        await registry.aclose()
        assert first.is_closed()
        assert (await provider.complete(request)).text == "echo: hi"
        assert (await provider.clients.get()) is not first
        await registry.aclose()


@pytest.mark.parametrize("http", ["aiohttp", "httpx"])
async def test_a_slow_answer_is_a_timeout_and_a_dropped_one_a_lost_connection(
        http: HttpKind) -> None:
    scenario = {"rules": [{"match": {"contains": "slow"}, "latency_ms": 3000, "reply": "late"},
                          {"match": {"contains": "drop"}, "fault": "drop"}]}
    with LocalLLMServer(scenario) as server:
        provider = OpenAIProvider(name="p", api="chat", api_key="k", http=http, timeout=0.5,
                                  base_url=server.openai_base_url)
        with pytest.raises(LLMTimeout):
            await provider.complete(LLMRequest(model="m", messages=[Message.user("slow")]))
        with pytest.raises(LLMConnectionError):
            await provider.complete(LLMRequest(model="m", messages=[Message.user("drop")]))
        await provider.aclose()


class Closing:
    """A provider (the protocol's four members) whose close fails or succeeds."""

    def __init__(self, name: str, fails: bool) -> None:
        self.name, self.fails, self.closed = name, fails, False

    async def complete(self, request: LLMRequest) -> Any:
        raise AssertionError("only closed in these tests, never called")

    def stream(self, request: LLMRequest) -> Any:
        raise AssertionError("only closed in these tests, never called")

    def count_tokens(self, messages: list[Message], model: str) -> int:
        return 0

    async def aclose(self) -> None:
        if self.fails:
            raise RuntimeError("close failed")
        self.closed = True


async def test_a_provider_that_fails_to_close_does_not_keep_the_others_open() -> None:
    registry = ProviderRegistry()
    bad, good = Closing("bad", fails=True), Closing("good", fails=False)
    registry.register("bad", bad)
    registry.register("good", good)
    registry.get("bad"), registry.get("good")
    await registry.aclose()  # logs the failure, raises nothing
    assert good.closed and not bad.closed


async def test_warming_makes_the_providers_and_their_clients_and_skips_what_it_cannot() -> None:
    """What a warm standby does before it takes over: the first call then finds the SDK
    imported and this loop's client made. No request is sent."""
    with LocalLLMServer() as server:
        registry = ProviderRegistry({"local": ProviderSettings(base_url=server.openai_base_url)})
        await registry.warm(["local:m", "local:other", "nowhere:m"])  # the unknown one is left
        provider = registry.get("local")
        assert isinstance(provider, OpenAIProvider) and provider.clients.made()
        assert server.requests == []
        request = LLMRequest(model="m", messages=[Message.user("hi")])
        assert (await provider.complete(request)).text == "echo: hi"
        await registry.aclose()
        assert not provider.clients.made()
