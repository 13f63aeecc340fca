"""Shared fixtures of the sandbox, filesystem, web and system tool tests.

`web` is a real HTTP server on 127.0.0.1 (http.server in a thread) serving pages, JSON, redirects,
a small site with a sitemap and robots.txt, a SearXNG-style search API and a webhook receiver.
`trap` listens on 127.0.0.2 and counts connections: a refused address that the policy let
through would show up there, and nowhere outside 127.0.0.0/8.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from llmspell.tools import Sandbox, ToolContext

PAGE = """<!doctype html><html><head><title>The Test Page</title>
<script>var secret = "not content";</script><style>body {color: red}</style></head>
<body><nav><a href="/nav-only">Navigation</a></nav>
<main><h1>Welcome</h1><p>Hello <b>readable</b> world.</p>
<ul><li>first item</li><li>second item</li></ul>
<p><a href="/json">JSON endpoint</a> and <a href="https://example.org/elsewhere#top">elsewhere</a>
and <a href="#local">a fragment</a> and <a href="javascript:void(0)">script</a>.</p></main>
<footer>Footer text</footer></body></html>"""

SITE = {
    "/site/": '<title>Home</title><a href="/site/a">A</a> <a href="b">B</a> '
              '<a href="/site/private/x">P</a> <a href="http://example.invalid/">out</a>',
    "/site/a": '<title>Page A</title><a href="/site/c">C</a><a href="/site/">home</a>',
    "/site/b": "<title>Page B</title>no links",
    "/site/c": '<title>Page C</title><a href="/site/d">D</a>',
    "/site/d": "<title>Page D</title>deep",
    "/site/private/x": "<title>Private</title>",
}


@dataclass
class WebServer:
    port: int
    hooks: list[dict[str, Any]] = field(default_factory=list)  # what /hook received

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


class _Handler(BaseHTTPRequestHandler):
    server_version = "LlmspellTest/1"
    protocol_version = "HTTP/1.1"
    state: WebServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes | str, content_type: str = "text/html",
              headers: dict[str, str] | None = None) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self) -> None:
        self._route()

    def do_HEAD(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def do_PUT(self) -> None:
        self._route()

    def _route(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        path = parts.path
        if path in SITE:
            return self._send(200, SITE[path])
        handler = _ROUTES.get(path)
        if handler is None:
            return self._send(404, "no such page", "text/plain")
        handler(self, query)

    def page(self, query: dict[str, str]) -> None:
        self._send(200, PAGE, "text/html; charset=utf-8")

    def json_(self, query: dict[str, str]) -> None:
        self._send(200, json.dumps({"hello": "world"}), "application/json")

    def echo(self, query: dict[str, str]) -> None:
        body = self._body()
        self._send(200, json.dumps({
            "method": self.command, "query": query, "body": body.decode(),
            "headers": {k.lower(): v for k, v in self.headers.items()}}), "application/json")

    def redirect(self, query: dict[str, str]) -> None:
        self._body()
        self._send(int(query.get("code", "302")), "", "text/plain",
                   {"Location": query.get("to", "/json")})

    def big(self, query: dict[str, str]) -> None:
        self._send(200, b"x" * 3_000_000, "text/plain")

    def bomb(self, query: dict[str, str]) -> None:
        self._send(200, gzip.compress(b"\0" * 20_000_000), "application/octet-stream",
                   {"Content-Encoding": "gzip"})

    def slow(self, query: dict[str, str]) -> None:
        time.sleep(float(query.get("s", "2")))
        self._send(200, "finally", "text/plain")

    def binary(self, query: dict[str, str]) -> None:
        self._send(200, b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "image/png")

    def status(self, query: dict[str, str]) -> None:
        self._send(int(query.get("code", "500")), "it went wrong", "text/plain")

    def sitemap(self, query: dict[str, str]) -> None:
        base = f"http://127.0.0.1:{self.state.port}"
        self._send(200, f"""<?xml version="1.0" encoding="UTF-8"?>
<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
<url><loc>{base}/site/a</loc><lastmod>2024-01-02</lastmod></url>
<url><loc>{base}/site/b</loc></url></urlset>""", "application/xml")

    def robots(self, query: dict[str, str]) -> None:
        self._send(200, "User-agent: *\nDisallow: /site/private\n", "text/plain")

    def search(self, query: dict[str, str]) -> None:
        q = query.get("q", "")
        results = [{"title": f"{q} result {i}", "url": f"https://example.org/{i}",
                    "content": f"about {q}"} for i in range(8)]
        self._send(200, json.dumps({"query": q, "results": results}), "application/json")

    def hook(self, query: dict[str, str]) -> None:
        body = self._body()
        self.state.hooks.append({"body": body, "headers": {k.lower(): v for k, v in
                                                           self.headers.items()}})
        self._send(202, "accepted", "text/plain")


_ROUTES: dict[str, Callable[[_Handler, dict[str, str]], None]] = {
    "/page": _Handler.page, "/json": _Handler.json_, "/echo": _Handler.echo,
    "/redirect": _Handler.redirect, "/big": _Handler.big, "/bomb": _Handler.bomb,
    "/slow": _Handler.slow, "/binary": _Handler.binary, "/status": _Handler.status,
    "/sitemap.xml": _Handler.sitemap, "/robots.txt": _Handler.robots,
    "/search": _Handler.search, "/hook": _Handler.hook,
}


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that stops reading at its cap resets the connection: expected here


@pytest.fixture(scope="session")
def web() -> Iterator[WebServer]:
    server = _QuietServer(("127.0.0.1", 0), _Handler)
    state = WebServer(port=server.server_address[1])
    _Handler.state = state
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@dataclass
class Trap:
    """A listener on 127.0.0.2 that counts every connection made to it."""

    port: int
    connections: int = 0


@pytest.fixture(scope="session")
def trap() -> Iterator[Trap]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.2", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    state = Trap(port=listener.getsockname()[1])
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            state.connections += 1
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield state
    stop.set()
    thread.join(2)
    listener.close()


@dataclass
class Ctx:
    """A ToolContext and the events its tools published."""

    ctx: ToolContext
    events: list[tuple[str, dict[str, Any]]]

    def refusals(self) -> list[dict[str, Any]]:
        return [p for t, p in self.events if t == "sandbox.refused"]


@pytest.fixture
def make_ctx(tmp_path: Path) -> Callable[..., Ctx]:
    """make_ctx(**policy): a context rooted in a fresh tmp dir (root=None for none)."""
    def build(**policy: Any) -> Ctx:
        policy.setdefault("root", str(tmp_path / "root"))
        if policy["root"] is not None:
            Path(policy["root"]).mkdir(parents=True, exist_ok=True)
        events: list[tuple[str, dict[str, Any]]] = []
        ctx = ToolContext(sandbox=Sandbox(**policy),
                          emit=lambda topic, payload: events.append((topic, payload)))
        return Ctx(ctx, events)
    return build


LOCAL = {"allowed_private_hosts": ["127.0.0.1"]}  # the tests' policy: 127.0.0.1 only
