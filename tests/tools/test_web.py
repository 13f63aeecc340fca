"""The web tools against a real HTTP server on 127.0.0.1.

The tests' policy opens 127.0.0.1 alone (LOCAL); the default policy refuses it. Every address a
test may connect to is inside 127.0.0.0/8, and `trap` (on 127.0.0.2) proves that refused
addresses see no connection at all, whatever form they were written in or reached through.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from llmspell.tools import SandboxViolation, Tool, ToolArgumentError, ToolError
from llmspell.tools.builtin import web as w
from llmspell.tools.sandbox import rule_of
from tests.tools.conftest import LOCAL, Ctx, Trap, WebServer


@pytest.fixture
def local(make_ctx: Callable[..., Ctx]) -> Ctx:
    return make_ctx(**LOCAL)


@pytest.fixture
def default(make_ctx: Callable[..., Ctx]) -> Ctx:
    return make_ctx()


async def call(tool: Tool, c: Ctx, **arguments: Any) -> Any:
    return await tool.invoke(arguments, c.ctx)


async def refusal(tool: Tool, c: Ctx, trap: Trap, **arguments: Any) -> SandboxViolation:
    before = trap.connections
    with pytest.raises(SandboxViolation) as caught:
        await call(tool, c, **arguments)
    assert trap.connections == before, "a refused address was connected to"
    assert c.refusals() and c.refusals()[-1]["rule"] == rule_of(caught.value)
    return caught.value


# -- http_request -----------------------------------------------------------------------------


async def test_http_request_get_and_post_json(local: Ctx, web: WebServer) -> None:
    got = await call(w.HttpRequest(), local, url=web.url("/json"))
    assert got["status"] == 200 and got["json"] == {"hello": "world"}
    posted = await call(w.HttpRequest(), local, url=web.url("/echo"), method="POST",
                        json={"n": 1}, params={"q": "x y"}, headers={"X-Test": "yes"})
    echo = posted["json"]
    assert echo["method"] == "POST" and json.loads(echo["body"]) == {"n": 1}
    assert echo["query"] == {"q": "x y"} and echo["headers"]["x-test"] == "yes"
    assert echo["headers"]["content-type"] == "application/json"
    missing = await call(w.HttpRequest(), local, url=web.url("/nope"))
    assert missing["status"] == 404  # a status is a result, not an error
    binary = await call(w.HttpRequest(), local, url=web.url("/binary"))
    assert binary["body_base64"].startswith("iVBOR")


async def test_http_request_bad_inputs(local: Ctx, web: WebServer) -> None:
    with pytest.raises(ToolError, match="'json' or 'body'"):
        await call(w.HttpRequest(), local, url=web.url("/echo"), method="POST", json={},
                   body="x")
    with pytest.raises(ToolArgumentError, match="method"):
        await call(w.HttpRequest(), local, url=web.url("/"), method="BREW")
    with pytest.raises(ToolError, match="not a valid URL"):
        await call(w.HttpRequest(), local, url="http://")


async def test_caps_and_deadlines(local: Ctx, web: WebServer) -> None:
    big = await call(w.HttpRequest(), local, url=web.url("/big"), max_bytes=1000)
    assert big["truncated"] and len(big["body"]) == 1000
    bomb = await call(w.HttpRequest(), local, url=web.url("/bomb"), max_bytes=5000)
    assert bomb["truncated"] and len(bomb["body_base64"]) < 10_000  # decoded bytes are counted
    with pytest.raises(ToolError, match=r"within 0\.3s"):
        await call(w.HttpRequest(), local, url=web.url("/slow?s=3"), timeout_s=0.3)


# -- the network policy where naive checks fail ------------------------------------------------


async def test_the_default_policy_refuses_the_local_server(default: Ctx, web: WebServer,
                                                           trap: Trap) -> None:
    error = await refusal(w.HttpRequest(), default, trap, url=web.url("/json"))
    assert rule_of(error) == "private-address" and "127.0.0.1 is a loopback address" in str(error)
    by_name = await refusal(w.WebFetch(), default, trap, url=web.url("/page", host="localhost"))
    assert "localhost resolves to 127.0.0.1" in str(by_name)


async def test_a_redirect_to_a_refused_address_is_refused_before_connecting(
        local: Ctx, web: WebServer, trap: Trap) -> None:
    followed = await call(w.HttpRequest(), local, url=web.url("/redirect?to=/json"))
    assert followed["json"] == {"hello": "world"} and followed["redirects"][0]["status"] == 302
    for target in (f"http://127.0.0.2:{trap.port}/", f"http://0x7f000002:{trap.port}/",
                   f"http://[::ffff:127.0.0.2]:{trap.port}/", f"http://127.2:{trap.port}/"):
        error = await refusal(w.HttpRequest(), local, trap,
                              url=web.url(f"/redirect?to={target}&code=307"))
        assert rule_of(error) == "private-address" and "redirect from" in str(error)
    error = await refusal(w.HttpRequest(), local, trap,
                          url=web.url("/redirect?to=http://169.254.169.254/latest"))
    assert rule_of(error) == "metadata-address"  # decided without any connection


async def test_a_post_redirected_by_303_becomes_a_get(local: Ctx, web: WebServer) -> None:
    result = await call(w.HttpRequest(), local, method="POST", json={"a": 1},
                        url=web.url("/redirect?to=/echo&code=303"))
    assert result["json"]["method"] == "GET" and result["json"]["body"] == ""
    kept = await call(w.HttpRequest(), local, method="POST", json={"a": 1},
                      url=web.url("/redirect?to=/echo&code=307"))
    assert kept["json"]["method"] == "POST" and json.loads(kept["json"]["body"]) == {"a": 1}


@pytest.mark.parametrize("host", ["127.0.0.2", "[::1]", "[::ffff:127.0.0.2]", "2130706434",
                                  "0x7f000002", "0177.0.0.2", "0x7f.0.0.2", "127.2"])
async def test_refused_forms_of_loopback(local: Ctx, trap: Trap, host: str) -> None:
    error = await refusal(w.HttpRequest(), local, trap, url=f"http://{host}:{trap.port}/")
    assert rule_of(error) == "private-address"


@pytest.mark.parametrize("host", ["2130706433", "0x7f000001", "0177.0.0.1", "127.1",
                                  "[::ffff:127.0.0.1]"])
async def test_allowed_forms_of_the_allowed_address_reach_it(local: Ctx, web: WebServer,
                                                              host: str) -> None:
    result = await call(w.HttpRequest(), local, url=f"http://{host}:{web.port}/json")
    assert result["json"] == {"hello": "world"}


async def test_dns_rebinding_cannot_move_the_connection(
        local: Ctx, web: WebServer, trap: Trap, monkeypatch: pytest.MonkeyPatch) -> None:
    """The name resolves to the allowed address when checked and to a refused one afterwards:
    the connection goes to the address that was checked, and the name is resolved once."""
    answers = iter(["127.0.0.1"] + ["127.0.0.2"] * 10)
    asked: list[str] = []
    real = socket.getaddrinfo

    def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.test":
            asked.append(host)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    before = trap.connections
    result = await call(w.HttpRequest(), local, url=f"http://rebind.test:{web.port}/echo")
    assert result["json"]["headers"]["host"] == f"rebind.test:{web.port}"
    assert asked == ["rebind.test"] and trap.connections == before
    error = await refusal(w.HttpRequest(), local, trap, url=f"http://rebind.test:{trap.port}/")
    assert "rebind.test resolves to 127.0.0.2" in str(error)


# -- web_fetch --------------------------------------------------------------------------------


async def test_web_fetch_markdown_text_and_links(local: Ctx, web: WebServer) -> None:
    page = await call(w.WebFetch(), local, url=web.url("/page"))
    assert page["title"] == "The Test Page"
    md = page["content"]
    assert md.startswith("# Welcome") and "**readable**" in md and "- first item" in md
    assert f"[JSON endpoint]({web.url('/json')})" in md  # links made absolute
    assert "secret" not in md and "Footer" not in md and "Navigation" not in md
    urls = [link["url"] for link in page["links"]]
    assert web.url("/json") in urls and "https://example.org/elsewhere" in urls
    assert not any(u.startswith("javascript:") for u in urls)
    text = await call(w.WebFetch(), local, url=web.url("/page"), format="text",
                      main_content=False)
    assert "Hello readable world." in text["content"] and "Footer text" in text["content"]
    short = await call(w.WebFetch(), local, url=web.url("/page"), max_chars=100,
                       include_links=False)
    assert short["truncated"] and len(short["content"]) == 100 and "links" not in short


async def test_web_fetch_bad_inputs(local: Ctx, web: WebServer, default: Ctx,
                                    trap: Trap) -> None:
    with pytest.raises(ToolError, match="answered 404"):
        await call(w.WebFetch(), local, url=web.url("/missing"))
    with pytest.raises(ToolError, match="image/png"):
        await call(w.WebFetch(), local, url=web.url("/binary"))
    with pytest.raises(ToolArgumentError, match="format"):
        await call(w.WebFetch(), local, url=web.url("/page"), format="pdf")
    error = await refusal(w.WebFetch(), local, trap, url="file:///etc/passwd")
    assert rule_of(error) == "scheme"


# -- url_analyze ------------------------------------------------------------------------------


async def test_url_analyze_parts_and_decisions(default: Ctx, local: Ctx) -> None:
    parts = await call(w.UrlAnalyze(), default, url="https://u:p@Example.COM:8443/a/b?x=1&x=2&y=#frag",
                       resolve=False)
    assert (parts["scheme"], parts["host"], parts["port"], parts["path"]) == (
        "https", "example.com", 8443, "/a/b")
    assert parts["params"] == {"x": ["1", "2"], "y": [""]} and parts["fragment"] == "frag"
    assert parts["has_credentials"] and parts["allowed"] is None  # a name: decided after DNS
    hexed = await call(w.UrlAnalyze(), default, url="http://0x7f000001/")
    assert hexed["normalized_host"] == "127.0.0.1" and hexed["allowed"] is False
    assert hexed["rule"] == "private-address"
    meta = await call(w.UrlAnalyze(), local, url="http://169.254.169.254/latest/meta-data")
    assert meta["rule"] == "metadata-address"
    ok = await call(w.UrlAnalyze(), local, url="http://127.0.0.1:9/")
    assert ok["allowed"] is True and ok["addresses"] == ["127.0.0.1"]
    assert default.refusals() == []  # analysing is not an attempt: no refusal events


async def test_url_analyze_bad_inputs(default: Ctx) -> None:
    with pytest.raises(ToolError, match="not a valid URL"):
        await call(w.UrlAnalyze(), default, url="not a url")
    with pytest.raises(ToolError, match="not a valid URL"):
        await call(w.UrlAnalyze(), default, url="http://host:port/")
    with pytest.raises(ToolArgumentError, match="url"):
        await call(w.UrlAnalyze(), default)


# -- sitemap_crawl ----------------------------------------------------------------------------


async def test_sitemap_crawl_is_bounded_same_host_and_polite(local: Ctx, web: WebServer) -> None:
    crawl = await call(w.SitemapCrawl(), local, url=web.url("/site/"), max_depth=2)
    pages = {p["url"].removeprefix(web.url("")): p for p in crawl["pages"]}
    assert set(pages) == {"/site/", "/site/a", "/site/b", "/site/c"}  # d is 3 hops away
    assert pages["/site/c"]["depth"] == 2 and pages["/site/a"]["title"] == "Page A"
    assert crawl["skipped_by_robots"] == 1 and crawl["errors"] == []
    few = await call(w.SitemapCrawl(), local, url=web.url("/site/"), max_pages=2)
    assert few["count"] == 2 and few["truncated"]
    sitemap = await call(w.SitemapCrawl(), local, url=web.url("/sitemap.xml"))
    assert sitemap["from_sitemap"] and [p["url"] for p in sitemap["pages"]] == [
        web.url("/site/a"), web.url("/site/b")]
    assert sitemap["pages"][0]["lastmod"] == "2024-01-02"


async def test_sitemap_crawl_bad_inputs(default: Ctx, local: Ctx, web: WebServer,
                                        trap: Trap) -> None:
    with pytest.raises(ToolArgumentError, match="max_depth"):
        await call(w.SitemapCrawl(), local, url=web.url("/site/"), max_depth=9)
    error = await refusal(w.SitemapCrawl(), default, trap, url=web.url("/site/"))
    assert rule_of(error) == "private-address"
    with pytest.raises(ToolError, match="answered 404"):
        await call(w.SitemapCrawl(), local, url=web.url("/missing"))


# -- webhook_call -----------------------------------------------------------------------------


async def test_webhook_call_posts_signed_json(local: Ctx, web: WebServer) -> None:
    local.ctx.idempotency_key = "call-42"
    done = await call(w.WebhookCall(), local, url=web.url("/hook"), payload={"event": "done"},
                      secret="s3cret")
    assert done["delivered"] and done["status"] == 202
    received = web.hooks[-1]
    assert json.loads(received["body"]) == {"event": "done"}
    expected = hmac.new(b"s3cret", received["body"], hashlib.sha256).hexdigest()
    assert received["headers"]["x-signature-256"] == f"sha256={expected}"
    assert received["headers"]["idempotency-key"] == "call-42"
    failed = await call(w.WebhookCall(), local, url=web.url("/status?code=500"), payload=[])
    assert failed["delivered"] is False and failed["status"] == 500


async def test_webhook_call_bad_inputs(local: Ctx, trap: Trap) -> None:
    with pytest.raises(ToolArgumentError, match="payload"):
        await call(w.WebhookCall(), local, url="http://127.0.0.1:1/")
    error = await refusal(w.WebhookCall(), local, trap, url=f"http://127.0.0.2:{trap.port}/",
                          payload={"x": 1})
    assert rule_of(error) == "private-address"


# -- web_search -------------------------------------------------------------------------------


@pytest.fixture
def no_env_providers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("LLMSPELL_SEARXNG_URL", raising=False)
    monkeypatch.delenv("BRAVE_SEARCH_API_KEY", raising=False)
    yield
    w.unregister_search_provider("searxng")


async def test_web_search_without_a_provider_says_so(local: Ctx, no_env_providers: None) -> None:
    with pytest.raises(ToolError, match="no search provider is configured"):
        await call(w.WebSearch(), local, query="anything")
    with pytest.raises(ToolArgumentError, match="query"):
        await call(w.WebSearch(), local, query="")


async def test_web_search_through_a_searxng_provider(local: Ctx, web: WebServer,
                                                     no_env_providers: None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMSPELL_SEARXNG_URL", web.url("/"))
    found = await call(w.WebSearch(), local, query="llamas", max_results=3)
    assert found["provider"] == "searxng" and len(found["results"]) == 3
    assert found["results"][0] == {"title": "llamas result 0", "url": "https://example.org/0",
                                   "snippet": "about llamas"}
    with pytest.raises(ToolError, match="no search provider named 'bing'"):
        await call(w.WebSearch(), local, query="x", provider="bing")


def test_every_web_tool_has_a_strict_described_schema() -> None:
    for t in w.TOOLS:
        spec = t.spec()
        assert t.category == "web" and spec.parameters["additionalProperties"] is False
        assert all(p.get("description") for p in spec.parameters["properties"].values()), t.name
    assert "json" in w.HttpRequest().spec().parameters["properties"]
    effects = {t.name: (str(t.side_effects), t.idempotent) for t in w.TOOLS}
    assert effects["webhook_call"] == ("external", False)
    assert effects["http_request"] == ("external", False)
    assert effects["web_fetch"] == ("none", True) and effects["url_analyze"] == ("none", True)
