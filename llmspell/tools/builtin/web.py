"""Built-in tools: the web and HTTP, through the job's network policy.

http_request, web_fetch (HTML to readable markdown or text, with its links), url_analyze (no
connection), sitemap_crawl (one host, bounded depth and page count), webhook_call (a signed
JSON POST) and web_search (through a configured provider). Every request goes through
`SandboxHttp`: each URL and each redirect is checked after DNS resolution and the connection goes
to the address that was checked; bodies are capped, requests have deadlines.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol
from urllib.parse import parse_qs, urljoin, urlsplit, urlunsplit
from urllib.robotparser import RobotFileParser

import defusedxml.ElementTree as SafeET
from bs4 import BeautifulSoup, Tag
from defusedxml import DefusedXmlException
from markdownify import MarkdownConverter
from pydantic import Field, JsonValue

from llmspell.tools.base import SideEffects, Tool
from llmspell.tools.context import ToolContext
from llmspell.tools.errors import SandboxViolation, ToolError
from llmspell.tools.sandbox import net, rule_of
from llmspell.tools.sandbox.http import HttpResult, SandboxHttp
from llmspell.tools.sandbox.tool import SandboxedTool, StrictArgs

__all__ = [
    "TOOLS", "BraveSearch", "HttpRequest", "SearchHit", "SearchProvider", "SearxngSearch",
    "SitemapCrawl", "UrlAnalyze", "WebFetch", "WebSearch", "WebhookCall", "html_page",
    "register_search_provider", "search_providers", "unregister_search_provider",
]

CATEGORY = "web"
_METHODS = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_NOISE = ("script", "style", "noscript", "template", "svg", "canvas", "iframe", "object")
_CHROME = ("nav", "header", "footer", "aside", "form")  # around the content, not in it
_BLANK_LINES = re.compile(r"\n{3,}")
_SPACES = re.compile(r"\s+")
_BLOCKS = ("p", "div", "section", "article", "main", "h1", "h2", "h3", "h4", "h5", "h6", "li",
           "ul", "ol", "dl", "dt", "dd", "tr", "table", "pre", "blockquote", "figure",
           "figcaption", "hr", "address", "details", "summary")


def _timeout(value: float | None, ctx: ToolContext) -> float:
    return min(value or ctx.sandbox.network_timeout_s, 300.0)


def _status_error(tool: str, result: HttpResult) -> ToolError:
    snippet = " ".join(result.text()[:200].split()) if result.is_textual() else ""
    tail = f": {snippet}" if snippet else ""
    return ToolError(tool, f"GET {result.url} answered {result.status} {result.reason}{tail}")


# -- HTML to readable text -------------------------------------------------------------------


@dataclass
class Page:
    title: str
    text: str
    markdown: str
    links: list[dict[str, str]]


def _links(soup: BeautifulSoup, base: str, limit: int) -> list[dict[str, str]]:
    base_tag = soup.find("base", href=True)
    if isinstance(base_tag, Tag):
        base = urljoin(base, str(base_tag["href"]))
    found: dict[str, str] = {}
    for anchor in soup.find_all("a", href=True):
        href = str(anchor["href"]).strip()
        if not href or href.startswith(("#", "javascript:", "data:")):
            continue
        url = urlunsplit(urlsplit(urljoin(base, href))._replace(fragment=""))
        text = " ".join(anchor.get_text(" ", strip=True).split())
        if url not in found or (text and not found[url]):
            found[url] = text
        if len(found) >= limit:
            break
    return [{"url": url, "text": text} for url, text in found.items()]


def _content(soup: BeautifulSoup, main_content: bool) -> Tag:
    for tag in soup.find_all(_NOISE):
        tag.decompose()
    body = soup.body or soup
    if not main_content:
        return body
    main = soup.find("main") or soup.find("article") or soup.find(None, {"role": "main"})
    node = main if isinstance(main, Tag) else body
    for tag in node.find_all(_CHROME):
        tag.decompose()
    return node


def _absolute(node: Tag, base: str) -> None:
    """Links and images in the markdown point where they point on the web, not at a path."""
    for tag, attr in (("a", "href"), ("img", "src")):
        for element in node.find_all(tag, attrs={attr: True}):
            value = str(element[attr]).strip()
            if value.startswith(("javascript:", "data:")):
                del element[attr]
            elif not value.startswith("#"):
                element[attr] = urljoin(base, value)


def _plain(node: Tag) -> str:
    """Text with one line per block (paragraph, heading, list item, row), inline elements kept
    inside their line. Changes the tree: call it last."""
    for string in node.find_all(string=True):
        if string.find_parent("pre") is None:  # source line breaks are spaces in HTML
            string.replace_with(_SPACES.sub(" ", str(string)))
    for br in node.find_all("br"):
        br.replace_with("\n")
    for block in node.find_all(_BLOCKS):
        block.insert_before("\n")
        block.insert_after("\n")
    lines = (" ".join(line.split()) for line in node.get_text().splitlines())
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def html_page(html: str, base_url: str, *, main_content: bool = True,
              max_links: int = 200) -> Page:
    """Title, readable text, markdown and links of an HTML document. main_content keeps the
    <main> or <article> element when there is one and drops navigation, headers and footers."""
    soup = BeautifulSoup(html, "lxml")
    title = " ".join(soup.title.get_text().split()) if soup.title else ""
    links = _links(soup, base_url, max_links)
    node = _content(soup, main_content)
    _absolute(node, base_url)
    markdown = MarkdownConverter(heading_style="ATX", bullets="-").convert_soup(node)
    markdown = _BLANK_LINES.sub("\n\n", str(markdown)).strip()
    return Page(title=title, text=_plain(node), markdown=markdown, links=links)


def _cut(text: str, limit: int) -> tuple[str, bool]:
    return (text, False) if len(text) <= limit else (text[:limit], True)


# -- http_request -------------------------------------------------------------------------------


class HttpRequest(SandboxedTool):
    name = "http_request"
    category = CATEGORY
    side_effects = SideEffects.external  # any method: a POST, PUT or DELETE changes the world
    idempotent = False
    timeout = 320.0
    description = (
        "Send an HTTP request and return the status, headers and body (text, parsed JSON when "
        "the response is JSON, base64 for binary bodies). Redirects are followed and each one "
        "checked by the sandbox; the body is cut at max_bytes ('truncated' says so). Any "
        "status is returned as a result, not an error.")

    class Args(StrictArgs):
        url: str = Field(description="http or https URL")
        method: _METHODS = Field(default="GET", description="HTTP method")
        headers: dict[str, str] = Field(default_factory=dict, description="request headers")
        params: dict[str, str] = Field(default_factory=dict, description="query parameters "
                                       "added to the URL")
        json_body: JsonValue = Field(default=None, alias="json", description="a JSON body "
                                     "(sent with Content-Type: application/json)")
        body: str | None = Field(default=None, description="a raw text body (instead of json)")
        timeout_s: float | None = Field(default=None, gt=0, le=300, description="deadline for "
                                        "the whole request (default: the sandbox's)")
        max_bytes: int | None = Field(default=None, ge=1, description="most body bytes to "
                                      "return (capped by the sandbox's max_output_bytes)")
        follow_redirects: bool = Field(default=True, description="follow 3xx redirects")

    async def call(self, args: HttpRequest.Args, ctx: ToolContext) -> dict[str, Any]:
        if args.json_body is not None and args.body is not None:
            raise ToolError(self.name, "give 'json' or 'body', not both")
        content = args.body.encode() if args.body is not None else None
        async with SandboxHttp(ctx.sandbox, self.name, timeout_s=_timeout(args.timeout_s, ctx),
                               max_bytes=args.max_bytes) as http:
            result = await http.request(args.method, args.url, headers=args.headers,
                                        params=args.params, json=args.json_body,
                                        content=content, follow_redirects=args.follow_redirects)
        return _response(result)


def _response(result: HttpResult) -> dict[str, Any]:
    out: dict[str, Any] = {
        "url": result.url, "status": result.status, "reason": result.reason,
        "headers": result.headers, "truncated": result.truncated,
        "redirects": result.redirects, "elapsed_ms": result.elapsed_ms,
    }
    if not result.is_textual():
        out["body_base64"] = base64.b64encode(result.body).decode("ascii")
        return out
    out["body"] = result.text()
    if result.content_type.endswith("json") and not result.truncated:
        with contextlib.suppress(json.JSONDecodeError):  # a JSON type with a bad body
            out["json"] = json.loads(out["body"])
    return out


# -- web_fetch --------------------------------------------------------------------------------


class WebFetch(SandboxedTool):
    name = "web_fetch"
    category = CATEGORY
    timeout = 320.0
    description = (
        "Fetch a web page and return it as readable markdown (or plain text, or the raw HTML), "
        "with its title and the links it contains (absolute URLs). By default only the main "
        "content is kept (navigation, headers and footers dropped). An error status (4xx, 5xx) "
        "is a tool error.")

    class Args(StrictArgs):
        url: str = Field(description="http or https URL of the page")
        format: Literal["markdown", "text", "html"] = Field(
            default="markdown", description="how to return the content")
        main_content: bool = Field(default=True, description="keep only the main content "
                                   "(<main> or <article>), without navigation and footers")
        include_links: bool = Field(default=True, description="return the page's links")
        max_links: int = Field(default=200, ge=0, le=2_000, description="most links returned")
        max_chars: int = Field(default=50_000, ge=100, le=1_000_000,
                               description="most characters of content returned")
        timeout_s: float | None = Field(default=None, gt=0, le=300,
                                        description="deadline (default: the sandbox's)")

    async def call(self, args: WebFetch.Args, ctx: ToolContext) -> dict[str, Any]:
        async with SandboxHttp(ctx.sandbox, self.name,
                               timeout_s=_timeout(args.timeout_s, ctx)) as http:
            result = await http.request("GET", args.url, headers={
                "accept": "text/html,application/xhtml+xml,text/plain;q=0.9,*/*;q=0.5"})
        if result.status >= 400:
            raise _status_error(self.name, result)
        if not result.is_textual():
            raise ToolError(self.name, f"{result.url} is {result.content_type}, not a page "
                                       "(use http_request for other content)")
        return await asyncio.to_thread(self._render, args, result)

    def _render(self, args: WebFetch.Args, result: HttpResult) -> dict[str, Any]:
        body = result.text()
        out: dict[str, Any] = {"url": result.url, "status": result.status,
                               "content_type": result.content_type, "format": args.format,
                               "redirects": result.redirects}
        if "html" in result.content_type or (not result.content_type and "<html" in body[:500]):
            page = html_page(body, result.url, main_content=args.main_content,
                             max_links=args.max_links)
            chosen = {"markdown": page.markdown, "text": page.text, "html": body}[args.format]
            out["title"], links = page.title, page.links
        else:  # plain text, JSON, XML: returned as they are
            chosen, links = body, []
            out["title"] = ""
        out["content"], cut = _cut(chosen, args.max_chars)
        out["truncated"] = cut or result.truncated
        if args.include_links:
            out["links"] = links
        return out


# -- url_analyze ------------------------------------------------------------------------------


class UrlAnalyze(SandboxedTool):
    name = "url_analyze"
    category = CATEGORY
    description = (
        "Take a URL apart without fetching it: scheme, host (normalised: '0x7f000001' is "
        "127.0.0.1), port, path, query parameters, fragment; and whether the sandbox would "
        "allow fetching it, with the rule that refuses it. resolve=true looks the host up in "
        "DNS to judge every address it has (no connection is made).")

    class Args(StrictArgs):
        url: str = Field(description="the URL to analyse")
        resolve: bool = Field(default=True, description="resolve the host name to judge its "
                              "addresses (DNS only, no connection)")

    async def call(self, args: UrlAnalyze.Args, ctx: ToolContext) -> dict[str, Any]:
        parts = self._split(args.url)
        out = self._components(args.url, parts)
        out.update(await self._decision(args, ctx))
        return out

    def _split(self, url: str) -> Any:
        try:
            parts = urlsplit(url.strip())
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError as exc:
            raise ToolError(self.name, f"{url!r} is not a valid URL: {exc}") from None
        if not parts.scheme or not (parts.netloc or parts.path):
            raise ToolError(self.name, f"{url!r} is not a valid URL: it needs a scheme and a "
                                       "host, like https://example.com/path")
        return parts

    def _components(self, url: str, parts: Any) -> dict[str, Any]:
        host = parts.hostname or ""
        try:
            normalized, ip = net.parse_host(host) if host else ("", None)
        except ValueError:
            normalized, ip = host, None
        default_port = {"http": 80, "https": 443}.get(parts.scheme)
        return {
            "url": url, "scheme": parts.scheme, "host": host, "normalized_host": normalized,
            "is_ip": ip is not None, "ip_version": ip.version if ip is not None else None,
            "port": parts.port or default_port, "path": parts.path or "/",
            "query": parts.query, "params": parse_qs(parts.query, keep_blank_values=True),
            "fragment": parts.fragment, "has_credentials": bool(parts.username),
        }

    async def _decision(self, args: UrlAnalyze.Args, ctx: ToolContext) -> dict[str, Any]:
        sandbox = ctx.sandbox
        try:
            parsed = net.check_static(sandbox, self.name, args.url)
            if parsed.ip is None and not args.resolve:
                return {"allowed": None, "rule": None, "addresses": [],
                        "reason": "the host name's addresses are checked when it is fetched"}
            target = await net.acheck_host(sandbox, self.name, parsed, args.url)
        except SandboxViolation as exc:
            return {"allowed": False, "rule": rule_of(exc), "addresses": [],
                    "reason": exc.__dict__.get("reason", exc.detail)}
        except ToolError as exc:
            return {"allowed": None, "rule": None, "addresses": [], "reason": exc.detail}
        return {"allowed": True, "rule": None, "addresses": list(target.addresses),
                "reason": "allowed by the sandbox"}


# -- sitemap_crawl ----------------------------------------------------------------------------


class SitemapCrawl(SandboxedTool):
    name = "sitemap_crawl"
    category = CATEGORY
    timeout = 600.0
    description = (
        "Map a website: starting from a page, follow links on the same host breadth-first up to "
        "max_depth and max_pages, returning each page's URL, depth, status, title and link "
        "count. A sitemap.xml start URL is read as a sitemap instead (its URLs listed, nested "
        "sitemaps followed). robots.txt is respected unless told otherwise.")

    class Args(StrictArgs):
        url: str = Field(description="start page, or a sitemap.xml URL")
        max_depth: int = Field(default=2, ge=0, le=5, description="link hops from the start "
                               "page (0: the start page only)")
        max_pages: int = Field(default=25, ge=1, le=200, description="most pages fetched")
        path_prefix: str | None = Field(default=None, description="only follow URLs whose "
                                        "path starts with this, e.g. '/docs/'")
        respect_robots: bool = Field(default=True, description="skip URLs robots.txt "
                                     "disallows")
        timeout_s: float | None = Field(default=None, gt=0, le=120,
                                        description="deadline per page")

    async def call(self, args: SitemapCrawl.Args, ctx: ToolContext) -> dict[str, Any]:
        net.check_static(ctx.sandbox, self.name, args.url)  # a bad start URL fails at once
        async with SandboxHttp(ctx.sandbox, self.name, timeout_s=_timeout(args.timeout_s, ctx),
                               max_bytes=2_000_000) as http:
            crawl = _Crawl(self.name, http, args)
            await crawl.run()
        return crawl.result()


class _Crawl:
    """One breadth-first crawl: a level at a time, a few pages at once."""

    concurrency = 4

    def __init__(self, tool: str, http: SandboxHttp, args: SitemapCrawl.Args) -> None:
        self.tool, self.http, self.args = tool, http, args
        self.host = urlsplit(args.url).netloc.lower()
        self.pages: list[dict[str, Any]] = []
        self.errors: list[dict[str, str]] = []
        self.seen: set[str] = set()
        self.skipped = 0
        self.sitemap = False
        self.robots: RobotFileParser | None = None

    async def run(self) -> None:
        if self.args.respect_robots:
            await self._load_robots()
        level = [_normal(self.args.url)]
        self.seen.update(level)
        for depth in range(self.args.max_depth + 1):
            if not level or len(self.pages) >= self.args.max_pages:
                break
            found = await self._level(level[: self.args.max_pages - len(self.pages)], depth)
            level = [u for u in found if self._admit(u)]

    async def _load_robots(self) -> None:
        parts = urlsplit(self.args.url)
        try:
            result = await self.http.request("GET", f"{parts.scheme}://{parts.netloc}/robots.txt")
        except ToolError:
            return
        if result.status == 200 and result.is_textual():
            self.robots = RobotFileParser()
            self.robots.parse(result.text().splitlines())

    def _admit(self, url: str) -> bool:
        parts = urlsplit(url)
        if url in self.seen or parts.netloc.lower() != self.host:
            return False
        self.seen.add(url)
        if self.args.path_prefix and not (parts.path or "/").startswith(self.args.path_prefix):
            return False
        if self.robots is not None and not self.robots.can_fetch("*", url):
            self.skipped += 1
            return False
        return True

    async def _level(self, urls: list[str], depth: int) -> list[str]:
        if depth == 0:  # the start page alone, so its error is the tool's error as it is
            return await self._page(urls[0], depth)
        gate = asyncio.Semaphore(self.concurrency)

        async def one(url: str) -> list[str]:
            async with gate:
                return await self._page(url, depth)

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(u)) for u in urls]
        return [link for task in tasks for link in task.result()]

    async def _page(self, url: str, depth: int) -> list[str]:
        try:
            result = await self.http.request("GET", url)
        except SandboxViolation as exc:
            if depth == 0:
                raise  # the start URL itself is refused: that is the answer
            self.errors.append({"url": url, "error": exc.detail})
            return []
        except ToolError as exc:
            if depth == 0:
                raise
            self.errors.append({"url": url, "error": exc.detail})
            return []
        if depth == 0 and _is_sitemap(result):
            return await self._sitemap(result, depth)
        if depth == 0 and result.status >= 400:
            raise _status_error(self.tool, result)
        return self._html(result, url, depth)

    def _html(self, result: HttpResult, url: str, depth: int) -> list[str]:
        title, links = "", []
        if result.status < 400 and "html" in result.content_type:
            page = html_page(result.text(), result.url, main_content=False, max_links=2_000)
            title, links = page.title, [_normal(link["url"]) for link in page.links]
        self.pages.append({"url": url, "final_url": result.url, "depth": depth,
                           "status": result.status, "title": title, "links": len(links)})
        return [u for u in links if urlsplit(u).scheme in ("http", "https")]

    async def _sitemap(self, result: HttpResult, depth: int) -> list[str]:
        """A sitemap's URLs are listed, not fetched; nested sitemaps are read in turn."""
        self.sitemap = True
        queue, reads = [result], 0
        while queue and len(self.pages) < self.args.max_pages and reads < 20:
            current, reads = queue.pop(0), reads + 1
            for kind, loc, lastmod in _sitemap_entries(self.tool, current):
                if kind == "sitemap" and depth < self.args.max_depth:
                    try:
                        queue.append(await self.http.request("GET", loc))
                    except ToolError as exc:
                        self.errors.append({"url": loc, "error": exc.detail})
                elif kind == "url" and len(self.pages) < self.args.max_pages:
                    self.pages.append({"url": loc, "depth": depth + 1, "lastmod": lastmod})
        return []

    def result(self) -> dict[str, Any]:
        return {"start_url": self.args.url, "from_sitemap": self.sitemap, "pages": self.pages,
                "count": len(self.pages), "errors": self.errors,
                "skipped_by_robots": self.skipped,
                "truncated": len(self.pages) >= self.args.max_pages}


