"""Who may call our servers: a bearer token, checked in constant time, and loopback by default.

`BearerAuth` wraps any ASGI app (the MCP and A2A servers both use it). Paths under `public`
(the A2A agent card) are served to anyone: a card says how to authenticate, so a client must
be able to read it first. `check_bind` refuses to serve beyond this machine without a token.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

__all__ = ["UNAUTHORIZED", "BearerAuth", "check_bind", "is_loopback"]

UNAUTHORIZED = -32001  # a JSON-RPC server error code (the -32000..-32099 range is ours)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BearerAuth:
    def __init__(self, app: ASGIApp, token: str, *, public: Sequence[str] = (),
                 realm: str = "llmspell") -> None:
        if not token:
            raise ValueError("an empty bearer token would let anyone in: give a token, or no "
                             "BearerAuth at all")
        self.app = app
        self._expected = f"Bearer {token}".encode()
        self.public = tuple(public)
        self.realm = realm

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"authorization")
        why = "missing bearer token" if given is None else "wrong bearer token"
        # Shaped as a JSON-RPC error (both MCP and A2A speak JSON-RPC), so SDK clients show
        # this message rather than a bare status code.
        body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {
            "code": UNAUTHORIZED, "message": f"unauthorized: {why} (send 'Authorization: "
                                             "Bearer <token>')"}}).encode()
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", f'Bearer realm="{self.realm}"'.encode())]})
        await send({"type": "http.response.body", "body": body})

    def _allowed(self, scope: Scope) -> bool:
        path = str(scope.get("path", ""))
        if any(path.endswith(p) for p in self.public):
            return True
        for name, value in scope.get("headers") or []:
            if name == b"authorization":
                return hmac.compare_digest(value, self._expected)
        return False


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token (anyone on the network could call
    every tool and agent)."""
    if not is_loopback(host) and not token:
        raise ValueError(f"refusing to serve on {host!r} without a bearer token: anyone who can "
                         "reach it could run the tools and agents; give a token, or bind "
                         "127.0.0.1")
