"""An HTTP client that reaches only what the sandbox allows.

- Every URL is checked before it is requested (scheme, host list, metadata, every address its
  host resolves to), and redirects are followed here, one hop at a time, each Location checked
  the same way before anything connects to it.
- The connection goes to the address that was checked: the client's network backend looks the
  host up in the addresses the check pinned, and never resolves it again, so a DNS answer that
  changes between check and connect (rebinding) reaches nothing new. A host the check did not
  see (a URL parser that reads a host differently from ours) is checked at connect time.
- No proxy from the environment (a proxy would connect on our behalf, past the pins), a deadline
  for the whole request (redirects included, so a server dripping bytes cannot hold a tool), and
  a cap on the body (read as a stream, decompressed bytes counted, so a gzip bomb stops at the cap).
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import ssl
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any
from urllib.parse import urljoin

import httpcore2
import httpx2

from llmspell.tools.errors import SandboxViolation, ToolError
from llmspell.tools.sandbox import net
from llmspell.tools.sandbox.policy import Sandbox
from llmspell.tools.sandbox.rules import Rule, refuse

__all__ = ["USER_AGENT", "HttpResult", "SandboxHttp"]

USER_AGENT = "llmspell-tools/0.1"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CREDENTIALS = ("authorization", "cookie", "proxy-authorization")
_BODY_HEADERS = ("content-type", "content-length", "content-encoding", "transfer-encoding")


@dataclass
class HttpResult:
    url: str  # the final URL, after redirects
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes
    truncated: bool  # the body was longer than the cap and was cut there
    redirects: list[dict[str, Any]] = field(default_factory=list)
    elapsed_ms: float = 0.0

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    @property
    def charset(self) -> str | None:
        for part in self.headers.get("content-type", "").split(";")[1:]:
            key, _, value = part.partition("=")
            if key.strip().lower() == "charset" and value.strip():
                return value.strip().strip('"')
        return None

    def text(self) -> str:
        try:
            return self.body.decode(self.charset or "utf-8", errors="replace")
        except LookupError:  # a charset Python does not know
            return self.body.decode("utf-8", errors="replace")

    def is_textual(self) -> bool:
        kind = self.content_type
        return (not kind or kind.startswith("text/") or kind.endswith(("json", "xml"))
                or kind in ("application/javascript", "application/x-www-form-urlencoded"))


# -- the pinned connection --------------------------------------------------------------------


class _PinnedBackend(httpcore2.AsyncNetworkBackend):
    """Connects only to addresses the sandbox checked for that host."""

    def __init__(self, sandbox: Sandbox, tool: str, pins: dict[str, tuple[str, ...]]) -> None:
        self._sandbox, self._tool, self._pins = sandbox, tool, pins
        self._inner = httpcore2.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
                          ) -> httpcore2.AsyncNetworkStream:
        addresses = await self._addresses(host, port)
        last: Exception | None = None
        for address in addresses:  # each one was checked: try them in the resolver's order
            try:
                return await self._inner.connect_tcp(address, port, timeout=timeout,
                                                     local_address=local_address,
                                                     socket_options=socket_options)
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def _addresses(self, host: str, port: int) -> tuple[str, ...]:
        key, ip = net.parse_host(host)
        pinned = self._pins.get(key)
        if pinned is not None:
            return pinned
        shown = f"[{key}]" if ip is not None and ip.version == 6 else key
        target = await self._sandbox.acheck_url(self._tool, f"http://{shown}:{port}/")
        return target.addresses

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
                                  ) -> httpcore2.AsyncNetworkStream:
        raise refuse(self._tool, Rule.scheme, "unix sockets are not reachable from tools", path)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


# httpcore's errors as httpx's, most specific first (what httpx's own transport does).
_ERRORS: tuple[tuple[type[Exception], type[httpx2.TransportError]], ...] = (
    (httpcore2.ConnectTimeout, httpx2.ConnectTimeout),
    (httpcore2.ReadTimeout, httpx2.ReadTimeout),
    (httpcore2.WriteTimeout, httpx2.WriteTimeout),
    (httpcore2.PoolTimeout, httpx2.PoolTimeout),
    (httpcore2.TimeoutException, httpx2.TimeoutException),
    (httpcore2.ConnectError, httpx2.ConnectError),
    (httpcore2.ReadError, httpx2.ReadError),
    (httpcore2.WriteError, httpx2.WriteError),
    (httpcore2.NetworkError, httpx2.NetworkError),
    (httpcore2.RemoteProtocolError, httpx2.RemoteProtocolError),
    (httpcore2.LocalProtocolError, httpx2.LocalProtocolError),
    (httpcore2.UnsupportedProtocol, httpx2.UnsupportedProtocol),
    (httpcore2.ProtocolError, httpx2.ProtocolError),
)


def _mapped(exc: Exception, request: httpx2.Request) -> Exception:
    for core, mapped in _ERRORS:
        if isinstance(exc, core):
            return mapped(str(exc) or type(exc).__name__, request=request)
    return exc


class _Stream(httpx2.AsyncByteStream):
    def __init__(self, inner: Any, request: httpx2.Request) -> None:
        self._inner, self._request = inner, request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except Exception as exc:
            raise _mapped(exc, self._request) from exc

    async def aclose(self) -> None:
        await self._inner.aclose()


@cache
def _ssl_context() -> ssl.SSLContext:
    return httpx2.create_ssl_context()  # loading the CA store costs milliseconds: once


class _PinnedTransport(httpx2.AsyncBaseTransport):
    def __init__(self, backend: _PinnedBackend) -> None:
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=_ssl_context(), network_backend=backend, max_connections=8, retries=0)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        core = httpcore2.Request(
            method=request.method,
            url=httpcore2.URL(scheme=request.url.raw_scheme, host=request.url.raw_host,
                              port=request.url.port, target=request.url.raw_path),
            headers=request.headers.raw, content=request.stream,  # type: ignore[arg-type]
            extensions=request.extensions)
        try:
            response = await self._pool.handle_async_request(core)
        except Exception as exc:
            raise _mapped(exc, request) from exc
        return httpx2.Response(status_code=response.status, headers=response.headers,
                               stream=_Stream(response.stream, request),
                               extensions=response.extensions)

    async def aclose(self) -> None:
        await self._pool.aclose()


# -- the client ---------------------------------------------------------------------------------


class SandboxHttp:
    """One tool call's HTTP client::

        async with SandboxHttp(ctx.sandbox, "web_fetch") as http:
            result = await http.request("GET", url)
    """

    def __init__(self, sandbox: Sandbox, tool: str, *, timeout_s: float | None = None,
                 max_bytes: int | None = None, max_redirects: int | None = None) -> None:
        self.sandbox, self.tool = sandbox, tool
        self.timeout_s = timeout_s or sandbox.network_timeout_s
        self.max_bytes = min(max_bytes or sandbox.max_output_bytes, sandbox.max_output_bytes)
        self.max_redirects = sandbox.max_redirects if max_redirects is None else min(
            max_redirects, sandbox.max_redirects)
        self._pins: dict[str, tuple[str, ...]] = {}
        self._client = httpx2.AsyncClient(
            transport=_PinnedTransport(_PinnedBackend(sandbox, tool, self._pins)),
            timeout=httpx2.Timeout(self.timeout_s), follow_redirects=False, trust_env=False,
            headers={"user-agent": USER_AGENT})

    async def __aenter__(self) -> SandboxHttp:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._client.aclose()

    async def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                      params: Mapping[str, str] | None = None, json: Any = None,
                      content: bytes | None = None, follow_redirects: bool = True
                      ) -> HttpResult:
        """Send one request (and follow its redirects, each checked). `json`, when not None,
        is the body, sent as application/json."""
        sent_headers = {k.lower(): v for k, v in (headers or {}).items()}
        if json is not None:
            content = jsonlib.dumps(json, ensure_ascii=False).encode()
            sent_headers.setdefault("content-type", "application/json")
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await self._follow(method.upper(), url, sent_headers, params, content,
                                            follow_redirects)
        except TimeoutError:
            raise ToolError(self.tool, f"{method.upper()} {url}: no complete response within "
                                       f"{self.timeout_s:g}s") from None
        result.elapsed_ms = round((time.monotonic() - started) * 1000, 1)
        return result

    async def _follow(self, method: str, url: str, headers: dict[str, str],
                      params: Mapping[str, str] | None, content: bytes | None, follow: bool
                      ) -> HttpResult:
        hops: list[dict[str, Any]] = []
        current = url
        while True:
            target = await self._check(current, hops)
            request_url = httpx2.URL(target.url)
            if params and not hops:
                request_url = request_url.copy_merge_params(dict(params))
            # Pinned under the host exactly as the connection layer will be given it.
            self._pins[net.parse_host(request_url.raw_host.decode("ascii"))[0]] = target.addresses
            response = await self._send(method, request_url, headers, content)
            try:
                location = response.headers.get("location")
                if not (follow and response.status_code in _REDIRECTS and location):
                    return await self._result(response, hops)
            finally:
                await response.aclose()
            if len(hops) >= self.max_redirects:
                raise ToolError(self.tool, f"{url}: more than {self.max_redirects} redirects "
                                           f"(last to {location})")
            following = urljoin(str(request_url), location)
            hops.append({"url": str(request_url), "status": response.status_code,
                         "location": following})
            method, content = _redirected_method(method, response.status_code, content, headers)
            _drop_credentials(headers, str(request_url), following)
            current = following

    async def _check(self, url: str, hops: list[dict[str, Any]]) -> net.Target:
        try:
            target = await self.sandbox.acheck_url(self.tool, url)
        except SandboxViolation as exc:
            if not hops:
                raise
            # Name the hop: the model asked for the first URL, not for this one.
            rule = Rule(exc.__dict__.get("rule", Rule.private_address))
            raise refuse(self.tool, rule, f"redirect from {hops[-1]['url']} to {url} refused: "
                         f"{exc.__dict__.get('reason', exc.detail)}", url) from None
        return target

    async def _send(self, method: str, url: httpx2.URL, headers: dict[str, str],
                    content: bytes | None) -> httpx2.Response:
        request = self._client.build_request(method, url, headers=headers, content=content)
        try:
            return await self._client.send(request, stream=True, follow_redirects=False)
        except httpx2.TimeoutException:
            raise ToolError(self.tool, f"{method} {url}: no response within "
                                       f"{self.timeout_s:g}s") from None
        except httpx2.HTTPError as exc:
            raise ToolError(self.tool, f"{method} {url} failed: {type(exc).__name__}: "
                                       f"{exc}") from None

    async def _result(self, response: httpx2.Response, hops: list[dict[str, Any]]
                      ) -> HttpResult:
        body, truncated = b"", False
        if response.request.method != "HEAD":
            body, truncated = await self._read(response)
        headers: dict[str, str] = {}
        for key, value in response.headers.multi_items():
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return HttpResult(url=str(response.request.url), status=response.status_code,
                          reason=response.reason_phrase, headers=headers, body=body,
                          truncated=truncated, redirects=hops)

    async def _read(self, response: httpx2.Response) -> tuple[bytes, bool]:
        """The body up to the cap (decoded bytes, so compression cannot hide a bomb)."""
        data = bytearray()
        try:
            async for chunk in response.aiter_bytes():
                room = self.max_bytes - len(data)
                if len(chunk) > room:
                    data += chunk[:room]
                    return bytes(data), True
                data += chunk
        except httpx2.HTTPError as exc:
            raise ToolError(self.tool, f"reading the response of {response.request.url} "
                                       f"failed: {type(exc).__name__}: {exc}") from None
        return bytes(data), False


def _redirected_method(method: str, status: int, content: bytes | None,
                       headers: dict[str, str]) -> tuple[str, bytes | None]:
    """303 turns anything but HEAD into GET; 301 and 302 turn POST into GET (what browsers
    do); 307 and 308 keep the method and the body."""
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        for name in _BODY_HEADERS:
            headers.pop(name, None)
        return "GET", None
    return method, content


def _drop_credentials(headers: dict[str, str], old: str, new: str) -> None:
    """Credentials meant for one origin are not sent to another."""
    if httpx2.URL(old).netloc != httpx2.URL(new).netloc or (
            httpx2.URL(old).scheme != httpx2.URL(new).scheme):
        for name in _CREDENTIALS:
            headers.pop(name, None)