def _normal(url: str) -> str:
    return urlunsplit(urlsplit(url)._replace(fragment=""))


def _is_sitemap(result: HttpResult) -> bool:
    head = result.body[:400].lstrip()
    return result.status < 400 and ("xml" in result.content_type or head.startswith(b"<?xml")
                                    ) and (b"<urlset" in result.body[:2000]
                                           or b"<sitemapindex" in result.body[:2000])


def _sitemap_entries(tool: str, result: HttpResult) -> Iterable[tuple[str, str, str | None]]:
    try:  # defusedxml: entity expansion and external entities are refused
        root = SafeET.fromstring(result.body)
    except (SafeET.ParseError, DefusedXmlException) as exc:
        raise ToolError(tool, f"{result.url} is not a valid sitemap: {exc}") from None
    for element in root:
        tag = element.tag.rsplit("}", 1)[-1]
        fields = {child.tag.rsplit("}", 1)[-1]: (child.text or "").strip() for child in element}
        if tag in ("url", "sitemap") and fields.get("loc"):
            yield tag, fields["loc"], fields.get("lastmod")


# -- webhook_call -----------------------------------------------------------------------------


class WebhookCall(SandboxedTool):
    name = "webhook_call"
    category = CATEGORY
    side_effects = SideEffects.external
    idempotent = False
    timeout = 320.0
    description = (
        "POST a JSON payload to a webhook URL and report whether it was delivered (a 2xx "
        "status). With a secret the body is signed: header X-Signature-256: sha256=<HMAC-SHA256 "
        "of the body, hex>. The call's idempotency key, when it has one, is sent as "
        "Idempotency-Key. Redirects are not followed.")

    class Args(StrictArgs):
        url: str = Field(description="the webhook's http or https URL")
        payload: JsonValue = Field(description="the JSON body to send")
        headers: dict[str, str] = Field(default_factory=dict, description="extra headers")
        secret: str | None = Field(default=None, description="shared secret to sign the body "
                                   "with (HMAC-SHA256)")
        timeout_s: float | None = Field(default=None, gt=0, le=300,
                                        description="deadline (default: the sandbox's)")

    async def call(self, args: WebhookCall.Args, ctx: ToolContext) -> dict[str, Any]:
        body = json.dumps(args.payload, ensure_ascii=False, separators=(",", ":")).encode()
        headers = {**args.headers, "content-type": "application/json"}
        if args.secret:
            digest = hmac.new(args.secret.encode(), body, hashlib.sha256).hexdigest()
            headers["x-signature-256"] = f"sha256={digest}"
        if ctx.idempotency_key:
            headers.setdefault("idempotency-key", ctx.idempotency_key)
        async with SandboxHttp(ctx.sandbox, self.name, timeout_s=_timeout(args.timeout_s, ctx),
                               max_bytes=100_000) as http:
            result = await http.request("POST", args.url, headers=headers, content=body,
                                        follow_redirects=False)
        return {"delivered": 200 <= result.status < 300, "status": result.status,
                "reason": result.reason, "response": result.text()[:10_000],
                "elapsed_ms": result.elapsed_ms}


# -- web_search -------------------------------------------------------------------------------


@dataclass
class SearchHit:
    title: str
    url: str
    snippet: str = ""


class SearchProvider(Protocol):
    """A web search backend. It fetches through `http`, so the sandbox applies to it too."""

    name: str

    async def search(self, query: str, max_results: int, http: SandboxHttp) -> list[SearchHit]:
        ...


def _json_of(tool: str, result: HttpResult, provider: str) -> Any:
    if result.status >= 400:
        raise ToolError(tool, f"search provider {provider!r} answered {result.status} "
                              f"{result.reason}")
    try:
        return json.loads(result.body)
    except json.JSONDecodeError:
        raise ToolError(tool, f"search provider {provider!r} did not answer JSON") from None


@dataclass
class SearxngSearch:
    """A SearXNG instance's JSON API (its settings must enable the json format)."""

    base_url: str
    name: str = "searxng"

    async def search(self, query: str, max_results: int, http: SandboxHttp) -> list[SearchHit]:
        result = await http.request("GET", urljoin(self.base_url.rstrip("/") + "/", "search"),
                                    params={"q": query, "format": "json"})
        data = _json_of(http.tool, result, self.name)
        return [SearchHit(title=str(r.get("title", "")), url=str(r.get("url", "")),
                          snippet=str(r.get("content", "")))
                for r in (data.get("results") or [])[:max_results] if isinstance(r, dict)]


@dataclass
class BraveSearch:
    """The Brave Search API (an API key from api.search.brave.com)."""

    api_key: str
    name: str = "brave"
    endpoint: str = "https://api.search.brave.com/res/v1/web/search"

    async def search(self, query: str, max_results: int, http: SandboxHttp) -> list[SearchHit]:
        result = await http.request("GET", self.endpoint,
                                    params={"q": query, "count": str(max_results)},
                                    headers={"accept": "application/json",
                                             "x-subscription-token": self.api_key})
        data = _json_of(http.tool, result, self.name)
        hits = ((data.get("web") or {}).get("results") or [])[:max_results]
        return [SearchHit(title=str(r.get("title", "")), url=str(r.get("url", "")),
                          snippet=str(r.get("description", "")))
                for r in hits if isinstance(r, dict)]


_PROVIDERS: dict[str, SearchProvider] = {}


def register_search_provider(provider: SearchProvider) -> None:
    """Make a provider available to web_search (the first registered one is the default)."""
    _PROVIDERS[provider.name] = provider


def unregister_search_provider(name: str) -> None:
    _PROVIDERS.pop(name, None)


def search_providers() -> dict[str, SearchProvider]:
    """Registered providers, then the ones the environment configures: LLMSPELL_SEARXNG_URL
    (a SearXNG instance) and BRAVE_SEARCH_API_KEY."""
    found = dict(_PROVIDERS)
    if (url := os.environ.get("LLMSPELL_SEARXNG_URL")) and "searxng" not in found:
        found["searxng"] = SearxngSearch(url)
    if (key := os.environ.get("BRAVE_SEARCH_API_KEY")) and "brave" not in found:
        found["brave"] = BraveSearch(key)
    return found


class WebSearch(SandboxedTool):
    name = "web_search"
    category = CATEGORY
    timeout = 120.0
    description = (
        "Search the web and return results (title, URL, snippet) from the configured search "
        "provider. Fails with a clear error when no provider is configured.")

    class Args(StrictArgs):
        query: str = Field(min_length=1, max_length=500, description="what to search for")
        max_results: int = Field(default=5, ge=1, le=20, description="most results")
        provider: str | None = Field(default=None, description="provider name (default: the "
                                     "first configured)")

    async def call(self, args: WebSearch.Args, ctx: ToolContext) -> dict[str, Any]:
        provider = self._provider(args.provider)
        async with SandboxHttp(ctx.sandbox, self.name) as http:
            hits = await provider.search(args.query, args.max_results, http)
        return {"query": args.query, "provider": provider.name,
                "results": [asdict(h) for h in hits[: args.max_results]]}

    def _provider(self, name: str | None) -> SearchProvider:
        providers = search_providers()
        if not providers:
            raise ToolError(self.name, "no search provider is configured: set "
                            "LLMSPELL_SEARXNG_URL (a SearXNG instance) or BRAVE_SEARCH_API_KEY, "
                            "or register one with "
                            "llmspell.tools.builtin.web.register_search_provider()")
        if name is None:
            return next(iter(providers.values()))
        if name not in providers:
            raise ToolError(self.name, f"no search provider named {name!r} (configured: "
                                       f"{', '.join(providers)})")
        return providers[name]


TOOLS: list[Tool] = [
    HttpRequest(), WebFetch(), UrlAnalyze(), SitemapCrawl(), WebhookCall(), WebSearch(),
]
